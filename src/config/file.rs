//! The configuration file exactly as written: serde types that mirror the TOML keys.
//!
//! These types only check shapes (which keys exist, which TOML types they hold) and keep the
//! byte span of every value so that later checks can point at it. They hold no defaults and
//! make no semantic judgement: `validate` turns them into a [`crate::model::Model`]. Integers
//! are read as `i64` so that a range error can name the value instead of a Rust type.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::fmt;

/// The whole file: node-wide settings, service defaults, and the `[[service]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    pub workers: Option<Spanned<i64>>,
    pub pin_workers: Option<bool>,
    pub listen_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub node_port_range: Option<Spanned<String>>,
    pub max_connections_per_worker: Option<Spanned<i64>>,
    pub max_held_per_worker: Option<Spanned<i64>>,
    pub max_held_per_service: Option<Spanned<i64>>,
    pub max_flows_per_worker: Option<Spanned<i64>>,
    pub relay: Option<Spanned<String>>,
    pub driver: Option<Spanned<String>>,
    pub backlog: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<DurationText>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
    pub hold_when_empty: Option<Spanned<DurationText>>,
    pub connect_retries: Option<Spanned<i64>>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub control_socket: Option<Spanned<String>>,
    pub control_socket_mode: Option<Spanned<i64>>,
    pub control_socket_group: Option<Spanned<i64>>,
    pub control_allowed_uids: Option<Vec<Spanned<i64>>>,
    pub control_allowed_gids: Option<Vec<Spanned<i64>>>,
    pub metrics_address: Option<Spanned<String>>,
    pub health_address: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<DurationText>>,
    pub source_ranges_on_node_ports: Option<bool>,
    pub forwarding: Option<Spanned<String>>,
    pub health_check: Option<Spanned<String>>,
    pub health_check_path: Option<Spanned<String>>,
    pub health_check_status: Option<Spanned<IntOrText>>,
    pub health_check_interval: Option<Spanned<DurationText>>,
    pub health_check_timeout: Option<Spanned<DurationText>>,
    pub health_check_rise: Option<Spanned<i64>>,
    pub health_check_fall: Option<Spanned<i64>>,
    pub health_check_port: Option<Spanned<i64>>,
    pub outlier_ejection: Option<Spanned<bool>>,
    pub outlier_consecutive_failures: Option<Spanned<i64>>,
    pub outlier_ejection_time: Option<Spanned<DurationText>>,
    pub shutdown_sessions: Option<Spanned<bool>>,
    #[serde(default)]
    pub service: Vec<ServiceEntry>,
}

/// One `[[service]]` table: one port of one Kubernetes Service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceEntry {
    pub name: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    pub port_name: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub port: Spanned<i64>,
    pub target_port: Option<Spanned<i64>>,
    pub node_port: Option<Spanned<i64>>,
    pub external_ips: Option<Vec<Spanned<String>>>,
    pub load_balancer_ips: Option<Vec<Spanned<String>>>,
    pub load_balancer_source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<EndpointEntry>>,
    pub policy: Option<Spanned<String>>,
    pub affinity_timeout_seconds: Option<Spanned<i64>>,
    pub affinity_max_entries: Option<Spanned<i64>>,
    pub hash_key: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<DurationText>>,
    pub idle_timeout: Option<Spanned<DurationText>>,
    pub hold_when_empty: Option<Spanned<DurationText>>,
    pub connect_retries: Option<Spanned<i64>>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub forwarding: Option<Spanned<String>>,
    pub proxy_unique_id: Option<Spanned<bool>>,
    pub proxy_tlvs: Option<Spanned<Vec<Spanned<TlvEntry>>>>,
    pub udp_responses: Option<Spanned<i64>>,
    pub health_check: Option<Spanned<String>>,
    pub health_check_path: Option<Spanned<String>>,
    pub health_check_status: Option<Spanned<IntOrText>>,
    pub health_check_interval: Option<Spanned<DurationText>>,
    pub health_check_timeout: Option<Spanned<DurationText>>,
    pub health_check_rise: Option<Spanned<i64>>,
    pub health_check_fall: Option<Spanned<i64>>,
    pub health_check_port: Option<Spanned<i64>>,
    pub outlier_ejection: Option<Spanned<bool>>,
    pub outlier_consecutive_failures: Option<Spanned<i64>>,
    pub outlier_ejection_time: Option<Spanned<DurationText>>,
    pub shutdown_sessions: Option<Spanned<bool>>,
}

/// One element of `proxy_tlvs`: `{ type = 0xE0, value = "workshop/myfrontend" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlvEntry {
    #[serde(rename = "type")]
    pub kind: Spanned<i64>,
    pub value: Spanned<String>,
}

/// One element of `endpoints`: either `"IP"`, `"IP:PORT"`, `"[IPv6]:PORT"`, or an inline
/// table `{ address = "IP", port = 9000, weight = 2 }`.
#[derive(Debug)]
pub(super) enum EndpointEntry {
    Text(String),
    Table(EndpointTable),
}

/// The inline-table form of an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointTable {
    pub address: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub weight: Option<Spanned<i64>>,
}

/// A duration written as a humantime string (`"3s"`, `"500ms"`, `"1h 30m"`), kept as text so
/// that `validate` can judge it with the key's name in the message.
#[derive(Debug)]
pub(super) struct DurationText(pub String);

impl<'de> Deserialize<'de> for EndpointEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an endpoint: a string \"IP\", \"IP:PORT\" or \"[IPv6]:PORT\", \
                     or an inline table { address = \"IP\", port = PORT, weight = N }",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(EndpointEntry::Text(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // Hand the same map to the derived table type, so that its fields keep their
                // spans and unknown keys are rejected with the usual message.
                EndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(EndpointEntry::Table)
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// A value written either as an integer or as a string (`health_check_status = 200` or
/// `"200-399"`), judged by `validate`.
#[derive(Debug)]
pub(super) enum IntOrText {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for IntOrText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrTextVisitor;

        impl Visitor<'_> for IntOrTextVisitor {
            type Value = IntOrText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code such as 200, or a range such as \"200-399\"")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(IntOrText::Int(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(IntOrText::Int(i64::try_from(value).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(IntOrText::Text(value.to_owned()))
            }
        }

        deserializer.deserialize_any(IntOrTextVisitor)
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"3s\", \"500ms\" or \"1h\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(DurationText(value.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}
