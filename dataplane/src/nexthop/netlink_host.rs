//! The rtnetlink requests of the host interface (`daemon::host_link`): a veth pair created,
//! brought up and given an MTU; addresses and routes on its kernel side added, removed and
//! listed. A small extension of [`super::netlink`], whose socket and message builder it uses.
//!
//! Routes the dataplane installs carry their own protocol number ([`RTPROT_FLAGELLA`], as
//! `ip route ... proto 241` shows them), so that a restarted dataplane finds its own routes on
//! the interface and nobody else's.

use std::net::IpAddr;

use super::netlink::{
    addr_bytes, align4, attrs, family_of, ip_from, u32_at, MsgBuilder, Netlink, NetlinkError,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, RTA_DST, RTA_OIF, RTMSG_LEN,
    RTN_UNICAST, RT_TABLE_MAIN,
};
use crate::types::Prefix;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_EXCL: u16 = 0x200;
const NLA_F_NESTED: u16 = 0x8000;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// No duplicate address detection: the address is the node's own, on a point-to-point link.
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

/// The protocol number of the routes the dataplane installs (unassigned in iproute2's
/// `rt_protos`).
pub const RTPROT_FLAGELLA: u8 = 241;

/// One attribute as bytes (for nesting), padded to 4 bytes.
fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(align4(4 + data.len()));
    v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(align4(v.len()), 0);
    v
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn ifaddrmsg(prefix: Prefix, ifindex: u32) -> [u8; IFADDRMSG_LEN] {
    let mut m = [0u8; IFADDRMSG_LEN];
    m[0] = family_of(prefix.addr());
    m[1] = prefix.prefix_len();
    m[2] = if prefix.addr().is_ipv6() {
        IFA_F_NODAD
    } else {
        0
    };
    m[3] = RT_SCOPE_UNIVERSE;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

/// `ip link add NAME numtxqueues Q numrxqueues Q type veth peer name PEER numtxqueues Q
/// numrxqueues Q` (fails with EEXIST when NAME exists).
pub(crate) fn veth_create_request(name: &str, peer: &str, queues: u32, seq: u32) -> Vec<u8> {
    let q = queues.max(1).to_ne_bytes();
    let peer_info = [
        &ifinfomsg(0, 0, 0)[..],
        &nla(IFLA_IFNAME, &ifname(peer)),
        &nla(IFLA_NUM_TX_QUEUES, &q),
        &nla(IFLA_NUM_RX_QUEUES, &q),
    ]
    .concat();
    let data = nla(VETH_INFO_PEER | NLA_F_NESTED, &peer_info);
    let linkinfo = [
        nla(IFLA_INFO_KIND, b"veth"),
        nla(IFLA_INFO_DATA | NLA_F_NESTED, &data),
    ]
    .concat();
    MsgBuilder::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .bytes(&ifinfomsg(0, 0, 0))
    .attr(IFLA_IFNAME, &ifname(name))
    .attr(IFLA_NUM_TX_QUEUES, &q)
    .attr(IFLA_NUM_RX_QUEUES, &q)
    .attr(IFLA_LINKINFO | NLA_F_NESTED, &linkinfo)
    .finish()
}

/// `ip link set dev IFINDEX up mtu MTU`.
pub(crate) fn link_up_request(ifindex: u32, mtu: Option<u32>, seq: u32) -> Vec<u8> {
    let b = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .bytes(&ifinfomsg(ifindex, IFF_UP, IFF_UP));
    match mtu {
        Some(mtu) => b.attr(IFLA_MTU, &mtu.to_ne_bytes()),
        None => b,
    }
    .finish()
}

/// `ip addr replace|del ADDR/LEN dev IFINDEX` (IPv6: `nodad`).
pub(crate) fn address_request(add: bool, prefix: Prefix, ifindex: u32, seq: u32) -> Vec<u8> {
    let (kind, flags) = if add {
        (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    } else {
        (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
    };
    let addr = addr_bytes(&prefix.addr());
    MsgBuilder::new(kind, flags, seq)
        .bytes(&ifaddrmsg(prefix, ifindex))
        .attr(IFA_LOCAL, &addr)
        .attr(IFA_ADDRESS, &addr)
        .finish()
}

/// `ip route replace|del PREFIX dev IFINDEX scope link proto 241 [src SRC]` in the main table.
pub(crate) fn route_request(
    add: bool,
    prefix: Prefix,
    src: Option<IpAddr>,
    ifindex: u32,
    seq: u32,
) -> Vec<u8> {
    let (kind, flags) = if add {
        (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
    } else {
        (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut m = [0u8; RTMSG_LEN];
    m[0] = family_of(prefix.addr());
    m[1] = prefix.prefix_len();
    m[4] = RT_TABLE_MAIN as u8;
    m[5] = RTPROT_FLAGELLA;
    m[6] = RT_SCOPE_LINK;
    m[7] = RTN_UNICAST;
    let b = MsgBuilder::new(kind, flags, seq)
        .bytes(&m)
        .attr(RTA_DST, &addr_bytes(&prefix.addr()))
        .attr(RTA_OIF, &ifindex.to_ne_bytes());
    match src {
        Some(src) => b.attr(RTA_PREFSRC, &addr_bytes(&src)),
        None => b,
    }
    .finish()
}

fn dump_request(kind: u16, header_len: usize, seq: u32) -> Vec<u8> {
    MsgBuilder::new(kind, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .bytes(&vec![0u8; header_len])
        .finish()
}

/// An address of `ifindex` from an address dump entry (link-local IPv6 addresses, which the
/// kernel gives every interface, are not the dataplane's and are left out).
pub(crate) fn parse_address(payload: &[u8], ifindex: u32) -> Option<Prefix> {
    let (i, addr, len) = parse_any_address(payload)?;
    (i == ifindex)
        .then(|| Prefix::new(addr, len).ok())
        .flatten()
}

/// The interface, address and prefix length of an address dump entry (link-local IPv6 left
/// out).
pub(crate) fn parse_any_address(payload: &[u8]) -> Option<(u32, IpAddr, u8)> {
    let hdr = payload.get(..IFADDRMSG_LEN)?;
    let ifindex = u32_at(hdr, 4)?;
    let (family, len) = (hdr[0], hdr[1]);
    let mut addr = None;
    for (kind, data) in attrs(payload, IFADDRMSG_LEN) {
        match kind {
            IFA_LOCAL => addr = ip_from(family, data),
            IFA_ADDRESS if addr.is_none() => addr = ip_from(family, data),
            _ => {}
        }
    }
    let addr = addr?;
    if let IpAddr::V6(a) = addr {
        if a.is_unicast_link_local() {
            return None;
        }
    }
    Some((ifindex, addr, len))
}

/// A route of the dataplane's own (protocol [`RTPROT_FLAGELLA`], main table) out of `ifindex`
/// from a route dump entry: its destination and preferred source.
pub(crate) fn parse_own_route(payload: &[u8], ifindex: u32) -> Option<(Prefix, Option<IpAddr>)> {
    let hdr = payload.get(..RTMSG_LEN)?;
    let (family, len, protocol) = (hdr[0], hdr[1], hdr[5]);
    if protocol != RTPROT_FLAGELLA {
        return None;
    }
    let (mut dst, mut src, mut oif, mut table) = (None, None, None, u32::from(hdr[4]));
    for (kind, data) in attrs(payload, RTMSG_LEN) {
        match kind {
            RTA_DST => dst = ip_from(family, data),
            RTA_PREFSRC => src = ip_from(family, data),
            RTA_OIF => oif = u32_at(data, 0),
            RTA_TABLE => table = u32_at(data, 0).unwrap_or(table),
            _ => {}
        }
    }
    if oif? != ifindex || table != RT_TABLE_MAIN {
        return None;
    }
    Some((Prefix::new(dst?, len).ok()?, src))
}

impl Netlink {
    /// Creates the veth pair `name` / `peer` with `queues` receive and transmit queues on
    /// each side; `Ok(false)` when `name` already exists.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        queues: u32,
    ) -> Result<bool, NetlinkError> {
        match self.exchange(
            "creating a veth pair",
            |seq| veth_create_request(name, peer, queues, seq),
            false,
            |_| {},
        ) {
            Ok(()) => Ok(true),
            Err(NetlinkError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Brings `ifindex` up, with `mtu` when given.
    pub fn set_link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> Result<(), NetlinkError> {
        self.exchange(
            "bringing a link up",
            |seq| link_up_request(ifindex, mtu, seq),
            false,
            |_| {},
        )
    }

    /// Adds (replaces) or removes an address of `ifindex`. Removing an absent one succeeds.
    pub fn set_address(
        &mut self,
        add: bool,
        prefix: Prefix,
        ifindex: u32,
    ) -> Result<(), NetlinkError> {
        let what = if add {
            "adding an address"
        } else {
            "removing an address"
        };
        absent_is_fine(
            add,
            self.exchange(
                what,
                |seq| address_request(add, prefix, ifindex, seq),
                false,
                |_| {},
            ),
        )
    }

    /// Adds (replaces) or removes a route to `prefix` out of `ifindex`, preferring source
    /// `src`. Removing an absent one succeeds.
    pub fn set_route(
        &mut self,
        add: bool,
        prefix: Prefix,
        src: Option<IpAddr>,
        ifindex: u32,
    ) -> Result<(), NetlinkError> {
        let what = if add {
            "adding a route"
        } else {
            "removing a route"
        };
        absent_is_fine(
            add,
            self.exchange(
                what,
                |seq| route_request(add, prefix, src, ifindex, seq),
                false,
                |_| {},
            ),
        )
    }

    /// The addresses of `ifindex` (link-local IPv6 left out).
    pub fn addresses_of(&mut self, ifindex: u32) -> Result<Vec<Prefix>, NetlinkError> {
        let mut out = Vec::new();
        self.exchange(
            "an address dump",
            |seq| dump_request(RTM_GETADDR, IFADDRMSG_LEN, seq),
            true,
            |m| {
                if m.kind == RTM_NEWADDR {
                    out.extend(parse_address(m.payload, ifindex));
                }
            },
        )?;
        Ok(out)
    }

    /// Every address of every interface of the namespace (link-local IPv6 left out): what the
    /// node's own stack answers to.
    pub fn all_addresses(&mut self) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut out = Vec::new();
        self.exchange(
            "an address dump",
            |seq| dump_request(RTM_GETADDR, IFADDRMSG_LEN, seq),
            true,
            |m| {
                if m.kind == RTM_NEWADDR {
                    out.extend(parse_any_address(m.payload).map(|(_, addr, _)| addr));
                }
            },
        )?;
        Ok(out)
    }

    /// The dataplane's own routes out of `ifindex`: destination, preferred source.
    pub fn own_routes_of(
        &mut self,
        ifindex: u32,
    ) -> Result<Vec<(Prefix, Option<IpAddr>)>, NetlinkError> {
        let mut out = Vec::new();
        self.exchange(
            "a route dump",
            |seq| dump_request(RTM_GETROUTE, RTMSG_LEN, seq),
            true,
            |m| {
                if m.kind == RTM_NEWROUTE {
                    out.extend(parse_own_route(m.payload, ifindex));
                }
            },
        )?;
        Ok(out)
    }
}

/// A removal of something already gone is a success (ESRCH, EADDRNOTAVAIL, ENOENT).
fn absent_is_fine(add: bool, r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(NetlinkError::Refused { source, .. })
            if !add
                && matches!(
                    source.raw_os_error(),
                    Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)
                ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::nexthop::netlink::messages;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn veth_request_nests_the_peer_name() {
        let msg = veth_create_request("flg_host", "flg_net", 2, 7);
        let m = messages(&msg).next().unwrap();
        assert_eq!((m.kind, m.seq), (RTM_NEWLINK, 7));
        let top: Vec<(u16, &[u8])> = attrs(m.payload, IFINFOMSG_LEN).collect();
        assert_eq!(top[0], (IFLA_IFNAME, &b"flg_host\0"[..]));
        assert_eq!(top[1], (IFLA_NUM_TX_QUEUES, &2u32.to_ne_bytes()[..]));
        assert_eq!(top[2], (IFLA_NUM_RX_QUEUES, &2u32.to_ne_bytes()[..]));
        assert_eq!(top[3].0, IFLA_LINKINFO);
        let info: Vec<(u16, &[u8])> = attrs(top[3].1, 0).collect();
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"veth"[..]));
        let data: Vec<(u16, &[u8])> = attrs(info[1].1, 0).collect();
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer: Vec<(u16, &[u8])> = attrs(data[0].1, IFINFOMSG_LEN).collect();
        assert_eq!(peer[0], (IFLA_IFNAME, &b"flg_net\0"[..]));
        assert_eq!(peer[2], (IFLA_NUM_RX_QUEUES, &2u32.to_ne_bytes()[..]));
    }

    #[test]
    fn address_and_route_requests_round_trip_through_the_dump_parsers() {
        for prefix in [p("10.1.0.1/32"), p("fd00:1::1/128")] {
            let msg = address_request(true, prefix, 9, 1);
            let m = messages(&msg).next().unwrap();
            assert_eq!(parse_address(m.payload, 9), Some(prefix));
            assert_eq!(parse_address(m.payload, 8), None, "another interface");
        }
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        for (prefix, src) in [(p("10.2.0.0/24"), Some(src)), (p("fd00:2::/64"), None)] {
            let msg = route_request(true, prefix, src, 9, 1);
            let m = messages(&msg).next().unwrap();
            assert_eq!(parse_own_route(m.payload, 9), Some((prefix, src)));
            assert_eq!(parse_own_route(m.payload, 8), None, "another interface");
        }
        // The address itself, not its prefix: what the node answers to.
        let on_eth0 = address_request(true, p("10.77.0.0/24"), 3, 1);
        let m = messages(&on_eth0).next().unwrap();
        assert_eq!(
            parse_any_address(m.payload),
            Some((3, "10.77.0.0".parse().unwrap(), 24))
        );
        let link_local = address_request(true, p("fe80::1/64"), 9, 1);
        let m = messages(&link_local).next().unwrap();
        assert_eq!(parse_address(m.payload, 9), None);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_address(&junk, 1);
            let _ = parse_own_route(&junk, 1);
        }
    }
}
