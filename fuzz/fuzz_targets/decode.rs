//! The decoder on arbitrary bytes: never panics, and a header it accepts never claims more
//! bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::proxy_protocol::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = decode(data) {
        assert!(used <= data.len());
        assert!(header.version == 1 || header.version == 2);
    }
});
