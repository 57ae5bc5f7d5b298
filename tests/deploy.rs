//! `deploy/kubernetes/`: every manifest is a valid Kubernetes object (parsed into the
//! k8s-openapi types of the pinned API version, an unknown field is an error), the
//! kustomizations name every file, the DaemonSet is the node agent the install page
//! describes, its own arguments pass `sluice check` with the ConfigMap's settings, and the
//! ClusterRole allows exactly the API calls `sluice run --kubernetes` makes (recorded by the
//! fake API server, not copied from the code).

mod common;
use common::fake_api::FakeApi;
use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Parses one YAML document into `T`; every field `T` does not know is an error (its path).
fn parse_strict<T: DeserializeOwned>(origin: &str, text: &str) -> Result<T, String> {
    let value: Value =
        serde_saphyr::from_str(text).map_err(|e| format!("{origin}: invalid YAML: {e}"))?;
    let mut unknown = Vec::new();
    let parsed: T = serde_ignored::deserialize(value, |path| {
        unknown.push(path.to_string().replace(".?", ""))
    })
    .map_err(|e| format!("{origin}: {e}"))?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(format!("{origin}: unknown fields {unknown:?}"))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load<T: DeserializeOwned>(name: &str) -> T {
    let path = deploy_dir().join(name);
    parse_strict(&path.display().to_string(), &read(&path)).unwrap_or_else(|e| panic!("{e}"))
}

/// `kustomization.yaml` (and components): the fields used here; any other is an error.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    path: String,
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    parse_strict(&path.display().to_string(), &read(&path)).unwrap_or_else(|e| panic!("{e}"))
}

/// The components' directories.
fn components() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn daemonset() -> DaemonSet {
    load("daemonset.yaml")
}

