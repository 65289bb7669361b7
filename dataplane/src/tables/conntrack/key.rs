//! Flow keys: the canonical form of a flow's 5-tuple, its hash, and the direction of a packet
//! within its flow.
//!
//! Contract: `FlowKey::new(a, b, pa, pb, p) == FlowKey::new(b, a, pb, pa, p)` and the two hash
//! alike (the sending side is remembered but is not part of equality or the hash); IPv4 and
//! IPv6 keys never compare equal, even for IPv4-mapped addresses; the hash is keyed by a seed
//! and no packet-controlled word can cancel another.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// The canonical identity of a flow, plus which endpoint sent the packet it was built from.
///
/// Addresses are stored as 16 bytes (IPv4 as IPv4-mapped IPv6) with a family bit, so an IPv4
/// flow and an IPv6 flow between mapped addresses never alias. Equality and [`Hash`] cover the
/// flow (endpoints, protocol, family) but not the sending side, so
/// `FlowKey::new(a, b, pa, pb, p) == FlowKey::new(b, a, pb, pa, p)`.
#[derive(Clone, Copy)]
pub struct FlowKey {
    /// The smaller `(address, port)` endpoint.
    lo_addr: [u8; 16],
    /// The larger `(address, port)` endpoint.
    hi_addr: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    proto: u8,
    ipv6: bool,
    /// True when the packet's source is the `hi` endpoint. Not part of the flow's identity.
    src_is_hi: bool,
}

impl FlowKey {
    /// Where each field lies, for the state file's layout fingerprint (`state_file.rs`): a
    /// reordered or resized field makes a kept table unreadable, and must be detected.
    pub(super) const FIELD_OFFSETS: [usize; 7] = [
        std::mem::offset_of!(FlowKey, lo_addr),
        std::mem::offset_of!(FlowKey, hi_addr),
        std::mem::offset_of!(FlowKey, lo_port),
        std::mem::offset_of!(FlowKey, hi_port),
        std::mem::offset_of!(FlowKey, proto),
        std::mem::offset_of!(FlowKey, ipv6),
        std::mem::offset_of!(FlowKey, src_is_hi),
    ];

    /// The key of a free slot (never compared: a free slot's tag is 0).
    pub(super) const EMPTY: FlowKey = FlowKey {
        lo_addr: [0; 16],
        hi_addr: [0; 16],
        lo_port: 0,
        hi_port: 0,
        proto: 0,
        ipv6: false,
        src_is_hi: false,
    };

