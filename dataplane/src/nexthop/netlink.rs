//! Just enough rtnetlink for the next-hop resolver: route lookups, the default routes, the
//! neighbour table, managed neighbour entries, and the change notifications of both.
//!
//! Messages are built and parsed here as plain bytes (the formats are the kernel's UAPI:
//! `linux/netlink.h`, `linux/rtnetlink.h`, `linux/neighbour.h`); the parsers take untrusted
//! bytes and never panic. [`Netlink`] is the one owner of a netlink socket and of its
//! `unsafe`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::types::MacAddr;

// ---- UAPI constants --------------------------------------------------------------------------

pub(super) const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_REPLACE: u16 = 0x100;
pub(super) const NLM_F_CREATE: u16 = 0x400;

pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
pub(crate) const RTM_NEWNEIGH: u16 = 28;
pub(crate) const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

pub(super) const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
pub(super) const RTA_DST: u16 = 1;
pub(super) const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
pub(super) const RT_TABLE_MAIN: u32 = 254;
pub(super) const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;

/// Multicast groups: neighbour changes, IPv4 and IPv6 route changes.
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Neighbour states whose link-layer address can be used (`linux/neighbour.h`): REACHABLE,
/// STALE, DELAY, PROBE, NOARP, PERMANENT. INCOMPLETE, FAILED and NONE have none.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

// ---- facts ------------------------------------------------------------------------------------

/// Where the kernel sends packets for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    /// Output interface.
    pub oif: u32,
    /// The gateway, when the destination is not on-link.
    pub gateway: Option<IpAddr>,
}

/// One neighbour table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighFacts {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// `NUD_*` state bits.
    pub state: u16,
    pub lladdr: Option<MacAddr>,
    /// Kept resolved by the kernel (`NTF_EXT_MANAGED`).
    pub managed: bool,
}

impl NeighFacts {
    /// The MAC to send to, if the entry has a usable one.
    pub fn usable_mac(&self) -> Option<MacAddr> {
        self.lladdr.filter(|_| self.state & NUD_USABLE != 0)
    }
}

/// A change notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    NeighUpdated(NeighFacts),
    NeighDeleted {
        ifindex: u32,
        addr: IpAddr,
    },
    /// Some route changed: lookups must be redone.
    RoutesChanged,
}

// ---- building requests --------------------------------------------------------------------

pub(super) struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub(super) fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        MsgBuilder { buf }
    }

    pub(super) fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub(super) fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(super) fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

pub(super) fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn rtmsg(family: u8, dst_len: u8) -> [u8; RTMSG_LEN] {
    let mut m = [0u8; RTMSG_LEN];
    m[0] = family;
    m[1] = dst_len;
    m
}

fn ndmsg(family: u8, ifindex: u32, state: u16) -> [u8; NDMSG_LEN] {
    let mut m = [0u8; NDMSG_LEN];
    m[0] = family;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m
}

/// `ip route get ADDR`.
pub(crate) fn route_get_request(addr: IpAddr, seq: u32) -> Vec<u8> {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST, seq)
        .bytes(&rtmsg(family_of(addr), full))
        .attr(RTA_DST, &addr_bytes(&addr))
        .finish()
}

/// `ip route show` of one family (every table; the parser keeps the main one).
pub(crate) fn route_dump_request(family: u8, seq: u32) -> Vec<u8> {
    MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .bytes(&rtmsg(family, 0))
        .finish()
}

/// `ip neigh show` of every family.
pub(crate) fn neigh_dump_request(seq: u32) -> Vec<u8> {
    MsgBuilder::new(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .bytes(&ndmsg(libc::AF_UNSPEC as u8, 0, 0))
        .finish()
}

/// `ip neigh replace ADDR dev IFINDEX managed`: a neighbour the kernel resolves now and keeps
/// resolved (re-probing it even though no kernel traffic uses it), as Cilium does for its
/// peers' next hops. Needs Linux 5.16 or later.
pub(crate) fn managed_neigh_request(ifindex: u32, addr: IpAddr, seq: u32) -> Vec<u8> {
    MsgBuilder::new(
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .bytes(&ndmsg(family_of(addr), ifindex, 0))
    .attr(NDA_DST, &addr_bytes(&addr))
    .attr(NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes())
    .finish()
}

// ---- parsing ----------------------------------------------------------------------------------

/// One netlink message: its type, flags, sequence number and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Msg<'a> {
    pub kind: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages of one datagram; stops at the first malformed header.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32_at(rest, 0)? as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return None;
        }
        let msg = Msg {
            kind: u16_at(rest, 4)?,
            seq: u32_at(rest, 8)?,
            payload: &rest[NLMSG_HDR_LEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(msg)
    })
}

