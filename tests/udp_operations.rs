//! Operating UDP NodePorts end to end, under the driver `SLUICE_TEST_DRIVER` names:
//! `loadBalancerSourceRanges` on UDP, `sluice ctl flows`, and reloads under UDP load.
//! Peers and set-up: `common::udp` (pods on 127.0.0.2/3/4, a wildcard listener).

mod common;
use common::udp::*;
use common::*;

/// A client outside the Service's `load_balancer_source_ranges` (applied at the NodePort
/// with `source_ranges_on_node_ports`) gets nothing: its datagrams never reach a pod, are
/// counted as dropped (`source_range`) and as refused for the Service; a client inside the
/// ranges is served by the same NodePort.
#[test]
fn a_datagram_from_outside_the_source_ranges_is_dropped_and_counted() {
    let pod_port = free_udp_port();
    let pod = UdpPod::start(pod_addr("127.0.0.2", pod_port), "a", 1);
    let setup = Setup::new();
    let config = setup.config(
        "source_ranges_on_node_ports = true",
        &[pod.addr],
        "load_balancer_source_ranges = [\"127.0.0.5/32\"]",
    );
    let mut sluice = Sluice::run(&config);
    let node = setup.node();
    let inside = client("127.0.0.5");
    sluice.wait_until("a client inside the ranges is answered", || {
        ask(&inside, node, b"probe").is_some()
    });
    let before = pod.received().len();

    let outside = client("127.0.0.6");
    for i in 0..5 {
        assert_eq!(
            ask(&outside, node, format!("out {i}").as_bytes()),
            None,
            "a client outside the ranges was answered"
        );
    }
    // Counted: every one of the five, for the Service too.
    wait_for("the five drops counted", SOON, || {
        (setup.metric("sluice_udp_datagrams_dropped_total{reason=\"source_range\"}") == 5)
            .then_some(())
    });
    assert_eq!(
        setup.metric("sluice_service_source_ranges_refused_total{"),
        5
    );
    // The inside client is still served, and the pod never saw an outside datagram.
    assert!(ask(&inside, node, b"again").is_some());
    let seen = pod.received();
    assert_eq!(seen.len(), before + 1, "only the inside client's datagram");
    assert!(seen.iter().all(|(_, bytes)| !bytes.starts_with(b"out")));
}
