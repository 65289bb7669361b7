//! Per-worker counters: one per drop reason, per stage and per verdict.
//!
//! Plain `u64`s written by exactly one worker thread, so incrementing costs an add. The daemon
//! publishes snapshots to the metrics endpoint; [`Counters::merge`] sums workers.

use super::drop::DropReason;

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
            /// Indexed by `DropReason as u8`.
            pub drops_by_reason: [u64; 256],
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
    /// Count a drop by `stage` for `reason`.
    #[inline]
    pub fn drop(&mut self, stage: Stage, reason: DropReason) {
        self.drops_by_reason[reason as usize] += 1;
        self.stage_drops[stage as usize] += 1;
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops_by_reason[reason as usize]
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
        one.drop(Stage::Route, DropReason::NoNextHop);
        let mut sum = Counters::default();
        sum.merge(&one);
        sum.merge(&one);
        let scalars: Vec<_> = sum.scalars().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            scalars,
            [("dsr_option_written", 4), ("icmp_too_big_sent", 2)]
        );
        assert_eq!(sum.drops(DropReason::NoNextHop), 2);
        assert_eq!(sum.stage_drops[Stage::Route as usize], 2);
    }
}
