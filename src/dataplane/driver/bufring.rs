//! The io_uring driver's provided-buffer ring for small TCP transfers (issue 18): [`COUNT`]
//! buffers of [`STRIDE`] bytes that the kernel fills with multishot RECV on connection
//! sockets in the copy phase of `relay = "auto"`/`"copy"`, and that the worker gives back
//! ([`BufRing::recycle`]) once it copied the bytes into the direction's holder.
//!
//! Sizes: 16 KiB buffers (a keep-alive request or reply fits one; a receive that fills one
//! sends its direction back to readiness + splice, as a full read does), 128 of them: 2 MiB
//! of address space per worker, resident only where written. When the kernel finds the ring
//! empty a multishot receive ends with ENOBUFS (no byte lost: they stay queued in the
//! socket) and that socket goes back to readiness + read(2).
//!
//! The code is the UDP ring of 7d57fe9..a5530ab (reverted: no win for datagrams), sizes
//! changed. This module holds `unsafe` (like `uring.rs`, which registers the ring): it owns
//! memory the kernel writes into, and publishes the ring's tail with an atomic store.

#![allow(unsafe_code)]

use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers in the ring (a power of two; at most 32,768).
pub const COUNT: u16 = 128;
/// Bytes per buffer (whole pages: buffers start on page boundaries).
pub const STRIDE: usize = 16 * 1024;

/// One anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address the kernel picks; no fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped once here.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The ring of buffer descriptors and the buffers. The owner registers it with its io_uring
/// (`ring_addr`, [`COUNT`]) and must unregister it (or drop the io_uring) before dropping it.
pub struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    /// The tail as this side last published it.
    tail: u16,
}

impl BufRing {
    /// Every buffer given to the kernel.
    pub fn new() -> io::Result<BufRing> {
        let entries = Mapping::new(usize::from(COUNT) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(COUNT) * STRIDE)?;
        let mut ring = BufRing {
            entries,
            buffers,
            tail: 0,
        };
        for bid in 0..COUNT {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The address to register.
    pub fn ring_addr(&self) -> u64 {
        self.entries.ptr as u64
    }

    /// Buffer `bid`, as far as the kernel may have written it (`len` bytes at most).
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid % COUNT);
        // SAFETY: buffer `bid` lies within the mapping (bid < COUNT, STRIDE bytes each); the
        // kernel wrote it before posting the completion that named it and does not touch it
        // again until it is recycled (the caller's `&self` borrow ends before that).
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.add(bid * STRIDE), len.min(STRIDE)) }
    }

    /// Give buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid % COUNT);
        self.publish();
    }

    /// Write buffer `bid`'s descriptor at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (COUNT - 1));
        // SAFETY: `slot` < COUNT entries of the mapping; the kernel reads only entries
        // before the published tail, and this one is at or after it.
        let entry = unsafe { &mut *self.entries.ptr.cast::<BufRingEntry>().add(slot) };
        // SAFETY: as in `get`: the buffer lies within the mapping.
        let addr = unsafe { self.buffers.ptr.add(usize::from(bid) * STRIDE) };
        entry.set_addr(addr as u64);
        entry.set_len(STRIDE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make the descriptors pushed so far visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the ring's base is the start of a live, page-aligned mapping of
        // initialised entries; its tail field is a u16 the kernel reads with acquire
        // semantics, written here with a release store (the layout liburing uses).
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}

// SAFETY: the mappings are owned by this value alone (no other pointer to them escapes
// but the address registered with the io_uring, which moves with it), so it may move to
// the worker thread that owns the ring.
unsafe impl Send for BufRing {}
