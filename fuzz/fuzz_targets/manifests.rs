//! The manifests reader (`--manifests DIR`, one file): any text is either objects or one
//! error naming the file (and the document and line where the parser knows them) — never a
//! panic; the objects it reads convert to a model. The first byte says whether the file is
//! a `.yaml` (even) or a `.json` (odd) one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::k8s::{build_model, K8sOptions, Objects};
use sluice::config::manifests::read_text;
use sluice::model::Settings;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let origin = if kind & 1 == 0 { "fuzz.yaml" } else { "fuzz.json" };
    let mut objects = Objects::default();
    match read_text(origin, text, &mut objects) {
        Ok(_) => {
            let _ = build_model(Settings::default(), &objects, &K8sOptions::default(), None);
        }
        Err(e) => {
            assert!(e.origin.starts_with(origin), "{e}");
            assert!(!e.message.is_empty());
        }
    }
});
