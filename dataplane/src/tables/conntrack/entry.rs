//! A tracked flow's entry: its state, flags, counters and NAT/DSR information, and the
//! compact form that lets a new flow's entry be stored in one cache line.
//!
//! Contract: the getters show the same values whether an entry is stored compact or whole;
//! anything that writes the tail writes all of it first (`CtEntry::expand`); a caller can set
//! only the caller flags (`CtFlags::DSR`, `CtFlags::PROXY`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::key::{mapped_octets, FlowDirection};
use super::tcp_window::TcpWindow;

/// `FIN_FROM_*` bits of an entry (kept in its flags): which side has sent a FIN (the TCP state
/// machine, `tcp.rs`, sets them).
pub(super) const FIN_FROM_ORIGINAL: u8 = 0b01;
pub(super) const FIN_FROM_REPLY: u8 = 0b10;
pub(super) const FIN_FROM_BOTH: u8 = FIN_FROM_ORIGINAL | FIN_FROM_REPLY;
use crate::types::Identity;

/// Connection state. TCP uses all of them; other protocols only `New` and `Established`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CtState {
    /// Created; nothing has advanced it yet (TCP without a SYN, or no reply seen yet).
    New = 0,
    /// TCP: SYN seen from the originator.
    SynSent = 1,
    /// TCP: SYN+ACK seen from the reply side.
    SynRecv = 2,
    /// TCP: handshake completed (or picked up mid-stream); others: a reply was seen.
    Established = 3,
    /// TCP: FIN seen in one direction; keeps the established timeout.
    FinWait = 4,
    /// TCP: FIN seen in both directions, or RST; short timeout.
    Closing = 5,
}

impl CtState {
    /// Upper-case name for dumps and metrics (`SYN_SENT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::SynSent => "SYN_SENT",
            CtState::SynRecv => "SYN_RECV",
            CtState::Established => "ESTABLISHED",
            CtState::FinWait => "FIN_WAIT",
            CtState::Closing => "CLOSING",
        }
    }

    /// Established flows are the ones worth keeping when the table is full.
    pub fn is_established(self) -> bool {
        matches!(self, CtState::Established | CtState::FinWait)
    }
}

impl fmt::Display for CtState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-entry flag bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtFlags(pub(super) u8);

impl CtFlags {
    pub const EMPTY: CtFlags = CtFlags(0);
    /// A packet has been seen in the reply direction (maintained by the table).
    pub const SEEN_REPLY: CtFlags = CtFlags(1 << 0);
    /// Service flow answered directly by the backend's node (direct server return).
    pub const DSR: CtFlags = CtFlags(1 << 1);
    /// Flow redirected to a local L7 proxy.
    pub const PROXY: CtFlags = CtFlags(1 << 2);
    /// The bits a caller may set; the others belong to the table.
    const CALLER_BITS: u8 = Self::DSR.0 | Self::PROXY.0;
    /// The bits [`CtEntry::flags`] shows.
    const PUBLIC_BITS: u8 = Self::SEEN_REPLY.0 | Self::CALLER_BITS;
    /// Private: the entry's `FIN_FROM_*` bits, shifted by `FIN_SHIFT`.
    const FIN_SHIFT: u32 = 3;
    const FIN_BITS: u8 = FIN_FROM_BOTH << Self::FIN_SHIFT;
    /// Private: the entry's tail is written (see [`CtEntry`], "The tail").
    const TAIL: CtFlags = CtFlags(1 << 5);
    /// Private, compact entries only: the creating packet travelled in this direction.
    const FIRST_ORIGINAL: CtFlags = CtFlags(1 << 6);
    const FIRST_REPLY: CtFlags = CtFlags(1 << 7);
    const FIRST_BITS: u8 = Self::FIRST_ORIGINAL.0 | Self::FIRST_REPLY.0;

