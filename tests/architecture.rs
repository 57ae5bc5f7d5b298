//! The module map's dependency arrows (docs/architecture.md, "Module map"), checked against
//! the source: every `crate::X` path (and every `super::` path that climbs to the crate root)
//! in a file of top-level module M must name an X that M may use. A new top-level module
//! must be given its arrows here and in the docs before it builds green. Two more walls:
//! nothing outside `src/dataplane/` (the binary included) names a module inside the data
//! plane — the rest of sluice uses only the API `dataplane/mod.rs` exports — and the map's
//! own arrows keep `model` and `table` free of the planes and the data plane free of
//! `control`, `config` and `watch`.
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
            // The UDP flows' hand-over record (`handover::flows`), a leaf.
            "handover",
        ],
    ),
    // Sources of the model.
    ("config", &["model", "table", "deadline"]),
    ("watch", &["config", "model", "deadline"]),
    ("tproxy", &["config", "model"]),
    ("demo", &["http", "model"]),
    // The hand-over protocol and process mechanics: nothing else of the crate (the caller
    // adopts inherited descriptors).
    ("handover", &[]),
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
    rooted_paths(code, depth)
        .into_iter()
        .filter(|p| p.first().is_some_and(|m| m != "self"))
        .map(|p| p[0].clone())
        .collect()
}

/// The paths from the crate root that one line of code of a file at module depth `depth`
/// names, each as its segments: `crate::a::b`, `sluice::a::b` (the binary's spelling), and
/// `super::` paths that climb to the crate root. A group gives one path per leaf
/// (`crate::{a, b::{c, d}}` → a; b, c; b, d).
fn rooted_paths(code: &str, depth: usize) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &code[i..];
        if !at_word {
            i += 1;
        } else if let Some(after) = rest
            .strip_prefix("crate::")
            .or_else(|| rest.strip_prefix("sluice::"))
        {
            path_tree(after, Vec::new(), &mut paths);
            i = code.len() - after.len();
        } else if rest.starts_with("super::") {
            let mut supers = 0;
            let mut after = rest;
            while let Some(next) = after.strip_prefix("super::") {
                supers += 1;
                after = next;
            }
            // Climbing to the crate root: what follows is a top-level module.
            if supers >= depth {
                path_tree(after, Vec::new(), &mut paths);
            }
            i = code.len() - after.len();
        } else {
            i += 1;
        }
    }
    paths
}

/// The paths of the path tree `text` starts with (what follows a `::`), each after `prefix`.
fn path_tree(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let (mut level, mut from) = (0, 0);
        for (k, c) in group.char_indices() {
            match c {
                '{' => level += 1,
                '}' if level > 0 => level -= 1,
                ',' | '}' if level == 0 => {
                    path_tree(&group[from..k], prefix.clone(), out);
                    if c == '}' {
                        return;
                    }
                    from = k + 1;
                }
                _ => {}
            }
        }
        path_tree(&group[from..], prefix, out);
        return;
    }
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        // `a::b::*` names `a::b`; an empty group item names nothing.
        if text.starts_with('*') && !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    let mut path = prefix;
    path.push(name.clone());
    match text[name.len()..].strip_prefix("::") {
        Some(next) => path_tree(next, path, out),
        None => out.push(path),
    }
}

/// One statement's code with where it starts: the text of each file of src/ with comments
/// cut off at `//`, one line each, except that a `use` spread over several lines is one.
struct Code {
    /// The file, relative to src/.
    rel: PathBuf,
    /// Its module path (`control/render/tests.rs` → control, render, tests).
    path: Vec<String>,
    line: usize,
    /// How many `super`s climb from here to the crate root.
    depth: usize,
    code: String,
}

/// Every statement of every file below src/ (see [`Code`]).
fn code_of(src: &Path) -> Vec<Code> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_path_buf();
        let path = module_path(&rel);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut depth = path.len();
        let mut open_use: Option<Code> = None;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let t = code.trim_start();
            let item = t
                .strip_prefix("pub ")
                .or_else(|| t.strip_prefix("pub(crate) "))
                .or_else(|| t.strip_prefix("pub(super) "))
                .unwrap_or(t);
            if let Some(mut u) = open_use.take() {
                u.code.push(' ');
                u.code.push_str(t);
                if code.contains(';') {
                    out.push(u);
                } else {
                    open_use = Some(u);
                }
                continue;
            }
            let statement = Code {
                rel: rel.clone(),
                path: path.clone(),
                line: n + 1,
                depth,
                code: code.to_owned(),
            };
            if item.starts_with("use ") && !code.contains(';') {
                open_use = Some(statement);
            } else {
                out.push(statement);
            }
            // An inline module (`mod tests {`): `super` climbs one more level below it.
            if item.starts_with("mod ") && item.trim_end().ends_with('{') {
                depth += 1;
            }
        }
        out.extend(open_use);
    }
    out
}

/// Every (file:line, module, named module) where a module names one it may not use.
fn forbidden(src: &Path) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut found = Vec::new();
    for c in code_of(src) {
        let Some(top) = c.path.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(may) = allowed.get(top.as_str()) else {
            let missing = format!(
                "{}: module `{top}` has no arrows in tests/architecture.rs",
                c.rel.display()
            );
            if !found.contains(&missing) {
                found.push(missing);
            }
            continue;
        };
        for name in named_modules(&c.code, c.depth) {
            let is_module = allowed.contains_key(name.as_str());
            if is_module && name != top && !may.contains(&name.as_str()) {
                found.push(format!(
                    "{}:{}: `{top}` uses `crate::{name}`: {}",
                    c.rel.display(),
                    c.line,
                    c.code.trim()
                ));
            }
        }
    }
    found
}

