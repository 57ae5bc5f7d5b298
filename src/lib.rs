//! sluice: a user-space load balancer for Kubernetes NodePort traffic.
//!
//! Module map. In parentheses: the other modules of the crate each may use — the arrows of
//! docs/architecture.md, "Module map", which `tests/architecture.rs` checks against the
//! source.
//!
//! - [`model`]: the vocabulary — Services, endpoints, settings, and the one spelling of
//!   each policy, forwarding mode, hash key, … (nothing: std only).
//! - [`deadline`]: time arithmetic that saturates instead of panicking (nothing).
//! - [`stats`]: single-writer per-worker counters (nothing; crossbeam).
//! - [`http`]: sluice's own HTTP/1.1 servers on hyper: bounded connections, header-read
//!   timeout, keep-alive (nothing).
//! - [`logging`]: the daemon's log format (text or JSON, journald-aware) and filter (nothing).
//! - [`table`]: stable hash, Maglev, usable endpoints, [`table::RoutingSnapshot`] (model,
//!   stats).
//! - [`publish`]: the one atomic pointer to the current snapshot (table).
//! - [`proxy_protocol`]: PROXY v1/v2 header encoder and decoder (model).
//! - [`dataplane`]: the sans-IO connection table and core, workers, the io_uring and epoll
//!   drivers, behind one API in `dataplane/mod.rs` (model, stats, table, publish,
//!   proxy_protocol, deadline — never control, config or watch).
//! - [`config`]: TOML file and Kubernetes objects/manifests → [`model::Model`], with
//!   `FILE:LINE:COLUMN` errors; `sluice check`'s rendering (model, table, deadline).
//! - [`watch`]: the Kubernetes API watch (`run --kubernetes`): stores of Services and
//!   EndpointSlices, coalesced change notifications (config, model, deadline).
//! - [`tproxy`]: transparent-mode helpers: node rules text, CAP_NET_ADMIN probe (config,
//!   model).
//! - [`demo`]: the built-in demo pods and Service (http, model).
//! - [`handover`]: passing the listening sockets and the state worth keeping to a new process
//!   (`ctl upgrade`) or through systemd's fd store: protocol, fd passing, socket names and
//!   checks, starting the new binary (nothing; the caller adopts inherited descriptors).
//! - [`control`]: the control plane: start-up, the reload transaction, the control socket
//!   and `sluice ctl`, metrics, health checks, sd_notify, upgrades (everything above but
//!   demo, logging and tproxy; the data plane through its API only; the rooms are listed in its
//!   module docs).
//!
//! The binary (`src/main.rs`) parses the command line and calls into these.

#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod dataplane;
pub mod deadline;
pub mod demo;
pub mod handover;
pub mod http;
pub mod logging;
pub mod model;
pub mod proxy_protocol;
pub mod publish;
pub mod stats;
pub mod table;
pub mod tproxy;
pub mod watch;