    #[inline]
    fn first(dir: FlowDirection) -> CtFlags {
        match dir {
            FlowDirection::Original => Self::FIRST_ORIGINAL,
            FlowDirection::Reply => Self::FIRST_REPLY,
        }
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn contains(self, other: CtFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for CtFlags {
    type Output = CtFlags;
    fn bitor(self, rhs: CtFlags) -> CtFlags {
        CtFlags(self.0 | rhs.0)
    }
}

/// The service frontend to restore as the source of replies (reverse NAT), kept compact: the
/// address as 16 bytes (IPv4-mapped for IPv4) and the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat {
    addr: [u8; 16],
    port: u16,
}

impl RevNat {
    pub fn new(addr: IpAddr, port: u16) -> RevNat {
        RevNat {
            addr: mapped_octets(addr),
            port,
        }
    }

    /// The frontend address (IPv4 again when it was stored mapped).
    pub fn addr(&self) -> IpAddr {
        Ipv6Addr::from(self.addr).to_canonical()
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// What the caller knows about a flow when it creates its entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCreate {
    /// Security identity of the originator.
    pub src_identity: Identity,
    /// Create as `Established` (mid-stream pickup, e.g. flows that were open before the dataplane
    /// started); otherwise the entry starts `New` and packets drive it.
    pub established: bool,
    /// Caller flags ([`CtFlags::DSR`], [`CtFlags::PROXY`]); table-owned bits are ignored.
    pub flags: CtFlags,
    /// Service frontend to restore on replies, for flows that went through service NAT.
    pub rev_nat: Option<RevNat>,
}

/// One tracked flow. Fields the table maintains are read through getters; the identity (a
/// field) and the NAT fields (setters) may be rewritten by the pipeline through
/// [`Conntrack::entry_mut`](super::Conntrack::entry_mut).
///
/// `repr(C)` so the fields a lookup reads (`expires`) share the slot's first cache line with
/// the key; the layout is checked by a test.
///
/// # The tail
/// The fields from `created` on (the *tail*) fill the slot's second cache line. A new flow's
/// entry usually has nothing there worth a memory write: `created` equals `last_seen`, no NAT
/// information, and the counters hold at most the creating packet. Such an entry is stored
/// *compact*: the tail is not written (it holds whatever an earlier occupant left) and its
/// values are implied by the head: `created = last_seen`, `rev_nat = None`, no SNAT port, no
/// TCP sequence known, counters zero except one packet of `first_bytes` bytes in the direction
/// a `FIRST_*` bit names. (A TCP flow's first segment teaches the sequence tracking, so a TCP
/// entry is stored whole.)
///
/// The tail is full: its 64 bytes hold `created`, the counters, `rev_nat` and the TCP
/// sequence tracking (`tcp_window`). To make room for the latter, packet counters are 32 bits
/// per direction (they wrap, as Linux's 32-bit counters did; byte counters are 64 bits). [`CtFlags::TAIL`] says the tail is written; the getters honour both forms, and
/// anything that writes the tail (an update, a setter) first *expands* a compact entry.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct CtEntry {
    pub(super) expires: u64,
    pub(super) last_seen: u64,
    pub(super) state: CtState,
    /// Caller flags, `SEEN_REPLY`, and the table's private bits (FIN, tail form).
    pub(super) flags: CtFlags,
    /// Two meanings, by form (see "The tail"): compact, the creating packet's length; expanded
    /// (`CtFlags::TAIL`), the source port the flow is SNATed to (0: none, see
    /// [`CtEntry::snat_port`]). Sharing the field keeps the SNAT port in the first cache line,
    /// which every lookup reads anyway, at no cost in size.
    pub(super) first_bytes: u16,
    /// Security identity of the originator.
    pub src_identity: Identity,
    // ---- the tail: valid only with `CtFlags::TAIL` ----
    pub(super) created: u64,
    pub(super) packets: [u32; 2],
    pub(super) bytes: [u64; 2],
    /// Service frontend to restore as the source of replies.
    pub(super) rev_nat: Option<RevNat>,
    /// TCP: what each side is expected to send next, and its window (`tcp_window`).
    pub(super) tcp: TcpWindow,
}

impl PartialEq for CtEntry {
    /// The same flow state, whether either side is stored compact or not.
    fn eq(&self, other: &Self) -> bool {
        self.expires == other.expires
            && self.last_seen == other.last_seen
            && self.state == other.state
            && self.flags() == other.flags()
            && self.fin_seen() == other.fin_seen()
            && self.src_identity == other.src_identity
            && self.created() == other.created()
            && [FlowDirection::Original, FlowDirection::Reply]
                .iter()
                .all(|&d| self.packets(d) == other.packets(d) && self.bytes(d) == other.bytes(d))
            && self.tcp_window() == other.tcp_window()
            && self.rev_nat() == other.rev_nat()
            && self.snat_port() == other.snat_port()
    }
}

impl Eq for CtEntry {}

impl fmt::Debug for CtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let both = |get: fn(&CtEntry, FlowDirection) -> u64| {
            [
                get(self, FlowDirection::Original),
                get(self, FlowDirection::Reply),
            ]
        };
        f.debug_struct("CtEntry")
            .field("expires", &self.expires)
            .field("last_seen", &self.last_seen)
            .field("state", &self.state)
            .field("flags", &self.flags())
            .field("fin_seen", &self.fin_seen())
            .field("src_identity", &self.src_identity)
            .field("created", &self.created())
            .field("packets", &both(CtEntry::packets))
            .field("bytes", &both(CtEntry::bytes))
            .field("tcp", &self.tcp_window())
            .field("rev_nat", &self.rev_nat())
            .field("snat_port", &self.snat_port())
            .field("compact", &!self.flags.contains(CtFlags::TAIL))
            .finish()
    }
}

