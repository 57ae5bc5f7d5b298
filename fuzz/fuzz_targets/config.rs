//! The TOML configuration as `sluice check` reads it: any text is either a model or one
//! `FILE:LINE:COLUMN` error pointing inside the text — never a panic. An accepted text is
//! rendered (what `check` prints), and re-reading it as a reload of itself (the running
//! model as `previous`) gives the same model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::{parse, render_check};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, "fuzz.toml", None) {
        Ok(model) => {
            let _ = render_check(&model);
            let again = parse(text, "fuzz.toml", Some(&model)).expect("a reload of the same text");
            assert_eq!(again, model, "a reload of the same text changed the model");
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            if e.line > 0 {
                assert!(e.column >= 1);
                assert!(e.line <= text.lines().count() + 1, "{e}");
            }
            let _ = e.to_string();
        }
    }
});
