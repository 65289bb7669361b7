//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), weighted the way Cilium weights it.
//!
//! A [`MaglevTable`] has `M` entries (`M` prime); each entry is the index of a backend in the
//! list the caller passed to [`build`]. A flow picks its backend with
//! `table[flow_hash % M]` ([`MaglevTable::lookup`]), which allocates nothing.
//!
//! Contract and invariants:
//! - **Same table on every node.** The table depends only on the *set* of `(key, weight)`
//!   pairs, `M` and the cluster-wide `seed`: not on the order of the list, the process, the node
//!   or the Rust version. Permutations come from [`hash_bytes`], a hash defined in this file
//!   (never std's `DefaultHasher`/`RandomState`, whose output may change), and backends take
//!   turns in the order of their [`BackendKey::to_bytes`] encoding. So a flow that enters the
//!   cluster through any node lands on the same backend.
//! - **Weights.** A backend of weight `w` owns about `w / Σw` of the entries: fewer than one
//!   entry above its exact share `M·w/Σw` (a backend claims only while under its share), hence
//!   fewer than `N - 1` below (the others' excess is what it lacks); in practice within one or
//!   two. Weight 0 means "not selectable" (e.g. terminating): such a backend
//!   owns no entry. When every weight is 0 (or the list is empty) the table is empty and every
//!   lookup returns `None`.
//! - **Equal weights are classic Maglev**: each of `N` backends owns `⌊M/N⌋` or `⌈M/N⌉` entries.
//! - **Minimal disruption, not zero.** Removing a backend moves its own entries plus a small
//!   fraction of the others. Measured at `M` = 16381 (test `disruption_survey`): a mean of
//!   ~0.5 % of the table for N = 10, ~1.0 % for N = 50, ~1.3 % for N = 100, with rare cases
//!   up to ~2.6 %. Cilium's "M > 100·N keeps changes near 1 %" is a rule of thumb for the mean;
//!   a larger prime `M` lowers it.
//! - **Validation.** `M` must be prime (so every skip is coprime with `M` and each permutation
//!   visits every entry), at most [`MAX_M`], and larger than the number of backends; keys must
//!   be distinct. Anything else is a [`MaglevError`], never a panic.
//!
//! Algorithm: backend `i` has the permutation `p_i(j) = (offset_i + j · skip_i) mod M` with
//! `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, where `h1`, `h2` are two seeded hashes of the
//! backend's key. Backends take turns in key order; on its turn a backend claims the first entry
//! of its permutation that is still free. With weights, a backend whose claimed share is already
//! at or above its weighted share sits its turn out. Building is O(M log M) probes for equal
//! weights (the coupon-collector tail of the permutations), plus O(N) per entry at worst for the
//! weighted turn search; it runs once per service update, on the control path.

use std::fmt;
use std::net::IpAddr;

/// The table size Cilium uses by default (`--bpf-lb-maglev-table-size`); prime.
pub const DEFAULT_M: usize = 16381;

/// Largest accepted table size: 2^24 entries (32 MiB per service) is far beyond any sane
/// configuration and keeps every intermediate product inside `u64`.
pub const MAX_M: usize = 1 << 24;

/// Most backends a table can index: entries are `u16` and `u16::MAX` marks a free entry.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Marks an entry not yet claimed while building. Never present in a finished table.
const EMPTY: u16 = u16::MAX;

/// Salt mixed into the seed for the second (skip) hash, so `h1` and `h2` are independent.
const SKIP_SEED_SALT: u64 = 0x5bd1_e995_7f4a_7c15;

/// The identity of a backend for Maglev: its address and port. Two nodes that know the same
/// backend derive the same key, hence the same permutation.
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

    /// Canonical encoding, hashed for the permutation and compared for the turn order:
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
    let turn_order = selectable_in_key_order(backends)?;
    if turn_order.is_empty() {
        return Ok(MaglevTable::empty());
    }
    let mut players: Vec<Player> = turn_order
        .iter()
        .map(|&(index, key, weight)| Player::new(index, &key, weight, m, seed))
        .collect();
    let entries = fill(&mut players, m);
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

/// One backend while the table is being filled: where it is in its permutation, and how many
/// entries it has claimed.
struct Player {
    index: u16,
    weight: u64,
    /// Current position in the permutation, always `< M`.
    position: usize,
    /// `skip_i`, in `1..M`.
    skip: usize,
    claimed: u64,
}

impl Player {
    fn new(index: u16, key: &BackendKey, weight: u16, m: usize, seed: u64) -> Player {
        let bytes = key.to_bytes();
        let h1 = hash_bytes(&bytes, seed);
        let h2 = hash_bytes(&bytes, seed ^ SKIP_SEED_SALT);
        let m64 = m as u64;
        Player {
            index,
            weight: u64::from(weight),
            position: (h1 % m64) as usize,
            skip: (h2 % (m64 - 1) + 1) as usize,
            claimed: 0,
        }
    }

    /// True when this backend's share after `filled + 1` entries would still be at most its
    /// weighted share: `claimed / (filled + 1) < weight / total`.
    fn may_claim(&self, filled: u64, total_weight: u64) -> bool {
        // claimed ≤ M ≤ 2^24, total ≤ 2^16 · 2^16: the products stay below 2^56.
        self.claimed * total_weight < (filled + 1) * self.weight
    }

