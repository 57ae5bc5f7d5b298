//! sluice: a user-space load balancer for Kubernetes NodePort traffic.
//!
//! Module map (arrows point to what a module may use):
//! - [`model`]: the vocabulary (std only).
//! - [`stats`]: single-writer per-worker counters (leaf, std + crossbeam).
//! - [`config`]: TOML file → [`model::Model`], with file:line:column errors.
//! - [`table`]: stable hash, Maglev, [`table::RoutingSnapshot`] (model, stats).
//! - [`publish`]: the one atomic pointer to the current snapshot (table).
//! - [`dataplane`]: connection state machine, workers, io_uring driver (model, stats, table, publish).
//! - [`control`]: the control plane: reloads, control socket, metrics, sd_notify (everything but
//!   data-plane internals).
//! - [`demo`]: the built-in demo pods and Service.
//! - [`handover`]: passing listening sockets and state to a new process (`ctl upgrade`) or
//!   through systemd's fd store (no `unsafe`; std, rustix, socket2, serde; uses
//!   `dataplane::sys` for adopting inherited fds).
//! - [`logging`]: the daemon's log format (text or JSON, journald-aware) and filter.
//! - [`proxy_protocol`]: PROXY v1/v2 header encoder and decoder (leaf: model, std).
//! - [`tproxy`]: transparent-mode helpers: node rules text, CAP_NET_ADMIN probe (model, socket2).
//! - [`watch`]: the Kubernetes API watch (`run --kubernetes`): stores of Services and
//!   EndpointSlices, coalesced change notifications (config, model).

pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod handover;
pub mod logging;
pub mod model;
pub mod proxy_protocol;
pub mod publish;
pub mod stats;
pub mod table;
pub mod tproxy;
pub mod watch;
