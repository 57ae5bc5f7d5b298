//! Snapshot pinning: a connection keeps the routing snapshot it was accepted (or last
//! routed) with until it ends, so that a publish affects new connections only. A pin counts
//! the live connections on one snapshot; the current snapshot's pin stays while it is
//! current, an older one goes with its last connection. Pinning a new snapshot also drops
//! the picker's state of Services that are gone.

use super::{ConnTable, Pin};
use crate::table::{RoutingSnapshot, ServiceEntry, ServiceId};
use std::sync::Arc;

impl<R> ConnTable<R> {
    pub(super) fn service_of(&self, pin: usize, service: ServiceId) -> &ServiceEntry {
        self.pins[pin]
            .as_ref()
            .expect("pinned snapshot")
            .snapshot
            .service(service)
    }

    /// The pin of `snapshot` (the published one), pinning it if it is new.
    pub(super) fn pin(&mut self, snapshot: &Arc<RoutingSnapshot>) -> usize {
        if let Some(i) = self.current_pin {
            if Arc::ptr_eq(
                &self.pins[i].as_ref().expect("current pin").snapshot,
                snapshot,
            ) {
                return i;
            }
        }
        self.picker.retain_services(snapshot);
        let pin = Pin {
            snapshot: Arc::clone(snapshot),
            live: 0,
        };
        let i = match self.pins.iter().position(Option::is_none) {
            Some(i) => {
                self.pins[i] = Some(pin);
                i
            }
            None => {
                self.pins.push(Some(pin));
                self.pins.len() - 1
            }
        };
        let old = self.current_pin.replace(i);
        if let Some(old) = old {
            if self.pins[old].as_ref().is_some_and(|p| p.live == 0) {
                self.pins[old] = None;
            }
        }
        i
    }

    pub(super) fn unpin(&mut self, pin: usize) {
        let p = self.pins[pin].as_mut().expect("pinned snapshot");
        p.live -= 1;
        if p.live == 0 && self.current_pin != Some(pin) {
            self.pins[pin] = None;
        }
    }

    /// Snapshots pinned now (by live connections, or as the current one).
    pub fn pinned_snapshots(&self) -> usize {
        self.pins.iter().flatten().count()
    }
}
