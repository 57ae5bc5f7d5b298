//! Keeping the data plane's listeners in line with the served model and this node's
//! addresses: at start, at each reload (a Service's LoadBalancer status or external IPs
//! changed, a CIDR or `primary` listen address now means other addresses), and every
//! [`node::POLL`] when the node's addresses change (an address added by DHCP, a VIP moved
//! here by kube-vip or keepalived). Which listeners are wanted is `listeners::wanted`
//! (pure); this module applies it and owns what that needs to remember: the addresses last
//! applied, and the listeners that could not be opened (logged once, tried again).
//!
//! A change of listeners follows the reload transaction: prepare (open the new sockets; a
//! NodePort that cannot be bound fails it and nothing changes), publish the snapshot that
//! routes them, commit (hand them to the workers, close the removed ones), steer.

use super::daemon::Daemon;
use super::listeners::{self, Wanted};
use super::node;
use super::port_owner;
use crate::dataplane::{ListenerKey, ListenerPlan};
use crate::model::Model;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// What the daemon remembers about its listeners beyond the data plane's open sockets.
pub(super) struct Listening {
    /// This node's addresses as last applied (sorted): the snapshot's, and what the
    /// listeners were computed with.
    pub node_addresses: Vec<IpAddr>,
    /// The address that stands for every address (`::` or `0.0.0.0`).
    wildcard: IpAddr,
    /// Where NodePorts are served now (`None`: every address), for the
    /// healthCheckNodePorts.
    pub node_port_addresses: Option<Vec<IpAddr>>,
    /// Optional listeners (Services' own addresses) that could not be opened, with the
    /// error last logged for each: tried again at every address poll, logged on change.
    failures: HashMap<ListenerKey, String>,
    /// Why NodePorts could not follow the node's addresses (a NodePort listener failed),
    /// as last logged; tried again at every address poll.
    node_ports_failed: Option<String>,
}

impl Listening {
    /// The state at start: `node_addresses` read, the NodePorts of `wanted` open.
    pub fn new(node_addresses: Vec<IpAddr>, wildcard: IpAddr, wanted: &Wanted) -> Listening {
        Listening {
            node_addresses,
            wildcard,
            node_port_addresses: wanted.node_port_addresses.clone(),
            failures: HashMap::new(),
            node_ports_failed: None,
        }
    }

    /// The listeners `model` calls for on a node with `node_addresses`.
    pub fn wanted(&self, model: &Model, node_addresses: &[IpAddr]) -> Wanted {
        listeners::wanted(model, node_addresses, self.wildcard)
    }

    /// Logs each listener that could not be opened once (and again when its error
    /// changes); forgets those that are open or no longer wanted.
    fn note_failures(&mut self, failed: Vec<(ListenerKey, String)>) {
        let before = std::mem::take(&mut self.failures);
        for (key, error) in failed {
            if before.get(&key) != Some(&error) {
                tracing::warn!(
                    address = %key.addr,
                    protocol = %key.protocol,
                    error = %error,
                    "cannot listen on a Service's external or LoadBalancer IP (tried again every {:?})",
                    node::POLL
                );
            }
            self.failures.insert(key, error);
        }
        for key in before.keys().filter(|k| !self.failures.contains_key(k)) {
            tracing::info!(address = %key.addr, protocol = %key.protocol, "listening now, or no longer wanted");
        }
    }
}

/// A listener change opened and not yet committed ([`Daemon::prepare_listeners`]).
pub(super) struct Prepared {
    plan: ListenerPlan,
    wanted: Wanted,
    /// The node's addresses it was computed with (to publish in the snapshot).
    pub node_addresses: Vec<IpAddr>,
}

