//! Maglev-style lookup table for service load balancing: a table of `M` entries, each naming a
//! backend, looked up with `table[flow_hash % M]` as in Maglev (Eisenbud et al., NSDI 2016),
//! but filled by a capacitated rendezvous assignment instead of Maglev's permutation turns, so
//! that a backend-set change disturbs fewer flows.
//!
//! A [`MaglevTable`] has `M` entries (`M` prime); each entry is the index of a backend in the
//! list the caller passed to [`build`]. A flow picks its backend with
//! `table[flow_hash % M]` ([`MaglevTable::lookup`]), which allocates nothing.
//!
//! Contract and invariants:
//! - **Same table on every node.** The table depends only on the *set* of `(key, weight)`
//!   pairs, `M` and the cluster-wide `seed`: not on the order of the list, the process, the node,
//!   the history of updates or the Rust version. Affinities come from [`hash_bytes`], a hash
//!   defined in this file (never std's `DefaultHasher`/`RandomState`, whose output may change),
//!   and the rare ties are broken by the [`BackendKey::to_bytes`] encoding. So a flow that
//!   enters the cluster through any node lands on the same backend.
//! - **Weights.** A backend of weight `w` owns exactly its share `M·w/Σw` rounded down or up
//!   (largest-remainder rounding), so less than one entry from it. Weight 0 means "not
//!   selectable" (e.g. terminating): such a backend owns no entry. When every weight is 0 (or
//!   the list is empty) the table is empty and every lookup returns `None`.
//! - **Equal weights share evenly**: each of `N` backends owns `⌊M/N⌋` or `⌈M/N⌉` entries, as
//!   in classic Maglev.
//! - **Small disruption, not zero.** Removing a backend moves its own entries plus a small
//!   fraction of the others; adding one moves the entries it takes plus a small fraction.
//!   Measured at `M` = 16381 over 200 random cases per `N` (test `disruption_survey_wide`), the
//!   entries that move between *surviving* backends on a removal are a mean of 0.34 % of the
//!   table for N = 5, 0.48 % for N = 10, 0.61 % for N = 50 and 0.69 % for N = 100, and at
//!   most 0.92 % in about 8,000 cases (N = 2 to 100); adding a backend measures the same. Classic Maglev, which
//!   this module used before, measured 0.5 %, 1.0 % and 1.3 % means for N = 10, 50 and 100 with
//!   cases up to 2.6-3.5 %.
//! - **Validation.** `M` must be prime (kept from Maglev, where it made every permutation visit
//!   every entry, so existing configurations stay valid), at most [`MAX_M`], and larger than
//!   the number of backends; keys must be distinct. Anything else is a [`MaglevError`], never a
//!   panic.
//!
//! Algorithm. Every (entry, backend) pair has an *affinity*: a seeded pseudo-random function of
//! the backend's key and the entry number. Every backend has a *capacity*: its weighted share
//! of `M`, rounded as above. The table is the one assignment of entries to backends, within the
//! capacities, that is *stable*: no entry and backend both prefer each other (by affinity) to
//! what they got. Because both sides rank by the same number, there is exactly one stable
//! assignment, the one a greedy pass over all pairs by decreasing affinity produces; it is
//! computed by deferred acceptance (Gale-Shapley) with entries proposing, which gives the same
//! result whatever the order of the proposals.
//!
//! Why: without capacities this is rendezvous (highest-random-weight) hashing, where removing
//! a backend moves only its own entries but the shares are only binomially balanced (a standard deviation of 8 % at
//! N = 100). The capacities make the shares exact; the price is that a change of the set shifts
//! every capacity by an entry or two, and those small shifts, not a reshuffle, are what move
//! the other backends' entries. Maglev's turn-taking, by contrast, lets one removal change the
//! order in which every later entry is claimed.
//!
//! Cost: `M·N` affinities (one 64-bit mix each) to find each entry's favourite backend, plus
//! `N` per rejected proposal (about 0.2·M of them at N = 100) and a heap operation per
//! proposal. About 1 ms for N = 10 and 5 ms for N = 100 at `M` = 16381 in a release build; it
//! grows with `M·N` (for N in the thousands use `M` near 100·N and expect tens of ms to
//! seconds), and runs once per service update, on the control path.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::IpAddr;

/// The seed of the daemon's table (`flagella-dataplane`). It must be the same on every node so
/// that a flow picks the same backend wherever it lands (a constant until the control process
/// distributes one); with it, an offline replay (`flagella replay`) picks what the daemon does.
pub const DAEMON_SEED: u64 = 0x666c_6167_656c_6c61; // "flagella"

/// The table size Cilium uses by default (`--bpf-lb-maglev-table-size`); prime.
pub const DEFAULT_M: usize = 16381;

