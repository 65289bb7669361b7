//! The host interface's kernel side, kept in step with the tables: what the node's own stack
//! must hold so that it reaches the pods through the dataplane, as Cilium's `cilium_host` does.
//!
//! The daemon creates a veth pair in its network namespace (default `flg_host`, the kernel's
//! side, and `flg_net`, the dataplane's, where its XDP program and an AF_XDP socket sit like on
//! a pod interface). The kernel side holds ([`HostStackState`]):
//! - the pods' gateway addresses (`/32`, `/128`), as `cilium_host` holds the router IP: the
//!   host's own answers to pods come from there and the pods' frames to them are local;
//! - a route for every local pod address and every other node's pod CIDRs out of that
//!   interface (scope link, protocol [`RTPROT_FLAGELLA`](crate::nexthop::netlink_host)), so
//!   the host's traffic to any pod enters the dataplane, which answers the host's ARP and
//!   neighbour solicitations for them with the router MAC. Local pods see the host come from
//!   the gateway address (`host` to their policy); other nodes' IPv4 pods see it come from
//!   the node's underlay address (preferred source of those routes), which every other node's
//!   ipcache knows as `remote-node`, in native routing as in tunnels;
//! - the MTU pods get (`Encap::pod_mtu` of the node's mode), so the host's packets fit the
//!   tunnel as the pods' do.
//!
//! Contract:
//! - [`HostStackState::from_tables`] is a pure function of one snapshot.
//! - [`Reconciler`] remembers what it applied and applies only the difference (removals first);
//!   a failed operation stays out of the applied state and is retried by the next
//!   reconciliation; nothing else is redone.
//! - [`sync_host_link`] follows a [`TablesHandle`] as the uplink-sync thread does
//!   (`host_path::sync_uplink`): a lock-free snapshot load per interval, a reconciliation when
//!   the node facts, the endpoints or the nodes changed (or a retry is due), and it returns once
//!   `shutdown` is set. Every [`ADDRESS_REFRESH`] it also reads every address of the node's
//!   stack from the kernel and, when they changed, publishes them as
//!   `LocalNode::host_addresses` (what `LocalNode::is_local_addr` adds to the underlay and
//!   gateway addresses: "any address on the node" is the host's).
//!
//! Kept free of netlink: the kernel is reached through [`HostStack`], which the daemon binary
//! implements over `nexthop::netlink` and the tests over a fake.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::follow::{Follower, Watched};
use crate::api::TablesHandle;
use crate::tables::endpoints::Endpoints;
use crate::tables::nodes::Nodes;
use crate::tables::{LocalNode, Tables};
use crate::types::Prefix;

/// How often the node's own addresses are read again from the kernel.
pub const ADDRESS_REFRESH: Duration = Duration::from_secs(1);

/// Default name of the kernel's side of the host interface.
pub const DEFAULT_KERNEL_SIDE: &str = "flg_host";
/// Default name of the dataplane's side of the host interface.
pub const DEFAULT_DATAPLANE_SIDE: &str = "flg_net";

/// What the kernel side of the host interface must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStackState {
    /// The pods' gateway addresses, as host prefixes.
    pub addresses: BTreeSet<Prefix>,
    /// Destinations routed out of the host interface: local pods, other nodes' pod CIDRs.
    pub routes: BTreeSet<HostRoute>,
    /// The interface's MTU (`None`: not known to be set).
    pub mtu: Option<u16>,
}

impl HostStackState {
    /// What `tables` says the kernel side must hold (see the module doc).
    pub fn from_tables(tables: &Tables) -> Self {
        let node = &tables.node;
        let gateways = [
            node.gateway_ipv4.map(IpAddr::V4),
            node.gateway_ipv6.map(IpAddr::V6),
        ];
        let local_pods = tables.endpoints.iter().flat_map(|ep| ep.spec.ips());
        let local_routes = local_pods.map(|a| HostRoute {
            dst: Prefix::host(a),
            src: None,
        });
        let remote_routes = tables
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .map(|dst| HostRoute {
                dst,
                src: match dst.addr() {
                    IpAddr::V4(_) => node.underlay_ipv4.map(IpAddr::V4),
                    IpAddr::V6(_) => None,
                },
            });
        HostStackState {
            addresses: gateways.into_iter().flatten().map(Prefix::host).collect(),
            routes: local_routes.chain(remote_routes).collect(),
            mtu: Some(node.default_encap.pod_mtu(node.uplink_mtu)),
        }
    }
}

