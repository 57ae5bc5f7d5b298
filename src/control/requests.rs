//! What a `sluice ctl` request does: [`Daemon::handle`] answers every request but `reload`
//! (the loop queues reloads, which read files first: `mod.rs`), and sets operator overrides
//! of endpoints (drain, disable, enable, weight) with a republish.

use super::daemon::Daemon;
use super::overrides::{AdminState, EndpointSelector};
use super::protocol::{EndpointAction, OverrideOutcome, Request, Response};
use crate::config;
use serde_json::json;

impl Daemon {
    pub(super) fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(json!(self.status())),
            Request::Services | Request::Stats => Response::ok(json!(self.service_list(|_| true))),
            Request::Endpoints { service } => {
                let list = self.service_list(|p| {
                    service.as_ref().is_none_or(|s| {
                        let sel = s.split_once('/');
                        match sel {
                            Some((ns, n)) => p.namespace == ns && p.name == n,
                            None => p.name == *s,
                        }
                    })
                });
                if list.services.is_empty() && service.is_some() {
                    return Response::error(
                        "not-found",
                        format!("services {:?} not found", service.unwrap_or_default()),
                    );
                }
                Response::ok(json!(list))
            }
            Request::Describe { service, namespace } => {
                let ns = namespace.unwrap_or_else(|| "default".to_owned());
                let list = self.service_list(|p| p.namespace == ns && p.name == service);
                if list.services.is_empty() {
                    return Response::error(
                        "not-found",
                        format!("services {service:?} not found in namespace {ns:?}"),
                    );
                }
                Response::ok(json!(list))
            }
            // The loop queues reloads: they read files off the loop first (`serve`); it
            // awaits the workers' flows off the loop too (`flows.rs`).
            Request::Reload | Request::Flows { .. } => Response::error(
                "invalid",
                "internal error: a reload or flows request reached the request handler",
            ),
            // What it would change could not reach the new process any more.
            Request::Endpoint { .. } if self.upgrades.in_progress() => {
                super::upgrade::busy_refusal()
            }
            Request::Endpoint {
                action,
                service,
                address,
                weight,
            } => self.endpoint_override(action, &service, &address, weight),
            // The loop runs upgrades: their steps run off the loop (`serve`).
            Request::Upgrade { .. } => Response::error(
                "invalid",
                "internal error: an upgrade reached the request handler",
            ),
            Request::LogLevel { level } => match &self.log_filter {
                Some(set) => match set(&level) {
                    Ok(()) => {
                        tracing::info!(%level, "log level changed");
                        Response::ok(json!({ "level": level }))
                    }
                    Err(e) => Response::error("invalid", e),
                },
                None => Response::error("invalid", "this daemon cannot change its log level"),
            },
        }
    }

    fn endpoint_override(
        &mut self,
        action: EndpointAction,
        service: &str,
        address: &str,
        weight: Option<u32>,
    ) -> Response {
        let sel = match EndpointSelector::parse(service, address) {
            Ok(s) => s,
            Err(e) => return Response::error("invalid", e),
        };
        if action == EndpointAction::Weight && weight.is_none() {
            return Response::error("invalid", "`endpoint weight` needs a weight");
        }
        let bound = config::limits::WEIGHT;
        if let Some(w) = weight.filter(|w| !bound.contains(i64::from(*w))) {
            return Response::error(
                "invalid",
                format!(
                    "weight {w} is out of range: must be {}..={}",
                    bound.min, bound.max
                ),
            );
        }
        let mut overrides = self.overrides.clone();
        let hit = overrides.set(&self.model, &sel, |o| match action {
            EndpointAction::Drain => o.state = AdminState::Draining,
            EndpointAction::Disable => o.state = AdminState::Disabled,
            EndpointAction::Enable => o.state = AdminState::Enabled,
            EndpointAction::Weight => o.weight = weight,
        });
        let hit = match hit {
            Ok(h) => h,
            Err(e) => return Response::error("not-found", e),
        };
        self.overrides = overrides;
        self.republish();
        let affected = hit
            .iter()
            .map(|(key, addr)| {
                let o = self.overrides.get(key, *addr).unwrap_or_default();
                format!(
                    "{key} {addr} {}{}",
                    o.state.as_str(),
                    o.weight.map(|w| format!(" weight {w}")).unwrap_or_default()
                )
            })
            .collect();
        tracing::info!(?action, service, address, "endpoint override set");
        Response::ok(json!(OverrideOutcome {
            generation: self.generation,
            affected,
        }))
    }
}
