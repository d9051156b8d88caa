//! Client-IP affinity (LVS persistence templates) for `persistence_timeout > 0`.
//!
//! One [`PersistenceTable`] per listener maps a client IP to the backend
//! (`server_id`) its connections were placed on. It is sharded (a
//! `Mutex<Shard>` per shard, chosen by a hash of the IP) so accept loops on
//! many worker threads rarely contend; each shard is a `HashMap<IpAddr, u32>`
//! into a slab of nodes threaded on two intrusive LRU lists: *busy* (entries
//! with open connections) and *idle* (none). Lookup, insert, touch and evict
//! are O(1) and allocate nothing once the slab and map have grown.
//!
//! Time is passed in as [`Instant`] so tests need no sleeping.
//!
//! [`PersistenceTable::save`] and [`PersistenceTable::restore`] (in `saved.rs`)
//! carry the live entries, with their remaining time, to the process that
//! replaces this one in a binary upgrade.
//!
//! # Lifetime of an entry
//! - An entry never expires while connections it placed are open.
//! - It expires `timeout` after its last use (a placement or a release), i.e.
//!   it is dead at `last_use + timeout` exactly. [`PersistenceTable::lookup`]
//!   treats a dead entry as a miss; [`PersistenceTable::purge_expired`],
//!   called periodically by one task per table, frees them. No timer per entry.
//! - Entries of a backend that turns unhealthy, gets weight 0 or is removed
//!   are dropped with [`PersistenceTable::retain_backends`].
//! - At `max_entries` an insert evicts the least recently used *idle* entry
//!   of its shard, or, if every entry of the shard has open connections, the
//!   least recently used busy one: the bound on memory wins over affinity
//!   (those connections keep running; only their pinning is forgotten).
//!   LRU order is per shard, an approximation of a global LRU, as usual for
//!   sharded caches; a table with `max_entries < 128` has a single shard.
//!   `max_entries` is split evenly over the shards, so with uneven client
//!   hashing a shard may evict a little before the table holds `max_entries`
//!   (about 0.02% early at 1M entries / 64 shards); `len()` never exceeds it.
//!
//! # Open-count protocol (the data path must follow it)
//! Every call that counts a connection returns a [`Placement`]; each
//! `Placement` must be handed back exactly once, to `repin` or `release`:
//!
//! 1. `lookup(ip, now)`: `Some(p)` counts the connection (open += 1).
//!    - backend `p.server_id()` eligible: connect to it.
//!    - not eligible: pick `b` with the scheduler, `p = repin(p, b, now)`.
//!    - no backend at all: `release(p, now)` and refuse the connection.
//! 2. `None`: pick `b`, `p = insert(ip, b, now)` (counts the connection).
//! 3. Connect to `p.server_id()`. On failure, either pick another backend and
//!    `p = repin(p, other, now)` (the count moves with the connection, open
//!    is unchanged) and retry, or give up with `release(p, now)`.
//! 4. When the proxied connection closes: `release(p, now)` (open -= 1).
//!
//! Invariant: a live entry's `open` equals the number of outstanding
//! `Placement`s carrying its generation. Overwriting an entry (insert or
//! repin onto another backend) keeps its generation, so earlier connections
//! to the old backend still release against it. When an entry is dropped
//! (evicted, expired, backend removed) its outstanding placements go stale:
//! their `release` is a no-op and their `repin` inserts afresh, so counts
//! never drift. The data path holds its placement in `proxy::Pinned`, which
//! releases it when the connection ends by any path.

mod saved;
mod shard;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use saved::SavedEntry;
use shard::Shard;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MAX_SHARDS: usize = 64;
/// How far before its creation a table's clock starts: the longest
/// `persistence_timeout`, so an entry handed over by a binary upgrade can be last
/// used before the table existed.
const EPOCH_BACKDATE: Duration = Duration::from_secs(3600);
/// Fewer entries per shard than this and sharding hurts LRU accuracy more
/// than it helps contention.
const MIN_PER_SHARD: usize = 64;

/// Proof that a connection was counted on a client's entry; hand it back to
/// [`PersistenceTable::release`] or [`PersistenceTable::repin`] exactly once.
#[derive(Debug)]
#[must_use = "a Placement must be released, or the entry never expires"]
pub struct Placement {
    /// The canonical client IP: it finds the entry again.
    client: IpAddr,
    server_id: Arc<str>,
    generation: u64,
}

impl Placement {
    /// The backend this connection goes to.
    pub fn server_id(&self) -> &Arc<str> {
        &self.server_id
    }
}

/// Sharded, bounded client-IP -> backend table. See the module docs.
#[derive(Debug)]
pub struct PersistenceTable {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    shard_seed: u64,
    epoch: Instant,
    timeout_nanos: AtomicU64,
    /// Kept outside the shards so the metrics gauge is one atomic load.
    len: AtomicUsize,
}

fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Shard operations keep the structure consistent at every step that can
    // panic (only indexing bugs could), so a poisoned shard is still usable;
    // refusing service for it would be worse.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PersistenceTable {
    /// A table whose entries live `timeout` after last use, holding at most
    /// `max_entries` (at least 1). Shards: `max_entries / 64`, rounded down
    /// to a power of two, between 1 and 64.
    pub fn new(timeout: Duration, max_entries: usize) -> Self {
        Self::with_shards(timeout, max_entries, max_entries / MIN_PER_SHARD)
    }

    /// As [`new`](Self::new) with an explicit shard count (rounded down to a
    /// power of two, clamped to `1..=64` and to `max_entries`).
    pub fn with_shards(timeout: Duration, max_entries: usize, shards: usize) -> Self {
        let max_entries = max_entries.clamp(1, shard::MAX_CAPACITY);
        let n = prev_power_of_two(shards.clamp(1, MAX_SHARDS).min(max_entries));
        // Capacities sum to max_entries exactly, so len() <= max_entries.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard::new(
                    max_entries / n + usize::from(i < max_entries % n),
                ))
            })
            .collect();
        let table = PersistenceTable {
            shards,
            shard_mask: n - 1,
            shard_seed: RandomState::new().hash_one(0x5eed_u64),
            epoch: Instant::now()
                .checked_sub(EPOCH_BACKDATE)
                .unwrap_or_else(Instant::now),
            timeout_nanos: AtomicU64::new(0),
            len: AtomicUsize::new(0),
        };
        table.set_timeout(timeout);
        table
    }

    fn ticks(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an idle entry last used at `last_use` is dead at `now`.
    fn dead(&self, last_use: u64, now: u64) -> bool {
        now >= last_use.saturating_add(self.timeout_nanos.load(Ordering::Relaxed))
    }

    /// A keyed multiply-shift of the address bits: cheaper than the maps'
    /// SipHash, and a skewed shard only costs contention, never complexity
    /// (the per-shard maps keep DoS-resistant hashing).
    fn shard(&self, client: IpAddr) -> &Mutex<Shard> {
        let bits = match client {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let x = u128::from(a);
                (x as u64) ^ ((x >> 64) as u64)
            }
        };
        let h = (bits ^ self.shard_seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 40) as usize & self.shard_mask]
    }

    /// The backend `client` is pinned to, if its entry is live; counts the
    /// connection on the entry (open += 1, last use = now). A dead entry is
    /// dropped and reported as a miss.
    pub fn lookup(&self, client: IpAddr, now: Instant) -> Option<Placement> {
        let client = client.to_canonical();
        let now = self.ticks(now);
        let mut s = lock(self.shard(client));
        let idx = s.slot(client)?;
        if s.idle_since(idx).is_some_and(|t| self.dead(t, now)) {
            s.remove(idx);
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(s.place(idx, None, now, 1))
    }

    /// Pins `client` to `server_id` (creating or overwriting its entry) and
    /// counts the connection. Creating may evict the shard's LRU entry.
    pub fn insert(&self, client: IpAddr, server_id: Arc<str>, now: Instant) -> Placement {
        let client = client.to_canonical();
        let now = self.ticks(now);
        let mut s = lock(self.shard(client));
        self.insert_locked(&mut s, client, server_id, now)
    }

    fn insert_locked(
        &self,
        s: &mut Shard,
        client: IpAddr,
        server: Arc<str>,
        now: u64,
    ) -> Placement {
        if let Some(idx) = s.slot(client) {
            // Overwrite keeps the generation: placements made before the
            // re-pin still count on (and release against) this entry.
            return s.place(idx, Some(server), now, 1);
        }
        if s.evict_if_full() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        let idx = s.add(client, server, now);
        self.len.fetch_add(1, Ordering::Relaxed);
        s.place(idx, None, now, 1)
    }

    /// Moves the connection counted by `placement` to `server_id` (its
    /// backend was ineligible or refused the connect) and re-pins the client
    /// there; the open count is unchanged. A stale placement (entry dropped
    /// meanwhile) was not counted, so this inserts afresh.
    pub fn repin(&self, placement: Placement, server_id: Arc<str>, now: Instant) -> Placement {
        let now = self.ticks(now);
        let mut s = lock(self.shard(placement.client));
        match s.find(&placement) {
            Some(idx) => s.place(idx, Some(server_id), now, 0),
            None => self.insert_locked(&mut s, placement.client, server_id, now),
        }
    }

    /// A connection counted by `placement` closed: open -= 1, last use = now.
    /// No-op if the entry was dropped since.
    pub fn release(&self, placement: Placement, now: Instant) {
        let now = self.ticks(now);
        let mut s = lock(self.shard(placement.client));
        if let Some(idx) = s.find(&placement) {
            s.release(idx, now);
        }
    }

    /// Frees dead entries; returns how many. Walks each shard's idle list
    /// from its oldest end and stops at the first live entry, so the cost is
    /// proportional to what expires (the shard clock keeps that list sorted).
    pub fn purge_expired(&self, now: Instant) -> usize {
        let now = self.ticks(now);
        let mut purged = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let before = purged;
            while let Some((oldest, last_use)) = s.oldest_idle() {
                if !self.dead(last_use, now) {
                    break;
                }
                s.remove(oldest);
                purged += 1;
            }
            // Update the gauge before unlocking, so refills of this shard by
            // other threads can never make len() exceed max_entries.
            self.len.fetch_sub(purged - before, Ordering::Relaxed);
        }
        purged
    }

    /// Keeps only entries whose backend satisfies `keep` (called under a
    /// shard lock: keep it cheap); returns how many were dropped.
    pub fn retain_backends(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let dropped = s.retain(&keep);
            // As in purge_expired: the gauge moves under the shard lock.
            self.len.fetch_sub(dropped, Ordering::Relaxed);
            removed += dropped;
        }
        removed
    }

    /// Applies a reloaded timeout to every entry, existing ones included.
    pub fn set_timeout(&self, timeout: Duration) {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.timeout_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Entries held, dead-but-unpurged included (the memory gauge).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