/// A route out of the host interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostRoute {
    pub dst: Prefix,
    /// The preferred source address (`None`: the kernel's choice, the interface's address).
    pub src: Option<IpAddr>,
}

impl fmt::Display for HostRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.src {
            Some(src) => write!(f, "{} src {src}", self.dst),
            None => write!(f, "{}", self.dst),
        }
    }
}

/// The kernel side of the host interface, as the reconciler drives it.
pub trait HostStack {
    type Error: fmt::Display;
    /// Adds (`add`) or removes an address; adding one present or removing one absent succeeds.
    fn set_address(&mut self, add: bool, prefix: Prefix) -> Result<(), Self::Error>;
    /// Adds or removes a route out of the interface, with the same idempotence.
    fn set_route(&mut self, add: bool, route: HostRoute) -> Result<(), Self::Error>;
    /// Sets the MTU of both sides of the pair.
    fn set_mtu(&mut self, mtu: u16) -> Result<(), Self::Error>;
    /// Every address of the node's own stack, on any interface.
    fn node_addresses(&mut self) -> Result<Vec<IpAddr>, Self::Error>;
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub removed: usize,
    pub mtu_changed: Option<u16>,
    /// One message per failed operation, naming it (retried by the next reconciliation).
    pub failures: Vec<String>,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        self.added == 0
            && self.removed == 0
            && self.mtu_changed.is_none()
            && self.failures.is_empty()
    }
}

/// Applies [`HostStackState`]s by difference (see the module doc).
#[derive(Debug, Default)]
pub struct Reconciler {
    applied: HostStackState,
}

impl Reconciler {
    /// A reconciler for an interface that holds `applied` now (what a restarted dataplane finds
    /// there: its addresses and the dataplane's own routes, from a dump).
    pub fn new(applied: HostStackState) -> Self {
        Reconciler { applied }
    }

    pub fn applied(&self) -> &HostStackState {
        &self.applied
    }

    /// Brings the interface from what was applied to `want`: stale routes removed, missing
    /// addresses added, stale addresses removed, missing routes added, then the MTU. Addresses
    /// are added before others are removed because the kernel flushes every IPv4 route of a
    /// device whose last IPv4 address goes: a changed gateway must not take the routes with it.
    /// When the last one does go, the IPv4 routes are known to be gone and are added again.
    pub fn reconcile<S: HostStack>(
        &mut self,
        want: &HostStackState,
        stack: &mut S,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let applied = &mut self.applied;
        converge(
            &mut applied.routes,
            &want.routes,
            false,
            &mut report,
            |add, r| stack.set_route(add, r).map_err(|e| e.to_string()),
        );
        converge(
            &mut applied.addresses,
            &want.addresses,
            true,
            &mut report,
            |add, p| stack.set_address(add, p).map_err(|e| e.to_string()),
        );
        let had_ipv4 = applied.addresses.iter().any(|a| a.addr().is_ipv4());
        converge(
            &mut applied.addresses,
            &want.addresses,
            false,
            &mut report,
            |add, p| stack.set_address(add, p).map_err(|e| e.to_string()),
        );
        if had_ipv4 && !applied.addresses.iter().any(|a| a.addr().is_ipv4()) {
            applied.routes.retain(|r| !r.dst.addr().is_ipv4()); // Flushed by the kernel.
        }
        converge(
            &mut applied.routes,
            &want.routes,
            true,
            &mut report,
            |add, r| stack.set_route(add, r).map_err(|e| e.to_string()),
        );
        if let Some(mtu) = want.mtu.filter(|m| applied.mtu != Some(*m)) {
            match stack.set_mtu(mtu) {
                Ok(()) => {
                    applied.mtu = Some(mtu);
                    report.mtu_changed = Some(mtu);
                }
                Err(e) => report
                    .failures
                    .push(format!("setting the MTU to {mtu}: {e}")),
            }
        }
        report
    }
}

/// One half of a reconciliation of a set: with `add`, what `want` has and `applied` lacks is
/// added; without, what `applied` has and `want` lacks is removed. `applied` follows every
/// operation that succeeded; each failure is reported by name.
fn converge<T: Ord + Copy + fmt::Display>(
    applied: &mut BTreeSet<T>,
    want: &BTreeSet<T>,
    add: bool,
    report: &mut ReconcileReport,
    mut op: impl FnMut(bool, T) -> Result<(), String>,
) {
    let todo: Vec<T> = if add {
        want.difference(applied).copied().collect()
    } else {
        applied.difference(want).copied().collect()
    };
    for item in todo {
        match op(add, item) {
            Ok(()) if add => {
                applied.insert(item);
                report.added += 1;
            }
            Ok(()) => {
                applied.remove(&item);
                report.removed += 1;
            }
            Err(e) => report.failures.push(format!(
                "{} {item}: {e}",
                if add { "adding" } else { "removing" }
            )),
        }
    }
}

