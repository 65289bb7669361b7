//! What the program gives to the dataplane and what it leaves to the kernel: [`RedirectConfig`]
//! and its byte image in `config_map` ([`RawRedirectConfig`]).
//!
//! Contract:
//! - [`RawRedirectConfig`] is the `#[repr(C)]` twin of `struct xdp_redirect_config` in
//!   `src/bpf/xdp_redirect.bpf.c`; a test checks its size and field offsets against the type
//!   libbpf-cargo generates from the object's BTF. Addresses and ports are stored in network
//!   byte order, as the program compares them with packet bytes.
//! - Encoding and decoding are exact inverses for every [`RedirectConfig`] (the map entry can be
//!   read back as what was written).

use std::mem::size_of;
use std::net::Ipv4Addr;

/// UDP destination port of VXLAN (RFC 7348), the default of [`RedirectConfig::vxlan_port`].
pub const VXLAN_PORT: u16 = 4789;
/// UDP destination port of Geneve (RFC 8926), the default of [`RedirectConfig::geneve_port`].
pub const GENEVE_PORT: u16 = 6081;

/// What the dataplane owns. Everything it does not own is passed to the kernel.
///
/// The default is a pod interface's program that leaves ARP and other non-IP EtherTypes to the
/// kernel: every IPv4 and IPv6 frame is the dataplane's. [`RedirectConfig::uplink`] is the
/// uplink's: only tunnel traffic to the node and destinations in the owned prefixes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectConfig {
    /// `false` (default): ARP goes to the kernel. `true`: ARP goes to the dataplane, which then
    /// must answer it (the pod-facing gateway does).
    pub redirect_arp: bool,
    /// `false` (default): EtherTypes other than IPv4, IPv6 and ARP (LLDP, VLAN tags, ...) go to
    /// the kernel. `true`: they go to the dataplane.
    pub redirect_non_ip: bool,
    /// `false` (default; pod interfaces): every IPv4 and IPv6 frame goes to the dataplane.
    /// `true` (the uplink): an IP frame goes to the dataplane only when it is tunnel traffic
    /// for this node (IPv4 to [`underlay_ipv4`](Self::underlay_ipv4), UDP to
    /// [`vxlan_port`](Self::vxlan_port) or [`geneve_port`](Self::geneve_port)) or when its
    /// destination lies in an owned prefix ([`crate::XdpProgram::add_owned_prefix`]); the host's
    /// own traffic (SSH, etcd, pings to the node) stays with the kernel.
    pub uplink_filter: bool,
    /// The node's underlay address, the destination of tunnel traffic. `None`: no tunnel
    /// traffic is owned (until the node learns its address). Read only with `uplink_filter`.
    pub underlay_ipv4: Option<Ipv4Addr>,
    /// UDP destination port of VXLAN to the underlay address (default 4789); 0: not owned.
    pub vxlan_port: u16,
    /// UDP destination port of Geneve to the underlay address (default 6081); 0: not owned.
    pub geneve_port: u16,
    /// The masquerade source ports, `(first, last)` inclusive: TCP and UDP to the underlay
    /// address on one of them are replies to pods' masqueraded flows, owned. `None` (default,
    /// also when `first` is 0): none owned. The range must not overlap the kernel's
    /// `ip_local_port_range`, or the host's own connections' replies would be taken (the
    /// daemon refuses to start then). Read only with `uplink_filter`.
    pub masquerade_ports: Option<(u16, u16)>,
    /// `false` (default): an owned frame whose queue has no AF_XDP socket is passed to the
    /// kernel. `true`: it is dropped and counted (`no_socket_dropped`): the setting of a program
    /// pinned in bpffs ([`crate::XdpProgram::load_pinned`]), which stays attached while no
    /// dataplane process runs, so that a pod's frame never reaches the node's kernel unpoliced.
    pub drop_without_socket: bool,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            redirect_arp: false,
            redirect_non_ip: false,
            uplink_filter: false,
            underlay_ipv4: None,
            vxlan_port: VXLAN_PORT,
            geneve_port: GENEVE_PORT,
            masquerade_ports: None,
            drop_without_socket: false,
        }
    }
}

