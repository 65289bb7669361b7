//! The next-hop resolver: the MAC addresses of the underlay next hops, from the kernel.
//!
//! # Contract
//! The dataplane writes outer Ethernet headers itself, so it must know, for every peer node
//! and for the default route, which MAC a frame goes to. As Cilium does, it asks the kernel of
//! the node's network namespace instead of being told: for each peer's underlay address the
//! route (`ip route get`: on-link, or through a gateway, and out of which interface), then the
//! neighbour entry of that next hop on the uplink. A next hop the kernel has not resolved gets
//! a *managed* neighbour entry (Linux 5.16+), which the kernel resolves at once and keeps
//! resolved although no kernel traffic uses it; the answer arrives as a neighbour
//! notification. A peer whose route leaves through another interface than the uplink, or
//! whose next hop is unresolved, has no entry in `tables::next_hops`, and the route stage drops
//! its frames (`no_next_hop`) instead of sending them to a guessed MAC.
//!
//! [`Resolver`] is the pure part (what the kernel said -> the table, and which neighbours to
//! ask for), unit-tested without a kernel; [`run`] is the daemon thread around it: it
//! subscribes to neighbour and route notifications, watches the published tables for a
//! changed set of nodes, re-reads everything every [`FULL_REFRESH`] (and after lost
//! notifications), and publishes a new `next_hops` table only when it differs. It is the only
//! writer of that table.

pub mod netlink;
pub mod netlink_host;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{HashMap, HashSet};

use crate::tables::next_hops::NextHops;
use crate::tables::Tables;
use crate::tables::TablesHandle;
use netlink::{Event, NeighFacts, Netlink, NetlinkError, RouteFacts};

/// Everything is re-read this often, whatever the notifications said.
pub const FULL_REFRESH: Duration = Duration::from_secs(10);
/// How long the thread waits for a notification before looking at the tables again.
const POLL: Duration = Duration::from_millis(20);
/// A next hop still unresolved is asked for again after this long.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// What the kernel said, and what it turns into.
#[derive(Debug)]
pub struct Resolver {
    uplink: u32,
    /// The peers' underlay addresses and the kernel's route to each (`None`: no route).
    routes: HashMap<IpAddr, Option<RouteFacts>>,
    default_v4: Option<RouteFacts>,
    default_v6: Option<RouteFacts>,
    neighbours: HashMap<(u32, IpAddr), NeighFacts>,
    /// When a managed neighbour entry was last requested, per next hop.
    asked: HashMap<IpAddr, Instant>,
}

