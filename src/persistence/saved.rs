//! The table's entries written out and read back with their remaining time, for a
//! binary upgrade (the new process carries on every client's pinning).

use super::{lock, PersistenceTable};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One live entry: its client, its backend, and how long it has left to live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEntry {
    pub client: IpAddr,
    pub server_id: String,
    /// Milliseconds until it expires unless used again. An entry with open
    /// connections is saved with the whole timeout: its connections stay with the
    /// old process, and the new one cannot see them end, so it counts from the
    /// hand-over as from a last use.
    pub remaining_ms: u64,
}

impl PersistenceTable {
    /// Every live entry at `now`, in no particular order (dead ones are left out).
    pub fn save(&self, now: Instant) -> Vec<SavedEntry> {
        let ticks = self.ticks(now);
        let timeout = self.timeout_nanos.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            lock(shard).for_each(|client, server, last_use, busy| {
                let dies = if busy {
                    ticks.saturating_add(timeout)
                } else {
                    last_use.saturating_add(timeout)
                };
                if dies > ticks {
                    out.push(SavedEntry {
                        client,
                        server_id: server.to_string(),
                        remaining_ms: (dies - ticks).div_ceil(1_000_000),
                    });
                }
            });
        }
        out
    }

    /// Restores `entries` (from [`save`](Self::save) in another process) at `now`:
    /// each expires `remaining_ms` from now (at most the timeout in force), unless
    /// used again. A client already in the table keeps its entry; `server_id` maps a
    /// saved backend to the one this table's listener knows (`None`: not configured
    /// here, the entry is dropped). Returns how many were restored.
    pub fn restore(
        &self,
        mut entries: Vec<SavedEntry>,
        now: Instant,
        server_id: impl Fn(&str) -> Option<Arc<str>>,
    ) -> usize {
        let ticks = self.ticks(now);
        let timeout = self.timeout_nanos.load(Ordering::Relaxed);
        // Oldest first, so each shard's idle list stays sorted by last use.
        entries.sort_by_key(|e| e.remaining_ms);
        let mut restored = 0;
        for entry in entries {
            let Some(server) = server_id(&entry.server_id) else {
                continue;
            };
            let remaining = u64::try_from(Duration::from_millis(entry.remaining_ms).as_nanos())
                .unwrap_or(u64::MAX)
                .min(timeout);
            // The epoch is backdated by the longest timeout, so this stays >= 0.
            let last_use = ticks.saturating_sub(timeout - remaining);
            let client = entry.client.to_canonical();
            let mut s = lock(self.shard(client));
            let (added, evicted) = s.restore(client, server, last_use);
            if evicted {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            if added {
                self.len.fetch_add(1, Ordering::Relaxed);
                restored += 1;
            }
        }
        restored
    }
}