fn container(ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

/// The ConfigMap's `sluice.toml`, parsed.
fn node_settings() -> (String, toml::Table) {
    let cm: ConfigMap = load("configmap.yaml");
    let text = cm.data.unwrap()["sluice.toml"].clone();
    let table = text
        .parse::<toml::Table>()
        .expect("ConfigMap sluice.toml is TOML");
    (text, table)
}

#[test]
fn every_manifest_is_a_kubernetes_object_without_unknown_fields() {
    let base = kustomization(&deploy_dir());
    assert_eq!(base.kind, "Kustomization");
    assert_eq!(base.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(base.namespace.as_deref(), Some("kube-system"));
    let mut kinds = BTreeSet::new();
    for file in &base.resources {
        let path = deploy_dir().join(file);
        let text = read(&path);
        let origin = path.display().to_string();
        assert!(
            !text.contains("\n---"),
            "{origin}: one object per file (the test parses one document)"
        );
        let kind: Value = serde_saphyr::from_str(&text).unwrap();
        let kind = kind["kind"].as_str().unwrap_or_default().to_owned();
        let checked = match kind.as_str() {
            "DaemonSet" => parse_strict::<DaemonSet>(&origin, &text).map(|_| ()),
            "ServiceAccount" => parse_strict::<ServiceAccount>(&origin, &text).map(|_| ()),
            "ClusterRole" => parse_strict::<ClusterRole>(&origin, &text).map(|_| ()),
            "ClusterRoleBinding" => parse_strict::<ClusterRoleBinding>(&origin, &text).map(|_| ()),
            "ConfigMap" => parse_strict::<ConfigMap>(&origin, &text).map(|_| ()),
            other => Err(format!(
                "{origin}: kind {other:?} is not checked by this test"
            )),
        };
        checked.unwrap_or_else(|e| panic!("{e}"));
        kinds.insert(kind);
    }
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    // The components' patches are partial DaemonSets: the same rules apply.
    for dir in components() {
        let k = kustomization(&dir);
        assert_eq!(k.kind, "Component", "{}", dir.display());
        assert!(!k.patches.is_empty(), "{}", dir.display());
        for p in &k.patches {
            let path = dir.join(&p.path);
            let patch: DaemonSet = parse_strict(&path.display().to_string(), &read(&path))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(patch.metadata.name.as_deref(), Some("sluice"));
            assert_eq!(patch.metadata.namespace.as_deref(), Some("kube-system"));
        }
    }
}

/// The checker itself: a misspelled field, at the top or deep in the pod template, fails.
#[test]
fn an_unknown_field_in_a_manifest_is_an_error() {
    let good = read(&deploy_dir().join("daemonset.yaml"));
    parse_strict::<DaemonSet>("daemonset.yaml", &good).unwrap();
    for (from, to, path) in [
        (
            "hostNetwork: true",
            "hostNetwrok: true",
            "spec.template.spec.hostNetwrok",
        ),
        (
            "imagePullPolicy: IfNotPresent",
            "imagePullPolicyy: IfNotPresent",
            "spec.template.spec.containers.0.imagePullPolicyy",
        ),
        (
            "  updateStrategy:",
            "  updateStrategey:",
            "spec.updateStrategey",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let err = parse_strict::<DaemonSet>("daemonset.yaml", &bad).unwrap_err();
        assert!(err.contains(path), "{err}");
    }
    // A wrong kind is refused too.
    let err = parse_strict::<ServiceAccount>("x", &good).unwrap_err();
    assert!(err.contains("apps/v1"), "{err}");
}

#[test]
fn the_kustomization_names_every_manifest() {
    let base = kustomization(&deploy_dir());
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    let mut listed = base.resources.clone();
    listed.sort();
    assert_eq!(listed, files);
    for dir in components() {
        let k = kustomization(&dir);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect();
        files.sort();
        let mut patched: Vec<String> = k.patches.iter().map(|p| p.path.clone()).collect();
        patched.sort();
        assert_eq!(patched, files, "{}", dir.display());
    }
}

/// What docs/install-kubernetes.md promises about the DaemonSet.
#[test]
fn the_daemonset_is_a_node_agent_with_only_the_capabilities_it_needs() {
    let ds = daemonset();
    let spec = ds.spec.clone().unwrap();
    let pod = spec.template.spec.clone().unwrap();
    let c = container(&ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // Tolerates every taint.
    let tolerations = pod.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );
    // The ServiceAccount the binding names.
    let sa: ServiceAccount = load("serviceaccount.yaml");
    let binding: ClusterRoleBinding = load("clusterrolebinding.yaml");
    let role: ClusterRole = load("clusterrole.yaml");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (Some(subject.name.clone()), subject.namespace.clone()),
        (sa.metadata.name.clone(), sa.metadata.namespace.clone())
    );
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    assert_eq!(binding.role_ref.kind, "ClusterRole");

    // NODE_NAME from the downward API.
    let env = c.env.clone().unwrap();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Never privileged; no escalation; only NET_BIND_SERVICE (NET_ADMIN only with the
    // transparent component).
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_eq!(caps.add.unwrap(), ["NET_BIND_SERVICE"]);
    let transparent: DaemonSet = {
        let path = deploy_dir().join("components/transparent/net-admin.yaml");
        parse_strict("net-admin.yaml", &read(&path)).unwrap()
    };
    let tcaps = container(&transparent)
        .security_context
        .unwrap()
        .capabilities
        .unwrap();
    assert_eq!(tcaps.add.unwrap(), ["NET_BIND_SERVICE", "NET_ADMIN"]);
    assert_eq!(tcaps.drop.unwrap(), ["ALL"]);

    // Probes on the HTTP server the ConfigMap configures: liveness /livez, readiness
    // /healthz; a startup probe covers the wait for the API's first list.
    let (_, settings) = node_settings();
    let metrics = settings["metrics_address"]
        .as_str()
        .expect("metrics_address");
    let port: i32 = metrics.rsplit_once(':').unwrap().1.parse().unwrap();
    let probe = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.expect("probe").http_get.expect("httpGet");
        let k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) = g.port else {
            panic!("numeric probe port")
        };
        (g.path.unwrap(), n)
    };
    assert_eq!(probe(c.liveness_probe.clone()), ("/livez".to_owned(), port));
    assert_eq!(
        probe(c.readiness_probe.clone()),
        ("/healthz".to_owned(), port)
    );
    assert_eq!(probe(c.startup_probe.clone()), ("/livez".to_owned(), port));

    // The control socket's directory is the node's /run/sluice.
    let socket = settings["control_socket"].as_str().expect("control_socket");
    let socket_dir = Path::new(socket).parent().unwrap().to_str().unwrap();
    let mount = c
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_path == socket_dir)
        .expect("a volume at the control socket's directory");
    let volume = pod
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let host = volume.host_path.expect("hostPath");
    assert_eq!(host.path, socket_dir);
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));

    // Requests, no limits; a rolling update one node at a time, without surge.
    let resources = c.resources.clone().unwrap();
    let requests = resources.requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(resources.limits.is_none());
    let strategy = spec.update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    // Room for drain_timeout before the kubelet kills the pod.
    let drain = humantime::parse_duration(settings["drain_timeout"].as_str().unwrap()).unwrap();
    assert!(pod.termination_grace_period_seconds.unwrap() as u64 > drain.as_secs());

    // The image deploy/image/build.sh tags, at this version.
    assert_eq!(
        c.image.as_deref(),
        Some(&*format!("localhost/sluice:{}", env!("CARGO_PKG_VERSION")))
    );
}

