//! `xnode`: pod -> pod across two nodes, through flagella-dataplane in each node (VXLAN,
//! Geneve, native routing) and through the kernel's own VXLAN device, measured with the
//! generator, sink and window of `forward` ([`crate::forward::measure`]).
//!
//! ```text
//!  <p>-a  eth0 10.81.0.11/32 <-veth-> <s>a ┐                       ┌ <s>b <-veth-> eth0 10.82.0.12/32  <p>-b
//!                                           <p>-n1 (node 1)   <p>-n2 (node 2)
//!                                     eth0 10.80.0.1/24 <-veth-> eth0 10.80.0.2/24   (the underlay)
//!  pods: default via their node's gateway (10.81.0.1 / 10.82.0.1) onlink, gateway MAC
//!        02:81:00:00:00:01 (static), MTU 1400, checksums in software (as for `forward`)
//! ```
//!
//! `<p>` is `fxn-<pid>-<run>`, `<s>` `fxn<pid>r<run>`; every address is inside namespaces this
//! module made, and dropping the [`XnodeTopology`] deletes them (and with them the veths).
//!
//! Targets:
//! - `flagella-vxlan|geneve|native`: `flagella-dataplane --interface eth0=uplink --interface
//!   <s>a=pod` in node 1 (node 2 likewise), configured over its control socket: `local_node.set`
//!   (the dataplane's own uplink facts kept, plus the name, `underlay_ipv4`, the pods' gateway
//!   and router MAC, the encapsulation), the local pod's endpoint, ipcache entries for both pods
//!   (the remote one with `tunnel_endpoint` = the peer's underlay), `node.upsert` of the peer, an
//!   egress policy on A (node 1) and an ingress policy on B (node 2) admitting exactly the
//!   benchmark's UDP (so both lookups run, on the node each belongs to, as in `forward`). Next
//!   hops are the daemons' own, from the kernel: the run waits until each has its peer.
//! - `kernel-vxlan`: each node routes (IPv4 forwarding, rp_filter off, the pod's host veth is its
//!   gateway) and carries the peer's pod CIDR through a VXLAN device (`vxlan0`, VNI 42, port
//!   4789, `local`/`remote` the two underlay addresses, no learning) as flannel lays it out: a
//!   route `10.82.0.0/24 via 10.82.0.0 dev vxlan0 onlink` and a static neighbour giving that next
//!   hop the peer's `vxlan0` MAC. No policy, no conntrack (netfilter is not involved).
//!
//! [`report`] runs every target once per round (kernel-vxlan first), over each flow count,
//! and prints a table per round with the ratios to kernel-vxlan of the same round, then the
//! ratios of all rounds, the machine and the exact command.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{RunArgs, XnodeArgs, XnodeTarget, MAX_FRAME};
use crate::forward::{measure, prepare, Ends, Measurement, Running};
use crate::report::{find, ratio, render_table, Row};
use crate::targets::{wait_for, DataplaneLaunch, Flagella};
use crate::topo::{add_pod, ip_in, route_pods, Namespaces, Pod, ROUTER_MAC, SINK_PORT};
use crate::BenchError;

/// The nodes' underlay addresses (node 1, node 2), on a /24.
pub const UNDERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 80, 0, 1), Ipv4Addr::new(10, 80, 0, 2)];
/// The nodes' pod CIDRs (/24): the network address, also the kernel's VXLAN next hop.
pub const POD_NETS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 81, 0, 0), Ipv4Addr::new(10, 82, 0, 0)];
/// The pods' gateways, the first host of each pod CIDR.
pub const GATEWAYS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 81, 0, 1), Ipv4Addr::new(10, 82, 0, 1)];
/// Pod A (node 1) and pod B (node 2).
pub const POD_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 81, 0, 11), Ipv4Addr::new(10, 82, 0, 12)];
/// The pods' MTU: room for VXLAN (50 bytes) and Geneve (50 + options) on a 1500-byte underlay.
pub const POD_MTU: usize = 1400;
const _: () = assert!(POD_MTU + 14 <= MAX_FRAME);
/// The kernel's VXLAN network identifier.
pub const VNI: u32 = 42;
/// The MACs of the kernel's `vxlan0` devices (node 1, node 2).
const VXLAN_MACS: [&str; 2] = ["02:80:00:00:00:01", "02:80:00:00:00:02"];
/// The security identities of pods A and B, the same on both nodes.
pub(crate) const IDENTITIES: [u32; 2] = [1001, 1002];

