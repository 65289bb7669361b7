//! The host keeps its uplink: what the uplink's XDP program must hand the dataplane, computed
//! from the published tables and kept in step with them.
//!
//! On the uplink the XDP program (crate `xdp-redirect`, uplink filter on) redirects only what the
//! dataplane owns and passes everything else to the kernel: the host's SSH, etcd and pings never
//! depend on the dataplane, which could not hand them back anyway (a `Pass` verdict in user space
//! is dropped). What the dataplane owns ([`UplinkOwnership`]):
//! - tunnel traffic to the node's underlay address (`tables.node.underlay_ipv4`; the program
//!   matches the VXLAN and Geneve UDP ports itself);
//! - destinations it owns: the local endpoints' addresses, as /32 and /128 (native routing
//!   delivers pod traffic from other nodes on the uplink), services' external IPs and, with a
//!   host interface, the pods' gateway addresses, which the kernel holds on that interface
//!   (natively routed replies to the host's connections to remote pods must reach the kernel
//!   through it, where the routes to pods are, not on the uplink, where reverse-path filtering
//!   would refuse them). Masquerade replies are owned by port, through the program's config;
//! - exact (address, protocol, port)s: NodePort frontends on the node's own address
//!   (`uplink_frontends` says which frontends are reached from outside).
//!
//! Contract:
//! - [`UplinkOwnership::from_tables`] is a pure function of one snapshot.
//! - [`Reconciler`] remembers what it applied to the program and applies only the difference
//!   (removals before additions, so a full map makes room first). Every operation that fails is
//!   left out of the applied state, so the next [`Reconciler::reconcile`] retries it; nothing
//!   else is redone.
//! - [`sync_uplink`] watches a [`TablesHandle`] (polling, lock-free: one snapshot load per
//!   interval), reconciles when the node or the endpoints table changed (or a retry is due),
//!   reports through a callback and never panics; it returns once `shutdown` is set.
//!
//! Kept free of AF_XDP types: the program is reached through [`OwnershipMaps`], which the daemon
//! binary implements over `xdp_redirect::XdpProgram` and the tests over a fake.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::follow::{Follower, Watched};
use super::uplink_frontends::{self, UplinkPort};
use crate::api::TablesHandle;
use crate::tables::endpoints::Endpoints;
use crate::tables::services::Services;
use crate::tables::{LocalNode, Tables};
use crate::types::Prefix;

/// How often [`sync_uplink`] looks at the published tables.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// What the uplink's program must own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkOwnership {
    /// Tunnel traffic to this address is the dataplane's. `None` until the node learns it.
    pub underlay_ipv4: Option<Ipv4Addr>,
    /// Destinations the dataplane owns.
    pub prefixes: BTreeSet<Prefix>,
    /// Exact ports the dataplane owns on addresses that otherwise stay the host's.
    pub ports: BTreeSet<UplinkPort>,
}

