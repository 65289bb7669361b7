//! Per-endpoint policy maps: (remote identity, protocol, destination port range) -> allow | deny.
//!
//! One [`EndpointPolicy`] per endpoint holds an ingress and an egress [`PolicyMap`]. A direction
//! that no policy selects is not enforced (everything is allowed); once any policy selects the
//! endpoint in a direction, that direction is default-deny and only the map's entries allow.
//!
//! # Keys
//! [`PolicyKey`] = (identity, protocol, port range). `Identity::ANY` (0) is the identity
//! wildcard, [`PROTO_ANY`] (0) the protocol wildcard; a key with the protocol wildcard always
//! covers every port (L3-only rule). For ICMP the "port" is the ICMP type.
//!
//! # Lookup precedence (the same as Cilium's `bpf/lib/policy.h`)
//! 1. Deny beats allow: if any entry matching the packet denies, the packet is denied, whatever
//!    the specificity of the allowing entries.
//! 2. Otherwise the most specific allow decides (it is the one reported, e.g. by `policy trace`):
//!    L3+L4 `(identity, proto, port)`, then L4-only `(ANY, proto, port)`, then L3-only
//!    `(identity, ANY)`, then allow-all `(ANY, ANY)`.
//! 3. No matching entry: denied when the direction is enforced.
//!
//! Within one (identity, protocol) group, overlapping port ranges are flattened on insert into
//! disjoint segments that already carry the resolved action. Segments of a single port (the
//! common case: `port: 80`) go into one open-addressing table keyed by (identity, protocol,
//! port) for the whole policy map (whose slots a batch can prefetch); only wider segments stay in the group, for a binary search. Since a group's
//! segments are disjoint, a class's answer is its exact-port entry if there is one, else its
//! wide segment covering the port: a lookup is at most four classes of one hash probe each
//! (two where the class has wide segments: the group probe and its binary search), and
//! allocates nothing. Inserts and removals rebuild only the affected group, once per batch
//! ([`PolicyMap::apply_batch`]), with a sweep over its boundaries (O(R log R) for R ranges).

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::{HashMap, HashSet};

use crate::types::Identity;

/// Protocol wildcard in a [`PolicyKey`]: not a protocol but "any"; the protocol numbers are
/// [`crate::wire::ip::Protocol`]'s.
pub const PROTO_ANY: u8 = 0;

/// Traffic direction relative to the endpoint that owns the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic arriving at the endpoint; the key's identity is the source's.
    Ingress,
    /// Traffic leaving the endpoint; the key's identity is the destination's.
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The `direction` label of metrics and the monitor's `traffic_direction`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// An inclusive destination port range; `PortRange::ANY` is 0..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    /// One port.
    pub fn single(port: u16) -> Self {
        PortRange { lo: port, hi: port }
    }

    /// `lo..=hi`; `None` when `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        (lo <= hi).then_some(PortRange { lo, hi })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    pub fn is_any(&self) -> bool {
        *self == Self::ANY
    }
}

/// The key of a policy-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Remote identity, or `Identity::ANY`.
    pub identity: Identity,
    /// IP protocol number, or [`PROTO_ANY`].
    pub proto: u8,
    /// Destination ports (ICMP: types); always `ANY` when `proto` is `PROTO_ANY`.
    pub ports: PortRange,
}

impl PolicyKey {
    /// L3-only key: every protocol and port from/to `identity`.
    pub fn l3(identity: Identity) -> Self {
        PolicyKey {
            identity,
            proto: PROTO_ANY,
            ports: PortRange::ANY,
        }
    }

    /// L3+L4 key (or L4-only with `Identity::ANY`).
    pub fn l4(identity: Identity, proto: u8, ports: PortRange) -> Self {
        PolicyKey {
            identity,
            proto,
            ports,
        }
    }
}

/// What an entry does with matching traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// A policy-map value: the action and an opaque cookie naming the rule(s) that produced it
/// (the policy compiler keeps the cookie -> rule table; monitor and trace print it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub action: Action,
    pub cookie: u32,
}

impl PolicyEntry {
    pub fn allow(cookie: u32) -> Self {
        PolicyEntry {
            action: Action::Allow,
            cookie,
        }
    }

    pub fn deny(cookie: u32) -> Self {
        PolicyEntry {
            action: Action::Deny,
            cookie,
        }
    }
}

/// Why an insert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyMapError {
    #[error("policy key {key:?} has a port range but no protocol: give a protocol (6 TCP, 17 UDP, 132 SCTP) or use the full port range")]
    PortsWithoutProtocol { key: PolicyKey },
}

/// A key the map can hold: a port range needs a protocol.
fn check_key(key: &PolicyKey) -> Result<(), PolicyMapError> {
    if key.proto == PROTO_ANY && !key.ports.is_any() {
        return Err(PolicyMapError::PortsWithoutProtocol { key: *key });
    }
    Ok(())
}

