//! Source NAT state: which source port on the node's own address a flow leaves with, kept in
//! the worker's conntrack table. Masquerading (pods -> the world) uses it; so can any SNAT that
//! must bring replies back through this node (NodePort's SNAT mode).
//!
//! # Model (Cilium's BPF SNAT, with the state in conntrack)
//! A translated flow has two conntrack entries in the same per-worker table:
//! - the flow's own entry, on its original tuple (`pod:port <-> remote:port`), which policy
//!   created; it records the chosen port ([`CtEntry::snat_port`](super::conntrack::CtEntry)),
//!   so that every later packet of the flow is translated the same way;
//! - the *translated* entry, on the tuple as it appears on the wire
//!   (`node:nat_port <-> remote:port`), created here; its `rev_nat` holds the original source
//!   address and port, so that a reply (`remote -> node:nat_port`) is turned back into a packet
//!   to the original source before anything else looks at it ([`original_of`]). Both directions
//!   step its state machine, so it lives exactly as long as the flow does.
//!
//! The translated entry is also the port's reservation: a port is free for a new flow towards
//! `remote:port` when no live entry has the translated tuple, or when the entry's TCP flow has
//! closed (RST seen, or FIN both ways: `Closing`), as Linux's NAT lets a new connection take a
//! tuple whose conntrack entry is in CLOSE/TIME_WAIT and Cilium's SNAT recycles closed
//! mappings. Without that, a closed flow would hold its port for the close timeout (10 s) and
//! the default range (4,536 ports) would cap new connections to one server at ~450/s. Mapping is endpoint-dependent
//! (RFC 4787 terms): the same port may serve flows to different remotes at once, as Linux's
//! and Cilium's SNAT do, so a range of N ports holds N flows *per remote address and port*.
//!
//! # Allocation
//! [`PortAllocator::allocate`] tries at most [`MAX_PROBES`] candidates: the first at an offset
//! from the flow's hash plus a per-allocator counter (RFC 6056's algorithm 3: flows to one
//! remote take consecutive ports, so they rarely collide), the next ones after it. A probe is
//! one conntrack lookup; no allocation ever scans the range. A free (never used or expired)
//! candidate wins; only when none of the probes is free does the first candidate held by a
//! closed TCP flow get recycled: its translated entry is overwritten in place by the new
//! flow's, so the closed flow's late replies no longer reach its pod and its own entry's
//! recorded port fails [`refresh`]'s ownership test (the `rev_nat` differs), so a late packet
//! of it leaves with another port. Recycling thus happens only under pressure. An allocation
//! that finds neither fails (the caller drops the packet, counted). Each worker allocates from its own
//! slice of the configured range ([`PortRange::share`]), so workers never share allocation
//! state, and a reply's port says which worker's table holds its flow.
//!
//! Allocation-free; uses the conntrack table only through its public API.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::conntrack::{
    Conntrack, CtCreate, CtEntry, CtState, FlowDirection, FlowKey, RevNat, TcpSegment,
};
use crate::types::Identity;

/// The default masquerade source ports: above Linux's default `ip_local_port_range`
/// (32768-60999), so the node's own connections never pick one, and above the NodePort range
/// (30000-32767).
pub const DEFAULT_PORTS: PortRange = PortRange {
    first: 61000,
    last: 65535,
};

/// Candidates an allocation tries before it fails.
pub const MAX_PROBES: u32 = 32;

/// An inclusive range of ports, never empty and never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("port range {0:?} is not FIRST-LAST (for example 61000-65535)")]
    Syntax(String),
    #[error("port range {first}-{last} is empty or starts at 0: give FIRST-LAST with 1 <= FIRST <= LAST <= 65535")]
    Empty { first: u16, last: u16 },
}

