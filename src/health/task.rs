//! The health checker: when each target is probed, and what a result does.
//!
//! One task, the [`Sweep`], runs every target's probes (one per (listener,
//! backend)) on the thread the checks run on. It sleeps until the next start,
//! starts every probe due, and a TCP probe to a near backend completes right
//! there (see [`probe::Prober::start`]): thousands of targets cost the syscalls of
//! their probes, one wake-up per step and no task, timer or wake-up per probe. A
//! probe that must wait (an HTTP probe, a handshake still under way) goes on in a
//! task of its own and reports back.
//!
//! Cadence: the first probe starts at once. Later ones start on a lattice shared
//! by every target, `EPOCH + phase + k * interval`, where the phase is a multiple
//! of [`STEP`] drawn from a hash of (listener, server id):
//! - targets fall out of step (2,000 targets at 1 s spread over 100 steps), also
//!   those that start together (a process start, a reload adding many backends);
//! - the sweep wakes once per step for all the probes due in it.
//!
//! The second probe is the first lattice point at least `interval/2` after the
//! first, so it is neither immediate nor late. At most one probe per target is in
//! flight: one that outlasts the interval (the timeout is never shorter than the
//! interval) delays the next, which starts at the next step after it ends.
//!
//! The phase comes from a hash rather than a random draw so a given target keeps
//! its slot across restarts and two nodes with one config probe alike. The key is
//! fixed: the phase needs spreading, not secrecy.

use super::hysteresis::{HealthState, Transition};
use super::{probe, Target};
use crate::state::{BackendState, Health, ListenerState};
use crate::warn_every::WarnEvery;
use siphasher::sip::SipHasher13;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Granularity of probe start times.
pub const STEP: Duration = Duration::from_millis(10);

/// The origin of the lattice, the same for every loop of the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos().max(1)
}

fn from_nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Where in `[0, interval)` a target's probes fall: a multiple of [`STEP`] from a
/// hash of its identity.
pub fn phase(
    load_balancer_id: &str,
    listener_port: u16,
    server_id: &str,
    interval: Duration,
) -> Duration {
    let mut h = SipHasher13::new_with_keys(0, 0);
    (load_balancer_id, listener_port, server_id).hash(&mut h);
    let steps = (interval.as_nanos() / nanos(STEP)).max(1);
    from_nanos((u128::from(h.finish()) % steps) * STEP.as_nanos())
}

/// The first point `origin + k * period` (k >= 0) at or after `t`.
fn at_or_after(t: Instant, origin: Instant, period: Duration) -> Instant {
    let since = t.saturating_duration_since(origin).as_nanos();
    let period = nanos(period);
    origin + from_nanos(since.div_ceil(period) * period)
}

/// When the second probe starts, the first having started at `first`.
pub fn second_start(
    first: Instant,
    interval: Duration,
    phase: Duration,
    epoch: Instant,
) -> Instant {
    at_or_after(first + interval / 2, epoch + phase, interval)
}

/// When the probe after one scheduled at `scheduled` (and ended at `now`) starts.
pub fn next_start(scheduled: Instant, interval: Duration, now: Instant, epoch: Instant) -> Instant {
    (scheduled + interval).max(at_or_after(now, epoch, STEP))
}

/// At most one "probe not sent" warning per 5 s for the whole process: when the
/// host runs out of descriptors every target hits it at once.
static NOT_SENT_WARNING: WarnEvery = WarnEvery::new(5);

/// What [`Checks`](super::Checks) tells the sweep.
pub enum Command {
    /// Check a new target: its first probe starts at once.
    Add {
        id: u64,
        listener: Arc<ListenerState>,
        backend: Arc<BackendState>,
        target: Arc<Target>,
    },
    /// New settings, from the next probe on.
    Update { id: u64, target: Arc<Target> },
    /// Stop checking: the backend's health is unknown again.
    Remove { id: u64 },
}

/// A probe that waited, reporting back.
struct Finished {
    id: u64,
    prober: probe::Prober,
    result: Result<(), probe::ProbeError>,
}

/// One checked target.
struct Checked {
    listener: Arc<ListenerState>,
    backend: Arc<BackendState>,
    target: Arc<Target>,
    state: HealthState,
    stage: Stage,
    /// When the last probe started.
    last_start: Instant,
    first: bool,
}

/// Where a target is between its probes.
enum Stage {
    /// The next probe starts at `at`, with this prober.
    Due { at: Instant, prober: probe::Prober },
    /// A probe is under way: inline (`None`) or in a task of its own, which holds
    /// the prober until it reports back.
    Probing(Option<tokio::task::AbortHandle>),
}

/// Every target's probes, on one task; see the module documentation.
pub struct Sweep {
    commands: mpsc::UnboundedReceiver<Command>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    targets: HashMap<u64, Checked>,
    /// Pending starts, earliest first. An entry that is no longer its target's
    /// due time (rescheduled, removed) is skipped.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    epoch: Instant,
}

