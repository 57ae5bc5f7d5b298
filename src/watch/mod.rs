//! `sluice run --kubernetes`: Services and EndpointSlices from the Kubernetes API (and this
//! node's Node, by name, for its zone), kept in local stores, turned into the model by
//! [`crate::config::k8s::build_model`]; problems with Services go back to the API as Events
//! ([`events`]).
//!
//! It owns the API client (kubeconfig or in-cluster), one kube-rs `watcher` + reflector
//! store per (kind, namespace), the status of each stream ([`status`]) and the coalescing of
//! bursts of changes into reloads ([`coalesce`]). It must not build snapshots or touch
//! listeners: it tells the control plane "the source changed" (a callback), and the control
//! plane's reload transaction calls [`ClusterWatch::load`], which snapshots the stores (`Arc`s,
//! no copies) and converts them. The client, streams and coalescer run on their own thread
//! (`sluice-kube`, see [`ClusterWatch::start`]), so a reload never holds up the streams.
//!
//! # Failure behaviour
//! kube-rs's watcher lists (paginated, 500 per page), then watches from the list's
//! `resourceVersion` with bookmarks. A dropped or ended watch resumes from the last seen
//! version; `410 Gone` (version too old, e.g. after an API server restart that lost its
//! watch cache) relists; failed requests are retried with kube's `default_backoff()`
//! (client-go's: 0.8 s doubling to 30 s, with jitter). A relist fills a side buffer that
//! replaces the store only when complete, so a model is never built from half a list.
//! Meanwhile the stores keep their last content, and the model built from it keeps
//! serving. Only transitions are logged, once each (first sync, lost, recovered, relisted;
//! a relist *attempt* is not an answer, see [`status`]).
//!
//! # Startup
//! [`ClusterWatch::wait_synced`] waits until every stream has completed its first list; the
//! daemon builds its first model, opens its NodePorts and tells systemd `READY=1` only
//! then (docs/kubernetes-watch.md says why).

pub mod coalesce;
pub mod events;
pub mod status;

use crate::config::k8s::{self, K8sOptions, Objects, Problem};
use crate::config::ConfigError;
use crate::model::{Model, Settings};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use status::{Happened, StreamStatus, Transition, WatchStatus};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;

/// How `sluice run --kubernetes` was asked to watch.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--kubeconfig`; `None`: kube's inference (`KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// `--namespace` (repeatable); empty: cluster-wide.
    pub namespaces: Vec<String>,
    /// `--config`: node settings (TOML without `[[service]]`).
    pub settings_file: Option<PathBuf>,
    /// Node name and service-proxy-name.
    pub k8s: K8sOptions,
    /// How long bursts are coalesced.
    pub window: coalesce::Window,
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The kubeconfig given with `--kubeconfig` could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// No kubeconfig was given and none could be inferred (no `KUBECONFIG`, no
    /// `~/.kube/config`, not in a pod).
    #[error("no Kubernetes API configuration (use --kubeconfig, KUBECONFIG, ~/.kube/config, or run in a pod): {0}")]
    NoConfig(String),
    /// The client could not be built from the configuration (e.g. a bad certificate).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    /// The node settings file is invalid.
    #[error(transparent)]
    Settings(#[from] ConfigError),
    /// The watch thread or its runtime could not start.
    #[error("cannot start the Kubernetes watch: {0}")]
    Runtime(String),
    /// The node settings file declares Services: with `--kubernetes` they come from the API.
    #[error("{file}: `[[service]]` tables cannot be used with --kubernetes (Services come from the API); keep only node settings in this file")]
    ServicesInSettings { file: String },
}

/// The Kubernetes configuration source: options, node settings, and (once started) the
/// stores and their status.
pub struct ClusterWatch {
    options: Options,
    settings: Mutex<Settings>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    /// This node's Node object (watched by name when the node name is known): its
    /// `topology.kubernetes.io/zone` label is the zone hints are compared with.
    node: Option<Store<Node>>,
    /// Problems to post as Kubernetes Events (set by `start`).
    events: Option<mpsc::UnboundedSender<events::ProblemEvent>>,
    status: WatchStatus,
    /// Problems reported by the last conversion: each is logged once while it lasts.
    problems: Mutex<BTreeSet<(String, String)>>,
}

