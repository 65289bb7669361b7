//! ICMP message types as Cilium's `icmps` rules name them: a family (`IPv4`, the default, or
//! `IPv6`) and a type, a number 0..=255 or one of Cilium's CamelCase names
//! (`pkg/policy/api/icmp.go`: `EchoRequest`, `TimeExceeded`, ...), which differ per family
//! (`EchoRequest` is 8 in IPv4, 128 in IPv6). Used by the Cilium reader and by `policy trace`.

use crate::model::Protocol;

/// The address family of an ICMP rule: which of ICMP (IPv4) and ICMPv6 it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IcmpFamily {
    V4,
    V6,
}

impl IcmpFamily {
    /// Cilium's spelling, `IPv4` or `IPv6` (exact case, as Cilium's CRD validation requires).
    pub fn parse(s: &str) -> Option<IcmpFamily> {
        match s {
            "IPv4" => Some(IcmpFamily::V4),
            "IPv6" => Some(IcmpFamily::V6),
            _ => None,
        }
    }

    /// The family of an IP protocol name: `icmp` IPv4, `icmpv6` IPv6 (any case), else `None`.
    pub fn of_protocol_name(s: &str) -> Option<IcmpFamily> {
        match dataplane::wire::ip::Protocol::from_name(s)? {
            dataplane::wire::ip::Protocol::Icmp => Some(IcmpFamily::V4),
            dataplane::wire::ip::Protocol::Icmpv6 => Some(IcmpFamily::V6),
            _ => None,
        }
    }

    /// Cilium's spelling of the family.
    pub fn name(self) -> &'static str {
        match self {
            IcmpFamily::V4 => "IPv4",
            IcmpFamily::V6 => "IPv6",
        }
    }

    /// The port-rule protocol the family's messages travel in.
    pub fn protocol(self) -> Protocol {
        match self {
            IcmpFamily::V4 => Protocol::Icmp,
            IcmpFamily::V6 => Protocol::Icmpv6,
        }
    }

    fn names(self) -> &'static [(&'static str, u8)] {
        match self {
            IcmpFamily::V4 => ICMPV4_NAMES,
            IcmpFamily::V6 => ICMPV6_NAMES,
        }
    }

    /// A type given as a number (`8`, `"8"`) or as one of Cilium's names for this family.
    pub fn type_of(self, s: &str) -> Option<u8> {
        if let Ok(n) = s.parse::<u8>() {
            return Some(n);
        }
        self.names()
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, t)| *t)
    }

    /// Cilium's names of this family, for error messages.
    pub fn name_list(self) -> String {
        let names: Vec<&str> = self.names().iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

/// Cilium's ICMPv4 type names (`Echo` and `EchoRequest` are both 8).
const ICMPV4_NAMES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's ICMPv6 type names.
const ICMPV6_NAMES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_per_family() {
        assert_eq!(IcmpFamily::V4.type_of("EchoRequest"), Some(8));
        assert_eq!(IcmpFamily::V4.type_of("Echo"), Some(8));
        assert_eq!(IcmpFamily::V6.type_of("EchoRequest"), Some(128));
        assert_eq!(IcmpFamily::V4.type_of("13"), Some(13));
        assert_eq!(IcmpFamily::V6.type_of("NeighborSolicitation"), Some(135));
        assert_eq!(IcmpFamily::V4.type_of("NeighborSolicitation"), None);
        assert_eq!(IcmpFamily::V4.type_of("256"), None);
        assert_eq!(
            IcmpFamily::V4.type_of("echorequest"),
            None,
            "names are exact"
        );
        assert_eq!(IcmpFamily::parse("IPv6"), Some(IcmpFamily::V6));
        assert_eq!(IcmpFamily::parse("ipv6"), None);
        assert_eq!(IcmpFamily::of_protocol_name("ICMPv6"), Some(IcmpFamily::V6));
        assert_eq!(IcmpFamily::of_protocol_name("icmp"), Some(IcmpFamily::V4));
        assert_eq!(IcmpFamily::of_protocol_name("tcp"), None);
    }
}
