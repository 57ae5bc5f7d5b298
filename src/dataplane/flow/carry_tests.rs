//! Unit tests of carrying flows to a new process (`carry.rs`): what the old table
//! describes is what the new table adopts, and what it must not adopt it refuses.

use super::tests::{addr, pods, udp_service, World};
use super::*;
use std::time::Duration;

/// Opens a flow per client in `old` (then 10 quiet seconds) and returns their ids.
fn open_flows(old: &mut World, clients: &[&str]) -> Vec<FlowId> {
    let ids = clients
        .iter()
        .map(|c| {
            let ops = old.datagram(c, 100);
            match ops[0] {
                FlowOp::Open { flow, .. } => flow,
                ref other => panic!("{other:?}"),
            }
        })
        .collect();
    old.tick(Duration::from_secs(10));
    ids
}

#[test]
fn carried_flows_are_adopted_as_they_were_and_expire_on_time() {
    let mut old = World::new(vec![udp_service(pods(3))], 64);
    let ids = open_flows(
        &mut old,
        &["10.1.0.1:4000", "10.1.0.2:4000", "10.1.0.3:4000"],
    );
    old.reply(ids[1], 40);
    let (carried, next) = old.table.carry_out(old.now, 0, 2);
    assert_eq!((carried.len(), next), (2, Some(2)), "batches of 2");
    let (rest, next) = old.table.carry_out(old.now, 2, 2);
    assert_eq!((rest.len(), next), (1, None));
    let all: Vec<_> = carried.into_iter().chain(rest).collect();
    assert_eq!(all[1].1.to_client, [1, 40]);
    assert_eq!(all[1].1.quiet_ms, 0);
    assert_eq!(all[0].1.age_ms, 10_000);

    // The new process: same Services, its own clock and stats.
    let mut new = World::new(vec![udp_service(pods(3))], 64);
    for (id, c) in &all {
        let adopted = new.table.adopt(new.now, &new.snapshot, 0, c).unwrap();
        let (was, is) = (
            old.table.flow(*id).unwrap(),
            new.table.flow(adopted).unwrap(),
        );
        assert_eq!(
            (is.client, is.node, is.endpoint),
            (was.client, was.node, was.endpoint)
        );
        assert_eq!(
            (is.to_endpoint, is.to_client),
            (was.to_endpoint, was.to_client)
        );
    }
    assert!(
        new.drain().is_empty(),
        "adopting emits no op: the socket came along"
    );
    // The client's next datagram goes on the adopted flow (no Open), to the same pod.
    let ops = new.datagram("10.1.0.1:4000", 10);
    assert!(matches!(ops[..], [FlowOp::SendUpstream { .. }]), "{ops:?}");
    // Idle timeout from the old process's last datagram: 30 s default, 10 s had passed.
    let none = new.tick(Duration::from_millis(19_000));
    assert!(none.is_empty(), "{none:?}");
    let closed = new.tick(Duration::from_secs(2));
    assert!(
        closed
            .iter()
            .filter(|op| matches!(
                op,
                FlowOp::Close {
                    reason: CloseReason::Idle,
                    ..
                }
            ))
            .count()
            == 1,
        "{closed:?}"
    );
}

#[test]
fn a_flow_whose_service_or_endpoint_is_gone_or_that_finds_no_room_is_not_adopted() {
    let mut old = World::new(vec![udp_service(pods(2))], 64);
    let ids = open_flows(&mut old, &["10.1.0.1:4000", "10.1.0.2:4000"]);
    let (carried, _) = old.table.carry_out(old.now, 0, 10);
    let c = carried[0].1.clone();
    let endpoint = old.table.flow(ids[0]).unwrap().endpoint;

    // Its endpoint was removed in the new configuration.
    let remaining: Vec<_> = pods(2).into_iter().filter(|e| e.addr != endpoint).collect();
    let mut new = World::new(vec![udp_service(remaining)], 64);
    assert_eq!(
        new.table.adopt(new.now, &new.snapshot, 0, &c),
        Err(NotAdopted::EndpointLeft)
    );
    // Another Service on the NodePort (another stable id).
    let mut other = udp_service(pods(2));
    other.key.service.name = "other".into();
    let mut new = World::new(vec![other], 64);
    assert_eq!(
        new.table.adopt(new.now, &new.snapshot, 0, &c),
        Err(NotAdopted::ServiceGone)
    );
    // No Service at that NodePort socket's address.
    let mut elsewhere = c.clone();
    elsewhere.bound = addr("127.0.0.1:31001");
    let mut new = World::new(vec![udp_service(pods(2))], 64);
    assert_eq!(
        new.table.adopt(new.now, &new.snapshot, 0, &elsewhere),
        Err(NotAdopted::ServiceGone)
    );
    // Twice the same key; then a full table (max_flows 1).
    assert!(new.table.adopt(new.now, &new.snapshot, 0, &c).is_ok());
    assert_eq!(
        new.table.adopt(new.now, &new.snapshot, 0, &c),
        Err(NotAdopted::Duplicate)
    );
    let mut small = World::new(vec![udp_service(pods(2))], 1);
    assert!(small.table.adopt(small.now, &small.snapshot, 0, &c).is_ok());
    assert_eq!(
        small
            .table
            .adopt(small.now, &small.snapshot, 0, &carried[1].1),
        Err(NotAdopted::TableFull)
    );
    small.table.verify().unwrap();
    assert!(new.drain().is_empty() && small.drain().is_empty());
}
