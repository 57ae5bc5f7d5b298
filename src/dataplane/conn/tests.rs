//! Unit tests of the connection core: each reads like a trace of events in and ops out.

use super::*;

const CAP: usize = 1000;

fn cfg() -> ConnConfig {
    ConnConfig {
        idle_timeout: Duration::from_secs(10),
        connect_retries: 2,
        holder_capacity: CAP,
    }
}

fn connected(now: Instant) -> Conn {
    let mut c = Conn::new(now, cfg());
    assert_eq!(c.poll_op(), Some(Op::Connect));
    c.handle(now, ConnEvent::Connected);
    assert_eq!(c.poll_op(), Some(Op::Watch));
    assert_eq!(c.poll_op(), None);
    c
}

/// Feeds `events`, then expects exactly `ops` (answering none of them).
macro_rules! trace {
    ($c:expr, $now:expr; $($ev:expr),* => $($op:expr),*) => {{
        $( $c.handle($now, $ev); )*
        $( assert_eq!($c.poll_op(), Some($op)); )*
    }};
}

#[test]
fn first_op_is_connect_then_watch() {
    let now = Instant::now();
    connected(now);
}

#[test]
fn client_bytes_flow_to_backend() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    trace!(c, now; ConnEvent::Received { dir: Dir::ToBackend, bytes: 300 }
        => Op::Send { dir: Dir::ToBackend, held: 300 });
    trace!(c, now; ConnEvent::Sent { dir: Dir::ToBackend, bytes: 300 }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    c.handle(
        now,
        ConnEvent::ReceiveWouldBlock {
            dir: Dir::ToBackend,
        },
    );
    assert_eq!(c.poll_op(), None);
}

#[test]
fn a_drained_receive_waits_for_readiness_instead_of_reading_again() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    trace!(c, now; ConnEvent::ReceivedDrained { dir: Dir::ToBackend, bytes: 100 }
        => Op::Send { dir: Dir::ToBackend, held: 100 });
    c.handle(
        now,
        ConnEvent::Sent {
            dir: Dir::ToBackend,
            bytes: 100,
        },
    );
    assert_eq!(c.poll_op(), None, "no EAGAIN read after a short one");
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
}

#[test]
fn after_a_hang_up_a_short_read_is_not_taken_as_drained() {
    let now = Instant::now();
    let mut c = connected(now);
    // Data and FIN arrived together: one readiness report, with the hang-up.
    c.handle(
        now,
        ConnEvent::Ready {
            side: Side::Backend,
            readable: true,
            writable: false,
        },
    );
    c.handle(
        now,
        ConnEvent::HangUp {
            side: Side::Backend,
        },
    );
    trace!(c, now; => Op::Receive { dir: Dir::ToClient, max: CAP });
    trace!(c, now; ConnEvent::ReceivedDrained { dir: Dir::ToClient, bytes: 64 }
        => Op::Send { dir: Dir::ToClient, held: 64 });
    c.handle(
        now,
        ConnEvent::Sent {
            dir: Dir::ToClient,
            bytes: 64,
        },
    );
    // The FIN is read without waiting for another report that would never come.
    trace!(c, now; => Op::Receive { dir: Dir::ToClient, max: CAP });
    c.handle(
        now,
        ConnEvent::Received {
            dir: Dir::ToClient,
            bytes: 0,
        },
    );
    assert_eq!(c.poll_op(), Some(Op::ShutdownWrite(Side::Client)));
}

#[test]
fn partial_send_keeps_rest_and_waits_for_writable() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    trace!(c, now; ConnEvent::Received { dir: Dir::ToBackend, bytes: 1000 }
        => Op::Send { dir: Dir::ToBackend, held: 1000 });
    trace!(c, now; ConnEvent::Sent { dir: Dir::ToBackend, bytes: 400 }
        => Op::Send { dir: Dir::ToBackend, held: 600 });
    c.handle(
        now,
        ConnEvent::SendWouldBlock {
            dir: Dir::ToBackend,
        },
    );
    // Holder has room, client still readable: keep receiving up to the room left.
    assert_eq!(
        c.poll_op(),
        Some(Op::Receive {
            dir: Dir::ToBackend,
            max: 400
        })
    );
    c.handle(
        now,
        ConnEvent::Received {
            dir: Dir::ToBackend,
            bytes: 400,
        },
    );
    assert_eq!(c.poll_op(), None, "holder full and backend not writable");
    trace!(c, now; ConnEvent::Ready { side: Side::Backend, readable: false, writable: true }
        => Op::Send { dir: Dir::ToBackend, held: 1000 });
}

