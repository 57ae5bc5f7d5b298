//! The one atomic pointer through which the control side hands routing state to workers.
//!
//! The control side builds a complete [`RoutingSnapshot`] off the hot path and swaps it in
//! with a single store; workers read the current one lock-free. A swap affects new
//! connections only: a worker keeps the snapshot a live connection was routed with alive
//! until that connection ends (see `dataplane::worker`). There is never a second pointer
//! that must change together with this one.

use crate::table::RoutingSnapshot;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Shared handle to the currently published routing snapshot.
#[derive(Debug, Clone)]
pub struct Publisher {
    current: Arc<ArcSwap<RoutingSnapshot>>,
}

impl Publisher {
    pub fn new(initial: RoutingSnapshot) -> Publisher {
        Publisher {
            current: Arc::new(ArcSwap::from_pointee(initial)),
        }
    }

    /// Replace the published snapshot; returns the one it replaced.
    pub fn publish(&self, next: RoutingSnapshot) -> Arc<RoutingSnapshot> {
        self.current.swap(Arc::new(next))
    }

    /// The snapshot published now.
    pub fn current(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    /// A reader that re-loads only when the pointer changed (cheap per call; for workers).
    pub fn reader(&self) -> arc_swap::Cache<Arc<ArcSwap<RoutingSnapshot>>, Arc<RoutingSnapshot>> {
        arc_swap::Cache::new(Arc::clone(&self.current))
    }
}
