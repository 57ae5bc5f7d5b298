//! The data plane. STUB — being written.