impl Resolver {
    pub fn new(uplink_ifindex: u32) -> Self {
        Resolver {
            uplink: uplink_ifindex,
            routes: HashMap::new(),
            default_v4: None,
            default_v6: None,
            neighbours: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    /// Replaces the set of peers; returns true when it changed (their routes must be looked
    /// up). Known routes of kept peers are kept until then.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = IpAddr>) -> bool {
        let want: HashSet<IpAddr> = peers.into_iter().collect();
        let before = self.routes.len();
        self.routes.retain(|ip, _| want.contains(ip));
        let mut changed = self.routes.len() != before;
        for ip in want {
            if !self.routes.contains_key(&ip) {
                self.routes.insert(ip, None);
                changed = true;
            }
        }
        changed
    }

    /// The peers, sorted (for lookups in a stable order).
    pub fn peers(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.routes.keys().copied().collect();
        v.sort();
        v
    }

    pub fn set_route(&mut self, peer: IpAddr, route: Option<RouteFacts>) {
        if let Some(slot) = self.routes.get_mut(&peer) {
            *slot = route;
        }
    }

    pub fn set_default_routes(&mut self, v4: Option<RouteFacts>, v6: Option<RouteFacts>) {
        self.default_v4 = v4;
        self.default_v6 = v6;
    }

    /// Replaces the whole neighbour view (after a dump).
    pub fn set_neighbours(&mut self, all: impl IntoIterator<Item = NeighFacts>) {
        self.neighbours = all.into_iter().map(|n| ((n.ifindex, n.addr), n)).collect();
    }

    /// Applies one notification; returns true when routes must be looked up again.
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::NeighUpdated(n) => {
                self.neighbours.insert((n.ifindex, n.addr), n);
                false
            }
            Event::NeighDeleted { ifindex, addr } => {
                self.neighbours.remove(&(ifindex, addr));
                false
            }
            Event::RoutesChanged => true,
        }
    }

    /// The IP whose MAC frames following `route` to `dst` are sent to, if they leave through
    /// the uplink.
    fn next_hop_ip(&self, dst: IpAddr, route: Option<RouteFacts>) -> Option<IpAddr> {
        let r = route.filter(|r| r.oif == self.uplink)?;
        Some(r.gateway.unwrap_or(dst))
    }

    fn mac_of(&self, next_hop: IpAddr) -> Option<crate::MacAddr> {
        self.neighbours
            .get(&(self.uplink, next_hop))
            .and_then(NeighFacts::usable_mac)
    }

    /// The table the route stage should see now.
    pub fn next_hops(&self) -> NextHops {
        let mut t = NextHops::new();
        for (&peer, &route) in &self.routes {
            let mac = self.next_hop_ip(peer, route).and_then(|ip| self.mac_of(ip));
            t.set_peer(peer, mac);
        }
        let default = |route: Option<RouteFacts>| {
            let gw = route.filter(|r| r.oif == self.uplink)?.gateway?;
            self.mac_of(gw)
        };
        t.set_default_v4(default(self.default_v4));
        t.set_default_v6(default(self.default_v6));
        t
    }

    /// Next hops on the uplink that have no usable MAC and no managed entry the kernel is
    /// already working on, and were not asked for in the last [`ASK_AGAIN`]: ask the kernel
    /// for each (and remember when).
    pub fn due_requests(&mut self, now: Instant) -> Vec<IpAddr> {
        let mut hops: Vec<IpAddr> = self
            .routes
            .iter()
            .filter_map(|(&peer, &route)| self.next_hop_ip(peer, route))
            .chain(
                [self.default_v4, self.default_v6]
                    .into_iter()
                    .flatten()
                    .filter(|r| r.oif == self.uplink)
                    .filter_map(|r| r.gateway),
            )
            .filter(|&ip| {
                let entry = self.neighbours.get(&(self.uplink, ip));
                let resolved = entry.and_then(NeighFacts::usable_mac).is_some();
                let in_hand = entry.is_some_and(|n| n.managed && n.state != 0x20);
                !resolved && !in_hand
            })
            .collect();
        hops.sort();
        hops.dedup();
        hops.retain(|ip| {
            self.asked
                .get(ip)
                .is_none_or(|&at| now.duration_since(at) >= ASK_AGAIN)
        });
        for ip in &hops {
            self.asked.insert(*ip, now);
        }
        hops
    }

    /// Peers whose route leaves through another interface, or that have no route (for logs).
    pub fn unreachable_peers(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .routes
            .iter()
            .filter(|(_, r)| !r.is_some_and(|r| r.oif == self.uplink))
            .map(|(ip, _)| *ip)
            .collect();
        v.sort();
        v
    }
}

/// The underlay addresses of the other nodes in `t`.
pub fn peers_of(t: &Tables) -> Vec<IpAddr> {
    let own = t.node.underlay_ipv4.map(IpAddr::V4);
    t.nodes
        .iter()
        .map(|n| n.underlay)
        .filter(|ip| Some(*ip) != own)
        .collect()
}