/// Largest accepted table size: 2^24 entries (32 MiB per service) is far beyond any sane
/// configuration and keeps every intermediate product inside `u64`.
pub const MAX_M: usize = 1 << 24;

/// Most backends a table can index: entries are `u16` and `u16::MAX` marks a free entry.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Marks an entry not yet claimed while building. Never present in a finished table.
const EMPTY: u16 = u16::MAX;

/// Salt mixed into the seed for the tie-breaking hash, so it is independent of the affinities.
const TIE_SEED_SALT: u64 = 0x5bd1_e995_7f4a_7c15;

/// The identity of a backend for Maglev: its address and port. Two nodes that know the same
/// backend derive the same key, hence the same affinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl BackendKey {
    /// Length of [`BackendKey::to_bytes`].
    pub const ENCODED_LEN: usize = 19;

    pub fn new(addr: IpAddr, port: u16) -> BackendKey {
        BackendKey { addr, port }
    }

    /// Canonical encoding, hashed for the affinities and compared to break ties:
    /// `[family (4 or 6)] [address octets, IPv4 zero-padded to 16] [port, big endian]`.
    /// Part of the cross-node agreement: changing it changes every table.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (family, octets) = match self.addr {
            IpAddr::V4(a) => {
                let mut padded = [0u8; 16];
                padded[..4].copy_from_slice(&a.octets());
                (4u8, padded)
            }
            IpAddr::V6(a) => (6u8, a.octets()),
        };
        out[0] = family;
        out[1..17].copy_from_slice(&octets);
        out[17..].copy_from_slice(&self.port.to_be_bytes());
        out
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error(
        "Maglev table size {m} is not prime; use a prime such as 16381 (the default), 32749 or \
         65521"
    )]
    NotPrime { m: usize },
    #[error(
        "Maglev table size {m} is larger than the supported maximum {max}; use a smaller prime"
    )]
    TooLarge { m: usize, max: usize },
    #[error(
        "{backends} backends do not fit a Maglev table of size {m} (at most {max}); use fewer \
         backends or a prime table size above 100 x backends"
    )]
    TooManyBackends {
        backends: usize,
        m: usize,
        max: usize,
    },
    #[error("backend {key} is listed twice; list each address:port once and use its weight")]
    DuplicateBackend { key: BackendKey },
}

/// A finished lookup table: `M` backend indices, or no entry at all when nothing is selectable.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    entries: Box<[u16]>,
}

impl MaglevTable {
    /// The table with no selectable backend: every lookup returns `None`.
    pub fn empty() -> MaglevTable {
        MaglevTable {
            entries: Box::new([]),
        }
    }

    /// The backend index (into the list given to [`build`]) for a flow hash; `None` when the
    /// table is empty. Fast path: one modulo and one load.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        let len = self.entries.len() as u64;
        if len == 0 {
            return None;
        }
        let slot = (hash % len) as usize;
        self.entries.get(slot).copied().filter(|&i| i != EMPTY)
    }

    /// All entries, in slot order (`M` of them, or none).
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// Number of entries: `M`, or 0 when nothing is selectable.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap and inline bytes this table holds.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val::<[u16]>(&self.entries)
    }
}

impl fmt::Debug for MaglevTable {
    // The entries are thousands of numbers; their count is what a log reader needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("len", &self.entries.len())
            .finish()
    }
}

/// True when `m` is prime (trial division; `m` ≤ [`MAX_M`] keeps this under 4k divisions).
pub fn is_prime(m: usize) -> bool {
    if m < 2 {
        return false;
    }
    if m % 2 == 0 {
        return m == 2;
    }
    let mut d = 3usize;
    while d.saturating_mul(d) <= m {
        if m % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks that `m` is usable as a table size.
pub fn validate_m(m: usize) -> Result<(), MaglevError> {
    if m > MAX_M {
        return Err(MaglevError::TooLarge { m, max: MAX_M });
    }
    if !is_prime(m) {
        return Err(MaglevError::NotPrime { m });
    }
    Ok(())
}

/// Most backends (selectable or not) a table of size `m` accepts: fewer than `m`, and no more
/// than a `u16` index can name.
pub fn max_backends(m: usize) -> usize {
    m.saturating_sub(1).min(MAX_BACKENDS)
}

/// Builds the table for `backends` (key, weight); entry values are indices into `backends`.
/// See the module doc for the guarantees. Control path: allocates `M` entries.
pub fn build(
    backends: &[(BackendKey, u16)],
    m: usize,
    seed: u64,
) -> Result<MaglevTable, MaglevError> {
    validate_m(m)?;
    let max = max_backends(m);
    if backends.len() > max {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            m,
            max,
        });
    }
    let selectable = selectable_in_key_order(backends)?;
    if selectable.is_empty() {
        return Ok(MaglevTable::empty());
    }
    let mut bidders: Vec<Bidder> = selectable
        .iter()
        .map(|&(index, key, weight)| Bidder::new(index, &key, weight, seed))
        .collect();
    apportion(&mut bidders, m);
    let entries = assign(&bidders, m);
    Ok(MaglevTable { entries })
}

