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

/// Counters of one worker.
#[derive(Clone, Debug)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames handed to the kernel's stack.
    pub pass_packets: u64,
    pub drop_packets: u64,
    /// Indexed by `DropReason as u8`.
    pub drops_by_reason: [u64; 256],
    /// Indexed by `Stage as u8`: frames that entered the stage.
    pub stage_in: [u64; Stage::COUNT],
    /// Indexed by `Stage as u8`: frames the stage dropped.
    pub stage_drops: [u64; Stage::COUNT],
    pub arp_replies: u64,
    /// IPv6 Neighbor Advertisements sent for the pods' gateway.
    pub ndp_replies: u64,
    pub decapsulated: u64,
    pub encapsulated: u64,
    pub dnat: u64,
    pub reverse_nat: u64,
    pub dsr_option_written: u64,
    pub dsr_option_consumed: u64,
    pub ct_created: u64,
    /// Frames whose flow had a conntrack entry (policy skipped).
    pub ct_established: u64,
    /// ICMP errors matched to a tracked flow.
    pub ct_related: u64,
    pub policy_lookups: u64,
    /// L4 checksums completed for frames from pods (AF_XDP carries no CHECKSUM_PARTIAL flag).
    pub l4_checksum_completed: u64,
    /// ICMP "fragmentation needed" / "packet too big" errors sent back to pods whose packet
    /// did not fit its path.
    pub icmp_too_big_sent: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            pass_packets: 0,
            drop_packets: 0,
            drops_by_reason: [0; 256],
            stage_in: [0; Stage::COUNT],
            stage_drops: [0; Stage::COUNT],
            arp_replies: 0,
            ndp_replies: 0,
            decapsulated: 0,
            encapsulated: 0,
            dnat: 0,
            reverse_nat: 0,
            dsr_option_written: 0,
            dsr_option_consumed: 0,
            ct_created: 0,
            ct_established: 0,
            ct_related: 0,
            policy_lookups: 0,
            l4_checksum_completed: 0,
            icmp_too_big_sent: 0,
        }
    }
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
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.pass_packets += o.pass_packets;
        self.drop_packets += o.drop_packets;
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
        self.arp_replies += o.arp_replies;
        self.ndp_replies += o.ndp_replies;
        self.decapsulated += o.decapsulated;
        self.encapsulated += o.encapsulated;
        self.dnat += o.dnat;
        self.reverse_nat += o.reverse_nat;
        self.dsr_option_written += o.dsr_option_written;
        self.dsr_option_consumed += o.dsr_option_consumed;
        self.ct_created += o.ct_created;
        self.ct_established += o.ct_established;
        self.ct_related += o.ct_related;
        self.policy_lookups += o.policy_lookups;
        self.l4_checksum_completed += o.l4_checksum_completed;
        self.icmp_too_big_sent += o.icmp_too_big_sent;
    }

    /// Non-zero drop counters, for logs and tests.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops(*r)))
            .filter(|(_, n)| *n > 0)
    }
}
