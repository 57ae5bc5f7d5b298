//! The vocabulary of sluice: Services, their ports, endpoints, and the node-wide settings.
//!
//! A [`Model`] is what every configuration source (a TOML file, Kubernetes manifests, the
//! Kubernetes API watch) produces after validation. It is plain data: it owns no sockets,
//! no threads, and it must not depend on any other module of the crate (std only;
//! tests/architecture.rs checks). Values in a `Model` are already valid — sources reject
//! bad input before building one. How each value is spelled for people (`maglev`,
//! `proxy-v2`, …) is `model/names.rs`: one place for the parser and every printer.
//!
//! At ~630 lines it stays one file on purpose: it is the crate's glossary, read top to
//! bottom; the spellings are already apart in `model/names.rs`.

mod names;
pub use names::{names, ForwardingMode, PolicyKind};

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

mod addresses;
pub use addresses::{canonical_ip, Cidr, ListenAddresses, ServiceAddresses};

/// The default NodePort range of Kubernetes (`--service-node-port-range`).
pub const DEFAULT_NODE_PORT_RANGE: NodePortRange = NodePortRange {
    first: 30000,
    last: 32767,
};

/// The default Maglev lookup-table size: a prime, as the algorithm requires.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65537;

/// The whole desired state of the node: settings plus every Service port to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub settings: Settings,
    /// One entry per (Service, port). Sorted by (namespace, name, port name) by sources.
    pub services: Vec<ServicePort>,
    /// This node's primary addresses, at most one per family (its Node object's first
    /// InternalIP, else ExternalIP, as kube-proxy's `GetNodeHostIPs`), for
    /// `listen_addresses = ["primary"]`; empty when unknown (TOML files, no Node object).
    pub primary_ips: Vec<IpAddr>,
}

/// Node-wide settings: how the data plane runs, independent of any one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Number of worker threads; `None` means one per online CPU.
    pub workers: Option<usize>,
    /// Pin each worker to one CPU (worker i → i-th allowed CPU); off by default (measured
    /// slower where the CPUs are shared: docs/benchmarks.md).
    pub pin_workers: bool,
    /// Where NodePorts are served.
    pub listen: ListenAddresses,
    /// The range NodePorts must lie in, and allocation draws from.
    pub node_port_range: NodePortRange,
    /// Stop accepting on a worker while it relays this many client connections (held ones,
    /// waiting for an endpoint, do not count: they have the budgets below).
    pub max_connections_per_worker: u32,
    /// Connections a worker holds at most for Services without a usable endpoint
    /// (`hold_when_empty`), all Services together; beyond, new ones are reset at once.
    pub max_held_per_worker: u32,
    /// Connections a worker holds at most for one Service port without a usable endpoint.
    pub max_held_per_service: u32,
    /// UDP flows a worker holds at most (each holds one upstream socket, so one fd); a new
    /// flow beyond it is refused and counted, existing flows are never evicted.
    pub max_flows_per_worker: u32,
    /// How bytes are moved between the two sockets of a connection.
    pub relay: RelayMode,
    /// Listen backlog for each NodePort socket.
    pub backlog: u32,
    /// Defaults applied to Services that do not set their own.
    pub defaults: ServiceDefaults,
    /// Which kernel interface the workers use.
    pub driver: DriverSetting,
    /// How operators reach the daemon (`sluice ctl`).
    pub control: ControlSettings,
    /// Where `/metrics`, `/healthz` and `/livez` are served (HTTP); `None` = off.
    pub metrics_address: Option<SocketAddr>,
    /// Where only `/healthz` and `/livez` are served (kube-proxy's `--healthz-bind-address`);
    /// `None` = off.
    pub health_address: Option<SocketAddr>,
    /// On SIGTERM/SIGINT: how long live connections may take to finish before they are reset.
    pub drain_timeout: Duration,
    /// A sluice extension: apply a Service's `loadBalancerSourceRanges` to its NodePorts
    /// too (kube-proxy applies them at the LoadBalancer IPs only).
    pub source_ranges_on_node_ports: bool,
}