/// The parts of a snapshot the state depends on, held to notice a change by pointer.
struct Seen {
    node: Arc<LocalNode>,
    endpoints: Arc<Endpoints>,
    nodes: Arc<Nodes>,
}

impl Watched for Seen {
    fn of(t: &Tables) -> Self {
        Seen {
            node: Arc::clone(&t.node),
            endpoints: Arc::clone(&t.endpoints),
            nodes: Arc::clone(&t.nodes),
        }
    }

    fn differs(&self, t: &Tables) -> bool {
        !Arc::ptr_eq(&self.node, &t.node)
            || !Arc::ptr_eq(&self.endpoints, &t.endpoints)
            || !Arc::ptr_eq(&self.nodes, &t.nodes)
    }
}

/// Keeps `stack` in step with the tables published in `tables` until `shutdown` is set,
/// starting from `reconciler`'s applied state; `report` receives every non-empty
/// reconciliation with what the interface holds afterwards.
pub fn sync_host_link<S: HostStack>(
    tables: &TablesHandle,
    stack: &mut S,
    mut reconciler: Reconciler,
    shutdown: &AtomicBool,
    interval: Duration,
    mut report: impl FnMut(&ReconcileReport, &HostStackState),
) {
    let mut follower = Follower::<Seen>::new();
    let mut addresses_read: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        if addresses_read.is_none_or(|at| at.elapsed() >= ADDRESS_REFRESH) {
            addresses_read = Some(Instant::now());
            if let Err(e) = learn_node_addresses(tables, stack) {
                let failed = ReconcileReport {
                    failures: vec![format!("reading the node's addresses: {e}")],
                    ..ReconcileReport::default()
                };
                report(&failed, reconciler.applied());
            }
        }
        let snapshot = tables.load();
        if follower.due(&snapshot) {
            let want = HostStackState::from_tables(&snapshot);
            drop(snapshot); // Do not hold the tables across the syscalls.
            let done = reconciler.reconcile(&want, stack);
            follower.reconciled(!done.failures.is_empty());
            if !done.is_empty() {
                report(&done, reconciler.applied());
            }
        } else {
            drop(snapshot);
        }
        std::thread::sleep(interval);
    }
}

/// Reads the node's addresses from `stack` and publishes them as `LocalNode::host_addresses`
/// when they differ from the published ones (sorted, without duplicates).
fn learn_node_addresses<S: HostStack>(
    tables: &TablesHandle,
    stack: &mut S,
) -> Result<(), S::Error> {
    let mut addresses = stack.node_addresses()?;
    addresses.sort_unstable();
    addresses.dedup();
    if tables.load().node.host_addresses == addresses {
        return Ok(());
    }
    let _ = tables.update(|t| {
        Arc::make_mut(&mut t.node).host_addresses = addresses;
        Ok::<_, ()>(())
    });
    Ok(())
}

