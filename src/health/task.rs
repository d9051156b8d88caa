//! The probe loop of one (listener, backend): when to probe, and what a result does.
//!
//! Cadence: the first probe starts at once. The second starts after a per-target
//! gap in `[interval/2, 3*interval/2)` drawn from a hash of (listener, server id),
//! so targets that start together (a process start, a reload adding many backends)
//! fall out of step, and later ones every `interval` after the previous start.
//! Probes run inline, so at most one is in flight: one that outlasts the interval
//! (the timeout is never shorter than the interval) delays the next, which then
//! starts as soon as it ends.
//!
//! The phase comes from a hash rather than a random draw so a given target keeps
//! its slot across restarts and two nodes with one config probe alike. The key is
//! fixed: the phase needs spreading, not secrecy.

use super::{probe, Target};
use crate::health_state::{Health, HealthState, Transition};
use crate::snapshot::{
    BackendRuntime, ListenerRuntime, HEALTH_HEALTHY, HEALTH_UNHEALTHY, HEALTH_UNKNOWN,
};
use siphasher::sip::SipHasher13;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One probe loop; [`ProbeLoop::run`] is the task.
pub struct ProbeLoop {
    pub runtime: Arc<ListenerRuntime>,
    pub backend: Arc<BackendRuntime>,
    /// The current settings; a reload sends new ones.
    pub settings: watch::Receiver<Arc<Target>>,
    pub stop: CancellationToken,
}

/// Where in `[0, interval)` a target's probes fall: a hash of its identity.
pub fn phase(
    load_balancer_id: &str,
    listener_port: u16,
    server_id: &str,
    interval: Duration,
) -> Duration {
    let mut h = SipHasher13::new_with_keys(0, 0);
    (load_balancer_id, listener_port, server_id).hash(&mut h);
    let nanos = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(h.finish() % nanos)
}

/// The gap between the first probe and the second: the phase, moved into
/// `[interval/2, 3*interval/2)` so the second probe is neither immediate nor late.
pub fn first_gap(interval: Duration, phase: Duration) -> Duration {
    if phase < interval / 2 {
        phase + interval
    } else {
        phase
    }
}

/// When the probe after one that started at `started` (and ended at `now`) starts.
pub fn next_start(
    started: Instant,
    first: bool,
    interval: Duration,
    phase: Duration,
    now: Instant,
) -> Instant {
    let gap = if first {
        first_gap(interval, phase)
    } else {
        interval
    };
    (started + gap).max(now)
}

fn health_code(h: Health) -> u8 {
    match h {
        Health::Unknown => HEALTH_UNKNOWN,
        Health::Healthy => HEALTH_HEALTHY,
        Health::Unhealthy => HEALTH_UNHEALTHY,
    }
}

impl ProbeLoop {
    pub async fn run(mut self) {
        self.probe_until_stopped().await;
        // Nothing checks this backend any more: its health is unknown again.
        self.backend.health.store(HEALTH_UNKNOWN, Ordering::Relaxed);
        self.backend.metrics.healthy.set(1.0);
    }

    async fn probe_until_stopped(&mut self) {
        let mut target = self.settings.borrow_and_update().clone();
        let mut state = HealthState::new(target.healthy_threshold, target.unhealthy_threshold);
        self.start_unknown();
        let server_id = self.backend.server_id.clone();
        let lb = self.runtime.load_balancer_id.clone();
        let port = self.runtime.listener_port;
        let mut next = Instant::now();
        let mut last_start: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = self.settings.borrow_and_update().clone();
                    state.set_thresholds(new.healthy_threshold, new.unhealthy_threshold);
                    // A shorter interval applies to the pending wait too.
                    if let Some(last) = last_start {
                        next = next.min((last + new.interval).max(Instant::now()));
                    }
                    target = new;
                    continue;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                r = probe::probe(&target) => r,
            };
            self.record(&mut state, &target, result);
            let phase = phase(&lb, port, &server_id, target.interval);
            next = next_start(
                started,
                last_start.is_none(),
                target.interval,
                phase,
                Instant::now(),
            );
            last_start = Some(started);
        }
    }

    /// A loop starts with the backend unknown (eligible): a fresh backend already
    /// is; one of a listener started again may still show an old verdict.
    fn start_unknown(&self) {
        let before = self.backend.health.swap(HEALTH_UNKNOWN, Ordering::Relaxed);
        self.backend.metrics.healthy.set(1.0);
        if before == HEALTH_UNHEALTHY {
            self.runtime.rebuild();
        }
    }

    fn record(
        &self,
        state: &mut HealthState,
        target: &Target,
        result: Result<(), probe::ProbeError>,
    ) {
        // Stopped while probing: the result no longer belongs to anyone.
        if self.stop.is_cancelled() {
            return;
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
            tracing::debug!(load_balancer_id = %self.runtime.load_balancer_id, listener = self.runtime.listener_port, server_id = %self.backend.server_id, backend = %target.addr, %error, "health probe failed");
        }
        if let Some(transition) = state.record(ok) {
            self.apply(transition, target, failure.as_ref());
        }
    }

    fn apply(&self, t: Transition, target: &Target, failure: Option<&probe::ProbeError>) {
        let b = &self.backend;
        b.health.store(health_code(t.to), Ordering::Relaxed);
        b.metrics
            .healthy
            .set(if t.to.is_eligible() { 1.0 } else { 0.0 });
        match t.to {
            Health::Healthy => b.metrics.to_healthy.increment(1),
            Health::Unhealthy => b.metrics.to_unhealthy.increment(1),
            Health::Unknown => {}
        }
        let reason = failure.map(ToString::to_string);
        tracing::info!(
            load_balancer_id = %self.runtime.load_balancer_id,
            listener = self.runtime.listener_port,
            server_id = %b.server_id,
            backend = %target.addr,
            from = %t.from,
            to = %t.to,
            reason = reason.as_deref().unwrap_or(""),
            "backend health changed"
        );
        // Unknown -> Healthy changes no eligibility: the view stays as it is.
        if t.from.is_eligible() != t.to.is_eligible() {
            self.runtime.rebuild();
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
    fn first_gap_is_between_half_and_one_and_a_half_intervals() {
        let i = Duration::from_secs(2);
        for ms in [0, 1, 999, 1000, 1500, 1999] {
            let gap = first_gap(i, Duration::from_millis(ms));
            assert!(
                gap >= i / 2 && gap < i * 3 / 2,
                "phase {ms} ms: gap {gap:?}"
            );
        }
        assert_eq!(
            first_gap(i, Duration::from_millis(1200)),
            Duration::from_millis(1200)
        );
        assert_eq!(
            first_gap(i, Duration::from_millis(200)),
            Duration::from_millis(2200)
        );
    }

    #[test]
    fn next_start_keeps_cadence_and_never_overlaps() {
        let t0 = Instant::now();
        let i = Duration::from_secs(1);
        let p = Duration::from_millis(700);
        // First probe: the phase decides.
        assert_eq!(next_start(t0, true, i, p, t0), t0 + p);
        // Later probes: one interval after the previous start.
        let fast = t0 + Duration::from_millis(5);
        assert_eq!(next_start(t0, false, i, p, fast), t0 + i);
        // A probe that outlasted the interval delays the next: no overlap, no burst.
        let slow = t0 + Duration::from_millis(1800);
        assert_eq!(next_start(t0, false, i, p, slow), slow);
    }
}