/// Which kernel interface the data plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverSetting {
    /// io_uring when this kernel and sandbox allow every operation sluice uses, else epoll.
    #[default]
    Auto,
    /// io_uring, or refuse to start (saying why).
    Uring,
    /// epoll (through mio).
    Epoll,
}

/// Default of `max_held_per_worker`.
pub const DEFAULT_MAX_HELD_PER_WORKER: u32 = 1024;
/// Default of `max_held_per_service`.
pub const DEFAULT_MAX_HELD_PER_SERVICE: u32 = 256;
/// Upper bound of the hold budgets: the most connections a worker can address.
pub const MAX_HELD: u32 = 1 << 24;
/// Default of `max_flows_per_worker`: one upstream socket (fd) per flow, the same budget as
/// `max_connections_per_worker`'s default (docs/configuration.md has the fd arithmetic).
pub const DEFAULT_MAX_FLOWS_PER_WORKER: u32 = 4096;
/// Idle timeout of a UDP flow when its Service sets none: kube-proxy's (conntrack's)
/// timeout of an unreplied UDP entry.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The default control socket path (under systemd's `RuntimeDirectory=sluice`) for root and
/// for users without `$XDG_RUNTIME_DIR` (see `control::default_control_socket`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sluice/control.sock";

/// The control socket: where it is, who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// Socket path; `None` = the default (`control::default_control_socket`:
    /// [`DEFAULT_CONTROL_SOCKET`] for root), where failing to bind is only a warning (an
    /// explicit path that cannot be bound stops the daemon).
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file (default `0o600`).
    pub mode: u32,
    /// Group (gid) the socket file is given, e.g. to let a group reach it with mode `0o660`.
    pub group: Option<u32>,
    /// Peers allowed besides root and the daemon's own uid (checked with SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    /// Peers whose primary gid is one of these are allowed too.
    pub allowed_gids: Vec<u32>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: None,
            mode: 0o600,
            group: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: None,
            pin_workers: false,
            listen: ListenAddresses::All,
            node_port_range: DEFAULT_NODE_PORT_RANGE,
            max_connections_per_worker: 4096,
            max_held_per_worker: DEFAULT_MAX_HELD_PER_WORKER,
            max_held_per_service: DEFAULT_MAX_HELD_PER_SERVICE,
            max_flows_per_worker: DEFAULT_MAX_FLOWS_PER_WORKER,
            relay: RelayMode::Auto,
            backlog: 4096,
            defaults: ServiceDefaults::default(),
            driver: DriverSetting::Auto,
            control: ControlSettings::default(),
            metrics_address: None,
            health_address: None,
            drain_timeout: Duration::from_secs(30),
            source_ranges_on_node_ports: false,
        }
    }
}

/// Per-Service tunables that have node-wide defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDefaults {
    pub timeouts: Timeouts,
    /// How many *other* endpoints a connection tries after a refused or timed-out connect.
    pub connect_retries: u32,
    pub maglev_table_size: u32,
    /// Health checking of Services that do not configure their own (off by default).
    pub health: HealthConfig,
}

impl Default for ServiceDefaults {
    fn default() -> Self {
        ServiceDefaults {
            timeouts: Timeouts::default(),
            connect_retries: 2,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            health: HealthConfig::default(),
        }
    }
}

/// An inclusive range of ports, e.g. `30000-32767`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePortRange {
    pub first: u16,
    pub last: u16,
}

impl NodePortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Number of ports in the range.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Size of the "static band" at the bottom of the range that automatic allocation
    /// avoids while the upper band has room (Kubernetes: `min(max(16, size/32), 128)`).
    pub fn static_band_size(&self) -> u32 {
        (self.size() / 32).clamp(16, 128).min(self.size())
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// How bytes move between client and backend sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// splice(2) through a pooled pipe: the bytes never enter user space.
    Splice,
    /// read/write through a pooled user-space buffer.
    Copy,
    /// Per direction: a buffer while transfers are small (a short read then proves the
    /// source drained, saving the EAGAIN call), a pipe (splice) once a read fills the
    /// buffer (bulk data).
    Auto,
}

