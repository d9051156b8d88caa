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
//! # Lifetime of an entry
//! - An entry never expires while connections it placed are open.
//! - It expires `timeout` after its last use (a placement or a release), i.e.
//!   it is dead at `last_use + timeout` exactly. [`PersistenceTable::lookup`]
//!   treats a dead entry as a miss; [`PersistenceTable::purge_expired`],
//!   called periodically by one task per table, frees them. No timer per entry.
//! - Entries of a backend that turns unhealthy, gets weight 0 or is removed
//!   are dropped with [`PersistenceTable::remove_backend`] or
//!   [`PersistenceTable::retain_backends`].
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
//! never drift. [`PlacementGuard`] releases on drop for RAII callers.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;
const MAX_SHARDS: usize = 64;
/// Fewer entries per shard than this and sharding hurts LRU accuracy more
/// than it helps contention.
const MIN_PER_SHARD: usize = 64;

/// Proof that a connection was counted on a client's entry; hand it back to
/// [`PersistenceTable::release`] or [`PersistenceTable::repin`] exactly once.
#[derive(Debug)]
#[must_use = "a Placement must be released, or the entry never expires"]
pub struct Placement {
    client: IpAddr,
    server_id: Arc<str>,
    generation: u64,
}

impl Placement {
    /// The (canonical) client IP.
    pub fn client(&self) -> IpAddr {
        self.client
    }
    /// The backend this connection goes to.
    pub fn server_id(&self) -> &Arc<str> {
        &self.server_id
    }
}

/// Releases its placement with `Instant::now()` when dropped, so a connection
/// task that ends by any path (including a panic) keeps the count exact.
/// Wrap the placement once the backend connect has succeeded.
#[derive(Debug)]
pub struct PlacementGuard {
    table: Arc<PersistenceTable>,
    placement: Placement,
}

impl PlacementGuard {
    pub fn new(table: Arc<PersistenceTable>, placement: Placement) -> Self {
        PlacementGuard { table, placement }
    }
    pub fn server_id(&self) -> &Arc<str> {
        self.placement.server_id()
    }
}

impl Drop for PlacementGuard {
    fn drop(&mut self) {
        // `release` takes a Placement by value; an identical one (same
        // client and generation) releases the same count.
        let p = &self.placement;
        let copy = Placement {
            client: p.client,
            server_id: Arc::clone(&p.server_id),
            generation: p.generation,
        };
        self.table.release(copy, Instant::now());
    }
}

#[derive(Debug)]
struct Node {
    client: IpAddr,
    /// Free slots keep their last server until reused: an Arc of a short
    /// shared string costs less than an `Option` check on every hit.
    server: Arc<str>,
    /// Nanoseconds since the table's epoch.
    last_use: u64,
    generation: u64,
    open: u32,
    prev: u32,
    next: u32,
}

/// Intrusive list ends; `head` is the most recently used.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

#[derive(Debug)]
struct Shard {
    map: HashMap<IpAddr, u32>,
    nodes: Vec<Node>,
    /// Free slab slots, chained through `next`.
    free: u32,
    busy: List,
    idle: List,
    capacity: usize,
    next_generation: u64,
    /// Latest time seen by this shard. Stamps never go backwards within a
    /// shard, so the idle list is sorted by `last_use` even when threads pass
    /// slightly out-of-order instants, which lets purging stop early.
    clock: u64,
}

impl Shard {
    fn list(&mut self, busy: bool) -> &mut List {
        if busy {
            &mut self.busy
        } else {
            &mut self.idle
        }
    }