/// The container's arguments with the ConfigMap file written to `dir` (where the pod mounts
/// it: the path in `--config=` must be the mount path plus a key of the ConfigMap).
fn args_with_local_config(args: &[String], dir: &TempDir) -> Vec<String> {
    let ds = daemonset();
    let c = container(&ds);
    let cm: ConfigMap = load("configmap.yaml");
    let config_mount = c
        .volume_mounts
        .unwrap()
        .into_iter()
        .find(|m| m.name == "config")
        .unwrap()
        .mount_path;
    args.iter()
        .map(|a| match a.strip_prefix("--config=") {
            Some(path) => {
                let key = path
                    .strip_prefix(&format!("{config_mount}/"))
                    .unwrap_or_else(|| panic!("{path} is not under {config_mount}"));
                let text = &cm.data.as_ref().unwrap()[key];
                format!("--config={}", dir.write(key, text).display())
            }
            None => a.clone(),
        })
        .collect()
}

/// `sluice check` with the DaemonSet's own arguments (`run` → `check`), and with each
/// component's, against the ConfigMap's settings: what the pod starts with is valid.
#[test]
fn the_daemonset_arguments_pass_sluice_check() {
    let base = container(&daemonset()).args.unwrap();
    let mut variants = vec![("base".to_owned(), base)];
    for dir in components() {
        for p in kustomization(&dir).patches {
            let patch: DaemonSet = parse_strict("patch", &read(&dir.join(&p.path))).unwrap();
            if let Some(args) = container(&patch).args {
                variants.push((dir.display().to_string(), args));
            }
        }
    }
    assert!(
        variants.len() >= 2,
        "the all-services component replaces the arguments"
    );
    for (what, args) in variants {
        assert_eq!(args[0], "run", "{what}: {args:?}");
        let dir = TempDir::new("ds-check");
        let mut args = args_with_local_config(&args, &dir);
        args[0] = "check".into();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut s = Sluice::spawn(
            &argv,
            Launch {
                env: vec![("NODE_NAME".into(), "node-a".into())],
                ..Launch::default()
            },
        );
        let status = s.wait_exit(SOON);
        let out = s.stdout();
        assert!(
            status.success(),
            "{what}: sluice {args:?} failed: {status}\n{out}{}",
            s.stderr()
        );
        assert!(
            out.contains("services: from the Kubernetes API (cluster-wide), node node-a"),
            "{what}:\n{out}"
        );
    }
}

/// `check` refuses what `run` would refuse: a ConfigMap that declares Services.
#[test]
fn sluice_check_refuses_services_in_the_node_settings() {
    let dir = TempDir::new("ds-check-bad");
    let (text, _) = node_settings();
    let path = dir.write(
        "sluice.toml",
        &format!("{text}\n[[service]]\nname = \"x\"\nport = 80\n"),
    );
    let config = format!("--config={}", path.display());
    let mut s = Sluice::spawn(&["check", "--kubernetes", &config], Launch::default());
    let status = s.wait_exit(SOON);
    assert!(!status.success());
    assert!(
        s.stderr()
            .contains("`[[service]]` tables cannot be used with --kubernetes"),
        "{}",
        s.stderr()
    );
}

