//! Health-check hysteresis for one backend: a pure state machine, no I/O.
//!
//! The checker task owns one [`HealthState`] per backend, feeds it each probe
//! result with [`HealthState::record`], and acts (log, metric, rebuild the
//! scheduler) only when it returns a [`Transition`].
//!
//! Rules:
//! - A backend starts [`Health::Unknown`] and is eligible, as HAProxy does by
//!   default, so a freshly added or reloaded backend takes traffic at once
//!   instead of waiting several check intervals.
//! - The first probe decides: success -> Healthy, failure -> Unhealthy. There is
//!   no history yet to smooth over, and waiting for N probes would keep a dead
//!   backend eligible for N intervals.
//! - Afterwards `unhealthy_threshold` consecutive failures turn a Healthy
//!   backend Unhealthy, and `healthy_threshold` consecutive successes turn an
//!   Unhealthy one Healthy. A result agreeing with the current state restarts
//!   the count, so flapping never accumulates into a transition.
//! - Thresholds are clamped to `2..=10` (the API's range); clamping rather than
//!   failing keeps this type total, validation belongs to the config layer.

use crate::state::Health;

/// Threshold bounds of the listener API.
pub const MIN_THRESHOLD: u8 = 2;
/// Threshold bounds of the listener API.
pub const MAX_THRESHOLD: u8 = 10;

/// A change of [`Health`], reported once by [`HealthState::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

/// Hysteresis state of one backend.
#[derive(Debug, Clone)]
pub struct HealthState {
    health: Health,
    healthy_threshold: u8,
    unhealthy_threshold: u8,
    /// Consecutive results that disagree with `health` (failures while
    /// Healthy, successes while Unhealthy). Always below the threshold that
    /// applies, because reaching it flips the state and resets it.
    streak: u8,
}

fn clamp_threshold(t: u8) -> u8 {
    t.clamp(MIN_THRESHOLD, MAX_THRESHOLD)
}

impl HealthState {
    /// A backend in the Unknown state. Thresholds are clamped to `2..=10`.
    pub fn new(healthy_threshold: u8, unhealthy_threshold: u8) -> Self {
        HealthState {
            health: Health::Unknown,
            healthy_threshold: clamp_threshold(healthy_threshold),
            unhealthy_threshold: clamp_threshold(unhealthy_threshold),
            streak: 0,
        }
    }

    /// Carries on from a known state (a binary upgrade hands health and streak
    /// over): as [`new`](Self::new), then `health` with `streak` opposite results
    /// already counted. The next opposite result flips if the streak already
    /// reaches its threshold, as after a lowered threshold.
    pub fn resume(
        healthy_threshold: u8,
        unhealthy_threshold: u8,
        health: Health,
        streak: u8,
    ) -> Self {
        let mut state = HealthState::new(healthy_threshold, unhealthy_threshold);
        state.health = health;
        if health != Health::Unknown {
            state.streak = streak;
        }
        state
    }