impl PortRange {
    /// `first..=last`; refused when empty or when it contains port 0.
    pub fn new(first: u16, last: u16) -> Result<PortRange, PortRangeError> {
        if first == 0 || first > last {
            return Err(PortRangeError::Empty { first, last });
        }
        Ok(PortRange { first, last })
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    /// Number of ports (1..=65535).
    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Never true (a range holds at least one port); for clippy's `len` convention.
    pub fn is_empty(self) -> bool {
        false
    }

    #[inline]
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// The `index`-th of `parts` disjoint, consecutive slices that together cover the range
    /// (the first `len % parts` slices one port longer); `None` when `index >= parts` or the
    /// range has fewer ports than `parts`. Each worker allocates from its own slice.
    pub fn share(self, index: usize, parts: usize) -> Option<PortRange> {
        let (len, parts64) = (u64::from(self.len()), parts as u64);
        if index >= parts || parts64 > len {
            return None;
        }
        let (base, extra, i) = (len / parts64, len % parts64, index as u64);
        let start = u64::from(self.first) + i * base + i.min(extra);
        let size = base + u64::from(i < extra);
        let first = u16::try_from(start).ok()?;
        let last = u16::try_from(start + size - 1).ok()?;
        Some(PortRange { first, last })
    }

    /// The `n`-th port of the range, wrapping around.
    #[inline]
    fn nth(self, n: u32) -> u16 {
        // `n % len < len <= 65535 - first + 1`, so the sum fits a u16.
        (u32::from(self.first) + n % self.len()) as u16
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// `FIRST-LAST` (also as Linux writes `ip_local_port_range`: `FIRST<whitespace>LAST`).
    fn from_str(s: &str) -> Result<PortRange, PortRangeError> {
        let syntax = || PortRangeError::Syntax(s.to_string());
        let mut parts = s.trim().splitn(2, |c: char| c == '-' || c.is_whitespace());
        let first = parts.next().and_then(|p| p.trim().parse().ok());
        let last = parts.next().and_then(|p| p.trim().parse().ok());
        match (first, last) {
            (Some(first), Some(last)) => PortRange::new(first, last),
            _ => Err(syntax()),
        }
    }
}

/// A flow to translate: its original source, the remote end, and the address it leaves with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatFlow {
    /// The source as the sender wrote it (a pod's address and port).
    pub original: (IpAddr, u16),
    /// The destination (the same before and after translation).
    pub remote: (IpAddr, u16),
    /// The node's address the flow leaves with.
    pub nat_addr: IpAddr,
    /// `wire::ip::Protocol` number: TCP or UDP.
    pub proto: u8,
    /// The original sender's identity, recorded in the translated entry.
    pub identity: Identity,
}

impl SnatFlow {
    /// The flow's tuple after translation to `port`, oriented as it leaves.
    pub fn translated_key(&self, port: u16) -> FlowKey {
        let (remote, rport) = self.remote;
        FlowKey::new(self.nat_addr, remote, port, rport, self.proto)
    }

    fn original_key(&self) -> FlowKey {
        let ((src, sport), (dst, dport)) = (self.original, self.remote);
        FlowKey::new(src, dst, sport, dport, self.proto)
    }
}

/// How a pipeline masquerades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqueradeConfig {
    /// The node's whole range: replies to any of its ports are recognised (and dropped when no
    /// flow of this worker's owns the port).
    pub ports: PortRange,
    /// This worker's share, which it allocates from (`PortRange::share`).
    pub worker_ports: PortRange,
}

impl MasqueradeConfig {
    /// A single worker's configuration: it allocates from the whole range.
    pub fn single_worker(ports: PortRange) -> MasqueradeConfig {
        MasqueradeConfig {
            ports,
            worker_ports: ports,
        }
    }
}

/// A worker's masquerade state: the configuration and its port allocator.
#[derive(Clone, Debug)]
pub struct Masquerade {
    ports: PortRange,
    alloc: PortAllocator,
}

impl Masquerade {
    pub fn new(cfg: MasqueradeConfig) -> Masquerade {
        Masquerade {
            ports: cfg.ports,
            alloc: PortAllocator::new(cfg.worker_ports),
        }
    }

    /// The node's whole range.
    pub fn ports(&self) -> PortRange {
        self.ports
    }

    /// The worker's allocator, over its share.
    pub fn allocator(&mut self) -> &mut PortAllocator {
        &mut self.alloc
    }
}

/// One worker's source-port allocator over its slice of the range (see the module doc).
#[derive(Clone, Debug)]
pub struct PortAllocator {
    ports: PortRange,
    /// Allocations so far: moves each flow's first candidate one port on.
    next: u32,
}

