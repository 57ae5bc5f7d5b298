//! Kubernetes objects → [`Model`]: the one conversion shared by manifest files
//! (`--manifests`) and the API watch (`--kubernetes`), so both give the same model for the
//! same objects. API types: k8s-openapi 0.29 with feature `v1_34` (Kubernetes 1.34).
//!
//! What it implements (docs/kubernetes.md):
//! - Services of type NodePort and LoadBalancer, one [`ServicePort`] per port (TCP and UDP;
//!   SCTP is reported and skipped; a UDP port of a Service that forwards with proxy-v1 too).
//!   UDP ports get the UDP idle timeout (30 s) and `sluice.io/udp-responses`. ClusterIP/ExternalName and headless Services, and
//!   Services labelled `service.kubernetes.io/service-proxy-name` with another proxy's name,
//!   are skipped quietly, as kube-proxy does.
//! - A port without `nodePort` gets one the way the TOML path allocates it (upper band
//!   first, stable across reloads through `previous`); two Service ports asking for the
//!   same nodePort: the later one (sorted order) is skipped with a [`Problem`] naming both.
//! - Endpoints from the EndpointSlices labelled `kubernetes.io/service-name`, matched to the
//!   Service port by port name and protocol, each slice with its own port number (this is
//!   how a named targetPort is resolved); kube-proxy's condition defaults; `nodeName` equal
//!   to this node's name makes an endpoint local; topology hints compared with this node's
//!   zone and name ([`crate::model::Hints`]); deduplicated by IP:port (a local copy
//!   wins). Legacy `v1/Endpoints` only for a Service no EndpointSlice names (`endpoints`
//!   module).
//! - `ipFamilies` (the families served; the snapshot routes each family to its own
//!   endpoints), `externalTrafficPolicy`, `sessionAffinity` and the `sluice.io/*`
//!   annotations (`annotations` module); an invalid value keeps the last good one from
//!   `previous`.
//! - The Service as written ([`ServiceMeta`]: every spec port, policies, ingress) for
//!   `describe`, with its problems as (reason, message) Events.
//!
//! Nothing here fails as a whole: an object that cannot be served is skipped with a
//! [`Problem`] (with a [`reason`]) and the rest is served. It uses only `model` and the
//! config helpers.
//!
//! Past ~600 lines (about 680) on purpose: what is left is one Service's conversion, rule by
//! rule in kube-proxy's order, which reads best in one place; its parts with a seam of their
//! own are apart already: annotations (`k8s/annotations.rs`), addresses
//! (`k8s/addresses.rs`), endpoints (`k8s/endpoints.rs`), the Service as written
//! (`k8s/meta.rs`) and the tests.

mod addresses;
mod annotations;
mod endpoints;
mod meta;
#[cfg(test)]
mod tests;

use super::allocate::{self, Request};
use crate::model::{
    Families, Forwarding, Model, Policy, Protocol, ServiceMeta, ServiceName, ServicePort,
    ServicePortKey, Settings, Timeouts, TrafficPolicy, DEFAULT_AFFINITY_MAX_ENTRIES,
    DEFAULT_AFFINITY_TIMEOUT, DEFAULT_UDP_IDLE_TIMEOUT,
};
pub use addresses::node_primary_ips;
use addresses::service_addresses;
use endpoints::EndpointIndex;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meta::service_meta;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use annotations::{
    default_forwarding, FORWARDING, HASH_KEY, HOLD_WHEN_EMPTY, POLICY, UDP_RESPONSES,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that hands a Service to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The objects a model is built from. `Arc`s, so a watch's stores can lend theirs
/// without copying.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Legacy `v1/Endpoints`, used for a Service only when no EndpointSlice names it.
    pub endpoints: Vec<Arc<Endpoints>>,
    /// Node objects: the one named like this node gives its zone ([`node_zone`]).
    pub nodes: Vec<Arc<Node>>,
}