/// One API request as RBAC sees it (Kubernetes' request-info rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    group: String,
    resource: String,
    verb: String,
}

/// `GET /apis/discovery.k8s.io/v1/endpointslices?watch=true&…` → (discovery.k8s.io,
/// endpointslices, watch): a GET of a collection is `list`, or `watch` with `watch=true`;
/// of a named object `get`; POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`.
fn access(request: &str) -> Access {
    let (method, target) = request.split_once(' ').expect(request);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {request}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        r => r,
    };
    let (resource, named) = match rest {
        [resource] => (*resource, false),
        [resource, _name] => (*resource, true),
        _ => panic!("unexpected path: {request}"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named, watch) {
        ("GET", _, true) => "watch",
        ("GET", false, false) => "list",
        ("GET", true, false) => "get",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => panic!("unexpected method: {request}"),
    };
    Access {
        group: group.into(),
        resource: resource.into(),
        verb: verb.into(),
    }
}

/// Every (group, resource, verb) the ClusterRole grants.
fn granted(role: &ClusterRole) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    for rule in role.rules.clone().unwrap() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.clone().unwrap() {
            for resource in rule.resources.clone().unwrap() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards"
                    );
                    out.insert(Access {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Grants the ClusterRole holds for calls sluice does not normally make: `get` on nodes (the
/// Node is listed and watched by name; `get` is their usual companion) and `patch` on
/// Events (kube-rs's Recorder patches a repeat of the same Event within 6 minutes into a
/// series; sluice posts one problem at most once per 10 minutes, so it only happens for
/// two problems whose first 128 characters are the same).
const GRANTED_NOT_NORMALLY_MADE: &[(&str, &str, &str)] =
    &[("", "nodes", "get"), ("events.k8s.io", "events", "patch")];

#[test]
fn the_cluster_role_allows_exactly_the_calls_sluice_makes() {
    let api = FakeApi::start_new();
    let fixture = |name: &str| -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/api")
            .join(name);
        serde_json::from_str(&read(&path)).unwrap()
    };
    // A NodePort of our own, not the fixture's 30000: another sluice on this machine may
    // serve that one, and sluice refuses to share a NodePort.
    let port = free_port();
    let mut service = fixture("myfrontend-service.json");
    service["spec"]["ports"][0]["nodePort"] = port.into();
    // A bad annotation: a problem sluice posts as an Event (create).
    service["metadata"]["annotations"]["sluice.io/policy"] = serde_json::json!("fastest");
    api.apply(service);
    api.apply(fixture("myfrontend-slice.json"));
    // This node, whose zone sluice watches by name (list, watch).
    api.apply(
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    );

    // The DaemonSet's arguments, pointed at the fake API and at loopback.
    let dir = TempDir::new("rbac");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let sock = dir.path().join("ctl.sock");
    let settings = dir.write(
        "node.toml",
        &format!(
            "listen_addresses = [\"127.0.0.1\"]\nnode_port_range = \"{port}-{port}\"\nworkers = 1\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    );
    let mut args: Vec<String> = container(&daemonset())
        .args
        .unwrap()
        .into_iter()
        .map(|a| {
            if a.starts_with("--config=") {
                format!("--config={}", settings.display())
            } else {
                a
            }
        })
        .collect();
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Sluice::spawn(
        &argv,
        Launch {
            env: vec![("NODE_NAME".into(), "node-a".into())],
            ..Launch::default()
        },
    );
    // Synced (the daemon answers once both lists are complete), then a 410 that makes it
    // relist, and a cut connection it resumes from: every kind of request it sends.
    node.wait_until("the first sync", || {
        ctl(&sock, &["status"]).status.success()
    });
    wait_for("the Event for the bad annotation", SOON, || {
        (!api.events().is_empty()).then_some(())
    });
    let lists = api.requests().len();
    api.expire_watches();
    wait_for("relists after 410", SOON, || {
        (api.requests().len() >= lists + 4).then_some(())
    });
    api.drop_connections();
    let before = api.requests().len();
    wait_for("watches resumed", SOON, || {
        (api.requests().len() >= before + 2).then_some(())
    });
    node.assert_alive();
    drop(node);

    let requests = api.requests();
    let made: BTreeSet<Access> = requests.iter().map(|r| access(r)).collect();
    let role: ClusterRole = load("clusterrole.yaml");
    let grants = granted(&role);
    let not_granted: Vec<&Access> = made.difference(&grants).collect();
    assert!(
        not_granted.is_empty(),
        "sluice makes calls the ClusterRole does not allow: {not_granted:?}\n(requests: {requests:#?})"
    );
    let pending: BTreeSet<Access> = GRANTED_NOT_NORMALLY_MADE
        .iter()
        .map(|(g, r, v)| Access {
            group: g.to_string(),
            resource: r.to_string(),
            verb: v.to_string(),
        })
        .collect();
    let unused: Vec<&Access> = grants
        .iter()
        .filter(|g| !made.contains(g) && !pending.contains(g))
        .collect();
    assert!(
        unused.is_empty(),
        "the ClusterRole grants calls sluice does not make: {unused:?}"
    );
    // The watch's own calls are there: every kind, listed and watched; and the Event.
    assert!(made.contains(&Access {
        group: "events.k8s.io".into(),
        resource: "events".into(),
        verb: "create".into(),
    }));
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
    ] {
        for verb in ["list", "watch"] {
            let a = Access {
                group: group.into(),
                resource: resource.into(),
                verb: verb.into(),
            };
            assert!(made.contains(&a), "{a:?} not seen in {requests:#?}");
        }
    }
}

#[test]
fn request_info_follows_kubernetes() {
    let a = |r: &str| {
        let a = access(r);
        (a.group, a.resource, a.verb)
    };
    let t = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
    assert_eq!(
        a("GET /api/v1/services?limit=500"),
        t("", "services", "list")
    );
    assert_eq!(
        a("GET /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?watch=true&resourceVersion=5"),
        t("discovery.k8s.io", "endpointslices", "watch")
    );
    assert_eq!(a("GET /api/v1/nodes/node-a"), t("", "nodes", "get"));
    assert_eq!(
        a("POST /apis/events.k8s.io/v1/namespaces/shop/events"),
        t("events.k8s.io", "events", "create")
    );
    assert_eq!(
        a("PATCH /apis/events.k8s.io/v1/namespaces/shop/events/x.1"),
        t("events.k8s.io", "events", "patch")
    );
}

/// `kubectl kustomize` builds the base and an overlay with both components (where kubectl
/// is installed; skipped loudly otherwise): the components apply to the DaemonSet.
#[test]
fn kustomize_builds_the_base_and_the_components() {
    if std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED: kubectl is not installed (kustomize builds not checked)");
        return;
    }
    let build = |dir: &Path| -> Vec<Value> {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split("\n---\n")
            .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
            .collect()
    };
    let base = build(&deploy_dir());
    assert_eq!(base.len(), 5);
    // An overlay beside the repository's target directory, as an operator writes one.
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("kustomize-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../../deploy/kubernetes]\n\
         components: [../../deploy/kubernetes/components/transparent, ../../deploy/kubernetes/components/all-services]\n\
         images: [{name: localhost/sluice, newName: registry.example/sluice}]\n",
    )
    .unwrap();
    let built = build(&overlay);
    let _ = std::fs::remove_dir_all(&overlay);
    let ds = built
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_BIND_SERVICE", "NET_ADMIN"])
    );
    assert!(
        !c["args"].to_string().contains("--proxy-name"),
        "{}",
        c["args"]
    );
    assert!(c["image"]
        .as_str()
        .unwrap()
        .starts_with("registry.example/sluice:"));
    // Everything still in kube-system, the ServiceAccount the binding names included.
    for o in &built {
        if o["kind"] != "ClusterRole" && o["kind"] != "ClusterRoleBinding" {
            assert_eq!(o["metadata"]["namespace"], "kube-system", "{o}");
        }
    }
}
