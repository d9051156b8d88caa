//! The process-wide cap on open client connections (`max_connections`) and the
//! permit each admitted connection holds.

use crate::warn_every::WarnEvery;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// At most one "limit reached" warning per this many seconds.
const WARN_EVERY_SECS: u64 = 5;
/// Descriptors a derived cap leaves to the admin server, HTTP probes and logs.
const RESERVED_FDS: u64 = 128;

/// The cap and the count of open connections; a reload may change the cap.
pub struct ConnectionLimit {
    max: AtomicUsize,
    open: AtomicUsize,
    /// The most open at once since [`ConnectionLimit::take_peak`] last looked.
    peak: AtomicUsize,
    /// Rate-limits the warning of the accept loops that find the cap reached.
    pub warning: WarnEvery,
}

/// One admitted connection; gives its slot back when dropped.
pub struct Permit(Arc<ConnectionLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            warning: WarnEvery::new(WARN_EVERY_SECS),
        })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A new cap: connections open past it stay; new ones wait for room below it.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max();
        let before = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Some(Permit(self.clone()))
    }

    /// The most connections open at once since the last call.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.open(), Ordering::Relaxed)
    }
}

/// `max_connections = 0`: two descriptors per proxied connection, from what is left
/// once `kept` descriptors (TCP probe sockets, one per checked target) and some for
/// the admin server, HTTP probes and logs are set aside.
pub fn derived_max_connections(kept: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    max_connections_for(if ok { limit.rlim_cur } else { 1024 }, kept)
}

fn max_connections_for(fds: u64, kept: usize) -> usize {
    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
    usize::try_from(fds.saturating_sub(RESERVED_FDS).saturating_sub(kept) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limit_leaves_room_for_kept_probe_sockets() {
        assert_eq!(max_connections_for(1024, 0), 448);
        assert_eq!(max_connections_for(1024, 200), 348);
        assert_eq!(max_connections_for(1_048_576, 2_000), 523_224);
        // Never zero, whatever is set aside.
        assert_eq!(max_connections_for(1024, 5_000), 1);
        assert_eq!(max_connections_for(0, 0), 1);
    }
}
