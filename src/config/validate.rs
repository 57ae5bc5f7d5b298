//! Judges every value of a parsed file and builds the [`Model`] from it.
//!
//! Each check turns a spanned file value into a model value or into a [`ConfigError`] that
//! points at it ("parse, don't validate"): after this module nothing needs checking again.
//! Checks that involve several Service ports (duplicate identities, NodePort collisions) name
//! the earlier entry by its line. NodePort allocation itself is the `allocate` module's job.

use super::addresses;
use super::allocate::{self, Allocation, Request};
use super::file::{ConfigFile, ServiceEntry};
use super::forwarding;
use super::health::{self, HealthKeys};
use super::limits;
use super::self_loop;
use super::settings::settings;
use super::values::{
    choice, count, dns_label, endpoint, int, opt_duration, opt_retries, opt_table_size, protocol,
    DnsLabel,
};
use super::{ConfigError, SourceText};
use crate::model::{
    names, Endpoint, HashKey, Model, NodePortRange, Policy, PolicyKind, Protocol, ServiceName,
    ServicePort, ServicePortKey, Settings, Timeouts, DEFAULT_AFFINITY_MAX_ENTRIES,
    DEFAULT_AFFINITY_TIMEOUT, DEFAULT_UDP_IDLE_TIMEOUT,
};
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;

/// Builds the model: settings first (services need their defaults and the NodePort range),
/// then each `[[service]]` in file order, then the checks across services, then allocation.
pub(super) fn build(
    src: &SourceText,
    file: ConfigFile,
    previous: Option<&Model>,
) -> Result<Model, ConfigError> {
    let (settings, range_span) = settings(src, &file)?;
    let default_forwarding = forwarding::default(src, &file.forwarding)?;
    let mut checked: Vec<Checked> = Vec::with_capacity(file.service.len());
    // A Service's port names are unique whatever the protocol (Kubernetes: "Duplicate
    // value"), so TCP 53 and UDP 53 of one Service need two names.
    let mut by_key: HashMap<(ServiceName, String), usize> = HashMap::new();
    let mut by_node_port: HashMap<(Protocol, u16), usize> = HashMap::new();
    let top_health = HealthKeys::of_file(&file);
    let mut claims = addresses::Claims::default();
    for entry in &file.service {
        let this = service(src, entry, &settings, &default_forwarding, top_health)?;
        claims.claim(src, entry, &this.port.key, this.port.port)?;
        let name_key = (
            this.port.key.service.clone(),
            this.port.key.port_name.clone(),
        );
        if let Some(&first) = by_key.get(&name_key) {
            return Err(src.error(
                &this.name_span,
                format!(
                    "{} is defined twice (first at line {}); a Service's ports need \
                     distinct `port_name`s",
                    describe(&this.port.key),
                    src.line(checked[first].name_span.start)
                ),
            ));
        }
        if let Some(node_port) = &this.node_port {
            check_node_port_in_range(src, node_port, settings.node_port_range, &range_span)?;
            let wanted = (this.port.key.protocol, this.port.node_port);
            if let Some(&first) = by_node_port.get(&wanted) {
                let other = &checked[first];
                return Err(src.error(
                    &node_port.span(),
                    format!(
                        "node_port {}/{} of {} is already used by {} (line {})",
                        wanted.1,
                        wanted.0,
                        this.port.key,
                        other.port.key,
                        src.line(other.node_port.as_ref().map_or(0, |p| p.span().start))
                    ),
                ));
            }
            by_node_port.insert(wanted, checked.len());
        }
        by_key.insert(name_key, checked.len());
        checked.push(this);
    }
    check_port_names(src, &checked)?;

    checked.sort_by(|a, b| a.port.key.cmp(&b.port.key));
    let requests: Vec<Request> = checked
        .iter()
        .map(|c| Request {
            key: &c.port.key,
            explicit: c.node_port.as_ref().map(|_| c.port.node_port),
        })
        .collect();
    let allocated = allocate::allocate(settings.node_port_range, &requests, previous);
    let ports = match allocated {
        Ok(ports) => ports,
        Err(exhausted) => {
            let c = &checked[exhausted.index];
            return Err(src.error(
                &c.name_span,
                format!(
                    "no free node port left for {}: all {} ports of node_port_range {} are \
                     used; widen the range or give some services explicit node ports",
                    describe(&c.port.key),
                    settings.node_port_range.size(),
                    settings.node_port_range
                ),
            ));
        }
    };
    let (services, endpoint_spans): (Vec<ServicePort>, Vec<_>) = checked
        .into_iter()
        .zip(ports)
        .map(|(c, a): (Checked, Allocation)| {
            let port = ServicePort {
                node_port: a.node_port,
                node_port_allocated: a.allocated,
                ..c.port
            };
            (port, c.endpoint_spans)
        })
        .unzip();
    // Only now are all NodePorts known (allocated ones included).
    let served = self_loop::Served::new(
        &services,
        &settings.listen,
        self_loop::local_addresses(),
        &[],
    );
    for (service, spans) in services.iter().zip(&endpoint_spans) {
        for (addr, span) in spans {
            if let Some(why) = served.explain(service.key.protocol, *addr) {
                return Err(src.error(span, why));
            }
        }
    }
    Ok(Model {
        settings,
        services,
        primary_ips: Vec::new(),
    })
}