/// `(index into backends, key, weight)` of the selectable backends, sorted by encoded key.
/// Errors on a duplicate key (among all backends, selectable or not: which of the two counts
/// would otherwise depend on list order).
fn selectable_in_key_order(
    backends: &[(BackendKey, u16)],
) -> Result<Vec<(u16, BackendKey, u16)>, MaglevError> {
    // `backends.len() <= MAX_BACKENDS` was checked, so every index fits a u16.
    let mut sorted: Vec<(u16, [u8; BackendKey::ENCODED_LEN], BackendKey, u16)> = backends
        .iter()
        .zip(0u16..)
        .map(|(&(key, weight), index)| (index, key.to_bytes(), key, weight))
        .collect();
    sorted.sort_unstable_by_key(|entry| entry.1);
    if let Some(pair) = sorted.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(MaglevError::DuplicateBackend { key: pair[0].2 });
    }
    Ok(sorted
        .into_iter()
        .filter(|&(_, _, _, weight)| weight > 0)
        .map(|(index, _, key, weight)| (index, key, weight))
        .collect())
}

/// One selectable backend while the table is being built.
struct Bidder {
    /// Index into the caller's list: the value its entries hold.
    index: u16,
    weight: u64,
    /// Seeded hash of the key: the backend's affinity for every entry derives from it.
    key_hash: u64,
    /// Second seeded hash of the key: breaks ties when handing out the rounding remainder.
    tie_hash: u64,
    /// Entries this backend owns in the finished table (set by [`apportion`]).
    capacity: usize,
}

impl Bidder {
    fn new(index: u16, key: &BackendKey, weight: u16, seed: u64) -> Bidder {
        let bytes = key.to_bytes();
        Bidder {
            index,
            weight: u64::from(weight),
            key_hash: hash_bytes(&bytes, seed),
            tie_hash: hash_bytes(&bytes, seed ^ TIE_SEED_SALT),
            capacity: 0,
        }
    }
}

/// How strongly `slot` and the backend whose key hashes to `key_hash` attract each other;
/// higher wins. A fixed pseudo-random function of the pair, the same on every node.
#[inline]
fn affinity(key_hash: u64, slot: usize) -> u64 {
    avalanche(key_hash ^ (slot as u64 + 1).wrapping_mul(GOLDEN))
}

/// An entry's claim on a backend. Entries rank backends by `affinity`; the two-in-2^64 chance
/// of equal affinities goes to the backend later in key order, a rule that, like the affinity,
/// does not depend on the list (`bidder` is the position in key order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Offer {
    affinity: u64,
    bidder: usize,
}

/// The best offer `slot` can make among the backends it ranks strictly below `below` (all of
/// them when `below` is `None`); `None` when there is none left.
fn best_offer(bidders: &[Bidder], slot: usize, below: Option<Offer>) -> Option<Offer> {
    // Plain loops on plain integers: this runs M·N times per build (debug-build tests wait on
    // it too). `>=` hands ties to the later bidder, as `Offer`'s order does.
    let (limit_affinity, limit_bidder) =
        below.map_or((u64::MAX, usize::MAX), |o| (o.affinity, o.bidder));
    let mut best: Option<Offer> = None;
    let mut best_affinity = 0u64;
    for (bidder, b) in bidders.iter().enumerate() {
        let affinity = affinity(b.key_hash, slot);
        let under_limit = affinity < limit_affinity
            || (affinity == limit_affinity && bidder < limit_bidder)
            || below.is_none();
        if under_limit && (best.is_none() || affinity >= best_affinity) {
            best_affinity = affinity;
            best = Some(Offer { affinity, bidder });
        }
    }
    best
}

/// Sets every capacity to the backend's weighted share of `m`, rounded by largest remainder
/// (Hamilton): `⌊m·w/W⌋`, plus one for the `m - Σ⌊m·w/W⌋ < N` backends with the largest
/// remainders `m·w mod W`, ties by `tie_hash` then key order. So each capacity is within one
/// entry of `m·w/W`, and they sum to `m`. `bidders` is non-empty, every weight > 0.
fn apportion(bidders: &mut [Bidder], m: usize) {
    let total: u64 = bidders.iter().map(|b| b.weight).sum();
    let m64 = m as u64;
    // m ≤ 2^24 and w ≤ 2^16: m·w < 2^40, no overflow; the quotient is at most m.
    let mut assigned = 0usize;
    for bidder in bidders.iter_mut() {
        bidder.capacity = (m64 * bidder.weight / total) as usize;
        assigned += bidder.capacity;
    }
    let mut by_remainder: Vec<(u64, u64, usize)> = bidders
        .iter()
        .enumerate()
        .map(|(position, b)| (m64 * b.weight % total, b.tie_hash, position))
        .collect();
    by_remainder.sort_unstable_by(|a, b| b.cmp(a));
    for &(_, _, position) in by_remainder.iter().take(m.saturating_sub(assigned)) {
        if let Some(bidder) = bidders.get_mut(position) {
            bidder.capacity += 1;
        }
    }
}