/// This node's zone: the `topology.kubernetes.io/zone` label of the Node named
/// `node_name` among `nodes` (`None` without such a Node or label).
pub fn node_zone(nodes: &[Arc<Node>], node_name: Option<&str>) -> Option<String> {
    let name = node_name?;
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))?
        .metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .filter(|z| !z.is_empty())
        .cloned()
}

/// How this node reads the objects.
#[derive(Debug, Clone, Default)]
pub struct K8sOptions {
    /// This node's name (`--node-name`, `NODE_NAME`): endpoints whose `nodeName` is this
    /// are local (externalTrafficPolicy: Local). `None`: no endpoint is local (as
    /// kube-proxy without a hostname); Local Services then get a [`Problem`].
    pub node_name: Option<String>,
    /// The `service.kubernetes.io/service-proxy-name` value this instance serves; Services
    /// labelled with another value (or any value, when `None`) are skipped.
    pub proxy_name: Option<String>,
    /// This node's zone (its Node's `topology.kubernetes.io/zone` label, or `--zone`):
    /// EndpointSlice zone hints are compared with it. `None`: no hint names this zone.
    pub zone: Option<String>,
    /// This node's primary addresses ([`node_primary_ips`]): `listen_addresses =
    /// ["primary"]` serves NodePorts on them. Empty while unknown.
    pub primary_ips: Vec<IpAddr>,
}

/// The Node label that gives a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Something wrong with one object: logged (and reported) naming it; the rest is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Service workshop/myfrontend`, `EndpointSlice workshop/myfrontend-abc12`, …
    pub object: String,
    /// A PascalCase word for the kind of problem (the Kubernetes Event's `reason`):
    /// `InvalidAnnotation`, `NodePortConflict`, `PortNotServed`, … ([`reason`]).
    pub reason: &'static str,
    pub message: String,
}

