//! Manifest mode (`sluice run --manifests DIR`): Kubernetes YAML/JSON files → [`Model`].
//!
//! Reads every `*.yaml`, `*.yml` and `*.json` file directly in DIR (not in subdirectories,
//! like `kubectl apply -f DIR` without `-R`; names starting with `.` are skipped), in name
//! order. A YAML file may hold several documents (`---`); a document may be a `kind: List`
//! of items. Services (`v1`), EndpointSlices (`discovery.k8s.io/v1`), Endpoints (`v1`) and
//! Nodes (`v1`: the one named like this node gives its zone, else `--zone`) are read into
//! k8s-openapi types and converted by [`super::k8s`]; other kinds are ignored (logged at
//! debug level, counted at info level).
//!
//! A file that cannot be read or parsed fails the whole load with a [`ConfigError`] naming
//! the file, the document and, where the parser knows it, the line and column: a reload
//! then keeps the running configuration. Problems with single objects (an SCTP port, an
//! invalid annotation) are not errors: they come back as [`Problem`]s and the rest is served.
//!
//! Node-wide settings come from an optional TOML file (`--config`) with the keys of
//! docs/configuration.md; it must not hold `[[service]]` tables (the manifests are the
//! Services).

use super::k8s::{self, K8sOptions, Objects, Problem};
use super::{ConfigError, MAX_CONFIG_BYTES};
use crate::model::{Model, Settings};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where manifest mode reads from; re-read on every reload.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub dir: PathBuf,
    /// Node settings (`--config`), without Services.
    pub config: Option<PathBuf>,
    pub options: K8sOptions,
}

/// The files of a manifest source, read but not parsed: what a reload reads off the
/// control loop before [`Manifests::build`] turns it into a model.
#[derive(Debug, Clone, Default)]
pub struct ManifestFiles {
    /// The node settings file (`--config`) and its text.
    settings: Option<(PathBuf, String)>,
    /// Each manifest file (in name order) and its text.
    files: Vec<(PathBuf, String)>,
}

impl Manifests {
    /// Reads the settings file and the directory and builds the model; `previous` keeps
    /// allocated NodePorts and last good annotation values.
    pub fn load(&self, previous: Option<&Model>) -> Result<(Model, Vec<Problem>), ConfigError> {
        let files = self.read()?;
        self.build(&files, previous)
    }

    /// Reads the settings file and the manifest files (see [`read_dir`] for which, and the
    /// size limit): the part of [`load`](Self::load) that does IO.
    pub fn read(&self) -> Result<ManifestFiles, ConfigError> {
        let settings = match &self.config {
            Some(path) => Some((path.clone(), super::read_file(path, MAX_CONFIG_BYTES)?)),
            None => None,
        };
        Ok(ManifestFiles {
            settings,
            files: read_files(&self.dir)?,
        })
    }

    /// The model of files read by [`read`](Self::read).
    pub fn build(
        &self,
        files: &ManifestFiles,
        previous: Option<&Model>,
    ) -> Result<(Model, Vec<Problem>), ConfigError> {
        let settings = match &files.settings {
            Some((path, text)) => settings_file(path, text)?,
            None => Settings::default(),
        };
        let objects = parse_files(&self.dir, &files.files)?;
        // A Node object named like this node gives the zone; `--zone` otherwise.
        let options = K8sOptions {
            zone: k8s::node_zone(&objects.nodes, self.options.node_name.as_deref())
                .or_else(|| self.options.zone.clone()),
            primary_ips: k8s::node_primary_ips(&objects.nodes, self.options.node_name.as_deref()),
            ..self.options.clone()
        };
        Ok(k8s::build_model(settings, &objects, &options, previous))
    }
}

/// The settings of a TOML file that must not define Services.
fn settings_file(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let model = super::parse(text, &path.display().to_string(), None)?;
    if let Some(s) = model.services.first() {
        return Err(ConfigError {
            origin: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!(
                "defines [[service]] {} but --manifests is given: with manifests, the config \
                 file holds node settings only (move the Service into a manifest)",
                s.key
            ),
        });
    }
    Ok(model.settings)
}

/// Every Service, EndpointSlice and Endpoints object of the directory's files.
pub fn read_dir(dir: &Path) -> Result<Objects, ConfigError> {
    parse_files(dir, &read_files(dir)?)
}