impl PortAllocator {
    pub fn new(ports: PortRange) -> PortAllocator {
        PortAllocator { ports, next: 0 }
    }

    /// The ports this allocator hands out.
    pub fn ports(&self) -> PortRange {
        self.ports
    }

    /// Picks a free port for `flow` and reserves it: creates the translated entry, with the
    /// leaving packet (`tcp`, `bytes`) already counted in it. `None` when the
    /// [`MAX_PROBES`] candidates are all taken. The caller records the port in the flow's own
    /// entry ([`CtEntry::set_snat_port`](super::conntrack::CtEntry::set_snat_port)), after this
    /// call: creating an entry invalidates handles.
    pub fn allocate(
        &mut self,
        ct: &mut Conntrack,
        flow: &SnatFlow,
        tcp: TcpSegment,
        bytes: u32,
        now: u64,
    ) -> Option<u16> {
        let offset = (ct.hash_key(&flow.original_key()) as u32).wrapping_add(self.next);
        self.next = self.next.wrapping_add(1);
        // The first candidate held by a closed TCP flow: taken only when no candidate is free,
        // so a closed flow's late packets keep their way back unless the range is short.
        let mut closed: Option<(u16, FlowKey, u64)> = None;
        for probe in 0..MAX_PROBES.min(self.ports.len()) {
            let port = self.ports.nth(offset.wrapping_add(probe));
            let key = flow.translated_key(port);
            let hash = ct.hash_key(&key);
            match ct.lookup(&key, hash, now) {
                None => {
                    create_translated(ct, flow, &key, hash, tcp, bytes, now);
                    return Some(port);
                }
                Some((h, _)) if closed.is_none() && is_closed_tcp(ct.entry(h)) => {
                    closed = Some((port, key, hash));
                }
                Some(_) => {}
            }
        }
        let (port, key, hash) = closed?;
        // Overwrites the closed flow's translated entry in place: its replies stop reaching
        // its pod, and its own entry's recorded port fails `refresh`'s ownership test.
        create_translated(ct, flow, &key, hash, tcp, bytes, now);
        Some(port)
    }
}

/// A translated entry whose TCP flow has ended (RST seen, or FIN both ways): its port may
/// serve a new flow to the same remote, as Linux's NAT reuses a tuple in CLOSE/TIME_WAIT.
/// The TCP state machine puts only TCP entries in `Closing`.
fn is_closed_tcp(entry: &CtEntry) -> bool {
    entry.state() == CtState::Closing
}

/// Accounts a leaving packet of an already translated flow in its translated entry (keeping
/// the reservation alive as long as the flow). An entry that expired or was evicted is
/// created again on the same port when that port is still free. Returns false when the port
/// now belongs to another flow: the caller allocates a new one.
pub fn refresh(
    ct: &mut Conntrack,
    flow: &SnatFlow,
    port: u16,
    tcp: TcpSegment,
    bytes: u32,
    now: u64,
) -> bool {
    let key = flow.translated_key(port);
    let hash = ct.hash_key(&key);
    match ct.lookup(&key, hash, now) {
        Some((h, dir)) => {
            let ours = ct.entry(h).rev_nat() == Some(original_rev_nat(flow));
            if ours {
                ct.update(h, dir, tcp, bytes, now);
            }
            ours
        }
        None => {
            create_translated(ct, flow, &key, hash, tcp, bytes, now);
            true
        }
    }
}

/// Why a packet to a masquerade port was not turned back into a reply to its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyRefused {
    /// No live flow left with that port towards the sender.
    NoMapping,
    /// A TCP RST outside its receiver's window (conntrack's sequence check): it must not close
    /// the translated entry, which would free the port for another flow.
    RstOutOfWindow,
}

