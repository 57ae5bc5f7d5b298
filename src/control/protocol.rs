//! The control protocol, version 1: the request and response types exchanged as JSON lines on
//! the control socket (documented in `docs/control-protocol.md`).
//!
//! One request per line, one response line per request. This module only defines the types
//! and turns a line into a [`Request`] (or a precise [`ProtocolError`]); it does no IO and
//! knows nothing of the daemon's state. `sluice ctl` and the daemon both use it, so the two
//! cannot disagree on the shape of a message.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A request carrying another version is refused.
pub const VERSION: u32 = 1;

/// Longest request line accepted, newline included. Longer ones get an error and the
/// connection is closed (it cannot be re-synchronised).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// One request: `{"version": 1, "command": "...", ...arguments}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Daemon version, uptime, driver, workers, generation, last reload.
    Status,
    /// One line per Service port.
    Services,
    /// Every port of one Service (what `describe service` renders).
    Describe {
        service: String,
        #[serde(default)]
        namespace: Option<String>,
    },
    /// Endpoints of every Service port, or of one Service.
    Endpoints {
        #[serde(default)]
        service: Option<String>,
    },
    /// Counters per Service port and endpoint.
    Stats,
    /// Re-read the configuration file; the response is the outcome.
    Reload,
    /// A runtime override of one endpoint.
    Endpoint {
        action: EndpointAction,
        /// `[NAMESPACE/]NAME[:PORT_NAME]`.
        service: String,
        /// `IP:PORT`, or `IP` for every port of that IP.
        address: String,
        /// Only with `action = "weight"`.
        #[serde(default)]
        weight: Option<u32>,
    },
    /// Change the log filter (tracing `EnvFilter` syntax, e.g. `debug` or `sluice=trace`).
    LogLevel { level: String },
    /// Start a new process of sluice (`binary`, default: the path this daemon was started
    /// from, read again from disk) and hand it the listening sockets; the response is the
    /// outcome, sent once the new process serves or the upgrade was rolled back.
    Upgrade {
        /// Absolute path of the new binary, as the daemon sees it.
        #[serde(default)]
        binary: Option<String>,
        /// How long the new process may take from its start to "ready" (default 60 s,
        /// 1..=600).
        #[serde(default)]
        ready_timeout_seconds: Option<u64>,
    },
    /// The live UDP flows and TCP connections, of every Service or of one (like
    /// `conntrack -L`): at most `limit` (default [`FLOWS_DEFAULT_LIMIT`], at most
    /// [`FLOWS_MAX_LIMIT`]) with the count of all.
    Flows {
        /// `[NAMESPACE/]NAME[:PORT_NAME]`.
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// Entries `flows` lists when the request names no limit.
pub const FLOWS_DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` of `flows` (the answer stays a few MB at most).
pub const FLOWS_MAX_LIMIT: usize = 100_000;

/// What `endpoint ...` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointAction {
    /// No new connections; open ones continue.
    Drain,
    /// Out of service (like HAProxy's maintenance): no new connections; open ones continue.
    Disable,
    /// Clear drain/disable (a weight override stays).
    Enable,
    /// Override the configured weight.
    Weight,
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable: `malformed`, `too-large`, `unknown-command`, `version`,
    /// `forbidden`, `not-found`, `invalid`, `reload-failed`, `busy`, `timeout`.
    pub kind: String,
    pub message: String,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response {
            version: VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(kind: &str, message: impl Into<String>) -> Response {
        Response {
            version: VERSION,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                kind: kind.to_owned(),
                message: message.into(),
            }),
        }
    }

    pub fn failed(e: &ProtocolError) -> Response {
        Response::error(e.kind(), e.to_string())
    }

    /// The response as one line (with its newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("responses always serialise");
        s.push('\n');
        s
    }
}

/// Why a request line could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, not an object, or wrong argument types.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// `command` names nothing this daemon knows.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// `version` missing or not one this daemon speaks.
    #[error("unsupported protocol version {0} (this daemon speaks version {VERSION})")]
    Version(String),
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
}

impl ProtocolError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::UnknownCommand(_) => "unknown-command",
            ProtocolError::Version(_) => "version",
            ProtocolError::TooLarge => "too-large",
        }
    }
}

const COMMANDS: &[&str] = &[
    "status",
    "services",
    "describe",
    "endpoints",
    "stats",
    "reload",
    "endpoint",
    "log-level",
    "upgrade",
    "flows",
];

/// Parses one request line (without its newline). An object that names a key twice is
/// refused (`malformed`): JSON parsers disagree on which one counts.
pub fn parse_request(line: &str) -> Result<Request, ProtocolError> {
    let UniqueKeys(mut value) =
        serde_json::from_str(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| ProtocolError::Malformed("a request is a JSON object".into()))?;
    match object.remove("version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(other) => return Err(ProtocolError::Version(other.to_string())),
        None => return Err(ProtocolError::Version("(missing)".into())),
    }
    match object.get("command") {
        Some(serde_json::Value::String(c)) if !COMMANDS.contains(&c.as_str()) => {
            return Err(ProtocolError::UnknownCommand(c.clone()))
        }
        Some(serde_json::Value::String(_)) => {}
        _ => return Err(ProtocolError::Malformed("no string `command`".into())),
    }
    let keys: Vec<String> = object.keys().cloned().collect();
    let request: Request =
        serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    // serde ignores unknown keys of argument-less commands: catch them here.
    let known = serde_json::to_value(&request).expect("requests always serialise");
    if let Some(extra) = keys.iter().find(|k| known.get(k.as_str()).is_none()) {
        return Err(ProtocolError::Malformed(format!("unknown key `{extra}`")));
    }
    Ok(request)
}

/// A JSON value none of whose objects names a key twice (serde_json alone keeps the last).
struct UniqueKeys(serde_json::Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;

        struct UniqueVisitor;

        impl<'de> Visitor<'de> for UniqueVisitor {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::Bool(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::from(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::from(v)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::from(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::String(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::String(v)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::Null))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
                let mut items = Vec::new();
                while let Some(UniqueKeys(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(UniqueKeys(Value::Array(items)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let UniqueKeys(v) = map.next_value()?;
                    if object.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    object.insert(key, v);
                }
                Ok(UniqueKeys(Value::Object(object)))
            }
        }

        deserializer.deserialize_any(UniqueVisitor)
    }
}

/// The line `sluice ctl` sends for `request`.
pub fn request_line(request: &Request) -> String {
    let mut value = serde_json::to_value(request).expect("requests always serialise");
    if let Some(o) = value.as_object_mut() {
        o.insert("version".into(), VERSION.into());
    }
    let mut s = value.to_string();
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// The process serving (after `ctl upgrade`, the new one's).
    pub pid: u32,
    /// When this process started serving, seconds since the Unix epoch.
    #[serde(default)]
    pub started_at_unix: f64,
    /// The binary this process runs (as it was started).
    #[serde(default)]
    pub binary: Option<String>,
    pub uptime_seconds: f64,
    pub driver: String,
    pub workers: usize,
    pub generation: u64,
    pub config: Option<String>,
    pub service_ports: usize,
    pub listen: Vec<String>,
    pub reloads: u64,
    pub last_reload: Option<ReloadOutcome>,
}

/// What a reload did (`reload`, and `status.last_reload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// Generation serving after the attempt.
    pub generation: u64,
    /// On failure: the error (`FILE:LINE:COLUMN: message` for a config error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On success: one line per change (`+ service ...`, `- endpoint ...`).
    #[serde(default)]
    pub changes: Vec<String>,
    /// Settings that changed in the file but apply only after a restart.
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

/// What an upgrade did (`upgrade`): the old process hands over and drains; the new one
/// serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeOutcome {
    /// The process that answered (it drains its connections, then exits).
    pub old_pid: u32,
    pub old_version: String,
    /// The process serving now.
    pub new_pid: u32,
    pub new_version: String,
    /// The binary started.
    pub binary: String,
    /// From the request to the new process serving.
    pub seconds: f64,
    /// How long the old process lets its connections finish (`drain_timeout`).
    pub drain_timeout_seconds: f64,
}