    /// Consecutive results against the current health so far.
    pub fn streak(&self) -> u8 {
        self.streak
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Feed one probe result. Returns `Some` only when the health changes.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        let from = self.health;
        let (opposite, threshold, flipped) = match from {
            Health::Unknown => {
                let to = if ok {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                };
                return Some(self.flip(to));
            }
            Health::Healthy => (!ok, self.unhealthy_threshold, Health::Unhealthy),
            Health::Unhealthy => (ok, self.healthy_threshold, Health::Healthy),
        };
        if !opposite {
            // An agreeing result breaks any run of opposite ones.
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        if self.streak >= threshold {
            Some(self.flip(flipped))
        } else {
            None
        }
    }

    /// Apply reloaded thresholds. Health and the current streak are kept so a
    /// reload neither resurrects a dead backend nor kills a live one; if the
    /// streak already reaches a lowered threshold, the next opposite result
    /// flips (the reload itself never reports a transition).
    pub fn set_thresholds(&mut self, healthy: u8, unhealthy: u8) {
        self.healthy_threshold = clamp_threshold(healthy);
        self.unhealthy_threshold = clamp_threshold(unhealthy);
    }

    fn flip(&mut self, to: Health) -> Transition {
        let from = self.health;
        self.health = to;
        self.streak = 0;
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut HealthState, results: &[bool]) -> Vec<Transition> {
        results.iter().filter_map(|&ok| s.record(ok)).collect()
    }

    #[test]
    fn starts_unknown_and_eligible() {
        let s = HealthState::new(3, 3);
        assert_eq!(s.health(), Health::Unknown);
        assert!(s.health().is_eligible());
    }

    #[test]
    fn first_probe_decides_healthy() {
        let mut s = HealthState::new(3, 3);
        let t = s.record(true);
        assert_eq!(
            t,
            Some(Transition {
                from: Health::Unknown,
                to: Health::Healthy
            })
        );
    }

    #[test]
    fn first_probe_decides_unhealthy() {
        let mut s = HealthState::new(3, 3);
        let t = s.record(false);
        assert_eq!(
            t,
            Some(Transition {
                from: Health::Unknown,
                to: Health::Unhealthy
            })
        );
    }

    #[test]
    fn exactly_n_failures_flip() {
        for n in MIN_THRESHOLD..=MAX_THRESHOLD {
            let mut s = HealthState::new(2, n);
            s.record(true);
            for _ in 0..n - 1 {
                assert_eq!(s.record(false), None, "threshold {n}");
            }
            assert_eq!(s.health(), Health::Healthy);
            assert_eq!(
                s.record(false),
                Some(Transition {
                    from: Health::Healthy,
                    to: Health::Unhealthy
                })
            );
        }
    }

    #[test]
    fn opposite_result_restarts_count() {
        let mut s = HealthState::new(3, 3);
        s.record(true);
        assert!(feed(&mut s, &[false, false, true, false, false]).is_empty());
        assert_eq!(s.health(), Health::Healthy);
        // The third consecutive failure now flips.
        assert_eq!(feed(&mut s, &[false]).len(), 1);
        assert_eq!(s.health(), Health::Unhealthy);
        // Same while recovering: S S F S S stays unhealthy.
        assert!(feed(&mut s, &[true, true, false, true, true]).is_empty());
        assert_eq!(s.health(), Health::Unhealthy);
    }

    #[test]
    fn recovers_after_exactly_healthy_threshold() {
        let mut s = HealthState::new(4, 2);
        s.record(false);
        assert_eq!(s.health(), Health::Unhealthy);
        assert!(feed(&mut s, &[true, true, true]).is_empty());
        assert_eq!(
            s.record(true),
            Some(Transition {
                from: Health::Unhealthy,
                to: Health::Healthy
            })
        );
        assert!(s.health().is_eligible());
    }

    #[test]
    fn no_transition_when_state_unchanged() {
        let mut s = HealthState::new(2, 2);
        s.record(true);
        assert!(feed(&mut s, &[true; 20]).is_empty());
        let mut s = HealthState::new(2, 2);
        s.record(false);
        assert!(feed(&mut s, &[false; 20]).is_empty());
    }

    #[test]
    fn resume_carries_the_streak_on() {
        // Healthy with 2 of 3 failures counted: one more flips.
        let mut s = HealthState::resume(3, 3, Health::Healthy, 2);
        assert_eq!(s.streak(), 2);
        assert_eq!(
            s.record(false),
            Some(Transition {
                from: Health::Healthy,
                to: Health::Unhealthy
            })
        );
        // Unhealthy with 1 of 2 successes: a failure restarts the count.
        let mut s = HealthState::resume(2, 2, Health::Unhealthy, 1);
        assert_eq!(s.record(false), None);
        assert_eq!(s.streak(), 0);
        assert_eq!(s.record(true), None);
        assert_eq!(s.streak(), 1);
        // Unknown has no streak: the first probe decides.
        let mut s = HealthState::resume(3, 3, Health::Unknown, 5);
        assert_eq!(s.streak(), 0);
        assert_eq!(s.record(true).map(|t| t.to), Some(Health::Healthy));
    }

    #[test]
    fn thresholds_are_clamped_and_reload_keeps_state() {
        let mut s = HealthState::new(0, 200);
        s.record(true);
        // Clamped unhealthy threshold is 10.
        assert!(feed(&mut s, &[false; 9]).is_empty());
        s.set_thresholds(2, 2);
        assert_eq!(s.health(), Health::Healthy);
        // Streak of 9 already exceeds the new threshold: the next failure flips.
        assert_eq!(feed(&mut s, &[false]).len(), 1);
        assert_eq!(s.health(), Health::Unhealthy);
    }
}