/// The text of every manifest file of `dir`: names ending in `.yaml`, `.yml` or `.json`, not
/// starting with `.`, directly in `dir`, in name order. Such a name that is not a regular
/// file (a FIFO, a device) is an error, a subdirectory is skipped; the files together may
/// hold at most [`MAX_CONFIG_BYTES`].
fn read_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let origin = dir.display().to_string();
    let unreadable = |e: std::io::Error| ConfigError {
        origin: origin.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the manifest directory: {e}"),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        if wanted && !name.starts_with('.') && !path.is_dir() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut budget = MAX_CONFIG_BYTES;
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = super::read_file(&path, budget).map_err(|mut e| {
            if e.message.starts_with("larger than") {
                e.message = format!(
                    "the manifest files of {origin} together are larger than {} MiB, the most \
                     sluice reads from configuration files (docs/operations.md, \"Limits\")",
                    MAX_CONFIG_BYTES / (1024 * 1024)
                );
            }
            e
        })?;
        budget -= text.len() as u64;
        files.push((path, text));
    }
    Ok(files)
}

/// The objects of files read by [`read_files`].
fn parse_files(dir: &Path, files: &[(PathBuf, String)]) -> Result<Objects, ConfigError> {
    let mut objects = Objects::default();
    let mut ignored = 0usize;
    for (path, text) in files {
        ignored += read_text(&path.display().to_string(), text, &mut objects)?;
    }
    if ignored > 0 {
        tracing::info!(
            dir = %dir.display(),
            ignored,
            "objects of other kinds than Service, EndpointSlice, Endpoints and Node ignored"
        );
    }
    Ok(objects)
}

/// Adds the objects of one file to `objects`; returns how many objects were ignored.
/// `origin` names the file in errors. JSON files (by name) are parsed as one JSON value.
pub fn read_text(origin: &str, text: &str, objects: &mut Objects) -> Result<usize, ConfigError> {
    let error = |line: usize, column: usize, message: String| ConfigError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    };
    // (document number, its first line, its value)
    let documents: Vec<(usize, usize, Value)> = if origin.ends_with(".json") {
        let v = serde_json::from_str(text)
            .map_err(|e| error(e.line(), e.column(), format!("invalid JSON: {e}")))?;
        vec![(1, 1, v)]
    } else {
        let mut out = Vec::new();
        for (index, (first_line, chunk)) in split_documents(text).into_iter().enumerate() {
            let blank = chunk
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
            if blank {
                continue;
            }
            let v: Value = serde_saphyr::from_str(&chunk).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (first_line + l.line() as usize - 1, l.column() as usize))
                    .unwrap_or((first_line, 1));
                let message = e.to_string();
                let message = message.lines().next().unwrap_or("");
                // "error: line 3 column 11: what" → "what" (the position is given above).
                let message = message.strip_prefix("error: ").unwrap_or(message);
                let message = message
                    .split_once(": ")
                    .filter(|(head, _)| head.starts_with("line "))
                    .map_or(message, |(_, rest)| rest)
                    .to_owned();
                error(
                    line,
                    column.max(1),
                    format!("document {}: invalid YAML: {message}", index + 1),
                )
            })?;
            out.push((index + 1, first_line, v));
        }
        out
    };
    let mut ignored = 0;
    for (number, line, value) in documents {
        let located = |m: String| error(line, 1, format!("document {number}: {m}"));
        ignored += add(&value, &located, objects)?;
    }
    Ok(ignored)
}

/// One document (or List) → objects; returns how many objects were ignored.
fn add(
    value: &Value,
    error: &dyn Fn(String) -> ConfigError,
    objects: &mut Objects,
) -> Result<usize, ConfigError> {
    if value.is_null() {
        return Ok(0);
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    let what = format!("{kind} {name}");
    let expect = |wanted: &str| -> Result<(), ConfigError> {
        if api == wanted {
            Ok(())
        } else {
            Err(error(format!(
                "{what}: apiVersion {api:?} is not read; sluice reads {kind} {wanted}"
            )))
        }
    };
    let typed = |e: serde_json::Error| error(format!("{what}: {e}"));
    match kind {
        "List" => {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| error("kind List without an `items` array".into()))?;
            let mut ignored = 0;
            for (i, item) in items.iter().enumerate() {
                ignored += add(item, &|m| error(format!("items[{i}]: {m}")), objects)?;
            }
            Ok(ignored)
        }
        "Service" => {
            expect("v1")?;
            let s = serde_json::from_value(value.clone()).map_err(typed)?;
            objects.services.push(Arc::new(s));
            Ok(0)
        }
        "EndpointSlice" => {
            expect("discovery.k8s.io/v1")?;
            let s = serde_json::from_value(value.clone()).map_err(typed)?;
            objects.slices.push(Arc::new(s));
            Ok(0)
        }
        "Endpoints" => {
            expect("v1")?;
            let e = serde_json::from_value(value.clone()).map_err(typed)?;
            objects.endpoints.push(Arc::new(e));
            Ok(0)
        }
        "Node" => {
            expect("v1")?;
            let n = serde_json::from_value(value.clone()).map_err(typed)?;
            objects.nodes.push(Arc::new(n));
            Ok(0)
        }
        "" if !value.is_object() => Err(error(
            "not a Kubernetes object (expected a mapping with `kind` and `apiVersion`)".into(),
        )),
        "" => Err(error("has no `kind`".into())),
        other => {
            tracing::debug!(
                kind = other,
                name,
                "ignored: not a Service, EndpointSlice, Endpoints or Node"
            );
            Ok(1)
        }
    }
}

