//! Warnings about a condition that can hit every connection or every target at
//! once (a connection cap reached, the host out of descriptors): logged at most
//! once per period, so a flood of the condition is not a flood of the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Says a warning is due at most once per `period_secs`, across threads.
pub struct WarnEvery {
    period_secs: u64,
    /// Unix seconds of the last warning; 0 before the first.
    last: AtomicU64,
}

impl WarnEvery {
    pub const fn new(period_secs: u64) -> WarnEvery {
        WarnEvery {
            period_secs,
            last: AtomicU64::new(0),
        }
    }

    /// True for the first caller once the period since the last `true` is over.
    pub fn due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        now >= last + self.period_secs
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_due_then_none_within_the_period() {
        let w = WarnEvery::new(3600);
        assert!(w.due());
        assert!(!w.due());
        assert!(WarnEvery::new(3600).due(), "each has its own period");
    }
}
