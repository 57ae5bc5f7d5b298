//! Which endpoint gets a new connection: even spread, weights, and retry past a dead one.
//! Every connection is a fresh TCP connection (new source port), spread over four client
//! addresses, and must be answered.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Opens `total` fresh connections to `node` from 4 client IPs (4 threads), asks each for
/// the backend's name, and counts answers by name. Panics on any unanswered connection.
fn count_names(node: SocketAddr, total: usize) -> BTreeMap<String, usize> {
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + t as u8));
                let mut counts = BTreeMap::new();
                let mut failures = Vec::new();
                for i in 0..total / threads {
                    let answer = connect_from(src, node).and_then(|mut s| ask_name_on(&mut s));
                    match answer {
                        Ok(name) => *counts.entry(name).or_insert(0usize) += 1,
                        Err(e) => failures.push(format!("connection {i} from {src}: {e}")),
                    }
                }
                (counts, failures)
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for h in handles {
        let (c, f) = h.join().expect("client thread");
        for (k, v) in c {
            *counts.entry(k).or_insert(0) += v;
        }
        failures.extend(f);
    }
    eprintln!("{total} connections: {counts:?}");
    assert!(
        failures.is_empty(),
        "{} of {total} connections not answered, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    counts
}

#[test]
fn new_connections_spread_evenly_over_three_endpoints() {
    let pods = [
        NameServer::start("127.0.0.2", "pod-a"),
        NameServer::start("127.0.0.3", "pod-b"),
        NameServer::start("127.0.0.4", "pod-c"),
    ];
    let port = free_port();
    let eps: Vec<String> = pods.iter().map(|p| ep(p.addr)).collect();
    let mut lb = Sluice::run(&one_service(port, "workers = 2", &eps, ""));
    lb.wait_ready_name(node_addr(port));

    let total = 3000;
    let counts = count_names(node_addr(port), total);
    assert_eq!(counts.values().sum::<usize>(), total);
    assert_eq!(counts.len(), 3, "every endpoint is used: {counts:?}");
    for (name, n) in &counts {
        let even = total / 3;
        assert!(
            (even * 3 / 4..=even * 5 / 4).contains(n),
            "{name} got {n} of {total} (even share {even} ±25%): {counts:?}"
        );
    }
    // The backends agree: each accepted at least what its clients counted.
    for p in &pods {
        assert!(
            p.connections() >= counts[p.name()],
            "{}: {}",
            p.name(),
            p.connections()
        );
    }
}

#[test]
fn weights_1_2_3_give_proportional_shares() {
    let pods = [
        NameServer::start("127.0.0.2", "w1"),
        NameServer::start("127.0.0.3", "w2"),
        NameServer::start("127.0.0.4", "w3"),
    ];
    let port = free_port();
    let eps: Vec<String> = pods
        .iter()
        .zip([1, 2, 3])
        .map(|(p, w)| ep_weighted(p.addr, w))
        .collect();
    let mut lb = Sluice::run(&one_service(port, "workers = 2", &eps, ""));
    lb.wait_ready_name(node_addr(port));

    let total = 3000;
    let counts = count_names(node_addr(port), total);
    assert_eq!(counts.values().sum::<usize>(), total);
    // Expected 500 / 1000 / 1500. ±15% of each expected share: an unweighted balancer
    // (1000 each) fails both w1 and w3.
    for (name, weight) in [("w1", 1usize), ("w2", 2), ("w3", 3)] {
        let expected = total * weight / 6;
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (expected * 85 / 100..=expected * 115 / 100).contains(&n),
            "{name} (weight {weight}) got {n}, expected {expected} ±15%: {counts:?}"
        );
    }
}

#[test]
fn refused_endpoint_is_retried_on_another() {
    let dead = ClosedPort::new("127.0.0.2");
    let live = [
        NameServer::start("127.0.0.3", "live-1"),
        NameServer::start("127.0.0.4", "live-2"),
    ];
    let port = free_port();
    let eps = vec![ep(dead.addr), ep(live[0].addr), ep(live[1].addr)];
    let mut lb = Sluice::run(&one_service(
        port,
        "workers = 2",
        &eps,
        "connect_retries = 2",
    ));
    lb.wait_ready_name(node_addr(port));

    let total = 300;
    let counts = count_names(node_addr(port), total);
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
    // Both live endpoints still get a real share (the dead one's third is spread, not lost).
    for l in &live {
        let n = counts.get(l.name()).copied().unwrap_or(0);
        assert!(n >= total / 5, "{} got only {n}: {counts:?}", l.name());
    }
}