    /// The key of a packet `src:sport -> dst:dport` of IP protocol `proto`.
    ///
    /// Protocols without ports pass 0 for both. ICMP and ICMPv6 echo: the pipeline passes the
    /// echo identifier as BOTH `sport` and `dport`, for requests and replies alike, so that a
    /// reply (addresses swapped, same identifier) builds the same key as its request. Other ICMP
    /// types pass 0 for both.
    ///
    /// When both endpoints are identical (a host talking to itself on one port), every packet
    /// looks like it comes from the originator: the two directions cannot be told apart.
    #[inline]
    pub fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
        let ipv6 = src.is_ipv6() || dst.is_ipv6();
        // Compared as integers (big-endian, so the order is the octets' order): comparing
        // byte arrays built on the stack cost a store-forwarding stall per packet.
        let src_ep = (mapped_bits(src), sport);
        let dst_ep = (mapped_bits(dst), dport);
        let src_is_hi = src_ep > dst_ep;
        let (lo, hi) = if src_is_hi {
            (dst_ep, src_ep)
        } else {
            (src_ep, dst_ep)
        };
        FlowKey {
            lo_addr: lo.0.to_be_bytes(),
            hi_addr: hi.0.to_be_bytes(),
            lo_port: lo.1,
            hi_port: hi.1,
            proto,
            ipv6,
            src_is_hi,
        }
    }

    /// The same flow seen from the other endpoint (source and destination swapped).
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src_is_hi: !self.src_is_hi,
            ..*self
        }
    }

    /// Source address and port of the packet this key was built from. For a key stored in the
    /// table (see [`Conntrack::key`](super::Conntrack::key),
    /// [`Conntrack::iter`](super::Conntrack::iter)) that is the flow's originator.
    pub fn src(&self) -> (IpAddr, u16) {
        if self.src_is_hi {
            (self.addr(&self.hi_addr), self.hi_port)
        } else {
            (self.addr(&self.lo_addr), self.lo_port)
        }
    }

    /// Destination address and port of the packet this key was built from.
    pub fn dst(&self) -> (IpAddr, u16) {
        self.reversed().src()
    }

    /// The IP protocol number.
    pub fn proto(&self) -> u8 {
        self.proto
    }

    pub fn is_ipv6(&self) -> bool {
        self.ipv6
    }

    /// True when the packet's source is the larger endpoint: two keys of one flow with equal
    /// values were sent by the same side.
    #[inline]
    pub(super) fn src_is_hi(&self) -> bool {
        self.src_is_hi
    }

    /// A fast non-cryptographic hash of the flow (not of the sending side), keyed by `seed`.
    ///
    /// 64x64->128-bit multiplies folded to 64 bits (the wyhash mixing step) over the five key
    /// words, then one more round to finish. Every multiplicand that a packet can influence also
    /// carries seed-derived bits, so a sender who does not know the seed cannot force a zero
    /// factor and collapse many flows into one bucket. The low bits pick the bucket and the high
    /// 32 bits the tag.
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        // Each word goes through a bijective step (xor, multiply by an odd constant, xorshift),
        // so no word can cancel another whatever the seed: an earlier multiply-fold of two data
        // words lost the second one whenever the first was zero (the low IPv4 address with the
        // default seed), piling 100k flows into 10 buckets.
        let mut h = seed ^ MIX[1];
        for w in self.words() {
            h = (h ^ w).wrapping_mul(MIX[0]);
            h ^= h >> 29;
        }
        // Finalizer: spread the low bits (flows differing only by source port) over the word.
        fold_mul(h ^ MIX[2], MIX[3])
    }

    /// The key as five 64-bit words: both addresses, then ports, protocol and family.
    #[inline]
    fn words(&self) -> [u64; 5] {
        let lo = u128::from_le_bytes(self.lo_addr);
        let hi = u128::from_le_bytes(self.hi_addr);
        let rest = u64::from(self.lo_port)
            | u64::from(self.hi_port) << 16
            | u64::from(self.proto) << 32
            | u64::from(self.ipv6) << 40;
        [
            lo as u64,
            (lo >> 64) as u64,
            hi as u64,
            (hi >> 64) as u64,
            rest,
        ]
    }

    fn addr(&self, octets: &[u8; 16]) -> IpAddr {
        let v6 = Ipv6Addr::from(*octets);
        match v6.to_ipv4_mapped() {
            Some(v4) if !self.ipv6 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }
}

/// Odd constants with well-spread bits (the golden ratio and wyhash's primes).
pub(super) const MIX: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
    0x8ebc_6af0_9c88_c6e3,
];

/// Multiplies to 128 bits and xors the two halves. One round mixes well only when both inputs
/// vary in many bits; `FlowKey::hash` adds a final round for that reason.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The address as an IPv6 address (IPv4 mapped into `::ffff:0:0/96`), as an integer whose
/// big-endian bytes are [`mapped_octets`].
#[inline]
fn mapped_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => 0xffff_u128 << 32 | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(super) fn mapped_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl PartialEq for FlowKey {
    /// Same flow; the sending side is ignored.
    fn eq(&self, other: &Self) -> bool {
        self.lo_addr == other.lo_addr
            && self.hi_addr == other.hi_addr
            && self.lo_port == other.lo_port
            && self.hi_port == other.hi_port
            && self.proto == other.proto
            && self.ipv6 == other.ipv6
    }
}

impl Eq for FlowKey {}

impl Hash for FlowKey {
    /// Consistent with `eq`: the sending side is left out.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.words().hash(state);
    }
}

impl fmt::Display for FlowKey {
    /// `tcp 10.0.0.1:40000 -> 10.0.0.2:80`, oriented as the packet (or originator) saw it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sa, sp) = self.src();
        let (da, dp) = self.dst();
        match proto_name(self.proto) {
            Some(name) => write!(f, "{name} ")?,
            None => write!(f, "proto-{} ", self.proto)?,
        }
        write!(
            f,
            "{} -> {}",
            SocketAddr::new(sa, sp),
            SocketAddr::new(da, dp)
        )
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowKey({self})")
    }
}

fn proto_name(proto: u8) -> Option<&'static str> {
    Some(match proto {
        IPPROTO_ICMP => "icmp",
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMPV6 => "icmpv6",
        _ => return None,
    })
}

