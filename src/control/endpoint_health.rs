//! Endpoint health: active probes, passive outlier ejection, and the Up/Down state routing
//! uses. Runs on the control thread's runtime (tokio tasks), never in a worker.
//!
//! State is kept per (Service port, endpoint address), a *target*:
//!
//! - **Active checks** ([`ActiveCheck`]): one task per target connects every `interval`
//!   (TCP) or sends `GET path` and reads the status (HTTP, with hyper's client: [`probe`]),
//!   within `timeout`. Where the Service forwards with PROXY v2 (v1), the probe first sends a LOCAL header
//!   (`PROXY UNKNOWN`), unless it probes another port (`health_check_port`). Results feed a
//!   [`CheckCounter`], HAProxy's health counter: `fall` failures in a row mark an up target
//!   down, `rise` successes in a row mark a down one up. A new target starts up but
//!   unconfirmed, like HAProxy's servers (`init-state up`): its first failed check marks it
//!   down at once.
//! - **Passive ejection** ([`PassiveCheck`]): every [`PASSIVE_POLL`] the tracker reads the
//!   per-endpoint connect counters the workers keep (`connect_failed`, `opened`,
//!   `connect_failures_in_row`); `consecutive_failures` failed connects with no success
//!   between eject the target for `ejection_time` (doubling on each ejection not separated
//!   by a successful connect, up to [`MAX_EJECTION_FACTOR`](crate::model::MAX_EJECTION_FACTOR) times). With active checks too,
//!   an ejection also marks the check down, so after the ejection time the checks decide
//!   (`rise` successes, which may already have happened during the ejection).
//! - **Operator `disable`**: the target counts as down and is neither probed nor judged
//!   passively; `enable` restarts it as a new target (up, unconfirmed).
//!
//! Any change of a target's Up/Down state is logged with its reason and counted, and sends
//! [`DaemonEvent::HealthChanged`](super::DaemonEvent::HealthChanged); the daemon then republishes, and `effective()` marks down
//! targets `healthy = false` (routing weight 0). Targets whose Service sets
//! `shutdown_sessions` are queued when marked down by health; after the publish the daemon
//! bumps their shutdown epoch ([`StatsBlock::bump_shutdown_epoch`]) and workers reset their
//! established connections. The tracker follows the published snapshot in [`sync`]: probes
//! start and stop with targets, and unchanged targets keep their state across reloads.
//!
//! [`sync`]: HealthTracker::sync

use super::overrides::{AdminState, Overrides};
use super::DaemonEvent;
use crate::model::{ActiveCheck, Forwarding, Model, PassiveCheck, ServicePortKey};
use crate::stats::StatsBlock;
use crate::table::RoutingSnapshot;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod probe;
mod verdicts;
use probe::probe;
pub use verdicts::{CheckCounter, ConnectCounts, Ejection, EjectionChange};

/// How often passive ejection reads the workers' connect counters.
pub const PASSIVE_POLL: Duration = Duration::from_millis(250);

/// One endpoint of one Service port.
pub type Target = (ServicePortKey, SocketAddr);

/// The daemon's handle on endpoint health.
pub struct HealthTracker {
    shared: Shared,
    probes: HashMap<Target, Probe>,
    _passive: Task,
}

/// The state shared with the probe tasks and `/metrics`.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<State>>);

struct State {
    targets: HashMap<Target, TargetHealth>,
    events: mpsc::UnboundedSender<DaemonEvent>,
    /// An `DaemonEvent::HealthChanged` was sent and the daemon has not republished yet.
    event_pending: bool,
    /// Blocks of targets marked down whose Service resets sessions then.
    shutdowns: Vec<Arc<StatsBlock>>,
    /// Targets the previous process's active checks held down (a hand-over), with the
    /// reason: down until `rise` checks pass; consumed when the target first syncs.
    carried_down: HashMap<Target, String>,
}

struct TargetHealth {
    active: Option<ActiveState>,
    passive: Option<(PassiveCheck, Ejection)>,
    disabled: bool,
    shutdown_sessions: bool,
    stats: Arc<StatsBlock>,
    /// What routing was last told (down by checks or ejection; not `disabled`).
    routing_down: bool,
    /// What operators were last told (`routing_down` or disabled), and why.
    reported_down: bool,
    reason: Option<String>,
    downs: u64,
    ups: u64,
}

struct ActiveState {
    config: ActiveCheck,
    counter: CheckCounter,
    failures_in_row: u32,
    last_error: Option<String>,
    /// Why the previous process held it down (a hand-over), until the first check here.
    carried: Option<String>,
}

