//! Counter blocks that outlive routing snapshots.
//!
//! The [`StatsRegistry`] belongs to the control plane. It hands each snapshot build the
//! `Arc<StatsBlock>` of every Service port (by [`ServicePortKey`]) and every endpoint (by
//! key and canonical address), reusing the block the previous build used, so counters keep
//! counting across reloads. At the end of each build it forgets what that build did not
//! ask for; a snapshot still holding such a block keeps it alive until it is dropped. It
//! must not be touched by workers (it is `&mut` during a build) and knows nothing of
//! Maglev or of how snapshots are laid out.

use super::hash::canonical_addr;
use crate::model::ServicePortKey;
use crate::stats::StatsBlock;
use ahash::AHashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The counter blocks of the current configuration, carried from one build to the next.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    workers: usize,
    /// Incremented by each build; an entry not marked with the current value is stale.
    epoch: u64,
    services: AHashMap<ServicePortKey, ServiceBlocks>,
}

#[derive(Debug)]
struct ServiceBlocks {
    block: Arc<StatsBlock>,
    seen: u64,
    endpoints: AHashMap<SocketAddr, (Arc<StatsBlock>, u64)>,
}

impl StatsRegistry {
    /// A registry whose blocks have one counter slot per worker.
    pub fn new(workers: usize) -> Self {
        StatsRegistry {
            workers,
            ..Default::default()
        }
    }

    /// Counter slots per block.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The block of a Service port, if the last build had it.
    pub fn service(&self, key: &ServicePortKey) -> Option<&Arc<StatsBlock>> {
        self.services.get(key).map(|s| &s.block)
    }

    /// The block of an endpoint of a Service port, if the last build had it.
    pub fn endpoint(&self, key: &ServicePortKey, addr: SocketAddr) -> Option<&Arc<StatsBlock>> {
        let s = self.services.get(key)?;
        s.endpoints.get(&canonical_addr(addr)).map(|(b, _)| b)
    }

    /// Number of Service-port blocks held.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of endpoint blocks held, over all Service ports.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }

    /// Start a build: blocks handed out from now on are marked as in use.
    pub(super) fn begin(&mut self) {
        self.epoch += 1;
    }

    /// The block of `key`, reused or new, marked in use.
    pub(super) fn service_block(&mut self, key: &ServicePortKey) -> Arc<StatsBlock> {
        let epoch = self.epoch;
        let s = self.service_entry(key);
        s.seen = epoch;
        Arc::clone(&s.block)
    }

    /// The block of endpoint `addr` of `key`, reused or new, marked in use.
    pub(super) fn endpoint_block(
        &mut self,
        key: &ServicePortKey,
        addr: SocketAddr,
    ) -> Arc<StatsBlock> {
        let (workers, epoch) = (self.workers, self.epoch);
        let s = self.service_entry(key);
        let entry = s
            .endpoints
            .entry(canonical_addr(addr))
            .or_insert_with(|| (Arc::new(StatsBlock::new(workers)), epoch));
        entry.1 = epoch;
        Arc::clone(&entry.0)
    }

    /// End a build: forget every block it did not ask for.
    pub(super) fn finish(&mut self) {
        let epoch = self.epoch;
        self.services.retain(|_, s| {
            s.endpoints.retain(|_, (_, seen)| *seen == epoch);
            s.seen == epoch
        });
    }

    fn service_entry(&mut self, key: &ServicePortKey) -> &mut ServiceBlocks {
        let workers = self.workers;
        // Look up before inserting so the common (reused) case does not clone the key.
        if !self.services.contains_key(key) {
            self.services.insert(
                key.clone(),
                ServiceBlocks {
                    block: Arc::new(StatsBlock::with_histograms(workers)),
                    seen: 0,
                    endpoints: AHashMap::new(),
                },
            );
        }
        self.services
            .get_mut(key)
            .expect("inserted just above when missing")
    }
}