/// Splits YAML text at document markers (`---` at the start of a line), keeping each
/// document's first line number (1-based). A `...` line ends a document.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first = 1;
    let mut ended = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if marker {
            docs.push((first, std::mem::take(&mut current)));
            first = i + 2;
            ended = false;
            // Content after the marker on the same line belongs to the new document.
            let rest = line[3..].trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
                first = i + 1;
            }
            continue;
        }
        if line == "..." {
            ended = true;
            continue;
        }
        if !ended {
            current.push_str(line);
        }
        current.push('\n');
    }
    docs.push((first, current));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(origin: &str, text: &str) -> Result<(Objects, usize), ConfigError> {
        let mut o = Objects::default();
        let ignored = read_text(origin, text, &mut o)?;
        Ok((o, ignored))
    }

    const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: myfrontend-abcde
  namespace: workshop
  labels:
    kubernetes.io/service-name: myfrontend
addressType: IPv4
ports:
- name: http
  port: 9000
  protocol: TCP
endpoints:
- addresses: [\"10.0.0.1\"]
";

    #[test]
    fn the_seeds_verbatim_with_a_slice() {
        let seed = include_str!("../../tests/fixtures/k8s/myfrontend-service.yaml");
        let text = format!("{seed}---\n{SLICE}");
        let (objects, ignored) = read("seed.yaml", &text).unwrap();
        assert_eq!(
            (objects.services.len(), objects.slices.len(), ignored),
            (1, 1, 0)
        );
        let (model, problems) =
            k8s::build_model(Settings::default(), &objects, &K8sOptions::default(), None);
        assert_eq!(problems, []);
        assert_eq!(model.services[0].node_port, 30000);
        assert_eq!(
            model.services[0].endpoints[0].addr.to_string(),
            "10.0.0.1:9000"
        );

        let hello = include_str!("../../tests/fixtures/k8s/helloworld-service-nodeport.yaml");
        let (objects, _) = read("hello.yaml", hello).unwrap();
        let name = &objects.services[0].metadata;
        assert_eq!(name.name.as_deref(), Some("helloworld"));
        let (model, _) =
            k8s::build_model(Settings::default(), &objects, &K8sOptions::default(), None);
        assert_eq!(model.services[0].key.to_string(), "default/helloworld");
        assert!(model.services[0].node_port_allocated);
    }

    #[test]
    fn documents_lists_and_other_kinds() {
        let text = format!(
            "# leading comment\n---\n{SLICE}---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: frontend\n...\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: x}}\n- apiVersion: v1\n  kind: Endpoints\n  metadata: {{name: myfrontend, namespace: workshop}}\n"
        );
        let (objects, ignored) = read("multi.yml", &text).unwrap();
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(objects.endpoints.len(), 1);
        assert_eq!(ignored, 2, "the Deployment and the ConfigMap");
    }

    #[test]
    fn errors_name_file_document_and_line() {
        // A YAML syntax error in the second document: the line is the file's.
        let text = format!("{SLICE}---\napiVersion: v1\nkind: Service\nmetadata: [unclosed\n");
        let e = read("bad.yaml", &text).unwrap_err();
        assert_eq!(e.origin, "bad.yaml");
        assert_eq!((e.line, e.column), (18, 11), "{e}");
        assert_eq!(e.message, "document 2: invalid YAML: unclosed bracket '['");
        assert!(e.message.starts_with("document 2: invalid YAML"), "{e}");

        // Wrong types: the document and its first line.
        let text = format!("{SLICE}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: eighty\n");
        let e = read("types.yaml", &text).unwrap_err();
        assert_eq!(e.line, 16, "{e}");
        assert!(
            e.to_string()
                .starts_with("types.yaml:16:1: document 2: Service web: "),
            "{e}"
        );

        let e = read(
            "v.yaml",
            &SLICE.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("apiVersion \"discovery.k8s.io/v1beta1\" is not read"),
            "{e}"
        );

        let e = read("k.yaml", "just: a map\n").unwrap_err();
        assert!(e.message.contains("has no `kind`"), "{e}");

        let e = read(
            "j.json",
            "{\"kind\": \"Service\",\n \"apiVersion\": \"v1\" oops}",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.message.starts_with("invalid JSON")),
            (2, true),
            "{e}"
        );
    }

    #[test]
    fn directory_is_read_in_name_order_without_subdirectories() {
        let dir = std::env::temp_dir().join(format!("sluice-manifests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let seed = include_str!("../../tests/fixtures/k8s/myfrontend-service.yaml");
        std::fs::write(dir.join("b.yaml"), SLICE).unwrap();
        std::fs::write(dir.join("a.yml"), seed).unwrap();
        std::fs::write(dir.join("notes.txt"), "not: read").unwrap();
        std::fs::write(dir.join(".a.yaml.swp"), "garbage: [").unwrap();
        std::fs::write(dir.join("sub/c.yaml"), "garbage: [").unwrap();
        let m = Manifests {
            dir: dir.clone(),
            config: None,
            options: K8sOptions::default(),
        };
        let (model, problems) = m.load(None).unwrap();
        assert_eq!(problems, []);
        assert_eq!(model.services.len(), 1);

        // A settings file with a Service is refused; node settings are taken.
        let toml = dir.join("node.toml");
        std::fs::write(&toml, "[[service]]\nname = \"a\"\nport = 80\n").unwrap();
        let with = Manifests {
            config: Some(toml.clone()),
            ..m.clone()
        };
        let e = with.load(None).unwrap_err();
        assert!(e.message.contains("node settings only"), "{e}");
        std::fs::write(&toml, "listen_addresses = [\"127.0.0.1\"]\n").unwrap();
        let (model, _) = with.load(None).unwrap();
        assert_eq!(
            model.settings.listen,
            crate::model::ListenAddresses::Only(vec!["127.0.0.1".parse().unwrap()])
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let e = m.load(None).unwrap_err();
        assert!(
            e.message.starts_with("cannot read the manifest directory"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_among_the_manifests_is_an_error_not_a_hang() {
        let dir =
            std::env::temp_dir().join(format!("sluice-manifests-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), SLICE).unwrap();
        let fifo = dir.join("b.yaml");
        crate::config::mkfifo(&fifo);
        let m = Manifests {
            dir: dir.clone(),
            config: None,
            options: K8sOptions::default(),
        };
        let e = m.load(None).unwrap_err();
        assert_eq!(e.origin, fifo.display().to_string());
        assert!(e.message.contains("is a FIFO"), "{e}");
        // A settings file that is a FIFO: the same.
        std::fs::remove_file(&fifo).unwrap();
        let with = Manifests {
            config: Some(fifo.clone()),
            ..m.clone()
        };
        crate::config::mkfifo(&fifo);
        let e = with.read().unwrap_err();
        assert!(e.message.contains("is a FIFO"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The zone for topology hints: a Node object named like this node, in the directory,
    /// wins over `--zone`; another node's object is not this node's.
    #[test]
    fn this_nodes_zone_from_a_node_object_or_the_flag() {
        let dir = std::env::temp_dir().join(format!("sluice-zone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let seed = include_str!("../../tests/fixtures/k8s/myfrontend-service.yaml");
        // Two pods: 10.0.0.1 hinted for zone-a, 10.0.0.2 for zone-b.
        let slice = SLICE.to_owned()
            + "  hints: {forZones: [{name: zone-a}]}\n"
            + "- addresses: [\"10.0.0.2\"]\n  hints: {forZones: [{name: zone-b}]}\n";
        std::fs::write(dir.join("a.yaml"), seed).unwrap();
        std::fs::write(dir.join("b.yaml"), slice).unwrap();
        let node = |name: &str, zone: &str| {
            format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/zone: {zone}\n")
        };
        std::fs::write(dir.join("nodes.yaml"), node("other", "zone-a")).unwrap();
        let usable = |zone: Option<&str>| {
            let m = Manifests {
                dir: dir.clone(),
                config: None,
                options: K8sOptions {
                    node_name: Some("me".into()),
                    proxy_name: None,
                    zone: zone.map(Into::into),
                    primary_ips: Vec::new(),
                },
            };
            let (model, problems) = m.load(None).unwrap();
            assert_eq!(problems, []);
            let p = &model.services[0];
            let (w, _) = crate::table::usable::routing_weights(p.traffic_policy, &p.endpoints);
            w.iter().filter(|w| **w > 0).count()
        };
        assert_eq!(usable(None), 2, "no zone: every pod");
        assert_eq!(usable(Some("zone-a")), 1, "--zone: only zone-a's pod");
        assert_eq!(usable(Some("zone-c")), 2, "a zone no hint names: every pod");
        std::fs::write(dir.join("nodes.yaml"), node("me", "zone-b")).unwrap();
        assert_eq!(usable(Some("zone-c")), 1, "the Node object wins: zone-b");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