/// The entries a backend holds while the table is being built, weakest on top.
struct Holding {
    capacity: usize,
    /// `(affinity, slot)`; a backend prefers higher affinity, then the higher slot.
    slots: BinaryHeap<Reverse<(u64, u32)>>,
}

/// A backend's answer to an offer.
enum Reply {
    Accepted,
    /// Accepted in place of this (weaker) slot, which must now offer elsewhere.
    Displaced(u32),
    Rejected,
}

impl Holding {
    fn new(capacity: usize) -> Holding {
        Holding {
            capacity,
            slots: BinaryHeap::with_capacity(capacity),
        }
    }

    /// Keeps the `capacity` strongest offers seen so far.
    fn offer(&mut self, affinity: u64, slot: u32) -> Reply {
        if self.slots.len() < self.capacity {
            self.slots.push(Reverse((affinity, slot)));
            return Reply::Accepted;
        }
        match self.slots.peek_mut() {
            Some(mut weakest) if weakest.0 < (affinity, slot) => {
                let displaced = weakest.0 .1;
                *weakest = Reverse((affinity, slot));
                Reply::Displaced(displaced)
            }
            _ => Reply::Rejected,
        }
    }
}

/// Builds the entries: the stable assignment of the `m` slots to `bidders` (non-empty, in key
/// order, capacities summing to `m`), computed by deferred acceptance with slots proposing.
///
/// Each slot offers itself to the backends in decreasing affinity; a backend keeps its
/// `capacity` strongest offers and sends the weakest away, which then offers itself to its
/// next backend. Both sides rank by the same affinity, so the stable assignment is unique: it
/// is what a greedy pass over all (slot, backend) pairs by decreasing affinity would produce,
/// whatever the order in which slots make their offers.
fn assign(bidders: &[Bidder], m: usize) -> Box<[u16]> {
    let mut holdings: Vec<Holding> = bidders.iter().map(|b| Holding::new(b.capacity)).collect();
    // The offer each slot made last (the one that placed it, once it is placed).
    let mut last_offer = vec![None::<Offer>; m];
    for first in 0..m {
        let mut slot = first;
        let mut below = None;
        // A slot is rejected only by a full backend. Were it rejected by all of them, the
        // other slots would fill every capacity: `m` slots besides itself, but there are only
        // `m - 1`. So `best_offer` finds a backend for every slot, and each slot makes at most
        // N offers: the loop ends.
        while let Some(offer) = best_offer(bidders, slot, below) {
            if let Some(entry) = last_offer.get_mut(slot) {
                *entry = Some(offer);
            }
            // m ≤ MAX_M = 2^24: every slot number fits a u32.
            let reply = holdings
                .get_mut(offer.bidder)
                .map_or(Reply::Rejected, |h| h.offer(offer.affinity, slot as u32));
            match reply {
                Reply::Accepted => break,
                Reply::Displaced(weaker) => {
                    slot = weaker as usize;
                    below = last_offer.get(slot).copied().flatten();
                }
                Reply::Rejected => below = Some(offer),
            }
        }
    }
    let mut entries = vec![EMPTY; m].into_boxed_slice();
    for (bidder, holding) in bidders.iter().zip(&holdings) {
        for &Reverse((_, slot)) in holding.slots.iter() {
            if let Some(entry) = entries.get_mut(slot as usize) {
                *entry = bidder.index;
            }
        }
    }
    entries
}

/// A seeded 64-bit hash of `bytes`, defined here so that its output is the same on every node,
/// build and Rust version. Not cryptographic; for table affinities and flow hashes.
///
/// Words of 8 bytes (little endian, the tail zero-padded; the length is folded into the initial
/// state so padding cannot collide) are absorbed into a state that starts from the seed; each
/// word and the final state pass through a 64-bit avalanche finalizer.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut state = avalanche(seed ^ GOLDEN.wrapping_mul(bytes.len() as u64 + 1));
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        state = absorb(state, u64::from_le_bytes(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        state = absorb(state, u64::from_le_bytes(w));
    }
    avalanche(state)
}

/// 2^64 / φ, an odd constant with well-spread bits.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn absorb(state: u64, word: u64) -> u64 {
    (state ^ avalanche(word ^ GOLDEN))
        .rotate_left(29)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9)
        .wrapping_add(GOLDEN)
}

