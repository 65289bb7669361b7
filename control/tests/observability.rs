//! Observability end to end: a real etcd, the real `flagella-dataplane` in a node namespace with
//! two pods, the real `flagella-control` serving its `/metrics`, and a real Prometheus server
//! (Debian's package) scraping the dataplane.
//!
//! ```text
//!  fobs-<pid>-a  eth0 10.79.0.11/32 <-veth-> fobs<pid>a ┐ fobs-<pid> ("node"): flagella-dataplane
//!  fobs-<pid>-b  eth0 10.79.0.12/32 <-veth-> fobs<pid>b ┘   (/metrics 127.0.0.1:9962) and
//!                                                             prometheus (127.0.0.1:19090)
//!  root namespace: etcd, flagella-control (/metrics on a free loopback port)
//! ```
//!
//! 1. A -> B connects (no policy): Prometheus's `flagella_tx_packets_total` (frames forwarded)
//!    is read;
//! 2. a NetworkPolicy that admits nobody into B: A -> B is refused; Prometheus's query API then
//!    returns a non-zero `flagella_drops_total{reason="policy_denied_ingress"}` and a larger
//!    `flagella_tx_packets_total`, conntrack's inserts, and the XDP program's and the sockets'
//!    kernel counters;
//! 3. `promtool check metrics` passes on both endpoints' output; the agent's metrics show the
//!    model (2 endpoints, 1 policy), etcd events, and non-empty histograms of control requests,
//!    etcd -> dataplane and identity allocation;
//! 4. every metric `scripts/grafana/flagella-dashboard.json` names is exported by one of the
//!    two endpoints, and the real Prometheus accepts every one of its queries.
//!
//! Skips, with the reason, when not root or when etcd, `ip netns`, AF_XDP, the dataplane
//! binary or Prometheus are missing. Stops only the processes it started (by PID, on drop too)
//! and deletes its namespaces and files, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::net::{
    ip_in, link_facts, preflight, spawn_agent_with_metrics, wait_for_within, NetNsGuard, Proc,
};
use common::prometheus::{
    dashboard_queries, families, http_get, http_get_in, metric_names, promtool_check, Prometheus,
};
use common::traffic::{dataplane_request, echo, tcp_echo, tcp_server};
use common::Etcd;
use control::store::Store;
use serde_json::{json, Value};

const FLAGELLA: &str = env!("CARGO_BIN_EXE_flagella");
const ROOT: &str = "/flagella/v1/";
const POD_CIDR: &str = "10.79.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const PORT: u16 = 7979;
/// Generous: a deadline for things that happen within a second or two (no speed is asserted).
const CONVERGE: Duration = Duration::from_secs(30);
const DATAPLANE_METRICS: &str = "127.0.0.1:9962";
const PROMETHEUS_ADDRESS: &str = "127.0.0.1:19090";

struct Pod {
    name: &'static str,
    netns: String,
    host_if: String,
    ip: Ipv4Addr,
    ifindex: u64,
    mac: String,
}

/// Everything the test started, dropped in field order.
struct Harness {
    control: Proc,
    dataplane: Proc,
    _netns: NetNsGuard,
    _etcd: Etcd,
    dir: PathBuf,
    node: String,
    pods: Vec<Pod>,
    socket: PathBuf,
    control_metrics: SocketAddr,
    etcd_url: String,
}

