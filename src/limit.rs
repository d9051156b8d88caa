//! Caps on open connections and the permit each admitted connection holds: the
//! data path's process-wide `max_connections`, and the admin server's own budget.

use crate::warn_every::WarnEvery;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// At most one "limit reached" warning per this many seconds.
const WARN_EVERY_SECS: u64 = 5;
/// Descriptors a derived cap leaves to the listening sockets, HTTP probes, logs and
/// the process's own files (the admin connections have their own share).
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

/// What a derived cap sets aside before sharing the rest among proxied connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAside {
    /// TCP probe sockets, one per checked target, kept open between probes.
    pub probe_sockets: usize,
    /// `[admin] max_connections` (0 without an admin server): one descriptor each.
    pub admin_connections: usize,
}

/// `max_connections = 0`: two descriptors per proxied connection, from what is left
/// of the open-file limit once `aside` and a reserve of [`RESERVED_FDS`] are set
/// aside, so neither the admin server at its cap nor the probes can take the
/// descriptors the listeners' connections need.
pub fn derived_max_connections(aside: SetAside) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    max_connections_for(if ok { limit.rlim_cur } else { 1024 }, aside)
}

fn max_connections_for(fds: u64, aside: SetAside) -> usize {
    let kept = aside.probe_sockets.saturating_add(aside.admin_connections);
    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
    usize::try_from(fds.saturating_sub(RESERVED_FDS).saturating_sub(kept) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aside(probe_sockets: usize, admin_connections: usize) -> SetAside {
        SetAside {
            probe_sockets,
            admin_connections,
        }
    }

    #[test]
    fn derived_limit_leaves_room_for_kept_probe_sockets() {
        assert_eq!(max_connections_for(1024, aside(0, 0)), 448);
        assert_eq!(max_connections_for(1024, aside(200, 0)), 348);
        assert_eq!(max_connections_for(1_048_576, aside(2_000, 0)), 523_224);
        // Never zero, whatever is set aside.
        assert_eq!(max_connections_for(1024, aside(5_000, 0)), 1);
        assert_eq!(max_connections_for(0, aside(0, 0)), 1);
    }

    #[test]
    fn derived_limit_sets_aside_the_admin_cap_the_probes_and_the_reserve() {
        // (1024 - 128 reserve - 256 admin) / 2.
        assert_eq!(max_connections_for(1024, aside(0, 256)), 320);
        // (1024 - 128 - 256 - 100 probes) / 2.
        assert_eq!(max_connections_for(1024, aside(100, 256)), 270);
        // At the cap, the admin server, the probes and the proxied connections
        // together stay below the limit by the reserve.
        let fds = 4096;
        let (probes, admin) = (300, 256);
        let data = max_connections_for(fds, aside(probes, admin));
        assert_eq!(2 * data + probes + admin + 128, 4096);
        // An admin cap above the limit leaves the data path its floor of one.
        assert_eq!(max_connections_for(1024, aside(0, 65_536)), 1);
        assert_eq!(max_connections_for(64, aside(usize::MAX, usize::MAX)), 1);
    }
}