impl UplinkOwnership {
    /// What `tables` says the uplink must hand the dataplane: the underlay address, every
    /// local endpoint's addresses, every external IP and the gateways with a host interface as
    /// host prefixes, the NodePorts.
    pub fn from_tables(tables: &Tables) -> Self {
        let node = &tables.node;
        let gateways = [
            node.gateway_ipv4.map(IpAddr::V4),
            node.gateway_ipv6.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        .filter(|_| node.host_link.is_some());
        UplinkOwnership {
            underlay_ipv4: node.underlay_ipv4,
            prefixes: tables
                .endpoints
                .iter()
                .flat_map(|ep| ep.spec.ips())
                .chain(gateways)
                .map(Prefix::host)
                .chain(uplink_frontends::owned_external_ips(
                    &tables.services,
                    tables.node.underlay_ipv4,
                ))
                .collect(),
            ports: uplink_frontends::owned_ports(&tables.services),
        }
    }
}

/// The uplink program's maps, as the reconciler drives them.
pub trait OwnershipMaps {
    type Error: fmt::Display;
    /// Makes tunnel traffic to `underlay` owned (`None`: no tunnel traffic is).
    fn set_underlay(&mut self, underlay: Option<Ipv4Addr>) -> Result<(), Self::Error>;
    /// Owns the destinations of `prefix`; adding one already there must succeed.
    fn add_prefix(&mut self, prefix: Prefix) -> Result<(), Self::Error>;
    /// Gives `prefix` back to the kernel; removing one that is absent must succeed.
    fn remove_prefix(&mut self, prefix: Prefix) -> Result<(), Self::Error>;
    /// Owns exactly `port`; adding one already there must succeed.
    fn add_port(&mut self, port: UplinkPort) -> Result<(), Self::Error>;
    /// Gives `port` back to the kernel; removing one that is absent must succeed.
    fn remove_port(&mut self, port: UplinkPort) -> Result<(), Self::Error>;
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The underlay address now applied, when it changed.
    pub underlay_changed: Option<Option<Ipv4Addr>>,
    /// Owned prefixes added and removed.
    pub added: usize,
    pub removed: usize,
    /// Owned ports added and removed.
    pub ports_added: usize,
    pub ports_removed: usize,
    /// One message per failed operation, naming it (retried by the next reconciliation).
    pub failures: Vec<String>,
}

impl ReconcileReport {
    /// True when nothing was changed and nothing failed.
    pub fn is_empty(&self) -> bool {
        self.underlay_changed.is_none()
            && self.added == 0
            && self.removed == 0
            && self.ports_added == 0
            && self.ports_removed == 0
            && self.failures.is_empty()
    }
}

/// Applies [`UplinkOwnership`]s to the maps by difference (see the module doc).
#[derive(Debug, Default)]
pub struct Reconciler {
    applied: UplinkOwnership,
}

impl Reconciler {
    /// A reconciler for maps that hold `applied` now (a freshly loaded program: the default,
    /// no underlay address and no prefixes).
    pub fn new(applied: UplinkOwnership) -> Self {
        Reconciler { applied }
    }

    /// What the maps hold, as far as this reconciler knows.
    pub fn applied(&self) -> &UplinkOwnership {
        &self.applied
    }

    /// True when the maps already hold `want`.
    pub fn is_in_step(&self, want: &UplinkOwnership) -> bool {
        self.applied == *want
    }

    /// Brings the maps from what was applied to `want`, one operation per difference.
    pub fn reconcile<M: OwnershipMaps>(
        &mut self,
        want: &UplinkOwnership,
        maps: &mut M,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let stale: Vec<Prefix> = self
            .applied
            .prefixes
            .difference(&want.prefixes)
            .copied()
            .collect();
        for prefix in stale {
            match maps.remove_prefix(prefix) {
                Ok(()) => {
                    self.applied.prefixes.remove(&prefix);
                    report.removed += 1;
                }
                Err(e) => report
                    .failures
                    .push(format!("removing owned prefix {prefix}: {e}")),
            }
        }
        let missing: Vec<Prefix> = want
            .prefixes
            .difference(&self.applied.prefixes)
            .copied()
            .collect();
        for prefix in missing {
            match maps.add_prefix(prefix) {
                Ok(()) => {
                    self.applied.prefixes.insert(prefix);
                    report.added += 1;
                }
                Err(e) => report
                    .failures
                    .push(format!("adding owned prefix {prefix}: {e}")),
            }
        }
        self.reconcile_ports(want, maps, &mut report);
        if want.underlay_ipv4 != self.applied.underlay_ipv4 {
            match maps.set_underlay(want.underlay_ipv4) {
                Ok(()) => {
                    self.applied.underlay_ipv4 = want.underlay_ipv4;
                    report.underlay_changed = Some(want.underlay_ipv4);
                }
                Err(e) => report.failures.push(format!(
                    "setting the underlay address to {}: {e}",
                    display_underlay(want.underlay_ipv4)
                )),
            }
        }
        report
    }
}

impl Reconciler {
    /// The owned ports' share of [`Reconciler::reconcile`]: removals first, then additions.
    fn reconcile_ports<M: OwnershipMaps>(
        &mut self,
        want: &UplinkOwnership,
        maps: &mut M,
        report: &mut ReconcileReport,
    ) {
        let stale: Vec<UplinkPort> = self
            .applied
            .ports
            .difference(&want.ports)
            .copied()
            .collect();
        for port in stale {
            match maps.remove_port(port) {
                Ok(()) => {
                    self.applied.ports.remove(&port);
                    report.ports_removed += 1;
                }
                Err(e) => report
                    .failures
                    .push(format!("removing owned port {port}: {e}")),
            }
        }
        let missing: Vec<UplinkPort> = want
            .ports
            .difference(&self.applied.ports)
            .copied()
            .collect();
        for port in missing {
            match maps.add_port(port) {
                Ok(()) => {
                    self.applied.ports.insert(port);
                    report.ports_added += 1;
                }
                Err(e) => report
                    .failures
                    .push(format!("adding owned port {port}: {e}")),
            }
        }
    }
}

fn display_underlay(addr: Option<Ipv4Addr>) -> String {
    addr.map_or_else(|| "none".to_string(), |a| a.to_string())
}

/// The parts of a snapshot the ownership depends on, held to notice a change by pointer.
struct Seen {
    node: Arc<LocalNode>,
    endpoints: Arc<Endpoints>,
    services: Arc<Services>,
}

impl Watched for Seen {
    fn of(tables: &Tables) -> Self {
        Seen {
            node: Arc::clone(&tables.node),
            endpoints: Arc::clone(&tables.endpoints),
            services: Arc::clone(&tables.services),
        }
    }

