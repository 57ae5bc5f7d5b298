//! Drivers execute the requests of the worker loop against the kernel. Today: io_uring.
pub mod uring;
