//! `ingress`: traffic into and out of the cluster (issue 12): an external client -> node 1's
//! NodePort with DSR and with SNAT, and pod -> world through masquerade, through
//! flagella-dataplane in each node and through kernel forwarding with kube-proxy's iptables
//! rules, on one topology (this module); the measurements and the table are
//! [`crate::ingress_report`]'s.
//!
//! ```text
//!  <p>-x  eth0 10.78.0.2/24 <-veth-> xr 10.78.0.1/24 ┐ <p>-u: the router (IPv4 forwarding)
//!  (the external client, and the world's server)      br0 10.80.0.254/24 ┘ and the underlay bridge
//!                 ┌────────── u1 (bridge port) ───────────┴─────────── u2 ──────────┐
//!  <p>-n1 eth0 10.80.0.1/24: NodePort 30080                   <p>-n2 eth0 10.80.0.2/24
//!  <p>-a  eth0 10.81.0.11 (pod A, node 1)                     <p>-b  eth0 10.82.0.12 (pod B, node 2)
//!  nodes: default via 10.80.0.254 (the router); pods as in `xnode` (gateway 10.8x.0.1
//!  onlink, static gateway MAC, MTU 1400, checksums in software); the client: default via
//!  10.78.0.1, checksums in software; `xr` has the pods' gateway MAC, so the packet and xdp
//!  generators' prebuilt frames reach the router from the client as from a pod.
//! ```
//!
//! `<p>` is `fin-<pid>-<run>`, interfaces in the node namespaces `fin<pid>r<run>a|b`; every
//! address is inside namespaces this module made, dropping the [`IngressTopology`] deletes them
//! (and the veths and iptables rules in them). Nothing in the root namespace is touched.
//!
//! The service: frontend cluster IP 10.96.0.10:80 and NodePort 30080, UDP and TCP, one backend,
//! pod B:9000 (the sink's port). Pod B is on node 2, so node 1 forwards every NodePort flow
//! across the underlay.
//!
//! Targets:
//! - `flagella`: `flagella-dataplane --interface eth0=uplink --interface <pod veth>=pod` in each
//!   node, native routing, configured over its control socket with what the agent
//!   (`flagella-control`) sends it for this cluster (no etcd: the requests, not the agent, are
//!   what is measured): `local_node.set`, the peer node (`node.upsert`), the local pod's
//!   endpoint, both pods in the ipcache, and per node one `service.upsert` per frontend (cluster
//!   IP, and the node's own address and port 30080 with `kind: node_port`), mode `dsr` or `snat`
//!   by scenario; no policy (none enforced, as with no NetworkPolicy). Masquerade is the
//!   daemon's default (on, ports 61000-65535). The masquerade scenario starts node 1's
//!   dataplane only (node 2 is not on its path; an idle dataplane would spin on the worker
//!   core). Next hops (the peer, the default gateway) are
//!   the daemons' own, from the kernel: the run waits until each has them.
//! - `iptables`: each node routes (IPv4 forwarding, rp_filter off, the pod's host veth is its
//!   gateway, the peer's pod CIDR via the peer's underlay address: native routing) and loads
//!   kube-proxy's iptables-mode `nat` rules ([`kube_proxy_rules`]): `KUBE-SERVICES` ->
//!   `KUBE-NODEPORTS` (`addrtype LOCAL`) -> `KUBE-EXT-*` -> `KUBE-SVC-*` -> `KUBE-SEP-*` DNAT to
//!   pod B, `KUBE-MARK-MASQ` + `KUBE-POSTROUTING` MASQUERADE for the SNAT scenario (kube-proxy's
//!   `externalTrafficPolicy: Cluster`), and the pod CIDR's MASQUERADE towards the world (what
//!   a CNI or ip-masq-agent adds next to kube-proxy). kube-proxy has no DSR: the DSR scenario's
//!   baseline is DNAT without MASQUERADE, node 2 routing the client's network back through node
//!   1 so node 1's conntrack can undo the DNAT.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::cli::{RunArgs, Scenario};
use crate::forward::{Ends, Running};
use crate::targets::{wait_for, DataplaneLaunch, Flagella};
use crate::topo::{
    add_pod, exec_in, ip_in, route_pods, run, Namespaces, Pod, ROUTER_MAC, SINK_PORT,
};
use crate::xnode::{
    set_local_node, Node, GATEWAYS, IDENTITIES, POD_IPS, POD_MTU, POD_NETS, UNDERLAY,
};
use crate::BenchError;