/// What [`PolicyMap::apply_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Keys that existed and were removed.
    pub removed: usize,
    /// Adds that created a key (the others replaced an entry).
    pub added: usize,
}

/// Which of the four lookup classes matched (most specific first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// `(identity, proto, port)`.
    L3L4,
    /// `(ANY, proto, port)`.
    L4Only,
    /// `(identity, ANY)`.
    L3Only,
    /// `(ANY, ANY)`.
    AllowAll,
}

/// The answer of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The direction is not enforced: no policy selects the endpoint.
    NotEnforced,
    /// An allow entry matched and no deny did.
    Allowed { cookie: u32, by: MatchKind },
    /// A deny entry matched (deny beats allow).
    DeniedByRule { cookie: u32, by: MatchKind },
    /// Enforced and nothing matched: default deny.
    DeniedByDefault,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::NotEnforced | Decision::Allowed { .. })
    }
}

/// One flattened segment of a group: ports `lo..=hi` resolve to `entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    lo: u16,
    hi: u16,
    entry: PolicyEntry,
}

/// All entries of one (identity, protocol) pair: the ranges as inserted (the truth, for dumps and
/// deletes, keyed by range so that finding one is a tree lookup) and the segments of their
/// flattening (what lookups read: the single-port ones live in the map's exact-port table, the
/// wider ones here).
#[derive(Clone, Debug, Default)]
struct Group {
    ranges: BTreeMap<PortRange, PolicyEntry>,
    /// The flattening's segments with `lo < hi`, sorted and disjoint.
    wide: Vec<Segment>,
    /// The ports of the flattening's single-port segments, i.e. this group's keys in the map's
    /// exact-port table (so a rebuild removes exactly those without flattening twice).
    singles: Vec<u16>,
}

/// How a range ranks among the ranges covering a port: deny first, then the narrowest, then
/// (for a deterministic answer between equals) the lowest range.
type Rank = (bool, u16, PortRange);

fn rank(range: PortRange, entry: PolicyEntry) -> Rank {
    (entry.action == Action::Allow, range.hi - range.lo, range)
}

impl Group {
    /// The wide segment covering `port`.
    fn lookup_wide(&self, port: u16) -> Option<PolicyEntry> {
        let i = self.wide.partition_point(|s| s.hi < port);
        self.wide.get(i).filter(|s| s.lo <= port).map(|s| s.entry)
    }

    /// The disjoint segments of the ranges, sorted: every boundary splits, and a segment's
    /// entry is a deny if any covering range denies, else the narrowest covering allow (the
    /// most specific rule is the one reported). A sweep over the boundaries with the covering
    /// ranges in an ordered set: O(R log R) for R ranges. Control path: allocates.
    fn flatten(&self) -> Vec<Segment> {
        // Ranges by first port (the map's order) and by the boundary after their last port.
        let starts: Vec<(PortRange, PolicyEntry)> =
            self.ranges.iter().map(|(r, e)| (*r, *e)).collect();
        let mut ends = starts.clone();
        ends.sort_unstable_by_key(|(r, _)| r.hi);
        let mut cuts: Vec<u32> = Vec::with_capacity(starts.len() * 2);
        for (r, _) in &starts {
            cuts.push(u32::from(r.lo));
            cuts.push(u32::from(r.hi) + 1);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut covering: BTreeSet<Rank> = BTreeSet::new();
        let (mut next_start, mut next_end) = (0, 0);
        let mut segments: Vec<Segment> = Vec::new();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            while let Some((r, e)) = ends.get(next_end).filter(|(r, _)| u32::from(r.hi) < lo) {
                covering.remove(&rank(*r, *e));
                next_end += 1;
            }
            while let Some((r, e)) = starts
                .get(next_start)
                .filter(|(r, _)| u32::from(r.lo) <= lo)
            {
                covering.insert(rank(*r, *e));
                next_start += 1;
            }
            let Some(best) = covering.first() else {
                continue;
            };
            let Some(entry) = self.ranges.get(&best.2).copied() else {
                continue;
            };
            // Cuts are at most 65536, so both ends fit in a port.
            let (lo, hi) = (lo as u16, hi as u16);
            match segments.last_mut() {
                Some(last) if last.entry == entry && u32::from(last.hi) + 1 == u32::from(lo) => {
                    last.hi = hi
                }
                _ => segments.push(Segment { lo, hi, entry }),
            }
        }
        segments
    }
}

/// The key of `PolicyMap::exact`: identity, protocol and port packed in one word (one cheap
/// hash).
#[inline]
fn exact_key(identity: Identity, proto: u8, port: u16) -> u64 {
    u64::from(identity.0) << 24 | u64::from(proto) << 16 | u64::from(port)
}

