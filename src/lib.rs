//! sluice: a user-space load balancer for Kubernetes NodePort traffic.
//!
//! Module map (arrows point to what a module may use):
//! - [`model`]: the vocabulary (std only).
//! - [`deadline`]: time arithmetic that saturates instead of panicking (leaf, std only).
//! - [`stats`]: single-writer per-worker counters (leaf, std + crossbeam).
//! - [`config`]: TOML file → [`model::Model`], with file:line:column errors.
//! - [`table`]: stable hash, Maglev, [`table::RoutingSnapshot`] (model, stats).
//! - [`publish`]: the one atomic pointer to the current snapshot (table).
//! - [`dataplane`]: the sans-IO connection table and core, workers, io_uring and epoll
//!   drivers, behind one API in `dataplane/mod.rs` (model, stats, table, publish).
//! - [`control`]: the control plane: reloads, control socket, metrics, sd_notify (the
//!   data plane through its API only).
//! - [`demo`]: the built-in demo pods and Service (http).
//! - [`http`]: sluice's own HTTP/1.1 servers on hyper: bounded connections, header-read
//!   timeout, keep-alive (leaf: hyper, tokio).
//! - [`logging`]: the daemon's log format (text or JSON, journald-aware) and filter.
//! - [`proxy_protocol`]: PROXY v1/v2 header encoder and decoder (leaf: model, std).
//! - [`tproxy`]: transparent-mode helpers: node rules text, CAP_NET_ADMIN probe (model, socket2).
//! - [`watch`]: the Kubernetes API watch (`run --kubernetes`): stores of Services and
//!   EndpointSlices, coalesced change notifications (config, model).

#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod dataplane;
pub mod deadline;
pub mod demo;
pub mod http;
pub mod logging;
pub mod model;
pub mod proxy_protocol;
pub mod publish;
pub mod stats;
pub mod table;
pub mod tproxy;
pub mod watch;