/// The router's address on the underlay bridge: the nodes' default gateway.
pub const ROUTER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 254);
/// The router's address towards the client (`xr`).
pub const ROUTER_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The external client, also the world's server for pod A.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The service's NodePort.
pub const NODE_PORT: u16 = 30080;
/// The service's cluster IP and port.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_PORT: u16 = 80;
/// Everything inside the cluster (underlay 10.80/24, pod CIDRs 10.81/24 and 10.82/24): what
/// the iptables masquerade rule does not translate.
const CLUSTER_NET: &str = "10.80.0.0/14";

/// What forwards (the table's "target" column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressTarget {
    /// Nothing: the generator and clients one veth from the router (the ceiling).
    Ceiling,
    /// Kernel forwarding with kube-proxy's iptables rules.
    Iptables,
    /// flagella-dataplane in each node.
    Flagella,
}

impl IngressTarget {
    pub fn name(self) -> &'static str {
        match self {
            IngressTarget::Ceiling => "ceiling",
            IngressTarget::Iptables => "iptables",
            IngressTarget::Flagella => "flagella",
        }
    }
}

/// The namespaces of one measurement, deleted on drop.
#[derive(Debug)]
pub struct IngressTopology {
    /// The router and underlay bridge.
    pub router: String,
    /// The client's (world server's) namespace and address, as a [`Pod`] whose `host_if` is the
    /// router's end of its veth.
    pub outside: Pod,
    /// The router's end towards the client, as the ceiling's sink.
    pub router_end: Pod,
    pub nodes: [Node; 2],
    _namespaces: Namespaces,
}

/// `sysctl -qw setting` inside `ns`.
fn sysctl_in(ns: &str, setting: &str) -> Result<(), BenchError> {
    exec_in(ns, "sysctl", &["-qw", setting]).map(|_| ())
}

impl IngressTopology {
    /// Builds everything under `prefix` (`fin-<pid>-<run>`) with `short` the interface-name
    /// prefix of the pods' host veths (`fin<pid>r<run>`, at most 14 characters).
    pub fn build(prefix: &str, short: &str) -> Result<IngressTopology, BenchError> {
        let mut namespaces = Namespaces::default();
        let router = format!("{prefix}-u");
        namespaces.add(&router)?;
        ip_in(&router, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&router, &["link", "set", "br0", "up"])?;
        ip_in(
            &router,
            &[
                "addr",
                "add",
                &format!("{ROUTER_UNDERLAY}/24"),
                "dev",
                "br0",
            ],
        )?;
        sysctl_in(&router, "net.ipv4.ip_forward=1")?;
        let outside = build_outside(&mut namespaces, &router, &format!("{prefix}-x"))?;
        let mut nodes = Vec::new();
        for (i, tag) in ["a", "b"].into_iter().enumerate() {
            let ns = format!("{prefix}-n{}", i + 1);
            namespaces.add(&ns)?;
            plug_uplink(&router, &ns, i)?;
            let pod = add_pod(
                &mut namespaces,
                &ns,
                &format!("{prefix}-{tag}"),
                &format!("{short}{tag}"),
                POD_IPS[i],
                GATEWAYS[i],
            )?;
            let mtu = POD_MTU.to_string();
            ip_in(&pod.ns, &["link", "set", "eth0", "mtu", &mtu])?;
            ip_in(&ns, &["link", "set", &pod.host_if, "mtu", &mtu])?;
            nodes.push(Node {
                ns,
                underlay: UNDERLAY[i],
                pod_net: POD_NETS[i],
                gateway: GATEWAYS[i],
                pod,
            });
        }
        let nodes: [Node; 2] = nodes
            .try_into()
            .map_err(|_| BenchError::Failed("two nodes expected".into()))?;
        let router_end = Pod {
            ns: router.clone(),
            host_if: "xr".into(),
            ip: ROUTER_OUTSIDE,
            host_ifindex: 0,
            mac: ROUTER_MAC.into(),
        };
        Ok(IngressTopology {
            router,
            outside,
            router_end,
            nodes,
            _namespaces: namespaces,
        })
    }