/// Counters of a Service port or endpoint, summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub connections_total: u64,
    pub connections_active: u64,
    pub connections_failed: u64,
    pub connect_retries: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

/// One endpoint as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub address: String,
    /// The weight from the configuration.
    pub configured_weight: u32,
    /// The weight routing uses (0 when draining/disabled, down, not ready while others are,
    /// or remote under externalTrafficPolicy Local).
    pub weight: u32,
    /// `enabled`, `draining` or `disabled`.
    pub state: String,
    /// Whether a runtime override applies.
    pub overridden: bool,
    /// Kubernetes conditions (TOML endpoints are ready and serving).
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
    /// On this node.
    #[serde(default)]
    pub local: bool,
    /// `up`, or `down` while health checks hold the endpoint out (or it is disabled).
    #[serde(default)]
    pub health: String,
    /// Why it is down (`3 failed checks: connection refused`, `ejected: …`, `disabled by
    /// an operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    pub counters: Counters,
}

/// Result of `flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    /// Every flow and connection that matched, in the workers that answered.
    pub total: usize,
    /// The most listed (`flows` holds at most this many).
    pub limit: usize,
    pub workers: usize,
    /// Workers that answered within the request's deadline (each answers between two turns
    /// of its loop; one that did not is left out of `total` and `flows`).
    pub workers_answered: usize,
    /// UDP flows first, then TCP connections; each by Service, client and node address.
    pub flows: Vec<FlowInfo>,
}