/// One `[[service]]` entry after its own checks, with the spans later checks point at.
struct Checked {
    /// `node_port` is 0 here until allocation when the file gives none.
    port: ServicePort,
    name_span: Range<usize>,
    node_port: Option<Spanned<i64>>,
    /// Each endpoint's address and where it is written.
    endpoint_spans: Vec<(SocketAddr, Range<usize>)>,
}

fn describe(key: &ServicePortKey) -> String {
    if key.port_name.is_empty() {
        format!("Service {}", key.service)
    } else {
        format!("port `{}` of Service {}", key.port_name, key.service)
    }
}

fn service(
    src: &SourceText,
    e: &ServiceEntry,
    settings: &Settings,
    default_forwarding: &forwarding::Default,
    top_health: HealthKeys,
) -> Result<Checked, ConfigError> {
    let defaults = &settings.defaults;
    let name = dns_label(src, &e.name, "name", DnsLabel::Rfc1035)?;
    let namespace = match &e.namespace {
        Some(ns) => dns_label(src, ns, "namespace", DnsLabel::Rfc1123)?,
        None => "default".to_owned(),
    };
    let port_name = match &e.port_name {
        Some(p) if p.get_ref().is_empty() => String::new(),
        Some(p) => dns_label(src, p, "port_name", DnsLabel::Rfc1123)?,
        None => String::new(),
    };
    let protocol = match &e.protocol {
        Some(p) => protocol(src, p)?,
        None => Protocol::Tcp,
    };
    let port: u16 = int(src, &e.port, "port", 1, 65535, "")?;
    let target_port: u16 = match &e.target_port {
        Some(t) => int(src, t, "target_port", 1, 65535, "")?,
        None => port,
    };
    // Judged against `node_port_range` by the caller; anything that is not a port is out of it.
    let node_port = e
        .node_port
        .as_ref()
        .map_or(0, |n| u16::try_from(*n.get_ref()).unwrap_or(0));
    let kind = match &e.policy {
        Some(p) => choice(src, p, "policy", &names(&PolicyKind::ALL, PolicyKind::name))?,
        None => PolicyKind::Maglev,
    };
    if kind != PolicyKind::Maglev {
        if let Some(k) = &e.hash_key {
            return Err(src.error(
                &k.span(),
                "`hash_key` applies to policy = \"maglev\" only (client-ip always keys on the client IP)",
            ));
        }
    }
    if kind != PolicyKind::ClientIp {
        for (key, v) in [
            ("affinity_timeout_seconds", &e.affinity_timeout_seconds),
            ("affinity_max_entries", &e.affinity_max_entries),
        ] {
            if let Some(v) = v {
                return Err(src.error(
                    &v.span(),
                    format!("`{key}` applies to policy = \"client-ip\" only"),
                ));
            }
        }
    }
    let timeout_seconds: u64 = match &e.affinity_timeout_seconds {
        Some(t) => count(
            src,
            t,
            "affinity_timeout_seconds",
            limits::AFFINITY_TIMEOUT_SECONDS,
            "Kubernetes' sessionAffinityConfig.clientIP.timeoutSeconds range",
        )?,
        None => DEFAULT_AFFINITY_TIMEOUT.as_secs(),
    };
    let max_entries: u32 = match &e.affinity_max_entries {
        Some(m) => count(
            src,
            m,
            "affinity_max_entries",
            limits::AFFINITY_MAX_ENTRIES,
            "",
        )?,
        None => DEFAULT_AFFINITY_MAX_ENTRIES,
    };
    let key = match &e.hash_key {
        Some(k) => choice(src, k, "hash_key", &names(&HashKey::ALL, HashKey::name))?,
        None => HashKey::ClientIpPort,
    };
    let timeouts = Timeouts {
        connect: opt_duration(
            src,
            &e.connect_timeout,
            "connect_timeout",
            limits::CONNECT_TIMEOUT,
            defaults.timeouts.connect,
        )?,
        idle: opt_duration(
            src,
            &e.idle_timeout,
            "idle_timeout",
            limits::IDLE_TIMEOUT,
            match protocol {
                Protocol::Tcp => defaults.timeouts.idle,
                // The top-level idle_timeout is the TCP default: flows have their own.
                Protocol::Udp => DEFAULT_UDP_IDLE_TIMEOUT,
            },
        )?,
        hold_when_empty: match (&e.hold_when_empty, protocol) {
            (Some(v), Protocol::Udp) => {
                return Err(src.error(
                    &v.span(),
                    "`hold_when_empty` applies to TCP Services only: a UDP datagram cannot \
                     wait for an endpoint (it is dropped and counted)",
                ))
            }
            (Some(_), Protocol::Tcp) => Some(opt_duration(
                src,
                &e.hold_when_empty,
                "hold_when_empty",
                limits::HOLD_WHEN_EMPTY,
                std::time::Duration::ZERO,
            )?),
            (None, Protocol::Tcp) => defaults.timeouts.hold_when_empty,
            (None, Protocol::Udp) => None,
        },
    };
    let udp_responses = match (&e.udp_responses, protocol) {
        (None, _) => None,
        (Some(v), Protocol::Udp) => Some(count(
            src,
            v,
            "udp_responses",
            limits::UDP_RESPONSES,
            "leave it out for flows that end at their idle timeout only",
        )?),
        (Some(v), Protocol::Tcp) => {
            return Err(src.error(
                &v.span(),
                "`udp_responses` applies to protocol = \"UDP\" only",
            ))
        }
    };
    let connect_retries = opt_retries(src, &e.connect_retries, defaults.connect_retries)?;
    let maglev_table_size = opt_table_size(src, &e.maglev_table_size, defaults.maglev_table_size)?;
    let forwarding = forwarding::service(src, e, default_forwarding)?;
    if protocol == Protocol::Udp {
        forwarding::check_datagrams(src, e, &forwarding, default_forwarding)?;
    }
    let health = health::service(src, HealthKeys::of_service(e), top_health)?;
    let addresses = addresses::service(src, e, settings.source_ranges_on_node_ports)?;

    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(e.endpoints.len());
    let mut first_seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut endpoint_spans = Vec::with_capacity(e.endpoints.len());
    for entry in &e.endpoints {
        let ep = endpoint(src, entry, target_port)?;
        if let Some(&first) = first_seen.get(&ep.addr) {
            return Err(src.error(
                &entry.span(),
                format!(
                    "endpoint {} is listed twice in {namespace}/{name} (first at line {})",
                    ep.addr,
                    src.line(first)
                ),
            ));
        }
        first_seen.insert(ep.addr, entry.span().start);
        endpoint_spans.push((ep.addr, entry.span()));
        endpoints.push(ep);
    }
    endpoints.sort_by_key(|ep| ep.addr);
    if endpoints.len() >= maglev_table_size as usize {
        let span = e
            .maglev_table_size
            .as_ref()
            .map_or(e.name.span(), Spanned::span);
        return Err(src.error(
            &span,
            format!(
                "maglev_table_size {maglev_table_size} is too small for {} endpoints: Maglev \
                 needs more table slots than endpoints (100 times more keeps shares even)",
                endpoints.len()
            ),
        ));
    }

    Ok(Checked {
        port: ServicePort {
            key: ServicePortKey {
                service: ServiceName { namespace, name },
                port_name,
                protocol,
            },
            port,
            node_port,
            node_port_allocated: false,
            target_port,
            endpoints,
            policy: match kind {
                PolicyKind::Maglev => Policy::Maglev { key },
                PolicyKind::ClientIp => Policy::ClientIp {
                    timeout: std::time::Duration::from_secs(timeout_seconds),
                    max_entries,
                },
                PolicyKind::RoundRobin => Policy::RoundRobin,
                PolicyKind::Random => Policy::Random,
                PolicyKind::LeastConnections => Policy::LeastConnections,
            },
            timeouts,
            connect_retries,
            maglev_table_size,
            forwarding,
            udp_responses,
            traffic_policy: Default::default(),
            families: Default::default(),
            health,
            meta: None,
            addresses,
        },
        name_span: e.name.span(),
        node_port: e.node_port.clone(),
        endpoint_spans,
    })
}

