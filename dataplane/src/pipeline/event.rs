//! Monitor events: what `flagella monitor` shows of one frame (a drop, a policy verdict, a
//! trace), captured at the end of a batch.
//!
//! An [`Event`] is `Copy` and fixed-size (the first [`CAPTURE_BYTES`] bytes of the frame
//! included), so that capturing one is a copy into a preallocated ring slot: no allocation, no
//! syscall. Encoding (JSON) happens on the monitor thread, never on the worker.

use super::counters::{drop_direction, Direction, Stage};
use super::drop::DropReason;
use super::meta::{IcmpClass, PacketMeta, Tuple, Verdict};
use crate::tables::endpoints::EndpointId;
use crate::types::Identity;

/// Bytes of the frame kept in an event (for `--pcap`): Ethernet, IP and TCP headers with
/// options fit, as in Cilium's default of 128.
pub const CAPTURE_BYTES: usize = 128;

/// Why an event was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The frame was dropped (every drop, while someone listens).
    Drop,
    /// Policy admitted a new flow (sampled).
    PolicyVerdict,
    /// The frame was forwarded or passed to the kernel (only when traces are on).
    Trace,
}

impl EventKind {
    /// The name `flagella monitor --type` and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Drop => "drop",
            EventKind::PolicyVerdict => "policy-verdict",
            EventKind::Trace => "trace",
        }
    }
}

/// One frame, as the monitor reports it.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub verdict: Verdict,
    /// The stage that dropped the frame (drops only).
    pub stage: Option<Stage>,
    /// The frame came from a pod's interface (not the uplink).
    pub from_pod: bool,
    pub ingress_ifindex: u32,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    pub src_ep: Option<EndpointId>,
    pub dst_ep: Option<EndpointId>,
    pub tuple: Tuple,
    pub tcp_flags: u8,
    /// ICMP and ICMPv6: the message type (the pipeline's `PacketMeta::icmp_type`).
    pub icmp_type: u8,
    /// ICMP and ICMPv6: the message code, when the frame still has the ICMP header where the
    /// parser found it (a frame encapsulated since has not: then `None`).
    pub icmp_code: Option<u8>,
    /// Monotonic nanoseconds of the batch (the monitor thread turns it into wall-clock time).
    pub time_ns: u64,
    /// The whole frame's length; `captured` of its bytes are in `bytes`.
    pub frame_len: u32,
    pub captured: u16,
    pub bytes: [u8; CAPTURE_BYTES],
}

impl Event {
    /// A placeholder for ring slots not written yet.
    pub const EMPTY: Event = Event {
        kind: EventKind::Trace,
        verdict: Verdict::Pending,
        stage: None,
        from_pod: false,
        ingress_ifindex: 0,
        src_identity: Identity(0),
        dst_identity: Identity(0),
        src_ep: None,
        dst_ep: None,
        tuple: Tuple {
            src: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            dst: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            sport: 0,
            dport: 0,
            proto: 0,
        },
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: None,
        time_ns: 0,
        frame_len: 0,
        captured: 0,
        bytes: [0; CAPTURE_BYTES],
    };

    /// Fills `self` (a ring slot) from a frame's final metadata and bytes.
    #[inline]
    pub fn capture(&mut self, kind: EventKind, m: &PacketMeta, frame: &[u8], origin: &Origin) {
        let captured = frame.len().min(CAPTURE_BYTES);
        self.kind = kind;
        self.verdict = m.verdict;
        self.stage = match m.verdict {
            Verdict::Drop(_) => Stage::ALL.get(usize::from(m.drop_stage)).copied(),
            _ => None,
        };
        self.from_pod = origin.from_pod;
        self.ingress_ifindex = origin.ifindex;
        self.src_identity = m.src_identity;
        self.dst_identity = m.dst_identity;
        self.src_ep = m.src_ep;
        self.dst_ep = m.dst_ep;
        self.tuple = m.tuple;
        self.tcp_flags = m.tcp.flags;
        self.icmp_type = m.icmp_type;
        self.icmp_code = icmp_code(m, frame);
        self.time_ns = origin.now;
        self.frame_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.captured = captured as u16;
        self.bytes[..captured].copy_from_slice(&frame[..captured]);
    }

    /// Replaces the captured bytes with `bytes` (at most [`CAPTURE_BYTES`] kept) of a frame
    /// `len` bytes long: the frame as it was received, before the stages rewrote it.
    #[inline]
    pub fn replace_frame(&mut self, bytes: &[u8], len: u32) {
        let captured = bytes.len().min(CAPTURE_BYTES);
        self.frame_len = len;
        self.captured = captured as u16;
        self.bytes[..captured].copy_from_slice(&bytes[..captured]);
    }

    /// The drop reason, for drops.
    pub fn reason(&self) -> Option<DropReason> {
        match self.verdict {
            Verdict::Drop(r) => Some(r),
            _ => None,
        }
    }

    /// The captured bytes.
    pub fn frame(&self) -> &[u8] {
        &self.bytes[..usize::from(self.captured).min(CAPTURE_BYTES)]
    }

    /// `ingress` (towards a pod or the node) or `egress` (from a pod), as Hubble's
    /// `traffic_direction`: a policy drop says which side's policy refused it; otherwise a
    /// frame from a pod is that pod's egress.
    pub fn direction(&self) -> &'static str {
        let direction = match self.reason() {
            Some(reason) => drop_direction(reason, self.from_pod),
            None if self.from_pod => Direction::Egress,
            None => Direction::Ingress,
        };
        direction.name()
    }
}

/// The ICMP code of a frame: the byte after the type, if the type is still at the offset the
/// parser found (two byte reads, only for frames the monitor captures).
#[inline]
fn icmp_code(m: &PacketMeta, frame: &[u8]) -> Option<u8> {
    if m.icmp == IcmpClass::NotIcmp {
        return None;
    }
    let l4 = usize::from(m.l4);
    match frame.get(l4..l4 + 2) {
        Some(&[t, code]) if t == m.icmp_type => Some(code),
        _ => None,
    }
}

/// Where and when the frames of one batch were received.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub ifindex: u32,
    pub from_pod: bool,
    pub now: u64,
}
