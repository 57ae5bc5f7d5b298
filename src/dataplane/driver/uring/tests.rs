//! Tests of the io_uring driver against the running kernel.
use super::*;
use crate::dataplane::sys;
use std::os::fd::AsFd;

/// A completion produced while the worker was busy (the eventfd is signalled after the
/// poll was armed, so its wake-up is deferred task work) is collected by a submit that
/// does not wait: the worker's no-wait rounds (yielded connections, closes pending) must
/// not leave readiness queued in the kernel until the next tick.
#[test]
fn a_no_wait_submit_collects_deferred_completions() {
    let mut ring = Uring::with_taskrun(8, true).expect("io_uring ring");
    assert!(
        ring.defers_taskrun(),
        "this kernel (6.1+) takes IORING_SETUP_DEFER_TASKRUN"
    );
    let efd = sys::eventfd().expect("eventfd");
    ring.watch_wake(efd.as_fd()).expect("watch");
    ring.submit_and_wait(Some(Duration::ZERO)).expect("submit");
    let mut out = Vec::new();
    ring.completions(&mut out);
    assert!(out.is_empty(), "nothing signalled yet: {out:?}");
    sys::eventfd_signal(efd.as_fd()).expect("signal");
    ring.submit_and_wait(Some(Duration::ZERO)).expect("submit");
    ring.completions(&mut out);
    assert!(
        matches!(out.as_slice(), [Completion::Wake { ended: false }]),
        "the wake-up is collected without waiting: {out:?}"
    );
}

/// A deferred-taskrun ring's submit collects all the deferred completion work, not only
/// the 2 × 20 items a DEFER_TASKRUN enter runs (Linux 6.13+): 100 polls woken while the
/// worker was busy are all reported by the next no-wait submit.
#[test]
fn a_submit_collects_more_deferred_work_than_one_enter_runs() {
    let mut ring = Uring::with_taskrun(64, true).expect("io_uring ring");
    assert!(
        ring.defers_taskrun(),
        "this kernel (6.1+) takes DEFER_TASKRUN"
    );
    let fds: Vec<OwnedFd> = (0..100).map(|_| sys::eventfd().expect("eventfd")).collect();
    for (i, fd) in fds.iter().enumerate() {
        ring.watch_flow(i as u64, fd.as_fd()).expect("watch");
    }
    ring.submit_and_wait(Some(Duration::ZERO)).expect("submit");
    let mut out = Vec::new();
    ring.completions(&mut out);
    assert!(out.is_empty(), "nothing signalled yet: {out:?}");
    for fd in &fds {
        sys::eventfd_signal(fd.as_fd()).expect("signal");
    }
    ring.submit_and_wait(Some(Duration::ZERO)).expect("submit");
    ring.completions(&mut out);
    let mut flows: Vec<u64> = out
        .iter()
        .filter_map(|c| match c {
            Completion::FlowReadable { flow, .. } => Some(*flow),
            _ => None,
        })
        .collect();
    flows.sort_unstable();
    assert_eq!(
        flows,
        (0..100).collect::<Vec<u64>>(),
        "every woken poll reported by one submit ({} extra enters)",
        ring.reaps
    );
}

/// Completions until `want` says stop (at most 5 s).
fn wait_for(ring: &mut Uring, want: impl Fn(&Completion) -> bool) -> Completion {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    loop {
        ring.submit_and_wait(Some(Duration::from_millis(50)))
            .expect("submit");
        ring.completions(&mut out);
        if let Some(i) = out.iter().position(&want) {
            return out.swap_remove(i);
        }
        assert!(std::time::Instant::now() < deadline, "no such completion");
    }
}

/// A socket handed to `close` is closed by the next submit (its peer reads EOF), not
/// before: entries queued ahead of it (its polls' removal) still name the open socket.
#[test]
fn close_happens_in_the_next_submit() {
    use std::io::Read;
    let mut ring = Uring::new(8).expect("io_uring ring");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    ring.close(OwnedFd::from(server)).expect("close");
    let mut buf = [0u8; 1];
    assert!(
        client.read(&mut buf).is_err(),
        "still open until the submit (the read times out)"
    );
    ring.submit_and_wait(Some(Duration::ZERO)).expect("submit");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(client.read(&mut buf).expect("EOF"), 0, "closed: EOF");
}

/// A backend socket connected through the ring has TCP_NODELAY set (through the ring
/// where the kernel can, 6.7+, as here).
#[test]
fn connect_sets_nodelay() {
    let mut ring = Uring::new(8).expect("io_uring ring");
    assert!(
        ring.sets_sockopts(),
        "this kernel (6.7+) sets options through the ring"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking(),
        None,
    )
    .expect("socket");
    assert!(!socket.nodelay().expect("nodelay"));
    ring.connect(
        3,
        7,
        socket.as_fd(),
        listener.local_addr().expect("addr"),
        Duration::from_secs(5),
    )
    .expect("connect");
    let done = wait_for(&mut ring, |c| matches!(c, Completion::Connected { .. }));
    assert!(
        matches!(
            done,
            Completion::Connected {
                slot: 3,
                generation: 7,
                result: Ok(())
            }
        ),
        "{done:?}"
    );
    assert!(socket.nodelay().expect("nodelay"), "TCP_NODELAY set");
}
