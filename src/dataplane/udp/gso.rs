//! UDP GSO on the client → pod path (issue 14): within one receive batch, consecutive
//! datagrams of one flow with equal sizes (the last may be shorter) leave by one `sendmsg`
//! with a UDP_SEGMENT control message ([`udp_batch::send_segmented`]) instead of one message
//! each of a `sendmmsg`; the kernel cuts them again into exactly those datagrams, so the pod
//! sees what the client sent.
//!
//! - [`group`] decides which queued datagrams form one segmented send: no PROXY v2 header
//!   (each datagram would need its own), no empty datagram, at most
//!   [`udp_batch::MAX_SEGMENTS`] datagrams and [`udp_batch::MAX_SEGMENTED_BYTES`] bytes.
//! - [`Gso`] remembers whether the kernel knows UDP_SEGMENT at all (asked once per worker,
//!   on the first flow socket that could use it; a kernel without it would send the whole
//!   message as one datagram) and which flows' paths refused a segmented send (EINVAL,
//!   EMSGSIZE, EIO: segments larger than the route's MTU, no checksum offload, IPsec); those
//!   flows send one message per datagram from then on.

use super::super::flow::FlowId;
use super::super::sys::udp_batch;
use super::batch::QueuedSend;
use std::os::fd::BorrowedFd;

/// How many of `queued` (all of one flow, in order), counted from the first, can leave as one
/// segmented send; 1 when no run of two or more starts there.
pub fn group(queued: &[QueuedSend]) -> usize {
    let Some(first) = queued.first() else {
        return 0;
    };
    let size = first.len;
    if size == 0 || !first.header.is_empty() || size > usize::from(u16::MAX) {
        return 1;
    }
    let mut total = 0;
    let mut n = 0;
    for q in queued.iter().take(udp_batch::MAX_SEGMENTS) {
        if !q.header.is_empty()
            || q.len == 0
            || q.len > size
            || total + q.len > udp_batch::MAX_SEGMENTED_BYTES
        {
            break;
        }
        total += q.len;
        n += 1;
        if q.len < size {
            break; // a shorter datagram ends the run
        }
    }
    n.max(1)
}

/// Whether the kernel can segment, and the flows whose path would not.
#[derive(Debug, Default)]
pub struct Gso {
    supported: Option<bool>,
    /// By flow slot: the flow (with its generation) that saw a segmented send refused.
    refused: Vec<Option<FlowId>>,
}

impl Gso {
    /// Whether `flow` may try a segmented send on socket `fd`.
    pub fn usable(&mut self, flow: FlowId, fd: BorrowedFd<'_>) -> bool {
        let supported = *self
            .supported
            .get_or_insert_with(|| udp_batch::segmentation_supported(fd));
        supported && self.refused.get(flow.index()).copied().flatten() != Some(flow)
    }

    /// A segmented send of `flow` was refused by its path: it sends one datagram per message
    /// from now on (a new flow in the same slot tries again).
    pub fn refuse(&mut self, flow: FlowId) {
        let i = flow.index();
        if self.refused.len() <= i {
            self.refused.resize(i + 1, None);
        }
        self.refused[i] = Some(flow);
    }

    /// Whether the kernel's answer to a segmented send means "not on this path".
    pub fn is_refusal(err: &std::io::Error) -> bool {
        matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::EMSGSIZE | libc::EIO | libc::EOPNOTSUPP)
        ) || err.kind() == std::io::ErrorKind::InvalidInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(len: usize, header: bool) -> QueuedSend {
        QueuedSend {
            flow: FlowId::from_token(0),
            slot: 0,
            len,
            header: if header { 0..16 } else { 0..0 },
        }
    }

    fn groups(lens: &[usize]) -> Vec<usize> {
        let queued: Vec<QueuedSend> = lens.iter().map(|&l| q(l, false)).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < queued.len() {
            let n = group(&queued[i..]);
            out.push(n);
            i += n;
        }
        out
    }

    #[test]
    fn runs_of_equal_sizes_group_and_a_shorter_datagram_ends_its_run() {
        assert_eq!(groups(&[1200, 1200, 1200]), [3]);
        assert_eq!(groups(&[1200, 1200, 100, 1200, 1200]), [3, 2]);
        // A longer datagram cannot be a segment of the run before it: it starts its own.
        assert_eq!(groups(&[1200, 1200, 1500, 1200]), [2, 2]);
        assert_eq!(groups(&[1500, 1500, 1500]), [3]);
        assert_eq!(groups(&[100, 1200]), [1, 1]);
        assert_eq!(groups(&[0, 0, 5, 5]), [1, 1, 2]);
        assert_eq!(groups(&[5, 0, 5]), [1, 1, 1]);
        assert_eq!(groups(&[]), Vec::<usize>::new());
    }

    #[test]
    fn a_run_stays_within_the_kernels_limits() {
        // 65,507 bytes at most: 40,000 + 20,000 fit, a third does not.
        assert_eq!(groups(&[20_000; 4]), [3, 1]);
        assert_eq!(groups(&[65_507, 65_507]), [1, 1]);
        // 64 segments at most.
        assert_eq!(groups(&[10; 70]), [64, 6]);
    }

    #[test]
    fn datagrams_with_a_proxy_header_never_group() {
        let queued = [q(100, true), q(100, true), q(100, false), q(100, true)];
        assert_eq!(group(&queued), 1);
        assert_eq!(group(&queued[2..]), 1);
    }
}