/// The attributes after a fixed header of `skip` bytes; stops at the first malformed one.
pub(super) fn attrs(payload: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = payload.get(skip..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(rest, 0)?);
        if len < 4 || len > rest.len() {
            return None;
        }
        let item = (u16_at(rest, 2)? & 0x3fff, &rest[4..len]); // strip NLA_F_NESTED/BYTEORDER
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(item)
    })
}

pub(super) fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// The error code of an `NLMSG_ERROR` payload (0 is an acknowledgement).
pub(crate) fn error_code(payload: &[u8]) -> Option<i32> {
    u32_at(payload, 0).map(|e| e as i32)
}

/// A route message: (family, destination prefix length, table, type, facts).
pub(crate) struct RouteMsg {
    pub dst_len: u8,
    pub table: u32,
    pub kind: u8,
    pub facts: Option<RouteFacts>,
}

pub(crate) fn parse_route(payload: &[u8]) -> Option<RouteMsg> {
    let hdr = payload.get(..RTMSG_LEN)?;
    let family = hdr[0];
    let mut table = u32::from(hdr[4]);
    let (mut oif, mut gateway) = (None, None);
    for (kind, data) in attrs(payload, RTMSG_LEN) {
        match kind {
            RTA_OIF => oif = u32_at(data, 0),
            RTA_GATEWAY => gateway = ip_from(family, data),
            RTA_TABLE => table = u32_at(data, 0).unwrap_or(table),
            _ => {}
        }
    }
    Some(RouteMsg {
        dst_len: hdr[1],
        table,
        kind: hdr[7],
        facts: oif.map(|oif| RouteFacts { oif, gateway }),
    })
}

/// A default unicast route of the main table, from a route dump entry.
pub(crate) fn parse_default_route(payload: &[u8]) -> Option<RouteFacts> {
    let r = parse_route(payload)?;
    (r.dst_len == 0 && r.table == RT_TABLE_MAIN && r.kind == RTN_UNICAST)
        .then_some(r.facts)
        .flatten()
}

pub(crate) fn parse_neigh(payload: &[u8]) -> Option<NeighFacts> {
    let hdr = payload.get(..NDMSG_LEN)?;
    let family = hdr[0];
    let ifindex = u32_at(hdr, 4)?;
    let state = u16_at(hdr, 8)?;
    let (mut addr, mut lladdr, mut managed) = (None, None, false);
    for (kind, data) in attrs(payload, NDMSG_LEN) {
        match kind {
            NDA_DST => addr = ip_from(family, data),
            NDA_LLADDR => lladdr = <[u8; 6]>::try_from(data).ok().map(MacAddr),
            NDA_FLAGS_EXT => managed = u32_at(data, 0).is_some_and(|f| f & NTF_EXT_MANAGED != 0),
            _ => {}
        }
    }
    Some(NeighFacts {
        ifindex,
        addr: addr?,
        state,
        lladdr,
        managed,
    })
}

/// A notification as an [`Event`]; other messages are `None`.
pub(crate) fn parse_event(msg: &Msg<'_>) -> Option<Event> {
    match msg.kind {
        RTM_NEWNEIGH => parse_neigh(msg.payload).map(Event::NeighUpdated),
        RTM_DELNEIGH => parse_neigh(msg.payload).map(|n| Event::NeighDeleted {
            ifindex: n.ifindex,
            addr: n.addr,
        }),
        RTM_NEWROUTE | RTM_DELROUTE => Some(Event::RoutesChanged),
        _ => None,
    }
}