impl Sweep {
    pub fn new(commands: mpsc::UnboundedReceiver<Command>) -> Sweep {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        Sweep {
            commands,
            finished_tx,
            finished,
            targets: HashMap::new(),
            due: BinaryHeap::new(),
            epoch: epoch(),
        }
    }

    /// Runs until every command sender is gone; then every target still checked
    /// is unknown again.
    pub async fn run(mut self) {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            let wake = self.due.peek().map(|Reverse((at, _))| *at);
            if let Some(at) = wake {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                Some(done) = self.finished.recv() => {
                    self.complete(done.id, done.result, done.prober, Instant::now());
                }
                () = &mut sleep, if wake.is_some() => self.start_due(),
            }
        }
        for (_, checked) in self.targets.drain() {
            checked.forget();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Add {
                id,
                listener,
                backend,
                target,
            } => {
                let now = Instant::now();
                // A backend whose health is known (handed over by a binary upgrade)
                // carries on with its streak and its next probe falls on the
                // lattice; an unknown one is probed at once.
                let state = HealthState::resume(
                    target.healthy_threshold,
                    target.unhealthy_threshold,
                    backend.health(),
                    backend.streak(),
                );
                let first = state.health() == Health::Unknown;
                let at = if first {
                    now
                } else {
                    let phase = phase(
                        &listener.key.load_balancer_id,
                        listener.key.listener_port,
                        &backend.server_id,
                        target.interval,
                    );
                    second_start(now, target.interval, phase, self.epoch)
                };
                self.targets.insert(
                    id,
                    Checked {
                        listener,
                        backend,
                        target,
                        state,
                        stage: Stage::Due {
                            at,
                            prober: probe::Prober::default(),
                        },
                        last_start: now,
                        first,
                    },
                );
                self.due.push(Reverse((at, id)));
            }
            Command::Update { id, target } => {
                let Some(checked) = self.targets.get_mut(&id) else {
                    return;
                };
                checked
                    .state
                    .set_thresholds(target.healthy_threshold, target.unhealthy_threshold);
                // A new interval applies from the pending wait on, from the last
                // start (a probe under way uses it when it ends).
                if let Stage::Due { at, .. } = &mut checked.stage {
                    if !checked.first && target.interval != checked.target.interval {
                        *at = next_start(
                            checked.last_start,
                            target.interval,
                            Instant::now(),
                            self.epoch,
                        );
                        self.due.push(Reverse((*at, id)));
                    }
                }
                checked.target = target;
            }
            Command::Remove { id } => {
                if let Some(checked) = self.targets.remove(&id) {
                    checked.forget();
                }
            }
        }
    }

    /// Starts every probe due by now.
    fn start_due(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            let Some(checked) = self.targets.get_mut(&id) else {
                continue;
            };
            let mut prober = match std::mem::replace(&mut checked.stage, Stage::Probing(None)) {
                Stage::Due { at: due, prober } if due == at => prober,
                // A stale entry: leave the target as it is.
                stage => {
                    checked.stage = stage;
                    continue;
                }
            };
            checked.last_start = at;
            match prober.start(&checked.target) {
                probe::Started::Done(result) => self.complete(id, result, prober, now),
                probe::Started::Waiting(pending) => {
                    let target = checked.target.clone();
                    let report = self.finished_tx.clone();
                    let task = tokio::spawn(async move {
                        let result = prober.finish(&target, pending).await;
                        let _ = report.send(Finished { id, prober, result });
                    });
                    checked.stage = Stage::Probing(Some(task.abort_handle()));
                }
            }
        }
    }

    /// Records a probe's result, ended at `now`, and schedules the target's next
    /// probe (unless it is no longer checked).
    fn complete(
        &mut self,
        id: u64,
        result: Result<(), probe::ProbeError>,
        prober: probe::Prober,
        now: Instant,
    ) {
        let Some(checked) = self.targets.get_mut(&id) else {
            return;
        };
        checked.record(result);
        let interval = checked.target.interval;
        let next = if checked.first {
            let phase = phase(
                &checked.listener.key.load_balancer_id,
                checked.listener.key.listener_port,
                &checked.backend.server_id,
                interval,
            );
            second_start(checked.last_start, interval, phase, self.epoch)
                .max(at_or_after(now, self.epoch, STEP))
        } else {
            next_start(checked.last_start, interval, now, self.epoch)
        };
        checked.first = false;
        checked.stage = Stage::Due { at: next, prober };
        self.due.push(Reverse((next, id)));
    }
}

impl Checked {
    /// No longer checked: a probe in flight is dropped, and the backend's health
    /// is unknown again.
    fn forget(self) {
        if let Stage::Probing(Some(task)) = self.stage {
            task.abort();
        }
        self.backend.set_health(Health::Unknown);
    }

