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
    tokio::spawn(async move {
        let mut peak = 0;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open = limit.open();
            peak = peak.max(limit.take_peak());
            if peak - open >= TRIM_AFTER_CLOSED {
                trim();
                tracing::debug!(closed = peak - open, "returned free heap memory");
                peak = open;
            }
        }
    });
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
