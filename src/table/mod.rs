//! Routing tables: the stable hash, Maglev, and the immutable [`RoutingSnapshot`] workers
//! read to route a new connection.
//!
//! This module turns a validated [`crate::model::Model`] into data workers can route with,
//! and owns the rules that make every node agree on the pod a client goes to. It may use
//! only `crate::model` and `crate::stats` (plus external crates): no IO, no clock, no
//! randomness, no knowledge of sockets, workers or publishing.
//!
//! - [`hash`]: the stable hash (XXH3 with fixed seeds), client keys, canonical endpoint names;
//! - [`maglev`]: the Maglev table as a pure function of (endpoints, weights, M);
//! - `registry`: counter blocks carried across builds ([`StatsRegistry`]);
//! - [`usable`]: which endpoints carry traffic (conditions, topology, externalTrafficPolicy,
//!   health), per IP family;
//! - `route`: [`Route`], one family's (outside or node) endpoints with their Maglev table;
//! - `ranges`: [`SourceRanges`], `loadBalancerSourceRanges` as the accept path checks them;
//! - `snapshot`: [`RoutingSnapshot`], [`ServiceEntry`] and `pick`.

pub mod hash;
pub mod maglev;
mod ranges;
mod registry;
mod route;
mod snapshot;
pub mod usable;

pub use maglev::{MaglevTable, TableSize};
pub use ranges::SourceRanges;
pub use registry::StatsRegistry;
pub use route::Route;
pub use snapshot::{EndpointEntry, EndpointId, Reached, RoutingSnapshot, ServiceEntry, ServiceId};
pub use usable::{Family, Tier};
