//! The benchmark topology: a node namespace and two pod namespaces joined to it by veth pairs.
//!
//! ```text
//!  <prefix>-a  eth0 10.81.0.11/32 <-veth-> <host_a> ┐
//!                                                    ├ <prefix> (node): the target forwards
//!  <prefix>-b  eth0 10.81.0.12/32 <-veth-> <host_b> ┘   between host_a and host_b
//!  each pod: default via 10.81.0.1 onlink, gateway MAC 02:81:00:00:00:01 (static)
//! ```
//!
//! Every name carries the run's unique prefix (`fbn-<pid>-<run>`; interfaces `fbn<pid>r<run>a`),
//! addresses are inside 10.81.0.0/24 in namespaces this module made, and dropping the
//! [`Topology`] deletes every namespace it created (which deletes the veth pairs), pass or
//! fail. The pods compute their own checksums (`ethtool -K eth0 tx off`, see `add_pod`). The
//! pods' gateway neighbour is static so no ARP happens during a measurement and all
//! targets see exactly the same frames.
//!
//! The pieces ([`Namespaces`], [`add_pod`], [`route_pods`]) also build the two-node topology of
//! `xnode` (`crate::xnode`).

use std::net::Ipv4Addr;
use std::process::Command;

use crate::BenchError;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
pub const ROUTER_MAC: &str = "02:81:00:00:00:01";
pub const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 11);
pub const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 12);
pub const SINK_PORT: u16 = 9000;

/// Runs `program args`, returning stdout; a failure carries stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BenchError::io(format!("running `{program}` (is it installed?)"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BenchError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip -n ns args...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, BenchError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec ns program args...`.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String, BenchError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// One pod: its namespace and the node-side end of its veth.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub host_if: String,
    pub ip: Ipv4Addr,
    /// `host_if`'s index in the node namespace.
    pub host_ifindex: u64,
    /// The pod's `eth0` MAC.
    pub mac: String,
}

/// Network namespaces this run created, deleted on drop in reverse order of creation (which
/// deletes the veth pairs in them), pass or fail.
#[derive(Debug, Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// `ip netns add name`; the namespace is deleted when `self` is dropped.
    pub fn add(&mut self, name: &str) -> Result<(), BenchError> {
        run("ip", &["netns", "add", name])?;
        self.0.push(name.to_string());
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Takes namespace `name`, created elsewhere (`ip netns add`), to delete it with the others.
    pub fn adopt(&mut self, name: &str) {
        self.0.push(name.to_string());
    }

    /// The namespaces created so far, in order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            if run("ip", &["netns", "del", ns]).is_err() {
                eprintln!("WARNING: could not delete namespace {ns}: run `ip netns del {ns}`");
            }
        }
    }
}

/// The namespaces of one run, deleted on drop.
#[derive(Debug)]
pub struct Topology {
    pub prefix: String,
    pub node: String,
    pub a: Pod,
    pub b: Pod,
    namespaces: Namespaces,
}

/// `(ifindex, MAC)` of `dev` in `ns`.
fn link_facts(ns: &str, dev: &str) -> Result<(u64, String), BenchError> {
    let json = ip_in(ns, &["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| BenchError::Failed(format!("`ip -j link show {dev}`: {e}")))?;
    let link = &v[0];
    match (link["ifindex"].as_u64(), link["address"].as_str()) {
        (Some(i), Some(mac)) => Ok((i, mac.to_string())),
        _ => Err(BenchError::Failed(format!(
            "`ip -j link show {dev}` in {ns} has no ifindex/address"
        ))),
    }
}

/// Packets received by `dev` in `ns` (from sysfs, read inside the namespace).
pub fn rx_packets(ns: &str, dev: &str) -> Result<u64, BenchError> {
    let text = exec_in(
        ns,
        "cat",
        &[&format!("/sys/class/net/{dev}/statistics/rx_packets")],
    )?;
    text.trim()
        .parse()
        .map_err(|e| BenchError::Failed(format!("rx_packets of {dev} in {ns}: {e}")))
}

impl Topology {
    /// Builds the node and the two pods under `prefix` (`fbn-<pid>-<run>`), with `short` the
    /// interface-name prefix (`fbn<pid>r<run>`, at most 14 characters).
    pub fn build(prefix: &str, short: &str) -> Result<Topology, BenchError> {
        let mut namespaces = Namespaces::default();
        namespaces.add(prefix)?;
        let a = add_pod(
            &mut namespaces,
            prefix,
            &format!("{prefix}-a"),
            &format!("{short}a"),
            POD_A_IP,
            GATEWAY,
        )?;
        let b = add_pod(
            &mut namespaces,
            prefix,
            &format!("{prefix}-b"),
            &format!("{short}b"),
            POD_B_IP,
            GATEWAY,
        )?;
        Ok(Topology {
            prefix: prefix.to_string(),
            node: prefix.to_string(),
            a,
            b,
            namespaces,
        })
    }

    /// The namespaces of this topology (node first).
    pub fn namespaces(&self) -> &[String] {
        self.namespaces.names()
    }

    /// Makes the node namespace an IPv4 router between the pods (the `kernel` target).
    pub fn enable_kernel_forwarding(&self) -> Result<(), BenchError> {
        route_pods(&self.node, &[&self.a, &self.b], GATEWAY)
    }
}

/// A pod namespace `ns` joined to namespace `node` by a veth pair (`host_if` in the node,
/// `eth0` in the pod) with `ip`/32 and a default route via `gateway` (onlink, static
/// neighbour [`ROUTER_MAC`]); the pod computes its own checksums.
pub fn add_pod(
    namespaces: &mut Namespaces,
    node: &str,
    ns: &str,
    host_if: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<Pod, BenchError> {
    namespaces.add(ns)?;
    ip_in(
        node,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip_in(node, &["link", "set", host_if, "up"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    let gw = gateway.to_string();
    ip_in(
        ns,
        &[
            "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
        ],
    )?;
    ip_in(
        ns,
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            ROUTER_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    // Checksums in software in the pods: OVS's AF_XDP ports forward a veth's
    // checksum-partial frames unfixed and the receiving pod drops them; the same setting
    // for every target keeps the generator's cost equal.
    exec_in(ns, "ethtool", &["-K", "eth0", "tx", "off"])?;
    let (host_ifindex, _) = link_facts(node, host_if)?;
    let (_, mac) = link_facts(ns, "eth0")?;
    Ok(Pod {
        ns: ns.to_string(),
        host_if: host_if.to_string(),
        ip,
        host_ifindex,
        mac,
    })
}

/// Makes namespace `node` an IPv4 router for `pods` (the kernel targets): forwarding on,
/// rp_filter off, each pod's host veth takes the gateway's MAC and address, pod routes and
/// neighbours are static.
pub fn route_pods(node: &str, pods: &[&Pod], gateway: Ipv4Addr) -> Result<(), BenchError> {
    exec_in(node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    for key in ["all", "default"] {
        exec_in(
            node,
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
        )?;
    }
    for pod in pods {
        let dev = pod.host_if.as_str();
        ip_in(node, &["link", "set", dev, "address", ROUTER_MAC])?;
        ip_in(node, &["addr", "add", &format!("{gateway}/32"), "dev", dev])?;
        let ip = pod.ip.to_string();
        ip_in(node, &["route", "add", &format!("{ip}/32"), "dev", dev])?;
        ip_in(
            node,
            &[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &pod.mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(())
}