/// The reasons a [`Problem`] has (Kubernetes Event reasons).
pub mod reason {
    /// A `sluice.io/*` annotation with a value that is not accepted, or that does not apply.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// A field of the Service that sluice cannot use as written (kept or defaulted).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A Service port that is not served (protocol, number, size).
    pub const PORT_NOT_SERVED: &str = "PortNotServed";
    /// Two Service ports ask for the same nodePort: the later is not served.
    pub const NODE_PORT_CONFLICT: &str = "NodePortConflict";
    /// No nodePort left to allocate.
    pub const NODE_PORT_RANGE_FULL: &str = "NodePortRangeFull";
    /// externalTrafficPolicy: Local on a node whose name is unknown.
    pub const NODE_NAME_UNKNOWN: &str = "NodeNameUnknown";
    /// An object that cannot be read at all (no name, no spec, defined twice, no Service).
    pub const INVALID_OBJECT: &str = "InvalidObject";
    /// An endpoint that is one of sluice's own NodePorts on this node: skipped.
    pub const ENDPOINT_LOOPS: &str = "EndpointLoops";
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Builds the model for `objects` with `settings`. `previous` (the model serving now)
/// keeps allocated NodePorts and the last good value of a Service's invalid annotation.
/// Never fails as a whole: an object that cannot be served is skipped with a [`Problem`].
/// Service ports come out sorted by (namespace, name, port name, protocol).
pub fn build_model(
    settings: Settings,
    objects: &Objects,
    options: &K8sOptions,
    previous: Option<&Model>,
) -> (Model, Vec<Problem>) {
    let mut problems = Vec::new();
    let index = EndpointIndex::new(objects, &mut problems);
    // The serving model's ports by Service, found once: a scan per Service would be
    // quadratic (10,000 Services: most of a reload's time).
    let mut previous_ports: HashMap<&ServiceName, Vec<&ServicePort>> = HashMap::new();
    for p in previous.iter().flat_map(|m| &m.services) {
        previous_ports.entry(&p.key.service).or_default().push(p);
    }

    let mut services: Vec<&Service> = objects.services.iter().map(|s| &**s).collect();
    services.sort_by(|a, b| name_ref(&a.metadata).cmp(&name_ref(&b.metadata)));
    let mut ports: Vec<Candidate> = Vec::new();
    let mut seen: Option<ServiceName> = None;
    for svc in services {
        let name = object_name(&svc.metadata);
        if seen.as_ref() == Some(&name) {
            problems.push(Problem {
                object: format!("Service {name}"),
                reason: reason::INVALID_OBJECT,
                message: "defined twice; the first definition is served".into(),
            });
            continue;
        }
        seen = Some(name.clone());
        convert_service(
            &name,
            svc,
            &index,
            &settings,
            options,
            previous_ports.get(&name).map_or(&[], Vec::as_slice),
            &mut ports,
            &mut problems,
        );
    }
    ports.sort_by(|a, b| a.port.key.cmp(&b.port.key));

    // Explicit nodePorts: unique per protocol; the later Service port loses.
    let mut taken: HashMap<(Protocol, u16), ServicePortKey> = HashMap::new();
    ports.retain(|c| {
        let Some(p) = c.explicit else { return true };
        let key = (c.port.key.protocol, p);
        if let Some(first) = taken.get(&key) {
            problems.push(Problem {
                object: format!("Service {}", c.port.key.service),
                reason: reason::NODE_PORT_CONFLICT,
                message: format!(
                    "nodePort {p}/{} of {} is already used by {}; this port is not served",
                    c.port.key.protocol,
                    port_label(&c.port.key),
                    port_label(first)
                ),
            });
            return false;
        }
        taken.insert(key, c.port.key.clone());
        true
    });

    // Allocation for ports without one; a port left without (range full) is skipped.
    // Ports served without a NodePort take no part.
    let (mut ports, mut addressed_only): (Vec<Candidate>, Vec<Candidate>) =
        ports.into_iter().partition(|c| !c.no_node_port);
    let allocated = loop {
        let requests: Vec<Request> = ports
            .iter()
            .map(|c| Request {
                key: &c.port.key,
                explicit: c.explicit,
            })
            .collect();
        match allocate::allocate(settings.node_port_range, &requests, previous) {
            Ok(a) => break a,
            Err(exhausted) => {
                let c = ports.remove(exhausted.index);
                problems.push(Problem {
                    object: format!("Service {}", c.port.key.service),
                    reason: reason::NODE_PORT_RANGE_FULL,
                    message: format!(
                        "no free nodePort left in {} for {}; this port is not served",
                        settings.node_port_range,
                        port_label(&c.port.key)
                    ),
                });
            }
        }
    };
    // Problems found after conversion (nodePort conflicts, a full range) belong to their
    // Service's events too, so that `describe` shows why a port is not served.
    let mut late: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    for p in &problems {
        if p.reason == reason::NODE_PORT_CONFLICT || p.reason == reason::NODE_PORT_RANGE_FULL {
            if let Some(service) = p.object.strip_prefix("Service ") {
                late.entry(service)
                    .or_default()
                    .push((p.reason.to_owned(), p.message.clone()));
            }
        }
    }
    let mut with_late: HashMap<ServiceName, Arc<ServiceMeta>> = HashMap::new();
    for c in ports.iter_mut().chain(addressed_only.iter_mut()) {
        let Some(meta) = &c.port.meta else { continue };
        let key = c.port.key.service.to_string();
        let Some(extra) = late.get(key.as_str()) else {
            continue;
        };
        let updated = with_late
            .entry(c.port.key.service.clone())
            .or_insert_with(|| {
                let mut m = (**meta).clone();
                m.warnings.extend(extra.iter().cloned());
                Arc::new(m)
            });
        c.port.meta = Some(Arc::clone(updated));
    }
    let mut services: Vec<ServicePort> = ports
        .into_iter()
        .zip(allocated)
        .map(|(c, a)| ServicePort {
            node_port: a.node_port,
            node_port_allocated: a.allocated,
            ..c.port
        })
        .chain(addressed_only.into_iter().map(|c| c.port))
        .collect();
    // An endpoint that is one of these NodePorts on this node would loop: skipped.
    let served = super::self_loop::Served::new(
        &services,
        &settings.listen,
        super::self_loop::local_addresses(),
        &options.primary_ips,
    );
    for s in &mut services {
        let object = format!("Service {}", s.key.service);
        let protocol = s.key.protocol;
        s.endpoints
            .retain(|e| match served.explain(protocol, e.addr) {
                None => true,
                Some(why) => {
                    problems.push(Problem {
                        object: object.clone(),
                        reason: reason::ENDPOINT_LOOPS,
                        message: format!("{why}; this endpoint is skipped"),
                    });
                    false
                }
            });
    }
    services.sort_by(|a, b| a.key.cmp(&b.key));
    (
        Model {
            settings,
            services,
            primary_ips: options.primary_ips.clone(),
        },
        problems,
    )
}

/// A Service port before NodePort allocation.
struct Candidate {
    port: ServicePort,
    explicit: Option<u16>,
    /// Served without a NodePort (only at the Service's addresses): nothing to allocate.
    no_node_port: bool,
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceName {
    ServiceName {
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// [`object_name`] borrowed, for sorting (the same order as [`ServiceName`]'s) without
/// two allocations per comparison.
fn name_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    (namespace, meta.name.as_deref().unwrap_or_default())
}

fn port_label(key: &ServicePortKey) -> String {
    if key.port_name.is_empty() {
        format!("Service {}", key.service)
    } else {
        format!("port {:?} of Service {}", key.port_name, key.service)
    }
}

#[allow(clippy::too_many_arguments)]
fn convert_service(
    name: &ServiceName,
    svc: &Service,
    index: &EndpointIndex,
    settings: &Settings,
    options: &K8sOptions,
    before: &[&ServicePort],
    out: &mut Vec<Candidate>,
    problems: &mut Vec<Problem>,
) {
    let object = format!("Service {name}");
    if name.name.is_empty() {
        problems.push(Problem {
            object: "Service (no name)".into(),
            reason: reason::INVALID_OBJECT,
            message: "metadata.name is missing; skipped".into(),
        });
        return;
    }
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    if let Some(proxy) = labels.get(SERVICE_PROXY_NAME_LABEL) {
        if options.proxy_name.as_deref() != Some(proxy.as_str()) {
            tracing::debug!(service = %name, proxy, "skipped: handled by another proxy");
            return;
        }
    }
    let Some(spec) = &svc.spec else {
        problems.push(Problem {
            object,
            reason: reason::INVALID_OBJECT,
            message: "has no spec; skipped".into(),
        });
        return;
    };
    let service_type = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    // kube-proxy serves externalIPs of every Service type but ExternalName (and headless).
    let has_external_ips = spec.external_ips.as_ref().is_some_and(|v| !v.is_empty());
    let with_node_ports = service_type == "NodePort" || service_type == "LoadBalancer";
    let served_at_external_ips = service_type == "ClusterIP" && has_external_ips;
    if !(with_node_ports || served_at_external_ips) {
        tracing::debug!(service = %name, %service_type, "skipped: not NodePort or LoadBalancer, no externalIPs");
        return;
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        tracing::debug!(service = %name, "skipped: headless");
        return;
    }
    // Problems of this Service: logged by the caller, and shown by `describe`.
    let report = |reason: &'static str,
                  message: String,
                  problems: &mut Vec<Problem>,
                  warnings: &mut Vec<(String, String)>| {
        warnings.push((reason.to_owned(), message.clone()));
        problems.push(Problem {
            object: object.clone(),
            reason,
            message,
        });
    };
    let mut warnings = Vec::new();

    let named = |v: &str| TrafficPolicy::ALL.into_iter().find(|p| p.name() == v);
    let traffic_policy = match spec
        .external_traffic_policy
        .as_deref()
        .map(|v| (v, named(v)))
    {
        None => TrafficPolicy::Cluster,
        Some((_, Some(p))) => p,
        Some((other, None)) => {
            report(
                reason::INVALID_SPEC,
                format!(
                    "externalTrafficPolicy {other:?} is not \"Cluster\" or \"Local\"; using Cluster"
                ),
                problems,
                &mut warnings,
            );
            TrafficPolicy::Cluster
        }
    };
    if traffic_policy == TrafficPolicy::Local && options.node_name.is_none() {
        report(
            reason::NODE_NAME_UNKNOWN,
            "externalTrafficPolicy is Local but this node's name is unknown (set --node-name \
             or NODE_NAME): no endpoint counts as local, so this Service has no usable \
             endpoint on this node"
                .into(),
            problems,
            &mut warnings,
        );
    }
    let affinity = session_affinity(spec, before, &mut |m| {
        report(reason::INVALID_SPEC, m, problems, &mut warnings)
    });
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let settings_from_annotations = annotations::read(
        &annotations,
        traffic_policy,
        affinity.is_some(),
        before,
        settings,
    );
    for m in settings_from_annotations.problems {
        report(reason::INVALID_ANNOTATION, m, problems, &mut warnings);
    }
    let policy = affinity.unwrap_or(settings_from_annotations.policy);

    let families = ip_families(spec);
    let addresses = service_addresses(svc, families, &mut |m| {
        report(reason::INVALID_SPEC, m, problems, &mut warnings)
    });
    // Ports without a nodePort get none allocated: served at the Service's addresses only.
    let no_node_ports = !with_node_ports
        || (service_type == "LoadBalancer"
            && spec.allocate_load_balancer_node_ports == Some(false));
    let mut port_names: Vec<String> = Vec::new();
    let mut keys = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port_name = p.name.clone().unwrap_or_default();
        let protocol_text = p.protocol.as_deref().unwrap_or("TCP");
        let what = if port_name.is_empty() {
            format!("port {}", p.port)
        } else {
            format!("port {port_name:?}")
        };
        let protocol = match Protocol::ALL
            .into_iter()
            .find(|p| p.name() == protocol_text)
        {
            Some(protocol) => protocol,
            None if protocol_text == "SCTP" => {
                report(
                    reason::PORT_NOT_SERVED,
                    format!("{what} is SCTP: sluice serves TCP and UDP; not served"),
                    problems,
                    &mut warnings,
                );
                continue;
            }
            None => {
                report(
                    reason::PORT_NOT_SERVED,
                    format!("{what} has unknown protocol {protocol_text:?}; not served"),
                    problems,
                    &mut warnings,
                );
                continue;
            }
        };
        if port_names.contains(&port_name) {
            report(
                reason::INVALID_SPEC,
                format!("{what} is listed twice; the first one is served"),
                problems,
                &mut warnings,
            );
            continue;
        }
        port_names.push(port_name.clone());
        let Ok(port) =
            u16::try_from(p.port)
                .map_err(drop)
                .and_then(|v| if v == 0 { Err(()) } else { Ok(v) })
        else {
            report(
                reason::PORT_NOT_SERVED,
                format!("{what}: port {} is not a port number; not served", p.port),
                problems,
                &mut warnings,
            );
            continue;
        };
        let explicit = match p.node_port {
            None | Some(0) if no_node_ports && addresses.is_empty() => {
                tracing::debug!(service = %name, port = %what, "no nodePort and no external or LoadBalancer IP: not served");
                continue;
            }
            None | Some(0) => None,
            Some(_) if !with_node_ports => None,
            Some(n) => match u16::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    report(
                        reason::PORT_NOT_SERVED,
                        format!("{what}: nodePort {n} is not a port number; not served"),
                        problems,
                        &mut warnings,
                    );
                    continue;
                }
            },
        };
        let target_port = match &p.target_port {
            None => port,
            Some(IntOrString::Int(i)) => u16::try_from(*i).unwrap_or(0),
            // Resolved per endpoint from its slice; the Service itself has no number.
            Some(IntOrString::String(_)) => 0,
        };
        if protocol == Protocol::Udp && settings_from_annotations.forwarding == Forwarding::ProxyV1
        {
            report(
                reason::PORT_NOT_SERVED,
                format!(
                    "{what} is UDP and the Service forwards with proxy-v1, which has no form \
                     for datagrams (use proxy-v2, transparent or none); not served"
                ),
                problems,
                &mut warnings,
            );
            continue;
        }
        let (timeouts, udp_responses) = match protocol {
            Protocol::Tcp => (settings_from_annotations.timeouts, None),
            Protocol::Udp => (
                Timeouts {
                    idle: DEFAULT_UDP_IDLE_TIMEOUT,
                    hold_when_empty: None,
                    ..settings_from_annotations.timeouts
                },
                settings_from_annotations.udp_responses,
            ),
        };
        let endpoints = index.endpoints(name, &port_name, protocol_text, options);
        let key = ServicePortKey {
            service: name.clone(),
            port_name,
            protocol,
        };
        if endpoints.len() >= settings.defaults.maglev_table_size as usize {
            report(
                reason::PORT_NOT_SERVED,
                format!(
                    "{what} has {} endpoints, more than the Maglev table ({}) holds; not served",
                    endpoints.len(),
                    settings.defaults.maglev_table_size
                ),
                problems,
                &mut warnings,
            );
            continue;
        }
        keys.push(out.len());
        out.push(Candidate {
            port: ServicePort {
                key,
                port,
                node_port: 0,
                node_port_allocated: false,
                target_port,
                endpoints,
                policy,
                timeouts,
                connect_retries: settings.defaults.connect_retries,
                maglev_table_size: settings.defaults.maglev_table_size,
                forwarding: settings_from_annotations.forwarding.clone(),
                udp_responses,
                traffic_policy,
                families,
                health: settings.defaults.health.clone(),
                meta: None,
                addresses: addresses.clone(),
            },
            explicit,
            no_node_port: explicit.is_none() && no_node_ports,
        });
    }
    let meta = Arc::new(service_meta(svc, service_type, warnings));
    for i in keys {
        out[i].port.meta = Some(Arc::clone(&meta));
    }
}