    /// Take `idx` off its list. Must run before `open` changes between zero
    /// and non-zero, since `open` says which list the node is on.
    fn unlink(&mut self, idx: u32) {
        let n = &self.nodes[idx as usize];
        let (prev, next, busy) = (n.prev, n.next, n.open > 0);
        match prev {
            NIL => self.list(busy).head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.list(busy).tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    /// Put `idx` at the most-recent end of the list its `open` selects.
    fn push_front(&mut self, idx: u32) {
        let busy = self.nodes[idx as usize].open > 0;
        let head = self.list(busy).head;
        let n = &mut self.nodes[idx as usize];
        n.prev = NIL;
        n.next = head;
        match head {
            NIL => self.list(busy).tail = idx,
            h => self.nodes[h as usize].prev = idx,
        }
        self.list(busy).head = idx;
    }

    fn remove(&mut self, idx: u32) {
        self.unlink(idx);
        let n = &mut self.nodes[idx as usize];
        n.next = self.free;
        let client = n.client;
        self.free = idx;
        self.map.remove(&client);
    }

    /// Points `idx` at `server` (a lookup passes `None` to keep the current
    /// one), adds `count` (0 or 1) connections, makes it most recently used.
    fn place(&mut self, idx: u32, server: Option<Arc<str>>, now: u64, count: u32) -> Placement {
        self.unlink(idx);
        self.clock = self.clock.max(now);
        let n = &mut self.nodes[idx as usize];
        n.open = n.open.saturating_add(count);
        n.last_use = self.clock;
        if let Some(server) = server {
            n.server = server;
        }
        let placement = Placement {
            client: n.client,
            server_id: Arc::clone(&n.server),
            generation: n.generation,
        };
        self.push_front(idx);
        placement
    }

    /// The slot of a live entry for `p`'s generation, if it still exists.
    fn find(&self, p: &Placement) -> Option<u32> {
        let idx = *self.map.get(&p.client)?;
        (self.nodes[idx as usize].generation == p.generation).then_some(idx)
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
    evictions: AtomicU64,
    expirations: AtomicU64,
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
        let max_entries = max_entries.clamp(1, NIL as usize - 1);
        let n = prev_power_of_two(shards.clamp(1, MAX_SHARDS).min(max_entries));
        // Capacities sum to max_entries exactly, so len() <= max_entries.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    nodes: Vec::new(),
                    free: NIL,
                    busy: EMPTY,
                    idle: EMPTY,
                    capacity: max_entries / n + usize::from(i < max_entries % n),
                    next_generation: 0,
                    clock: 0,
                })
            })
            .collect();
        let table = PersistenceTable {
            shards,
            shard_mask: n - 1,
            shard_seed: RandomState::new().hash_one(0x5eed_u64),
            epoch: Instant::now(),
            timeout_nanos: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        };
        table.set_timeout(timeout);
        table
    }

    fn ticks(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn expired(&self, n: &Node, now: u64) -> bool {
        n.open == 0
            && now
                >= n.last_use
                    .saturating_add(self.timeout_nanos.load(Ordering::Relaxed))
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
        let idx = *s.map.get(&client)?;
        if self.expired(&s.nodes[idx as usize], now) {
            s.remove(idx);
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.expirations.fetch_add(1, Ordering::Relaxed);
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
        if let Some(&idx) = s.map.get(&client) {
            // Overwrite keeps the generation: placements made before the
            // re-pin still count on (and release against) this entry.
            return s.place(idx, Some(server), now, 1);
        }
        if s.map.len() >= s.capacity {
            let victim = if s.idle.tail != NIL {
                s.idle.tail
            } else {
                s.busy.tail
            };
            if victim != NIL {
                s.remove(victim);
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let generation = s.next_generation;
        s.next_generation += 1;
        let node = Node {
            client,
            server,
            last_use: now,
            generation,
            open: 0,
            prev: NIL,
            next: NIL,
        };
        let idx = if s.free != NIL {
            let idx = s.free;
            s.free = s.nodes[idx as usize].next;
            s.nodes[idx as usize] = node;
            idx
        } else {
            // capacity < NIL per shard (see with_shards), so this fits.
            s.nodes.push(node);
            (s.nodes.len() - 1) as u32
        };
        s.map.insert(client, idx);
        self.len.fetch_add(1, Ordering::Relaxed);
        s.push_front(idx);
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
            s.unlink(idx);
            let clock = s.clock.max(now);
            s.clock = clock;
            let n = &mut s.nodes[idx as usize];
            n.open = n.open.saturating_sub(1);
            n.last_use = clock;
            s.push_front(idx);
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
            while s.idle.tail != NIL && self.expired(&s.nodes[s.idle.tail as usize], now) {
                let tail = s.idle.tail;
                s.remove(tail);
                purged += 1;
            }
            // Update the gauge before unlocking, so refills of this shard by
            // other threads can never make len() exceed max_entries.
            self.len.fetch_sub(purged - before, Ordering::Relaxed);
        }
        self.expirations.fetch_add(purged as u64, Ordering::Relaxed);
        purged
    }

    /// Drops every entry pinned to `server_id`; returns how many.
    pub fn remove_backend(&self, server_id: &str) -> usize {
        self.retain_backends(|s| s != server_id)
    }

    /// Keeps only entries whose backend satisfies `keep` (called under a
    /// shard lock: keep it cheap); returns how many were dropped.
    pub fn retain_backends(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let before = removed;
            for start in [s.busy.head, s.idle.head] {
                let mut idx = start;
                while idx != NIL {
                    let n = &s.nodes[idx as usize];
                    let next = n.next;
                    if !keep(&n.server) {
                        s.remove(idx);
                        removed += 1;
                    }
                    idx = next;
                }
            }
            self.len.fetch_sub(removed - before, Ordering::Relaxed);
        }
        removed
    }

    /// Applies a reloaded timeout to every entry, existing ones included.
    pub fn set_timeout(&self, timeout: Duration) {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.timeout_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }

    /// Entries held, dead-but-unpurged included (the memory gauge).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted by the `max_entries` bound since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Entries dropped as expired (by `purge_expired` or `lookup`).
    pub fn expirations(&self) -> u64 {
        self.expirations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;
    use std::net::Ipv4Addr;

    const T: Duration = Duration::from_secs(10);

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
    }

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    impl PersistenceTable {
        /// Checks list/map consistency; returns (client, generation, open) per entry.
        fn audit(&self) -> Vec<(IpAddr, u64, u32)> {
            let mut out = Vec::new();
            for shard in self.shards.iter() {
                let s = lock(shard);
                let mut seen = 0;
                for (list, busy) in [(s.busy, true), (s.idle, false)] {
                    let (mut idx, mut prev) = (list.head, NIL);
                    while idx != NIL {
                        let n = &s.nodes[idx as usize];
                        assert_eq!(n.prev, prev);
                        assert_eq!(n.open > 0, busy);
                        assert_eq!(s.map.get(&n.client), Some(&idx));
                        out.push((n.client, n.generation, n.open));
                        seen += 1;
                        (prev, idx) = (idx, n.next);
                    }
                    assert_eq!(list.tail, prev);
                }
                assert_eq!(seen, s.map.len());
                assert!(s.map.len() <= s.capacity);
            }
            assert_eq!(out.len(), self.len());
            out
        }

        fn open_of(&self, client: IpAddr) -> Option<u32> {
            self.audit()
                .into_iter()
                .find(|e| e.0 == client)
                .map(|e| e.2)
        }
    }

    #[test]
    fn hit_and_miss() {
        let t = PersistenceTable::new(T, 100);
        let now = Instant::now();
        assert!(t.lookup(ip(1), now).is_none());
        let p = t.insert(ip(1), id("a"), now);
        assert_eq!(&**p.server_id(), "a");
        let q = t.lookup(ip(1), now).unwrap();
        assert_eq!(&**q.server_id(), "a");
        assert!(t.lookup(ip(2), now).is_none());
        assert_eq!(t.open_of(ip(1)), Some(2));
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());
        t.release(p, now);
        t.release(q, now);
        assert_eq!(t.open_of(ip(1)), Some(0));
    }

    #[test]
    fn v4_mapped_client_is_the_same_client() {
        let t = PersistenceTable::new(T, 100);
        let now = Instant::now();
        t.release(t.insert(ip(1), id("a"), now), now);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(&**t.lookup(mapped, now).unwrap().server_id(), "a");
    }

    #[test]
    fn expires_exactly_timeout_after_last_use() {
        let t = PersistenceTable::new(T, 100);
        let t0 = Instant::now();
        t.release(t.insert(ip(1), id("a"), t0), t0);
        let before = t0 + T - Duration::from_nanos(1);
        assert_eq!(t.purge_expired(before), 0);
        let p = t
            .lookup(ip(1), before)
            .expect("live just before the timeout");
        t.release(p, before);
        // Last use moved to `before`: dead exactly at before + T.
        assert!(t.lookup(ip(1), before + T).is_none());
        assert_eq!(t.len(), 0);
        assert_eq!(t.expirations(), 1);
    }

    #[test]
    fn never_expires_while_open_then_timeout_after_last_close() {
        let t = PersistenceTable::new(T, 100);
        let t0 = Instant::now();
        let p1 = t.insert(ip(1), id("a"), t0);
        let p2 = t.lookup(ip(1), t0).unwrap();
        let late = t0 + T * 100;
        assert_eq!(t.purge_expired(late), 0);
        t.release(p1, late);
        assert_eq!(
            t.purge_expired(late + T * 2),
            0,
            "one connection still open"
        );
        let close = late + T * 3;
        t.release(p2, close);
        assert_eq!(t.purge_expired(close + T - Duration::from_millis(1)), 0);
        assert_eq!(t.purge_expired(close + T), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn lru_eviction_prefers_least_recently_used() {
        let t = PersistenceTable::new(T, 3);
        let now = Instant::now();
        for n in 1..=3 {
            t.release(t.insert(ip(n), id("a"), now), now);
        }
        // Touch 1: now 2 is the LRU.
        t.release(t.lookup(ip(1), now).unwrap(), now);
        t.release(t.insert(ip(4), id("a"), now), now);
        assert_eq!(t.len(), 3);
        assert_eq!(t.evictions(), 1);
        assert!(t.lookup(ip(2), now).is_none());
        for n in [1, 3, 4] {
            assert!(t.lookup(ip(n), now).is_some(), "{n} kept");
        }
    }

    #[test]
    fn eviction_prefers_idle_entries_then_busy_lru() {
        let t = PersistenceTable::new(T, 2);
        let now = Instant::now();
        let busy = t.insert(ip(1), id("a"), now); // oldest but open
        t.release(t.insert(ip(2), id("a"), now), now);
        let _b3 = t.insert(ip(3), id("a"), now);
        assert!(t.lookup(ip(2), now).is_none(), "idle entry evicted first");
        assert_eq!(t.open_of(ip(1)), Some(1));
        // All busy now: the LRU busy entry (1) goes; its placement is stale.
        let _b4 = t.insert(ip(4), id("a"), now);
        assert_eq!(t.open_of(ip(1)), None);
        t.release(busy, now); // no-op, no drift
        assert_eq!(t.len(), 2);
        assert_eq!(t.evictions(), 2);
    }

    #[test]
    fn remove_backend_drops_only_that_backend() {
        let t = PersistenceTable::new(T, 1000);
        let now = Instant::now();
        let mut held = Vec::new();
        for n in 0..30 {
            let p = t.insert(ip(n), id(["a", "b", "c"][n as usize % 3]), now);
            if n % 2 == 0 {
                held.push(p);
            } else {
                t.release(p, now);
            }
        }
        assert_eq!(t.remove_backend("b"), 10);
        assert_eq!(t.len(), 20);
        assert_eq!(t.retain_backends(|s| s == "a"), 10);
        for n in 0..30 {
            assert_eq!(t.lookup(ip(n), now).is_some(), n % 3 == 0);
        }
        for p in held {
            t.release(p, now);
        }
        t.audit();
    }

    #[test]
    fn repin_moves_the_connection_and_keeps_counts() {
        let t = PersistenceTable::new(T, 100);
        let now = Instant::now();
        let old = t.insert(ip(1), id("a"), now); // connection to a, still open
        let p = t.lookup(ip(1), now).unwrap(); // a is now ineligible
        let p = t.repin(p, id("b"), now);
        assert_eq!(&**p.server_id(), "b");
        assert_eq!(t.open_of(ip(1)), Some(2));
        // Overwrite by insert (e.g. a later miss-like path) adds one.
        let q = t.insert(ip(1), id("c"), now);
        assert_eq!(t.open_of(ip(1)), Some(3));
        assert_eq!(&**t.lookup(ip(1), now).unwrap().server_id(), "c");
        assert_eq!(t.open_of(ip(1)), Some(4));
        t.release(old, now);
        t.release(p, now);
        t.release(q, now);
        assert_eq!(t.open_of(ip(1)), Some(1));
        // Stale placement: repin inserts afresh and counts once.
        let r = t.lookup(ip(1), now).unwrap();
        t.remove_backend("c");
        let r = t.repin(r, id("d"), now);
        assert_eq!(t.open_of(ip(1)), Some(1));
        t.release(r, now);
        assert_eq!(t.open_of(ip(1)), Some(0));
    }

    #[test]
    fn guard_releases_on_drop() {
        let t = Arc::new(PersistenceTable::new(T, 100));
        let g = PlacementGuard::new(Arc::clone(&t), t.insert(ip(1), id("a"), Instant::now()));
        assert_eq!(&**g.server_id(), "a");
        assert_eq!(t.open_of(ip(1)), Some(1));
        drop(g);
        assert_eq!(t.open_of(ip(1)), Some(0));
    }

    #[test]
    fn purge_removes_expired_only() {
        let t = PersistenceTable::with_shards(T, 1000, 8);
        let t0 = Instant::now();
        let at = |n: u32| t0 + Duration::from_millis(100 * u64::from(n));
        let mut held = Vec::new();
        for n in 0..100 {
            let p = t.insert(ip(n), id("a"), at(n));
            if n % 5 == 0 {
                held.push(p);
            } else {
                t.release(p, at(n));
            }
        }
        // Dead: released and last used at or before t0 + 5s.
        let dead = |n: u32| n % 5 != 0 && n <= 50;
        let removed = t.purge_expired(at(50) + T);
        let expected = (0..100).filter(|&n| dead(n)).count();
        assert_eq!(removed, expected);
        assert_eq!(t.len(), 100 - expected);
        for (client, _, _) in t.audit() {
            let IpAddr::V4(a) = client else { panic!() };
            assert!(!dead(u32::from(a) - 0x0A00_0000));
        }
        for p in held {
            t.release(p, at(100));
        }
    }

    #[test]
    fn concurrent_use_keeps_bounds_and_exact_counts() {
        let t = Arc::new(PersistenceTable::with_shards(T, 256, 4));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..4u64)
            .map(|tid| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut x = tid.wrapping_mul(0x9E37_79B9) + 1;
                    let mut held = Vec::new();
                    for i in 0..40_000u64 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let r = x >> 33;
                        let now = t0 + Duration::from_millis(i);
                        let client = ip((r % 1024) as u32);
                        match r % 8 {
                            0..=2 => {
                                let p = match t.lookup(client, now) {
                                    Some(p) => p,
                                    None => t.insert(client, id("a"), now),
                                };
                                held.push(p);
                            }
                            3 if !held.is_empty() => {
                                let p = held.swap_remove((r as usize / 8) % held.len());
                                held.push(t.repin(p, id("b"), now));
                            }
                            4 => {
                                t.remove_backend(["a", "b"][(r % 2) as usize]);
                            }
                            _ if !held.is_empty() => {
                                let p = held.swap_remove((r as usize / 8) % held.len());
                                t.release(p, now);
                            }
                            _ => {}
                        }
                        assert!(t.len() <= 256);
                    }
                    held
                })
            })
            .collect();
        let held: Vec<Placement> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut outstanding: Map<(IpAddr, u64), u32> = Map::new();
        for p in &held {
            *outstanding.entry((p.client, p.generation)).or_default() += 1;
        }
        for (client, generation, open) in t.audit() {
            assert_eq!(
                outstanding.get(&(client, generation)).copied().unwrap_or(0),
                open
            );
        }
        for p in held {
            t.release(p, t0);
        }
        assert!(t.audit().iter().all(|e| e.2 == 0));
        assert!(t.len() <= 256);
    }
}
