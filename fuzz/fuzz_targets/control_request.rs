//! The control protocol's request parser on any line: a request or a classified error, never
//! a panic; a request written back by `request_line` (what `sluice ctl` sends) parses to the
//! same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::control::protocol::{parse_request, request_line, Response};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(request) => {
            let sent = request_line(&request);
            assert_eq!(parse_request(sent.trim_end()), Ok(request), "{sent}");
        }
        Err(e) => {
            assert!(matches!(
                e.kind(),
                "malformed" | "unknown-command" | "version" | "too-large"
            ));
            // The daemon's answer to it is one line.
            let answer = Response::failed(&e).to_line();
            assert_eq!(answer.matches('\n').count(), 1);
        }
    }
});
