//! Per-worker counters: one per drop reason, per stage and per verdict.
//!
//! Plain `u64`s written by exactly one worker thread, so incrementing costs an add. The daemon
//! publishes snapshots to the metrics endpoint; [`Counters::merge`] sums workers.

use super::drop::DropReason;
pub use crate::tables::policy::Direction;

/// The pipeline stages, in order. A frame is counted as it enters a stage and, if the stage
/// drops it, in that stage's drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stage {
    Parse = 0,
    Decap = 1,
    Identity = 2,
    Service = 3,
    Conntrack = 4,
    Policy = 5,
    Route = 6,
}

impl Stage {
    pub const COUNT: usize = 7;
    pub const ALL: [Stage; Stage::COUNT] = [
        Stage::Parse,
        Stage::Decap,
        Stage::Identity,
        Stage::Service,
        Stage::Conntrack,
        Stage::Policy,
        Stage::Route,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Decap => "decap",
            Stage::Identity => "identity",
            Stage::Service => "service",
            Stage::Conntrack => "conntrack",
            Stage::Policy => "policy",
            Stage::Route => "route",
        }
    }
}

/// Packets and bytes of one interface, each way (`ifindex` 0: interfaces beyond the table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTraffic {
    pub ifindex: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Interfaces a worker counts separately; more are summed under ifindex 0.
pub const INTERFACE_SLOTS: usize = 256;

/// Per-interface traffic of one worker: an open-addressing table on the ifindex, so the
/// fast path finds an interface's slot without allocating (a node's interface indexes are
/// small and mostly dense: the first probe finds it).
#[derive(Clone, Debug)]
pub struct InterfaceCounters {
    slots: [InterfaceTraffic; INTERFACE_SLOTS],
    /// Interfaces that found the table full.
    overflow: InterfaceTraffic,
}

impl Default for InterfaceCounters {
    fn default() -> Self {
        InterfaceCounters {
            slots: [InterfaceTraffic::default(); INTERFACE_SLOTS],
            overflow: InterfaceTraffic::default(),
        }
    }
}

impl InterfaceCounters {
    /// The counters of `ifindex` (claimed on first use; the overflow's when the table is full
    /// or for ifindex 0).
    #[inline]
    pub fn of(&mut self, ifindex: u32) -> &mut InterfaceTraffic {
        match self.find(ifindex) {
            Some(i) => {
                let slot = &mut self.slots[i];
                slot.ifindex = ifindex;
                slot
            }
            None => &mut self.overflow,
        }
    }

    /// The slot that holds `ifindex`, or the free slot it would take.
    #[inline]
    fn find(&self, ifindex: u32) -> Option<usize> {
        if ifindex == 0 {
            return None;
        }
        let start = ifindex as usize % INTERFACE_SLOTS;
        (0..INTERFACE_SLOTS)
            .map(|probe| (start + probe) % INTERFACE_SLOTS)
            .find(|&i| self.slots[i].ifindex == ifindex || self.slots[i].ifindex == 0)
    }

    /// Every interface counted, the overflow last (when it counted anything).
    pub fn iter(&self) -> impl Iterator<Item = &InterfaceTraffic> {
        let overflow = (self.overflow != InterfaceTraffic::default()).then_some(&self.overflow);
        self.slots.iter().filter(|s| s.ifindex != 0).chain(overflow)
    }

    /// Adds another worker's interfaces into these.
    pub fn merge(&mut self, o: &InterfaceCounters) {
        for t in o.iter() {
            let mine = self.of(t.ifindex);
            mine.rx_packets += t.rx_packets;
            mine.rx_bytes += t.rx_bytes;
            mine.tx_packets += t.tx_packets;
            mine.tx_bytes += t.tx_bytes;
        }
    }
}

/// Which way a dropped frame was going, from the endpoint's side as Cilium counts it: a frame a
/// pod sent is `Egress`, any other (to a pod, from the uplink or the host) `Ingress`, except
/// that a policy drop goes the way of the map that refused it. One definition: the counters
/// and the monitor's events both use it.
#[inline]
pub fn drop_direction(reason: DropReason, from_pod: bool) -> Direction {
    match reason {
        DropReason::PolicyDeniedIngress | DropReason::PolicyDenyRuleIngress => Direction::Ingress,
        DropReason::PolicyDeniedEgress | DropReason::PolicyDenyRuleEgress => Direction::Egress,
        _ if from_pod => Direction::Egress,
        _ => Direction::Ingress,
    }
}

/// The scalar counters, listed once: this list generates the [`Counters`] fields, their
/// zeroing, [`Counters::merge`] and [`Counters::scalars`] (the `status` JSON and, later, the
/// metric names), so a counter cannot be counted without being shown (VPP's
/// `foreach_*_error` lists are the model).
macro_rules! scalar_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one worker.
        #[derive(Clone, Debug)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
            /// Indexed by `DropReason as u8`: drops in both directions.
            pub drops_by_reason: [u64; 256],
            /// Indexed by `DropReason as u8`: the drops of `drops_by_reason` in the egress
            /// direction (the rest are ingress).
            pub egress_drops_by_reason: [u64; 256],
            /// Packets and bytes received and sent, per interface.
            pub interfaces: InterfaceCounters,
            /// Indexed by `Stage as u8`: frames that entered the stage.
            pub stage_in: [u64; Stage::COUNT],
            /// Indexed by `Stage as u8`: frames the stage dropped.
            pub stage_drops: [u64; Stage::COUNT],
        }

        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    $( $name: 0, )*
                    drops_by_reason: [0; 256],
                    egress_drops_by_reason: [0; 256],
                    interfaces: InterfaceCounters::default(),
                    stage_in: [0; Stage::COUNT],
                    stage_drops: [0; Stage::COUNT],
                }
            }
        }

        impl Counters {
            /// Every scalar counter with its name, in the list's order.
            pub fn scalars(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$( (stringify!($name), self.$name) ),*].into_iter()
            }

            fn merge_scalars(&mut self, o: &Counters) {
                $( self.$name += o.$name; )*
            }
        }
    };
}

