//! The built-in demo: three local HTTP pods and the seed's `myfrontend` Service. STUB.