impl Drop for Harness {
    fn drop(&mut self) {
        eprintln!(
            "---- flagella-control log ----\n{}\n---- flagella-dataplane log ----\n{}",
            self.control.log_text(),
            self.dataplane.log_text()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn build_pods(node: &str, netns: &mut NetNsGuard) -> Vec<Pod> {
    let pid = std::process::id();
    netns.add(node).unwrap_or_else(|e| panic!("{e}"));
    ip_in(node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let ns = format!("{node}-{name}");
        netns.add(&ns).unwrap_or_else(|e| panic!("{e}"));
        let host_if = format!("fobs{pid}{name}");
        let ip = Ipv4Addr::new(10, 79, 0, 11 + i as u8);
        ip_in(
            node,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        ip_in(node, &["link", "set", &host_if, "up"]);
        ip_in(&ns, &["link", "set", "lo", "up"]);
        ip_in(&ns, &["link", "set", "eth0", "up"]);
        ip_in(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        let gw = GATEWAY.to_string();
        ip_in(
            &ns,
            &[
                "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
            ],
        );
        let (ifindex, _) = link_facts(node, &host_if);
        let (_, mac) = link_facts(&ns, "eth0");
        pods.push(Pod {
            name,
            netns: ns,
            host_if,
            ip,
            ifindex,
            mac,
        });
    }
    pods
}

impl Harness {
    fn start(dataplane_bin: &Path) -> Harness {
        let pid = std::process::id();
        let node = format!("fobs-{pid}");
        let dir = testkit::private_dir("fobs-");
        let etcd = Etcd::start().expect("etcd (checked by preflight)");
        let mut netns = NetNsGuard::default();
        let pods = build_pods(&node, &mut netns);
        let mut h = Harness {
            control: Proc {
                child: None,
                what: "flagella-control",
                log: dir.join("control.log"),
            },
            dataplane: Proc {
                child: None,
                what: "flagella-dataplane",
                log: dir.join("dataplane.log"),
            },
            _netns: netns,
            etcd_url: etcd.url.clone(),
            _etcd: etcd,
            socket: dir.join("dataplane.sock"),
            control_metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
            node,
            pods,
        };
        h.start_dataplane(dataplane_bin);
        h.write_cluster();
        let child = spawn_agent_with_metrics(
            &h.etcd_url,
            &h.node,
            &h.socket,
            &h.dir.join("control-status.json"),
            &h.control.log,
            &h.control_metrics.to_string(),
        );
        h.control.child = Some(child);
        h
    }

    fn start_dataplane(&mut self, bin: &Path) {
        let config = self.dir.join("dataplane.toml");
        std::fs::write(&config, "").unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics-address", DATAPLANE_METRICS]);
        for pod in &self.pods {
            cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&self.dataplane.log).unwrap())
            .spawn()
            .expect("spawn ip netns exec flagella-dataplane");
        self.dataplane.child = Some(child);
        let deadline = Instant::now() + CONVERGE;
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                self.dataplane.running(),
                "the dataplane exited before it was ready:\n{}",
                self.dataplane.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "the dataplane's socket did not appear"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_cluster(&self) {
        let rt = common::runtime();
        let store = rt
            .block_on(Store::connect(
                std::slice::from_ref(&self.etcd_url),
                Duration::from_secs(2),
            ))
            .unwrap();
        let put = |key: String, value: Value| {
            rt.block_on(store.put(&format!("{ROOT}{key}"), value.to_string()))
                .unwrap();
        };
        put(
            format!("nodes/{}", self.node),
            json!({"underlay_ip": "192.168.79.1", "pod_cidrs": [POD_CIDR], "tunnel": "vxlan"}),
        );
        put(format!("namespaces/{}", self.node), json!({"labels": {}}));
        for pod in &self.pods {
            put(
                format!("ipam/{}/{}", self.node, pod.ip),
                json!({"owner": format!("{}/{}", self.node, pod.name)}),
            );
            put(
                format!("endpoints/{}/{}", self.node, pod.name),
                json!({
                    "node": self.node, "labels": {"app": pod.name}, "ipv4": pod.ip.to_string(),
                    "interface": pod.host_if, "ifindex": pod.ifindex, "mac": pod.mac,
                }),
            );
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// B's ingress section in the dataplane (`enforced`, entries), once B is an endpoint.
    fn ingress_of_b(&self) -> Option<Value> {
        let eps = dataplane_request(&self.socket, &json!({"op": "dump", "table": "endpoints"}));
        let b = self.pod("b").ip.to_string();
        let id = eps["entries"].as_array()?.iter().find(|e| e["ipv4"] == b)?["id"].as_u64()?;
        let policy = dataplane_request(
            &self.socket,
            &json!({"op": "dump", "table": "policy", "endpoint": id}),
        );
        Some(policy["ingress"].clone())
    }

    /// `flagella policy import` of a NetworkPolicy that admits nobody into B.
    fn deny_all_into_b(&self) {
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "nobody-into-b", "namespace": self.node},
            "spec": {
                "podSelector": {"matchLabels": {"app": "b"}},
                "policyTypes": ["Ingress"],
                "ingress": [],
            },
        });
        let file = self.dir.join("policy.json");
        std::fs::write(&file, policy.to_string()).unwrap();
        let out = Command::new(FLAGELLA)
            .arg("--etcd")
            .arg(&self.etcd_url)
            .args(["policy", "import", "-f", file.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .expect("run flagella");
        assert!(out.status.success(), "flagella policy import: {out:?}");
    }

    fn connect_a_to_b(&self, timeout: Duration) -> Result<(), String> {
        let to = SocketAddr::new(IpAddr::V4(self.pod("b").ip), PORT);
        tcp_echo(&self.pod("a").netns, to, timeout)
    }

    fn dataplane_metrics(&self) -> String {
        http_get_in(&self.node, DATAPLANE_METRICS.parse().unwrap(), "/metrics").unwrap()
    }

    fn control_metrics(&self) -> String {
        http_get(self.control_metrics, "/metrics").unwrap()
    }
}

/// The value of the sample `name` (a full series name, labels included) in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn prometheus_scrapes_the_dataplane_and_both_endpoints_pass_promtool() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    if let Some(why) = common::prometheus::missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let h = Harness::start(&bin);
    let stop = Arc::new(AtomicBool::new(false));
    let b = h.pod("b");
    let server = tcp_server(
        &b.netns,
        SocketAddr::new(IpAddr::V4(b.ip), PORT),
        &stop,
        echo,
    );

    // 1. Prometheus scraping the dataplane; then allowed traffic.
    let prometheus = Prometheus::start(
        &h.node,
        PROMETHEUS_ADDRESS.parse().unwrap(),
        &[("flagella-dataplane", DATAPLANE_METRICS)],
        &h.dir.join("prometheus"),
    );
    wait_for_within("Prometheus scraped the dataplane", CONVERGE, || {
        prometheus.targets_up() && prometheus.query("flagella_tx_packets_total").is_some()
    });
    let forwarded_before = prometheus.query("flagella_tx_packets_total").unwrap();
    wait_for_within("A reaches B (no policy yet)", CONVERGE, || {
        h.connect_a_to_b(Duration::from_secs(1)).is_ok()
    });

    // 2. A denied connection.
    h.deny_all_into_b();
    wait_for_within("B's ingress is enforced", CONVERGE, || {
        h.ingress_of_b().is_some_and(|i| i["enforced"] == true)
    });
    assert!(
        h.connect_a_to_b(Duration::from_secs(2)).is_err(),
        "A -> B must be refused by the policy"
    );
    h.connect_a_to_b(Duration::from_secs(1)).unwrap_err();
    let denied = "flagella_drops_total{reason=\"policy_denied_ingress\"}";
    wait_for_within(
        "Prometheus shows the policy drops and more forwarded frames",
        CONVERGE,
        || {
            let drops = prometheus.query(denied);
            let forwarded = prometheus.query("flagella_tx_packets_total");
            eprintln!("Prometheus: {denied} = {drops:?}, forwarded {forwarded:?} (before: {forwarded_before})");
            drops.is_some_and(|n| n > 0.0) && forwarded.is_some_and(|n| n > forwarded_before)
        },
    );
    // The allowed flow made a conntrack entry.
    assert!(
        prometheus
            .query("sum(flagella_conntrack_inserts_total)")
            .is_some_and(|n| n > 0.0),
        "conntrack inserts in Prometheus"
    );
    // The kernel's own counters are there too, per interface (and queue).
    let a_if = &h.pod("a").host_if;
    let redirected = format!("flagella_xdp_redirected_total{{interface=\"{a_if}\"}}");
    assert!(
        prometheus.query(&redirected).is_some_and(|n| n > 0.0),
        "{redirected} in Prometheus"
    );
    let ring_full = format!("flagella_xsk_rx_ring_full_total{{interface=\"{a_if}\",queue=\"0\"}}");
    assert!(
        prometheus.query(&ring_full).is_some(),
        "{ring_full} in Prometheus"
    );

    // 3. Both endpoints' text passes promtool; the agent's metrics describe what it did.
    let dp = h.dataplane_metrics();
    promtool_check(&dp).unwrap_or_else(|e| panic!("promtool on the dataplane's /metrics: {e}"));
    let cm = h.control_metrics();
    promtool_check(&cm).unwrap_or_else(|e| panic!("promtool on the agent's /metrics: {e}"));
    wait_for_within("the agent's gauges show the model", CONVERGE, || {
        let cm = h.control_metrics();
        sample(&cm, "flagella_control_endpoints") == Some(2.0)
            && sample(&cm, "flagella_control_policies") == Some(1.0)
    });
    for name in [
        "flagella_control_dataplane_request_seconds_count",
        "flagella_control_etcd_to_dataplane_seconds_count",
        "flagella_control_identity_allocation_seconds_count",
        "flagella_control_etcd_events_total{type=\"put\"}",
        "flagella_control_identities",
        "flagella_control_dataplane_connected",
        "flagella_control_etcd_reachable",
    ] {
        assert!(
            sample(&cm, name).is_some_and(|n| n > 0.0),
            "{name} > 0 in the agent's /metrics:\n{cm}"
        );
    }

    // 4. The Grafana dashboard: every metric it names is exported by one of the two endpoints
    //    (the kernel-side families included), and Prometheus runs every one of its queries.
    let mut exported = families(&dp);
    exported.extend(families(&cm));
    for query in dashboard_queries() {
        for name in metric_names(&query) {
            assert!(
                exported.contains(&name),
                "the dashboard queries `{name}`, which neither /metrics exports"
            );
        }
        prometheus
            .check_query(&query)
            .unwrap_or_else(|e| panic!("the dashboard's query fails in Prometheus: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    drop(prometheus);
}