impl ClusterWatch {
    /// Reads the node settings; nothing is contacted yet.
    pub fn new(options: Options) -> Result<ClusterWatch, WatchError> {
        let settings = read_settings(&options)?;
        Ok(ClusterWatch {
            options,
            settings: Mutex::new(settings),
            services: Vec::new(),
            slices: Vec::new(),
            node: None,
            events: None,
            status: WatchStatus::default(),
            problems: Mutex::new(BTreeSet::new()),
        })
    }

    /// The node settings in effect (from `--config`, or the defaults).
    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// The node settings file (`--config`), which an explicit reload reads again.
    pub fn settings_file(&self) -> Option<&std::path::Path> {
        self.options.settings_file.as_deref()
    }

    /// Makes `text`, the settings file's content read by the caller (the control plane
    /// reads files off its loop), the node settings in effect; a bad text changes nothing.
    pub fn use_settings_text(&self, text: &str) -> Result<(), String> {
        let Some(path) = &self.options.settings_file else {
            return Ok(());
        };
        let settings = settings_from(path, text).map_err(|e| e.to_string())?;
        *lock(&self.settings) = settings;
        Ok(())
    }

    /// Starts the watch thread (`sluice-kube`): it builds the client and runs one watch
    /// task per (kind, namespace) and the coalescer, which calls `on_change(first_change)`
    /// once per burst. Returns when the client is built (or could not be).
    ///
    /// The watch has its own thread and runtime so that a reload on the control thread
    /// (about a second with 10,000 Services) never stalls the streams: on a shared thread
    /// a burst was read a few dozen events per reload and took minutes to apply
    /// (docs/benchmarks.md, "Kubernetes watch at scale").
    pub async fn start(
        &mut self,
        on_change: impl FnMut(Instant) + Send + 'static,
    ) -> Result<(), WatchError> {
        let namespaces: Vec<Option<String>> = if self.options.namespaces.is_empty() {
            vec![None]
        } else {
            self.options.namespaces.iter().cloned().map(Some).collect()
        };
        let mut service_writers = Vec::new();
        let mut slice_writers = Vec::new();
        for ns in &namespaces {
            let (writer, reader, index) = new_stream::<Service>(ns.clone(), &self.status);
            self.services.push(reader);
            service_writers.push((ns.clone(), writer, index));
            let (writer, reader, index) = new_stream::<EndpointSlice>(ns.clone(), &self.status);
            self.slices.push(reader);
            slice_writers.push((ns.clone(), writer, index));
        }
        let node_writer = self.options.k8s.node_name.clone().map(|name| {
            let (writer, reader, index) = new_stream::<Node>(None, &self.status);
            self.node = Some(reader);
            (name, writer, index)
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        self.events = Some(events_tx);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let options = self.options.clone();
        let status = self.status.clone();
        std::thread::Builder::new()
            .name("sluice-kube".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(WatchError::Runtime(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match client(&options).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let (changes_tx, changes) = mpsc::unbounded_channel();
                    if let Some((name, writer, index)) = node_writer {
                        // Only this node, by name: its zone label.
                        tokio::spawn(drive(
                            Api::<Node>::all(client.clone()),
                            watcher::Config::default().fields(&format!("metadata.name={name}")),
                            writer,
                            status.clone(),
                            index,
                            changes_tx.clone(),
                        ));
                    }
                    tokio::spawn(events::publish(
                        client.clone(),
                        options.k8s.node_name.clone(),
                        events_rx,
                    ));
                    for (ns, writer, index) in service_writers {
                        tokio::spawn(drive(
                            api::<Service>(&client, &ns),
                            watcher::Config::default(),
                            writer,
                            status.clone(),
                            index,
                            changes_tx.clone(),
                        ));
                    }
                    for (ns, writer, index) in slice_writers {
                        tokio::spawn(drive(
                            api::<EndpointSlice>(&client, &ns),
                            watcher::Config::default(),
                            writer,
                            status.clone(),
                            index,
                            changes_tx.clone(),
                        ));
                    }
                    drop(changes_tx);
                    let _ = started_tx.send(Ok(()));
                    coalesce::run(options.window, changes, on_change).await;
                });
            })
            .map_err(|e| WatchError::Runtime(e.to_string()))?;
        started
            .await
            .map_err(|_| WatchError::Runtime("the watch thread ended".into()))??;
        tracing::info!(
            server = %client_url(&self.options),
            scope = %self.scope(),
            "watching Kubernetes Services and EndpointSlices"
        );
        Ok(())
    }

    /// Waits until every store has completed its first list (retrying meanwhile; see the
    /// module docs).
    pub async fn wait_synced(&self) {
        for s in &self.services {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.slices {
            let _ = s.wait_until_ready().await;
        }
        if let Some(n) = &self.node {
            let _ = n.wait_until_ready().await;
        }
    }

    /// This node's zone, from its Node object's `topology.kubernetes.io/zone` label
    /// (`None` while unknown: no Node object, or no label).
    pub fn zone(&self) -> Option<String> {
        k8s::node_zone(
            &self.node.as_ref()?.state(),
            self.options.k8s.node_name.as_deref(),
        )
    }

    /// This node's primary addresses, from its Node object's `status.addresses` (empty
    /// while unknown).
    pub fn primary_ips(&self) -> Vec<std::net::IpAddr> {
        match &self.node {
            Some(store) => {
                k8s::node_primary_ips(&store.state(), self.options.k8s.node_name.as_deref())
            }
            None => Vec::new(),
        }
    }

    /// The objects in the stores now (shared, not copied).
    pub fn objects(&self) -> Objects {
        Objects {
            services: self.services.iter().flat_map(Store::state).collect(),
            slices: self.slices.iter().flat_map(Store::state).collect(),
            endpoints: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// The model for the stores' current content. `reread_settings`: read the `--config`
    /// file again first (explicit reloads); otherwise the settings in effect are used, so a
    /// file being edited never holds up endpoint changes. Problems with single objects are
    /// logged (once while they last), never fatal.
    pub fn load(&self, previous: Option<&Model>, reread_settings: bool) -> Result<Model, String> {
        if reread_settings && self.options.settings_file.is_some() {
            let s = read_settings(&self.options).map_err(|e| e.to_string())?;
            *lock(&self.settings) = s;
        }
        let settings = self.settings();
        let t = Instant::now();
        let objects = self.objects();
        let snapshot = t.elapsed();
        let options = K8sOptions {
            zone: self.zone(),
            primary_ips: self.primary_ips(),
            ..self.options.k8s.clone()
        };
        let (model, problems) = k8s::build_model(settings, &objects, &options, previous);
        let built = t.elapsed();
        self.report(&problems);
        tracing::debug!(
            services = objects.services.len(),
            slices = objects.slices.len(),
            ?snapshot,
            convert = ?built.saturating_sub(snapshot),
            report = ?t.elapsed().saturating_sub(built),
            "Kubernetes objects converted"
        );
        Ok(model)
    }

    /// Logs problems not reported by the previous conversion, and those that went away.
    fn report(&self, problems: &[Problem]) {
        let now: BTreeSet<(String, String)> = problems
            .iter()
            .map(|p| (p.object.clone(), p.message.clone()))
            .collect();
        let mut before = lock(&self.problems);
        for (object, message) in now.difference(&before) {
            tracing::warn!(%object, "{message}");
            // Problems of a Service are also Events on it (rate-limited there).
            if let (Some(tx), Some(p)) = (
                &self.events,
                problems
                    .iter()
                    .find(|p| &p.object == object && &p.message == message),
            ) {
                if let Some(e) = events::ProblemEvent::of(p, objects_uid(self, &p.object)) {
                    let _ = tx.send(e);
                }
            }
        }
        for (object, message) in before.difference(&now) {
            tracing::info!(%object, was = %message, "problem resolved");
        }
        *before = now;
    }

    /// Every stream's status.
    pub fn status(&self) -> WatchStatus {
        self.status.clone()
    }

    /// `kubernetes (cluster-wide)` / `kubernetes (namespaces a, b)`, for `ctl status`.
    pub fn describe(&self) -> String {
        format!("kubernetes ({})", self.scope())
    }

    fn scope(&self) -> String {
        if self.options.namespaces.is_empty() {
            "cluster-wide".to_owned()
        } else {
            format!("namespaces {}", self.options.namespaces.join(", "))
        }
    }
}

/// The uid of the Service named by a problem's object (`Service ns/name`), if stored.
fn objects_uid(source: &ClusterWatch, object: &str) -> Option<String> {
    let (namespace, name) = object.strip_prefix("Service ")?.split_once('/')?;
    source.services.iter().find_map(|store| {
        store
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref().unwrap_or("default") == namespace
            })
            .and_then(|s| s.metadata.uid.clone())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_settings(options: &Options) -> Result<Settings, WatchError> {
    let Some(path) = &options.settings_file else {
        return Ok(Settings::default());
    };
    let text = crate::config::read_file(path, crate::config::MAX_CONFIG_BYTES)?;
    settings_from(path, &text)
}

/// The node settings of the text of `path`, which must not define Services.
fn settings_from(path: &std::path::Path, text: &str) -> Result<Settings, WatchError> {
    let model = crate::config::parse(text, &path.display().to_string(), None)?;
    if !model.services.is_empty() {
        return Err(WatchError::ServicesInSettings {
            file: path.display().to_string(),
        });
    }
    Ok(model.settings)
}

/// Loads a kubeconfig file the way `run --kubeconfig` does (its current context, the files
/// it names) without contacting the API: for `sluice check`.
pub fn check_kubeconfig(path: &std::path::Path) -> Result<(), WatchError> {
    let options = Options {
        kubeconfig: Some(path.to_owned()),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WatchError::Runtime(e.to_string()))?;
    runtime.block_on(client(&options)).map(|_| ())
}

fn client_url(options: &Options) -> String {
    match &options.kubeconfig {
        Some(p) => format!("from {}", p.display()),
        None => "inferred".to_owned(),
    }
}

async fn client(options: &Options) -> Result<Client, WatchError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let config = match &options.kubeconfig {
        Some(path) => {
            let bad = |message: String| WatchError::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| match e {
                // kube's text repeats the path (quoted twice): say only why.
                kube::config::KubeconfigError::ReadConfig(io, _) => {
                    bad(format!("cannot read it: {io}"))
                }
                other => bad(other.to_string()),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| WatchError::NoConfig(e.to_string()))?,
    };
    tracing::debug!(url = %config.cluster_url, "Kubernetes API");
    Client::try_from(config).map_err(|e| WatchError::Client(e.to_string()))
}

/// The store (writer and reader) and status record of one kind's stream for one namespace
/// (or the cluster).
fn new_stream<K>(
    namespace: Option<String>,
    status: &WatchStatus,
) -> (reflector::store::Writer<K>, Store<K>, usize)
where
    K: Resource<DynamicType = ()> + Clone + k8s_openapi::Resource + 'static,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let writer = reflector::store::Writer::<K>::default();
    let reader = writer.as_reader();
    let index = status.add(StreamStatus::new(kind, namespace));
    (writer, reader, index)
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs one watch forever: applies its events to the store, records and logs transitions,
/// and reports changes to the coalescer. Objects listed during a (re)list are reported once,
/// when the list completes and the store is swapped.
async fn drive<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: reflector::store::Writer<K>,
    status: WatchStatus,
    index: usize,
    changes: mpsc::UnboundedSender<Instant>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let reader = writer.as_reader();
    let stream = watcher(api, config)
        // managedFields are most of an object's size and nothing reads them.
        .modify(|o| o.managed_fields_mut().clear())
        .default_backoff();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let at = Instant::now();
        match item {
            Ok(event) => {
                writer.apply_watcher_event(&event);
                let (what, notify) = match &event {
                    watcher::Event::Init => (Happened::ListStarted, false),
                    watcher::Event::InitApply(_) => (Happened::Object, false),
                    watcher::Event::InitDone => (Happened::ListDone, true),
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                        (Happened::Object, true)
                    }
                };
                let objects = reader.len();
                let (name, transitions) = status.update(index, |s| {
                    (s.name(), s.on_event(what, objects, SystemTime::now()))
                });
                for t in transitions {
                    match t {
                        Transition::FirstSync => {
                            tracing::info!(stream = %name, objects, "Kubernetes watch synced")
                        }
                        Transition::Recovered => tracing::info!(
                            stream = %name,
                            "Kubernetes API reachable again; watch resumed"
                        ),
                        Transition::Relisted => {
                            tracing::info!(stream = %name, objects, "Kubernetes watch relisted")
                        }
                        Transition::Lost(_) => {}
                    }
                }
                if notify && changes.send(at).is_err() {
                    return;
                }
            }
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                // Not a failure: the watch fell behind (or the server restarted); the next
                // step relists.
                status.update(index, |s| s.errors += 1);
                tracing::info!(
                    stream = %status.update(index, |s| s.name()),
                    reason = %s.message,
                    "resource version expired (410 Gone): relisting"
                );
            }
            Err(e) => {
                let (name, t) = status.update(index, |s| (s.name(), s.on_error(e.to_string())));
                match t {
                    Some(_) => tracing::warn!(
                        stream = %name,
                        error = %e,
                        "Kubernetes watch lost; retrying with backoff, serving the last good state"
                    ),
                    None => {
                        tracing::debug!(stream = %name, error = %e, "Kubernetes watch still failing")
                    }
                }
            }
        }
    }
}