/// Runs the resolver until `shutdown` is set. Netlink errors are logged and retried at the
/// next full refresh; only a socket that cannot be opened at all is returned as an error.
pub fn run(
    tables: &TablesHandle,
    uplink_ifindex: u32,
    shutdown: &AtomicBool,
) -> Result<(), NetlinkError> {
    let mut requests = Netlink::requests()?;
    let mut notifications = Netlink::notifications()?;
    let mut r = Resolver::new(uplink_ifindex);
    // The nodes table and own address last looked at; holding the `Arc` keeps its address from
    // being reused by a newer table, so pointer equality means "unchanged".
    let mut seen: Option<(Arc<crate::tables::nodes::Nodes>, Option<std::net::Ipv4Addr>)> = None;
    let mut next_full = Instant::now();
    let mut reported_unreachable: Vec<IpAddr> = Vec::new();
    while !shutdown.load(Ordering::Relaxed) {
        let mut routes_due = false;
        match notifications.wait_events(POLL) {
            Ok(events) => {
                for e in events {
                    routes_due |= r.apply(e);
                }
            }
            Err(NetlinkError::Overrun) => next_full = Instant::now(),
            Err(e) => {
                eprintln!("flagella-dataplane: next hops: {e}; re-reading everything");
                next_full = Instant::now();
            }
        }
        let t = tables.snapshot();
        let unchanged = seen.as_ref().is_some_and(|(nodes, own)| {
            Arc::ptr_eq(nodes, &t.nodes) && *own == t.node.underlay_ipv4
        });
        if !unchanged {
            seen = Some((Arc::clone(&t.nodes), t.node.underlay_ipv4));
            routes_due |= r.set_peers(peers_of(&t));
        }
        let now = Instant::now();
        if now >= next_full {
            next_full = now + FULL_REFRESH;
            routes_due = true;
            match requests.neighbours() {
                Ok(all) => r.set_neighbours(all),
                Err(e) => eprintln!("flagella-dataplane: next hops: {e}"),
            }
        }
        if routes_due {
            refresh_routes(&mut requests, &mut r);
            let unreachable = r.unreachable_peers();
            if unreachable != reported_unreachable {
                for ip in unreachable
                    .iter()
                    .filter(|ip| !reported_unreachable.contains(ip))
                {
                    eprintln!(
                        "flagella-dataplane: next hops: node {ip} is not routed out of the uplink \
                         (ifindex {uplink_ifindex}): its pods are unreachable (no_next_hop) until \
                         the node's routes send it there"
                    );
                }
                reported_unreachable = unreachable;
            }
        }
        for ip in r.due_requests(now) {
            if let Err(e) = requests.add_managed_neighbour(uplink_ifindex, ip) {
                eprintln!("flagella-dataplane: next hops: resolving {ip}: {e}");
            }
        }
        publish_if_changed(tables, &t, r.next_hops());
    }
    Ok(())
}

fn refresh_routes(nl: &mut Netlink, r: &mut Resolver) {
    for peer in r.peers() {
        match nl.route_get(peer) {
            Ok(route) => r.set_route(peer, route),
            Err(e) => eprintln!("flagella-dataplane: next hops: route to {peer}: {e}"),
        }
    }
    let v4 = nl.default_route(libc::AF_INET as u8);
    let v6 = nl.default_route(libc::AF_INET6 as u8);
    match (v4, v6) {
        (Ok(v4), Ok(v6)) => r.set_default_routes(v4, v6),
        (Err(e), _) | (_, Err(e)) => eprintln!("flagella-dataplane: next hops: default route: {e}"),
    }
}

