//! UDP flows handed to the new process (protocol 2): each live flow of each worker, as
//! plain data ([`CarriedFlow`]), and its connected upstream socket as an fd, so the flow
//! keeps its pod and the pod keeps seeing the same source address across the upgrade.
//!
//! They travel between "ready" and "go", in `flows` frames of at most
//! [`MAX_FDS_PER_MESSAGE`](super::channel::MAX_FDS_PER_MESSAGE) flows: a JSON
//! [`FlowBatch`] whose `flows[i]` goes with the frame's `i`-th descriptor. Only to a new
//! process whose hello says protocol 2 or later; an older one gets none (its clients' next
//! datagrams open new flows).
//!
//! Received batches are checked here ([`check_batch`]): the worker index within the old
//! process's workers, every descriptor a UDP socket connected to the flow's endpoint. A
//! batch that fails is an error of the hand-over (the old process rolls back), never a
//! panic. Whether a flow is *adopted* (its Service and endpoint still there and serving,
//! room in the table) is the data plane's decision; what it cannot adopt it closes.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

/// One UDP flow as it travels: everything the flow table keeps about it but its clock
/// readings, which are sent as durations before the hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFlow {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The node address and NodePort the client sends to (replies leave from it).
    pub node: SocketAddr,
    /// The NodePort socket's own address (a wildcard or one address): which inherited
    /// socket of the worker the flow replies through, and how its Service is looked up.
    pub bound: SocketAddr,
    /// The Service port's stable id (a hash of namespace/name:port/protocol).
    pub service: u64,
    /// The endpoint the upstream socket is connected to.
    pub endpoint: SocketAddr,
    /// The client is an address of the node (routed as Cluster for a Local Service).
    #[serde(default)]
    pub from_node: bool,
    /// The flow's idle timeout (the one it was opened with), milliseconds.
    pub idle_ms: u64,
    /// Replies still allowed (`udp_responses`), if limited.
    #[serde(default)]
    pub responses_left: Option<u32>,
    /// Since the flow opened, milliseconds.
    pub age_ms: u64,
    /// Since its last datagram either way, milliseconds.
    pub quiet_ms: u64,
    /// The pod answered since the flow opened (passive health).
    #[serde(default)]
    pub replied: bool,
    /// Datagrams and bytes so far, client → endpoint and back (`ctl flows`).
    #[serde(default)]
    pub to_endpoint: [u64; 2],
    #[serde(default)]
    pub to_client: [u64; 2],
}

/// The payload of one `flows` frame: flows of one worker of the old process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowBatch {
    /// The old process's worker (the new process's worker of the same index has the same
    /// NodePort socket, so SO_REUSEPORT brings it the same clients).
    pub worker: u32,
    pub flows: Vec<CarriedFlow>,
}

/// A flow received with its upstream socket, for worker `worker`.
#[derive(Debug)]
pub struct ReceivedFlow {
    pub worker: u32,
    pub flow: CarriedFlow,
    pub socket: OwnedFd,
}

/// A `flows` frame that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowsError {
    #[error("flows of worker {worker}, but the old process passed sockets for {workers} workers")]
    Worker { worker: u32, workers: usize },
    #[error("flow {index} of a batch of worker {worker} ({client} → {endpoint}): {problem}")]
    Socket {
        worker: u32,
        index: usize,
        client: SocketAddr,
        endpoint: SocketAddr,
        problem: String,
    },
}

/// Checks a received batch against its descriptors (as many as flows: the channel checked
/// the count) and pairs them. `workers`: how many workers the old process had.
pub fn check_batch(
    batch: FlowBatch,
    fds: Vec<OwnedFd>,
    workers: usize,
) -> Result<Vec<ReceivedFlow>, FlowsError> {
    let worker = batch.worker;
    if worker as usize >= workers {
        return Err(FlowsError::Worker { worker, workers });
    }
    let mut out = Vec::with_capacity(batch.flows.len());
    for (index, (flow, socket)) in batch.flows.into_iter().zip(fds).enumerate() {
        if let Err(problem) = check_upstream(&socket, flow.endpoint) {
            return Err(FlowsError::Socket {
                worker,
                index,
                client: flow.client,
                endpoint: flow.endpoint,
                problem,
            });
        }
        out.push(ReceivedFlow {
            worker,
            flow,
            socket,
        });
    }
    Ok(out)
}

/// Whether `fd` is a UDP socket connected to `endpoint` (IPv4-mapped or not).
fn check_upstream(fd: &OwnedFd, endpoint: SocketAddr) -> Result<(), String> {
    let sock = socket2::SockRef::from(fd);
    if sock.r#type().ok() != Some(socket2::Type::DGRAM) {
        return Err("the descriptor is not a datagram socket".into());
    }
    let peer = sock
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("the socket is not connected")?;
    if canonical(peer) != canonical(endpoint) {
        return Err(format!("the socket is connected to {peer}"));
    }
    Ok(())
}

