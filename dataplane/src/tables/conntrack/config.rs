//! How a [`Conntrack`](super::Conntrack) is built: capacity, idle timeouts and hash seed.
//!
//! Contract: the defaults are Cilium's timeouts and a fixed seed; the fast path reads the
//! timeouts in nanoseconds (`TimeoutsNs`), converted once when the table is built.

use std::hash::BuildHasher;
use std::time::Duration;

use super::entry::CtState;
use super::key::MIX;
use super::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Idle timeouts: an entry expires this long after its last packet. Defaults are Cilium's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP before the handshake completes (`New`, `SynSent`, `SynRecv`).
    pub tcp_syn: Duration,
    /// TCP `Established` and `FinWait`.
    pub tcp_established: Duration,
    /// TCP `Closing` (FIN both ways, or RST).
    pub tcp_close: Duration,
    pub udp: Duration,
    /// ICMP and ICMPv6.
    pub icmp: Duration,
    /// Every other protocol.
    pub other: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(21_600),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(60),
            other: Duration::from_secs(60),
        }
    }
}

/// [`CtTimeouts`] in nanoseconds, as the fast path uses them.
#[derive(Clone, Copy, Debug)]
pub(super) struct TimeoutsNs {
    tcp_syn: u64,
    tcp_established: u64,
    tcp_close: u64,
    udp: u64,
    icmp: u64,
    other: u64,
}

impl TimeoutsNs {
    pub(super) fn new(t: &CtTimeouts) -> TimeoutsNs {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        TimeoutsNs {
            tcp_syn: ns(t.tcp_syn),
            tcp_established: ns(t.tcp_established),
            tcp_close: ns(t.tcp_close),
            udp: ns(t.udp),
            icmp: ns(t.icmp),
            other: ns(t.other),
        }
    }

    #[inline]
    pub(super) fn for_state(&self, proto: u8, state: CtState) -> u64 {
        match proto {
            IPPROTO_TCP => match state {
                CtState::New | CtState::SynSent | CtState::SynRecv => self.tcp_syn,
                CtState::Established | CtState::FinWait => self.tcp_established,
                CtState::Closing => self.tcp_close,
            },
            IPPROTO_UDP => self.udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => self.icmp,
            _ => self.other,
        }
    }
}

/// How to build a [`Conntrack`](super::Conntrack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// Number of entries; rounded up to a power of two, at least [`WAYS`](super::WAYS).
    pub capacity: usize,
    pub timeouts: CtTimeouts,
    /// Keys the flow hash. Use a random value per table ([`CtConfig::random_seed`]) so that
    /// remote senders cannot aim many flows at one bucket.
    pub hash_seed: u64,
}

impl CtConfig {
    /// A seed from the process's random hash keys (the ones `HashMap` uses); no syscall per call.
    pub fn random_seed() -> u64 {
        std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
    }
}

impl Default for CtConfig {
    /// 64k entries, Cilium's timeouts, and a fixed seed (tests and tools; daemons should set a
    /// random one).
    fn default() -> Self {
        CtConfig {
            capacity: 1 << 16,
            timeouts: CtTimeouts::default(),
            hash_seed: MIX[0],
        }
    }
}
