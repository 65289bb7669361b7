//! Drop reasons: why the pipeline refused a frame.
//!
//! One numbered `#[repr(u8)]` enum, modelled on Cilium's `bpf/lib/drop_reasons.h`. **Numbers are
//! stable and never reused**: metrics, `flagella monitor` and saved captures refer to them. A
//! retired reason keeps its number (comment it out, do not renumber). Numbers are grouped by the
//! stage that usually raises them; the `name()` is the label used in metrics.

/// The drop reasons, listed once: this list generates the enum (numbers and docs),
/// [`DropReason::ALL`] and [`DropReason::name`], so a reason cannot exist without its name in
/// metrics and `status` (VPP's `foreach_ip4_error` is the model).
macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $name:literal, )*) => {
        /// Why a frame was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl DropReason {
            /// Every reason, in number order (for metrics registration and docs).
            pub const ALL: [DropReason; [$($code),*].len()] = [$(DropReason::$variant),*];

            /// The snake_case name used as the `reason` label in metrics and in monitor output.
            pub fn name(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $name, )*
                }
            }
        }
    };
}

drop_reasons! {
    // --- parse (1..=19) ---
    /// Shorter than an Ethernet header (or its 802.1Q tag).
    EthernetTruncated = 1 => "ethernet_truncated",
    /// On a pod interface: neither IPv4, IPv6 nor ARP (Cilium's DROP_UNKNOWN_L3).
    UnsupportedEtherType = 2 => "unsupported_ethertype",
    /// ARP that is not Ethernet/IPv4 or is cut short.
    ArpMalformed = 3 => "arp_malformed",
    /// ARP the dataplane does not answer (a reply, or a request for the pod's own address).
    ArpIgnored = 4 => "arp_ignored",
    /// IPv4 header cut short.
    Ipv4Truncated = 5 => "ipv4_truncated",
    /// IPv4 version, header length or total length invalid.
    Ipv4Malformed = 6 => "ipv4_malformed",
    /// IPv4 header checksum does not verify.
    Ipv4BadChecksum = 7 => "ipv4_bad_checksum",
    /// IPv4 options malformed (length < 2, running past the header).
    Ipv4BadOptions = 8 => "ipv4_bad_options",
    /// IPv6 header cut short or payload length past the frame.
    Ipv6Truncated = 9 => "ipv6_truncated",
    /// IPv6 extension headers malformed, truncated or too many.
    Ipv6BadExtensionHeaders = 10 => "ipv6_bad_extension_headers",
    /// IP fragments are not supported (Cilium's DROP_FRAG_NOSUPPORT).
    FragmentUnsupported = 11 => "fragment_unsupported",
    /// TCP, UDP or ICMP header cut short.
    L4Truncated = 12 => "l4_truncated",
    /// TCP data offset, UDP length or ICMP message invalid.
    L4Malformed = 13 => "l4_malformed",
    /// IPv6 neighbor discovery the dataplane does not answer (duplicate address detection, a
    /// solicitation for the pod's own address, an advertisement, a hop limit other than 255).
    NdpIgnored = 14 => "ndp_ignored",
    // --- decapsulation (20..=29) ---
    /// VXLAN or Geneve header (or the frame inside it) malformed.
    TunnelMalformed = 20 => "tunnel_malformed",
    /// Tunnel packet whose outer source is not a known node.
    TunnelUnknownNode = 21 => "tunnel_unknown_node",
    /// Geneve option marked critical that the dataplane does not know (RFC 8926 section 3.5).
    TunnelCriticalOption = 22 => "tunnel_critical_option",
    // --- source identity (30..=39) ---
    /// Source MAC is not the sending endpoint's (Cilium's DROP_INVALID_SMAC).
    InvalidSourceMac = 30 => "invalid_source_mac",
    /// Source IP is not the sending endpoint's (Cilium's DROP_INVALID_SIP).
    InvalidSourceIp = 31 => "invalid_source_ip",
    /// Frame from an interface no endpoint or uplink is configured for.
    UnknownInterface = 32 => "unknown_interface",
    /// From a pod: IPv6 from the link-local or the unspecified address (router solicitation,
    /// MLD report, duplicate address detection). Link-scoped, so never forwarded; not spoofing
    /// either, hence not `InvalidSourceIp`. The dataplane answers no neighbor discovery.
    Ipv6LinkScopedSource = 33 => "ipv6_link_scoped_source",
    // --- service load balancing (40..=49) ---
    /// Service frontend without a selectable backend (Cilium's DROP_NO_SERVICE).
    NoServiceBackend = 40 => "no_service_backend",
    /// DSR option malformed.
    DsrOptionMalformed = 41 => "dsr_option_malformed",
    // --- policy (50..=59) ---
    /// Egress policy of the sender: no entry allows (default deny).
    PolicyDeniedEgress = 50 => "policy_denied_egress",
    /// Ingress policy of the receiver: no entry allows (default deny).
    PolicyDeniedIngress = 51 => "policy_denied_ingress",
    /// Egress policy of the sender: a deny entry matched.
    PolicyDenyRuleEgress = 52 => "policy_deny_rule_egress",
    /// Ingress policy of the receiver: a deny entry matched.
    PolicyDenyRuleIngress = 53 => "policy_deny_rule_ingress",
    // --- routing and encapsulation (60..=69) ---
    /// TTL or hop limit would reach zero.
    TtlExceeded = 60 => "ttl_exceeded",
    /// No endpoint, node or uplink to send the frame to.
    NoRoute = 61 => "no_route",
    /// Not enough headroom to encapsulate or to insert the DSR option.
    HeadroomExhausted = 62 => "headroom_exhausted",
    /// Longer than its path's MTU (the uplink's MTU minus the encapsulation overhead, see
    /// `Encap::overhead`) and not answered with an ICMP error: IPv4 without Don't Fragment
    /// (the dataplane does not fragment), an ICMP error itself, or a frame from the uplink.
    FrameTooLong = 63 => "frame_too_long",
    /// The peer node's (or the default gateway's) MAC is not resolved yet, or the kernel
    /// routes it out of another interface: never sent to a guessed MAC.
    NoNextHop = 64 => "no_next_hop",
    /// Longer than its path's MTU, from a pod, but the ICMP "too big" error could not be sent:
    /// the node has no pod gateway address of the packet's family (`gateway_ipv4` /
    /// `gateway_ipv6` of `local_node`) to send it from.
    TooBigNoGateway = 65 => "too_big_no_gateway",
    /// A DSR IPv4 option from a pod, or from the uplink but not from a known node (neither
    /// through a tunnel nor from a peer node's MAC): a pod must not choose the source address
    /// of another pod's replies.
    DsrOptionUntrusted = 66 => "dsr_option_untrusted",
    /// An ICMP error that quotes no tracked flow, or is not addressed to the quoted packet's
    /// sender: never related, so never past policy.
    IcmpErrorUnrelated = 67 => "icmp_error_unrelated",
    /// A TCP RST of a tracked flow whose sequence number is outside its receiver's window
    /// (conntrack's sequence check): a guess by someone off the path, which must not close the
    /// flow (nor free its masquerade port). A RST in the window but not exact is passed.
    TcpRstOutOfWindow = 68 => "tcp_rst_out_of_window",
    // --- masquerade (70..=79) ---
    /// A pod's new flow to the world found no free source port in its probes of the worker's
    /// share of the masquerade range (`tables::snat`): widen `masquerade_ports`, or the flows
    /// to that one destination exceed the range.
    MasqueradePortsExhausted = 70 => "masquerade_ports_exhausted",
    /// TCP/UDP to the node's address on a masquerade port, but no live masqueraded flow left
    /// with that port towards the sender (expired, or never ours).
    MasqueradeNoMapping = 71 => "masquerade_no_mapping",
    /// A pod's new flow to the world that masquerading cannot translate: neither TCP nor UDP
    /// (ICMP echo included: its replies could not be told from the host's own, see
    /// docs/architecture.md, "Masquerade").
    MasqueradeUnsupportedProtocol = 72 => "masquerade_unsupported_protocol",
}

impl DropReason {
    /// The stable number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason with number `code`, if any.
    pub fn from_code(code: u8) -> Option<DropReason> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
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
        assert_eq!(DropReason::TcpRstOutOfWindow as u8, 68);
        assert_eq!(DropReason::MasqueradePortsExhausted as u8, 70);
        assert_eq!(DropReason::MasqueradeNoMapping as u8, 71);
        assert_eq!(DropReason::MasqueradeUnsupportedProtocol as u8, 72);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
