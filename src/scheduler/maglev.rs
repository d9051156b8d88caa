//! Consistent hashing for `sch` / `tch`: weighted Maglev lookup tables.
//!
//! What must hold, and how:
//! - The map depends only on `hash_seed` and the set of (server_id, weight)
//!   with weight > 0: backends are sorted by server_id before the table is
//!   filled, and every hash is SipHash-1-3 keyed from the seed (never
//!   `RandomState`), over bytes laid out explicitly (no `Hash` impls, no
//!   native endianness), so every node and build computes the same table.
//! - Weights set the shares: in each fill round a backend earns its weight in
//!   credit and claims a slot only while its credit reaches the max weight.
//! - An unhealthy backend moves only its own keys: the primary table covers
//!   all weight > 0 backends whatever their health; a flow whose primary
//!   backend is out of the pool is looked up again (with other hash bits) in
//!   a fallback table over the pool, so those keys spread by weight and come
//!   back when the backend does.
//! - Adding or removing one of N moves about 1/N of keys (Maglev's property).

use super::{all_excluded, Candidate, FlowKey};
use siphasher::sip::SipHasher13;
use siphasher::sip128::SipHasher13 as SipHasher13x128;
use std::net::IpAddr;

/// Fixed key for turning the seed into hash keys: "edgelb-s", "ched-v01".
/// Changing it (or anything hashed below) moves every flow on upgrade.
const SEED_KEY: (u64, u64) = (0x6564_6765_6c62_2d73, 0x6368_6564_2d76_3031);

/// Table sizes: primes, each used while it gives at least 100 slots per
/// backend so that shares stay within about a percent of the weights.
const PRIMES: [usize; 8] = [
    65_537, 131_071, 262_147, 524_287, 1_048_573, 2_097_143, 4_194_301, 8_388_593,
];

const EMPTY: u32 = u32::MAX;

/// The table size used for `backends` weight > 0 backends.
pub fn table_size(backends: usize) -> usize {
    PRIMES
        .iter()
        .copied()
        .find(|&m| m >= backends.saturating_mul(100))
        .unwrap_or(PRIMES[PRIMES.len() - 1])
}

pub(super) struct ConsistentHash {
    /// SipHash keys derived from the seed.
    keys: (u64, u64),
    four_tuple: bool,
    /// Over every weight > 0 backend; holds candidate indices.
    primary: Vec<u32>,
    /// Over the pool, when the primary holds backends outside it.
    fallback: Option<Vec<u32>>,
    /// By candidate index: may this backend be picked?
    in_pool: Vec<bool>,
    pool: Vec<u32>,
}

/// One backend's place in the fill: its permutation of the table's slots is
/// `offset, offset + skip, offset + 2 skip, ...` modulo the prime size.
#[derive(Clone, Copy)]
struct Slotting {
    index: u32,
    weight: u64,
    offset: usize,
    skip: usize,
}

impl ConsistentHash {
    /// `pool` must be non-empty and hold only weight > 0 candidates.
    pub(super) fn new(
        candidates: &[Candidate],
        pool: &[usize],
        hash_seed: &str,
        four_tuple: bool,
    ) -> Self {
        let seeded =
            SipHasher13x128::new_with_keys(SEED_KEY.0, SEED_KEY.1).hash(hash_seed.as_bytes());
        let keys = (seeded.h1, seeded.h2);

        let mut order: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].weight > 0)
            .collect();
        // Config order must not matter; the index only breaks ties between
        // duplicate ids (which config validation should reject anyway).
        order.sort_by(|&a, &b| {
            candidates[a]
                .server_id
                .cmp(&candidates[b].server_id)
                .then(a.cmp(&b))
        });

        let m = table_size(order.len());
        let name_hasher = SipHasher13x128::new_with_keys(keys.0, keys.1);
        let all: Vec<Slotting> = order
            .iter()
            .map(|&i| {
                let h = name_hasher.hash(candidates[i].server_id.as_bytes());
                Slotting {
                    index: i as u32,
                    weight: u64::from(candidates[i].weight),
                    offset: (h.h1 % m as u64) as usize,
                    skip: (h.h2 % (m as u64 - 1)) as usize + 1,
                }
            })
            .collect();

        let mut in_pool = vec![false; candidates.len()];
        for &i in pool {
            in_pool[i] = true;
        }
        let primary = populate(&all, m);
        let fallback = (pool.len() < all.len()).then(|| {
            let eligible: Vec<Slotting> = all
                .iter()
                .copied()
                .filter(|s| in_pool[s.index as usize])
                .collect();
            refill(&primary, &eligible, &in_pool)
        });
        ConsistentHash {
            keys,
            four_tuple,
            primary,
            fallback,
            in_pool,
            pool: pool.iter().map(|&i| i as u32).collect(),
        }
    }

    #[inline]
    pub(super) fn pick(&self, flow: &FlowKey, exclude: &[usize]) -> Option<usize> {
        let h = flow_hash(self.keys, flow, self.four_tuple);
        let slot = reduce(h, self.primary.len());
        let b = self.primary[slot] as usize;
        if self.in_pool[b] && !exclude.contains(&b) {
            return Some(b);
        }
        // The table to go on in holds only pool members. The fallback uses
        // the hash's low bits: the primary slot only fixed the high ones, so
        // one slot's keys still spread over the whole fallback table.
        let (table, start) = match &self.fallback {
            Some(f) => (f.as_slice(), reduce(h.rotate_left(32), f.len())),
            None => (self.primary.as_slice(), slot),
        };
        let b = table[start] as usize;
        if !exclude.contains(&b) {
            return Some(b);
        }
        if all_excluded(&self.pool, exclude) {
            return None;
        }
        // Retries walk on to the next slots: deterministic, so every node
        // sends a retried flow to the same place, and weighted, since slots
        // are owned in proportion to weight.
        (1..table.len())
            .map(|k| table[(start + k) % table.len()] as usize)
            .find(|&b| self.in_pool[b] && !exclude.contains(&b))
    }
}

