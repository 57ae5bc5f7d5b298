//! Node-wide settings: the top-level keys of the file → [`Settings`].
//!
//! Owns the checks of `workers`, `listen_addresses`, `node_port_range`, the data-plane knobs
//! and the service defaults. Knows nothing about `[[service]]` tables.

use super::file::ConfigFile;
use super::limits;
use super::values::{choice, count, int, opt_duration, opt_retries, opt_table_size};
use super::{ConfigError, SourceText};
use crate::model::{
    names, Cidr, ControlSettings, DriverSetting, ListenAddresses, NodePortRange, RelayMode,
    ServiceDefaults, Settings, Timeouts, DEFAULT_NODE_PORT_RANGE,
};
use serde_spanned::Spanned;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

pub(super) fn settings(
    src: &SourceText,
    f: &ConfigFile,
) -> Result<(Settings, Option<Range<usize>>), ConfigError> {
    let base = Settings::default();
    let workers = match &f.workers {
        Some(w) => Some(count(
            src,
            w,
            "workers",
            limits::WORKERS,
            "omit `workers` for one per online CPU",
        )?),
        None => None,
    };
    let listen = match &f.listen_addresses {
        Some(list) => listen_addresses(src, list)?,
        None => ListenAddresses::All,
    };
    let node_port_range = match &f.node_port_range {
        Some(r) => node_port_range(src, r)?,
        None => DEFAULT_NODE_PORT_RANGE,
    };
    let max_connections_per_worker = match &f.max_connections_per_worker {
        Some(v) => count(
            src,
            v,
            "max_connections_per_worker",
            limits::MAX_CONNECTIONS_PER_WORKER,
            "",
        )?,
        None => base.max_connections_per_worker,
    };
    let max_flows_per_worker = match &f.max_flows_per_worker {
        Some(v) => count(
            src,
            v,
            "max_flows_per_worker",
            limits::MAX_FLOWS_PER_WORKER,
            "each UDP flow holds one socket",
        )?,
        None => base.max_flows_per_worker,
    };
    let held = |v: &Option<Spanned<i64>>, key: &str, default: u32| match v {
        Some(v) => count(
            src,
            v,
            key,
            limits::HELD_CONNECTIONS,
            "0 turns holding off: clients of an empty Service are reset at once",
        ),
        None => Ok(default),
    };
    let max_held_per_worker = held(
        &f.max_held_per_worker,
        "max_held_per_worker",
        base.max_held_per_worker,
    )?;
    let max_held_per_service = held(
        &f.max_held_per_service,
        "max_held_per_service",
        base.max_held_per_service,
    )?;
    let relay = match &f.relay {
        Some(r) => choice(src, r, "relay", &names(&RelayMode::ALL, RelayMode::name))?,
        None => base.relay,
    };
    let driver = match &f.driver {
        Some(d) => choice(
            src,
            d,
            "driver",
            &names(&DriverSetting::ALL, DriverSetting::name),
        )?,
        None => base.driver,
    };
    let backlog = match &f.backlog {
        Some(b) => count(src, b, "backlog", limits::BACKLOG, "")?,
        None => base.backlog,
    };
    let fallback = ServiceDefaults::default();
    let defaults = ServiceDefaults {
        timeouts: Timeouts {
            connect: opt_duration(
                src,
                &f.connect_timeout,
                "connect_timeout",
                limits::CONNECT_TIMEOUT,
                fallback.timeouts.connect,
            )?,
            idle: opt_duration(
                src,
                &f.idle_timeout,
                "idle_timeout",
                limits::IDLE_TIMEOUT,
                fallback.timeouts.idle,
            )?,
            hold_when_empty: match &f.hold_when_empty {
                Some(_) => Some(opt_duration(
                    src,
                    &f.hold_when_empty,
                    "hold_when_empty",
                    limits::HOLD_WHEN_EMPTY,
                    std::time::Duration::ZERO,
                )?),
                None => None,
            },
        },
        connect_retries: opt_retries(src, &f.connect_retries, fallback.connect_retries)?,
        maglev_table_size: opt_table_size(src, &f.maglev_table_size, fallback.maglev_table_size)?,
        health: super::health::defaults(src, super::health::HealthKeys::of_file(f))?,
    };
    let control = control(src, f)?;
    let metrics_address = opt_socket_addr(src, &f.metrics_address, "metrics_address")?;
    let health_address = opt_socket_addr(src, &f.health_address, "health_address")?;
    let drain_timeout = opt_duration(
        src,
        &f.drain_timeout,
        "drain_timeout",
        limits::DRAIN_TIMEOUT,
        base.drain_timeout,
    )?;
    let settings = Settings {
        workers,
        pin_workers: f.pin_workers.unwrap_or(base.pin_workers),
        listen,
        node_port_range,
        max_connections_per_worker,
        max_held_per_worker,
        max_held_per_service,
        max_flows_per_worker,
        relay,
        backlog,
        defaults,
        driver,
        control,
        metrics_address,
        health_address,
        drain_timeout,
        source_ranges_on_node_ports: f.source_ranges_on_node_ports.unwrap_or(false),
    };
    Ok((settings, f.node_port_range.as_ref().map(Spanned::span)))
}

