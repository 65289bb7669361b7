//! The table's layout in memory: slots (key + entry, two cache lines), buckets of
//! [`WAYS`] slots, and the buckets' tags kept in a separate dense array; and a slot's update by
//! one packet.
//!
//! Contract: a `Slot` is 128 bytes with the key and the expiry in its first cache line; a tag is
//! never 0 (0 marks a free slot).

use super::config::TimeoutsNs;
use super::entry::{CtEntry, CtFlags, CtState};
use super::key::{FlowDirection, FlowKey};
use super::segment::{tcp_flag, TcpSegment};
use super::tcp::tcp_step;
use super::tcp_window::RstVerdict;
use super::{CtUpdate, IPPROTO_TCP, WAYS};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Slot {
    pub(super) key: FlowKey,
    pub(super) entry: CtEntry,
}

impl Slot {
    /// [`Conntrack::update`](super::Conntrack::update) on this slot: one packet of `bytes` in
    /// `dir`, with its TCP segment.
    #[inline]
    pub(super) fn account(
        &mut self,
        timeouts: &TimeoutsNs,
        dir: FlowDirection,
        tcp: &TcpSegment,
        bytes: u32,
        now: u64,
    ) -> CtUpdate {
        let proto = self.key.proto();
        let mut dir = dir;
        if proto == IPPROTO_TCP {
            match self.tcp_packet(dir, tcp) {
                Some(d) => dir = d,
                None => {
                    return CtUpdate {
                        state: self.entry.state,
                        dir,
                        out_of_window: true,
                    }
                }
            }
        } else {
            self.entry.expand();
            if dir == FlowDirection::Reply {
                self.entry.state = CtState::Established;
            }
        }
        let entry = &mut self.entry;
        if dir == FlowDirection::Reply {
            entry.flags.0 |= CtFlags::SEEN_REPLY.0;
        }
        entry.account(dir, bytes);
        entry.last_seen = now;
        entry.expires = now.saturating_add(timeouts.for_state(proto, entry.state));
        CtUpdate {
            state: entry.state,
            dir,
            out_of_window: false,
        }
    }

    /// A TCP segment's effect on the state and the sequence tracking; the packet's direction
    /// after it (a restart may swap the sides), or `None` for a RST out of its receiver's
    /// window, which changes nothing.
    #[inline]
    fn tcp_packet(&mut self, dir: FlowDirection, tcp: &TcpSegment) -> Option<FlowDirection> {
        let rst = tcp.flags & tcp_flag::RST != 0;
        if rst {
            match self.entry.tcp_window().judge_rst(dir, tcp) {
                RstVerdict::OutOfWindow => return None,
                // RFC 5961's challenge ACK: passed, the flow left as it is.
                RstVerdict::InWindow => {
                    self.entry.expand();
                    return Some(dir);
                }
                RstVerdict::Exact => {}
            }
        }
        self.entry.expand();
        let step = tcp_step(self.entry.state, self.entry.fin_seen(), dir, tcp.flags);
        let mut dir = dir;
        if step.restart {
            self.entry.flags.0 &= !CtFlags::SEEN_REPLY.0;
            if dir == FlowDirection::Reply {
                // The reply side opens a new connection: it becomes the originator, and the
                // counters follow their endpoints.
                self.key = self.key.reversed();
                self.entry.packets.swap(0, 1);
                self.entry.bytes.swap(0, 1);
                dir = FlowDirection::Original;
            }
        }
        self.entry.state = step.state;
        self.entry.set_fin_seen(step.fin_seen);
        if !rst {
            self.entry.tcp.learn(dir, tcp, step.restart);
        }
        Some(dir)
    }

    pub(super) const EMPTY: Slot = Slot {
        key: FlowKey::EMPTY,
        entry: CtEntry::EMPTY,
    };
}

/// A bucket's slots; its tags live in [`Conntrack`](super::Conntrack)'s tag array.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Bucket {
    pub(super) slots: [Slot; WAYS],
}

impl Bucket {
    pub(super) const EMPTY: Bucket = Bucket {
        slots: [Slot::EMPTY; WAYS],
    };
}