/// The exact-port entries of a policy map: an open-addressing table (linear probing) from
/// [`exact_key`] to the entry. Unlike a hashbrown map it can name the slot a key hashes to, so
/// a batch can prefetch the slots of all its lookups before doing any.
///
/// Invariants: the slab is empty or a power of two of at least 8 slots, at most three quarters
/// full (4 slots share a cache line, so most probes stay in their home line);
/// [`EXACT_EMPTY`] marks a vacant slot and is never a key (keys use at most 56 bits); there are
/// no tombstones: a removal shifts the rest of its cluster back, so a lookup stops at the first
/// vacant slot.
#[derive(Clone, Debug, Default)]
struct ExactPorts {
    slots: Vec<(u64, PolicyEntry)>,
    len: usize,
    /// 64 - log2(slots.len()): the home slot is the top bits of the mixed key.
    shift: u32,
}

/// The key of a vacant [`ExactPorts`] slot.
const EXACT_EMPTY: u64 = u64::MAX;

impl ExactPorts {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The slot a key's probe starts at (the slab must not be empty).
    #[inline]
    fn home(&self, key: u64) -> usize {
        // The key packs identity, protocol and port: fold the high bits down, then take the
        // top bits of a multiplicative hash, which depend on every bit of the key.
        let mixed = (key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> self.shift) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[inline]
    fn get(&self, key: u64) -> Option<PolicyEntry> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let (k, entry) = *self.slots.get(i)?;
            if k == key {
                return Some(entry);
            }
            if k == EXACT_EMPTY {
                return None;
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Starts loading the home slot of `key`.
    #[inline]
    fn prefetch(&self, key: u64) {
        if let Some(slot) = self.slots.get(self.home(key) & self.mask()) {
            super::prefetch(slot);
        }
    }

    fn insert(&mut self, key: u64, entry: PolicyEntry) -> Option<PolicyEntry> {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mut i = self.home(key);
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.0 == key {
                return Some(std::mem::replace(&mut slot.1, entry));
            }
            if slot.0 == EXACT_EMPTY {
                *slot = (key, entry);
                self.len += 1;
                return None;
            }
            i = (i + 1) & self.mask();
        }
        None // Unreachable: the slab is never full, so the probe finds a vacant slot.
    }

    fn remove(&mut self, key: u64) -> Option<PolicyEntry> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut hole = self.home(key);
        loop {
            let k = self.slots.get(hole)?.0;
            if k == key {
                break;
            }
            if k == EXACT_EMPTY {
                return None;
            }
            hole = (hole + 1) & mask;
        }
        let removed = self.slots.get(hole)?.1;
        // Backward shift: an entry further along the cluster moves into the hole when the hole
        // lies between its home and its slot, so that no probe path crosses a vacant slot.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let (k, entry) = *self.slots.get(j)?;
            if k == EXACT_EMPTY {
                break;
            }
            let home = self.home(k);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = (k, entry);
                hole = j;
            }
        }
        self.slots[hole] = (EXACT_EMPTY, removed);
        self.len -= 1;
        Some(removed)
    }

    /// Doubles the slab (8 slots at first) and re-inserts every entry.
    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(
            &mut self.slots,
            vec![(EXACT_EMPTY, PolicyEntry::allow(0)); capacity],
        );
        self.shift = 64 - capacity.trailing_zeros();
        self.len = 0;
        for (k, entry) in old.into_iter().filter(|(k, _)| *k != EXACT_EMPTY) {
            self.insert(k, entry);
        }
    }
}

/// The policy map of one endpoint in one direction.
#[derive(Clone, Debug, Default)]
pub struct PolicyMap {
    groups: HashMap<(Identity, u8), Group>,
    /// Every group's single-port segments, by [`exact_key`]: the first probe of each class.
    exact: ExactPorts,
    entries: usize,
    /// Counts of entries per lookup class, so lookups skip classes that are empty.
    class_counts: [u32; 4],
    /// Counts of groups with wide segments per lookup class, so lookups skip the group probe
    /// where no group of the class has any.
    wide_counts: [u32; 4],
}

impl PolicyMap {
    pub fn new() -> Self {
        Self::default()
    }

    fn class_of(key: &PolicyKey) -> usize {
        Self::class_of_group(key.identity, key.proto)
    }

    fn class_of_group(identity: Identity, proto: u8) -> usize {
        match (identity == Identity::ANY, proto == PROTO_ANY) {
            (false, false) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (true, true) => 3,
        }
    }

    /// Inserts or replaces the entry for `key`; returns the previous entry. Re-flattens the
    /// key's group once: O(R log R) for a group of R ranges. To change many entries, use
    /// [`apply_batch`](Self::apply_batch), which flattens each touched group once in all.
    pub fn insert(
        &mut self,
        key: PolicyKey,
        entry: PolicyEntry,
    ) -> Result<Option<PolicyEntry>, PolicyMapError> {
        check_key(&key)?;
        let previous = self.insert_unflattened(key, entry);
        self.rebuild_group(key.identity, key.proto);
        Ok(previous)
    }