/// Which way a packet travels relative to the flow's originator (Linux conntrack's
/// `IP_CT_DIR_ORIGINAL` / `IP_CT_DIR_REPLY`). Not to be confused with a policy's direction
/// ([`crate::tables::policy::Direction`]: ingress or egress of an endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowDirection {
    /// From the endpoint that opened the flow.
    Original = 0,
    /// Towards the endpoint that opened the flow.
    Reply = 1,
}

impl FlowDirection {
    pub fn reverse(self) -> FlowDirection {
        match self {
            FlowDirection::Original => FlowDirection::Reply,
            FlowDirection::Reply => FlowDirection::Original,
        }
    }

    /// 0 for `Original`, 1 for `Reply`: the index of per-direction counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mapped_bits_are_the_mapped_octets() {
        for a in [
            "10.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "fd00::1:2",
            "::ffff:10.0.0.1",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(mapped_bits(addr).to_be_bytes(), mapped_octets(addr), "{a}");
        }
    }

    #[test]
    fn key_is_canonical_and_remembers_the_sender() {
        let fwd = client_key(IPPROTO_TCP);
        let rev = FlowKey::new(v4(10, 0, 0, 2), v4(10, 0, 0, 1), 80, 40000, IPPROTO_TCP);
        assert_eq!(fwd, rev);
        assert_eq!(fwd.hash(7), rev.hash(7));
        assert_eq!(fwd.src(), (v4(10, 0, 0, 1), 40000));
        assert_eq!(fwd.dst(), (v4(10, 0, 0, 2), 80));
        assert_eq!(rev.src(), (v4(10, 0, 0, 2), 80));
        assert_eq!(fwd.reversed().src(), rev.src());
        assert_eq!(fwd.to_string(), "tcp 10.0.0.1:40000 -> 10.0.0.2:80");
        // Protocol, ports and family are part of the flow.
        assert_ne!(fwd, client_key(IPPROTO_UDP));
        assert_ne!(
            fwd,
            FlowKey::new(v4(10, 0, 0, 1), v4(10, 0, 0, 2), 40001, 80, IPPROTO_TCP)
        );
        let mapped = |ip: IpAddr| match ip {
            IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
            v6 => v6,
        };
        let v6 = FlowKey::new(
            mapped(v4(10, 0, 0, 1)),
            mapped(v4(10, 0, 0, 2)),
            40000,
            80,
            IPPROTO_TCP,
        );
        assert_ne!(fwd, v6);
        assert!(v6.is_ipv6() && !fwd.is_ipv6());
    }

    #[test]
    fn seeds_change_the_hash() {
        let key = client_key(IPPROTO_TCP);
        assert_ne!(key.hash(1), key.hash(2));
        assert_ne!(CtConfig::random_seed(), CtConfig::random_seed());
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            // Few distinct values, so equal addresses (ties broken by port) come up.
            (0u8..4).prop_map(|b| v4(10, 0, 0, b)),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    proptest! {
        #[test]
        fn key_is_symmetric(
            a in arb_ip(), b in arb_ip(), pa in 0u16..4, pb in any::<u16>(), proto in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let fwd = FlowKey::new(a, b, pa, pb, proto);
            let rev = FlowKey::new(b, a, pb, pa, proto);
            prop_assert_eq!(fwd, rev);
            prop_assert_eq!(fwd.hash(seed), rev.hash(seed));
            if a.is_ipv4() == b.is_ipv4() {
                // (Mixed families cannot come from one packet; they read back as IPv6.)
                prop_assert_eq!(fwd.src(), (a, pa));
                prop_assert_eq!(fwd.dst(), (b, pb));
                prop_assert_eq!(rev.src(), (b, pb));
            }
            let mut ct = Conntrack::new(CtConfig { capacity: 8, timeouts: CtTimeouts::default(), hash_seed: seed });
            let h = ct.create(&fwd, ct.hash_key(&fwd), FlowDirection::Original, CtCreate::default(), 0);
            let same_endpoint = (a, pa) == (b, pb);
            let expected = if same_endpoint { FlowDirection::Original } else { FlowDirection::Reply };
            prop_assert_eq!(ct.lookup(&rev, ct.hash_key(&rev), 0), Some((h, expected)));
            prop_assert_eq!(ct.lookup(&fwd, ct.hash_key(&fwd), 0), Some((h, FlowDirection::Original)));
        }
    }
}