#[test]
fn would_block_with_bytes_held_waits_for_send_progress() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    c.handle(
        now,
        ConnEvent::Received {
            dir: Dir::ToBackend,
            bytes: 10,
        },
    );
    c.handle(
        now,
        ConnEvent::SendWouldBlock {
            dir: Dir::ToBackend,
        },
    );
    trace!(c, now; => Op::Receive { dir: Dir::ToBackend, max: CAP - 10 });
    c.handle(
        now,
        ConnEvent::ReceiveWouldBlock {
            dir: Dir::ToBackend,
        },
    );
    assert_eq!(c.poll_op(), None, "no retry until the holder drains");
    trace!(c, now; ConnEvent::Ready { side: Side::Backend, readable: false, writable: true }
        => Op::Send { dir: Dir::ToBackend, held: 10 });
    trace!(c, now; ConnEvent::Sent { dir: Dir::ToBackend, bytes: 10 }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
}

#[test]
fn half_close_is_passed_on_after_held_bytes_and_other_way_keeps_flowing() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Ready { side: Side::Client, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToBackend, max: CAP });
    trace!(c, now; ConnEvent::Received { dir: Dir::ToBackend, bytes: 5 }
        => Op::Send { dir: Dir::ToBackend, held: 5 });
    c.handle(
        now,
        ConnEvent::SendWouldBlock {
            dir: Dir::ToBackend,
        },
    );
    trace!(c, now; => Op::Receive { dir: Dir::ToBackend, max: CAP - 5 });
    c.handle(
        now,
        ConnEvent::Received {
            dir: Dir::ToBackend,
            bytes: 0,
        },
    );
    assert_eq!(c.poll_op(), None, "FIN waits for the 5 held bytes");
    trace!(c, now; ConnEvent::Ready { side: Side::Backend, readable: false, writable: true }
        => Op::Send { dir: Dir::ToBackend, held: 5 });
    c.handle(
        now,
        ConnEvent::Sent {
            dir: Dir::ToBackend,
            bytes: 5,
        },
    );
    c.handle(
        now,
        ConnEvent::Ready {
            side: Side::Backend,
            readable: true,
            writable: false,
        },
    );
    // The FIN is passed on, and the reply direction is served.
    let mut ops = vec![];
    while let Some(op) = c.poll_op() {
        ops.push(op);
        if let Op::Receive { dir, .. } = op {
            c.handle(now, ConnEvent::Received { dir, bytes: 7 });
        }
        if let Op::Send { dir, held } = op {
            c.handle(now, ConnEvent::Sent { dir, bytes: held });
            c.handle(now, ConnEvent::ReceiveWouldBlock { dir });
        }
    }
    assert!(ops.contains(&Op::ShutdownWrite(Side::Backend)));
    assert!(ops.contains(&Op::Send {
        dir: Dir::ToClient,
        held: 7
    }));
    assert!(!c.is_closed(), "backend→client still open");
    // Backend finishes too: close gracefully.
    c.handle(
        now,
        ConnEvent::Ready {
            side: Side::Backend,
            readable: true,
            writable: false,
        },
    );
    trace!(c, now; => Op::Receive { dir: Dir::ToClient, max: CAP });
    c.handle(
        now,
        ConnEvent::Received {
            dir: Dir::ToClient,
            bytes: 0,
        },
    );
    assert_eq!(c.poll_op(), Some(Op::ShutdownWrite(Side::Client)));
    assert_eq!(
        c.poll_op(),
        Some(Op::Close {
            reset_client: false,
            reset_backend: false,
            reason: CloseReason::Done
        })
    );
    assert_eq!(c.poll_op(), None);
    assert!(c.is_closed());
}

#[test]
fn reset_on_one_side_resets_the_other() {
    let now = Instant::now();
    let mut c = connected(now);
    trace!(c, now; ConnEvent::Failed { side: Side::Backend, reset: true }
        => Op::Close { reset_client: true, reset_backend: true, reason: CloseReason::Broken(Side::Backend) });
    assert!(c.is_closed());
    c.handle(
        now,
        ConnEvent::Ready {
            side: Side::Client,
            readable: true,
            writable: true,
        },
    );
    assert_eq!(c.poll_op(), None, "closed connections ignore events");
}

#[test]
fn refused_connect_retries_then_gives_up_with_reset() {
    let now = Instant::now();
    let mut c = Conn::new(now, cfg());
    assert_eq!(c.poll_op(), Some(Op::Connect));
    for _ in 0..2 {
        trace!(c, now; ConnEvent::ConnectFailed(ConnectFailure::Refused) => Op::Connect);
    }
    trace!(c, now; ConnEvent::ConnectFailed(ConnectFailure::TimedOut)
        => Op::Close { reset_client: true, reset_backend: true,
                       reason: CloseReason::ConnectFailed(ConnectFailure::TimedOut) });
}