    /// Removes the entry for exactly `key`; returns it.
    pub fn remove(&mut self, key: &PolicyKey) -> Option<PolicyEntry> {
        let removed = self.remove_unflattened(key)?;
        self.rebuild_group(key.identity, key.proto);
        Some(removed)
    }

    /// Removes `removes` (absent keys are ignored), then inserts or replaces `adds`, and
    /// re-flattens every touched group once: a request of R ranges costs O(R log R), not one
    /// flattening per range. Every key is checked before anything changes: on `Err` (the index
    /// of the first refused add) the map is untouched.
    pub fn apply_batch(
        &mut self,
        removes: &[PolicyKey],
        adds: &[(PolicyKey, PolicyEntry)],
    ) -> Result<BatchOutcome, (usize, PolicyMapError)> {
        for (i, (key, _)) in adds.iter().enumerate() {
            check_key(key).map_err(|e| (i, e))?;
        }
        let mut touched: HashSet<(Identity, u8)> = HashSet::new();
        let mut outcome = BatchOutcome::default();
        for key in removes {
            if self.remove_unflattened(key).is_some() {
                outcome.removed += 1;
                touched.insert((key.identity, key.proto));
            }
        }
        for (key, entry) in adds {
            if self.insert_unflattened(*key, *entry).is_none() {
                outcome.added += 1;
            }
            touched.insert((key.identity, key.proto));
        }
        for (identity, proto) in touched {
            self.rebuild_group(identity, proto);
        }
        Ok(outcome)
    }

    /// Stores the range without touching the flattening (the caller rebuilds the group).
    fn insert_unflattened(&mut self, key: PolicyKey, entry: PolicyEntry) -> Option<PolicyEntry> {
        let group = self.groups.entry((key.identity, key.proto)).or_default();
        let previous = group.ranges.insert(key.ports, entry);
        if previous.is_none() {
            self.entries += 1;
            self.class_counts[Self::class_of(&key)] += 1;
        }
        previous
    }

    /// Drops the range without touching the flattening (the caller rebuilds the group).
    fn remove_unflattened(&mut self, key: &PolicyKey) -> Option<PolicyEntry> {
        let group = self.groups.get_mut(&(key.identity, key.proto))?;
        let removed = group.ranges.remove(&key.ports)?;
        self.entries -= 1;
        self.class_counts[Self::class_of(key)] -= 1;
        Some(removed)
    }

    /// Re-flattens the group of `(identity, proto)` after its ranges changed, and brings the
    /// exact-port table and the wide-group counts in line; drops the group once it has no
    /// range.
    fn rebuild_group(&mut self, identity: Identity, proto: u8) {
        let class = Self::class_of_group(identity, proto);
        let Some(group) = self.groups.get_mut(&(identity, proto)) else {
            return;
        };
        let had_wide = !group.wide.is_empty();
        for port in group.singles.drain(..) {
            self.exact.remove(exact_key(identity, proto, port));
        }
        let after = group.flatten();
        for s in after.iter().filter(|s| s.lo == s.hi) {
            self.exact.insert(exact_key(identity, proto, s.lo), s.entry);
            group.singles.push(s.lo);
        }
        group.wide = after.into_iter().filter(|s| s.lo < s.hi).collect();
        let has_wide = !group.wide.is_empty();
        if group.ranges.is_empty() {
            self.groups.remove(&(identity, proto));
        }
        match (had_wide, has_wide) {
            (false, true) => self.wide_counts[class] += 1,
            (true, false) => self.wide_counts[class] -= 1,
            _ => {}
        }
    }

    /// The entry stored under exactly `key`.
    pub fn get(&self, key: &PolicyKey) -> Option<PolicyEntry> {
        let group = self.groups.get(&(key.identity, key.proto))?;
        group.ranges.get(&key.ports).copied()
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Every entry, in no particular order (for dumps and for computing deltas).
    pub fn iter(&self) -> impl Iterator<Item = (PolicyKey, PolicyEntry)> + '_ {
        self.groups.iter().flat_map(|((identity, proto), g)| {
            g.ranges.iter().map(move |(ports, e)| {
                (
                    PolicyKey {
                        identity: *identity,
                        proto: *proto,
                        ports: *ports,
                    },
                    *e,
                )
            })
        })
    }

    /// Looks up a packet from/to `identity` with protocol `proto` and destination `port`,
    /// following the precedence in the module doc. Does not know whether the direction is
    /// enforced: see [`DirectionalPolicy::lookup`].
    #[inline]
    pub fn lookup(
        &self,
        identity: Identity,
        proto: u8,
        port: u16,
    ) -> Option<(PolicyEntry, MatchKind)> {
        const CLASSES: [MatchKind; 4] = [
            MatchKind::L3L4,
            MatchKind::L4Only,
            MatchKind::L3Only,
            MatchKind::AllowAll,
        ];
        let mut best_allow: Option<(PolicyEntry, MatchKind)> = None;
        for (class, kind) in CLASSES.iter().enumerate() {
            if self.class_counts[class] == 0 {
                continue;
            }
            let (id, p) = match class {
                0 => (identity, proto),
                1 => (Identity::ANY, proto),
                2 => (identity, PROTO_ANY),
                _ => (Identity::ANY, PROTO_ANY),
            };
            let Some(entry) = self.class_lookup(class, id, p, port) else {
                continue;
            };
            match entry.action {
                Action::Deny => return Some((entry, *kind)),
                Action::Allow => {
                    best_allow.get_or_insert((entry, *kind));
                }
            }
        }
        best_allow
    }

