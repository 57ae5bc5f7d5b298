//! The module map's dependency arrows (docs/architecture.md, "Module map"), checked against
//! the source: every `crate::X` path (and every `super::` path that climbs to the crate root)
//! in a file of top-level module M must name an X that M may use. A new top-level module
//! must be given its arrows here and in the docs before it builds green.
//!
//! Reads src/ as text; runs nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the other top-level modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: nothing else of the crate.
    ("model", &[]),
    ("deadline", &[]),
    ("stats", &[]),
    ("http", &[]),
    ("logging", &[]),
    // Pure data-plane building blocks.
    ("table", &["model", "stats"]),
    ("publish", &["table"]),
    ("proxy_protocol", &["model"]),
    // The data plane never reaches the control plane, the config parser or the watch.
    (
        "dataplane",
        &[
            "model",
            "stats",
            "table",
            "publish",
            "proxy_protocol",
            "deadline",
        ],
    ),
    // Sources of the model.
    ("config", &["model", "table", "deadline"]),
    ("watch", &["config", "model", "deadline"]),
    ("tproxy", &["config", "model"]),
    ("demo", &["http", "model"]),
    // The hand-over protocol: the data plane's API only for adopting an inherited fd.
    ("handover", &["dataplane"]),
    // The control plane drives everything but the binary's helpers.
    (
        "control",
        &[
            "config",
            "dataplane",
            "deadline",
            "handover",
            "http",
            "model",
            "proxy_protocol",
            "publish",
            "stats",
            "table",
            "watch",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below src/ (`control/render/tests.rs` → control, render, tests).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Top-level modules named by one line of code of a file at module depth `depth`.
fn named_modules(code: &str, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = code.as_bytes();
    let ident = |from: usize| -> String {
        code[from..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word && code[i..].starts_with("crate::") {
            let after = i + "crate::".len();
            if code[after..].starts_with('{') {
                // `crate::{a, b::c}`: each first segment of the group.
                let end = code[after..].find('}').map_or(code.len(), |e| after + e);
                for item in code[after + 1..end].split(',') {
                    let first = item.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() {
                        names.push(first.to_owned());
                    }
                }
            } else {
                names.push(ident(after));
            }
            i = after;
            continue;
        }
        if at_word && code[i..].starts_with("super::") {
            let mut supers = 0;
            let mut j = i;
            while code[j..].starts_with("super::") {
                supers += 1;
                j += "super::".len();
            }
            // Climbing to the crate root: what follows is a top-level module.
            if supers >= depth {
                names.push(ident(j));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    names
}

/// Every (file:line, module, named module) where a module names one it may not use.
fn forbidden(src: &Path) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let path = module_path(rel);
        let Some(top) = path.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(may) = allowed.get(top.as_str()) else {
            found.push(format!(
                "{}: module `{top}` has no arrows in tests/architecture.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let mut depth = path.len();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in named_modules(code, depth) {
                let is_module = allowed.contains_key(name.as_str());
                if is_module && name != top && !may.contains(&name.as_str()) {
                    found.push(format!(
                        "{}:{}: `{top}` uses `crate::{name}`: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
            // An inline module (`mod tests {`): `super` climbs one more level below it.
            let t = code.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if t.starts_with("mod ") && t.trim_end().ends_with('{') {
                depth += 1;
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_what_the_map_allows() {
    let found = forbidden(&src());
    assert!(
        found.is_empty(),
        "imports against docs/architecture.md's module map:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_top_level_module_has_its_arrows() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty());
    for m in &declared {
        assert!(
            ALLOWED.iter().any(|(name, _)| name == m),
            "src/lib.rs declares `{m}`: give it its arrows in tests/architecture.rs and docs/architecture.md"
        );
    }
    for (name, _) in ALLOWED {
        assert!(
            declared.contains(name),
            "`{name}` is no module of src/lib.rs"
        );
    }
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    for (name, _) in ALLOWED {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/architecture.md's module map does not name `{name}`"
        );
    }
}

/// The checker itself: a forbidden path is found, in each spelling.
#[test]
fn the_checker_sees_each_spelling() {
    assert_eq!(named_modules("use crate::control::Daemon;", 2), ["control"]);
    assert_eq!(
        named_modules("use crate::{config, watch::ClusterWatch};", 1),
        ["config", "watch"]
    );
    assert_eq!(
        named_modules("let x = crate::config::parse(t);", 3),
        ["config"]
    );
    // src/model.rs is at depth 1: `super::stats` is `crate::stats`.
    assert_eq!(named_modules("use super::stats::ConnTotals;", 1), ["stats"]);
    // Inside a module of depth 2, one `super` stays inside the module.
    assert!(named_modules("use super::sys;", 2).is_empty());
    assert!(named_modules("use my_crate::control;", 1).is_empty());
}