/// The 64-bit finalizer from MurmurHash3: every input bit affects every output bit.
#[inline]
fn avalanche(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SEED: u64 = 0x0123_4567_89ab_cdef;

    fn v4_key(n: u32, port: u16) -> BackendKey {
        BackendKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)), port)
    }

    /// Equal-weight backends 10.0.x.y:8080 from distinct numbers.
    fn equal(ids: &[u32]) -> Vec<(BackendKey, u16)> {
        ids.iter().map(|&n| (v4_key(n, 8080), 1)).collect()
    }

    /// Entry counts per backend index.
    fn counts(table: &MaglevTable, n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &e in table.entries() {
            c[e as usize] += 1;
        }
        c
    }

    /// The table as keys, so tables built from differently ordered lists can be compared.
    fn as_keys(table: &MaglevTable, backends: &[(BackendKey, u16)]) -> Vec<BackendKey> {
        table
            .entries()
            .iter()
            .map(|&e| backends[e as usize].0)
            .collect()
    }

    #[test]
    fn hash_golden_values() {
        // These values are part of the cross-node contract: if this test fails, nodes running
        // the old and new code would pick different backends for the same flow. They were
        // cross-checked against an independent (Python) model of `hash_bytes`.
        assert_eq!(hash_bytes(b"", 0), 0x6393_d51c_06c6_18dc);
        assert_eq!(hash_bytes(b"flagella", 0), 0xd092_bc92_c0ec_5ec9);
        assert_eq!(hash_bytes(b"flagella", 1), 0x52ec_2db8_29f8_8ecf);
        assert_eq!(
            hash_bytes(&v4_key(1, 80).to_bytes(), SEED),
            0x8520_944a_c258_20d2
        );
    }

    #[test]
    fn hash_depends_on_length_seed_and_every_byte() {
        assert_ne!(hash_bytes(b"a", 7), hash_bytes(b"a\0", 7));
        assert_ne!(hash_bytes(b"abc", 7), hash_bytes(b"abc", 8));
        let base = [0u8; 19];
        for i in 0..base.len() {
            let mut other = base;
            other[i] = 1;
            assert_ne!(hash_bytes(&base, 7), hash_bytes(&other, 7), "byte {i}");
        }
    }

    #[test]
    fn key_encoding_golden() {
        let k = BackendKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 0x1f90);
        let mut want = [0u8; 19];
        want[0] = 4;
        want[1..5].copy_from_slice(&[10, 0, 0, 1]);
        want[17..].copy_from_slice(&[0x1f, 0x90]);
        assert_eq!(k.to_bytes(), want);
        let k6 = BackendKey::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 443);
        assert_eq!(k6.to_bytes()[0], 6);
        assert_eq!(k6.to_bytes()[16], 1);
        assert_eq!(k6.to_string(), "[::1]:443");
        assert_eq!(k.to_string(), "10.0.0.1:8080");
    }

    #[test]
    fn small_table_golden() {
        // A table small enough to read: guards the affinity, the rounding and the hash.
        // Cross-checked against an independent (Python) model that runs the greedy over all
        // (slot, backend) pairs sorted by affinity.
        let backends = equal(&[1, 2, 3]);
        let table = build(&backends, 13, SEED).unwrap();
        assert_eq!(table.entries(), &[1, 0, 2, 0, 2, 1, 0, 2, 1, 0, 0, 2, 1]);
        // The same set listed in another order names the same keys.
        let reversed: Vec<_> = backends.iter().rev().copied().collect();
        let table = build(&reversed, 13, SEED).unwrap();
        assert_eq!(table.entries(), &[1, 2, 0, 2, 0, 1, 2, 0, 1, 2, 2, 0, 1]);
        // Weights 1:2:3 of 13 entries: 2.17, 4.33, 6.5 round to 2, 4, 7 (largest remainder).
        let weighted: Vec<_> = backends
            .iter()
            .zip(1..)
            .map(|(&(k, _), w)| (k, w))
            .collect();
        let table = build(&weighted, 13, SEED).unwrap();
        assert_eq!(table.entries(), &[1, 2, 2, 2, 2, 1, 0, 2, 1, 2, 0, 2, 1]);
    }

    #[test]
    fn primes() {
        let primes: Vec<usize> = (0..40).filter(|&m| is_prime(m)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
        for m in [
            251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
        ] {
            assert!(is_prime(m), "{m}");
        }
        assert!(!is_prime(16383)); // 3 * 43 * 127
        assert!(!is_prime(65537 * 3));
    }

    #[test]
    fn rejects_bad_sizes_and_lists() {
        let one = equal(&[1]);
        assert_eq!(
            build(&one, 16383, SEED),
            Err(MaglevError::NotPrime { m: 16383 })
        );
        assert_eq!(build(&one, 0, SEED), Err(MaglevError::NotPrime { m: 0 }));
        assert_eq!(build(&one, 1, SEED), Err(MaglevError::NotPrime { m: 1 }));
        assert!(matches!(
            build(&one, MAX_M + 1, SEED),
            Err(MaglevError::TooLarge { .. })
        ));
        // M must exceed N.
        let seven = equal(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            build(&seven, 7, SEED),
            Err(MaglevError::TooManyBackends {
                backends: 7,
                m: 7,
                max: 6
            })
        );
        assert!(build(&seven, 11, SEED).is_ok());
        let dup = vec![(v4_key(1, 80), 1), (v4_key(2, 80), 1), (v4_key(1, 80), 0)];
        assert_eq!(
            build(&dup, 13, SEED),
            Err(MaglevError::DuplicateBackend { key: v4_key(1, 80) })
        );
        // Same address, different port: distinct backends.
        assert!(build(&[(v4_key(1, 80), 1), (v4_key(1, 81), 1)], 13, SEED).is_ok());
    }

    #[test]
    fn zero_weights_give_an_empty_table() {
        let none: Vec<(BackendKey, u16)> = Vec::new();
        let t = build(&none, DEFAULT_M, SEED).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.lookup(12345), None);
        let all_zero = vec![(v4_key(1, 80), 0), (v4_key(2, 80), 0)];
        let t = build(&all_zero, DEFAULT_M, SEED).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.lookup(0), None);
        assert_eq!(t.lookup(u64::MAX), None);
    }

    #[test]
    fn zero_weight_backend_owns_nothing() {
        let backends = vec![(v4_key(1, 80), 1), (v4_key(2, 80), 0), (v4_key(3, 80), 1)];
        let t = build(&backends, DEFAULT_M, SEED).unwrap();
        assert_eq!(t.len(), DEFAULT_M);
        let c = counts(&t, 3);
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], DEFAULT_M);
        assert!(c[0].abs_diff(c[2]) <= 1);
    }

    #[test]
    fn lookup_is_hash_mod_m() {
        let backends = equal(&[1, 2, 3, 4]);
        let t = build(&backends, 251, SEED).unwrap();
        for h in [0u64, 1, 250, 251, 252, u64::MAX] {
            assert_eq!(t.lookup(h), Some(t.entries()[(h % 251) as usize]));
        }
    }

    #[test]
    fn build_time_for_a_thousand_services() {
        // Not an assertion on time (CI machines vary): prints what 1k services x 10 backends
        // cost to build, so a regression is visible in `cargo test -- --nocapture`.
        let services = 100u32;
        let start = std::time::Instant::now();
        for s in 0..services {
            let ids: Vec<u32> = (0..10).map(|b| s * 16 + b).collect();
            let t = build(&equal(&ids), DEFAULT_M, SEED).unwrap();
            assert_eq!(t.len(), DEFAULT_M);
        }
        let per = start.elapsed() / services;
        println!(
            "maglev build: {per:?} per table (M={DEFAULT_M}, 10 backends); 1000 services ~ {:?}",
            per * 1000
        );
        let ids: Vec<u32> = (0..100).collect();
        let start = std::time::Instant::now();
        let t = build(&equal(&ids), DEFAULT_M, SEED).unwrap();
        assert_eq!(t.len(), DEFAULT_M);
        println!(
            "maglev build: {:?} for one table of 100 backends",
            start.elapsed()
        );
    }

    /// How many entries of backends other than `before[gone]` change owner when it is removed.
    fn collateral_after_removal(before: &[(BackendKey, u16)], gone: usize, seed: u64) -> usize {
        let mut after = before.to_vec();
        let removed = after.remove(gone).0;
        let old = as_keys(&build(before, DEFAULT_M, seed).unwrap(), before);
        let new = as_keys(&build(&after, DEFAULT_M, seed).unwrap(), &after);
        old.iter()
            .zip(&new)
            .filter(|(o, n)| **o != removed && o != n)
            .count()
    }

    /// How many entries change owner, other than those the new backend takes, when `added` joins.
    fn collateral_after_adding(
        before: &[(BackendKey, u16)],
        added: BackendKey,
        seed: u64,
    ) -> usize {
        let mut after = before.to_vec();
        after.push((added, 1));
        let old = as_keys(&build(before, DEFAULT_M, seed).unwrap(), before);
        let new = as_keys(&build(&after, DEFAULT_M, seed).unwrap(), &after);
        old.iter()
            .zip(&new)
            .filter(|(o, n)| **n != added && o != n)
            .count()
    }

    /// Mean and worst collateral, in % of `DEFAULT_M`, of removing one of `n` equal backends and
    /// of adding an `n + 1`th, over `trials` deterministic pseudo-random cases.
    fn survey(n: usize, trials: u64) -> ((f64, f64), (f64, f64)) {
        let pct = |x: f64| 100.0 * x / DEFAULT_M as f64;
        let (mut removal, mut adding) = ((0usize, 0usize), (0usize, 0usize));
        for t in 0..trials {
            let draw = |i: u64| avalanche(t.wrapping_mul(GOLDEN) ^ avalanche(i + 1));
            let mut ids: Vec<u32> = Vec::with_capacity(n);
            let mut i = 0;
            while ids.len() < n {
                let id = (draw(i) % 0x00ff_ffff) as u32;
                if !ids.contains(&id) {
                    ids.push(id);
                }
                i += 1;
            }
            let seed = draw(u64::MAX - 1);
            let before = equal(&ids);
            let gone = (draw(u64::MAX - 2) % n as u64) as usize;
            let c = collateral_after_removal(&before, gone, seed);
            removal = (removal.0 + c, removal.1.max(c));
            let mut newcomer = (draw(u64::MAX - 3) % 0x00ff_ffff) as u32;
            while ids.contains(&newcomer) {
                newcomer += 1;
            }
            let c = collateral_after_adding(&before, v4_key(newcomer, 8080), seed);
            adding = (adding.0 + c, adding.1.max(c));
        }
        let mean_worst =
            |(total, worst): (usize, usize)| (pct(total as f64 / trials as f64), pct(worst as f64));
        (mean_worst(removal), mean_worst(adding))
    }

    #[test]
    fn disruption_survey() {
        // Deterministic inputs, so this cannot flake. Measured over 200 cases per N by
        // `disruption_survey_wide`: removing one of N equal backends moves, besides its own
        // entries, a mean of 0.35 % (N=5), 0.48 % (N=10), 0.61 % (N=50) and 0.69 % (N=100) of
        // a 16381-entry table, at most 0.91 % (0.92 % in a longer survey).
        for (n, mean_limit) in [(5usize, 0.5), (10, 0.6), (50, 0.75), (100, 0.8)] {
            let ((mean, worst), (add_mean, add_worst)) = survey(n, 3);
            println!(
                "removal of 1 of {n}: collateral mean {mean:.2} %, worst {worst:.2} %; \
                 adding it back: mean {add_mean:.2} %, worst {add_worst:.2} %"
            );
            assert!(mean <= mean_limit, "N={n}: mean collateral {mean:.2} %");
            assert!(worst <= 1.0 && add_worst <= 1.0, "N={n}: worst collateral");
        }
    }

    #[test]
    #[ignore = "a survey of 1600 cases; minutes in a debug build (run with --release)"]
    fn disruption_survey_wide() {
        for n in [2usize, 5, 10, 20, 30, 50, 70, 100] {
            let ((mean, worst), (add_mean, add_worst)) = survey(n, 200);
            println!(
                "N={n:3}: removal mean {mean:.2} % worst {worst:.2} %; \
                 adding mean {add_mean:.2} % worst {add_worst:.2} %"
            );
            assert!(worst <= 1.0 && add_worst <= 1.0, "N={n}");
        }
    }

    /// The assignment by brute force: every (slot, backend) pair by decreasing (affinity, key
    /// order, slot), each taken when its slot is free and its backend has room left.
    fn greedy_reference(backends: &[(BackendKey, u16)], m: usize, seed: u64) -> Vec<u16> {
        let mut bidders: Vec<Bidder> = selectable_in_key_order(backends)
            .unwrap()
            .iter()
            .map(|&(index, key, weight)| Bidder::new(index, &key, weight, seed))
            .collect();
        if bidders.is_empty() {
            return Vec::new();
        }
        apportion(&mut bidders, m);
        let mut pairs: Vec<(u64, usize, usize)> = Vec::new();
        for (position, bidder) in bidders.iter().enumerate() {
            for slot in 0..m {
                pairs.push((affinity(bidder.key_hash, slot), position, slot));
            }
        }
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        let mut room: Vec<usize> = bidders.iter().map(|b| b.capacity).collect();
        let mut entries = vec![EMPTY; m];
        for (_, position, slot) in pairs {
            if entries[slot] == EMPTY && room[position] > 0 {
                entries[slot] = bidders[position].index;
                room[position] -= 1;
            }
        }
        entries
    }

    /// `n` distinct backend numbers.
    fn distinct_ids(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u32>> {
        prop::collection::hash_set(0u32..0x00ff_ffff, n).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        // Each case builds one or two tables of 16381 entries; 24 cases keep the file's tests
        // within a few seconds in a debug build.
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn equal_weights_share_evenly(ids in distinct_ids(1..=100), seed in any::<u64>()) {
            let n = ids.len();
            let t = build(&equal(&ids), DEFAULT_M, seed).unwrap();
            prop_assert_eq!(t.len(), DEFAULT_M);
            let ideal = DEFAULT_M as f64 / n as f64;
            for (i, &c) in counts(&t, n).iter().enumerate() {
                prop_assert!((c as f64 - ideal).abs() <= 0.01 * ideal, "backend {} has {}", i, c);
                // Classic Maglev: floor or ceil exactly.
                prop_assert!(c == DEFAULT_M / n || c == DEFAULT_M.div_ceil(n));
            }
        }

        #[test]
        fn weights_one_two_three(ids in distinct_ids(3..=3), seed in any::<u64>()) {
            let backends: Vec<(BackendKey, u16)> =
                ids.iter().zip([1u16, 2, 3]).map(|(&n, w)| (v4_key(n, 443), w)).collect();
            let t = build(&backends, DEFAULT_M, seed).unwrap();
            let c = counts(&t, 3);
            for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
                let share = c[i] as f64 / DEFAULT_M as f64;
                prop_assert!((share - want).abs() < 0.002, "backend {} share {}", i, share);
            }
        }

        #[test]
        fn any_weights_get_their_exact_share(
            ids in distinct_ids(1..=30),
            weights in prop::collection::vec(0u16..=1000, 30),
            seed in any::<u64>(),
        ) {
            let backends: Vec<(BackendKey, u16)> =
                ids.iter().zip(&weights).map(|(&n, &w)| (v4_key(n, 80), w)).collect();
            let t = build(&backends, DEFAULT_M, seed).unwrap();
            let total: u64 = backends.iter().map(|&(_, w)| u64::from(w)).sum();
            prop_assume!(total > 0);
            for (i, &c) in counts(&t, backends.len()).iter().enumerate() {
                let exact = DEFAULT_M as f64 * f64::from(backends[i].1) / total as f64;
                // Largest-remainder rounding: less than one entry from the exact share.
                prop_assert!((c as f64 - exact).abs() < 1.0, "backend {}: {} entries, exact share {}", i, c, exact);
            }
        }

        #[test]
        fn assignment_is_the_greedy_by_affinity(
            ids in distinct_ids(1..=20),
            weights in prop::collection::vec(0u16..4, 20),
            m in prop::sample::select(vec![13usize, 31, 251, 1021]),
            seed in any::<u64>(),
        ) {
            let backends: Vec<(BackendKey, u16)> =
                ids.iter().zip(&weights).map(|(&n, &w)| (v4_key(n, 80), w)).collect();
            prop_assume!(backends.len() < m);
            let t = build(&backends, m, seed).unwrap();
            let reference = greedy_reference(&backends, m, seed);
            prop_assert_eq!(t.entries(), reference.as_slice());
        }

        #[test]
        fn same_inputs_same_table(
            ids in distinct_ids(1..=50),
            weights in prop::collection::vec(0u16..5, 50),
            seed in any::<u64>(),
        ) {
            let backends: Vec<(BackendKey, u16)> =
                ids.iter().zip(&weights).map(|(&n, &w)| (v4_key(n, 80), w)).collect();
            prop_assert_eq!(
                build(&backends, DEFAULT_M, seed).unwrap(),
                build(&backends, DEFAULT_M, seed).unwrap()
            );
        }

        #[test]
        fn list_order_does_not_matter(
            (backends, shuffled) in distinct_ids(1..=50)
                .prop_flat_map(|ids| {
                    let b: Vec<(BackendKey, u16)> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| (v4_key(n, 80), (i % 4) as u16))
                        .collect();
                    (Just(b.clone()), Just(b).prop_shuffle())
                }),
            seed in any::<u64>(),
        ) {
            let a = build(&backends, DEFAULT_M, seed).unwrap();
            let b = build(&shuffled, DEFAULT_M, seed).unwrap();
            if a.is_empty() {
                prop_assert!(b.is_empty());
            } else {
                prop_assert_eq!(as_keys(&a, &backends), as_keys(&b, &shuffled));
            }
        }
    }

    proptest! {
        // The disruption bound is the point of this table's algorithm: more cases than above.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn removing_a_backend_moves_little(
            ids in distinct_ids(2..=100),
            pick in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let before = equal(&ids);
            let gone = pick.index(before.len());
            let collateral = collateral_after_removal(&before, gone, seed);
            // Measured (module doc): a mean of 0.3-0.7 % of M, at most 0.92 % in thousands
            // of cases; classic Maglev's tail reached 2.6-3.5 %.
            prop_assert!(
                collateral * 100 <= DEFAULT_M,
                "{} of {} entries of surviving backends moved", collateral, DEFAULT_M
            );
        }

        #[test]
        fn adding_a_backend_moves_little(
            ids in distinct_ids(2..=100),
            seed in any::<u64>(),
        ) {
            let (newcomer, before) = ids.split_first().unwrap();
            let collateral = collateral_after_adding(&equal(before), v4_key(*newcomer, 8080), seed);
            prop_assert!(
                collateral * 100 <= DEFAULT_M,
                "{} of {} entries moved between old backends", collateral, DEFAULT_M
            );
        }
    }
}