fn check_node_port_in_range(
    src: &SourceText,
    node_port: &Spanned<i64>,
    range: NodePortRange,
    range_span: &Option<Range<usize>>,
) -> Result<(), ConfigError> {
    let value = *node_port.get_ref();
    if (i64::from(range.first)..=i64::from(range.last)).contains(&value) {
        return Ok(());
    }
    let whence = match range_span {
        Some(span) => format!("set at line {}", src.line(span.start)),
        None => "the default; set `node_port_range` to change it".to_owned(),
    };
    let mut message = format!("node_port {value} is outside node_port_range {range} ({whence})");
    if value == 0 {
        message.push_str("; omit `node_port` to have one allocated");
    }
    Err(src.error(&node_port.span(), message))
}

/// Kubernetes: when a Service has several ports, every one of them must be named.
fn check_port_names(src: &SourceText, checked: &[Checked]) -> Result<(), ConfigError> {
    let mut ports: BTreeMap<&ServiceName, Vec<&Checked>> = BTreeMap::new();
    for c in checked {
        ports.entry(&c.port.key.service).or_default().push(c);
    }
    for (service, list) in ports {
        if list.len() < 2 {
            continue;
        }
        if let Some(unnamed) = list.iter().find(|c| c.port.key.port_name.is_empty()) {
            return Err(src.error(
                &unnamed.name_span,
                format!(
                    "Service {service} has {} ports, so each needs a `port_name` (as in \
                     Kubernetes); this one has none",
                    list.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn error_of(text: &str) -> (usize, usize, String) {
        let e = parse(text, "l.toml", None).unwrap_err();
        (e.line, e.column, e.message)
    }

    /// An endpoint that is one of this file's NodePorts where sluice listens is refused at
    /// the endpoint; the same address on another port, or not listened on, is fine.
    #[test]
    fn an_endpoint_that_is_our_own_node_port_is_refused() {
        let file = |listen: &str, eps: &str| {
            format!(
                "{listen}node_port_range = \"30000-30009\"\n[[service]]\nname = \"a\"\nport = 80\n\
                 node_port = 30000\nendpoints = [{eps}]\n[[service]]\nname = \"b\"\nport = 80\n\
                 node_port = 30001\n"
            )
        };
        let explicit = "listen_addresses = [\"127.0.0.1\"]\n";
        let (line, col, message) = error_of(&file(explicit, "\"10.0.0.1\", \"127.0.0.1:30001\""));
        assert_eq!((line, col), (7, 26), "{message}");
        assert_eq!(
            message,
            "endpoint 127.0.0.1:30001 is sluice's own NodePort 30001/TCP of default/b on this \
             node (listen address 127.0.0.1): its connections would come straight back into \
             sluice"
        );
        // Its own NodePort, in the table form.
        let (line, col, message) =
            error_of(&file(explicit, "{ address = \"127.0.0.1\", port = 30000 }"));
        assert_eq!((line, col), (7, 14), "{message}");
        // Without listen_addresses every loopback address is sluice's.
        let (_, _, message) = error_of(&file("", "\"127.0.0.7:30000\""));
        assert!(
            message.contains("(sluice serves its NodePorts on every address of this node)"),
            "{message}"
        );
        for fine in [
            file(explicit, "\"127.0.0.1:30010\""),
            file(explicit, "\"127.0.0.2:30000\""),
            file("", "\"10.0.0.1:30000\""),
            file("listen_addresses = [\"0.0.0.0\"]\n", "\"[::1]:30000\""),
        ] {
            assert!(parse(&fine, "l.toml", None).is_ok(), "{fine}");
        }
    }
}