/// One line for the daemon's log describing `report`.
pub fn describe(report: &ReconcileReport, applied: &HostStackState) -> String {
    let mut line = format!(
        "host interface: {} gateway addresses, {} routes to pods (+{} -{})",
        applied.addresses.len(),
        applied.routes.len(),
        report.added,
        report.removed
    );
    if let Some(mtu) = report.mtu_changed {
        line.push_str(&format!(", MTU {mtu}"));
    }
    if !report.failures.is_empty() {
        line.push_str(&format!(
            "; {} operations failed and will be retried (until then the host may not reach \
             the pods concerned): {}",
            report.failures.len(),
            report.failures.join("; ")
        ));
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::tables::endpoints::{EndpointId, EndpointSpec};
    use crate::tables::nodes::{Encap, Node};
    use crate::tables::services::Services;
    use crate::types::{Identity, MacAddr};
    use std::sync::Mutex;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn local(s: &str) -> HostRoute {
        HostRoute {
            dst: p(s),
            src: None,
        }
    }

    fn remote(s: &str, src: &str) -> HostRoute {
        HostRoute {
            dst: p(s),
            src: Some(src.parse().unwrap()),
        }
    }

    fn tables() -> Tables {
        let node = LocalNode {
            name: "n1".into(),
            underlay_ipv4: Some("192.0.2.1".parse().unwrap()),
            gateway_ipv4: Some("10.1.0.1".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            uplink_mtu: 1500,
            default_encap: Encap::Vxlan,
            ..LocalNode::default()
        };
        Tables::empty(node, Services::new(251, 1).unwrap())
    }

    fn endpoint(id: u32, v4: &str) -> EndpointSpec {
        EndpointSpec {
            id: EndpointId(id),
            ifindex: 10 + id,
            mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: None,
            identity: Identity(1000 + id),
        }
    }

    fn node(name: &str, underlay: &str, cidrs: &[&str]) -> Node {
        Node {
            name: name.into(),
            underlay: underlay.parse().unwrap(),
            pod_cidrs: cidrs.iter().map(|c| p(c)).collect(),
            encap: Encap::Vxlan,
        }
    }

    /// Records what the interface holds; operations on `fail` prefixes fail.
    #[derive(Debug, Default)]
    struct FakeStack {
        addresses: BTreeSet<Prefix>,
        routes: BTreeSet<HostRoute>,
        mtu: Option<u16>,
        calls: usize,
        fail: BTreeSet<Prefix>,
        node_addresses: Vec<IpAddr>,
    }

    impl HostStack for FakeStack {
        type Error = String;

        fn set_address(&mut self, add: bool, prefix: Prefix) -> Result<(), String> {
            self.calls += 1;
            if self.fail.contains(&prefix) {
                return Err("refused".into());
            }
            if add {
                self.addresses.insert(prefix);
            } else {
                self.addresses.remove(&prefix);
            }
            Ok(())
        }

        fn set_route(&mut self, add: bool, route: HostRoute) -> Result<(), String> {
            self.calls += 1;
            if self.fail.contains(&route.dst) {
                return Err("refused".into());
            }
            if add {
                self.routes.insert(route);
            } else {
                self.routes.remove(&route);
            }
            Ok(())
        }

        fn set_mtu(&mut self, mtu: u16) -> Result<(), String> {
            self.calls += 1;
            self.mtu = Some(mtu);
            Ok(())
        }

        fn node_addresses(&mut self) -> Result<Vec<IpAddr>, String> {
            Ok(self.node_addresses.clone())
        }
    }

    #[test]
    fn the_kernel_side_holds_the_gateways_and_routes_to_every_pod() {
        let mut t = tables();
        Arc::make_mut(&mut t.endpoints)
            .upsert(endpoint(1, "10.1.0.7"))
            .unwrap();
        let nodes = Arc::make_mut(&mut t.nodes);
        nodes
            .upsert(node("n2", "192.0.2.2", &["10.2.0.0/24", "fd00:2::/64"]))
            .unwrap();
        // The agent does not send its own node, but a nodes table that has it must not make
        // the host route its own pod CIDR around its endpoints.
        nodes
            .upsert(node("n1", "192.0.2.1", &["10.1.0.0/24"]))
            .unwrap();
        let want = HostStackState::from_tables(&t);
        assert_eq!(
            want.addresses,
            [p("10.1.0.1/32"), p("fd00:1::1/128")].into_iter().collect()
        );
        assert_eq!(
            want.routes,
            [
                local("10.1.0.7/32"),
                remote("10.2.0.0/24", "192.0.2.1"),
                local("fd00:2::/64"),
            ]
            .into_iter()
            .collect(),
            "other nodes see the host come from its underlay address (IPv4)"
        );
        assert_eq!(want.mtu, Some(Encap::Vxlan.pod_mtu(1500)));
    }

    #[test]
    fn reconciling_applies_only_the_difference_and_retries_failures() {
        let mut stack = FakeStack::default();
        let mut r = Reconciler::default();
        let mut want = HostStackState {
            addresses: [p("10.1.0.1/32")].into_iter().collect(),
            routes: [local("10.1.0.7/32"), local("10.2.0.0/24")]
                .into_iter()
                .collect(),
            mtu: Some(1450),
        };
        let report = r.reconcile(&want, &mut stack);
        assert_eq!((report.added, report.mtu_changed), (3, Some(1450)));
        assert_eq!(stack.calls, 4);
        assert!(r.reconcile(&want, &mut stack).is_empty());
        assert_eq!(stack.calls, 4, "nothing twice");

        want.routes.remove(&local("10.1.0.7/32"));
        want.routes.insert(local("10.1.0.8/32"));
        stack.fail.insert(p("10.1.0.8/32"));
        let report = r.reconcile(&want, &mut stack);
        assert_eq!((report.added, report.removed), (0, 1));
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(report.failures[0].contains("10.1.0.8/32"));
        stack.fail.clear();
        let calls = stack.calls;
        assert_eq!(r.reconcile(&want, &mut stack).added, 1);
        assert_eq!(stack.calls - calls, 1, "only the failed operation again");
        assert_eq!(stack.routes, want.routes);
    }

    #[test]
    fn a_changed_gateway_keeps_the_routes_and_a_lost_one_readds_them() {
        let mut stack = FakeStack::default();
        let mut r = Reconciler::default();
        let mut want = HostStackState {
            addresses: [p("10.1.0.1/32")].into_iter().collect(),
            routes: [local("10.1.0.7/32")].into_iter().collect(),
            mtu: None,
        };
        r.reconcile(&want, &mut stack);
        // The new gateway is added before the old one goes: the device always has an IPv4
        // address, so the kernel keeps its routes and nothing is redone.
        want.addresses = [p("10.1.0.2/32")].into_iter().collect();
        let calls = stack.calls;
        let report = r.reconcile(&want, &mut stack);
        assert_eq!((report.added, report.removed), (1, 1));
        assert_eq!(stack.calls - calls, 2);
        // No IPv4 address at all: the kernel flushes the IPv4 routes, so the ones still
        // wanted are added again at once.
        want.addresses.clear();
        let report = r.reconcile(&want, &mut stack);
        assert_eq!(
            (report.added, report.removed),
            (1, 1),
            "the address removed, the flushed route added again"
        );
        assert_eq!(stack.routes, want.routes);
    }

    #[test]
    fn a_restart_removes_what_a_previous_run_left_and_is_no_longer_wanted() {
        let left = HostStackState {
            addresses: [p("10.9.0.1/32")].into_iter().collect(),
            routes: [local("10.9.0.0/24")].into_iter().collect(),
            mtu: None,
        };
        let mut stack = FakeStack {
            addresses: left.addresses.clone(),
            routes: left.routes.clone(),
            ..FakeStack::default()
        };
        let mut r = Reconciler::new(left);
        let want = HostStackState::from_tables(&tables());
        let report = r.reconcile(&want, &mut stack);
        assert_eq!(report.removed, 2);
        assert_eq!(stack.addresses, want.addresses);
        assert!(stack.routes.is_empty());
    }

    #[test]
    fn the_watcher_follows_nodes_and_endpoints_and_stops_on_shutdown() {
        let handle = TablesHandle::new(tables());
        let shutdown = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Mutex::new(FakeStack::default()));
        let watcher = {
            let (handle, shutdown, out) = (handle.clone(), Arc::clone(&shutdown), Arc::clone(&out));
            std::thread::spawn(move || {
                let mut stack = FakeStack {
                    node_addresses: vec![
                        "192.0.2.9".parse().unwrap(),
                        "10.1.0.1".parse().unwrap(),
                        "192.0.2.9".parse().unwrap(),
                    ],
                    ..FakeStack::default()
                };
                sync_host_link(
                    &handle,
                    &mut stack,
                    Reconciler::default(),
                    &shutdown,
                    Duration::from_millis(1),
                    |_, _| {},
                );
                *out.lock().unwrap() = stack;
            })
        };
        handle
            .update(|t| {
                Arc::make_mut(&mut t.nodes).upsert(node("n2", "192.0.2.2", &["10.2.0.0/24"]))
            })
            .unwrap();
        handle
            .update(|t| Arc::make_mut(&mut t.endpoints).upsert(endpoint(1, "10.1.0.7")))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        shutdown.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        let stack = out.lock().unwrap();
        assert_eq!(
            stack.routes,
            [local("10.1.0.7/32"), remote("10.2.0.0/24", "192.0.2.1")]
                .into_iter()
                .collect()
        );
        assert_eq!(stack.addresses.len(), 2);
        let node = &handle.load().node;
        assert_eq!(
            node.host_addresses,
            [
                "10.1.0.1".parse::<IpAddr>().unwrap(),
                "192.0.2.9".parse().unwrap()
            ],
            "the kernel's addresses, published sorted"
        );
        assert!(node.is_local_addr("192.0.2.9".parse().unwrap()));
    }
}