impl RedirectConfig {
    /// The uplink's configuration: ARP and non-IP to the kernel, the uplink filter on, tunnel
    /// traffic to `underlay_ipv4` on the standard ports owned.
    pub fn uplink(underlay_ipv4: Option<Ipv4Addr>) -> Self {
        RedirectConfig {
            uplink_filter: true,
            underlay_ipv4,
            ..RedirectConfig::default()
        }
    }
}

/// The value of `config_map`, as the kernel sees it.
/// Twin: `struct xdp_redirect_config` in `src/bpf/xdp_redirect.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawRedirectConfig {
    pub(crate) redirect_arp: u32,
    pub(crate) redirect_non_ip: u32,
    pub(crate) uplink_filter: u32,
    /// Network byte order (the octets in memory order); 0: none.
    pub(crate) underlay_ipv4: [u8; 4],
    /// Network byte order.
    pub(crate) vxlan_port: [u8; 2],
    /// Network byte order.
    pub(crate) geneve_port: [u8; 2],
    /// Host byte order, inclusive; first 0: none.
    pub(crate) masq_port_first: u16,
    pub(crate) masq_port_last: u16,
    pub(crate) drop_no_socket: u32,
}

/// Size of the map value in bytes.
pub(crate) const RAW_CONFIG_LEN: usize = size_of::<RawRedirectConfig>();

impl RawRedirectConfig {
    pub(crate) fn from_config(config: RedirectConfig) -> Self {
        Self {
            redirect_arp: u32::from(config.redirect_arp),
            redirect_non_ip: u32::from(config.redirect_non_ip),
            uplink_filter: u32::from(config.uplink_filter),
            underlay_ipv4: config.underlay_ipv4.map_or([0; 4], |a| a.octets()),
            vxlan_port: config.vxlan_port.to_be_bytes(),
            geneve_port: config.geneve_port.to_be_bytes(),
            masq_port_first: config.masquerade_ports.map_or(0, |(first, _)| first),
            masq_port_last: config.masquerade_ports.map_or(0, |(_, last)| last),
            drop_no_socket: u32::from(config.drop_without_socket),
        }
    }

    /// The configuration this value encodes. Flags other than 0 count as set, as the program
    /// reads them; the address 0.0.0.0 is "none", as the program reads it.
    pub(crate) fn to_config(self) -> RedirectConfig {
        let underlay = Ipv4Addr::from(self.underlay_ipv4);
        RedirectConfig {
            redirect_arp: self.redirect_arp != 0,
            redirect_non_ip: self.redirect_non_ip != 0,
            uplink_filter: self.uplink_filter != 0,
            underlay_ipv4: (!underlay.is_unspecified()).then_some(underlay),
            vxlan_port: u16::from_be_bytes(self.vxlan_port),
            geneve_port: u16::from_be_bytes(self.geneve_port),
            masquerade_ports: (self.masq_port_first != 0)
                .then_some((self.masq_port_first, self.masq_port_last)),
            drop_without_socket: self.drop_no_socket != 0,
        }
    }

    pub(crate) fn to_ne_bytes(self) -> [u8; RAW_CONFIG_LEN] {
        let mut bytes = [0u8; RAW_CONFIG_LEN];
        bytes[0..4].copy_from_slice(&self.redirect_arp.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.redirect_non_ip.to_ne_bytes());
        bytes[8..12].copy_from_slice(&self.uplink_filter.to_ne_bytes());
        bytes[12..16].copy_from_slice(&self.underlay_ipv4);
        bytes[16..18].copy_from_slice(&self.vxlan_port);
        bytes[18..20].copy_from_slice(&self.geneve_port);
        bytes[20..22].copy_from_slice(&self.masq_port_first.to_ne_bytes());
        bytes[22..24].copy_from_slice(&self.masq_port_last.to_ne_bytes());
        bytes[24..28].copy_from_slice(&self.drop_no_socket.to_ne_bytes());
        bytes
    }

