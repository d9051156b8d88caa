//! Giving memory back after a crowd of connections has gone.
//!
//! Freed connection state stays in the C allocator's heap (glibc keeps free pages
//! of a heap whose top is still in use), so after thousands of connections close,
//! the resident size stays at its peak. When the number of open connections has
//! fallen by [`TRIM_AFTER_CLOSED`] since the last look, `malloc_trim(0)` returns
//! the free pages to the system. Steady churn (connections opening as fast as they
//! close) never triggers it.

use crate::limit::ConnectionLimit;
use std::sync::Arc;
use std::time::Duration;

/// How often the open-connection count (and its peak since the last look, kept by
/// the accept path) is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A fall this large in open connections (from the highest seen since the last
/// trim) triggers a trim.
const TRIM_AFTER_CLOSED: usize = 1000;

/// Watches `limit`'s open count until the runtime ends.
pub fn spawn_trimmer(limit: Arc<ConnectionLimit>) {
    spawn_trimmer_after(limit, TRIM_AFTER_CLOSED);
}

/// [`spawn_trimmer`] with its own threshold: a fall of `closed` connections (the
/// admin server, whose cap is far below [`TRIM_AFTER_CLOSED`]).
pub fn spawn_trimmer_after(limit: Arc<ConnectionLimit>, closed: usize) {
    tokio::spawn(async move {
        let mut watch = Watch {
            trim_after: closed,
            ..Watch::default()
        };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open = limit.open();
            if let Some(closed) = watch.look(open, limit.take_peak()) {
                trim();
                tracing::debug!(closed, "returned free heap memory");
            }
        }
    });
}

/// When to trim, from one look at the open count every [`CHECK_EVERY`].
#[derive(Debug)]
struct Watch {
    /// The fall in open connections that triggers a trim.
    trim_after: usize,
    /// The most open at once since the last trim.
    peak: usize,
    /// The open count at the last look.
    last: usize,
    /// A crowd is leaving: the last look trimmed, and connections still close.
    leaving: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            trim_after: TRIM_AFTER_CLOSED,
            peak: 0,
            last: 0,
            leaving: false,
        }
    }
}

impl Watch {
    /// `open` now and the most open since the last look; `Some(closed)` when the
    /// free memory should be given back now. A crowd that leaves over several
    /// looks is trimmed at each look while it keeps leaving, not only at the
    /// look that saw the first [`TRIM_AFTER_CLOSED`] go (the rest would
    /// otherwise stay in the heap).
    fn look(&mut self, open: usize, peak_since: usize) -> Option<usize> {
        self.peak = self.peak.max(peak_since);
        let closed = self.peak - open.min(self.peak);
        let still_leaving = self.leaving && open < self.last;
        self.last = open;
        if closed >= self.trim_after || still_leaving {
            self.leaving = true;
            self.peak = open;
            Some(closed)
        } else {
            self.leaving = false;
            None
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_churn_never_trims() {
        let mut w = Watch::default();
        for _ in 0..100 {
            assert_eq!(w.look(500, 900), None);
        }
    }

    #[test]
    fn a_crowd_leaving_over_several_looks_is_trimmed_until_it_has_gone() {
        let mut w = Watch::default();
        assert_eq!(w.look(2000, 2000), None);
        // 1,200 gone at the first look: trim.
        assert_eq!(w.look(800, 2000), Some(1200));
        // The other 800 leave over the next two looks: trimmed each time.
        assert_eq!(w.look(300, 800), Some(500));
        assert_eq!(w.look(0, 300), Some(300));
        // Gone: no more trims.
        assert_eq!(w.look(0, 0), None);
        assert_eq!(w.look(10, 10), None);
        assert_eq!(w.look(5, 10), None);
    }

    #[test]
    fn a_lower_threshold_trims_after_a_smaller_crowd() {
        let mut w = Watch {
            trim_after: 128,
            ..Watch::default()
        };
        assert_eq!(w.look(256, 256), None);
        assert_eq!(w.look(200, 256), None);
        assert_eq!(w.look(0, 200), Some(256));
        assert_eq!(w.look(0, 0), None);
    }

    #[test]
    fn a_fall_below_the_threshold_alone_does_not_trim() {
        let mut w = Watch::default();
        assert_eq!(w.look(1500, 1500), None);
        assert_eq!(w.look(600, 1500), None);
        // Counted from the highest since the last trim, across looks.
        assert_eq!(w.look(501, 600), None);
        assert_eq!(w.look(500, 501), Some(1000));
    }
}