    /// Where the UDP generator and the TCP clients run, where the sink and the server run, and
    /// where the generator aims, for `scenario` (`None`: the ceiling, client -> router).
    pub fn ends(&self, scenario: Option<Scenario>) -> Ends<'_> {
        let nodes = vec![
            self.router.as_str(),
            self.nodes[0].ns.as_str(),
            self.nodes[1].ns.as_str(),
        ];
        match scenario {
            None => Ends {
                src: &self.outside,
                dst: &self.router_end,
                aim: SocketAddrV4::new(ROUTER_OUTSIDE, SINK_PORT),
                sink_dev: "xr",
                nodes,
            },
            Some(Scenario::NodeportDsr | Scenario::NodeportSnat) => Ends {
                src: &self.outside,
                dst: &self.nodes[1].pod,
                aim: SocketAddrV4::new(UNDERLAY[0], NODE_PORT),
                sink_dev: "eth0",
                nodes,
            },
            Some(Scenario::Masquerade) => Ends {
                src: &self.nodes[0].pod,
                dst: &self.outside,
                aim: SocketAddrV4::new(CLIENT, SINK_PORT),
                sink_dev: "eth0",
                nodes,
            },
        }
    }

    /// Starts `target` for `scenario` (nothing for the ceiling).
    pub fn start(
        &self,
        target: IngressTarget,
        scenario: Option<Scenario>,
        args: &RunArgs,
        masquerade_ports: Option<&str>,
        dir: &Path,
    ) -> Result<Running, BenchError> {
        match (target, scenario) {
            (IngressTarget::Ceiling, _) | (_, None) => Ok(Running::Kernel),
            (IngressTarget::Iptables, Some(s)) => {
                self.enable_iptables(s)?;
                Ok(Running::Kernel)
            }
            (IngressTarget::Flagella, Some(s)) => {
                let mut launch = DataplaneLaunch::from_run(args)?;
                launch.masquerade_ports = masquerade_ports.map(str::to_string);
                Ok(Running::Flagella(self.start_flagella(s, &launch, dir)?))
            }
        }
    }

    /// The `iptables` target (see the module doc).
    pub fn enable_iptables(&self, scenario: Scenario) -> Result<(), BenchError> {
        for (me, node) in self.nodes.iter().enumerate() {
            let peer = &self.nodes[1 - me];
            route_pods(&node.ns, &[&node.pod], node.gateway)?;
            ip_in(
                &node.ns,
                &[
                    "route",
                    "add",
                    &format!("{}/24", peer.pod_net),
                    "via",
                    &peer.underlay.to_string(),
                ],
            )?;
            let rules = kube_proxy_rules(scenario, node.pod_net);
            load_iptables(&node.ns, &rules)?;
        }
        if scenario == Scenario::NodeportDsr {
            // DNAT without MASQUERADE: the replies must pass node 1 again to be un-DNATed.
            ip_in(
                &self.nodes[1].ns,
                &[
                    "route",
                    "add",
                    &format!("{CLIENT}/32"),
                    "via",
                    &self.nodes[0].underlay.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    /// The `flagella` target: a dataplane in each node, configured for `scenario`, with its
    /// next hops (the peer, the default gateway) resolved.
    pub fn start_flagella(
        &self,
        scenario: Scenario,
        launch: &DataplaneLaunch,
        dir: &Path,
    ) -> Result<Vec<Flagella>, BenchError> {
        let mode = if scenario == Scenario::NodeportSnat {
            "snat"
        } else {
            "dsr"
        };
        // Pod -> world never reaches node 2: a dataplane there would only spin on the
        // worker core the measured one uses.
        let on_path = if scenario == Scenario::Masquerade {
            1
        } else {
            2
        };
        let mut dataplanes = Vec::new();
        for (me, node) in self.nodes.iter().enumerate().take(on_path) {
            let sub = dir.join(format!("n{}", me + 1));
            std::fs::create_dir_all(&sub)
                .map_err(|e| BenchError::io(sub.display().to_string(), e))?;
            let interfaces = [
                "eth0=uplink".to_string(),
                format!("{}=pod", node.pod.host_if),
            ];
            let mut f = Flagella::launch(&node.ns, &interfaces, launch, &sub)?;
            configure_node(&mut f, me, node, &self.nodes[1 - me], mode)?;
            dataplanes.push(f);
        }
        for (me, f) in dataplanes.iter_mut().enumerate() {
            let peer = self.nodes[1 - me].underlay.to_string();
            wait_for(
                &format!(
                    "node {}'s dataplane to resolve its next hops (peer {peer}, default gateway {ROUTER_UNDERLAY})",
                    me + 1
                ),
                Duration::from_secs(20),
                || {
                    let reply = f.call(json!({"op": "dump", "table": "next_hops"}))?;
                    let hops = &reply["next_hops"];
                    let has_peer = hops["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|h| h["underlay"] == peer.as_str()));
                    Ok(has_peer && hops["default_v4"].is_string())
                },
            )?;
        }
        Ok(dataplanes)
    }
}

/// The client's namespace `ns` behind the router's `xr`.
fn build_outside(namespaces: &mut Namespaces, router: &str, ns: &str) -> Result<Pod, BenchError> {
    namespaces.add(ns)?;
    ip_in(
        router,
        &[
            "link", "add", "xr", "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(router, &["link", "set", "xr", "address", ROUTER_MAC])?;
    ip_in(
        router,
        &["addr", "add", &format!("{ROUTER_OUTSIDE}/24"), "dev", "xr"],
    )?;
    ip_in(router, &["link", "set", "xr", "up"])?;
    ip_in(ns, &["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &ROUTER_OUTSIDE.to_string(),
        ],
    )?;
    // As the pods: the kernel computes its checksums (AF_XDP carries no "checksum partial").
    exec_in(ns, "ethtool", &["-K", "eth0", "tx", "off"])?;
    let json = ip_in(ns, &["-j", "link", "show", "dev", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| BenchError::Failed(format!("`ip -j link show eth0` in {ns}: {e}")))?;
    Ok(Pod {
        ns: ns.to_string(),
        host_if: "xr".into(),
        ip: CLIENT,
        host_ifindex: v[0]["ifindex"].as_u64().unwrap_or(0),
        mac: v[0]["address"].as_str().unwrap_or_default().to_string(),
    })
}

/// Node `i`'s uplink `eth0`, a veth from the router's bridge, with its underlay address and
/// the router as its default gateway.
fn plug_uplink(router: &str, ns: &str, i: usize) -> Result<(), BenchError> {
    let port = format!("u{}", i + 1);
    ip_in(
        router,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(router, &["link", "set", &port, "master", "br0"])?;
    ip_in(router, &["link", "set", &port, "up"])?;
    ip_in(
        ns,
        &["addr", "add", &format!("{}/24", UNDERLAY[i]), "dev", "eth0"],
    )?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &ROUTER_UNDERLAY.to_string(),
        ],
    )?;
    Ok(())
}

/// Node `me`'s dataplane: its own facts (native routing), the peer node, its pod's endpoint,
/// both pods in the ipcache, and the service's frontends on this node in `mode`.
fn configure_node(
    f: &mut Flagella,
    me: usize,
    node: &Node,
    peer: &Node,
    mode: &str,
) -> Result<(), BenchError> {
    set_local_node(f, me, node, "native")?;
    f.call(json!({"op": "node.upsert", "name": peer.ns,
        "underlay": peer.underlay.to_string(),
        "pod_cidrs": [format!("{}/24", peer.pod_net)], "encap": "native"}))?;
    let pod = &node.pod;
    f.call(
        json!({"op": "endpoint.upsert", "id": 1, "ifindex": pod.host_ifindex,
        "mac": pod.mac, "ipv4": pod.ip.to_string(), "identity": IDENTITIES[me]}),
    )?;
    f.call(
        json!({"op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip),
        "identity": IDENTITIES[me]}),
    )?;
    f.call(
        json!({"op": "ipcache.upsert", "prefix": format!("{}/32", peer.pod.ip),
        "identity": IDENTITIES[1 - me], "tunnel_endpoint": peer.underlay.to_string()}),
    )?;
    let backend = json!([{"addr": POD_IPS[1].to_string(), "port": SINK_PORT}]);
    for proto in ["udp", "tcp"] {
        for (addr, port, kind) in [
            (CLUSTER_IP, CLUSTER_PORT, "cluster_ip"),
            (node.underlay, NODE_PORT, "node_port"),
        ] {
            f.call(json!({"op": "service.upsert",
                "frontend": {"addr": addr.to_string(), "port": port, "proto": proto},
                "backends": backend, "mode": mode, "kind": kind}))?;
        }
    }
    Ok(())
}

/// kube-proxy's iptables-mode `nat` table for the benchmark's service on a node whose pod CIDR
/// is `pod_net`/24 (see the module doc); `iptables-restore` input.
pub fn kube_proxy_rules(scenario: Scenario, pod_net: Ipv4Addr) -> String {
    let mut chains = vec![
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ];
    let mut rules = vec![
        "-A PREROUTING -j KUBE-SERVICES".to_string(),
        "-A OUTPUT -j KUBE-SERVICES".to_string(),
        "-A POSTROUTING -j KUBE-POSTROUTING".to_string(),
        format!("-A POSTROUTING -s {pod_net}/24 ! -d {CLUSTER_NET} -o eth0 -j MASQUERADE"),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".to_string(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_string(),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".to_string(),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_string(),
    ];
    let mut nodeports = Vec::new();
    for (proto, svc, ext, sep) in [
        (
            "udp",
            "KUBE-SVC-BENCHUDP",
            "KUBE-EXT-BENCHUDP",
            "KUBE-SEP-BENCHUDP",
        ),
        (
            "tcp",
            "KUBE-SVC-BENCHTCP",
            "KUBE-EXT-BENCHTCP",
            "KUBE-SEP-BENCHTCP",
        ),
    ] {
        chains.extend([svc, ext, sep]);
        rules.push(format!(
            "-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p {proto} --dport {CLUSTER_PORT} -j {svc}"
        ));
        nodeports.push(format!(
            "-A KUBE-NODEPORTS -p {proto} --dport {NODE_PORT} -j {ext}"
        ));
        if scenario == Scenario::NodeportSnat {
            rules.push(format!("-A {ext} -j KUBE-MARK-MASQ"));
        }
        rules.push(format!("-A {ext} -j {svc}"));
        rules.push(format!("-A {svc} -j {sep}"));
        rules.push(format!(
            "-A {sep} -p {proto} -j DNAT --to-destination {}:{SINK_PORT}",
            POD_IPS[1]
        ));
    }
    // kube-proxy's last KUBE-SERVICES rule: node ports on any local address.
    rules.push("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_string());
    rules.extend(nodeports);
    let mut text = String::from("*nat\n");
    for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        text.push_str(&format!(":{builtin} ACCEPT [0:0]\n"));
    }
    for chain in chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules {
        text.push_str(&rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// `iptables-restore` of `rules` inside `ns`.
fn load_iptables(ns: &str, rules: &str) -> Result<(), BenchError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if run("sh", &["-c", "command -v iptables-restore"]).is_err() {
        return Err(BenchError::Unavailable(
            "iptables-restore is missing: scripts/install-deps.sh iptables".into(),
        ));
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::io("running iptables-restore", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| BenchError::io("writing to iptables-restore", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::io("waiting for iptables-restore", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command: format!("ip netns exec {ns} iptables-restore"),
            detail: format!(
                "{} (the rules were:\n{rules})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_marks_for_masquerade_and_dsr_does_not() {
        let snat = kube_proxy_rules(Scenario::NodeportSnat, POD_NETS[0]);
        let dsr = kube_proxy_rules(Scenario::NodeportDsr, POD_NETS[0]);
        assert!(
            snat.contains("-A KUBE-EXT-BENCHTCP -j KUBE-MARK-MASQ"),
            "{snat}"
        );
        assert!(!dsr.contains("-j KUBE-MARK-MASQ\n-A KUBE-EXT"), "{dsr}");
        assert!(
            !dsr.contains("-A KUBE-EXT-BENCHUDP -j KUBE-MARK-MASQ"),
            "{dsr}"
        );
        for text in [&snat, &dsr] {
            assert!(
                text.contains("-j DNAT --to-destination 10.82.0.12:9000"),
                "{text}"
            );
            assert!(
                text.contains("-A KUBE-NODEPORTS -p udp --dport 30080"),
                "{text}"
            );
            assert!(
                text.contains(
                    "-A POSTROUTING -s 10.81.0.0/24 ! -d 10.80.0.0/14 -o eth0 -j MASQUERADE"
                ),
                "{text}"
            );
            assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        }
    }

    #[test]
    fn every_jumped_to_chain_is_declared() {
        let text = kube_proxy_rules(Scenario::NodeportSnat, POD_NETS[1]);
        for word in text.split_whitespace().filter(|w| w.starts_with("KUBE-")) {
            assert!(
                text.contains(&format!(":{word} - [0:0]")),
                "{word} undeclared:\n{text}"
            );
        }
    }
}
