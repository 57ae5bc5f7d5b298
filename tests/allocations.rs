//! A worker allocates nothing per connection once it has warmed up (issue 18): the data
//! plane runs in this process under an allocator that counts the allocations made on the
//! workers' threads (`sluice-w*`), and a thousand connections after a warm-up must not
//! cost one allocation each. Its own test binary: the counting allocator is process-wide.
//!
//! Runs with the driver of `SLUICE_TEST_DRIVER` (the suite runs it under both); under
//! io_uring, the small requests and answers go through the ring's receive and send path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;
use common::free_port;
use common::inprocess::{ask, model, name_backend, start};
use sluice::model::RelayMode;

/// Allocations (alloc, alloc_zeroed, realloc) made on the workers' threads.
static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread: 0 not known yet, 1 a worker, 2 another thread, 3 finding out (the
    /// thread's name may allocate: those allocations are not counted).
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn count() {
    let kind = KIND.with(|k| {
        if k.get() == 0 {
            k.set(3);
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sluice-w"));
            k.set(if worker { 1 } else { 2 });
        }
        k.get()
    });
    if kind == 1 {
        WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn new_connections_allocate_nothing_on_the_workers_after_warm_up() {
    let pods = [
        name_backend("127.0.0.2", "pod-a"),
        name_backend("127.0.0.3", "pod-b"),
    ];
    let port = free_port();
    let (dp, _publisher, _reg) = start(&model(port, &pods, RelayMode::Auto));
    // Warm-up: both workers see connections (SO_REUSEPORT spreads them) and fill their
    // pools; every answer is checked, so the relay works both ways.
    for _ in 0..300 {
        let answer = ask(port);
        assert!(answer == "pod-a" || answer == "pod-b", "answer {answer:?}");
    }
    let before = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    const CONNECTIONS: u64 = 1000;
    for _ in 0..CONNECTIONS {
        let answer = ask(port);
        assert!(answer == "pod-a" || answer == "pod-b", "answer {answer:?}");
    }
    let made = WORKER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(dp);
    // Not one per connection: a few are allowed for what grows once in a while (a table
    // reaching a new high-water mark), none that comes with every connection.
    assert!(
        made < CONNECTIONS / 20,
        "the workers allocated {made} times for {CONNECTIONS} connections after warm-up"
    );
}
