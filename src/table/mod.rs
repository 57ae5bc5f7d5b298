//! Routing tables: the stable hash, Maglev, and the immutable [`RoutingSnapshot`] workers read.
//! STUB — being written (see the table brief). The public API below is fixed.

use crate::model::{Endpoint, Model, Protocol, ServicePort, ServicePortKey};
use crate::stats::StatsBlock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

#[derive(Debug)]
pub struct EndpointEntry {
    pub endpoint: Endpoint,
    pub stats: Arc<StatsBlock>,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub port: ServicePort,
    pub stats: Arc<StatsBlock>,
    endpoints: Vec<EndpointEntry>,
}

impl ServiceEntry {
    pub fn endpoints(&self) -> &[EndpointEntry] {
        &self.endpoints
    }
    pub fn endpoint(&self, id: EndpointId) -> &EndpointEntry {
        &self.endpoints[id.0 as usize]
    }
    pub fn pick(&self, _client: SocketAddr, tried: &[EndpointId]) -> Option<EndpointId> {
        (0..self.endpoints.len() as u32)
            .map(EndpointId)
            .find(|id| !tried.contains(id))
    }
}

#[derive(Debug, Default)]
pub struct StatsRegistry {
    workers: usize,
    services: HashMap<ServicePortKey, Arc<StatsBlock>>,
    endpoints: HashMap<(ServicePortKey, SocketAddr), Arc<StatsBlock>>,
}

impl StatsRegistry {
    pub fn new(workers: usize) -> Self {
        StatsRegistry {
            workers,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub struct RoutingSnapshot {
    generation: u64,
    services: Vec<ServiceEntry>,
    by_port: HashMap<(Protocol, u16), ServiceId>,
}

impl RoutingSnapshot {
    pub fn empty() -> Self {
        RoutingSnapshot {
            generation: 0,
            services: Vec::new(),
            by_port: HashMap::new(),
        }
    }
    pub fn build(model: &Model, generation: u64, stats: &mut StatsRegistry) -> Self {
        let mut s = Self::empty();
        s.generation = generation;
        for (i, p) in model.services.iter().enumerate() {
            let sst = stats
                .services
                .entry(p.key.clone())
                .or_insert_with(|| Arc::new(StatsBlock::new(stats.workers)))
                .clone();
            let eps = p
                .endpoints
                .iter()
                .map(|e| EndpointEntry {
                    endpoint: *e,
                    stats: stats
                        .endpoints
                        .entry((p.key.clone(), e.addr))
                        .or_insert_with(|| Arc::new(StatsBlock::new(stats.workers)))
                        .clone(),
                })
                .collect();
            s.by_port
                .insert((p.key.protocol, p.node_port), ServiceId(i as u32));
            s.services.push(ServiceEntry {
                port: p.clone(),
                stats: sst,
                endpoints: eps,
            });
        }
        s
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn lookup(&self, protocol: Protocol, node_port: u16) -> Option<ServiceId> {
        self.by_port.get(&(protocol, node_port)).copied()
    }
    pub fn service(&self, id: ServiceId) -> &ServiceEntry {
        &self.services[id.0 as usize]
    }
    pub fn services(&self) -> impl Iterator<Item = (ServiceId, &ServiceEntry)> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (ServiceId(i as u32), s))
    }
}