    /// Starts loading the exact-port slots a [`lookup`](Self::lookup) of the same arguments
    /// reads first (its L3+L4 and L4-only probes), without reading them: for batch lookups.
    #[inline]
    pub fn prefetch(&self, identity: Identity, proto: u8, port: u16) {
        if self.class_counts[0] != 0 {
            self.exact.prefetch(exact_key(identity, proto, port));
        }
        if self.class_counts[1] != 0 {
            self.exact.prefetch(exact_key(Identity::ANY, proto, port));
        }
    }

    /// The entry of group `(id, p)` (of lookup class `class`) for `port`: its exact-port entry,
    /// else the wide segment covering the port. The group's segments are disjoint, so at most
    /// one of the two exists.
    #[inline]
    fn class_lookup(&self, class: usize, id: Identity, p: u8, port: u16) -> Option<PolicyEntry> {
        if let Some(entry) = self.exact.get(exact_key(id, p, port)) {
            return Some(entry);
        }
        if self.wide_counts[class] == 0 {
            return None;
        }
        self.groups.get(&(id, p)).and_then(|g| g.lookup_wide(port))
    }

    /// Approximate heap bytes per entry (for the benchmark's memory report).
    pub fn approx_bytes(&self) -> usize {
        let group_bytes = self.groups.capacity()
            * (std::mem::size_of::<(Identity, u8)>() + std::mem::size_of::<Group>() + 1);
        let exact_bytes = self.exact.capacity() * std::mem::size_of::<(u64, PolicyEntry)>();
        let vec_bytes: usize = self
            .groups
            .values()
            .map(|g| {
                g.ranges.len() * std::mem::size_of::<(PortRange, PolicyEntry)>()
                    + g.wide.capacity() * std::mem::size_of::<Segment>()
                    + g.singles.capacity() * std::mem::size_of::<u16>()
            })
            .sum();
        group_bytes + exact_bytes + vec_bytes
    }
}

/// One direction of an endpoint's policy.
#[derive(Clone, Debug, Default)]
pub struct DirectionalPolicy {
    /// True once any policy selects the endpoint in this direction (default deny).
    pub enforced: bool,
    pub map: PolicyMap,
}

impl DirectionalPolicy {
    /// Starts loading what a [`lookup`](Self::lookup) of the same arguments reads first.
    #[inline]
    pub fn prefetch(&self, identity: Identity, proto: u8, port: u16) {
        if self.enforced {
            self.map.prefetch(identity, proto, port);
        }
    }

    /// The verdict for a packet from/to `identity`, `proto`, destination `port`.
    #[inline]
    pub fn lookup(&self, identity: Identity, proto: u8, port: u16) -> Decision {
        if !self.enforced {
            return Decision::NotEnforced;
        }
        match self.map.lookup(identity, proto, port) {
            Some((e, by)) if e.action == Action::Allow => Decision::Allowed {
                cookie: e.cookie,
                by,
            },
            Some((e, by)) => Decision::DeniedByRule {
                cookie: e.cookie,
                by,
            },
            None => Decision::DeniedByDefault,
        }
    }
}