#[test]
fn local_failure_is_not_retried() {
    let now = Instant::now();
    let mut c = Conn::new(now, cfg());
    c.poll_op();
    c.handle(now, ConnEvent::ConnectFailed(ConnectFailure::Local));
    assert!(matches!(c.poll_op(), Some(Op::Close { .. })));
}

#[test]
fn no_endpoint_resets_client() {
    let now = Instant::now();
    let mut c = Conn::new(now, cfg());
    c.poll_op();
    trace!(c, now; ConnEvent::NoEndpoint
        => Op::Close { reset_client: true, reset_backend: true, reason: CloseReason::NoEndpoint });
}

#[test]
fn idle_deadline_moves_with_activity_and_closes_gracefully() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(10)));
    let t1 = t0 + Duration::from_secs(6);
    c.handle(
        t1,
        ConnEvent::Ready {
            side: Side::Client,
            readable: true,
            writable: false,
        },
    );
    c.poll_op();
    c.handle(
        t1,
        ConnEvent::Received {
            dir: Dir::ToBackend,
            bytes: 1,
        },
    );
    assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(10)));
    c.handle_timeout(t0 + Duration::from_secs(11));
    assert!(!c.is_closed());
    c.handle_timeout(t1 + Duration::from_secs(10));
    assert!(c.is_closed());
    assert_eq!(c.close_reason(), Some(CloseReason::IdleTimeout));
}

/// An idle timeout no clock can reach (a bug in a bound, a future source) must not
/// overflow `Instant + Duration`: the deadline saturates to a far future.
#[test]
fn an_idle_timeout_beyond_any_clock_saturates() {
    let t0 = Instant::now();
    let mut c = Conn::new(
        t0,
        ConnConfig {
            idle_timeout: Duration::MAX,
            ..cfg()
        },
    );
    assert_eq!(c.poll_op(), Some(Op::Connect));
    c.handle(t0, ConnEvent::Connected);
    let deadline = c.deadline().expect("relaying has an idle deadline");
    assert!(deadline > t0 + Duration::from_secs(50 * 365 * 86400));
    c.handle_timeout(t0 + Duration::from_secs(30 * 86400));
    assert!(!c.is_closed());
}

#[test]
fn idle_timeout_with_bytes_held_resets_both_sides() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    trace!(c, t0; ConnEvent::Ready { side: Side::Backend, readable: true, writable: false }
        => Op::Receive { dir: Dir::ToClient, max: CAP });
    c.handle(
        t0,
        ConnEvent::Received {
            dir: Dir::ToClient,
            bytes: 50,
        },
    );
    trace!(c, t0; => Op::Send { dir: Dir::ToClient, held: 50 });
    c.handle(t0, ConnEvent::SendWouldBlock { dir: Dir::ToClient }); // the client stopped reading
    c.handle(t0, ConnEvent::ReceiveWouldBlock { dir: Dir::ToClient });
    assert_eq!(c.poll_op(), None);
    c.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        c.poll_op(),
        Some(Op::Close {
            reset_client: true,
            reset_backend: true,
            reason: CloseReason::IdleTimeout
        })
    );
}

#[test]
fn idle_timeout_with_bytes_queued_in_the_kernel_resets_both_sides() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    // Everything was handed to the kernel (nothing held), but the kernel still has it.
    c.handle_timeout_queued(t0 + Duration::from_secs(9), true);
    assert_eq!(c.poll_op(), None, "not idle yet");
    c.handle_timeout_queued(t0 + Duration::from_secs(10), true);
    assert_eq!(
        c.poll_op(),
        Some(Op::Close {
            reset_client: true,
            reset_backend: true,
            reason: CloseReason::IdleTimeout
        })
    );
}

#[test]
fn busy_connection_yields_after_its_budget() {
    let now = Instant::now();
    let mut c = connected(now);
    c.handle(
        now,
        ConnEvent::Ready {
            side: Side::Client,
            readable: true,
            writable: false,
        },
    );
    let mut yielded = false;
    for _ in 0..100 {
        match c.poll_op() {
            Some(Op::Receive { dir, .. }) => c.handle(now, ConnEvent::Received { dir, bytes: 100 }),
            Some(Op::Send { dir, held }) => c.handle(now, ConnEvent::Sent { dir, bytes: held }),
            Some(Op::Yield) => {
                yielded = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(yielded);
}
