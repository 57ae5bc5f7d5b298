//! Runtime endpoint overrides (`sluice ctl endpoint drain|disable|enable|weight`), like
//! HAProxy's server state: kept by the control plane, applied to the configured model before
//! each snapshot build, and kept across reloads for as long as the endpoint exists.
//!
//! This module is pure data: it never builds snapshots or touches sockets. Draining and
//! disabling both set the routing weight to 0 (no new connections); connections already open
//! to the endpoint are never cut (a snapshot swap affects new connections only).

use crate::model::{Model, ServicePortKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The administrative state of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Enabled,
    Draining,
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }

    /// The state [`Self::as_str`] spells `text`.
    pub fn parse(text: &str) -> Option<AdminState> {
        [
            AdminState::Enabled,
            AdminState::Draining,
            AdminState::Disabled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What an operator set on one endpoint of one Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub state: AdminState,
    pub weight: Option<u32>,
}

/// Every override, by (Service port, endpoint address).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    map: BTreeMap<(ServicePortKey, SocketAddr), Override>,
}

/// Which endpoints an operator named: `[NAMESPACE/]NAME[:PORT_NAME]` and `IP[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSelector {
    pub namespace: String,
    pub name: String,
    pub port_name: Option<String>,
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
}

impl EndpointSelector {
    /// Parses the operator's words; the namespace defaults to `default`.
    pub fn parse(service: &str, address: &str) -> Result<EndpointSelector, String> {
        let (namespace, rest) = match service.split_once('/') {
            Some((ns, rest)) => (ns.to_owned(), rest),
            None => ("default".to_owned(), service),
        };
        let (name, port_name) = match rest.split_once(':') {
            Some((n, p)) => (n.to_owned(), Some(p.to_owned())),
            None => (rest.to_owned(), None),
        };
        if name.is_empty() {
            return Err(format!(
                "{service:?} is not a Service: expected [NAMESPACE/]NAME[:PORT_NAME]"
            ));
        }
        let (ip, port) = if let Ok(sa) = address.parse::<SocketAddr>() {
            (sa.ip(), Some(sa.port()))
        } else if let Ok(ip) = address.parse() {
            (ip, None)
        } else {
            return Err(format!(
                "{address:?} is not an endpoint address: expected IP:PORT, [IPv6]:PORT or IP"
            ));
        };
        Ok(EndpointSelector {
            namespace,
            name,
            port_name,
            ip,
            port,
        })
    }

    fn matches_service(&self, key: &ServicePortKey) -> bool {
        key.service.namespace == self.namespace
            && key.service.name == self.name
            && self.port_name.as_ref().is_none_or(|p| *p == key.port_name)
    }

    fn matches_addr(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.ip && self.port.is_none_or(|p| p == addr.port())
    }
}

impl Overrides {
    /// Changes the override of every endpoint of `model` that `sel` names with `change`;
    /// returns the (key, address) pairs changed, or an error naming what did not match.
    pub fn set(
        &mut self,
        model: &Model,
        sel: &EndpointSelector,
        change: impl Fn(&mut Override),
    ) -> Result<Vec<(ServicePortKey, SocketAddr)>, String> {
        let ports: Vec<_> = model
            .services
            .iter()
            .filter(|s| sel.matches_service(&s.key))
            .collect();
        if ports.is_empty() {
            return Err(format!(
                "no Service {}/{}{} is configured",
                sel.namespace,
                sel.name,
                sel.port_name
                    .as_deref()
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default()
            ));
        }
        let mut hit = Vec::new();
        for s in ports {
            for e in s.endpoints.iter().filter(|e| sel.matches_addr(e.addr)) {
                let key = (s.key.clone(), e.addr);
                let entry = self.map.entry(key.clone()).or_default();
                change(entry);
                if *entry == Override::default() {
                    self.map.remove(&key);
                }
                hit.push(key);
            }
        }
        if hit.is_empty() {
            return Err(format!(
                "Service {}/{} has no endpoint {}{}",
                sel.namespace,
                sel.name,
                sel.ip,
                sel.port.map(|p| format!(":{p}")).unwrap_or_default()
            ));
        }
        Ok(hit)
    }

    /// The override of one endpoint, if any.
    pub fn get(&self, key: &ServicePortKey, addr: SocketAddr) -> Option<Override> {
        self.map.get(&(key.clone(), addr)).copied()
    }