/// One live UDP flow or TCP connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// `UDP` or `TCP`.
    pub protocol: String,
    /// `namespace/name[:port_name]`.
    pub service: String,
    pub client: String,
    /// The node address and port the client reached.
    pub node: String,
    /// `None` while a TCP connection has no endpoint yet (connecting, or held).
    pub endpoint: Option<String>,
    pub age_seconds: f64,
    /// Since the last datagram either way (UDP) or the last byte moved (TCP).
    pub idle_seconds: f64,
    pub bytes_to_endpoint: u64,
    pub bytes_to_client: u64,
    /// UDP only.
    pub datagrams_to_endpoint: Option<u64>,
    pub datagrams_to_client: Option<u64>,
    pub worker: usize,
}

/// One Service port as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePortInfo {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: String,
    pub port: u16,
    pub target_port: u16,
    pub node_port: u16,
    pub node_port_allocated: bool,
    pub policy: String,
    /// Kubernetes' `sessionAffinity`: `"ClientIP"` for the client-ip policy, else `"None"`.
    pub session_affinity: String,
    pub forwarding: String,
    pub endpoints_usable: usize,
    pub endpoints_total: usize,
    pub counters: Counters,
    /// The Service port's external IPs (served on `port` where local to the node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// Its LoadBalancer ingress IPs (VIP mode; served on `port` where local).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_ips: Vec<String>,
    /// Its `loadBalancerSourceRanges`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Clients refused because they are outside the source ranges.
    #[serde(default)]
    pub source_ranges_refused: u64,
    pub endpoints: Vec<EndpointInfo>,
    /// The Kubernetes Service as written (manifests or the API); absent for TOML Services
    /// (and from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesInfo>,
}

/// What `kubectl describe service` shows of a Kubernetes Service, beyond the port itself
/// (the Service as written; the same in every port of the Service).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubernetesInfo {
    /// `NodePort` or `LoadBalancer`.
    pub service_type: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub selector: Vec<(String, String)>,
    pub ip_family_policy: Option<String>,
    pub ip_families: Vec<String>,
    /// `spec.clusterIP` as written (`""` when unset).
    pub cluster_ip: String,
    pub cluster_ips: Vec<String>,
    pub external_ips: Vec<String>,
    /// `IP`, `IP (VIP)` / `IP (Proxy)`, or a hostname.
    pub load_balancer_ingress: Vec<String>,
    /// Every `spec.ports` entry in spec order, also those not served.
    pub ports: Vec<SpecPortInfo>,
    /// As written (`None` when unset).
    pub session_affinity: String,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub load_balancer_source_ranges: Vec<String>,
    pub health_check_node_port: Option<u16>,
    /// sluice's problems with the Service, as Events.
    pub events: Vec<EventInfo>,
}

/// One `spec.ports` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecPortInfo {
    pub name: String,
    pub protocol: String,
    pub port: i32,
    /// `9000` or `http-server`.
    pub target_port: String,
    /// 0 when unset (a served port shows the nodePort it is served on).
    pub node_port: i32,
    pub app_protocol: Option<String>,
}

/// A problem with a Service, in kubectl's Event columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventInfo {
    /// `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `InvalidAnnotation`, `NodePortConflict`, `PortNotServed`, …
    pub reason: String,
    /// Seconds since sluice first saw the problem (this run).
    pub age_seconds: u64,
    /// `sluice`.
    pub from: String,
    pub message: String,
}