/// Transport protocol of a Service port. A NodePort number is unique per protocol: TCP 53
/// and UDP 53 are two NodePorts (as in Kubernetes). SCTP is not modelled (sources skip it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    /// Datagrams, relayed per *flow* (client IP:port + node IP:port) rather than per
    /// connection: see `Timeouts::idle` and `ServicePort::udp_responses`.
    Udp,
}

/// `namespace/name` of a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of one Service port: stable across reloads, used to carry state (allocated
/// NodePorts, counters) from one configuration to the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    pub service: ServiceName,
    /// The Service port's name (`""` when unnamed, as in Kubernetes).
    pub port_name: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port_name)
        }
    }
}

/// One port of one Service, with everything needed to serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePort {
    pub key: ServicePortKey,
    /// The Service (cluster) port, e.g. 80. Informational for a NodePort balancer.
    pub port: u16,
    /// The NodePort this Service port is served on; 0 for none (a Kubernetes Service port
    /// reached only at its [`ServiceAddresses`]: `allocateLoadBalancerNodePorts: false`, or
    /// a ClusterIP Service with external IPs).
    pub node_port: u16,
    /// True when `node_port` was allocated by sluice rather than given.
    pub node_port_allocated: bool,
    /// The endpoints' port when an endpoint does not carry its own.
    pub target_port: u16,
    /// Deduplicated by address; in a deterministic order.
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    pub timeouts: Timeouts,
    pub connect_retries: u32,
    pub maglev_table_size: u32,
    /// How the pod learns the client's address.
    pub forwarding: Forwarding,
    /// UDP only: a flow is closed after this many replies from its endpoint (DNS: 1), like
    /// nginx's `proxy_responses`; `None` = flows end at their idle timeout only.
    pub udp_responses: Option<u32>,
    /// Which endpoints new connections may go to (Kubernetes `externalTrafficPolicy`).
    pub traffic_policy: TrafficPolicy,
    /// The IP families the Service port is served for (Kubernetes `ipFamilies`): a client
    /// of another family finds no endpoint. Both for TOML Services.
    pub families: Families,
    /// Active and passive health checking of this port's endpoints.
    pub health: HealthConfig,
    /// Where the Service came from in Kubernetes (manifests or the API), for `describe`
    /// and the healthCheckNodePort server; `None` for TOML Services.
    pub meta: Option<std::sync::Arc<ServiceMeta>>,
    /// Addresses of its own the Service port is reached at (on `port`, not the NodePort),
    /// and who may reach it there.
    pub addresses: ServiceAddresses,
}

/// Kubernetes `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster; if none, serving-and-terminating ones.
    #[default]
    Cluster,
    /// Only endpoints on this node ([`Endpoint::local`]): ready ones, else local
    /// serving-and-terminating ones, else none.
    Local,
}

/// Which IP families a Service port serves. Each family routes only to endpoints of that
/// family (kube-proxy runs one proxier per family): an IPv4 client never reaches an IPv6
/// pod, and the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Default for Families {
    fn default() -> Self {
        Families { v4: true, v6: true }
    }
}

impl Families {
    /// Whether `ip`'s family is served (an IPv4-mapped IPv6 address is IPv4).
    pub fn serves(&self, ip: IpAddr) -> bool {
        if is_v4(ip) {
            self.v4
        } else {
            self.v6
        }
    }
}

/// `ip` is IPv4, or IPv4-mapped IPv6 (what a dual-stack socket reports for an IPv4 peer).
pub fn is_v4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    }
}

/// How a Service port's endpoints are checked. Off by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthConfig {
    /// Probes sent by the control plane; `None` = no active checks.
    pub active: Option<ActiveCheck>,
    /// Outlier ejection from the connect failures workers see; `None` = off.
    pub passive: Option<PassiveCheck>,
    /// Reset established connections to an endpoint when it is marked down (HAProxy's
    /// `on-marked-down shutdown-sessions`).
    pub shutdown_sessions: bool,
}