/// Fills an `m`-slot table from scratch.
fn populate(backends: &[Slotting], m: usize) -> Vec<u32> {
    fill(vec![EMPTY; m], 0, backends)
}

/// The fallback table: the primary with the slots of backends outside the
/// pool freed and claimed again by the pool. Flows reach it through other
/// hash bits, i.e. at a uniform slot, so their spread is the table's shares:
/// the primary's (by weight) plus the refilled slots (also by weight). It
/// costs only the freed slots, where a fresh table would cost a full fill.
fn refill(primary: &[u32], pool: &[Slotting], in_pool: &[bool]) -> Vec<u32> {
    let mut table = primary.to_vec();
    let mut filled = 0;
    for s in &mut table {
        if in_pool[*s as usize] {
            filled += 1;
        } else {
            *s = EMPTY;
        }
    }
    fill(table, filled, pool)
}

/// Fills the EMPTY slots of `table` (`filled` are taken): rounds over the
/// backends in sorted order, each claiming its next free slot when its credit
/// reaches the max weight. A fresh fill costs about `m ln m` probes, plus one
/// credit step per backend per round.
fn fill(mut table: Vec<u32>, mut filled: usize, backends: &[Slotting]) -> Vec<u32> {
    let m = table.len();
    let max_weight = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    if max_weight == 0 {
        return table;
    }
    let mut next: Vec<usize> = backends.iter().map(|b| b.offset).collect();
    let mut credit = vec![0u64; backends.len()];
    // Each permutation covers every slot (m is prime, 0 < skip < m), so each
    // claim ends, and the max-weight backend claims every round.
    while filled < m {
        for (i, b) in backends.iter().enumerate() {
            credit[i] += b.weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let mut s = next[i];
            while table[s] != EMPTY {
                s += b.skip;
                if s >= m {
                    s -= m;
                }
            }
            table[s] = b.index;
            s += b.skip;
            next[i] = if s >= m { s - m } else { s };
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    table
}

/// Maps a 64-bit hash onto `0..m` by multiply-shift: uses the high bits,
/// costs a multiply instead of a division.
#[inline]
fn reduce(h: u64, m: usize) -> usize {
    ((u128::from(h) * m as u128) >> 64) as usize
}

/// The flow's hash: client IP for `sch`; client IP, listener IP, client
/// port, listener port for `tch`. IPv4-mapped IPv6 addresses hash as IPv4,
/// so a dual-stack socket agrees with a v4 one.
#[inline]
pub(super) fn flow_hash(keys: (u64, u64), flow: &FlowKey, four_tuple: bool) -> u64 {
    let mut buf = [0u8; 38];
    let mut len = put_ip(&mut buf, 0, flow.client.ip());
    if four_tuple {
        len = put_ip(&mut buf, len, flow.local.ip());
        buf[len..len + 2].copy_from_slice(&flow.client.port().to_be_bytes());
        buf[len + 2..len + 4].copy_from_slice(&flow.local.port().to_be_bytes());
        len += 4;
    }
    SipHasher13::new_with_keys(keys.0, keys.1).hash(&buf[..len])
}

/// Writes a family tag and the address bytes at `at`; returns the new end.
#[inline]
fn put_ip(buf: &mut [u8; 38], at: usize, ip: IpAddr) -> usize {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            buf[at] = 4;
            buf[at + 1..at + 5].copy_from_slice(&a.octets());
            at + 5
        }
        IpAddr::V6(a) => {
            buf[at] = 6;
            buf[at + 1..at + 17].copy_from_slice(&a.octets());
            at + 17
        }
    }
}
