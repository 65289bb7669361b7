//! Helpers shared by the conntrack unit tests.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::segment::tcp_flag;
use super::*;

pub(super) const SEC: u64 = 1_000_000_000;
pub(super) const SYN: u8 = tcp_flag::SYN;
pub(super) const ACK: u8 = tcp_flag::ACK;
pub(super) const FIN: u8 = tcp_flag::FIN;
pub(super) const RST: u8 = tcp_flag::RST;

pub(super) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub(super) fn table(capacity: usize) -> Conntrack {
    Conntrack::new(CtConfig {
        capacity,
        ..CtConfig::default()
    })
}

/// Client 10.0.0.1:40000 -> server 10.0.0.2:80.
pub(super) fn client_key(proto: u8) -> FlowKey {
    FlowKey::new(v4(10, 0, 0, 1), v4(10, 0, 0, 2), 40000, 80, proto)
}

pub(super) fn create(ct: &mut Conntrack, key: &FlowKey, now: u64) -> CtHandle {
    let h = ct.hash_key(key);
    ct.create(key, h, FlowDirection::Original, CtCreate::default(), now)
}

pub(super) fn look(ct: &Conntrack, key: &FlowKey, now: u64) -> Option<(CtHandle, FlowDirection)> {
    ct.lookup(key, ct.hash_key(key), now)
}

/// A segment with `flags` and no numbers (what a non-TCP packet passes, with 0).
pub(super) fn seg(flags: u8) -> TcpSegment {
    TcpSegment {
        flags,
        ..TcpSegment::NONE
    }
}

/// The initial sequence numbers of the test flows' two sides.
pub(super) const ISN: [u32; 2] = [1_000, 5_000];

/// A segment with `flags` from `dir` at the numbers its flow expects (what a genuine sender
/// sends): its SYN at its initial number, anything else at the number it is expected to send
/// next, acknowledging what its peer is expected to send next.
pub(super) fn in_sequence(e: &CtEntry, dir: FlowDirection, flags: u8) -> TcpSegment {
    let w = e.tcp_window();
    let isn = ISN[dir.index()];
    let seq = match w.next(dir) {
        Some(next) if flags & SYN == 0 => next,
        _ => isn,
    };
    TcpSegment {
        flags,
        seq,
        ack: w.next(dir.reverse()).unwrap_or(0),
        window: 64_000,
        ..TcpSegment::NONE
    }
}

/// Looks `key` up and feeds it one packet, as the pipeline does; a TCP packet is in sequence
/// ([`in_sequence`]).
pub(super) fn packet(ct: &mut Conntrack, key: &FlowKey, flags: u8, now: u64) -> CtUpdate {
    let (h, dir) = look(ct, key, now).expect("flow is tracked");
    let tcp = in_sequence(ct.entry(h), dir, flags);
    ct.update(h, dir, tcp, 100, now)
}

impl Conntrack {
    /// Checks the invariants of the module documentation.
    pub(super) fn check_invariants(&self) {
        let mut occupied = 0;
        let mut seen: HashMap<FlowKey, usize> = HashMap::new();
        for (b, (bucket, tags)) in self.buckets.iter().zip(self.tags.iter()).enumerate() {
            for (way, (&tag, slot)) in tags.0.iter().zip(&bucket.slots).enumerate() {
                if tag == 0 {
                    continue;
                }
                occupied += 1;
                let hash = self.hash_key(&slot.key);
                assert_eq!(self.bucket_index(hash), b, "slot in the wrong bucket");
                assert_eq!(tag_of(hash), tag, "stale tag");
                assert!(
                    seen.insert(slot.key, b * WAYS + way).is_none(),
                    "duplicate key"
                );
            }
        }
        assert_eq!(occupied, self.used);
    }
}

pub(super) fn established(ct: &mut Conntrack, key: &FlowKey) -> CtHandle {
    let h = create(ct, key, 0);
    packet(ct, key, SYN, 0);
    packet(ct, &key.reversed(), SYN | ACK, 0);
    assert_eq!(packet(ct, key, ACK, 0).state, CtState::Established);
    h
}