fn listen_addresses(
    src: &SourceText,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<ListenAddresses, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(src.error(
            &list.span(),
            "`listen_addresses` is empty, so nothing would be served; omit the key to serve \
             on all addresses",
        ));
    }
    if let Some(primary) = list
        .get_ref()
        .iter()
        .find(|t| t.get_ref().trim() == "primary")
    {
        if list.get_ref().len() > 1 {
            return Err(src.error(
                &primary.span(),
                "`\"primary\"` stands alone in `listen_addresses` (as in kube-proxy's \
                 nodePortAddresses): it means this node's primary addresses; list CIDRs or \
                 addresses instead to choose others",
            ));
        }
        return Ok(ListenAddresses::Primary);
    }
    // Each entry as a prefix (an address is its host prefix), to find overlaps.
    let mut seen: Vec<(Cidr, bool, Range<usize>)> = Vec::new();
    for text in list.get_ref() {
        let written = text.get_ref().trim();
        let is_cidr = written.contains('/');
        let cidr: Cidr = written.parse().map_err(|()| {
            src.error(
                &text.span(),
                format!(
                    "listen address {:?} is not an IP address, a CIDR (\"10.0.0.0/8\") or \
                     \"primary\" (host names are not supported)",
                    text.get_ref()
                ),
            )
        })?;
        let shown = |c: &Cidr, is_cidr: bool| {
            if is_cidr {
                c.to_string()
            } else {
                c.addr().to_string()
            }
        };
        for (other, other_is_cidr, span) in &seen {
            if *other == cidr && *other_is_cidr == is_cidr {
                return Err(src.error(
                    &text.span(),
                    format!(
                        "listen address {} is listed twice (first at line {})",
                        shown(&cidr, is_cidr),
                        src.line(span.start)
                    ),
                ));
            }
            let wildcard = |c: &Cidr, is_cidr: bool| !is_cidr && c.addr().is_unspecified();
            if other.addr().is_ipv4() == cidr.addr().is_ipv4()
                && (wildcard(other, *other_is_cidr) || wildcard(&cidr, is_cidr))
            {
                return Err(src.error(
                    &text.span(),
                    format!(
                        "listen address {} overlaps {} (line {}): a wildcard address \
                         already covers every address of its family",
                        shown(&cidr, is_cidr),
                        shown(other, *other_is_cidr),
                        src.line(span.start)
                    ),
                ));
            }
        }
        seen.push((cidr, is_cidr, text.span()));
    }
    let addresses: Vec<IpAddr> = seen
        .iter()
        .filter(|(_, is_cidr, _)| !is_cidr)
        .map(|(c, _, _)| c.addr())
        .collect();
    let cidrs: Vec<Cidr> = seen
        .iter()
        .filter(|(_, is_cidr, _)| *is_cidr)
        .map(|(c, _, _)| *c)
        .collect();
    Ok(if cidrs.is_empty() {
        ListenAddresses::Only(addresses)
    } else {
        ListenAddresses::Matching { addresses, cidrs }
    })
}

fn node_port_range(src: &SourceText, text: &Spanned<String>) -> Result<NodePortRange, ConfigError> {
    let malformed = |why: &str| {
        src.error(
            &text.span(),
            format!(
                "node_port_range {:?} is malformed: {why}; expected \"FIRST-LAST\", e.g. \"30000-32767\"",
                text.get_ref()
            ),
        )
    };
    let (first, last) = text
        .get_ref()
        .split_once('-')
        .ok_or_else(|| malformed("no '-'"))?;
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    let first =
        port(first).ok_or_else(|| malformed("the first port is not a number in 1..=65535"))?;
    let last = port(last).ok_or_else(|| malformed("the last port is not a number in 1..=65535"))?;
    if first > last {
        return Err(malformed("the first port is above the last"));
    }
    Ok(NodePortRange { first, last })
}

/// Upper bound of uids and gids: the kernel's (uid_t is 32 bits; -1 is "no id").
const MAX_ID: i64 = u32::MAX as i64 - 1;

fn control(src: &SourceText, f: &ConfigFile) -> Result<ControlSettings, ConfigError> {
    let base = ControlSettings::default();
    let socket = match &f.control_socket {
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                return Err(src.error(
                    &p.span(),
                    format!("control_socket {:?} is not an absolute path", p.get_ref()),
                ));
            }
            Some(path)
        }
        None => None,
    };
    let mode = match &f.control_socket_mode {
        Some(m) => int(
            src,
            m,
            "control_socket_mode",
            0,
            0o777,
            "write it in octal, e.g. 0o660",
        )?,
        None => base.mode,
    };
    let group = match &f.control_socket_group {
        Some(g) => Some(int(
            src,
            g,
            "control_socket_group",
            0,
            MAX_ID,
            "a numeric gid",
        )?),
        None => None,
    };
    let ids = |list: &Option<Vec<Spanned<i64>>>, key: &str| -> Result<Vec<u32>, ConfigError> {
        list.iter()
            .flatten()
            .map(|v| int(src, v, key, 0, MAX_ID, "a numeric id"))
            .collect()
    };
    Ok(ControlSettings {
        socket,
        mode,
        group,
        allowed_uids: ids(&f.control_allowed_uids, "control_allowed_uids")?,
        allowed_gids: ids(&f.control_allowed_gids, "control_allowed_gids")?,
    })
}

fn opt_socket_addr(
    src: &SourceText,
    value: &Option<Spanned<String>>,
    key: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    value.get_ref().trim().parse().map(Some).map_err(|_| {
        src.error(
            &value.span(),
            format!(
                "{key} {:?} is not an address with a port: expected \"IP:PORT\" or \"[IPv6]:PORT\", \
                 e.g. \"127.0.0.1:10256\"",
                value.get_ref()
            ),
        )
    })
}
