//! Micro-benchmarks of the routing tables: Maglev build, `pick`, NodePort `lookup`, and
//! loading the published snapshot on the worker path. Results: docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::model::{
    Endpoint, HashKey, Model, Policy, Protocol, ServiceName, ServicePort, ServicePortKey, Settings,
    Timeouts, DEFAULT_MAGLEV_TABLE_SIZE,
};
use sluice::publish::Publisher;
use sluice::table::{
    EndpointId, MaglevTable, RoutingSnapshot, ServiceId, StatsRegistry, TableSize,
};
use std::hint::black_box;
use std::net::SocketAddr;

fn endpoints(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            Endpoint::new(SocketAddr::from((
                [10, 1, (i / 256) as u8, (i % 256) as u8],
                8080,
            )))
            .with_weight(weight(i))
        })
        .collect()
}

/// A NodePort listener bound on every address (the lookup key a worker has).
fn wildcard(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], port))
}

fn service(i: usize, node_port: u16, eps: Vec<Endpoint>, table_size: u32) -> ServicePort {
    ServicePort {
        key: ServicePortKey {
            service: ServiceName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
            },
            port_name: String::new(),
            protocol: Protocol::Tcp,
        },
        port: 80,
        node_port,
        node_port_allocated: false,
        target_port: 8080,
        endpoints: eps,
        policy: Policy::Maglev {
            key: HashKey::ClientIpPort,
        },
        timeouts: Timeouts::default(),
        connect_retries: 2,
        maglev_table_size: table_size,
        forwarding: Default::default(),
        udp_responses: None,
        traffic_policy: Default::default(),
        families: Default::default(),
        health: Default::default(),
        meta: None,
        addresses: Default::default(),
    }
}

fn client(i: u32) -> SocketAddr {
    SocketAddr::from((
        (0xc000_0200u32 | (i & 0xff)).to_be_bytes(),
        (i % 60000) as u16 + 1024,
    ))
}

fn maglev_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build_m65537");
    let size = TableSize::new(DEFAULT_MAGLEV_TABLE_SIZE);
    for n in [10usize, 100, 1000] {
        let eps = endpoints(n, |_| 1);
        g.bench_with_input(BenchmarkId::new("equal_weights", n), &eps, |b, eps| {
            b.iter(|| MaglevTable::build(black_box(eps), size))
        });
    }
    for n in [100usize, 1000] {
        let eps = endpoints(n, |i| 1 + (i % 4) as u32);
        g.bench_with_input(BenchmarkId::new("weights_1_to_4", n), &eps, |b, eps| {
            b.iter(|| MaglevTable::build(black_box(eps), size))
        });
    }
    let skewed = endpoints(1000, |i| if i == 0 { 1000 } else { 1 });
    g.bench_function("one_weight_1000_rest_1/1000", |b| {
        b.iter(|| MaglevTable::build(black_box(&skewed), size))
    });
    g.finish();
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let model = Model {
        settings: Settings::default(),
        services: vec![service(
            0,
            30000,
            endpoints(100, |_| 1),
            DEFAULT_MAGLEV_TABLE_SIZE,
        )],
        primary_ips: Vec::new(),
    };
    let snap = RoutingSnapshot::build(&model, 1, &mut StatsRegistry::new(1));
    let svc = snap.service(ServiceId(0));
    let mut i = 0u32;
    g.bench_function("n100_untried", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            svc.pick(black_box(client(i)), &[])
        })
    });
    g.bench_function("client_hash_only", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            sluice::table::hash::client_hash(HashKey::ClientIpPort, black_box(client(i)))
        })
    });
    let tried = [EndpointId(3), EndpointId(17)];
    g.bench_function("n100_two_tried", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            svc.pick(black_box(client(i)), black_box(&tried))
        })
    });
    g.bench_function("lookup_then_pick_n100", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let reached = snap.lookup(Protocol::Tcp, black_box(wildcard(30000)))?;
            snap.service(reached.service)
                .pick(black_box(client(i)), &[])
        })
    });
    g.finish();
}

/// 10,000 Services (small tables: lookup cost does not depend on them).
fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup_10000_services");
    let services: Vec<ServicePort> = (0..10_000usize)
        .map(|i| service(i, 30000 + i as u16, endpoints(2, |_| 1), 211))
        .collect();
    let model = Model {
        settings: Settings::default(),
        services,
        primary_ips: Vec::new(),
    };
    let snap = RoutingSnapshot::build(&model, 1, &mut StatsRegistry::new(1));
    // A pseudo-random walk over the ports, hits and misses (40000..=45535 miss).
    let ports: Vec<u16> = (0..4096u32)
        .map(|i| 30000 + ((i.wrapping_mul(2_654_435_761) >> 16) % 15_536) as u16)
        .collect();
    let mut k = 0usize;
    g.bench_function("dense_index", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            snap.lookup(Protocol::Tcp, black_box(wildcard(ports[k])))
        })
    });
    // The alternative the dense index was chosen over.
    let map: ahash::AHashMap<(Protocol, u16), ServiceId> = snap
        .services()
        .map(|(id, s)| ((s.port.key.protocol, s.port.node_port), id))
        .collect();
    g.bench_function("ahash_map_for_comparison", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            map.get(&(Protocol::Tcp, black_box(ports[k]))).copied()
        })
    });
    g.finish();
}

/// What a worker does per accept to see the current snapshot.
fn snapshot_load(c: &mut Criterion) {
    let model = Model {
        settings: Settings::default(),
        services: vec![service(0, 30000, endpoints(10, |_| 1), 211)],
        primary_ips: Vec::new(),
    };
    let publisher = Publisher::new(RoutingSnapshot::build(
        &model,
        1,
        &mut StatsRegistry::new(1),
    ));
    let mut reader = publisher.reader();
    let mut g = c.benchmark_group("snapshot_load");
    g.bench_function("arc_swap_cache_load", |b| {
        b.iter(|| black_box(reader.load()).generation())
    });
    g.bench_function("arc_swap_load_full_for_comparison", |b| {
        b.iter(|| black_box(publisher.current()).generation())
    });
    g.finish();
}

criterion_group!(benches, maglev_build, pick, lookup, snapshot_load);
criterion_main!(benches);