scalar_counters! {
    rx_packets,
    rx_bytes,
    tx_packets,
    tx_bytes,
    /// Frames handed to the kernel's stack.
    pass_packets,
    drop_packets,
    arp_replies,
    /// IPv6 Neighbor Advertisements sent for the pods' gateway.
    ndp_replies,
    decapsulated,
    encapsulated,
    dnat,
    reverse_nat,
    dsr_option_written,
    dsr_option_consumed,
    ct_created,
    /// Frames whose flow had a conntrack entry (policy skipped).
    ct_established,
    /// ICMP errors matched to a tracked flow.
    ct_related,
    policy_lookups,
    /// L4 checksums completed for frames from pods (AF_XDP carries no CHECKSUM_PARTIAL flag).
    l4_checksum_completed,
    /// ICMP "fragmentation needed" / "packet too big" errors sent back to pods whose packet
    /// did not fit its path.
    icmp_too_big_sent,
    /// Masquerade source ports allocated (new flows from pods to the world).
    masquerade_ports_allocated,
    /// Packets from pods to the world whose source was masqueraded to the node's address.
    masquerade_translated,
    /// Replies to masqueraded flows turned back to the pod's address and port.
    masquerade_reversed,
}

impl Counters {
    /// Count a drop by `stage` for `reason`, going `direction`.
    #[inline]
    pub fn drop(&mut self, stage: Stage, reason: DropReason, direction: Direction) {
        self.drops_by_reason[reason as usize] += 1;
        if direction == Direction::Egress {
            self.egress_drops_by_reason[reason as usize] += 1;
        }
        self.stage_drops[stage as usize] += 1;
    }

    /// Drops counted for `reason`, both directions.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops_by_reason[reason as usize]
    }

    /// Drops counted for `reason` going `direction`.
    pub fn drops_going(&self, reason: DropReason, direction: Direction) -> u64 {
        let egress = self.egress_drops_by_reason[reason as usize];
        match direction {
            Direction::Egress => egress,
            Direction::Ingress => self.drops(reason).saturating_sub(egress),
        }
    }

    /// Adds another worker's counters into these.
    pub fn merge(&mut self, o: &Counters) {
        self.merge_scalars(o);
        for (a, b) in self
            .drops_by_reason
            .iter_mut()
            .zip(o.drops_by_reason.iter())
        {
            *a += b;
        }
        self.interfaces.merge(&o.interfaces);
        for (a, b) in self
            .egress_drops_by_reason
            .iter_mut()
            .zip(o.egress_drops_by_reason.iter())
        {
            *a += b;
        }
        for (a, b) in self.stage_in.iter_mut().zip(o.stage_in.iter()) {
            *a += b;
        }
        for (a, b) in self.stage_drops.iter_mut().zip(o.stage_drops.iter()) {
            *a += b;
        }
    }

    /// Non-zero drop counters, for logs and tests.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_scalar_and_array() {
        let mut one = Counters {
            dsr_option_written: 2,
            icmp_too_big_sent: 1,
            ..Counters::default()
        };
        one.drop(Stage::Route, DropReason::NoNextHop, Direction::Egress);
        one.drop(Stage::Route, DropReason::NoNextHop, Direction::Ingress);
        let mut sum = Counters::default();
        sum.merge(&one);
        sum.merge(&one);
        let scalars: Vec<_> = sum.scalars().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            scalars,
            [("dsr_option_written", 4), ("icmp_too_big_sent", 2)]
        );
        assert_eq!(sum.drops(DropReason::NoNextHop), 4);
        assert_eq!(sum.drops_going(DropReason::NoNextHop, Direction::Egress), 2);
        assert_eq!(
            sum.drops_going(DropReason::NoNextHop, Direction::Ingress),
            2
        );
        assert_eq!(sum.stage_drops[Stage::Route as usize], 4);
    }

    #[test]
    fn interfaces_are_counted_apart_and_merged_by_ifindex() {
        let mut one = Counters::default();
        one.interfaces.of(3).rx_packets += 1;
        one.interfaces.of(3 + INTERFACE_SLOTS as u32).tx_bytes += 100; // Same first probe.
        one.interfaces.of(0).rx_bytes += 7; // Overflow.
        let mut sum = Counters::default();
        sum.interfaces.of(9).tx_packets += 2;
        sum.merge(&one);
        sum.merge(&one);
        let seen: Vec<_> = sum.interfaces.iter().copied().collect();
        let get = |ifindex: u32| seen.iter().find(|t| t.ifindex == ifindex).copied();
        assert_eq!(get(3).map(|t| t.rx_packets), Some(2));
        assert_eq!(
            get(3 + INTERFACE_SLOTS as u32).map(|t| t.tx_bytes),
            Some(200)
        );
        assert_eq!(get(9).map(|t| t.tx_packets), Some(2));
        assert_eq!(get(0).map(|t| t.rx_bytes), Some(14));
        assert_eq!(seen.len(), 4);
        // A full table counts the rest under the overflow.
        let mut full = InterfaceCounters::default();
        for ifindex in 1..=INTERFACE_SLOTS as u32 + 5 {
            full.of(ifindex).rx_packets += 1;
        }
        assert_eq!(full.iter().count(), INTERFACE_SLOTS + 1);
        assert_eq!(full.iter().last().map(|t| t.rx_packets), Some(5));
    }
}