/// The data plane's own modules (`mod X;` in src/dataplane/mod.rs, public or not).
fn dataplane_rooms(src: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(src.join("dataplane/mod.rs")).unwrap();
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let t = t
                .strip_prefix("pub ")
                .or_else(|| t.strip_prefix("pub(crate) "))
                .unwrap_or(t);
            t.strip_prefix("mod ")
        })
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every place outside src/dataplane/ (the binary too) that names a module inside the data
/// plane (`crate::dataplane::sys::…`, `sluice::dataplane::{worker::X}`, …) instead of the
/// API that `dataplane/mod.rs` exports.
fn reaching_into_the_dataplane(src: &Path) -> Vec<String> {
    let rooms = dataplane_rooms(src);
    let mut found = Vec::new();
    for c in code_of(src) {
        if c.path.first().is_some_and(|m| m == "dataplane") {
            continue;
        }
        for path in rooted_paths(&c.code, c.depth) {
            if path.first().is_some_and(|m| m == "dataplane")
                && path.get(1).is_some_and(|room| rooms.contains(room))
            {
                found.push(format!(
                    "{}:{}: `dataplane::{}` is inside the data plane: {}",
                    c.rel.display(),
                    c.line,
                    path[1],
                    c.code.trim()
                ));
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

#[test]
fn only_the_dataplane_names_its_inside() {
    let rooms = dataplane_rooms(&src());
    for room in ["sys", "worker", "connections", "driver", "testing"] {
        assert!(
            rooms.iter().any(|r| r == room),
            "src/dataplane/mod.rs no longer declares `{room}`: {rooms:?}"
        );
    }
    let found = reaching_into_the_dataplane(&src());
    assert!(
        found.is_empty(),
        "the rest of sluice uses the data plane through the API of src/dataplane/mod.rs only \
         (add what it needs there):\n{}",
        found.join("\n")
    );
}

/// The walls the map must keep, whatever else changes in it: `model` uses nothing of the
/// crate and `table` only the leaves `model` and `stats` (the routing snapshot is built
/// without a socket, a parser or a runtime); the data plane never reaches `control`,
/// `config` or `watch`; only `control` drives the data plane.
#[test]
fn the_map_keeps_its_walls() {
    let arrows = |m: &str| -> &[&str] {
        ALLOWED
            .iter()
            .find(|(name, _)| *name == m)
            .map(|(_, may)| *may)
            .unwrap()
    };
    assert!(arrows("model").is_empty(), "model must use nothing");
    for m in arrows("table") {
        assert!(["model", "stats"].contains(m), "table must not use `{m}`");
    }
    for m in ["control", "config", "watch"] {
        assert!(
            !arrows("dataplane").contains(&m),
            "dataplane must not use `{m}`"
        );
    }
    for (name, may) in ALLOWED {
        assert!(
            *name == "control" || !may.contains(&"dataplane"),
            "only control may use the data plane, not `{name}`"
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
    // Paths, with groups (nested too) and the binary's spelling.
    assert_eq!(
        rooted_paths("use crate::dataplane::{Dataplane, sys::{eventfd, x}};", 2),
        [
            vec!["dataplane", "Dataplane"],
            vec!["dataplane", "sys", "eventfd"],
            vec!["dataplane", "sys", "x"],
        ]
    );
    assert_eq!(
        rooted_paths("if let Err(e) = sluice::dataplane::worker::f() {", 1),
        [vec!["dataplane", "worker", "f"]]
    );
    assert_eq!(
        rooted_paths("use super::super::dataplane::driver::*;", 2),
        [vec!["dataplane", "driver"]]
    );
    assert_eq!(
        rooted_paths("let n = crate::dataplane::default_workers();", 2),
        [vec!["dataplane", "default_workers"]]
    );
}

/// A forbidden path is found in a file: the checks run on a copy of src/ with one bad line
/// added (each wall once), and must report exactly it.
#[test]
fn the_checks_see_a_new_forbidden_import() {
    let copy = std::env::temp_dir().join(format!("sluice-architecture-{}", std::process::id()));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(copy.clone());
    copy_dir(&src(), &copy);
    assert!(forbidden(&copy).is_empty());
    assert!(reaching_into_the_dataplane(&copy).is_empty());
    let add = |file: &str, line: &str| {
        let path = copy.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n{line}\n")).unwrap();
    };
    add(
        "control/daemon.rs",
        "use crate::dataplane::{\n    sys::allowed_cpus,\n};",
    );
    add("main.rs", "use sluice::dataplane::testing::ConnTable;");
    add("model.rs", "use crate::table::RoutingSnapshot;");
    add("table/snapshot.rs", "use crate::config::Config;");
    add("dataplane/worker/mod.rs", "use crate::watch::ClusterWatch;");
    let inside = reaching_into_the_dataplane(&copy);
    assert_eq!(inside.len(), 2, "{inside:#?}");
    assert!(inside[0].starts_with("control/daemon.rs:") && inside[0].contains("dataplane::sys"));
    assert!(inside[1].starts_with("main.rs:") && inside[1].contains("dataplane::testing"));
    let found = forbidden(&copy);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("`dataplane` uses `crate::watch`"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("`model` uses `crate::table`"),
        "{found:#?}"
    );
    assert!(
        found[2].contains("`table` uses `crate::config`"),
        "{found:#?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