impl CtEntry {
    /// A compact entry that has counted nothing.
    pub(super) const EMPTY: CtEntry = CtEntry {
        expires: 0,
        last_seen: 0,
        state: CtState::New,
        flags: CtFlags::EMPTY,
        first_bytes: 0,
        src_identity: Identity(0),
        created: 0,
        packets: [0; 2],
        bytes: [0; 2],
        rev_nat: None,
        tcp: TcpWindow::UNKNOWN,
    };

    pub fn state(&self) -> CtState {
        self.state
    }

    /// The caller flags and [`CtFlags::SEEN_REPLY`] (not the table's private bits).
    pub fn flags(&self) -> CtFlags {
        CtFlags(self.flags.0 & CtFlags::PUBLIC_BITS)
    }

    /// `FIN_FROM_*` bits.
    #[inline]
    pub(super) fn fin_seen(&self) -> u8 {
        (self.flags.0 & CtFlags::FIN_BITS) >> CtFlags::FIN_SHIFT
    }

    #[inline]
    pub(super) fn set_fin_seen(&mut self, fin_seen: u8) {
        self.flags.0 = (self.flags.0 & !CtFlags::FIN_BITS)
            | ((fin_seen << CtFlags::FIN_SHIFT) & CtFlags::FIN_BITS);
    }

    /// True when the tail is written (see "The tail").
    #[inline]
    pub(super) fn has_tail(&self) -> bool {
        self.flags.contains(CtFlags::TAIL)
    }

    /// Writes the implied tail of a compact entry, so that it can be updated in place; a no-op
    /// when the tail is written already.
    #[inline]
    pub(super) fn expand(&mut self) {
        if self.has_tail() {
            return;
        }
        let mut packets = [0; 2];
        let mut bytes = [0; 2];
        for dir in [FlowDirection::Original, FlowDirection::Reply] {
            if self.flags.contains(CtFlags::first(dir)) {
                packets[dir.index()] = 1;
                bytes[dir.index()] = u64::from(self.first_bytes);
            }
        }
        self.created = self.last_seen;
        self.packets = packets;
        self.bytes = bytes;
        self.rev_nat = None;
        self.tcp = TcpWindow::UNKNOWN;
        self.flags.0 = (self.flags.0 & !CtFlags::FIRST_BITS) | CtFlags::TAIL.0;
        self.first_bytes = 0; // Now the SNAT port: none.
    }