/// An active health check (HAProxy's defaults: every 2 s, up after 2, down after 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down endpoint up.
    pub rise: u32,
    /// Consecutive failures that mark an up endpoint down.
    pub fall: u32,
    /// Port probed instead of the endpoint's own.
    pub port: Option<u16>,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect (after a PROXY v2 LOCAL header where the Service speaks PROXY v2).
    Tcp,
    /// `GET path` over HTTP/1.1; success when the status is in `expect` (inclusive).
    Http { path: String, expect: (u16, u16) },
}

/// Passive outlier ejection: an endpoint that fails `consecutive_failures` connects in a
/// row (no success between) is ejected for `ejection_time`, then tried again. An endpoint
/// ejected again before a connect to it succeeded stays out twice as long each time, up to
/// [`MAX_EJECTION_FACTOR`] × `ejection_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveCheck {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
}

/// Defaults of an active check: HAProxy's `inter 2s rise 2 fall 3`; the timeout is the
/// interval (HAProxy's, when `timeout check` is not set).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_CHECK_RISE: u32 = 2;
pub const DEFAULT_CHECK_FALL: u32 = 3;
/// Defaults of passive outlier ejection.
pub const DEFAULT_EJECTION_FAILURES: u32 = 5;
pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Repeated ejections double up to this factor of the ejection time.
pub const MAX_EJECTION_FACTOR: u32 = 8;