    /// Walks the permutation to the first free entry and claims it. The permutation visits every
    /// entry once (skip is coprime with the prime M) and a free entry exists whenever this is
    /// called, so the walk ends within `M` steps.
    fn claim_next_free(&mut self, entries: &mut [u16]) {
        let m = entries.len();
        for _ in 0..m {
            let slot = self.position;
            self.position += self.skip;
            if self.position >= m {
                self.position -= m;
            }
            if let Some(entry) = entries.get_mut(slot) {
                if *entry == EMPTY {
                    *entry = self.index;
                    self.claimed += 1;
                    return;
                }
            }
        }
    }
}

/// Fills all `m` entries; `players` is non-empty, in key order, every weight > 0.
fn fill(players: &mut [Player], m: usize) -> Box<[u16]> {
    let mut entries = vec![EMPTY; m].into_boxed_slice();
    let total_weight: u64 = players.iter().map(|p| p.weight).sum();
    let n = players.len();
    let mut turn = 0usize;
    for filled in 0..m as u64 {
        let chosen = next_eligible(players, turn, filled, total_weight);
        if let Some(player) = players.get_mut(chosen) {
            player.claim_next_free(&mut entries);
        }
        turn = (chosen + 1) % n;
    }
    entries
}

/// The first player from `turn` on (round robin) that may claim another entry. One always
/// exists: if none could, `Σ claimed · W ≥ (filled + 1) · Σ w` would give `filled ≥ filled + 1`.
fn next_eligible(players: &[Player], turn: usize, filled: u64, total_weight: u64) -> usize {
    let n = players.len();
    (0..n)
        .map(|step| (turn + step) % n)
        .find(|&i| {
            players
                .get(i)
                .is_some_and(|p| p.may_claim(filled, total_weight))
        })
        .unwrap_or(turn)
}

/// A seeded 64-bit hash of `bytes`, defined here so that its output is the same on every node,
/// build and Rust version. Not cryptographic; for Maglev permutations and flow hashes.
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
        // A table small enough to read: guards the permutation, the turn order and the hash.
        // Cross-checked against an independent (Python) model of the paper's pseudocode.
        let backends = equal(&[1, 2, 3]);
        let table = build(&backends, 13, SEED).unwrap();
        assert_eq!(table.entries(), &[1, 2, 0, 1, 0, 1, 2, 0, 0, 2, 2, 1, 0]);
        // The same set listed in another order names the same keys.
        let reversed: Vec<_> = backends.iter().rev().copied().collect();
        let table = build(&reversed, 13, SEED).unwrap();
        assert_eq!(table.entries(), &[1, 0, 2, 1, 2, 1, 0, 2, 2, 0, 0, 1, 2]);
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

    #[test]
    fn disruption_survey() {
        // Deterministic inputs, so this cannot flake. Measured: removing one of N equal backends
        // moves, besides its own entries, a mean of about 0.5 % (N=10), 1.0 % (N=50) and 1.3 %
        // (N=100) of a 16381-entry table. Cilium's "M > 100 N keeps changes under 1 %" is a rule
        // of thumb for the mean, not a bound: single cases reach 2-2.6 %.
        for (n, mean_limit) in [(10u32, 0.8), (50, 1.3), (100, 1.6)] {
            let trials = 8u32;
            let mut total = 0usize;
            let mut worst = 0usize;
            for t in 0..trials {
                let ids: Vec<u32> = (0..n).map(|i| i * 7919 + t * 104_729).collect();
                let c = collateral_after_removal(&equal(&ids), (t * 13 % n) as usize, u64::from(t));
                total += c;
                worst = worst.max(c);
            }
            let pct = |x: f64| 100.0 * x / DEFAULT_M as f64;
            let mean = pct(total as f64 / f64::from(trials));
            println!(
                "maglev removal of 1 of {n}: collateral mean {mean:.2} %, worst {:.2} %",
                pct(worst as f64)
            );
            assert!(mean <= mean_limit, "N={n}: mean collateral {mean:.2} %");
            assert!(pct(worst as f64) <= 3.0, "N={n}: worst collateral");
        }
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
        fn removing_a_backend_moves_little(
            ids in distinct_ids(2..=100),
            pick in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let before = equal(&ids);
            let gone = pick.index(before.len());
            let collateral = collateral_after_removal(&before, gone, seed);
            // Classic Maglev's collateral is ~1 % of M on average here, with a tail near 2.6 %
            // over thousands of trials (see `disruption_survey`); 4 % is beyond that tail yet
            // far below what an order- or index-dependent permutation would cause (tens of %).
            prop_assert!(
                collateral * 100 <= 4 * DEFAULT_M,
                "{} of {} entries of surviving backends moved", collateral, DEFAULT_M
            );
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
                // Proven bounds (module doc): under one entry above, under N - 1 below.
                let c = c as f64;
                let n = backends.len() as f64;
                prop_assert!(c < exact + 1.0, "backend {}: {} entries, exact share {}", i, c, exact);
                prop_assert!(c > exact - (n - 1.0).max(1.0), "backend {}: {} entries, exact share {}", i, c, exact);
            }
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
}