    fn record(&mut self, result: Result<(), probe::ProbeError>) {
        let target = &self.target;
        // Not sent (this host is out of descriptors, say): no verdict on the
        // backend, whose health and streak stay as they are.
        if let Err(error) = &result {
            if error.is_local() {
                if NOT_SENT_WARNING.due() {
                    tracing::warn!(load_balancer_id = %self.listener.key.load_balancer_id, listener = self.listener.key.listener_port, server_id = %self.backend.server_id, backend = %target.addr, %error, "health probe not sent; backend health unchanged (further such warnings within 5 s are not logged)");
                }
                return;
            }
        }
        let ok = result.is_ok();
        self.backend.checks.record(ok);
        let metrics = &self.backend.metrics;
        if ok {
            metrics.checks_success.increment(1);
        } else {
            metrics.checks_failure.increment(1);
        }
        let failure = result.err();
        if let Some(error) = &failure {
            tracing::debug!(load_balancer_id = %self.listener.key.load_balancer_id, listener = self.listener.key.listener_port, server_id = %self.backend.server_id, backend = %target.addr, %error, "health probe failed");
        }
        let transition = self.state.record(ok);
        if let Some(transition) = transition {
            self.apply(transition, failure.as_ref());
        }
        self.backend.set_streak(self.state.streak());
    }

    fn apply(&self, t: Transition, failure: Option<&probe::ProbeError>) {
        let b = &self.backend;
        let target = &self.target;
        b.set_health(t.to);
        match t.to {
            Health::Healthy => b.metrics.to_healthy.increment(1),
            Health::Unhealthy => b.metrics.to_unhealthy.increment(1),
            Health::Unknown => {}
        }
        tracing::info!(
            load_balancer_id = %self.listener.key.load_balancer_id,
            listener = self.listener.key.listener_port,
            server_id = %b.server_id,
            backend = %target.addr,
            from = %t.from,
            to = %t.to,
            reason = failure.map(tracing::field::display),
            "backend health changed"
        );
        // Unknown -> Healthy changes no eligibility: the view stays as it is.
        if t.from.is_eligible() != t.to.is_eligible() {
            self.listener.rebuild();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_is_deterministic_and_within_the_interval() {
        let i = Duration::from_secs(2);
        assert_eq!(phase("lb", 80, "b1", i), phase("lb", 80, "b1", i));
        assert_ne!(phase("lb", 80, "b1", i), phase("lb", 80, "b2", i));
        assert_ne!(phase("lb", 80, "b1", i), phase("lb", 81, "b1", i));
        for n in 0..1000 {
            assert!(phase("lb", 80, &format!("i-{n}"), i) < i);
        }
        assert_eq!(phase("lb", 80, "b1", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn phases_spread_evenly_over_the_interval() {
        // 2,000 targets in 10 slots of 100 ms: each slot holds 200 +- 30%.
        let i = Duration::from_secs(1);
        let mut slots = [0u32; 10];
        for l in 0..20u16 {
            for b in 0..100 {
                let p = phase("lb-1", 1000 + l, &format!("i-{b}"), i);
                slots[usize::try_from(p.as_millis() / 100).unwrap_or(9)] += 1;
            }
        }
        for (s, n) in slots.iter().enumerate() {
            assert!((140..=260).contains(n), "slot {s} has {n}: {slots:?}");
        }
    }

    #[test]
    fn phases_are_whole_steps() {
        let i = Duration::from_secs(3);
        for n in 0..200 {
            let p = phase("lb", 80, &format!("i-{n}"), i);
            assert_eq!(p.as_nanos() % STEP.as_nanos(), 0);
        }
        // An interval shorter than a step still gets a phase (0).
        assert_eq!(phase("lb", 80, "b1", STEP / 2), Duration::ZERO);
    }

    #[test]
    fn second_probe_is_on_the_phase_half_to_one_and_a_half_intervals_later() {
        let epoch = Instant::now();
        let i = Duration::from_secs(2);
        for first_ms in [0u64, 3, 777, 1999, 5000] {
            let first = epoch + Duration::from_millis(first_ms);
            for phase_ms in [0u64, 10, 990, 1000, 1500, 1990] {
                let p = Duration::from_millis(phase_ms);
                let second = second_start(first, i, p, epoch);
                let gap = second - first;
                assert!(
                    gap >= i / 2 && gap < i * 3 / 2,
                    "{first_ms} {phase_ms}: {gap:?}"
                );
                assert_eq!((second - epoch - p).as_nanos() % i.as_nanos(), 0);
            }
        }
    }

    #[test]
    fn next_start_keeps_cadence_and_never_overlaps() {
        let epoch = Instant::now();
        let i = Duration::from_secs(1);
        let scheduled = epoch + Duration::from_millis(700);
        // A quick probe: one interval after the previous start.
        let now = scheduled + Duration::from_millis(5);
        assert_eq!(next_start(scheduled, i, now, epoch), scheduled + i);
        // One that outlasted the interval delays the next to the following step:
        // no overlap, no burst, still on the lattice.
        let now = scheduled + Duration::from_millis(1803);
        let next = next_start(scheduled, i, now, epoch);
        assert_eq!(next, epoch + Duration::from_millis(2510));
    }
}