    /// Stores an expanded entry compact when its tail holds nothing the head cannot imply (see
    /// "The tail"); otherwise leaves it as it is. The table calls it on a created entry just
    /// before the store, which then skips the tail.
    #[inline]
    pub(super) fn compact(&mut self) {
        if !self.has_tail()
            || self.created != self.last_seen
            || self.rev_nat.is_some()
            || self.tcp != TcpWindow::UNKNOWN
            || self.first_bytes != 0
        {
            return;
        }
        let (mut first, mut first_bytes) = (0, 0u64);
        for dir in [FlowDirection::Original, FlowDirection::Reply] {
            match (self.packets[dir.index()], self.bytes[dir.index()]) {
                (0, 0) => {}
                (1, b) if first == 0 => {
                    first = CtFlags::first(dir).0;
                    first_bytes = b;
                }
                _ => return,
            }
        }
        let Ok(first_bytes) = u16::try_from(first_bytes) else {
            return;
        };
        self.flags.0 = (self.flags.0 & !(CtFlags::TAIL.0 | CtFlags::FIRST_BITS)) | first;
        self.first_bytes = first_bytes;
    }

    /// The TCP sequence tracking (unknown in a compact entry).
    #[inline]
    pub(super) fn tcp_window(&self) -> TcpWindow {
        if self.has_tail() {
            self.tcp
        } else {
            TcpWindow::UNKNOWN
        }
    }

    /// Service frontend to restore as the source of replies.
    #[inline]
    pub fn rev_nat(&self) -> Option<RevNat> {
        if self.has_tail() {
            self.rev_nat
        } else {
            None
        }
    }

    pub fn set_rev_nat(&mut self, rev_nat: Option<RevNat>) {
        self.expand();
        self.rev_nat = rev_nat;
    }

    /// The source port this flow's packets are SNATed to (masquerade, `tables::snat`), on the
    /// node's own address; `None` when the flow is not SNATed. Only an expanded entry has one
    /// (a compact entry's field holds its first packet's length).
    #[inline]
    pub fn snat_port(&self) -> Option<u16> {
        match self.first_bytes {
            port @ 1.. if self.has_tail() => Some(port),
            _ => None,
        }
    }

    /// Records (or, with `None`, clears) the SNAT port; expands a compact entry first.
    pub fn set_snat_port(&mut self, port: Option<u16>) {
        self.expand();
        self.first_bytes = port.unwrap_or(0);
    }

    /// Sets or clears caller flags ([`CtFlags::DSR`], [`CtFlags::PROXY`]); other bits are left
    /// alone because the table maintains them.
    pub fn set_flag(&mut self, flag: CtFlags, on: bool) {
        let bits = flag.0 & CtFlags::CALLER_BITS;
        if on {
            self.flags.0 |= bits;
        } else {
            self.flags.0 &= !bits;
        }
    }

    /// Monotonic nanoseconds when the entry was created.
    pub fn created(&self) -> u64 {
        if self.has_tail() {
            self.created
        } else {
            self.last_seen
        }
    }

