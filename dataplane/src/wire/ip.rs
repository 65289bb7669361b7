//! The IP protocol number (IPv4 "protocol", IPv6 "next header"): the one definition every crate
//! uses, for the wire, the tables, the control protocol and the policy compiler.
//!
//! Contract:
//! - [`Protocol`] is a value for every `u8`: the protocols the dataplane parses have a variant,
//!   every other number is `Unknown(n)`, and `u8 -> Protocol -> u8` is the identity.
//! - Names: [`Protocol::name`] gives the lower-case name (`icmp`, `tcp`, `udp`, `icmpv6`,
//!   `sctp`) and [`Protocol::from_name`] reads one in any case (`tcp`, `TCP`). SCTP is named but
//!   not parsed, so it is [`Protocol::SCTP`], an `Unknown(132)`. Serialized forms (the control
//!   protocol's `"tcp"`, Kubernetes' `"TCP"`, the policy wildcard `any`) stay with their crates
//!   and convert through this type.

/// An IP protocol number. Unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Icmp,
    Tcp,
    Udp,
    Icmpv6,
    Unknown(u8),
}

/// The protocols known by name, lower case as `ip` and iptables spell them.
const NAMES: [(&str, Protocol); 5] = [
    ("icmp", Protocol::Icmp),
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("icmpv6", Protocol::Icmpv6),
    ("sctp", Protocol::SCTP),
];

impl Protocol {
    /// SCTP (132): named in policies and services, not parsed by the dataplane.
    pub const SCTP: Protocol = Protocol::Unknown(132);

    /// The protocol number, usable in constants and patterns (`const TCP: u8 =
    /// Protocol::Tcp.number();`).
    #[inline]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv6 => 58,
            Protocol::Unknown(other) => other,
        }
    }

    /// The protocol of a number (the `From<u8>` conversion, in constants).
    #[inline]
    pub const fn from_number(value: u8) -> Protocol {
        match value {
            1 => Protocol::Icmp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            58 => Protocol::Icmpv6,
            other => Protocol::Unknown(other),
        }
    }

    /// The lower-case name (`tcp`), or `None` for a protocol without one.
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(name, _)| *name)
    }

    /// The protocol a name stands for, in any case (`tcp`, `TCP`, `Tcp`); `None` for a name
    /// not in the list (numbers are not names).
    pub fn from_name(name: &str) -> Option<Protocol> {
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }
}

impl From<u8> for Protocol {
    #[inline]
    fn from(value: u8) -> Self {
        Protocol::from_number(value)
    }
}

impl From<Protocol> for u8 {
    #[inline]
    fn from(value: Protocol) -> Self {
        value.number()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers() {
        for (raw, p) in [
            (1, Protocol::Icmp),
            (6, Protocol::Tcp),
            (17, Protocol::Udp),
            (58, Protocol::Icmpv6),
            (132, Protocol::Unknown(132)),
        ] {
            assert_eq!(Protocol::from(raw), p);
            assert_eq!(u8::from(p), raw);
        }
    }

    #[test]
    fn every_number_round_trips() {
        for n in 0..=u8::MAX {
            assert_eq!(Protocol::from(n).number(), n);
            assert_eq!(Protocol::from_number(n), Protocol::from(n));
        }
    }

    #[test]
    fn names() {
        for (name, p, n) in [
            ("icmp", Protocol::Icmp, 1),
            ("tcp", Protocol::Tcp, 6),
            ("udp", Protocol::Udp, 17),
            ("icmpv6", Protocol::Icmpv6, 58),
            ("sctp", Protocol::SCTP, 132),
        ] {
            assert_eq!(p.name(), Some(name));
            assert_eq!(p.number(), n);
            assert_eq!(Protocol::from_name(name), Some(p));
            assert_eq!(Protocol::from_name(&name.to_ascii_uppercase()), Some(p));
        }
        assert_eq!(Protocol::Unknown(2).name(), None);
        assert_eq!(Protocol::from_name("6"), None);
        assert_eq!(Protocol::from_name("any"), None);
    }
}