/// Result of `services`, `describe`, `endpoints` and `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub generation: u64,
    pub services: Vec<ServicePortInfo>,
}

/// Result of `endpoint ...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideOutcome {
    pub generation: u64,
    /// The endpoints affected, as `SERVICE ADDR STATE weight W`.
    pub affected: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let all = [
            Request::Status,
            Request::Describe {
                service: "myfrontend".into(),
                namespace: Some("workshop".into()),
            },
            Request::Endpoint {
                action: EndpointAction::Weight,
                service: "a".into(),
                address: "10.0.0.1:80".into(),
                weight: Some(3),
            },
            Request::LogLevel {
                level: "debug".into(),
            },
            Request::Upgrade {
                binary: None,
                ready_timeout_seconds: None,
            },
            Request::Upgrade {
                binary: Some("/usr/bin/sluice".into()),
                ready_timeout_seconds: Some(5),
            },
            Request::Flows {
                service: Some("itest/dns".into()),
                limit: Some(5),
            },
            Request::Flows {
                service: None,
                limit: None,
            },
        ];
        for r in all {
            let line = request_line(&r);
            assert!(
                line.ends_with('\n') && line.contains("\"version\":1"),
                "{line}"
            );
            assert_eq!(parse_request(line.trim_end()).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_are_told_apart() {
        let kind = |l: &str| parse_request(l).unwrap_err().kind();
        assert_eq!(kind("hello"), "malformed");
        assert_eq!(kind("[1]"), "malformed");
        assert_eq!(kind(r#"{"command":"status"}"#), "version");
        assert_eq!(kind(r#"{"version":2,"command":"status"}"#), "version");
        assert_eq!(
            kind(r#"{"version":1,"command":"launch"}"#),
            "unknown-command"
        );
        assert_eq!(kind(r#"{"version":1}"#), "malformed");
        assert_eq!(
            kind(r#"{"version":1,"command":"status","x":1}"#),
            "malformed"
        );
        assert_eq!(kind(r#"{"version":1,"command":"describe"}"#), "malformed");
    }

    #[test]
    fn a_key_given_twice_is_refused_wherever_it_is() {
        let refused = |l: &str| match parse_request(l) {
            Err(ProtocolError::Malformed(m)) => m,
            other => panic!("{l}: {other:?}"),
        };
        let m = refused(r#"{"version":1,"command":"reload","command":"status"}"#);
        assert!(m.contains("duplicate key `command`"), "{m}");
        let m = refused(r#"{"version":1,"version":1,"command":"status"}"#);
        assert!(m.contains("duplicate key `version`"), "{m}");
        let m = refused(
            r#"{"version":1,"command":"endpoint","action":"drain","service":"a","address":"10.0.0.1","address":"10.0.0.2"}"#,
        );
        assert!(m.contains("duplicate key `address`"), "{m}");
        // Nested objects too (no request has one today: refused either way, as malformed).
        let m = refused(r#"{"version":1,"command":"status","x":{"a":1,"a":2}}"#);
        assert!(m.contains("duplicate key `a`"), "{m}");
        // The same key in two different objects is fine.
        assert_eq!(
            parse_request(r#"{"version":1,"command":"log-level","level":"debug"}"#).unwrap(),
            Request::LogLevel {
                level: "debug".into()
            }
        );
    }

    #[test]
    fn an_upgrade_request_names_at_most_a_binary_and_a_ready_timeout() {
        assert_eq!(
            parse_request(r#"{"version":1,"command":"upgrade"}"#).unwrap(),
            Request::Upgrade {
                binary: None,
                ready_timeout_seconds: None
            }
        );
        assert_eq!(
            parse_request(r#"{"version":1,"command":"upgrade","binary":"/opt/sluice"}"#).unwrap(),
            Request::Upgrade {
                binary: Some("/opt/sluice".into()),
                ready_timeout_seconds: None
            }
        );
        let e = parse_request(r#"{"version":1,"command":"upgrade","bin":"/x"}"#).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().contains("`bin`"), "{e}");
        let e = parse_request(r#"{"version":1,"command":"upgrade","binary":7}"#).unwrap_err();
        assert_eq!(e.kind(), "malformed");
    }
}