/// A bucket's tags: `tags[w] == 0` iff slot `w` is free. Four buckets' tags per cache line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C, align(16))]
pub(super) struct Tags(pub(super) [u16; WAYS]);

impl Tags {
    pub(super) const EMPTY: Tags = Tags([0; WAYS]);

    /// Bit `w` set when `tags[w] == tag`. Branch-free so the compiler can vectorise it.
    #[inline]
    pub(super) fn matching(&self, tag: u16) -> u32 {
        let mut mask = 0;
        for (w, &t) in self.0.iter().enumerate() {
            mask |= u32::from(t == tag) << w;
        }
        mask
    }

    pub(super) fn free_way(&self) -> Option<usize> {
        self.0.iter().position(|&t| t == 0)
    }
}

/// The tag of a hash: its high 16 bits, never 0 (0 marks a free slot). The low bits pick the
/// bucket, so the tag adds 15 independent bits: a lookup compares a key it does not hold about
/// once in 4,000 buckets searched.
#[inline]
pub(super) fn tag_of(hash: u64) -> u16 {
    ((hash >> 48) as u16) | 1
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        println!(
            "FlowKey {} B, CtEntry {} B, slot {} B, bucket {} B, {} B per entry",
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<CtEntry>(),
            std::mem::size_of::<Slot>(),
            std::mem::size_of::<Bucket>(),
            Conntrack::bytes_per_entry()
        );
        assert!(std::mem::size_of::<FlowKey>() <= 40);
        // Two cache lines per slot; the key and the expiry time share the first.
        assert_eq!(std::mem::size_of::<Slot>(), 128);
        assert!(std::mem::offset_of!(Slot, entry) + std::mem::offset_of!(CtEntry, expires) < 64);
        // A compact entry is its first line: everything up to the tail (`created` on).
        let head_end = std::mem::offset_of!(CtEntry, src_identity) + 4;
        assert!(std::mem::offset_of!(Slot, entry) + head_end <= 64);
        assert_eq!(
            std::mem::offset_of!(Slot, entry) + std::mem::offset_of!(CtEntry, created),
            64
        );
        assert_eq!(std::mem::size_of::<Bucket>(), WAYS * 128);
        assert_eq!(std::mem::size_of::<Tags>(), 16);
        assert_eq!(Conntrack::bytes_per_entry(), 130);
        let ct = table(1024);
        assert_eq!(ct.memory_bytes(), 1024 * Conntrack::bytes_per_entry());
    }

    #[test]
    fn non_tcp_is_established_by_a_reply() {
        let timeouts = CtTimeouts {
            udp: Duration::from_secs(30),
            icmp: Duration::from_secs(20),
            other: Duration::from_secs(40),
            ..CtTimeouts::default()
        };
        let mut ct = Conntrack::new(CtConfig {
            capacity: 64,
            timeouts,
            hash_seed: 1,
        });
        for (proto, timeout) in [
            (IPPROTO_UDP, 30),
            (IPPROTO_ICMP, 20),
            (IPPROTO_ICMPV6, 20),
            (47, 40),
        ] {
            let key = client_key(proto);
            let h = create(&mut ct, &key, 0);
            assert_eq!(ct.entry(h).expires(), timeout * SEC, "proto {proto}");
            assert_eq!(packet(&mut ct, &key, 0, 0).state, CtState::New);
            assert_eq!(packet(&mut ct, &key, 0, SEC).state, CtState::New);
            assert!(!ct.entry(h).flags().contains(CtFlags::SEEN_REPLY));
            assert_eq!(ct.entry(h).expires(), (1 + timeout) * SEC, "proto {proto}");
            let up = packet(&mut ct, &key.reversed(), 0, 2 * SEC);
            assert_eq!(up.state, CtState::Established);
            assert!(ct.entry(h).flags().contains(CtFlags::SEEN_REPLY));
            assert_eq!(ct.entry(h).expires(), (2 + timeout) * SEC, "proto {proto}");
        }
    }
}