    /// Forgets overrides of endpoints `model` no longer has (call after a reload).
    pub fn retain_existing(&mut self, model: &Model) {
        if self.map.is_empty() {
            return;
        }
        let exists: std::collections::HashSet<(&ServicePortKey, SocketAddr)> = model
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (&s.key, e.addr)))
            .collect();
        self.map
            .retain(|(key, addr), _| exists.contains(&(key, *addr)));
    }

    /// `model` with every override applied to endpoint weights (drained/disabled → 0).
    pub fn apply(&self, model: &Model) -> Model {
        let mut out = model.clone();
        if self.map.is_empty() {
            return out;
        }
        for s in &mut out.services {
            for e in &mut s.endpoints {
                if let Some(o) = self.map.get(&(s.key.clone(), e.addr)) {
                    e.weight = match o.state {
                        AdminState::Enabled => o.weight.unwrap_or(e.weight),
                        AdminState::Draining | AdminState::Disabled => 0,
                    };
                }
            }
        }
        out
    }

    /// Every override, by (Service port, endpoint address).
    pub fn iter(&self) -> impl Iterator<Item = (&(ServicePortKey, SocketAddr), &Override)> {
        self.map.iter()
    }

    /// Sets the override of one endpoint (a hand-over carries them in).
    pub fn insert(&mut self, key: ServicePortKey, addr: SocketAddr, o: Override) {
        self.map.insert((key, addr), o);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(eps: &[&str]) -> Model {
        let text = format!(
            "[[service]]\nname = \"web\"\nnamespace = \"shop\"\nport = 80\nnode_port = 30001\nendpoints = [{}]\n",
            eps.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(",")
        );
        crate::config::parse(&text, "t.toml", None).unwrap()
    }

    #[test]
    fn drain_sets_weight_zero_and_survives_while_the_endpoint_exists() {
        let m = model(&["10.0.0.1:80", "10.0.0.2:80"]);
        let mut o = Overrides::default();
        let sel = EndpointSelector::parse("shop/web", "10.0.0.1:80").unwrap();
        o.set(&m, &sel, |x| x.state = AdminState::Draining).unwrap();
        let applied = o.apply(&m);
        assert_eq!(applied.services[0].endpoints[0].weight, 0);
        assert_eq!(applied.services[0].endpoints[1].weight, 1);
        // Reload with the endpoint still there: kept. Without it: forgotten.
        let m2 = model(&["10.0.0.1:80", "10.0.0.3:80"]);
        o.retain_existing(&m2);
        assert_eq!(o.len(), 1);
        o.retain_existing(&model(&["10.0.0.3:80"]));
        assert!(o.is_empty());
    }

    #[test]
    fn weight_then_enable() {
        let m = model(&["10.0.0.1:80"]);
        let mut o = Overrides::default();
        let sel = EndpointSelector::parse("shop/web", "10.0.0.1").unwrap();
        o.set(&m, &sel, |x| x.weight = Some(7)).unwrap();
        assert_eq!(o.apply(&m).services[0].endpoints[0].weight, 7);
        o.set(&m, &sel, |x| x.state = AdminState::Disabled).unwrap();
        assert_eq!(o.apply(&m).services[0].endpoints[0].weight, 0);
        o.set(&m, &sel, |x| x.state = AdminState::Enabled).unwrap();
        assert_eq!(o.apply(&m).services[0].endpoints[0].weight, 7);
        o.set(&m, &sel, |x| x.weight = None).unwrap();
        assert!(o.is_empty());
    }

    #[test]
    fn unknown_names_are_errors() {
        let m = model(&["10.0.0.1:80"]);
        let mut o = Overrides::default();
        let e = o
            .set(
                &m,
                &EndpointSelector::parse("web", "10.0.0.1").unwrap(),
                |_| {},
            )
            .unwrap_err();
        assert!(e.contains("no Service default/web"), "{e}");
        let e = o
            .set(
                &m,
                &EndpointSelector::parse("shop/web", "10.0.0.9:80").unwrap(),
                |_| {},
            )
            .unwrap_err();
        assert!(e.contains("no endpoint 10.0.0.9:80"), "{e}");
        assert!(EndpointSelector::parse("shop/web", "nope").is_err());
    }
}
