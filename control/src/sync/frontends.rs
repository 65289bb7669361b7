//! A service's frontends on this node, as the dataplane gets them: each cluster IP frontend;
//! for a frontend with a node port, (this node's underlay address, node port, protocol); for
//! each external IP, (that address, each frontend's port, protocol). Cilium expands a NodePort
//! service the same way, one frontend per node address.
//!
//! Contract:
//! - [`frontends_on_node`] is a pure function of the service and this node's underlay address;
//!   the result has no duplicate (address, port, protocol).
//! - A node port or an external IP is made only from frontends of its address family, so its
//!   backends (which the dataplane requires to be of the frontend's family) still fit; a node
//!   without an underlay address yet gets no node port frontends (they come when its entry
//!   does).
//! - [`ClusterState::sync_service_frontends`] sends the difference between what this node's
//!   dataplane holds for a service and what it should: deletes for frontends gone, an upsert for
//!   every current one (backends or mode may have changed). A node port that another service
//!   already claims is refused by [`ClusterState::check_node_ports`] before anything is sent.

use std::net::IpAddr;

use super::wire::{frontend_msg, service_upsert};
use super::ClusterState;
use crate::dataplane_client::{Change, FrontendMsg, Proto, ServiceRef, WireFrontendKind};
use crate::schema::{SchemaError, ServiceSpec};

/// One frontend on this node and who reaches it.
pub(super) type NodeFrontend = (FrontendMsg, WireFrontendKind);

/// The frontends of `spec` on a node whose underlay address is `underlay`.
pub(super) fn frontends_on_node(spec: &ServiceSpec, underlay: Option<IpAddr>) -> Vec<NodeFrontend> {
    let mut out: Vec<NodeFrontend> = Vec::new();
    let mut push = |f: FrontendMsg, kind| {
        if !out.iter().any(|(g, _)| *g == f) {
            out.push((f, kind));
        }
    };
    for f in &spec.frontends {
        let cluster_ip = frontend_msg(f);
        push(cluster_ip, WireFrontendKind::ClusterIp);
        let at = |addr: IpAddr, port: u16| FrontendMsg {
            addr,
            port,
            proto: cluster_ip.proto,
        };
        if let (Some(port), Some(node)) = (f.node_port, underlay) {
            if node.is_ipv4() == f.ip.is_ipv4() {
                push(at(node, port), WireFrontendKind::NodePort);
            }
        }
        for ext in spec
            .external_ips
            .iter()
            .filter(|e| e.is_ipv4() == f.ip.is_ipv4())
        {
            push(at(*ext, f.port), WireFrontendKind::ExternalIp);
        }
    }
    out
}

impl ClusterState {
    fn own_underlay(&self) -> Option<IpAddr> {
        self.nodes.get(&self.node).map(|n| n.underlay_ip)
    }

    /// Brings this node's dataplane to the current frontends of service `key`
    /// (`namespace/name`; absent from the model: none).
    pub(super) fn sync_service_frontends(&mut self, key: &str) {
        let underlay = self.own_underlay();
        let want = self
            .services
            .get(key)
            .map(|s| frontends_on_node(s, underlay))
            .unwrap_or_default();
        let had = self.sent_frontends.remove(key).unwrap_or_default();
        for (f, _) in had
            .iter()
            .filter(|(f, _)| !want.iter().any(|(g, _)| g == f))
        {
            self.pending
                .push(Change::ServiceDelete(ServiceRef { frontend: *f }));
        }
        if let Some(spec) = self.services.get(key) {
            for (f, kind) in &want {
                self.pending.push(service_upsert(*f, *kind, spec));
            }
        }
        if !want.is_empty() {
            self.sent_frontends.insert(key.to_string(), want);
        }
    }

    /// Every service with node ports again (this node's underlay address changed).
    pub(super) fn sync_node_port_frontends(&mut self) {
        let keys: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.frontends.iter().any(|f| f.node_port.is_some()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.sync_service_frontends(&k);
        }
    }

