//! One persistence shard: a slab of entries on intrusive busy/idle LRU lists, keyed by client IP.

use super::Placement;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The null slot index that ends a list.
const NIL: u32 = u32::MAX;
/// Most entries a shard can hold: slots are `u32` and [`NIL`] is not one.
pub(super) const MAX_CAPACITY: usize = NIL as usize - 1;

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

/// The entries of the clients that hash to one shard. Times are nanoseconds
/// since the table's epoch.
///
/// The helpers the table calls per connection are `#[inline]`: the table is in
/// another module, so possibly another codegen unit, and before the two were
/// split LLVM inlined them into `lookup`, `insert` and `release`.
#[derive(Debug)]
pub(super) struct Shard {
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
    /// An empty shard holding at most `capacity` (<= [`MAX_CAPACITY`]) entries.
    pub(super) fn new(capacity: usize) -> Self {
        Shard {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: NIL,
            busy: EMPTY,
            idle: EMPTY,
            capacity,
            next_generation: 0,
            clock: 0,
        }
    }

    /// The slot of `client`'s entry (live or dead).
    #[inline]
    pub(super) fn slot(&self, client: IpAddr) -> Option<u32> {
        self.map.get(&client).copied()
    }

    /// The slot of a live entry for `p`'s generation, if it still exists.
    #[inline]
    pub(super) fn find(&self, p: &Placement) -> Option<u32> {
        let idx = *self.map.get(&p.client)?;
        (self.nodes[idx as usize].generation == p.generation).then_some(idx)
    }

    /// The last use of entry `idx` if no connection is open on it (only such
    /// an entry can expire).
    #[inline]
    pub(super) fn idle_since(&self, idx: u32) -> Option<u64> {
        let n = &self.nodes[idx as usize];
        (n.open == 0).then_some(n.last_use)
    }

    /// The least recently used idle entry and its last use.
    pub(super) fn oldest_idle(&self) -> Option<(u32, u64)> {
        let tail = self.idle.tail;
        (tail != NIL).then(|| (tail, self.nodes[tail as usize].last_use))
    }

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

    /// Drops entry `idx` and frees its slot.
    pub(super) fn remove(&mut self, idx: u32) {
        self.unlink(idx);
        let n = &mut self.nodes[idx as usize];
        n.next = self.free;
        let client = n.client;
        self.free = idx;
        self.map.remove(&client);
    }

    /// Points `idx` at `server` (a lookup passes `None` to keep the current
    /// one), adds `count` (0 or 1) connections, makes it most recently used.
    pub(super) fn place(
        &mut self,
        idx: u32,
        server: Option<Arc<str>>,
        now: u64,
        count: u32,
    ) -> Placement {
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

    /// A connection on `idx` closed: open -= 1, and it is most recently used.
    #[inline]
    pub(super) fn release(&mut self, idx: u32, now: u64) {
        self.unlink(idx);
        let clock = self.clock.max(now);
        self.clock = clock;
        let n = &mut self.nodes[idx as usize];
        n.open = n.open.saturating_sub(1);
        n.last_use = clock;
        self.push_front(idx);
    }

    /// At capacity, drops the least recently used idle entry, or the least
    /// recently used busy one if none is idle; true if it dropped one.
    #[inline]
    pub(super) fn evict_if_full(&mut self) -> bool {
        if self.map.len() < self.capacity {
            return false;
        }
        let victim = if self.idle.tail != NIL {
            self.idle.tail
        } else {
            self.busy.tail
        };
        if victim == NIL {
            return false;
        }
        self.remove(victim);
        true
    }

    /// A new entry for `client` (not in the shard, which has room), pinned to
    /// `server` with no connection counted, under a fresh generation.
    #[inline]
    pub(super) fn add(&mut self, client: IpAddr, server: Arc<str>, now: u64) -> u32 {
        let generation = self.next_generation;
        self.next_generation += 1;
        let node = Node {
            client,
            server,
            last_use: now,
            generation,
            open: 0,
            prev: NIL,
            next: NIL,
        };
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            // capacity <= MAX_CAPACITY, so the new slot is below NIL.
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.map.insert(client, idx);
        self.push_front(idx);
        idx
    }

    /// Calls `f(client, server, last_use, busy)` for every entry.
    pub(super) fn for_each(&self, mut f: impl FnMut(IpAddr, &Arc<str>, u64, bool)) {
        for (start, busy) in [(self.busy.head, true), (self.idle.head, false)] {
            let mut idx = start;
            while idx != NIL {
                let n = &self.nodes[idx as usize];
                f(n.client, &n.server, n.last_use, busy);
                idx = n.next;
            }
        }
    }

    /// A handed-over idle entry (binary upgrade), last used at `last_use`; callers
    /// restore oldest first, so the idle list stays sorted. False (nothing done)
    /// when `client` already has an entry; may evict the LRU entry when full.
    pub(super) fn restore(
        &mut self,
        client: IpAddr,
        server: Arc<str>,
        last_use: u64,
    ) -> (bool, bool) {
        if self.slot(client).is_some() {
            return (false, false);
        }
        let evicted = self.evict_if_full();
        self.clock = self.clock.max(last_use);
        self.add(client, server, last_use);
        (true, evicted)
    }

    /// Drops every entry whose backend fails `keep`; returns how many.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for start in [self.busy.head, self.idle.head] {
            let mut idx = start;
            while idx != NIL {
                let n = &self.nodes[idx as usize];
                let next = n.next;
                if !keep(&n.server) {
                    self.remove(idx);
                    removed += 1;
                }
                idx = next;
            }
        }
        removed
    }
}

#[cfg(test)]
impl Shard {
    /// Checks that lists, slab and map agree; returns (client, generation,
    /// open) per entry.
    pub(super) fn audit(&self) -> Vec<(IpAddr, u64, u32)> {
        let mut out = Vec::new();
        for (list, busy) in [(self.busy, true), (self.idle, false)] {
            let (mut idx, mut prev) = (list.head, NIL);
            while idx != NIL {
                let n = &self.nodes[idx as usize];
                assert_eq!(n.prev, prev);
                assert_eq!(n.open > 0, busy);
                assert_eq!(self.map.get(&n.client), Some(&idx));
                out.push((n.client, n.generation, n.open));
                (prev, idx) = (idx, n.next);
            }
            assert_eq!(list.tail, prev);
        }
        assert_eq!(out.len(), self.map.len());
        assert!(self.map.len() <= self.capacity);
        out
    }
}