fn canonical(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, a.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn flow(endpoint: SocketAddr) -> CarriedFlow {
        CarriedFlow {
            client: "127.0.0.9:4000".parse().unwrap(),
            node: "127.0.0.1:30053".parse().unwrap(),
            bound: "0.0.0.0:30053".parse().unwrap(),
            service: 0x1234,
            endpoint,
            from_node: false,
            idle_ms: 30_000,
            responses_left: Some(3),
            age_ms: 1500,
            quiet_ms: 20,
            replied: true,
            to_endpoint: [10, 400],
            to_client: [9, 360],
        }
    }

    fn connected(to: SocketAddr) -> OwnedFd {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(to).unwrap();
        OwnedFd::from(s)
    }

    #[test]
    fn a_batch_pairs_each_flow_with_its_socket() {
        let a: SocketAddr = "127.0.0.2:5353".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:5353".parse().unwrap();
        let batch = FlowBatch {
            worker: 1,
            flows: vec![flow(a), flow(b)],
        };
        let got = check_batch(batch, vec![connected(a), connected(b)], 2).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].flow.endpoint, b);
        assert_eq!(got[1].worker, 1);
    }

    #[test]
    fn a_socket_that_is_not_the_flows_is_refused_naming_the_flow() {
        let a: SocketAddr = "127.0.0.2:5353".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:5353".parse().unwrap();
        // Swapped: the sockets do not go with their flows.
        let batch = FlowBatch {
            worker: 0,
            flows: vec![flow(a), flow(b)],
        };
        let e = check_batch(batch, vec![connected(b), connected(a)], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flow 0 of a batch of worker 0 (127.0.0.9:4000 → 127.0.0.2:5353): the socket is \
             connected to 127.0.0.3:5353"
        );
        // Not connected; not a datagram socket.
        let batch = FlowBatch {
            worker: 0,
            flows: vec![flow(a)],
        };
        let unconnected = OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        let e = check_batch(batch.clone(), vec![unconnected], 1).unwrap_err();
        assert!(
            e.to_string().ends_with("the socket is not connected"),
            "{e}"
        );
        let tcp = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let e = check_batch(batch, vec![tcp], 1).unwrap_err();
        assert!(e.to_string().ends_with("not a datagram socket"), "{e}");
    }

    /// Both sides over a socketpair: 300 flows of two workers (two `flows` frames for
    /// worker 0: 253 + 47) arrive between "ready" and "go", each with its own socket.
    #[test]
    fn flows_pass_between_ready_and_go_in_batches_of_at_most_253() {
        use crate::handover::channel::Channel;
        use crate::handover::inherit::Session;
        use crate::handover::{Timeouts, Upgrade};
        use std::time::Duration;
        let timeouts = Timeouts {
            step: Duration::from_secs(5),
            ready: Duration::from_secs(5),
            abort_grace: Duration::from_millis(200),
        };
        let endpoint = |i: usize| SocketAddr::from(([127, 0, 0, 2], 1000 + i as u16));
        let flows: Vec<(CarriedFlow, OwnedFd)> = (0..300)
            .map(|i| (flow(endpoint(i)), connected(endpoint(i))))
            .collect();
        let (old, new) = Channel::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut up = Upgrade::handshake(old, None, std::process::id(), timeouts)?;
            up.offer(&[], &serde_json::Value::Null)?;
            up.wait_ready()?;
            assert!(up.takes_flows());
            let (w0, w1) = flows.split_at(280);
            for chunk in w0.chunks(253) {
                up.send_flows(0, chunk)?;
            }
            up.send_flows(1, w1)?;
            up.go()?;
            up.finish(None);
            Ok::<(), crate::handover::UpgradeError>(())
        });
        let (mut session, _, _) = Session::receive(new, timeouts).unwrap();
        let got = session.ready(2).unwrap();
        session.serving().unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(got.len(), 300);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.worker, u32::from(i >= 280), "flow {i}");
            assert_eq!(f.flow.endpoint, endpoint(i));
            let peer = socket2::SockRef::from(&f.socket).peer_addr().unwrap();
            assert_eq!(
                peer.as_socket(),
                Some(endpoint(i)),
                "flow {i}: its own socket"
            );
        }
    }

    /// Garbage in a `flows` frame, or descriptors that do not match its flows, end the
    /// hand-over with an error that says so (the old process then rolls back).
    #[test]
    fn a_bad_flows_frame_is_an_error_naming_it() {
        use crate::handover::channel::{Channel, Deadline};
        use crate::handover::wire::{Frame, HEADER_LEN};
        use std::io::Write;
        use std::time::Duration;
        let deadline = || Deadline::after(Duration::from_secs(2));
        // Not JSON of a batch.
        let (mut raw, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut b = Channel::new(b).unwrap();
        let payload = br#"{"worker":0,"flows":[{"client":1}]}"#;
        let mut bytes = vec![12u8];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        assert_eq!(bytes.len(), HEADER_LEN + payload.len());
        raw.write_all(&bytes).unwrap();
        let e = b.recv(deadline(), "go").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bad bytes on the hand-over channel: a flows frame does not parse"),
            "{e}"
        );
        // Two flows, one descriptor.
        let (mut a, mut b) = Channel::pair().unwrap();
        let ep: SocketAddr = "127.0.0.2:53".parse().unwrap();
        let sock = connected(ep);
        let batch = FlowBatch {
            worker: 0,
            flows: vec![flow(ep), flow(ep)],
        };
        use std::os::fd::AsFd;
        a.send(&Frame::Flows(batch), &[sock.as_fd()], deadline())
            .unwrap();
        let e = b.recv(deadline(), "go").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a flows frame arrived with 1 file descriptors; it should carry 2"
        );
    }

    #[test]
    fn a_worker_the_old_process_did_not_have_is_refused() {
        let batch = FlowBatch {
            worker: 4,
            flows: vec![],
        };
        assert_eq!(
            check_batch(batch, vec![], 2).unwrap_err(),
            FlowsError::Worker {
                worker: 4,
                workers: 2
            }
        );
    }
}