    /// Refuses an external IP that is a node's address or lies in a node's pod CIDRs: the
    /// uplink would hand the dataplane all of that node's own traffic, or a service would take
    /// over a pod's address (Kubernetes' CVE-2020-8554 is a service claiming addresses it does
    /// not own).
    pub(super) fn check_external_ips(
        &self,
        etcd_key: &str,
        spec: &ServiceSpec,
    ) -> Result<(), SchemaError> {
        for (i, ip) in spec.external_ips.iter().enumerate() {
            let taken = self.nodes.iter().find_map(|(name, n)| {
                if n.underlay_ip == *ip {
                    Some(format!("node {name}'s address"))
                } else if n.prefixes().iter().any(|p| p.contains(*ip)) {
                    Some(format!("in node {name}'s pod CIDRs"))
                } else {
                    None
                }
            });
            if let Some(what) = taken {
                return Err(SchemaError::Invalid {
                    key: etcd_key.to_string(),
                    reason: format!(
                        "external_ips[{i}]: {ip} is {what}; an external IP must be an address routed to the nodes for this service alone"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Refuses `spec` (for service `key`) when another service already claims one of its node
    /// ports with the same protocol: node ports are cluster-wide, one service each.
    pub(super) fn check_node_ports(
        &self,
        etcd_key: &str,
        key: &str,
        spec: &ServiceSpec,
    ) -> Result<(), SchemaError> {
        for f in spec.frontends.iter().filter(|f| f.node_port.is_some()) {
            let proto = Proto(super::wire::protocol_number(&f.protocol));
            let owner = self.services.iter().find(|(k, s)| {
                k.as_str() != key
                    && s.frontends.iter().any(|g| {
                        g.node_port == f.node_port
                            && Proto(super::wire::protocol_number(&g.protocol)) == proto
                    })
            });
            if let (Some((other, _)), Some(port)) = (owner, f.node_port) {
                return Err(SchemaError::Invalid {
                    key: etcd_key.to_string(),
                    reason: format!(
                        "node port {port}/{} is already service {other}'s; pick another node port",
                        f.protocol.to_ascii_lowercase()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::schema::{BackendSpec, FrontendSpec, ServiceMode};

    fn frontend(ip: &str, port: u16, protocol: &str, node_port: Option<u16>) -> FrontendSpec {
        FrontendSpec {
            ip: ip.parse().unwrap(),
            port,
            protocol: protocol.into(),
            node_port,
        }
    }

    fn text(v: &[NodeFrontend]) -> Vec<String> {
        v.iter()
            .map(|(f, k)| format!("{}:{}/{} {k:?}", f.addr, f.port, f.proto.0))
            .collect()
    }

    #[test]
    fn cluster_ip_node_port_and_external_ips_per_family() {
        let spec = ServiceSpec {
            frontends: vec![
                frontend("10.96.0.10", 80, "TCP", Some(30080)),
                frontend("10.96.0.10", 53, "UDP", Some(30053)),
                frontend("fd00::10", 80, "TCP", Some(30081)),
            ],
            backends: vec![BackendSpec {
                ip: "10.1.0.5".parse().unwrap(),
                port: 8080,
                weight: 1,
            }],
            mode: ServiceMode::Dsr,
            external_ips: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
        };
        let on_node = frontends_on_node(&spec, Some("192.168.0.1".parse().unwrap()));
        assert_eq!(
            text(&on_node),
            [
                "10.96.0.10:80/6 ClusterIp",
                "192.168.0.1:30080/6 NodePort",
                "203.0.113.7:80/6 ExternalIp",
                "10.96.0.10:53/17 ClusterIp",
                "192.168.0.1:30053/17 NodePort",
                "203.0.113.7:53/17 ExternalIp",
                "fd00::10:80/6 ClusterIp",
                "2001:db8::7:80/6 ExternalIp",
            ]
        );
        // No underlay address yet: no node ports.
        let early = frontends_on_node(&spec, None);
        assert!(early.iter().all(|(_, k)| *k != WireFrontendKind::NodePort));
        assert_eq!(early.len(), 6);
    }

    #[test]
    fn an_external_ip_equal_to_a_cluster_ip_frontend_is_listed_once() {
        let spec = ServiceSpec {
            frontends: vec![frontend("10.96.0.10", 80, "TCP", None)],
            backends: vec![],
            mode: ServiceMode::Snat,
            external_ips: vec!["10.96.0.10".parse().unwrap()],
        };
        assert_eq!(frontends_on_node(&spec, None).len(), 1);
    }

    /// The model end to end: node ports follow the node's address, a node port another
    /// service holds is refused with the key and reason (the last good value stays), deleting
    /// a service deletes every frontend it had on the node.
    #[test]
    fn the_model_sends_node_port_frontends_and_refuses_a_taken_node_port() {
        use super::super::test_support::{base, k};
        fn summary(changes: &[Change]) -> Vec<String> {
            changes
                .iter()
                .filter_map(|c| match c {
                    Change::ServiceUpsert(m) => Some(format!(
                        "+{}:{} {:?}",
                        m.frontend.addr, m.frontend.port, m.kind
                    )),
                    Change::ServiceDelete(r) => {
                        Some(format!("-{}:{}", r.frontend.addr, r.frontend.port))
                    }
                    _ => None,
                })
                .collect()
        }
        let mut s = ClusterState::new("n1");
        s.set_quiet(true);
        base(&mut s);
        s.commit();
        let web = br#"{"frontends":[{"ip":"10.96.0.20","port":80,"node_port":30080}],"backends":[{"ip":"10.2.0.5","port":8080}],"mode":"dsr","external_ips":["203.0.113.7"]}"#;
        s.put(&k("services/default/web"), web).unwrap();
        assert_eq!(
            summary(&s.commit()),
            [
                "+10.96.0.20:80 ClusterIp",
                "+192.168.0.1:30080 NodePort",
                "+203.0.113.7:80 ExternalIp"
            ]
        );

        let thief = br#"{"frontends":[{"ip":"10.96.0.21","port":80,"node_port":30080}]}"#;
        let err = s.put(&k("services/default/thief"), thief).unwrap_err();
        assert!(
            err.to_string().contains("already service default/web's"),
            "{err}"
        );
        assert!(s.rejected().contains_key(&k("services/default/thief")));
        assert!(
            summary(&s.commit()).is_empty(),
            "nothing sent for a refused service"
        );

        for (ip, why) in [
            ("192.168.0.2", "node n2's address"),
            ("10.1.0.9", "pod CIDRs"),
        ] {
            let v = format!(
                r#"{{"frontends":[{{"ip":"10.96.0.23","port":80}}],"external_ips":["{ip}"]}}"#
            );
            let err = s
                .put(&k("services/default/grab"), v.as_bytes())
                .unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }

        let range = br#"{"frontends":[{"ip":"10.96.0.22","port":80,"node_port":8080}]}"#;
        let err = s.put(&k("services/default/low"), range).unwrap_err();
        assert!(err.to_string().contains("30000-32767"), "{err}");

        // The node's address changes: the node port moves with it.
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.11","pod_cidrs":["10.1.0.0/24"]}"#,
        )
        .unwrap();
        let moved = summary(&s.commit());
        assert!(
            moved.contains(&"-192.168.0.1:30080".to_string()),
            "{moved:?}"
        );
        assert!(
            moved.contains(&"+192.168.0.11:30080 NodePort".to_string()),
            "{moved:?}"
        );

        // The snapshot after a dataplane restart has the same three frontends.
        assert_eq!(summary(&s.snapshot()).len(), 3);

        s.delete(&k("services/default/web"));
        let mut gone = summary(&s.commit());
        gone.sort();
        assert_eq!(
            gone,
            ["-10.96.0.20:80", "-192.168.0.11:30080", "-203.0.113.7:80"]
        );
    }
}