// ---- the socket -------------------------------------------------------------------------------

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error(
        "netlink socket: {0}: the dataplane needs CAP_NET_ADMIN in the node's network namespace"
    )]
    Socket(#[source] io::Error),
    #[error("netlink: the kernel refused {what}: {source}")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink: no answer to {what} within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    /// The kernel dropped notifications (the receive buffer overflowed): resynchronise.
    #[error("netlink: notifications were lost (receive buffer overflow)")]
    Overrun,
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// How long a request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer of the notification socket: room for bursts of neighbour changes.
const EVENT_RCVBUF: libc::c_int = 1 << 20;

impl Netlink {
    /// A socket for requests (no notifications).
    pub fn requests() -> Result<Self, NetlinkError> {
        let nl = Self::open(0)?;
        nl.set_timeout(REQUEST_TIMEOUT)?;
        Ok(nl)
    }

    /// A non-blocking socket subscribed to neighbour and route changes.
    pub fn notifications() -> Result<Self, NetlinkError> {
        let nl = Self::open(RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)?;
        // SAFETY: `fd` is an open socket owned by `nl`; the option value is a c_int that lives
        // across the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                nl.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&EVENT_RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(nl)
    }

    fn open(groups: u32) -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid (family set below).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = groups;
        // SAFETY: `sa` is a valid sockaddr_nl and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(Netlink {
            fd,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    fn set_timeout(&self, t: Duration) -> Result<(), NetlinkError> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` lives across the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is a valid slice for its length; send(2) only reads it. The kernel is
        // the default destination of an unconnected netlink socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram into `self.buf`; returns its length.
    fn recv(&mut self, flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends `build(seq)` and hands every answer message to `each` until the kernel says done
    /// (a dump), answers once (a get), or acknowledges (a change).
    pub(super) fn exchange(
        &mut self,
        what: &'static str,
        build: impl FnOnce(u32) -> Vec<u8>,
        dump: bool,
        mut each: impl FnMut(&Msg<'_>),
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        self.send(&build(seq))
            .map_err(|source| NetlinkError::Refused { what, source })?;
        loop {
            let n = match self.recv(0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NetlinkError::Timeout {
                        what,
                        timeout: REQUEST_TIMEOUT,
                    })
                }
                Err(source) => return Err(NetlinkError::Refused { what, source }),
            };
            let mut finished = false;
            let mut failure = None;
            for msg in messages(&self.buf[..n]).filter(|m| m.seq == seq) {
                match msg.kind {
                    NLMSG_DONE => finished = true,
                    NLMSG_ERROR => {
                        finished = true;
                        match error_code(msg.payload) {
                            Some(0) | None => {}
                            Some(code) => failure = Some(io::Error::from_raw_os_error(-code)),
                        }
                    }
                    _ => {
                        each(&msg);
                        finished |= !dump;
                    }
                }
            }
            if let Some(source) = failure {
                return Err(NetlinkError::Refused { what, source });
            }
            if finished {
                return Ok(());
            }
        }
    }

    /// Where the kernel routes `addr` (`ip route get`); `None` when it has no route.
    pub fn route_get(&mut self, addr: IpAddr) -> Result<Option<RouteFacts>, NetlinkError> {
        let mut out = None;
        let result = self.exchange(
            "a route lookup",
            |seq| route_get_request(addr, seq),
            false,
            |m| {
                if m.kind == RTM_NEWROUTE {
                    out = parse_route(m.payload).and_then(|r| r.facts);
                }
            },
        );
        match result {
            // ENETUNREACH / EHOSTUNREACH: no route, which is an answer.
            Err(NetlinkError::Refused { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
                ) =>
            {
                Ok(None)
            }
            other => other.map(|()| out),
        }
    }

    /// The main table's default route of `family` (`libc::AF_INET` or `AF_INET6`).
    pub fn default_route(&mut self, family: u8) -> Result<Option<RouteFacts>, NetlinkError> {
        let mut out = None;
        self.exchange(
            "a route dump",
            |seq| route_dump_request(family, seq),
            true,
            |m| {
                if m.kind == RTM_NEWROUTE && out.is_none() {
                    out = parse_default_route(m.payload);
                }
            },
        )?;
        Ok(out)
    }

    /// Every neighbour entry.
    pub fn neighbours(&mut self) -> Result<Vec<NeighFacts>, NetlinkError> {
        let mut out = Vec::new();
        self.exchange("a neighbour dump", neigh_dump_request, true, |m| {
            if m.kind == RTM_NEWNEIGH {
                out.extend(parse_neigh(m.payload));
            }
        })?;
        Ok(out)
    }

    /// Asks the kernel to resolve `addr` on `ifindex` and to keep it resolved.
    pub fn add_managed_neighbour(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<(), NetlinkError> {
        self.exchange(
            "a managed neighbour entry (needs Linux 5.16+)",
            |seq| managed_neigh_request(ifindex, addr, seq),
            false,
            |_| {},
        )
    }

    /// Waits up to `timeout` for notifications and returns those that arrived.
    pub fn wait_events(&mut self, timeout: Duration) -> Result<Vec<Event>, NetlinkError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut events = Vec::new();
        if rc <= 0 {
            return Ok(events); // timeout, or EINTR: nothing to read now
        }
        loop {
            match self.recv(libc::MSG_DONTWAIT) {
                Ok(n) => events.extend(messages(&self.buf[..n]).filter_map(|m| parse_event(&m))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(NetlinkError::Overrun)
                }
                Err(source) => {
                    return Err(NetlinkError::Refused {
                        what: "reading notifications",
                        source,
                    })
                }
            }
        }
    }
}

impl AsRawFd for Netlink {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Bytes `ip neigh add 192.168.98.2 dev <ifindex 3> managed` sends (captured with strace
    /// from iproute2 6.1), apart from the flags (CREATE|EXCL there, CREATE|REPLACE here).
    #[test]
    fn managed_neighbour_request_matches_iproute2() {
        let got = managed_neigh_request(3, "192.168.98.2".parse().unwrap(), 7);
        let mut want = Vec::new();
        want.extend_from_slice(&44u32.to_ne_bytes());
        want.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
        want.extend_from_slice(
            &(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE).to_ne_bytes(),
        );
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&[8, 0, 1, 0, 192, 168, 98, 2]);
        want.extend_from_slice(&[8, 0, 15, 0]);
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(got, want);
    }

    fn neigh_msg(state: u16, lladdr: Option<[u8; 6]>, managed: bool) -> Vec<u8> {
        let mut b = MsgBuilder::new(RTM_NEWNEIGH, 0, 0)
            .bytes(&ndmsg(libc::AF_INET as u8, 4, state))
            .attr(NDA_DST, &[10, 0, 0, 2]);
        if let Some(mac) = lladdr {
            b = b.attr(NDA_LLADDR, &mac);
        }
        if managed {
            b = b.attr(NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        }
        b.finish()
    }

    #[test]
    fn neighbour_parses_and_only_usable_states_give_a_mac() {
        let mac = [2, 0, 0, 0, 0, 9];
        let bytes = neigh_msg(0x02, Some(mac), true);
        let msg = messages(&bytes).next().unwrap();
        let Some(Event::NeighUpdated(n)) = parse_event(&msg) else {
            panic!("not a neighbour update");
        };
        assert_eq!(n.ifindex, 4);
        assert_eq!(n.addr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert!(n.managed);
        assert_eq!(n.usable_mac(), Some(MacAddr(mac)));
        for state in [0x00, 0x01, 0x20] {
            let bytes = neigh_msg(state, Some(mac), false);
            let n = parse_neigh(messages(&bytes).next().unwrap().payload).unwrap();
            assert_eq!(n.usable_mac(), None, "state {state:#x}");
        }
    }

    #[test]
    fn route_parses_gateway_and_oif() {
        let bytes = MsgBuilder::new(RTM_NEWROUTE, 0, 0)
            .bytes(&{
                let mut m = rtmsg(libc::AF_INET as u8, 0);
                m[4] = RT_TABLE_MAIN as u8;
                m[7] = RTN_UNICAST;
                m
            })
            .attr(RTA_GATEWAY, &[192, 168, 0, 254])
            .attr(RTA_OIF, &5u32.to_ne_bytes())
            .finish();
        let msg = messages(&bytes).next().unwrap();
        assert_eq!(
            parse_default_route(msg.payload),
            Some(RouteFacts {
                oif: 5,
                gateway: Some("192.168.0.254".parse().unwrap())
            })
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for m in messages(&bytes) {
                let _ = parse_event(&m);
                let _ = parse_route(m.payload);
            }
            let _ = parse_neigh(&bytes);
            let _ = parse_route(&bytes);
        }
    }

    /// Against the real kernel, in whatever namespace the test runs: the loopback route exists
    /// and the dumps answer. Skips when netlink is unavailable.
    #[test]
    fn kernel_answers_lookups_and_dumps() {
        let Ok(mut nl) = Netlink::requests() else {
            testkit::skip("no netlink socket");
            return;
        };
        let lo = nl.route_get("127.0.0.1".parse().unwrap()).unwrap();
        assert!(lo.is_some(), "127.0.0.1 has a route");
        nl.neighbours().unwrap();
        nl.default_route(libc::AF_INET as u8).unwrap();
    }
}