/// The original source of a reply `remote -> nat_addr:nat_port` of a translated flow, its
/// packet (`tcp`, `bytes`) accounted in the translated entry; refused when no live flow left
/// with that port towards `remote`, or when the packet is a RST out of window.
#[allow(clippy::too_many_arguments)] // The reply's tuple and the packet.
pub fn original_of(
    ct: &mut Conntrack,
    remote: (IpAddr, u16),
    nat: (IpAddr, u16),
    proto: u8,
    tcp: TcpSegment,
    bytes: u32,
    now: u64,
) -> Result<(IpAddr, u16), ReplyRefused> {
    let key = FlowKey::new(remote.0, nat.0, remote.1, nat.1, proto);
    let hash = ct.hash_key(&key);
    let (h, dir) = ct.lookup(&key, hash, now).ok_or(ReplyRefused::NoMapping)?;
    // The translated entry was created leaving: a reply travels the other way. An entry of
    // the same tuple created by a packet *to* the node is no translation.
    if dir != FlowDirection::Reply {
        return Err(ReplyRefused::NoMapping);
    }
    let original = ct.entry(h).rev_nat().ok_or(ReplyRefused::NoMapping)?;
    if ct.update(h, dir, tcp, bytes, now).out_of_window {
        return Err(ReplyRefused::RstOutOfWindow);
    }
    Ok((original.addr(), original.port()))
}

/// The original source of the translated packet `nat_addr:nat_port -> remote` quoted in an
/// ICMP error (a router's answer about a packet that left translated); `None` when no live
/// flow left with that port towards `remote`. Nothing is accounted: the error belongs to the
/// flow, it is not one of its packets.
pub fn original_of_quoted(
    ct: &Conntrack,
    nat: (IpAddr, u16),
    remote: (IpAddr, u16),
    proto: u8,
    now: u64,
) -> Option<(IpAddr, u16)> {
    let key = FlowKey::new(nat.0, remote.0, nat.1, remote.1, proto);
    let (h, dir) = ct.lookup(&key, ct.hash_key(&key), now)?;
    if dir != FlowDirection::Original {
        return None;
    }
    let original = ct.entry(h).rev_nat()?;
    Some((original.addr(), original.port()))
}

fn original_rev_nat(flow: &SnatFlow) -> RevNat {
    RevNat::new(flow.original.0, flow.original.1)
}

