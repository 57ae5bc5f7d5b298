//! The state a new process takes over besides the sockets: what an operator set at run
//! time, what health checks learned, and counter totals so that Prometheus counters keep
//! rising instead of falling to zero.
//!
//! It travels as JSON in the `state` frame. Every field has a default and unknown fields
//! are ignored, so an older or newer sluice reads what it understands and starts the rest
//! afresh (a field this version lacks is simply not carried). [`CarriedState::FORMAT`]
//! changes only for a meaning change, and a state of another format is ignored with a
//! warning — never a reason to refuse the upgrade.
//!
//! Keys are plain strings and addresses, not the model's types, so the blob's shape does
//! not change when the model's does.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Everything carried from the old process to the new one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CarriedState {
    /// The blob's format ([`Self::FORMAT`]).
    pub format: u32,
    /// `sluice ctl endpoint drain|disable|enable|weight` settings.
    pub overrides: Vec<EndpointOverride>,
    /// Endpoints that health checking (active or passive) holds down.
    pub health: Vec<EndpointHealth>,
    /// Counter totals at the moment of the hand-over.
    pub counters: Counters,
}

impl CarriedState {
    pub const FORMAT: u32 = 1;

    /// The state as JSON for the `state` frame.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads a received state: what parses is kept; another format or a shape this version
    /// cannot read gives an empty state and says why (for a warning).
    pub fn from_json(value: serde_json::Value) -> (CarriedState, Option<String>) {
        match serde_json::from_value::<CarriedState>(value) {
            Ok(s) if s.format == Self::FORMAT => (s, None),
            Ok(s) => (
                CarriedState::default(),
                Some(format!(
                    "the old process's state has format {}, this version reads {}: starting \
                     with fresh overrides, health and counters",
                    s.format,
                    Self::FORMAT
                )),
            ),
            Err(e) => (
                CarriedState::default(),
                Some(format!(
                    "the old process's state does not parse ({e}): starting with fresh \
                     overrides, health and counters"
                )),
            ),
        }
    }
}

/// A Service port, by name (`namespace`, `name`, port name, protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// `TCP`, `UDP`.
    pub protocol: String,
}

/// An operator's override of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointOverride {
    pub service: PortKey,
    pub endpoint: SocketAddr,
    /// `enabled`, `draining`, `disabled`.
    pub state: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// One endpoint that health checking holds down, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub service: PortKey,
    pub endpoint: SocketAddr,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Counter totals. The new process starts each counter of a Service port, endpoint or
/// the UDP flow table at these values (their keys matched by name; a key its configuration
/// lacks is dropped). Gauges (active connections, live flows, failures in a row) are not
/// carried: the old process's connections are its own. The `offer` carries the totals when
/// the upgrade starts; the old process sends them again, final, in a `counters` frame
/// after it stopped answering `/metrics` (see `handover`'s sequence), and the new one
/// answers `/metrics` only after that, so no scrape sees a counter go down. What the old
/// process counts while it drains is not added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub services: Vec<(PortKey, Totals)>,
    pub endpoints: Vec<(PortKey, SocketAddr, Totals)>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The UDP flow table's counters, all workers.
    pub udp_flows: FlowCounts,
}

/// The monotonic counters of one Service port or endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub opened: u64,
    pub failed: u64,
    pub retries: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub connect_failed: u64,
    pub holds_refused: u64,
    pub source_refused: u64,
    pub datagrams_to_backend: u64,
    pub datagrams_to_client: u64,
    /// Service ports: the backend connect-latency histogram (absent when empty).
    pub connect_latency: Option<Histogram>,
    /// Service ports: the connection-duration histogram (absent when empty).
    pub duration: Option<Histogram>,
}

/// A histogram's per-bucket (not cumulative) counts, under the bounds they were counted
/// with: a receiver whose bounds differ drops it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    /// Upper bounds in nanoseconds (+Inf follows).
    pub bounds_ns: Vec<u64>,
    /// One count per bound, then +Inf.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

/// The UDP flow table's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowCounts {
    pub created: u64,
    pub expired: u64,
    pub closed: u64,
    pub refused: u64,
    /// Datagrams dropped, by reason (the `reason` label); a reason the receiver does not
    /// know is dropped.
    pub drops: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CarriedState {
        let key = PortKey {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: "TCP".into(),
        };
        let ep: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        CarriedState {
            format: CarriedState::FORMAT,
            overrides: vec![EndpointOverride {
                service: key.clone(),
                endpoint: ep,
                state: "draining".into(),
                weight: Some(3),
            }],
            health: vec![EndpointHealth {
                service: key.clone(),
                endpoint: ep,
                reason: Some("connect refused 3 times".into()),
            }],
            counters: Counters {
                services: vec![(
                    key.clone(),
                    Totals {
                        opened: 10,
                        bytes_to_client: 1 << 40,
                        duration: Some(Histogram {
                            bounds_ns: vec![1, 2],
                            buckets: vec![0, 3, 1],
                            sum_ns: 7,
                        }),
                        ..Totals::default()
                    },
                )],
                endpoints: vec![(key, ep, Totals::default())],
                reloads_ok: 4,
                reloads_failed: 1,
                udp_flows: FlowCounts {
                    created: 9,
                    drops: vec![("no_endpoint".into(), 2)],
                    ..FlowCounts::default()
                },
            },
        }
    }

    #[test]
    fn the_state_round_trips() {
        let s = sample();
        assert_eq!(CarriedState::from_json(s.to_json()), (s, None));
    }

    #[test]
    fn fields_of_another_version_are_ignored_and_missing_ones_default() {
        let mut v = sample().to_json();
        v["from_the_future"] = serde_json::json!({"x": 1});
        v.as_object_mut().unwrap().remove("health");
        let (s, warning) = CarriedState::from_json(v);
        assert_eq!(warning, None);
        assert!(s.health.is_empty());
        assert_eq!(s.overrides, sample().overrides);
    }

    #[test]
    fn counters_of_an_older_version_read_with_the_new_fields_zero() {
        // What this version's predecessor sent: Totals without datagrams or histograms,
        // Counters without udp_flows.
        let v = serde_json::json!({
            "format": 1,
            "counters": {
                "services": [[{"namespace": "default", "name": "web", "port_name": "http",
                               "protocol": "TCP"}, {"opened": 3, "bytes_to_client": 10}]],
                "reloads_ok": 2
            }
        });
        let (s, warning) = CarriedState::from_json(v);
        assert_eq!(warning, None);
        let (_, t) = &s.counters.services[0];
        assert_eq!(
            (t.opened, t.bytes_to_client, t.datagrams_to_client),
            (3, 10, 0)
        );
        assert_eq!(t.duration, None);
        assert_eq!(s.counters.reloads_ok, 2);
        assert_eq!(s.counters.udp_flows, FlowCounts::default());
    }

    #[test]
    fn another_format_or_shape_starts_fresh_with_a_reason() {
        let mut v = sample().to_json();
        v["format"] = 2.into();
        let (s, warning) = CarriedState::from_json(v);
        assert_eq!(s, CarriedState::default());
        assert!(warning.unwrap().contains("format 2"));
        let (s, warning) = CarriedState::from_json(serde_json::json!({"overrides": 5}));
        assert_eq!(s, CarriedState::default());
        assert!(warning.unwrap().contains("does not parse"));
    }
}