impl Daemon {
    /// Reads this node's addresses (keeping the last known when they cannot be read) and
    /// opens the listeners `model` calls for that are not open yet. Nothing changes for the
    /// workers until [`commit_listeners`](Self::commit_listeners); an error (a NodePort
    /// listener that cannot be bound, or that another process listens on) means nothing
    /// changed.
    pub(super) fn prepare_listeners(&mut self, model: &Model) -> Result<Prepared, String> {
        let node_addresses = match node::addresses() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's addresses; keeping the last known");
                self.listening.node_addresses.clone()
            }
        };
        let wanted = self.listening.wanted(model, &node_addresses);
        self.prepare_wanted(model.settings.backlog, wanted, node_addresses)
    }

    fn prepare_wanted(
        &mut self,
        backlog: u32,
        wanted: Wanted,
        node_addresses: Vec<IpAddr>,
    ) -> Result<Prepared, String> {
        // One sluice per NodePort: a new NodePort listener another process has is refused.
        let open: HashSet<SocketAddr> = self.plane().listen_addrs().into_iter().collect();
        let new: Vec<SocketAddr> = wanted
            .listeners
            .required
            .iter()
            .map(|k| k.addr)
            .filter(|a| !open.contains(a))
            .collect();
        port_owner::check(&new).map_err(|e| e.to_string())?;
        let plan = self
            .plane
            .as_mut()
            .expect("the plane runs until shutdown")
            .prepare_listeners(backlog, &wanted.listeners)
            .map_err(|e| e.to_string())?;
        Ok(Prepared {
            plan,
            wanted,
            node_addresses,
        })
    }

    /// After publishing the snapshot that routes them: hands the new listeners to the
    /// workers, closes the removed ones, steers ClientIP Services' listeners, and logs
    /// each change (Services' addresses come and go with their status).
    pub(super) fn commit_listeners(&mut self, prepared: Prepared) {
        let Prepared {
            plan,
            wanted,
            node_addresses,
        } = prepared;
        let failed: Vec<(ListenerKey, String)> = plan
            .failed()
            .iter()
            .map(|(k, e)| (*k, e.to_string()))
            .collect();
        for key in plan.added() {
            tracing::info!(address = %key.addr, protocol = %key.protocol, "listening");
        }
        for key in plan.removed() {
            tracing::info!(address = %key.addr, protocol = %key.protocol, "no longer listening");
        }
        let (added, removed) = (plan.added(), plan.removed().to_vec());
        let plane = self.plane.as_mut().expect("the plane runs until shutdown");
        plane.commit_listeners(plan);
        plane.steer_client_ips(&wanted.steered);
        self.listening.node_addresses = node_addresses;
        self.listening.node_port_addresses = wanted.node_port_addresses;
        self.listening.note_failures(failed);
        if !self.plane().is_paused() {
            self.update_fd_store(&added, &removed);
        }
    }

    /// At start, once the daemon is built: the listeners the NodePorts' start left out
    /// (Services' own addresses, which may fail without failing the start).
    pub(super) fn open_remaining_listeners(&mut self) {
        let node_addresses = self.listening.node_addresses.clone();
        let wanted = self.listening.wanted(&self.model, &node_addresses);
        match self.prepare_wanted(self.model.settings.backlog, wanted, node_addresses) {
            Ok(prepared) => self.commit_listeners(prepared),
            Err(e) => tracing::error!(error = %e, "cannot open listeners"),
        }
    }

    /// Reads this node's addresses again (every [`node::POLL`]); when they changed, the
    /// listeners follow (CIDR and `primary` listen addresses, Services' own addresses
    /// becoming local or not) and a snapshot with the new addresses is published.
    /// Listeners that failed before are tried again meanwhile.
    pub(super) fn follow_node_addresses(&mut self) {
        let node_addresses = match node::addresses() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list this node's addresses");
                return;
            }
        };
        let changed = node_addresses != self.listening.node_addresses;
        let retry = !self.listening.failures.is_empty();
        if !changed && !retry && self.listening.node_ports_failed.is_none() {
            return;
        }
        if changed && self.listening.node_ports_failed.is_none() {
            tracing::info!(addresses = ?node_addresses, "this node's addresses changed");
        }
        let wanted = self.listening.wanted(&self.model, &node_addresses);
        let prepared = match self.prepare_wanted(
            self.model.settings.backlog,
            wanted,
            node_addresses,
        ) {
            Ok(p) => p,
            Err(e) => {
                // A NodePort on a new address: the same error each poll, logged once.
                let text = e;
                if self.listening.node_ports_failed.as_ref() != Some(&text) {
                    tracing::error!(error = %text, "cannot follow this node's addresses (tried again every {:?})", node::POLL);
                    self.listening.node_ports_failed = Some(text);
                }
                return;
            }
        };
        if self.listening.node_ports_failed.take().is_some() {
            tracing::info!("NodePorts follow this node's addresses again");
        }
        if changed {
            // The new addresses in the snapshot (clients from the node itself) before the
            // new listeners take connections.
            self.listening.node_addresses = prepared.node_addresses.clone();
            self.listening.node_port_addresses = prepared.wanted.node_port_addresses.clone();
            self.republish();
        }
        self.commit_listeners(prepared);
    }
}
