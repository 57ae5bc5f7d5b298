//! The built-in demo. STUB — being written on another branch.
use crate::model::Model;
use std::net::SocketAddr;
pub const DEMO_POD_ADDRS: [&str; 3] = ["127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000"];
pub fn demo_model() -> Model {
    unimplemented!()
}
pub struct DemoPods;
impl DemoPods {
    pub fn start(_p: &[(String, SocketAddr)]) -> std::io::Result<DemoPods> {
        Ok(DemoPods)
    }
}