fn publish_if_changed(tables: &TablesHandle, seen: &Tables, want: NextHops) {
    if *seen.next_hops == want {
        return;
    }
    for (ip, mac) in want.peers() {
        if seen.next_hops.peer(ip) != Some(mac) {
            eprintln!("flagella-dataplane: next hop of node {ip}: {mac}");
        }
    }
    for (ip, _) in seen.next_hops.peers() {
        if want.peer(ip).is_none() {
            eprintln!(
                "flagella-dataplane: next hop of node {ip}: lost (no_next_hop until resolved)"
            );
        }
    }
    let _ = tables.update(|t| {
        t.next_hops = Arc::new(want);
        Ok::<(), std::convert::Infallible>(())
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::MacAddr;

    const UPLINK: u32 = 2;
    const MAC_B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const MAC_GW: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn neigh(addr: &str, state: u16, mac: Option<MacAddr>, managed: bool) -> NeighFacts {
        NeighFacts {
            ifindex: UPLINK,
            addr: ip(addr),
            state,
            lladdr: mac,
            managed,
        }
    }

    fn on_link() -> Option<RouteFacts> {
        Some(RouteFacts {
            oif: UPLINK,
            gateway: None,
        })
    }

    #[test]
    fn on_link_peer_takes_its_own_mac_once_resolved() {
        let mut r = Resolver::new(UPLINK);
        assert!(r.set_peers([ip("192.168.0.2")]));
        r.set_route(ip("192.168.0.2"), on_link());
        assert_eq!(r.next_hops().peer(ip("192.168.0.2")), None);
        let now = Instant::now();
        assert_eq!(r.due_requests(now), vec![ip("192.168.0.2")]);
        assert!(r.due_requests(now).is_empty(), "asked once per ASK_AGAIN");
        r.apply(Event::NeighUpdated(neigh(
            "192.168.0.2",
            0x02,
            Some(MAC_B),
            true,
        )));
        assert_eq!(r.next_hops().peer(ip("192.168.0.2")), Some(MAC_B));
        assert!(r.due_requests(now + ASK_AGAIN).is_empty());
    }

    #[test]
    fn routed_peer_takes_the_gateways_mac_and_default_route_too() {
        let mut r = Resolver::new(UPLINK);
        r.set_peers([ip("10.9.0.2")]);
        let via = Some(RouteFacts {
            oif: UPLINK,
            gateway: Some(ip("192.168.0.254")),
        });
        r.set_route(ip("10.9.0.2"), via);
        r.set_default_routes(via, None);
        r.set_neighbours([neigh("192.168.0.254", 0x04, Some(MAC_GW), false)]);
        let t = r.next_hops();
        assert_eq!(t.peer(ip("10.9.0.2")), Some(MAC_GW));
        assert_eq!(t.default_v4(), Some(MAC_GW));
        assert_eq!(t.default_v6(), None);
    }

    #[test]
    fn peer_routed_elsewhere_or_failed_has_no_next_hop() {
        let mut r = Resolver::new(UPLINK);
        r.set_peers([ip("192.168.0.2"), ip("192.168.0.3")]);
        r.set_route(
            ip("192.168.0.2"),
            Some(RouteFacts {
                oif: UPLINK + 1,
                gateway: None,
            }),
        );
        r.set_route(ip("192.168.0.3"), on_link());
        r.set_neighbours([
            NeighFacts {
                ifindex: UPLINK + 1,
                ..neigh("192.168.0.2", 0x02, Some(MAC_B), false)
            },
            neigh("192.168.0.3", 0x20, Some(MAC_B), false),
        ]);
        let t = r.next_hops();
        assert_eq!(t.peer(ip("192.168.0.2")), None, "not through the uplink");
        assert_eq!(t.peer(ip("192.168.0.3")), None, "FAILED has no usable MAC");
        assert_eq!(r.unreachable_peers(), vec![ip("192.168.0.2")]);
        // Only the uplink's next hop is asked for; the FAILED unmanaged one is made managed.
        assert_eq!(r.due_requests(Instant::now()), vec![ip("192.168.0.3")]);
    }

    #[test]
    fn a_changed_mac_replaces_the_old_one_and_deletion_forgets_it() {
        let mut r = Resolver::new(UPLINK);
        r.set_peers([ip("192.168.0.2")]);
        r.set_route(ip("192.168.0.2"), on_link());
        r.apply(Event::NeighUpdated(neigh(
            "192.168.0.2",
            0x02,
            Some(MAC_B),
            true,
        )));
        let new_mac = MacAddr([2, 0, 0, 0, 1, 0xb]);
        r.apply(Event::NeighUpdated(neigh(
            "192.168.0.2",
            0x04,
            Some(new_mac),
            true,
        )));
        assert_eq!(r.next_hops().peer(ip("192.168.0.2")), Some(new_mac));
        r.apply(Event::NeighDeleted {
            ifindex: UPLINK,
            addr: ip("192.168.0.2"),
        });
        assert_eq!(r.next_hops().peer(ip("192.168.0.2")), None);
    }

    #[test]
    fn removed_peers_are_forgotten() {
        let mut r = Resolver::new(UPLINK);
        r.set_peers([ip("192.168.0.2"), ip("192.168.0.3")]);
        assert!(!r.set_peers([ip("192.168.0.3"), ip("192.168.0.2")]));
        assert!(r.set_peers([ip("192.168.0.3")]));
        assert_eq!(r.peers(), vec![ip("192.168.0.3")]);
    }
}