/// A Kubernetes Service as written (for `describe`), shared by all its ports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceMeta {
    /// `spec.type`: NodePort or LoadBalancer.
    pub service_type: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub selector: Vec<(String, String)>,
    /// `spec.clusterIP` as written (`""` when unset).
    pub cluster_ip: String,
    pub cluster_ips: Vec<String>,
    pub ip_families: Vec<String>,
    pub ip_family_policy: Option<String>,
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress` as kubectl shows it (`IP`, `IP (VIP)`, or hostname).
    pub load_balancer_ingress: Vec<String>,
    /// Every `spec.ports` entry, in spec order (also those sluice does not serve).
    pub ports: Vec<SpecPort>,
    /// `spec.sessionAffinity` as written (`None` when unset).
    pub session_affinity: String,
    /// `spec.externalTrafficPolicy` as written.
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub load_balancer_source_ranges: Vec<String>,
    /// `spec.healthCheckNodePort` (LoadBalancer + Local only).
    pub health_check_node_port: Option<u16>,
    /// Problems found the last time the Service was read: (reason, message).
    pub warnings: Vec<(String, String)>,
}

/// One `spec.ports` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecPort {
    /// `""` when unnamed.
    pub name: String,
    pub protocol: String,
    pub port: i32,
    /// `9000` or `http-server`.
    pub target_port: String,
    /// 0 when unset.
    pub node_port: i32,
    pub app_protocol: Option<String>,
}

/// How the pod learns who the client is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// The pod sees the node's address (like kube-proxy with externalTrafficPolicy=Cluster).
    #[default]
    None,
    /// A PROXY protocol v1 text line before any client byte.
    ProxyV1,
    /// A PROXY protocol v2 binary header before any client byte.
    ProxyV2(ProxyV2Options),
    /// The backend connection leaves from the client's own address (IP_TRANSPARENT).
    Transparent,
}

/// Optional parts of a PROXY v2 header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyV2Options {
    /// Add a PP2_TYPE_UNIQUE_ID TLV naming the connection.
    pub unique_id: bool,
    /// Custom TLVs (type 0xE0..=0xEF, value) added to every header.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// A backend (pod) address with a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative share of new connections; 0 means "never pick" (kept for draining).
    pub weight: u32,
    /// Kubernetes endpoint conditions (ready/serving/terminating).
    pub conditions: Conditions,
    /// On this node (the endpoint's `nodeName` is this node's); TOML endpoints are local.
    pub local: bool,
    /// False while health checking holds the endpoint down (set by the control plane on
    /// the effective model; sources always give `true`).
    pub healthy: bool,
    /// EndpointSlice topology hints (`hints.forZones`, `hints.forNodes`), already compared
    /// with this node's zone and name.
    pub hints: Hints,
}

/// An endpoint's topology hints as they concern this node (kube-proxy's
/// `topologyModeFromHints`): whether the endpoint has hints of each kind, and whether
/// they name this node's zone / this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hints {
    pub zone: Hint,
    pub node: Hint,
}

/// One kind of topology hint of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Hint {
    /// The endpoint has no hint of this kind.
    #[default]
    Absent,
    /// It has hints, none for this node (or this node's zone).
    Elsewhere,
    /// One of its hints names this node (or this node's zone).
    Here,
}

impl Endpoint {
    /// A ready, local, healthy endpoint of weight 1.
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            weight: DEFAULT_WEIGHT,
            conditions: Conditions::default(),
            local: true,
            healthy: true,
            hints: Hints::default(),
        }
    }

    /// The same endpoint with `weight`.
    pub fn with_weight(self, weight: u32) -> Endpoint {
        Endpoint { weight, ..self }
    }
}

/// EndpointSlice conditions, with Kubernetes' defaults for unset ones (ready and serving
/// true, terminating false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// In words, for `ctl endpoints`, `check` and reload reports: `ready`, `ready, terminating`,
/// `terminating, serving`, `terminating`, `not ready, serving` or `not ready`.
impl std::fmt::Display for Conditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.ready, self.serving, self.terminating) {
            (true, _, false) => "ready",
            (true, _, true) => "ready, terminating",
            (false, true, true) => "terminating, serving",
            (false, false, true) => "terminating",
            (false, true, false) => "not ready, serving",
            (false, false, false) => "not ready",
        })
    }
}

/// Default endpoint weight.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Backend selection policy of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Maglev consistent hashing on the given key.
    Maglev { key: HashKey },
    /// Kubernetes `sessionAffinity: ClientIP`: a client IP keeps its endpoint while it opens
    /// a connection at least every `timeout` (the timer restarts at each new connection);
    /// new clients, and clients whose endpoint left or is unusable, are placed by Maglev on
    /// the client IP. At most `max_entries` clients are remembered per worker.
    ClientIp { timeout: Duration, max_entries: u32 },
    /// Weighted round-robin (smooth: no bursts to one endpoint).
    RoundRobin,
    /// Weighted random.
    Random,
    /// The less loaded (active connections / weight) of two weighted-random endpoints.
    LeastConnections,
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);
/// Default bound on remembered clients per worker and Service port.
pub const DEFAULT_AFFINITY_MAX_ENTRIES: u32 = 65536;

impl Default for Policy {
    fn default() -> Self {
        Policy::Maglev {
            key: HashKey::ClientIpPort,
        }
    }
}

/// What part of the client's address Maglev hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// Client IP and source port: spreads one client's connections over endpoints.
    ClientIpPort,
    /// Client IP only: one client always lands on the same endpoint (while it exists).
    ClientIp,
}

/// Time limits of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long one connect attempt to an endpoint may take.
    pub connect: Duration,
    /// A connection with no bytes moving in either direction for this long is closed; a UDP
    /// flow with no datagram either way for this long is forgotten (default for UDP
    /// Services: [`DEFAULT_UDP_IDLE_TIMEOUT`]).
    pub idle: Duration,
    /// When the Service has no usable endpoint: how long a new connection may wait for one
    /// (scale-from-zero, kubernetes#484). `None`: reset at once, like kube-proxy's REJECT.
    /// Waiting connections count against `max_held_per_service` and `max_held_per_worker`,
    /// not against `max_connections_per_worker`.
    pub hold_when_empty: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            idle: Duration::from_secs(3600),
            hold_when_empty: None,
        }
    }
}