/// The IP families a Service is served for, as kube-proxy's per-family proxiers decide it
/// (`GetClusterIPByFamily`): the families in `ipFamilies`; without them, the family of
/// `clusterIP`. Departure for hand-written manifests (the API server always fills both
/// fields): `ipFamilies` listed without `clusterIPs` still count, and a Service with
/// neither is served for both families (each routed to its own endpoints).
fn ip_families(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Families {
    let listed = spec.ip_families.as_deref().unwrap_or_default();
    if !listed.is_empty() {
        return Families {
            v4: listed.iter().any(|f| f == "IPv4"),
            v6: listed.iter().any(|f| f == "IPv6"),
        };
    }
    let ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if ips.is_empty() {
        return Families::default();
    }
    Families {
        v4: ips.iter().any(IpAddr::is_ipv4),
        v6: ips.iter().any(IpAddr::is_ipv6),
    }
}

/// `sessionAffinity: ClientIP` → [`Policy::ClientIp`] (timeout 1..=86400 s, default 10800);
/// `None` when the Service has no affinity. An invalid timeout keeps the last good one.
fn session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    before: &[&ServicePort],
    report: &mut dyn FnMut(String),
) -> Option<Policy> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => return None,
        Some("ClientIP") => {}
        Some(other) => {
            report(format!(
                "sessionAffinity {other:?} is not \"None\" or \"ClientIP\"; using None"
            ));
            return None;
        }
    }
    let written = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let timeout = match written {
        None => DEFAULT_AFFINITY_TIMEOUT,
        Some(t) if super::limits::AFFINITY_TIMEOUT_SECONDS.contains(t.into()) => {
            Duration::from_secs(t.unsigned_abs().into())
        }
        Some(t) => {
            let last = before.iter().find_map(|p| match p.policy {
                Policy::ClientIp { timeout, .. } => Some(timeout),
                _ => None,
            });
            let kept = last.unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
            report(format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range ({}..={}); \
                 keeping {}s",
                super::limits::AFFINITY_TIMEOUT_SECONDS.min,
                super::limits::AFFINITY_TIMEOUT_SECONDS.max,
                kept.as_secs()
            ));
            kept
        }
    };
    Some(Policy::ClientIp {
        timeout,
        max_entries: DEFAULT_AFFINITY_MAX_ENTRIES,
    })
}