    /// Monotonic nanoseconds of the last packet.
    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    /// Monotonic nanoseconds at which the entry expires.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires <= now
    }

    pub fn packets(&self, dir: FlowDirection) -> u64 {
        if self.has_tail() {
            u64::from(self.packets[dir.index()])
        } else {
            u64::from(self.flags.contains(CtFlags::first(dir)))
        }
    }

    pub fn bytes(&self, dir: FlowDirection) -> u64 {
        if self.has_tail() {
            self.bytes[dir.index()]
        } else if self.flags.contains(CtFlags::first(dir)) {
            u64::from(self.first_bytes)
        } else {
            0
        }
    }

    pub(super) fn fresh(info: &CtCreate, now: u64) -> CtEntry {
        CtEntry {
            state: if info.established {
                CtState::Established
            } else {
                CtState::New
            },
            // Built expanded; `compact` decides how it is stored.
            flags: CtFlags((info.flags.0 & CtFlags::CALLER_BITS) | CtFlags::TAIL.0),
            src_identity: info.src_identity,
            created: now,
            last_seen: now,
            rev_nat: info.rev_nat,
            ..CtEntry::EMPTY
        }
    }

    pub(super) fn account(&mut self, dir: FlowDirection, bytes: u32) {
        let d = dir.index();
        self.packets[d] = self.packets[d].wrapping_add(1);
        self.bytes[d] = self.bytes[d].wrapping_add(u64::from(bytes));
    }

    /// Eviction preference, smallest first: expired, then not-established (or closing), then
    /// established; ties go to the entry idle the longest.
    pub(super) fn eviction_rank(&self, now: u64) -> (u8, u64) {
        let class = if self.is_expired(now) {
            0
        } else if self.state.is_established() {
            2
        } else {
            1
        };
        (class, self.last_seen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    /// The tail of the slot `h` names, as stored (not as the getters imply it).
    fn raw_tail(ct: &Conntrack, h: CtHandle) -> (u64, [u32; 2], Option<RevNat>) {
        let (b, way) = ct.locate(h);
        let e = &ct.buckets[b].slots[way].entry;
        (e.created, e.packets, e.rev_nat)
    }

    #[test]
    fn a_plain_new_flow_is_stored_without_its_tail() {
        let mut ct = table(8);
        // A first occupant with a full tail, removed: its tail stays in the slot.
        let old = FlowKey::new(v4(10, 0, 0, 9), v4(10, 0, 0, 2), 1, 80, IPPROTO_TCP);
        let info = CtCreate {
            rev_nat: Some(RevNat::new(v4(172, 20, 0, 1), 80)),
            ..CtCreate::default()
        };
        let hash = ct.hash_key(&old);
        let (h_old, _) = ct.create_counted(
            &old,
            hash,
            FlowDirection::Original,
            info,
            SEC,
            seg(SYN),
            2000,
        );
        let stale = raw_tail(&ct, h_old);
        assert!(
            stale.2.is_some(),
            "a flow with NAT information writes its tail"
        );
        assert!(ct.remove(&old));
        // A plain flow takes the same (first free) slot and leaves that tail alone...
        let key = FlowKey::new(v4(10, 0, 0, 9), v4(10, 0, 0, 2), 1, 80, IPPROTO_UDP);
        let hash = ct.hash_key(&key);
        let info = CtCreate::default();
        let (h, _) = ct.create_counted(&key, hash, FlowDirection::Reply, info, 2 * SEC, seg(0), 74);
        assert_eq!(h, h_old);
        assert_eq!(raw_tail(&ct, h), stale);
        // ...yet reads as if it were written.
        let e = *ct.entry(h);
        assert_eq!((e.created(), e.rev_nat()), (2 * SEC, None));
        assert_eq!(
            (
                e.packets(FlowDirection::Reply),
                e.bytes(FlowDirection::Reply)
            ),
            (1, 74)
        );
        assert_eq!(
            (
                e.packets(FlowDirection::Original),
                e.bytes(FlowDirection::Original)
            ),
            (0, 0)
        );
        // The next packet writes the whole tail, then counts.
        ct.update(h, FlowDirection::Original, seg(0), 60, 3 * SEC);
        assert_eq!(raw_tail(&ct, h), (2 * SEC, [1, 1], None));
        assert_eq!(ct.entry(h).bytes(FlowDirection::Reply), 74);
        assert_eq!(ct.entry(h).bytes(FlowDirection::Original), 60);
        assert_eq!(ct.entry(h).created(), 2 * SEC);
        // A setter writes the implied tail before its field.
        let h2 = create(
            &mut ct,
            &FlowKey::new(v4(1, 1, 1, 1), v4(2, 2, 2, 2), 5, 6, 17),
            4,
        );
        let frontend = RevNat::new(v4(172, 20, 0, 2), 53);
        ct.entry_mut(h2).set_rev_nat(Some(frontend));
        assert_eq!(raw_tail(&ct, h2), (4, [0, 0], Some(frontend)));
    }

    #[test]
    fn a_first_packet_too_long_for_the_head_writes_the_tail() {
        let mut ct = table(8);
        let key = client_key(IPPROTO_UDP);
        let hash = ct.hash_key(&key);
        let info = CtCreate::default();
        let (h, _) = ct.create_counted(
            &key,
            hash,
            FlowDirection::Original,
            info,
            SEC,
            seg(0),
            70_000,
        );
        assert_eq!(raw_tail(&ct, h), (SEC, [1, 0], None));
        assert_eq!(ct.entry(h).bytes(FlowDirection::Original), 70_000);
    }

    #[test]
    fn counters_per_direction() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_UDP);
        let h = create(&mut ct, &key, 0);
        for _ in 0..3 {
            let (h, dir) = look(&ct, &key, 0).unwrap();
            ct.update(h, dir, seg(0), 100, 0);
        }
        let (h2, dir) = look(&ct, &key.reversed(), 0).unwrap();
        ct.update(h2, dir, seg(0), 1500, 0);
        let e = ct.entry(h);
        assert_eq!(e.packets(FlowDirection::Original), 3);
        assert_eq!(e.bytes(FlowDirection::Original), 300);
        assert_eq!(e.packets(FlowDirection::Reply), 1);
        assert_eq!(e.bytes(FlowDirection::Reply), 1500);
    }

    #[test]
    fn nat_info_and_caller_flags_are_kept() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        let hash = ct.hash_key(&key);
        let frontend = RevNat::new(v4(172, 20, 0, 10), 443);
        let info = CtCreate {
            src_identity: Identity(1234),
            flags: CtFlags::DSR | CtFlags::SEEN_REPLY,
            rev_nat: Some(frontend),
            ..CtCreate::default()
        };
        let h = ct.create(&key, hash, FlowDirection::Original, info, 0);
        let e = ct.entry(h);
        assert_eq!(e.src_identity, Identity(1234));
        assert_eq!(e.rev_nat(), Some(frontend));
        assert_eq!(frontend.addr(), v4(172, 20, 0, 10));
        assert_eq!(frontend.port(), 443);
        // The caller cannot claim a reply was seen.
        assert_eq!(e.flags(), CtFlags::DSR);
        let e = ct.entry_mut(h);
        e.set_flag(CtFlags::PROXY, true);
        e.set_flag(CtFlags::DSR, false);
        e.set_flag(CtFlags::SEEN_REPLY, true);
        assert_eq!(e.flags(), CtFlags::PROXY);
        let v6 = RevNat::new("fd00::10".parse().unwrap(), 80);
        assert_eq!(v6.addr(), "fd00::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn snat_port_shares_the_head_with_a_compact_entrys_first_length() {
        let mut ct = table(64);
        let key = client_key(IPPROTO_TCP);
        let hash = ct.hash_key(&key);
        let (h, _) = ct.create_counted(
            &key,
            hash,
            FlowDirection::Original,
            CtCreate::default(),
            0,
            seg(SYN),
            74,
        );
        // Compact: the field is the first packet's length, not a port.
        assert_eq!(ct.entry(h).snat_port(), None);
        assert_eq!(ct.entry(h).bytes(FlowDirection::Original), 74);
        ct.entry_mut(h).set_snat_port(Some(61000));
        let e = ct.entry(h);
        assert_eq!(e.snat_port(), Some(61000));
        assert_eq!(
            e.bytes(FlowDirection::Original),
            74,
            "expanding kept the count"
        );
        // Updates keep it; clearing it leaves an expanded entry without a port.
        let (h2, dir) = look(&ct, &key.reversed(), 0).unwrap();
        ct.update(h2, dir, seg(SYN | ACK), 60, SEC);
        assert_eq!(ct.entry(h).snat_port(), Some(61000));
        ct.entry_mut(h).set_snat_port(None);
        assert_eq!(ct.entry(h).snat_port(), None);
    }
}