    /// True when `tables` holds other node facts, endpoints or services. A request that touched
    /// none of them (ipcache, nodes) shares all three `Arc`s with the last snapshot.
    fn differs(&self, tables: &Tables) -> bool {
        !Arc::ptr_eq(&self.node, &tables.node)
            || !Arc::ptr_eq(&self.endpoints, &tables.endpoints)
            || !Arc::ptr_eq(&self.services, &tables.services)
    }
}

/// Keeps `maps` (of a freshly loaded program: no underlay address, no prefixes) in step with the
/// tables published in `tables` until `shutdown` is set: every `interval`, reconciles when the
/// node facts, the endpoints or the services changed, or when a retry of failed operations is
/// due (see [`super::follow`]). `report` receives every non-empty reconciliation, failures included,
/// with what the maps hold afterwards.
pub fn sync_uplink<M: OwnershipMaps>(
    tables: &TablesHandle,
    maps: &mut M,
    shutdown: &AtomicBool,
    interval: Duration,
    mut report: impl FnMut(&ReconcileReport, &UplinkOwnership),
) {
    let mut reconciler = Reconciler::default();
    let mut follower = Follower::<Seen>::new();
    while !shutdown.load(Ordering::Relaxed) {
        let snapshot = tables.load();
        if follower.due(&snapshot) {
            let want = UplinkOwnership::from_tables(&snapshot);
            drop(snapshot); // Do not hold the tables across the syscalls.
            let done = reconciler.reconcile(&want, maps);
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

/// One line for the daemon's log describing `report`.
pub fn describe(report: &ReconcileReport, applied: &UplinkOwnership) -> String {
    let mut line = String::from("uplink ownership:");
    if let Some(underlay) = report.underlay_changed {
        line.push_str(&format!(
            " tunnel traffic to {} is the dataplane's;",
            display_underlay(underlay)
        ));
    }
    line.push_str(&format!(
        " {} owned prefixes (+{} -{}), {} owned ports (+{} -{})",
        applied.prefixes.len(),
        report.added,
        report.removed,
        applied.ports.len(),
        report.ports_added,
        report.ports_removed
    ));
    if !report.failures.is_empty() {
        line.push_str(&format!(
            "; {} operations failed and will be retried (the affected destinations stay with \
             the kernel until then): {}",
            report.failures.len(),
            report.failures.join("; ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::endpoints::{EndpointId, EndpointSpec};
    use crate::tables::services::Services;
    use crate::types::{Identity, MacAddr};
    use std::net::Ipv6Addr;
    use std::sync::Mutex;

    fn tables() -> Tables {
        Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap())
    }

    fn endpoint(id: u32, ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> EndpointSpec {
        EndpointSpec {
            id: EndpointId(id),
            ifindex: 10 + id,
            mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
            ipv4,
            ipv6,
            identity: Identity(1000 + id),
        }
    }

    fn v4(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 0, last)
    }

    fn v6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last)
    }

    fn host(addr: impl Into<IpAddr>) -> Prefix {
        Prefix::host(addr.into())
    }

    /// Records the maps' contents; operations on `fail` prefixes (or the underlay, when
    /// `fail_underlay`) fail.
    #[derive(Debug, Default)]
    struct FakeMaps {
        underlay: Option<Ipv4Addr>,
        prefixes: BTreeSet<Prefix>,
        ports: BTreeSet<UplinkPort>,
        calls: usize,
        fail: BTreeSet<Prefix>,
        fail_underlay: bool,
    }

    impl OwnershipMaps for FakeMaps {
        type Error = String;

        fn set_underlay(&mut self, underlay: Option<Ipv4Addr>) -> Result<(), String> {
            self.calls += 1;
            if self.fail_underlay {
                return Err("refused".into());
            }
            self.underlay = underlay;
            Ok(())
        }

        fn add_prefix(&mut self, prefix: Prefix) -> Result<(), String> {
            self.calls += 1;
            if self.fail.contains(&prefix) {
                return Err("map full".into());
            }
            self.prefixes.insert(prefix);
            Ok(())
        }

        fn remove_prefix(&mut self, prefix: Prefix) -> Result<(), String> {
            self.calls += 1;
            if self.fail.contains(&prefix) {
                return Err("refused".into());
            }
            self.prefixes.remove(&prefix);
            Ok(())
        }

        fn add_port(&mut self, port: UplinkPort) -> Result<(), String> {
            self.calls += 1;
            self.ports.insert(port);
            Ok(())
        }

        fn remove_port(&mut self, port: UplinkPort) -> Result<(), String> {
            self.calls += 1;
            self.ports.remove(&port);
            Ok(())
        }
    }

    #[test]
    fn ownership_is_the_underlay_and_every_local_endpoint_address() {
        let mut t = tables();
        assert_eq!(UplinkOwnership::from_tables(&t), UplinkOwnership::default());

        Arc::make_mut(&mut t.node).underlay_ipv4 = Some(Ipv4Addr::new(192, 0, 2, 1));
        let eps = Arc::make_mut(&mut t.endpoints);
        eps.upsert(endpoint(1, Some(v4(11)), None)).unwrap();
        eps.upsert(endpoint(2, Some(v4(12)), Some(v6(12)))).unwrap();
        eps.upsert(endpoint(3, None, Some(v6(13)))).unwrap();
        let own = UplinkOwnership::from_tables(&t);
        assert_eq!(own.underlay_ipv4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        let expected: BTreeSet<Prefix> = [host(v4(11)), host(v4(12)), host(v6(12)), host(v6(13))]
            .into_iter()
            .collect();
        assert_eq!(own.prefixes, expected);
        assert!(own
            .prefixes
            .iter()
            .all(|p| p.prefix_len() == 32 || p.prefix_len() == 128));
    }

    #[test]
    fn with_a_host_interface_the_gateways_are_owned_too() {
        let mut t = tables();
        let node = Arc::make_mut(&mut t.node);
        node.gateway_ipv4 = Some(v4(1));
        node.gateway_ipv6 = Some(v6(1));
        assert!(UplinkOwnership::from_tables(&t).prefixes.is_empty());
        Arc::make_mut(&mut t.node).host_link = Some(crate::tables::HostLink {
            ifindex: 7,
            kernel_mac: MacAddr([2, 0, 0, 0, 0, 7]),
        });
        let expected: BTreeSet<Prefix> = [host(v4(1)), host(v6(1))].into_iter().collect();
        assert_eq!(UplinkOwnership::from_tables(&t).prefixes, expected);
    }

    #[test]
    fn reconciling_applies_only_the_difference() {
        let mut maps = FakeMaps::default();
        let mut r = Reconciler::default();
        let mut want = UplinkOwnership {
            underlay_ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            prefixes: [host(v4(1)), host(v4(2)), host(v6(1))]
                .into_iter()
                .collect(),
            ports: BTreeSet::new(),
        };
        let report = r.reconcile(&want, &mut maps);
        assert_eq!(report.added, 3);
        assert_eq!(report.underlay_changed, Some(want.underlay_ipv4));
        assert_eq!(maps.calls, 4);
        assert_eq!(maps.prefixes, want.prefixes);
        assert!(r.is_in_step(&want));

        // The same again: no call at all.
        assert!(r.reconcile(&want, &mut maps).is_empty());
        assert_eq!(maps.calls, 4);

        // One pod gone, one new: exactly two calls; the underlay is untouched.
        want.prefixes.remove(&host(v4(2)));
        want.prefixes.insert(host(v4(3)));
        let report = r.reconcile(&want, &mut maps);
        assert_eq!((report.added, report.removed), (1, 1));
        assert_eq!(report.underlay_changed, None);
        assert_eq!(maps.calls, 6);
        assert_eq!(maps.prefixes, want.prefixes);

        // Back to nothing.
        let report = r.reconcile(&UplinkOwnership::default(), &mut maps);
        assert_eq!(report.removed, 3);
        assert_eq!(report.underlay_changed, Some(None));
        assert!(maps.prefixes.is_empty() && maps.underlay.is_none());
    }

    #[test]
    fn node_ports_and_external_ips_are_owned_and_follow_the_services() {
        use crate::tables::services::{Backend, Frontend, FrontendKind, LbMode, ServiceSpec};
        let spec = |addr: &str, port, kind| ServiceSpec {
            frontend: Frontend {
                addr: addr.parse().unwrap(),
                port,
                proto: 6,
            },
            backends: vec![Backend {
                addr: IpAddr::V4(v4(5)),
                port: 8080,
                weight: 1,
            }],
            mode: LbMode::Dsr,
            kind,
        };
        let mut t = tables();
        let svcs = Arc::make_mut(&mut t.services);
        svcs.upsert(spec("10.96.0.1", 80, FrontendKind::ClusterIp))
            .unwrap();
        svcs.upsert(spec("192.0.2.1", 30080, FrontendKind::NodePort))
            .unwrap();
        svcs.upsert(spec("203.0.113.9", 80, FrontendKind::ExternalIp))
            .unwrap();
        let want = UplinkOwnership::from_tables(&t);
        let port = UplinkPort {
            addr: Ipv4Addr::new(192, 0, 2, 1),
            proto: 6,
            port: 30080,
        };
        assert_eq!(want.ports, [port].into_iter().collect());
        assert_eq!(
            want.prefixes,
            [host(Ipv4Addr::new(203, 0, 113, 9))].into_iter().collect()
        );
        let (mut maps, mut r) = (FakeMaps::default(), Reconciler::default());
        let report = r.reconcile(&want, &mut maps);
        assert_eq!((report.added, report.ports_added), (1, 1));
        assert_eq!(maps.ports, want.ports);
        let report = r.reconcile(&UplinkOwnership::default(), &mut maps);
        assert_eq!((report.removed, report.ports_removed), (1, 1));
        assert!(maps.ports.is_empty() && maps.prefixes.is_empty());
    }

    #[test]
    fn failed_operations_are_retried_and_nothing_else() {
        let mut maps = FakeMaps {
            fail: [host(v4(2))].into_iter().collect(),
            fail_underlay: true,
            ..FakeMaps::default()
        };
        let mut r = Reconciler::default();
        let want = UplinkOwnership {
            underlay_ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            prefixes: [host(v4(1)), host(v4(2))].into_iter().collect(),
            ports: BTreeSet::new(),
        };
        let report = r.reconcile(&want, &mut maps);
        assert_eq!(report.added, 1);
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("10.1.0.2/32"),
            "{:?}",
            report.failures
        );
        assert!(
            report.failures[1].contains("192.0.2.1"),
            "{:?}",
            report.failures
        );
        assert!(!r.is_in_step(&want));
        assert_eq!(r.applied().prefixes.len(), 1);

        maps.fail.clear();
        maps.fail_underlay = false;
        let calls = maps.calls;
        let report = r.reconcile(&want, &mut maps);
        assert!(report.failures.is_empty());
        assert_eq!(report.added, 1);
        assert_eq!(
            maps.calls - calls,
            2,
            "only the two failed operations again"
        );
        assert!(r.is_in_step(&want));
        assert_eq!(maps.prefixes, want.prefixes);
    }

    #[test]
    fn a_failed_removal_stays_applied_and_is_retried() {
        let mut maps = FakeMaps::default();
        let mut r = Reconciler::default();
        let one = UplinkOwnership {
            underlay_ipv4: None,
            prefixes: [host(v4(1))].into_iter().collect(),
            ports: BTreeSet::new(),
        };
        r.reconcile(&one, &mut maps);
        maps.fail.insert(host(v4(1)));
        let report = r.reconcile(&UplinkOwnership::default(), &mut maps);
        assert_eq!(report.removed, 0);
        assert_eq!(report.failures.len(), 1);
        assert!(r.applied().prefixes.contains(&host(v4(1))));
        maps.fail.clear();
        assert_eq!(
            r.reconcile(&UplinkOwnership::default(), &mut maps).removed,
            1
        );
        assert!(maps.prefixes.is_empty());
    }

    #[test]
    fn the_description_says_what_changed_and_what_failed() {
        let applied = UplinkOwnership {
            underlay_ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            prefixes: [host(v4(1))].into_iter().collect(),
            ports: BTreeSet::new(),
        };
        let report = ReconcileReport {
            underlay_changed: Some(applied.underlay_ipv4),
            added: 1,
            removed: 0,
            ports_added: 2,
            ports_removed: 0,
            failures: vec!["adding owned prefix 10.1.0.2/32: map full".into()],
        };
        let line = describe(&report, &applied);
        assert!(line.contains("192.0.2.1"), "{line}");
        assert!(line.contains("1 owned prefixes (+1 -0)"), "{line}");
        assert!(line.contains("0 owned ports (+2 -0)"), "{line}");
        assert!(line.contains("retried"), "{line}");
        assert!(line.contains("map full"), "{line}");
    }

    /// The watcher with fake maps: it follows endpoint and node changes, ignores unrelated
    /// publications, and stops on the flag.
    #[test]
    fn the_watcher_follows_published_tables_and_stops_on_shutdown() {
        let handle = TablesHandle::new(tables());
        let shutdown = Arc::new(AtomicBool::new(false));
        let maps = Arc::new(Mutex::new((FakeMaps::default(), 0usize)));
        let watcher = {
            let (handle, shutdown, maps) =
                (handle.clone(), Arc::clone(&shutdown), Arc::clone(&maps));
            std::thread::spawn(move || {
                let mut fake = FakeMaps::default();
                sync_uplink(
                    &handle,
                    &mut fake,
                    &shutdown,
                    Duration::from_millis(1),
                    |_, _| {},
                );
                let calls = fake.calls;
                *maps.lock().unwrap() = (fake, calls);
            })
        };
        handle
            .update(|t| {
                Arc::make_mut(&mut t.node).underlay_ipv4 = Some(Ipv4Addr::new(192, 0, 2, 1));
                Arc::make_mut(&mut t.endpoints).upsert(endpoint(1, Some(v4(11)), Some(v6(11))))
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // An unrelated publication (the ipcache) reconciles nothing.
        handle
            .update(|t| {
                Arc::make_mut(&mut t.ipcache).upsert(
                    Prefix::host(IpAddr::V4(v4(99))),
                    crate::tables::ipcache::IpCacheEntry::local(Identity(7)),
                );
                Ok::<_, ()>(())
            })
            .unwrap();
        handle
            .update(|t| {
                Arc::make_mut(&mut t.endpoints).remove(EndpointId(1));
                Arc::make_mut(&mut t.endpoints).upsert(endpoint(2, Some(v4(12)), None))
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        shutdown.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        let (fake, calls) = &*maps.lock().unwrap();
        assert_eq!(fake.underlay, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(fake.prefixes, [host(v4(12))].into_iter().collect());
        assert_eq!(
            *calls,
            1 + 2 + 2 + 1,
            "underlay, +2, then -2 +1: nothing more"
        );
    }
}
