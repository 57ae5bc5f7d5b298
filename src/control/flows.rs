//! `sluice ctl flows [SERVICE]`: the live UDP flows and TCP connections, like
//! `conntrack -L`. The daemon's loop resolves the Service to stable ids and asks every
//! worker ([`crate::dataplane::Dataplane::live`]); the answers are awaited off the loop (a blocking
//! task, bounded by [`WAIT`]), so a slow or wedged worker never stalls other requests.

use super::daemon::Daemon;
use super::protocol::{FlowInfo, FlowList, Response, FLOWS_DEFAULT_LIMIT, FLOWS_MAX_LIMIT};
use crate::dataplane::{LiveEntry, LiveQuery, LiveReport, LiveRequest};
use serde_json::json;
use std::time::Duration;

/// How long the request waits for the workers' answers (each answers between two turns of
/// its loop: within milliseconds unless it is wedged).
pub(super) const WAIT: Duration = Duration::from_secs(1);

/// Questions sent to the workers, to be answered off the loop ([`PendingFlows::answer`]).
pub(super) struct PendingFlows {
    request: LiveRequest,
    limit: usize,
}

impl Daemon {
    /// Starts a `flows` request: an error answer at once for a bad limit or an unknown
    /// Service.
    pub(super) fn flows(
        &self,
        service: Option<&str>,
        limit: Option<usize>,
    ) -> Result<PendingFlows, Response> {
        let limit = limit.unwrap_or(FLOWS_DEFAULT_LIMIT);
        if limit == 0 || limit > FLOWS_MAX_LIMIT {
            return Err(Response::error(
                "invalid",
                format!("limit {limit} is outside 1..={FLOWS_MAX_LIMIT}"),
            ));
        }
        let services = match service {
            None => None,
            Some(s) => {
                let snapshot = self.publisher.current();
                let ids: Vec<u64> = snapshot
                    .services()
                    .filter(|(_, e)| names_port(s, &e.port.key))
                    .map(|(_, e)| e.stable_id())
                    .collect();
                if ids.is_empty() {
                    return Err(Response::error(
                        "not-found",
                        format!("services {s:?} not found"),
                    ));
                }
                Some(ids)
            }
        };
        let request = self.plane().live(&LiveQuery { services, limit });
        Ok(PendingFlows { request, limit })
    }
}

impl PendingFlows {
    /// Waits for the workers (blocking, at most [`WAIT`]) and answers.
    pub(super) fn answer(self) -> Response {
        let report = self.request.wait(WAIT);
        Response::ok(json!(flow_list(report, self.limit)))
    }
}

/// Whether `selector` (`[NAMESPACE/]NAME[:PORT_NAME]`; without a namespace, any) names
/// the Service port `key`.
fn names_port(selector: &str, key: &crate::model::ServicePortKey) -> bool {
    let (service, port) = match selector.split_once(':') {
        Some((s, p)) => (s, Some(p)),
        None => (selector, None),
    };
    let service_matches = match service.split_once('/') {
        Some((ns, name)) => key.service.namespace == ns && key.service.name == name,
        None => key.service.name == service,
    };
    service_matches && port.is_none_or(|p| key.port_name == p)
}

fn flow_list(report: LiveReport, limit: usize) -> FlowList {
    FlowList {
        total: report.total,
        limit,
        workers: report.workers,
        workers_answered: report.answered,
        flows: report.entries.into_iter().map(flow_info).collect(),
    }
}

fn flow_info(e: LiveEntry) -> FlowInfo {
    FlowInfo {
        protocol: e.protocol.name().to_owned(),
        service: e.service_name,
        client: e.client.to_string(),
        node: e.node.to_string(),
        endpoint: e.endpoint.map(|a| a.to_string()),
        age_seconds: e.age.as_secs_f64(),
        idle_seconds: e.idle.as_secs_f64(),
        bytes_to_endpoint: e.to_endpoint.bytes,
        bytes_to_client: e.to_client.bytes,
        datagrams_to_endpoint: e.to_endpoint.datagrams,
        datagrams_to_client: e.to_client.datagrams,
        worker: e.worker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceName, ServicePortKey};

    #[test]
    fn a_selector_names_a_service_or_one_port() {
        let key = ServicePortKey {
            service: ServiceName {
                namespace: "kube-system".into(),
                name: "dns".into(),
            },
            port_name: "dns-udp".into(),
            protocol: Protocol::Udp,
        };
        for yes in [
            "dns",
            "kube-system/dns",
            "dns:dns-udp",
            "kube-system/dns:dns-udp",
        ] {
            assert!(names_port(yes, &key), "{yes}");
        }
        for no in ["dn", "default/dns", "dns:dns-tcp", "kube-system/dns:"] {
            assert!(!names_port(no, &key), "{no}");
        }
    }
}