/// What the probe of a target sends first, by the Service's forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preamble {
    None,
    ProxyV1Unknown,
    ProxyV2Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeConfig {
    check: ActiveCheck,
    preamble: Preamble,
}

struct Probe {
    config: ProbeConfig,
    _task: Task,
}

/// A spawned task, aborted when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Health of one endpoint as `sluice ctl` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub down: bool,
    pub reason: Option<String>,
    /// Transitions to down and to up so far.
    pub downs: u64,
    pub ups: u64,
}

impl HealthTracker {
    /// Must be called inside the control thread's runtime (it spawns the passive poller).
    pub fn new(events: mpsc::UnboundedSender<DaemonEvent>) -> HealthTracker {
        let shared = Shared(Arc::new(Mutex::new(State {
            targets: HashMap::new(),
            events,
            event_pending: false,
            shutdowns: Vec::new(),
            carried_down: HashMap::new(),
        })));
        let poller = shared.clone();
        let passive = Task(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PASSIVE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                poller.lock().poll_passive(Instant::now());
            }
        }));
        HealthTracker {
            shared,
            probes: HashMap::new(),
            _passive: passive,
        }
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// The daemon is about to republish for an `DaemonEvent::HealthChanged`: later changes need
    /// a new event.
    pub fn acknowledge(&self) {
        self.shared.lock().event_pending = false;
    }

    /// Targets the previous process held down (a hand-over: `handover::state`), with why.
    /// They start down — routed to by nothing, probed until `rise` checks pass — instead
    /// of up and unconfirmed; a target whose Service no longer has active checks starts up.
    /// Targets the first sync already made (it comes before the state arrives) are forced
    /// down here; others wait in `carried_down` for the sync that makes them.
    pub fn carry_in(&self, down: impl IntoIterator<Item = (Target, String)>) {
        let mut st = self.shared.lock();
        for (target, reason) in down {
            let Some(t) = st.targets.get_mut(&target) else {
                st.carried_down.insert(target, reason);
                continue;
            };
            if t.disabled {
                continue;
            }
            if let Some(a) = t.active.as_mut() {
                a.counter.force_down();
                a.carried = Some(reason);
                st.settle_one(&target, "carried over from the previous process");
            }
        }
    }

    /// The targets held down now, with why (disabled ones excepted: overrides carry those).
    pub fn carry_out(&self) -> Vec<(Target, String)> {
        let st = self.shared.lock();
        st.targets
            .iter()
            .filter(|(_, t)| t.routing_down && !t.disabled)
            .map(|(k, t)| (k.clone(), t.reason.clone().unwrap_or_default()))
            .collect()
    }

    /// Sets `healthy = false` on the endpoints of `model` that health holds down or an
    /// operator disabled.
    pub fn mark_down(&self, model: &mut Model, overrides: &Overrides) {
        let st = self.shared.lock();
        if st.targets.is_empty() && st.carried_down.is_empty() && overrides.is_empty() {
            // Nothing is checked or disabled: skip a key copy per endpoint.
            return;
        }
        for s in &mut model.services {
            for e in &mut s.endpoints {
                let target = (s.key.clone(), e.addr);
                let disabled = overrides
                    .get(&s.key, e.addr)
                    .is_some_and(|o| o.state == AdminState::Disabled);
                let down = match st.targets.get(&target) {
                    Some(t) => t.is_down(),
                    None => st.carried_down.contains_key(&target),
                };
                if disabled || down {
                    e.healthy = false;
                }
            }
        }
    }

    /// After a publish: resets the sessions of endpoints marked down since the last call
    /// whose Service asks for it.
    pub fn shut_down_sessions(&self) {
        for block in std::mem::take(&mut self.shared.lock().shutdowns) {
            block.bump_shutdown_epoch();
        }
    }

    /// Brings targets and probes in line with the published `snapshot`: new targets start
    /// (up), removed ones stop, unchanged ones keep their state; operator-disabled targets
    /// are not probed.
    pub fn sync(&mut self, snapshot: &RoutingSnapshot, overrides: &Overrides) {
        let mut wanted: HashMap<Target, ProbeConfig> = HashMap::new();
        {
            let mut st = self.shared.lock();
            let st = &mut *st;
            let mut seen: HashSet<Target> = HashSet::new();
            for (_, s) in snapshot.services() {
                let port = &s.port;
                let health = &port.health;
                if health.active.is_none() && health.passive.is_none() {
                    continue;
                }
                let preamble = match (&port.forwarding, health.active.as_ref()) {
                    (_, Some(a)) if a.port.is_some() => Preamble::None,
                    (Forwarding::ProxyV2(_), _) => Preamble::ProxyV2Local,
                    (Forwarding::ProxyV1, _) => Preamble::ProxyV1Unknown,
                    _ => Preamble::None,
                };
                for e in s.endpoints() {
                    let target = (port.key.clone(), e.endpoint.addr);
                    let disabled = overrides
                        .get(&port.key, e.endpoint.addr)
                        .is_some_and(|o| o.state == AdminState::Disabled);
                    let counts = connect_counts(&e.stats);
                    let t = st
                        .targets
                        .entry(target.clone())
                        .or_insert_with(|| TargetHealth {
                            active: None,
                            passive: None,
                            disabled: false,
                            shutdown_sessions: false,
                            stats: Arc::clone(&e.stats),
                            routing_down: false,
                            reported_down: false,
                            reason: None,
                            downs: 0,
                            ups: 0,
                        });
                    t.stats = Arc::clone(&e.stats);
                    t.shutdown_sessions = health.shutdown_sessions;
                    let enabled_again = t.disabled && !disabled;
                    t.disabled = disabled;
                    t.active = match (&health.active, t.active.take()) {
                        (None, _) => None,
                        (Some(c), Some(a)) if !enabled_again => Some(ActiveState {
                            counter: if a.config.rise == c.rise && a.config.fall == c.fall {
                                a.counter
                            } else {
                                a.counter.with_limits(c.rise, c.fall)
                            },
                            config: c.clone(),
                            ..a
                        }),
                        (Some(c), _) => {
                            let carried = st.carried_down.remove(&target).filter(|_| !disabled);
                            let mut counter = CheckCounter::fresh(c.rise, c.fall);
                            if carried.is_some() {
                                counter.force_down();
                            }
                            Some(ActiveState {
                                counter,
                                config: c.clone(),
                                failures_in_row: 0,
                                last_error: None,
                                carried,
                            })
                        }
                    };
                    st.carried_down.remove(&target);
                    t.passive = match (&health.passive, t.passive.take()) {
                        (None, _) => None,
                        (Some(c), Some((_, ej))) if !enabled_again && !disabled => Some((*c, ej)),
                        (Some(c), _) => Some((*c, Ejection::new(counts))),
                    };
                    if let (Some(a), false) = (&health.active, disabled) {
                        wanted.insert(
                            target.clone(),
                            ProbeConfig {
                                check: a.clone(),
                                preamble,
                            },
                        );
                    }
                    let why = if enabled_again {
                        "enabled by an operator"
                    } else {
                        "configuration changed"
                    };
                    st.settle_one(&target, why);
                    seen.insert(target);
                }
            }
            st.targets.retain(|t, _| seen.contains(t));
            // Carried state of targets the configuration no longer has, or that are not
            // checked: nothing to carry it into.
            st.carried_down.clear();
        }
        self.probes
            .retain(|t, p| wanted.get(t).is_some_and(|c| *c == p.config));
        for (target, config) in wanted {
            if self.probes.contains_key(&target) {
                continue;
            }
            let task = Task(tokio::spawn(probe_loop(
                target.clone(),
                config.clone(),
                self.shared.clone(),
            )));
            self.probes.insert(
                target,
                Probe {
                    config,
                    _task: task,
                },
            );
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Health of one endpoint (`None`: not tracked: its Service has no health checking).
    pub fn report(&self, key: &ServicePortKey, addr: SocketAddr) -> Option<Report> {
        let st = self.lock();
        let t = st.targets.get(&(key.clone(), addr))?;
        Some(Report {
            down: t.reported_down,
            reason: t.reason.clone(),
            downs: t.downs,
            ups: t.ups,
        })
    }
}

impl TargetHealth {
    /// Down for routing: ejected, or the active check says down.
    fn is_down(&self) -> bool {
        self.passive.as_ref().is_some_and(|(_, e)| e.is_ejected())
            || self.active.as_ref().is_some_and(|a| !a.counter.is_up())
    }

    fn down_reason(&self) -> Option<String> {
        if self.disabled {
            return Some("disabled by an operator".to_owned());
        }
        if let Some((c, e)) = &self.passive {
            if e.is_ejected() {
                return Some(format!(
                    "ejected: {} connect failures in a row (ejection time {})",
                    c.consecutive_failures,
                    humantime::format_duration(c.ejection_time)
                ));
            }
        }
        let a = self.active.as_ref().filter(|a| !a.counter.is_up())?;
        if let Some(why) = &a.carried {
            return Some(format!("{why} (before the hand-over)"));
        }
        let error = a.last_error.as_deref().unwrap_or("?");
        Some(match a.failures_in_row {
            0 => "waiting for checks to pass after an ejection".to_owned(),
            1 => format!("1 failed check: {error}"),
            n => format!("{n} failed checks: {error}"),
        })
    }
}

impl State {
    /// Re-evaluates `target` after a change; logs, counts and tells the daemon about a
    /// transition. `why` names the cause of an up transition.
    fn settle_one(&mut self, target: &Target, why: &str) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        let routing_down = t.is_down();
        let reported_down = routing_down || t.disabled;
        let mut routing_changed = false;
        if routing_down != t.routing_down {
            t.routing_down = routing_down;
            routing_changed = true;
            if routing_down && t.shutdown_sessions {
                self.shutdowns.push(Arc::clone(&t.stats));
            }
        }
        if reported_down != t.reported_down {
            t.reported_down = reported_down;
            if reported_down {
                t.downs += 1;
                let reason = t.down_reason().unwrap_or_default();
                tracing::warn!(service = %target.0, endpoint = %target.1, %reason, "endpoint DOWN");
                t.reason = Some(reason);
            } else {
                t.ups += 1;
                t.reason = None;
                tracing::info!(service = %target.0, endpoint = %target.1, reason = why, "endpoint UP");
            }
        } else if reported_down {
            t.reason = t.down_reason();
        }
        if routing_changed && !self.event_pending {
            self.event_pending = true;
            let _ = self.events.send(DaemonEvent::HealthChanged);
        }
    }

    /// One active check result for `target`.
    fn record_check(&mut self, target: &Target, result: Result<(), String>) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        if t.disabled {
            return;
        }
        let Some(a) = t.active.as_mut() else {
            return;
        };
        let ok = result.is_ok();
        a.carried = None;
        match result {
            Ok(()) => a.failures_in_row = 0,
            Err(e) => {
                a.failures_in_row = a.failures_in_row.saturating_add(1);
                tracing::debug!(service = %target.0, endpoint = %target.1, error = %e, "health check failed");
                a.last_error = Some(e);
            }
        }
        a.counter.record(ok);
        let why = format!("{} checks passed", a.config.rise);
        self.settle_one(target, &why);
    }

    /// Reads every passively checked target's counters; ejects and returns targets.
    fn poll_passive(&mut self, now: Instant) {
        let mut changed: Vec<(Target, String)> = Vec::new();
        for (target, t) in self.targets.iter_mut() {
            let Some((config, ejection)) = t.passive.as_mut().filter(|_| !t.disabled) else {
                continue;
            };
            let counts = connect_counts(&t.stats);
            match ejection.poll(now, config, counts) {
                None => {}
                Some(EjectionChange::Ejected { failures, time }) => {
                    tracing::debug!(service = %target.0, endpoint = %target.1, failures, ?time, "ejecting endpoint");
                    if let Some(a) = t.active.as_mut() {
                        a.counter.force_down();
                        a.failures_in_row = 0;
                    }
                    changed.push((target.clone(), String::new()));
                }
                Some(EjectionChange::Returned) => {
                    changed.push((target.clone(), "ejection time over".to_owned()));
                }
            }
        }
        for (target, why) in changed {
            self.settle_one(&target, &why);
        }
    }
}

fn connect_counts(stats: &StatsBlock) -> ConnectCounts {
    let t = stats.totals();
    ConnectCounts {
        ok: t.opened,
        failed: t.connect_failed,
        failed_in_row: t.connect_failures_in_row,
    }
}

/// Probes `target` every interval until aborted. The first probe comes after a fraction
/// of the interval derived from the address, so that many targets do not probe at once.
async fn probe_loop(target: Target, config: ProbeConfig, shared: Shared) {
    let interval = crate::deadline::cap(config.check.interval);
    let addr = SocketAddr::new(target.1.ip(), config.check.port.unwrap_or(target.1.port()));
    let spread = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        target.hash(&mut h);
        interval.mul_f64((h.finish() % 1000) as f64 / 1000.0)
    };
    let start = crate::deadline::after(std::time::Instant::now(), spread);
    let mut tick = tokio::time::interval_at(start.into(), interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(addr, &config).await;
        shared.lock().record_check(&target, result);
    }
}

#[cfg(test)]
mod tests;