/// One node: its namespace, underlay address, pod and that pod's gateway.
#[derive(Debug)]
pub struct Node {
    pub ns: String,
    pub underlay: Ipv4Addr,
    pub pod_net: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub pod: Pod,
}

/// Two nodes joined by an underlay veth, each with one pod; deleted on drop.
#[derive(Debug)]
pub struct XnodeTopology {
    pub nodes: [Node; 2],
    _namespaces: Namespaces,
}

impl XnodeTopology {
    /// Builds both nodes and pods under `prefix` (`fxn-<pid>-<run>`), with `short` the
    /// interface-name prefix (`fxn<pid>r<run>`, at most 14 characters).
    pub fn build(prefix: &str, short: &str) -> Result<XnodeTopology, BenchError> {
        let mut namespaces = Namespaces::default();
        let node_ns = [format!("{prefix}-n1"), format!("{prefix}-n2")];
        for ns in &node_ns {
            namespaces.add(ns)?;
        }
        ip_in(
            &node_ns[0],
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node_ns[1],
            ],
        )?;
        let mut pods = Vec::new();
        for (i, (ns, tag)) in node_ns.iter().zip(["a", "b"]).enumerate() {
            ip_in(
                ns,
                &["addr", "add", &format!("{}/24", UNDERLAY[i]), "dev", "eth0"],
            )?;
            ip_in(ns, &["link", "set", "eth0", "up"])?;
            let pod = add_pod(
                &mut namespaces,
                ns,
                &format!("{prefix}-{tag}"),
                &format!("{short}{tag}"),
                POD_IPS[i],
                GATEWAYS[i],
            )?;
            let mtu = POD_MTU.to_string();
            ip_in(&pod.ns, &["link", "set", "eth0", "mtu", &mtu])?;
            ip_in(ns, &["link", "set", &pod.host_if, "mtu", &mtu])?;
            pods.push(pod);
        }
        let mut pods = pods.into_iter();
        let mut node = |i: usize| -> Result<Node, BenchError> {
            Ok(Node {
                ns: node_ns[i].clone(),
                underlay: UNDERLAY[i],
                pod_net: POD_NETS[i],
                gateway: GATEWAYS[i],
                pod: pods
                    .next()
                    .ok_or_else(|| BenchError::Failed("a pod is missing".into()))?,
            })
        };
        let nodes = [node(0)?, node(1)?];
        Ok(XnodeTopology {
            nodes,
            _namespaces: namespaces,
        })
    }

    /// The measured path: pod A (node 1) -> pod B (node 2).
    pub fn ends(&self) -> Ends<'_> {
        Ends::direct(
            &self.nodes[0].pod,
            &self.nodes[1].pod,
            self.nodes.iter().map(|n| n.ns.as_str()).collect(),
        )
    }

    /// The `kernel-vxlan` target (see the module doc).
    pub fn enable_kernel_vxlan(&self) -> Result<(), BenchError> {
        for (me, node) in self.nodes.iter().enumerate() {
            let peer = &self.nodes[1 - me];
            let ns = node.ns.as_str();
            route_pods(ns, &[&node.pod], node.gateway)?;
            ip_in(
                ns,
                &[
                    "link",
                    "add",
                    "vxlan0",
                    "type",
                    "vxlan",
                    "id",
                    &VNI.to_string(),
                    "dstport",
                    "4789",
                    "local",
                    &node.underlay.to_string(),
                    "remote",
                    &peer.underlay.to_string(),
                    "dev",
                    "eth0",
                    "nolearning",
                ],
            )?;
            ip_in(ns, &["link", "set", "vxlan0", "address", VXLAN_MACS[me]])?;
            ip_in(ns, &["link", "set", "vxlan0", "up"])?;
            let next_hop = peer.pod_net.to_string();
            ip_in(
                ns,
                &[
                    "route",
                    "add",
                    &format!("{next_hop}/24"),
                    "via",
                    &next_hop,
                    "dev",
                    "vxlan0",
                    "onlink",
                ],
            )?;
            ip_in(
                ns,
                &[
                    "neigh",
                    "replace",
                    &next_hop,
                    "lladdr",
                    VXLAN_MACS[1 - me],
                    "dev",
                    "vxlan0",
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(())
    }

    /// The `flagella-*` targets: a dataplane in each node (node 2's worker on `node2_core`),
    /// configured, with its next hop to the peer resolved. `encap`: `vxlan`, `geneve`, `native`.
    pub fn start_flagella(
        &self,
        encap: &str,
        launch: &DataplaneLaunch,
        node2_core: usize,
        dir: &Path,
    ) -> Result<Vec<Flagella>, BenchError> {
        let mut dataplanes = Vec::new();
        for (me, node) in self.nodes.iter().enumerate() {
            let sub = dir.join(format!("n{}", me + 1));
            std::fs::create_dir_all(&sub)
                .map_err(|e| BenchError::io(sub.display().to_string(), e))?;
            let mut launch = launch.clone();
            if me == 1 {
                launch.core = node2_core;
            }
            let interfaces = [
                "eth0=uplink".to_string(),
                format!("{}=pod", node.pod.host_if),
            ];
            let mut f = Flagella::launch(&node.ns, &interfaces, &launch, &sub)?;
            configure_node(&mut f, me, node, &self.nodes[1 - me], encap)?;
            dataplanes.push(f);
        }
        for (me, f) in dataplanes.iter_mut().enumerate() {
            let peer = self.nodes[1 - me].underlay.to_string();
            wait_for(
                &format!(
                    "node {}'s dataplane to resolve its next hop to {peer}",
                    me + 1
                ),
                Duration::from_secs(20),
                || {
                    let reply = f.call(json!({"op": "dump", "table": "next_hops"}))?;
                    Ok(reply["next_hops"]["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|h| h["underlay"] == peer.as_str())))
                },
            )?;
        }
        Ok(dataplanes)
    }

    /// Starts `target`; what the measurement samples.
    pub fn start(
        &self,
        target: XnodeTarget,
        args: &RunArgs,
        node2_core: usize,
        dir: &Path,
    ) -> Result<Running, BenchError> {
        let encap = match target {
            XnodeTarget::KernelVxlan => {
                self.enable_kernel_vxlan()?;
                return Ok(Running::Kernel);
            }
            XnodeTarget::FlagellaVxlan => "vxlan",
            XnodeTarget::FlagellaGeneve => "geneve",
            XnodeTarget::FlagellaNative => "native",
        };
        let launch = DataplaneLaunch::from_run(args)?;
        Ok(Running::Flagella(
            self.start_flagella(encap, &launch, node2_core, dir)?,
        ))
    }
}

/// Node `me`'s own facts: the record the daemon read from its uplink at start (`local_node.set`
/// replaces the whole record, so they are kept), plus the node's name, underlay address, the
/// pods' gateway and router MAC, and the encapsulation (`vxlan`, `geneve`, `native`).
pub(crate) fn set_local_node(
    f: &mut Flagella,
    me: usize,
    node: &Node,
    encap: &str,
) -> Result<(), BenchError> {
    let current = f.call(json!({"op": "dump", "table": "local_node"}))?;
    let Value::Object(mut local) = current["local_node"].clone() else {
        return Err(BenchError::Failed(format!(
            "node {}'s dataplane: no local_node in {current}",
            me + 1
        )));
    };
    for (key, value) in [
        ("op", json!("local_node.set")),
        ("name", json!(node.ns)),
        ("underlay_ipv4", json!(node.underlay.to_string())),
        ("router_mac", json!(ROUTER_MAC)),
        ("gateway_ipv4", json!(node.gateway.to_string())),
        ("default_encap", json!(encap)),
    ] {
        local.insert(key.into(), value);
    }
    f.call(Value::Object(local))?;
    Ok(())
}

/// Node `me`'s dataplane (see the module doc): this node's facts, its pod, both pods in the
/// ipcache, the peer node, and the policy of its pod (egress on A, ingress on B).
fn configure_node(
    f: &mut Flagella,
    me: usize,
    node: &Node,
    peer: &Node,
    encap: &str,
) -> Result<(), BenchError> {
    set_local_node(f, me, node, encap)?;
    f.call(json!({"op": "node.upsert", "name": peer.ns,
        "underlay": peer.underlay.to_string(),
        "pod_cidrs": [format!("{}/24", peer.pod_net)], "encap": encap}))?;
    let (id, pod, peer_id, peer_pod) = (IDENTITIES[me], &node.pod, IDENTITIES[1 - me], &peer.pod);
    f.call(
        json!({"op": "endpoint.upsert", "id": 1, "ifindex": pod.host_ifindex,
        "mac": pod.mac, "ipv4": pod.ip.to_string(), "identity": id}),
    )?;
    f.call(json!({"op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip), "identity": id}))?;
    f.call(
        json!({"op": "ipcache.upsert", "prefix": format!("{}/32", peer_pod.ip),
        "identity": peer_id, "tunnel_endpoint": peer.underlay.to_string()}),
    )?;
    let direction = if me == 0 { "egress" } else { "ingress" };
    f.call(
        json!({"op": "policy.update", "endpoint": 1, "direction": direction,
        "enforced": true,
        "add": [{"identity": peer_id, "proto": "udp", "port": SINK_PORT, "action": "allow"}]}),
    )?;
    Ok(())
}

/// One measurement of `target` over `flows` flows; `run_index` makes names unique within a
/// report. Everything it made is removed before it returns, pass or fail.
pub fn xnode(
    target: XnodeTarget,
    flows: u32,
    args: &RunArgs,
    node2_core: usize,
    run_index: u32,
) -> Result<Measurement, BenchError> {
    if args.size > POD_MTU + 14 {
        return Err(BenchError::Failed(format!(
            "--size {}: the pods' MTU is {POD_MTU}, so frames of at most {} bytes",
            args.size,
            POD_MTU + 14
        )));
    }
    let names = prepare("xnode", "fxn", args, run_index)?;
    let topo = XnodeTopology::build(&names.prefix, &names.short)?;
    let mut running = topo.start(target, args, node2_core, &names.dir.0)?;
    let result = measure(&topo.ends(), &mut running, flows, args);
    drop(running);
    drop(topo);
    result
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Every target's sink Mpps over kernel-vxlan's, per round (`rounds[r]` holds round r's
/// rows): one line per (flows, flagella target) with each round's ratio, the median, and in
/// how many rounds it was at least 1 (the issue's target: at least the kernel's VXLAN).
pub fn summarize(rounds: &[Vec<Row>], targets: &[XnodeTarget], flow_counts: &[u32]) -> String {
    let baseline = XnodeTarget::KernelVxlan.name();
    let mut out = String::new();
    for &flows in flow_counts {
        for t in targets.iter().filter(|t| **t != XnodeTarget::KernelVxlan) {
            let ratios: Vec<Option<f64>> = rounds
                .iter()
                .map(|rows| {
                    let x = find(rows, t.name(), flows)?;
                    let k = find(rows, baseline, flows)?;
                    ratio(x.sink_pps, k.sink_pps)
                })
                .collect();
            let measured: Vec<f64> = ratios.iter().flatten().copied().collect();
            let cells: Vec<String> = ratios
                .iter()
                .map(|r| r.map_or_else(|| "-".into(), |r| format!("{r:.2}")))
                .collect();
            let _ = write!(
                out,
                "- {flows} flows, {} / {baseline}: {} (per round)",
                t.name(),
                cells.join(", ")
            );
            match median(&measured) {
                Some(m) => {
                    let at_least = measured.iter().filter(|r| **r >= 1.0).count();
                    let _ = writeln!(
                        out,
                        "; median {m:.2}; >= 1 in {at_least} of {} rounds",
                        measured.len()
                    );
                }
                None => {
                    let _ = writeln!(out, "; no round measured both");
                }
            }
        }
    }
    out
}

/// `xnode`: every target (kernel-vxlan first) over every flow count, `--rounds` times; one
/// table per round, the ratios, the machine and the command.
pub fn report(args: &XnodeArgs) -> Result<String, BenchError> {
    let mut targets = vec![XnodeTarget::KernelVxlan];
    targets.extend(
        args.targets
            .iter()
            .filter(|t| **t != XnodeTarget::KernelVxlan),
    );
    let node2_core = args.node2_worker_core.unwrap_or(args.run.worker_core);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let start = crate::machine::describe();
    let mut out = String::new();
    let mut rounds = Vec::new();
    let mut index = 0;
    for round in 1..=args.rounds {
        let mut rows = Vec::new();
        for &flows in &args.flows {
            for &target in &targets {
                index += 1;
                eprintln!(
                    "== round {round}: {} over {flows} flows ({} s)",
                    target.name(),
                    args.run.duration
                );
                let result = xnode(target, flows, &args.run, node2_core, index);
                rows.push(Row::measured(target.name(), flows, result)?);
            }
        }
        if args.rounds > 1 {
            let _ = writeln!(out, "\nRound {round}:\n");
        }
        out.push_str(&render_table(
            &rows,
            XnodeTarget::KernelVxlan.name(),
            args.markdown,
        ));
        rounds.push(rows);
    }
    let _ = writeln!(
        out,
        "\nSink Mpps over kernel-vxlan's in the same round (target: at least 1):"
    );
    out.push_str(&summarize(&rounds, &targets, &args.flows));
    let _ = writeln!(
        out,
        "\nstart: {start}\nend:   {}\ncommand: {command}",
        crate::machine::describe()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: XnodeTarget, mpps: f64) -> Row {
        Row {
            target: target.name(),
            flows: 64,
            result: Ok(Measurement {
                flows: 64,
                sink_pps: mpps * 1e6,
                ..Measurement::default()
            }),
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn summary_has_per_round_ratios_and_median() {
        use XnodeTarget::*;
        let rounds = vec![
            vec![row(KernelVxlan, 0.5), row(FlagellaVxlan, 0.6)],
            vec![row(KernelVxlan, 0.5), row(FlagellaVxlan, 0.4)],
            vec![
                row(KernelVxlan, 0.4),
                Row {
                    target: FlagellaVxlan.name(),
                    flows: 64,
                    result: Err("failed".into()),
                },
            ],
        ];
        let text = summarize(
            &rounds,
            &[KernelVxlan, FlagellaVxlan, FlagellaNative],
            &[64],
        );
        assert!(
            text.contains(
                "64 flows, flagella-vxlan / kernel-vxlan: 1.20, 0.80, - (per round); median 1.00; >= 1 in 1 of 2 rounds"
            ),
            "{text}"
        );
        assert!(
            text.contains("flagella-native / kernel-vxlan: -, -, - (per round); no round"),
            "{text}"
        );
        assert!(!text.contains("kernel-vxlan / kernel-vxlan"), "{text}");
    }

    #[test]
    fn addresses_are_consistent() {
        for i in 0..2 {
            let net = u32::from(POD_NETS[i]);
            assert_eq!(u32::from(GATEWAYS[i]), net + 1);
            assert_eq!(u32::from(POD_IPS[i]) & 0xffff_ff00, net);
            assert_eq!(u32::from(UNDERLAY[i]) & 0xffff_ff00, 0x0a50_0000);
        }
    }
}
