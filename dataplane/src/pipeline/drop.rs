//! Drop reasons: why the pipeline refused a frame.
//!
//! One numbered `#[repr(u8)]` enum, modelled on Cilium's `bpf/lib/drop_reasons.h`. **Numbers are
//! stable and never reused**: metrics, `flagella monitor` and saved captures refer to them. A
//! retired reason keeps its number (comment it out, do not renumber). Numbers are grouped by the
//! stage that usually raises them; the `name()` is the label used in metrics.

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    // --- parse (1..=19) ---
    /// Shorter than an Ethernet header (or its 802.1Q tag).
    EthernetTruncated = 1,
    /// On a pod interface: neither IPv4, IPv6 nor ARP (Cilium's DROP_UNKNOWN_L3).
    UnsupportedEtherType = 2,
    /// ARP that is not Ethernet/IPv4 or is cut short.
    ArpMalformed = 3,
    /// ARP the dataplane does not answer (a reply, or a request for the pod's own address).
    ArpIgnored = 4,
    /// IPv4 header cut short.
    Ipv4Truncated = 5,
    /// IPv4 version, header length or total length invalid.
    Ipv4Malformed = 6,
    /// IPv4 header checksum does not verify.
    Ipv4BadChecksum = 7,
    /// IPv4 options malformed (length < 2, running past the header).
    Ipv4BadOptions = 8,
    /// IPv6 header cut short or payload length past the frame.
    Ipv6Truncated = 9,
    /// IPv6 extension headers malformed, truncated or too many.
    Ipv6BadExtensionHeaders = 10,
    /// IP fragments are not supported (Cilium's DROP_FRAG_NOSUPPORT).
    FragmentUnsupported = 11,
    /// TCP, UDP or ICMP header cut short.
    L4Truncated = 12,
    /// TCP data offset, UDP length or ICMP message invalid.
    L4Malformed = 13,
    /// IPv6 neighbor discovery the dataplane does not answer (duplicate address detection, a
    /// solicitation for the pod's own address, an advertisement, a hop limit other than 255).
    NdpIgnored = 14,
    // --- decapsulation (20..=29) ---
    /// VXLAN or Geneve header (or the frame inside it) malformed.
    TunnelMalformed = 20,
    /// Tunnel packet whose outer source is not a known node.
    TunnelUnknownNode = 21,
    /// Geneve option marked critical that the dataplane does not know (RFC 8926 section 3.5).
    TunnelCriticalOption = 22,
    // --- source identity (30..=39) ---
    /// Source MAC is not the sending endpoint's (Cilium's DROP_INVALID_SMAC).
    InvalidSourceMac = 30,
    /// Source IP is not the sending endpoint's (Cilium's DROP_INVALID_SIP).
    InvalidSourceIp = 31,
    /// Frame from an interface no endpoint or uplink is configured for.
    UnknownInterface = 32,
    /// From a pod: IPv6 from the link-local or the unspecified address (router solicitation,
    /// MLD report, duplicate address detection). Link-scoped, so never forwarded; not spoofing
    /// either, hence not `InvalidSourceIp`. The dataplane answers no neighbor discovery.
    Ipv6LinkScopedSource = 33,
    // --- service load balancing (40..=49) ---
    /// Service frontend without a selectable backend (Cilium's DROP_NO_SERVICE).
    NoServiceBackend = 40,
    /// DSR option malformed.
    DsrOptionMalformed = 41,
    // --- policy (50..=59) ---
    /// Egress policy of the sender: no entry allows (default deny).
    PolicyDeniedEgress = 50,
    /// Ingress policy of the receiver: no entry allows (default deny).
    PolicyDeniedIngress = 51,
    /// Egress policy of the sender: a deny entry matched.
    PolicyDenyRuleEgress = 52,
    /// Ingress policy of the receiver: a deny entry matched.
    PolicyDenyRuleIngress = 53,
    // --- routing and encapsulation (60..=69) ---
    /// TTL or hop limit would reach zero.
    TtlExceeded = 60,
    /// No endpoint, node or uplink to send the frame to.
    NoRoute = 61,
    /// Not enough headroom to encapsulate or to insert the DSR option.
    HeadroomExhausted = 62,
    /// Longer than its path's MTU (the uplink's MTU minus the encapsulation overhead, see
    /// `Encap::overhead`) and not answered with an ICMP error: IPv4 without Don't Fragment
    /// (the dataplane does not fragment), an ICMP error itself, or a frame from the uplink.
    FrameTooLong = 63,
    /// The peer node's (or the default gateway's) MAC is not resolved yet, or the kernel
    /// routes it out of another interface: never sent to a guessed MAC.
    NoNextHop = 64,
    /// Longer than its path's MTU, from a pod, but the ICMP "too big" error could not be sent:
    /// the node has no pod gateway address of the packet's family (`gateway_ipv4` /
    /// `gateway_ipv6` of `local_node`) to send it from.
    TooBigNoGateway = 65,
    /// A DSR IPv4 option from a pod, or from the uplink but not from a known node (neither
    /// through a tunnel nor from a peer node's MAC): a pod must not choose the source address
    /// of another pod's replies.
    DsrOptionUntrusted = 66,
    /// An ICMP error that quotes no tracked flow, or is not addressed to the quoted packet's
    /// sender: never related, so never past policy.
    IcmpErrorUnrelated = 67,
}