/// The ingress and egress policy of one endpoint.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    pub ingress: DirectionalPolicy,
    pub egress: DirectionalPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, dir: Direction) -> &DirectionalPolicy {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn direction_mut(&mut self, dir: Direction) -> &mut DirectionalPolicy {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::Protocol;

    const TCP: u8 = Protocol::Tcp.number();
    const UDP: u8 = Protocol::Udp.number();
    const A: Identity = Identity(1000);
    const B: Identity = Identity(1001);

    fn enforced(entries: &[(PolicyKey, PolicyEntry)]) -> DirectionalPolicy {
        let mut p = DirectionalPolicy {
            enforced: true,
            map: PolicyMap::new(),
        };
        for (k, e) in entries {
            p.map.insert(*k, *e).unwrap();
        }
        p
    }

    #[test]
    fn not_enforced_allows_everything() {
        let p = DirectionalPolicy::default();
        assert_eq!(p.lookup(A, TCP, 80), Decision::NotEnforced);
        assert!(p.lookup(A, TCP, 80).is_allowed());
    }

    #[test]
    fn enforced_without_entries_denies() {
        let p = enforced(&[]);
        assert_eq!(p.lookup(A, TCP, 80), Decision::DeniedByDefault);
    }

    #[test]
    fn precedence_most_specific_allow_is_reported() {
        let p = enforced(&[
            (PolicyKey::l3(Identity::ANY), PolicyEntry::allow(4)),
            (PolicyKey::l3(A), PolicyEntry::allow(3)),
            (
                PolicyKey::l4(Identity::ANY, TCP, PortRange::single(80)),
                PolicyEntry::allow(2),
            ),
            (
                PolicyKey::l4(A, TCP, PortRange::single(80)),
                PolicyEntry::allow(1),
            ),
        ]);
        assert_eq!(
            p.lookup(A, TCP, 80),
            Decision::Allowed {
                cookie: 1,
                by: MatchKind::L3L4
            }
        );
        assert_eq!(
            p.lookup(B, TCP, 80),
            Decision::Allowed {
                cookie: 2,
                by: MatchKind::L4Only
            }
        );
        assert_eq!(
            p.lookup(A, UDP, 53),
            Decision::Allowed {
                cookie: 3,
                by: MatchKind::L3Only
            }
        );
        assert_eq!(
            p.lookup(B, UDP, 53),
            Decision::Allowed {
                cookie: 4,
                by: MatchKind::AllowAll
            }
        );
    }

    #[test]
    fn deny_beats_allow_at_any_specificity() {
        let p = enforced(&[
            (
                PolicyKey::l4(A, TCP, PortRange::single(80)),
                PolicyEntry::allow(1),
            ),
            (PolicyKey::l3(Identity::ANY), PolicyEntry::deny(9)),
        ]);
        assert_eq!(
            p.lookup(A, TCP, 80),
            Decision::DeniedByRule {
                cookie: 9,
                by: MatchKind::AllowAll
            }
        );
    }

    #[test]
    fn port_ranges_and_overlaps() {
        let p = enforced(&[
            (
                PolicyKey::l4(A, TCP, PortRange::new(8000, 9000).unwrap()),
                PolicyEntry::allow(1),
            ),
            (
                PolicyKey::l4(A, TCP, PortRange::single(8080)),
                PolicyEntry::allow(2),
            ),
            (
                PolicyKey::l4(A, TCP, PortRange::new(8500, 8600).unwrap()),
                PolicyEntry::deny(3),
            ),
        ]);
        assert_eq!(p.lookup(A, TCP, 7999), Decision::DeniedByDefault);
        assert_eq!(
            p.lookup(A, TCP, 8000),
            Decision::Allowed {
                cookie: 1,
                by: MatchKind::L3L4
            }
        );
        assert_eq!(
            p.lookup(A, TCP, 8080),
            Decision::Allowed {
                cookie: 2,
                by: MatchKind::L3L4
            }
        );
        assert_eq!(
            p.lookup(A, TCP, 8550),
            Decision::DeniedByRule {
                cookie: 3,
                by: MatchKind::L3L4
            }
        );
        assert_eq!(
            p.lookup(A, TCP, 9000),
            Decision::Allowed {
                cookie: 1,
                by: MatchKind::L3L4
            }
        );
        assert_eq!(p.lookup(A, TCP, 9001), Decision::DeniedByDefault);
        assert_eq!(p.lookup(A, UDP, 8080), Decision::DeniedByDefault);
    }

    /// The open-addressing table agrees with a hash map through inserts, replacements and
    /// removals that grow it and shift clusters back (keys from a small range collide often).
    #[test]
    fn exact_ports_agree_with_a_hash_map() {
        let mut table = ExactPorts::default();
        let mut reference = HashMap::new();
        assert_eq!(table.get(7), None);
        assert_eq!(table.remove(7), None);
        table.prefetch(7); // Empty slab: a no-op.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = exact_key(Identity((x % 300) as u32), 6, (x >> 20) as u16 % 4);
            if x & 0x300 == 0 {
                assert_eq!(table.remove(key), reference.remove(&key), "step {step}");
            } else {
                let entry = PolicyEntry::allow(step);
                assert_eq!(table.insert(key, entry), reference.insert(key, entry));
            }
            assert_eq!(table.len(), reference.len());
            table.prefetch(key);
        }
        assert!(3 * table.capacity() >= 4 * table.len());
        for id in 0..300 {
            for port in 0..4 {
                let key = exact_key(Identity(id), 6, port);
                assert_eq!(table.get(key), reference.get(&key).copied());
            }
        }
        assert_eq!(table.get(exact_key(Identity(1), 17, 0)), None);
    }

    #[test]
    fn exact_and_wide_segments_stay_in_step() {
        let mut m = PolicyMap::new();
        let single = PolicyKey::l4(A, TCP, PortRange::single(80));
        let wide = PolicyKey::l4(A, TCP, PortRange::new(70, 90).unwrap());
        m.insert(single, PolicyEntry::allow(1)).unwrap();
        m.insert(wide, PolicyEntry::deny(2)).unwrap();
        // The deny covers 80 too: the single-port segment became part of a wide one.
        assert_eq!(
            m.lookup(A, TCP, 80).map(|(e, _)| e),
            Some(PolicyEntry::deny(2))
        );
        assert!(m.exact.is_empty());
        assert_eq!(m.wide_counts, [1, 0, 0, 0]);
        m.remove(&wide);
        assert_eq!(
            m.lookup(A, TCP, 80).map(|(e, _)| e),
            Some(PolicyEntry::allow(1))
        );
        assert_eq!(m.lookup(A, TCP, 81), None);
        assert_eq!(m.exact.len(), 1);
        assert_eq!(m.wide_counts, [0; 4]);
        m.remove(&single);
        assert!(m.exact.is_empty() && m.groups.is_empty());
        assert_eq!(m.lookup(A, TCP, 80), None);
    }

    #[test]
    fn full_port_range_edges() {
        let p = enforced(&[(PolicyKey::l4(A, UDP, PortRange::ANY), PolicyEntry::allow(1))]);
        assert!(p.lookup(A, UDP, 0).is_allowed());
        assert!(p.lookup(A, UDP, 65535).is_allowed());
    }

    #[test]
    fn insert_replace_remove() {
        let mut m = PolicyMap::new();
        let k = PolicyKey::l4(A, TCP, PortRange::single(80));
        assert_eq!(m.insert(k, PolicyEntry::allow(1)).unwrap(), None);
        assert_eq!(
            m.insert(k, PolicyEntry::deny(2)).unwrap(),
            Some(PolicyEntry::allow(1))
        );
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.lookup(A, TCP, 80).map(|(e, _)| e),
            Some(PolicyEntry::deny(2))
        );
        assert_eq!(m.remove(&k), Some(PolicyEntry::deny(2)));
        assert_eq!(m.remove(&k), None);
        assert!(m.is_empty());
        assert_eq!(m.lookup(A, TCP, 80), None);
    }

    #[test]
    fn ports_without_protocol_rejected() {
        let mut m = PolicyMap::new();
        let k = PolicyKey::l4(A, PROTO_ANY, PortRange::single(80));
        assert!(matches!(
            m.insert(k, PolicyEntry::allow(1)),
            Err(PolicyMapError::PortsWithoutProtocol { .. })
        ));
        assert!(m.is_empty());
    }

    #[test]
    fn iter_returns_what_was_inserted() {
        let mut m = PolicyMap::new();
        let keys = [
            PolicyKey::l3(A),
            PolicyKey::l4(B, TCP, PortRange::new(1, 10).unwrap()),
            PolicyKey::l4(B, TCP, PortRange::new(5, 20).unwrap()),
        ];
        for (i, k) in keys.iter().enumerate() {
            m.insert(*k, PolicyEntry::allow(i as u32)).unwrap();
        }
        let mut got: Vec<_> = m.iter().map(|(k, _)| k).collect();
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    /// The flattening by its definition, one port at a time: deny first, then the narrowest
    /// covering range, then the lowest.
    fn naive_entry_at(g: &Group, port: u16) -> Option<PolicyEntry> {
        g.ranges
            .iter()
            .filter(|(r, _)| r.contains(port))
            .min_by_key(|(r, e)| rank(**r, **e))
            .map(|(_, e)| *e)
    }

    #[test]
    fn batch_of_five_thousand_overlapping_ranges_flattens_once_and_right() {
        // Finding 9 of issue 14: one flattening per insert made this O(R^3) (minutes).
        let adds: Vec<(PolicyKey, PolicyEntry)> = (0..5000u32)
            .map(|i| {
                let lo = (i * 13 % 60_000) as u16;
                let hi = lo + (i % 97) as u16;
                let e = if i % 7 == 0 {
                    PolicyEntry::deny(i)
                } else {
                    PolicyEntry::allow(i)
                };
                (PolicyKey::l4(A, TCP, PortRange { lo, hi }), e)
            })
            .collect();
        let mut m = PolicyMap::new();
        let outcome = m.apply_batch(&[], &adds).unwrap();
        assert_eq!(outcome.added, 5000);
        assert_eq!(m.len(), 5000);
        let g = m.groups.get(&(A, TCP)).unwrap();
        for port in (0..=u16::MAX).step_by(7) {
            let want = naive_entry_at(g, port);
            assert_eq!(m.lookup(A, TCP, port).map(|(e, _)| e), want, "port {port}");
        }
        // Removing them all in one batch leaves nothing behind.
        let keys: Vec<PolicyKey> = adds.iter().map(|(k, _)| *k).collect();
        assert_eq!(m.apply_batch(&keys, &[]).unwrap().removed, 5000);
        assert!(m.is_empty());
        assert!(m.exact.is_empty());
        assert!(m.groups.is_empty());
        assert_eq!(m.wide_counts, [0; 4]);
    }

    #[test]
    fn batch_with_a_refused_key_changes_nothing() {
        let mut m = PolicyMap::new();
        m.insert(
            PolicyKey::l4(A, TCP, PortRange::single(80)),
            PolicyEntry::allow(1),
        )
        .unwrap();
        let bad = PolicyKey {
            identity: A,
            proto: PROTO_ANY,
            ports: PortRange::single(1),
        };
        let err = m
            .apply_batch(
                &[PolicyKey::l4(A, TCP, PortRange::single(80))],
                &[
                    (PolicyKey::l3(B), PolicyEntry::allow(2)),
                    (bad, PolicyEntry::allow(3)),
                ],
            )
            .unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(m.len(), 1);
        assert!(m.lookup(A, TCP, 80).is_some());
        assert!(m.lookup(B, TCP, 80).is_none());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_key() -> impl Strategy<Value = PolicyKey> {
            (
                0u32..4,
                prop_oneof![Just(0u8), Just(6u8), Just(17u8)],
                0u16..40,
                0u16..20,
            )
                .prop_map(|(id, proto, lo, span)| {
                    if proto == PROTO_ANY {
                        PolicyKey::l3(Identity(id))
                    } else {
                        PolicyKey::l4(Identity(id), proto, PortRange { lo, hi: lo + span })
                    }
                })
        }

        /// The definition, evaluated naively: deny if any matching entry denies; else the allow
        /// of the most specific class, narrowest range.
        fn reference(
            entries: &[(PolicyKey, PolicyEntry)],
            id: Identity,
            proto: u8,
            port: u16,
        ) -> Option<Action> {
            let matching: Vec<_> = entries
                .iter()
                .filter(|(k, _)| {
                    (k.identity == Identity::ANY || k.identity == id)
                        && (k.proto == PROTO_ANY || (k.proto == proto && k.ports.contains(port)))
                })
                .collect();
            if matching.iter().any(|(_, e)| e.action == Action::Deny) {
                Some(Action::Deny)
            } else if matching.is_empty() {
                None
            } else {
                Some(Action::Allow)
            }
        }

        proptest! {
            /// One batch and the same changes one by one give the same map, segment for
            /// segment, and every segment is what the definition says.
            #[test]
            fn batch_equals_one_by_one_and_the_definition(
                ops in proptest::collection::vec((arb_key(), any::<bool>(), any::<bool>()), 0..40),
            ) {
                let mut one_by_one = PolicyMap::new();
                let mut batched = PolicyMap::new();
                let (mut removes, mut adds) = (Vec::new(), Vec::new());
                for (i, (k, deny, remove)) in ops.into_iter().enumerate() {
                    if remove {
                        one_by_one.remove(&k);
                        removes.push(k);
                        adds.retain(|(a, _): &(PolicyKey, PolicyEntry)| *a != k);
                    } else {
                        let e = if deny { PolicyEntry::deny(i as u32) } else { PolicyEntry::allow(i as u32) };
                        one_by_one.insert(k, e).unwrap();
                        adds.retain(|(a, _)| *a != k);
                        adds.push((k, e));
                    }
                }
                // Removes first, then adds: the same end state as the sequence.
                removes.retain(|k| !adds.iter().any(|(a, _)| a == k));
                batched.apply_batch(&removes, &adds).unwrap();
                prop_assert_eq!(batched.len(), one_by_one.len());
                for (key, g) in &one_by_one.groups {
                    let b = batched.groups.get(key).unwrap();
                    prop_assert_eq!(&b.wide, &g.wide);
                    for port in 0u16..80 {
                        let want = naive_entry_at(g, port);
                        prop_assert_eq!(one_by_one.class_lookup(PolicyMap::class_of_group(key.0, key.1), key.0, key.1, port), want);
                        prop_assert_eq!(batched.class_lookup(PolicyMap::class_of_group(key.0, key.1), key.0, key.1, port), want);
                    }
                }
            }

            #[test]
            fn lookup_agrees_with_reference(
                ops in proptest::collection::vec((arb_key(), any::<bool>(), any::<bool>()), 0..30),
                probes in proptest::collection::vec((0u32..4, prop_oneof![Just(6u8), Just(17u8), Just(1u8)], 0u16..70), 1..30),
            ) {
                let mut m = PolicyMap::new();
                let mut truth: Vec<(PolicyKey, PolicyEntry)> = Vec::new();
                for (i, (k, deny, remove)) in ops.into_iter().enumerate() {
                    if remove {
                        m.remove(&k);
                        truth.retain(|(tk, _)| *tk != k);
                    } else {
                        let e = if deny { PolicyEntry::deny(i as u32) } else { PolicyEntry::allow(i as u32) };
                        m.insert(k, e).unwrap();
                        truth.retain(|(tk, _)| *tk != k);
                        truth.push((k, e));
                    }
                }
                prop_assert_eq!(m.len(), truth.len());
                for (id, proto, port) in probes {
                    let got = m.lookup(Identity(id), proto, port).map(|(e, _)| e.action);
                    prop_assert_eq!(got, reference(&truth, Identity(id), proto, port));
                }
            }
        }
    }
}