    /// Decodes a map value; `None` unless it is exactly [`RAW_CONFIG_LEN`] bytes.
    pub(crate) fn from_ne_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; RAW_CONFIG_LEN] = bytes.try_into().ok()?;
        let u32_at = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Some(Self {
            redirect_arp: u32_at(0),
            redirect_non_ip: u32_at(4),
            uplink_filter: u32_at(8),
            underlay_ipv4: [bytes[12], bytes[13], bytes[14], bytes[15]],
            vxlan_port: [bytes[16], bytes[17]],
            geneve_port: [bytes[18], bytes[19]],
            masq_port_first: u16::from_ne_bytes([bytes[20], bytes[21]]),
            masq_port_last: u16::from_ne_bytes([bytes[22], bytes[23]]),
            drop_no_socket: u32_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types;
    use std::mem::offset_of;

    #[test]
    fn config_twin_matches_the_c_struct() {
        type C = types::xdp_redirect_config;
        assert_eq!(RAW_CONFIG_LEN, size_of::<C>());
        let pairs = [
            (
                offset_of!(RawRedirectConfig, redirect_arp),
                offset_of!(C, redirect_arp),
            ),
            (
                offset_of!(RawRedirectConfig, redirect_non_ip),
                offset_of!(C, redirect_non_ip),
            ),
            (
                offset_of!(RawRedirectConfig, uplink_filter),
                offset_of!(C, uplink_filter),
            ),
            (
                offset_of!(RawRedirectConfig, underlay_ipv4),
                offset_of!(C, underlay_ipv4),
            ),
            (
                offset_of!(RawRedirectConfig, vxlan_port),
                offset_of!(C, vxlan_port),
            ),
            (
                offset_of!(RawRedirectConfig, geneve_port),
                offset_of!(C, geneve_port),
            ),
            (
                offset_of!(RawRedirectConfig, masq_port_first),
                offset_of!(C, masq_port_first),
            ),
            (
                offset_of!(RawRedirectConfig, masq_port_last),
                offset_of!(C, masq_port_last),
            ),
            (
                offset_of!(RawRedirectConfig, drop_no_socket),
                offset_of!(C, drop_no_socket),
            ),
        ];
        for (rust, c) in pairs {
            assert_eq!(rust, c);
        }
        // The byte image follows the same offsets.
        let raw = RawRedirectConfig::from_config(RedirectConfig::uplink(Some(Ipv4Addr::new(
            192, 0, 2, 1,
        ))));
        let bytes = raw.to_ne_bytes();
        let at = offset_of!(C, underlay_ipv4);
        assert_eq!(bytes[at..at + 4], [192, 0, 2, 1]);
        let at = offset_of!(C, vxlan_port);
        assert_eq!(
            bytes[at..at + 2],
            [0x12, 0xb5],
            "4789 in network byte order"
        );
        let at = offset_of!(C, geneve_port);
        assert_eq!(
            bytes[at..at + 2],
            [0x17, 0xc1],
            "6081 in network byte order"
        );
    }

    #[test]
    fn flags_are_native_u32_and_ports_default_to_the_standard_ones() {
        let pod = RedirectConfig {
            redirect_arp: true,
            ..RedirectConfig::default()
        };
        let bytes = RawRedirectConfig::from_config(pod).to_ne_bytes();
        assert_eq!(bytes[0..4], 1u32.to_ne_bytes());
        assert_eq!(bytes[4..8], 0u32.to_ne_bytes());
        assert_eq!(bytes[8..12], 0u32.to_ne_bytes(), "no uplink filter");
        assert_eq!(bytes[12..16], [0; 4], "no underlay address");
        assert_eq!((pod.vxlan_port, pod.geneve_port), (4789, 6081));

        let uplink = RedirectConfig::uplink(None);
        assert!(uplink.uplink_filter && !uplink.redirect_arp && !uplink.redirect_non_ip);
    }

    #[test]
    fn decoding_inverts_encoding() {
        let cases = [
            RedirectConfig::default(),
            RedirectConfig::uplink(Some(Ipv4Addr::new(10, 0, 0, 1))),
            RedirectConfig {
                redirect_arp: true,
                redirect_non_ip: true,
                uplink_filter: true,
                underlay_ipv4: None,
                vxlan_port: 0,
                geneve_port: 65535,
                masquerade_ports: Some((61000, 65535)),
                drop_without_socket: true,
            },
        ];
        for config in cases {
            let bytes = RawRedirectConfig::from_config(config).to_ne_bytes();
            let back = RawRedirectConfig::from_ne_bytes(&bytes).map(RawRedirectConfig::to_config);
            assert_eq!(back, Some(config));
        }
        assert_eq!(RawRedirectConfig::from_ne_bytes(&[0; 27]), None);
        assert_eq!(RawRedirectConfig::from_ne_bytes(&[0; 29]), None);
    }
}