fn create_translated(
    ct: &mut Conntrack,
    flow: &SnatFlow,
    key: &FlowKey,
    hash: u64,
    tcp: TcpSegment,
    bytes: u32,
    now: u64,
) {
    let info = CtCreate {
        src_identity: flow.identity,
        rev_nat: Some(original_rev_nat(flow)),
        ..CtCreate::default()
    };
    ct.create_counted(key, hash, FlowDirection::Original, info, now, tcp, bytes);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::tables::conntrack::CtConfig;

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const SYN: u8 = 0x02;
    const SEC: u64 = 1_000_000_000;

    /// The pod's segments in these tests' flows (initial number 100, no data): its SYN at 100,
    /// everything else at 101, acknowledging the remote's SYN (901).
    fn pod(flags: u8) -> TcpSegment {
        segment(flags, 100, 901)
    }

    /// The remote's segments (initial number 900), acknowledging the pod's SYN (101).
    fn remote(flags: u8) -> TcpSegment {
        segment(flags, 900, 101)
    }

    fn segment(flags: u8, isn: u32, peer_next: u32) -> TcpSegment {
        TcpSegment {
            flags,
            seq: if flags & SYN != 0 { isn } else { isn + 1 },
            ack: if flags & 0x10 != 0 { peer_next } else { 0 },
            window: 64_000,
            ..TcpSegment::NONE
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn table() -> Conntrack {
        Conntrack::new(CtConfig {
            capacity: 1 << 14,
            ..CtConfig::default()
        })
    }

    /// Pod 10.1.0.`pod`:`sport` -> 198.51.100.7:80, leaving as 192.168.50.1.
    fn flow(pod: u8, sport: u16) -> SnatFlow {
        SnatFlow {
            original: (v4(10, 1, 0, pod), sport),
            remote: (v4(198, 51, 100, 7), 80),
            nat_addr: v4(192, 168, 50, 1),
            proto: TCP,
            identity: Identity(300),
        }
    }

    #[test]
    fn parses_shares_and_checks_ranges() {
        assert_eq!("61000-65535".parse(), Ok(DEFAULT_PORTS));
        assert_eq!("32768\t60999".parse(), PortRange::new(32768, 60999));
        assert!(matches!(
            "65535-61000".parse::<PortRange>(),
            Err(PortRangeError::Empty { .. })
        ));
        assert!(matches!(
            "0-10".parse::<PortRange>(),
            Err(PortRangeError::Empty { .. })
        ));
        assert!(matches!(
            "x".parse::<PortRange>(),
            Err(PortRangeError::Syntax(_))
        ));
        let linux = PortRange::new(32768, 60999).unwrap();
        let nodeport = PortRange::new(30000, 32767).unwrap();
        assert!(!DEFAULT_PORTS.overlaps(linux) && !DEFAULT_PORTS.overlaps(nodeport));
        assert!(linux.overlaps(PortRange::new(60999, 61000).unwrap()));
        assert_eq!(DEFAULT_PORTS.len(), 4536);
        assert_eq!(DEFAULT_PORTS.to_string(), "61000-65535");
    }

    #[test]
    fn worker_shares_are_disjoint_and_cover_the_range() {
        for parts in [1usize, 2, 3, 7, 64] {
            let shares: Vec<_> = (0..parts)
                .map(|i| DEFAULT_PORTS.share(i, parts).unwrap())
                .collect();
            assert_eq!(shares[0].first(), DEFAULT_PORTS.first());
            assert_eq!(shares[parts - 1].last(), DEFAULT_PORTS.last());
            for pair in shares.windows(2) {
                assert_eq!(pair[0].last() + 1, pair[1].first(), "{parts} parts");
            }
            let total: u32 = shares.iter().map(|s| s.len()).sum();
            assert_eq!(total, DEFAULT_PORTS.len());
        }
        assert_eq!(DEFAULT_PORTS.share(2, 2), None);
        assert_eq!(PortRange::new(10, 11).unwrap().share(0, 3), None);
    }

    #[test]
    fn allocation_reserves_a_port_and_replies_find_the_original_source() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(DEFAULT_PORTS);
        let f = flow(5, 40000);
        let port = alloc.allocate(&mut ct, &f, pod(SYN), 60, 0).unwrap();
        assert!(DEFAULT_PORTS.contains(port));
        let got = original_of(
            &mut ct,
            f.remote,
            (f.nat_addr, port),
            TCP,
            remote(0x12),
            60,
            SEC,
        );
        assert_eq!(got, Ok(f.original));
        // The packet as it left, quoted in a router's ICMP error, names the same flow.
        assert_eq!(
            original_of_quoted(&ct, (f.nat_addr, port), f.remote, TCP, SEC),
            Some(f.original)
        );
        assert_eq!(
            original_of_quoted(&ct, f.remote, (f.nat_addr, port), TCP, SEC),
            None
        );
        // Another port, another remote or another protocol: no translation.
        let other = if port == 65535 { 61000 } else { port + 1 };
        assert_eq!(
            original_of(
                &mut ct,
                f.remote,
                (f.nat_addr, other),
                TCP,
                remote(0),
                60,
                SEC
            ),
            Err(ReplyRefused::NoMapping)
        );
        let stranger = (v4(198, 51, 100, 8), 80);
        assert_eq!(
            original_of(
                &mut ct,
                stranger,
                (f.nat_addr, port),
                TCP,
                remote(0),
                60,
                SEC
            ),
            Err(ReplyRefused::NoMapping)
        );
        assert_eq!(
            original_of(
                &mut ct,
                f.remote,
                (f.nat_addr, port),
                UDP,
                TcpSegment::NONE,
                60,
                SEC
            ),
            Err(ReplyRefused::NoMapping)
        );
        // The reservation lives as the flow does: a handshake that never completes expires
        // with the SYN timeout (60 s).
        assert_eq!(
            original_of(
                &mut ct,
                f.remote,
                (f.nat_addr, port),
                TCP,
                remote(0x10),
                60,
                120 * SEC
            ),
            Err(ReplyRefused::NoMapping)
        );
    }

    #[test]
    fn concurrent_flows_to_one_remote_get_distinct_ports() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(DEFAULT_PORTS);
        let mut ports = HashSet::new();
        for i in 0..1000u16 {
            let f = flow((i % 200) as u8 + 1, 30000 + i);
            let port = alloc.allocate(&mut ct, &f, pod(SYN), 60, 0).unwrap();
            assert!(ports.insert(port), "port {port} handed out twice");
        }
        assert_eq!(ports.len(), 1000);
    }

    #[test]
    fn exhaustion_fails_after_bounded_probes_and_frees_with_expiry() {
        let mut ct = table();
        let range = PortRange::new(61000, 61009).unwrap();
        let mut alloc = PortAllocator::new(range);
        for i in 0..10 {
            assert!(alloc
                .allocate(&mut ct, &flow(1, 1000 + i), pod(SYN), 60, 0)
                .is_some());
        }
        assert_eq!(
            alloc.allocate(&mut ct, &flow(1, 2000), pod(SYN), 60, 0),
            None
        );
        // The same ports still serve another remote (endpoint-dependent mapping).
        let mut elsewhere = flow(1, 2000);
        elsewhere.remote = (v4(203, 0, 113, 9), 443);
        assert!(alloc
            .allocate(&mut ct, &elsewhere, pod(SYN), 60, 0)
            .is_some());
        // Unanswered SYNs expire (60 s): their ports are free again.
        assert!(alloc
            .allocate(&mut ct, &flow(1, 2000), pod(SYN), 60, 61 * SEC)
            .is_some());
    }

    #[test]
    fn refresh_keeps_recreates_or_gives_up_a_port() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(PortRange::new(61000, 61000).unwrap());
        let a = flow(1, 1000);
        let port = alloc.allocate(&mut ct, &a, pod(SYN), 60, 0).unwrap();
        assert!(refresh(&mut ct, &a, port, pod(0x10), 60, SEC));
        // Lost (evicted, say): created again on the same port.
        assert!(ct.remove(&a.translated_key(port)));
        assert!(refresh(&mut ct, &a, port, pod(0x10), 60, 2 * SEC));
        assert_eq!(
            original_of(
                &mut ct,
                a.remote,
                (a.nat_addr, port),
                TCP,
                remote(0x10),
                60,
                2 * SEC
            ),
            Ok(a.original)
        );
        // Taken by another flow meanwhile: refused, the caller allocates anew.
        assert!(ct.remove(&a.translated_key(port)));
        let b = flow(2, 1000);
        assert_eq!(
            alloc.allocate(&mut ct, &b, pod(SYN), 60, 3 * SEC),
            Some(port)
        );
        assert!(!refresh(&mut ct, &a, port, pod(0x10), 60, 3 * SEC));
    }

    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;

    /// Allocates a port for `f` and completes the handshake through the translation (SYN out,
    /// SYN+ACK back, ACK out): the translated entry is established.
    fn connect(alloc: &mut PortAllocator, ct: &mut Conntrack, f: &SnatFlow, now: u64) -> u16 {
        let port = alloc
            .allocate(ct, f, pod(SYN), 60, now)
            .expect("a free port");
        let back = original_of(
            ct,
            f.remote,
            (f.nat_addr, port),
            TCP,
            remote(SYN | ACK),
            60,
            now,
        );
        assert_eq!(back, Ok(f.original));
        assert!(refresh(ct, f, port, pod(ACK), 60, now));
        port
    }

    /// The pod's FIN, the remote's FIN, the pod's last ACK.
    fn close_by_fins(ct: &mut Conntrack, f: &SnatFlow, port: u16, now: u64) {
        assert!(refresh(ct, f, port, pod(FIN | ACK), 60, now));
        let back = original_of(
            ct,
            f.remote,
            (f.nat_addr, port),
            TCP,
            remote(FIN | ACK),
            60,
            now,
        );
        assert_eq!(back, Ok(f.original));
        assert!(refresh(ct, f, port, pod(ACK), 60, now));
    }

    /// A RST, from the pod (`from_pod`) or from the remote.
    fn reset(ct: &mut Conntrack, f: &SnatFlow, port: u16, from_pod: bool, now: u64) {
        if from_pod {
            assert!(refresh(ct, f, port, pod(RST), 60, now));
        } else {
            let back = original_of(ct, f.remote, (f.nat_addr, port), TCP, remote(RST), 60, now);
            assert_eq!(back, Ok(f.original));
        }
    }

    fn four_ports() -> PortRange {
        PortRange::new(61000, 61003).unwrap()
    }

    #[test]
    fn ports_of_closed_tcp_flows_are_recycled() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(four_ports());
        let flows: Vec<_> = (0..4).map(|i| flow(1, 1000 + i)).collect();
        let ports: Vec<_> = flows
            .iter()
            .map(|f| connect(&mut alloc, &mut ct, f, 0))
            .collect();
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 4);
        assert_eq!(
            alloc.allocate(&mut ct, &flow(1, 2000), pod(SYN), 60, SEC),
            None
        );
        close_by_fins(&mut ct, &flows[0], ports[0], SEC);
        close_by_fins(&mut ct, &flows[1], ports[1], SEC);
        reset(&mut ct, &flows[2], ports[2], true, SEC);
        reset(&mut ct, &flows[3], ports[3], false, SEC);
        // Well within the close timeout (10 s), every port is taken again by a new flow.
        let mut recycled = HashSet::new();
        for i in 0..4 {
            let newcomer = flow(2, 3000 + i);
            let port = connect(&mut alloc, &mut ct, &newcomer, 2 * SEC);
            assert!(recycled.insert(port), "port {port} handed out twice");
        }
        assert_eq!(recycled, ports.iter().copied().collect());
        // The new flows are open: nothing is left.
        assert_eq!(
            alloc.allocate(&mut ct, &flow(2, 4000), pod(SYN), 60, 3 * SEC),
            None
        );
    }

    #[test]
    fn a_recycled_port_no_longer_translates_for_its_closed_flow() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(PortRange::new(61000, 61000).unwrap());
        let old = flow(1, 1000);
        let port = connect(&mut alloc, &mut ct, &old, 0);
        close_by_fins(&mut ct, &old, port, SEC);
        let new = flow(2, 1000);
        assert_eq!(
            alloc.allocate(&mut ct, &new, pod(SYN), 60, 2 * SEC),
            Some(port)
        );
        // The old flow's late packet (a retransmitted last ACK, say): the port is not its own
        // any more, so the caller must allocate anew; the new flow's entry is untouched.
        assert!(!refresh(&mut ct, &old, port, pod(ACK), 60, 3 * SEC));
        // Replies on the port reach the new flow's pod, and its handshake proceeds.
        let back = original_of(
            &mut ct,
            new.remote,
            (new.nat_addr, port),
            TCP,
            remote(SYN | ACK),
            60,
            3 * SEC,
        );
        assert_eq!(back, Ok(new.original));
        assert!(refresh(&mut ct, &new, port, pod(ACK), 60, 3 * SEC));
        let key = new.translated_key(port);
        let (h, _) = ct.lookup(&key, ct.hash_key(&key), 3 * SEC).unwrap();
        assert_eq!(ct.entry(h).state(), CtState::Established);
    }

    #[test]
    fn ports_of_open_or_half_closed_flows_are_never_taken() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(four_ports());
        let flows: Vec<_> = (0..4).map(|i| flow(1, 1000 + i)).collect();
        let ports: Vec<_> = flows
            .iter()
            .map(|f| connect(&mut alloc, &mut ct, f, 0))
            .collect();
        // One FIN only (the pod's, then the remote's): the flows still carry data one way.
        assert!(refresh(
            &mut ct,
            &flows[0],
            ports[0],
            pod(FIN | ACK),
            60,
            SEC
        ));
        let back = original_of(
            &mut ct,
            flows[1].remote,
            (flows[1].nat_addr, ports[1]),
            TCP,
            remote(FIN | ACK),
            60,
            SEC,
        );
        assert_eq!(back, Ok(flows[1].original));
        for i in 0..8 {
            let got = alloc.allocate(&mut ct, &flow(2, 2000 + i), pod(SYN), 60, 2 * SEC);
            assert_eq!(got, None, "an open flow's port was taken");
        }
        // A handshake in progress is open as well: the fresh SYN of the port's only flow.
        let mut ct = table();
        let mut alloc = PortAllocator::new(PortRange::new(61000, 61000).unwrap());
        assert!(alloc
            .allocate(&mut ct, &flow(1, 1000), pod(SYN), 60, 0)
            .is_some());
        assert_eq!(
            alloc.allocate(&mut ct, &flow(1, 1001), pod(SYN), 60, SEC),
            None
        );
        // A UDP flow never closes by flags: its port waits for its timeout.
        let mut ct = table();
        let mut alloc = PortAllocator::new(PortRange::new(61000, 61000).unwrap());
        let mut udp = flow(1, 1000);
        udp.proto = UDP;
        assert!(alloc
            .allocate(&mut ct, &udp, TcpSegment::NONE, 60, 0)
            .is_some());
        udp.original.1 = 1001;
        assert_eq!(
            alloc.allocate(&mut ct, &udp, TcpSegment::NONE, 60, SEC),
            None
        );
    }

    #[test]
    fn free_ports_are_preferred_to_recycling() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(four_ports());
        let a = flow(1, 1000);
        let b = flow(1, 1001);
        let pa = connect(&mut alloc, &mut ct, &a, 0);
        let pb = connect(&mut alloc, &mut ct, &b, 0);
        close_by_fins(&mut ct, &a, pa, SEC);
        reset(&mut ct, &b, pb, false, SEC);
        // Two ports were never used: they go first, whatever the probes' order.
        let closed: HashSet<u16> = [pa, pb].into();
        let p1 = connect(&mut alloc, &mut ct, &flow(2, 2000), 2 * SEC);
        let p2 = connect(&mut alloc, &mut ct, &flow(2, 2001), 2 * SEC);
        assert!(!closed.contains(&p1) && !closed.contains(&p2) && p1 != p2);
        // The closed flows still translate their late replies meanwhile.
        assert_eq!(
            original_of(
                &mut ct,
                a.remote,
                (a.nat_addr, pa),
                TCP,
                remote(ACK),
                60,
                2 * SEC
            ),
            Ok(a.original)
        );
        // Then, under pressure, the closed ones are recycled.
        let p3 = connect(&mut alloc, &mut ct, &flow(2, 2002), 3 * SEC);
        let p4 = connect(&mut alloc, &mut ct, &flow(2, 2003), 3 * SEC);
        assert_eq!(HashSet::from([p3, p4]), closed);
    }

    #[test]
    fn a_guessed_rst_neither_closes_a_flow_nor_frees_its_port() {
        let mut ct = table();
        let mut alloc = PortAllocator::new(PortRange::new(61000, 61000).unwrap());
        let f = flow(1, 1000);
        let port = connect(&mut alloc, &mut ct, &f, 0);
        // Off-path RSTs "from the remote" at numbers it guessed: refused, the flow stays open.
        for seq in [1 << 20, 0x8000_0000, 0xffff_0000, 0x1234_5678] {
            let guess = TcpSegment { seq, ..remote(RST) };
            let back = original_of(&mut ct, f.remote, (f.nat_addr, port), TCP, guess, 60, SEC);
            assert_eq!(back, Err(ReplyRefused::RstOutOfWindow), "seq {seq:#x}");
        }
        assert_eq!(
            alloc.allocate(&mut ct, &flow(2, 1000), pod(SYN), 60, SEC),
            None
        );
        // The remote's own RST, at the number the pod expects, closes it: the port is free.
        reset(&mut ct, &f, port, false, 2 * SEC);
        assert_eq!(
            alloc.allocate(&mut ct, &flow(2, 1000), pod(SYN), 60, 2 * SEC),
            Some(port)
        );
    }

    #[test]
    fn workers_with_their_own_shares_never_hand_out_the_same_port() {
        let parts = 4;
        let mut seen = HashSet::new();
        for w in 0..parts {
            let mut ct = table();
            let share = DEFAULT_PORTS.share(w, parts).unwrap();
            let mut alloc = PortAllocator::new(share);
            for i in 0..500u16 {
                let port = alloc
                    .allocate(&mut ct, &flow(1, i + 1), pod(SYN), 60, 0)
                    .unwrap();
                assert!(share.contains(port));
                assert!(seen.insert(port), "worker {w} reused port {port}");
            }
        }
    }
}