impl DropReason {
    /// Every reason, in number order (for metrics registration and docs).
    pub const ALL: [DropReason; 35] = [
        DropReason::EthernetTruncated,
        DropReason::UnsupportedEtherType,
        DropReason::ArpMalformed,
        DropReason::ArpIgnored,
        DropReason::Ipv4Truncated,
        DropReason::Ipv4Malformed,
        DropReason::Ipv4BadChecksum,
        DropReason::Ipv4BadOptions,
        DropReason::Ipv6Truncated,
        DropReason::Ipv6BadExtensionHeaders,
        DropReason::FragmentUnsupported,
        DropReason::L4Truncated,
        DropReason::L4Malformed,
        DropReason::NdpIgnored,
        DropReason::TunnelMalformed,
        DropReason::TunnelUnknownNode,
        DropReason::TunnelCriticalOption,
        DropReason::InvalidSourceMac,
        DropReason::InvalidSourceIp,
        DropReason::UnknownInterface,
        DropReason::Ipv6LinkScopedSource,
        DropReason::NoServiceBackend,
        DropReason::DsrOptionMalformed,
        DropReason::PolicyDeniedEgress,
        DropReason::PolicyDeniedIngress,
        DropReason::PolicyDenyRuleEgress,
        DropReason::PolicyDenyRuleIngress,
        DropReason::TtlExceeded,
        DropReason::NoRoute,
        DropReason::HeadroomExhausted,
        DropReason::FrameTooLong,
        DropReason::NoNextHop,
        DropReason::TooBigNoGateway,
        DropReason::DsrOptionUntrusted,
        DropReason::IcmpErrorUnrelated,
    ];

    /// The stable number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason with number `code`, if any.
    pub fn from_code(code: u8) -> Option<DropReason> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The snake_case name used as the `reason` label in metrics and in monitor output.
    pub fn name(self) -> &'static str {
        use DropReason::*;
        match self {
            EthernetTruncated => "ethernet_truncated",
            UnsupportedEtherType => "unsupported_ethertype",
            ArpMalformed => "arp_malformed",
            ArpIgnored => "arp_ignored",
            Ipv4Truncated => "ipv4_truncated",
            Ipv4Malformed => "ipv4_malformed",
            Ipv4BadChecksum => "ipv4_bad_checksum",
            Ipv4BadOptions => "ipv4_bad_options",
            Ipv6Truncated => "ipv6_truncated",
            Ipv6BadExtensionHeaders => "ipv6_bad_extension_headers",
            FragmentUnsupported => "fragment_unsupported",
            L4Truncated => "l4_truncated",
            L4Malformed => "l4_malformed",
            NdpIgnored => "ndp_ignored",
            TunnelMalformed => "tunnel_malformed",
            TunnelUnknownNode => "tunnel_unknown_node",
            TunnelCriticalOption => "tunnel_critical_option",
            InvalidSourceMac => "invalid_source_mac",
            InvalidSourceIp => "invalid_source_ip",
            UnknownInterface => "unknown_interface",
            Ipv6LinkScopedSource => "ipv6_link_scoped_source",
            NoServiceBackend => "no_service_backend",
            DsrOptionMalformed => "dsr_option_malformed",
            PolicyDeniedEgress => "policy_denied_egress",
            PolicyDeniedIngress => "policy_denied_ingress",
            PolicyDenyRuleEgress => "policy_deny_rule_egress",
            PolicyDenyRuleIngress => "policy_deny_rule_ingress",
            TtlExceeded => "ttl_exceeded",
            NoRoute => "no_route",
            HeadroomExhausted => "headroom_exhausted",
            FrameTooLong => "frame_too_long",
            NoNextHop => "no_next_hop",
            TooBigNoGateway => "too_big_no_gateway",
            DsrOptionUntrusted => "dsr_option_untrusted",
            IcmpErrorUnrelated => "icmp_error_unrelated",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_sorted_and_round_trip() {
        let mut last = 0u8;
        for r in DropReason::ALL {
            assert!(r.code() > last, "{r:?} out of order or duplicated");
            last = r.code();
            assert_eq!(DropReason::from_code(r.code()), Some(r));
        }
        assert_eq!(DropReason::from_code(0), None);
    }

    #[test]
    fn numbers_are_stable() {
        // Changing any of these breaks dashboards and saved monitor output: add, never renumber.
        assert_eq!(DropReason::EthernetTruncated as u8, 1);
        assert_eq!(DropReason::InvalidSourceMac as u8, 30);
        assert_eq!(DropReason::Ipv6LinkScopedSource as u8, 33);
        assert_eq!(DropReason::PolicyDeniedIngress as u8, 51);
        assert_eq!(DropReason::FrameTooLong as u8, 63);
        assert_eq!(DropReason::NoNextHop as u8, 64);
        assert_eq!(DropReason::TooBigNoGateway as u8, 65);
        assert_eq!(DropReason::DsrOptionUntrusted as u8, 66);
        assert_eq!(DropReason::IcmpErrorUnrelated as u8, 67);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
