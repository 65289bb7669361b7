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
//!    two endpoints, and the real Prometheus accepts every one of its queries;
//! 5. `flagella monitor` shows a denied SYN and writes it to a pcap, which `flagella replay`
//!    replays offline (over the dataplane's dumps, and over the agent's view from etcd) to the
//!    verdict the live dataplane gave it;
//! 6. a monitor capture (traces, policy verdicts and drops) of allowed TCP and UDP, a denied
//!    SYN, a spoofed datagram and a service request replays (`flagella replay`) frame by frame
//!    to the live events, and in total to the deltas of the dataplane's `status` counters.
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
    ip_in, pod_address, pod_veth, preflight, spawn_agent_with_metrics, wait_for_within, NetNsGuard,
    Proc,
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

fn build_pods(node: &str, tag: &str, netns: &mut NetNsGuard) -> Vec<Pod> {
    let pid = std::process::id();
    netns.add(node).unwrap_or_else(|e| panic!("{e}"));
    ip_in(node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let ns = format!("{node}-{name}");
        netns.add(&ns).unwrap_or_else(|e| panic!("{e}"));
        let host_if = format!("fobs{pid}{tag}{name}");
        let ip = Ipv4Addr::new(10, 79, 0, 11 + i as u8);
        let (ifindex, mac) = pod_veth(node, &ns, &host_if);
        pod_address(&ns, ip, GATEWAY);
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
    /// The harness of one test: `tag` (one letter) tells its namespaces, interfaces and files
    /// from those of the other tests running in parallel.
    fn start(dataplane_bin: &Path, tag: &str) -> Harness {
        Harness::start_with(dataplane_bin, tag, |_| Vec::new())
    }

    /// As [`Harness::start`], with more flags for the dataplane, made from the test's
    /// directory (for files and sockets of the test's own).
    fn start_with(
        dataplane_bin: &Path,
        tag: &str,
        flags: impl FnOnce(&Path) -> Vec<String>,
    ) -> Harness {
        let pid = std::process::id();
        let node = format!("fobs-{pid}{tag}");
        let dir = testkit::private_dir(&format!("fobs-{tag}-"));
        let etcd = Etcd::start().expect("etcd (checked by preflight)");
        let mut netns = NetNsGuard::default();
        let pods = build_pods(&node, tag, &mut netns);
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
        let flags = flags(&h.dir);
        h.start_dataplane(dataplane_bin, &flags);
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

    fn start_dataplane(&mut self, bin: &Path, flags: &[String]) {
        let config = self.dir.join("dataplane.toml");
        std::fs::write(&config, "").unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--metrics-address", DATAPLANE_METRICS])
            .args(flags);
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
            testkit::skip(&why);
            return;
        }
    };
    if let Some(why) = common::prometheus::missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let h = Harness::start(&bin, "p");
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
    // Summed over the `direction` label (policy_denied_ingress is always `ingress`).
    let denied = "sum(flagella_drops_total{reason=\"policy_denied_ingress\"})";
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

/// The monitor socket the dataplane serves beside its control socket (its default).
fn monitor_socket(h: &Harness) -> PathBuf {
    h.dir.join("dataplane-monitor.sock")
}

/// A sample of the dataplane's `/metrics`, 0 when absent (or not served yet: the metrics
/// server starts after the control socket the harness waits for).
fn dataplane_sample(h: &Harness, name: &str) -> f64 {
    http_get_in(&h.node, DATAPLANE_METRICS.parse().unwrap(), "/metrics")
        .ok()
        .and_then(|text| sample(&text, name))
        .unwrap_or(0.0)
}

/// The dataplane's endpoint id and identity of pod `name`.
fn endpoint_of(h: &Harness, name: &str) -> (u64, u64) {
    let eps = dataplane_request(&h.socket, &json!({"op": "dump", "table": "endpoints"}));
    let ip = h.pod(name).ip.to_string();
    let ep = eps["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["ipv4"] == ip))
        .unwrap_or_else(|| panic!("endpoint {name} in the dataplane: {eps}"));
    (ep["id"].as_u64().unwrap(), ep["identity"].as_u64().unwrap())
}

/// A, B with a server on B, A reaching B, then nobody admitted into B (enforced).
fn deny_into_b_after_a_reached_it(h: &Harness, stop: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let b = h.pod("b");
    let server = tcp_server(
        &b.netns,
        SocketAddr::new(IpAddr::V4(b.ip), PORT),
        stop,
        echo,
    );
    wait_for_within("A reaches B (no policy yet)", CONVERGE, || {
        h.connect_a_to_b(Duration::from_secs(1)).is_ok()
    });
    h.deny_all_into_b();
    wait_for_within("B's ingress is enforced", CONVERGE, || {
        h.ingress_of_b().is_some_and(|i| i["enforced"] == true)
    });
    server
}

/// `flagella monitor` with these arguments, its stdout to `stdout`.
fn spawn_monitor(h: &Harness, args: &[&str], stdout: Stdio) -> std::process::Child {
    Command::new(FLAGELLA)
        .arg("--etcd")
        .arg(&h.etcd_url)
        .args(["-o", "json", "monitor", "--socket"])
        .arg(monitor_socket(h))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flagella monitor")
}

fn wait_for_subscribers(h: &Harness, n: f64) {
    wait_for_within(&format!("{n} monitor subscriber(s)"), CONVERGE, || {
        dataplane_sample(h, "flagella_monitor_subscribers") == n
    });
}

#[test]
fn monitor_shows_the_denied_syn_with_identities_and_labels_and_its_pcap_opens_in_tshark() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    if Command::new("tshark").arg("--version").output().is_err() {
        eprintln!("SKIPPED: tshark is not installed (apt-get install tshark)");
        return;
    }
    let h = Harness::start(&bin, "m");
    let stop = Arc::new(AtomicBool::new(false));
    let server = deny_into_b_after_a_reached_it(&h, &stop);
    let (a_ep, a_id) = endpoint_of(&h, "a");
    let (b_ep, b_id) = endpoint_of(&h, "b");

    let pcap = h.dir.join("denied.pcap");
    let b_ep_arg = b_ep.to_string();
    let mut monitor = spawn_monitor(
        &h,
        &[
            "--type",
            "drop",
            "--reason",
            "policy_denied_ingress",
            "--endpoint",
            &b_ep_arg,
            "--pcap",
            pcap.to_str().unwrap(),
            "--count",
            "1",
        ],
        Stdio::piped(),
    );
    wait_for_subscribers(&h, 1.0);
    wait_for_within("flagella monitor showed a denied SYN", CONVERGE, || {
        let _ = h.connect_a_to_b(Duration::from_millis(500));
        monitor.try_wait().unwrap().is_some()
    });
    let out = monitor.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "flagella monitor: {out:?}");
    let line = stdout
        .lines()
        .find(|l| l.contains("\"flow\""))
        .unwrap_or_else(|| panic!("no flow in the monitor's output:\n{stdout}"));
    let record: Value = serde_json::from_str(line).unwrap();
    let flow = &record["flow"];
    eprintln!("flagella monitor: {flow}");
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "policy_denied_ingress");
    assert_eq!(flow["stage"], "policy");
    assert_eq!(flow["event_type"]["type"], "drop");
    assert_eq!(flow["traffic_direction"], "ingress");
    assert_eq!(flow["interface"]["index"], h.pod("a").ifindex);
    assert_eq!(flow["source"]["identity"], a_id);
    assert_eq!(flow["source"]["ID"], a_ep);
    assert_eq!(flow["destination"]["identity"], b_id);
    assert_eq!(flow["destination"]["ID"], b_ep);
    let has_label = |side: &str, label: &str| {
        flow[side]["labels"].as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s.as_str().is_some_and(|s| s.ends_with(label)))
        })
    };
    assert!(has_label("source", "app=a"), "A's labels from etcd: {flow}");
    assert!(
        has_label("destination", "app=b"),
        "B's labels from etcd: {flow}"
    );
    assert_eq!(flow["IP"]["source"], h.pod("a").ip.to_string());
    assert_eq!(flow["IP"]["destination"], h.pod("b").ip.to_string());
    assert_eq!(flow["l4"]["TCP"]["destination_port"], PORT);
    assert!(flow["l4"]["TCP"]["source_port"]
        .as_u64()
        .is_some_and(|p| p > 0));
    assert_eq!(flow["l4"]["TCP"]["flags"], json!({"SYN": true}));

    // The pcap: tshark reads it and shows that SYN.
    let tshark = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
        ])
        .args([
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.flags.syn",
            "-e",
            "tcp.flags.ack",
        ])
        .output()
        .expect("run tshark");
    let shown = String::from_utf8_lossy(&tshark.stdout);
    assert!(tshark.status.success(), "tshark -r: {tshark:?}");
    let fields: Vec<&str> = shown.trim().split('\t').collect();
    let sport = flow["l4"]["TCP"]["source_port"].to_string();
    let a_ip = h.pod("a").ip.to_string();
    let b_ip = h.pod("b").ip.to_string();
    let port = PORT.to_string();
    assert_eq!(fields.len(), 6, "one frame in the pcap: {shown}");
    assert_eq!(
        &fields[..4],
        [&a_ip, &b_ip, &port, &sport],
        "tshark: {shown}"
    );
    assert!(["1", "True"].contains(&fields[4]), "SYN set: {shown}");
    assert!(["0", "False"].contains(&fields[5]), "ACK clear: {shown}");
    replay_gives_the_live_verdict(&h, &pcap, flow);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

/// `flagella replay` of the monitor's pcap, offline over the dataplane's tables (its `dump`
/// replies written by the test; dumped by replay itself, `--dataplane-socket`, and kept with
/// `--save-state`; then that kept file) and over what the node's agent would give it (`--node`,
/// from etcd), gives the captured frame the verdict, stage, reason and ends the live dataplane
/// gave it.
fn replay_gives_the_live_verdict(h: &Harness, pcap: &Path, live: &Value) {
    let mut dumps = Vec::new();
    for table in [
        "local_node",
        "endpoints",
        "ipcache",
        "services",
        "nodes",
        "host_policy",
    ] {
        dumps.push(dataplane_request(
            &h.socket,
            &json!({"op": "dump", "table": table}),
        ));
    }
    let ids: Vec<u64> = dumps[1]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    for id in ids {
        let policy = json!({"op": "dump", "table": "policy", "endpoint": id});
        dumps.push(dataplane_request(&h.socket, &policy));
    }
    let state = h.dir.join("state.jsonl");
    let lines: Vec<String> = dumps.iter().map(Value::to_string).collect();
    std::fs::write(&state, lines.join("\n")).unwrap();
    let snapshot = ["--state", state.to_str().unwrap()];
    let from_etcd = ["--etcd", h.etcd_url.as_str(), "--node", h.node.as_str()];
    let saved = h.dir.join("saved.jsonl");
    let live_tables = [
        "--dataplane-socket",
        h.socket.to_str().unwrap(),
        "--save-state",
        saved.to_str().unwrap(),
    ];
    let kept = ["--state", saved.to_str().unwrap()];
    for source in [&snapshot[..], &from_etcd[..], &live_tables[..], &kept[..]] {
        let out = Command::new(FLAGELLA)
            .args(["replay", "--pcap", pcap.to_str().unwrap(), "-o", "json"])
            .args(source)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "flagella replay {source:?}: {out:?}");
        let record: Value = serde_json::from_str(stdout.lines().next().unwrap_or("")).unwrap();
        let flow = &record["flow"];
        eprintln!("flagella replay {source:?}: {flow}");
        for field in [
            "verdict",
            "drop_reason_desc",
            "stage",
            "interface",
            "IP",
            "l4",
        ] {
            assert_eq!(flow[field], live[field], "{field} ({source:?}): {flow}");
        }
        for side in ["source", "destination"] {
            for field in ["identity", "ID"] {
                assert_eq!(
                    flow[side][field], live[side][field],
                    "{side}.{field}: {flow}"
                );
            }
        }
    }
}

/// From namespace `netns`: `bytes` sent to the echo server at `addr` and all read back.
fn transfer(netns: &str, addr: SocketAddr, bytes: usize) -> Result<usize, String> {
    common::net::spawn_in(netns, move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut writer = s.try_clone().map_err(|e| e.to_string())?;
        let sender = thread::spawn(move || {
            use std::io::Write;
            let chunk = vec![0x5au8; 64 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
                left -= n;
            }
            writer
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())
        });
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &s, &mut got).map_err(|e| format!("read: {e}"))?;
        sender.join().map_err(|_| "sender panicked".to_string())??;
        if got.iter().any(|b| *b != 0x5a) {
            return Err("corrupted bytes".into());
        }
        Ok(got.len())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Events produced while someone listened: sent to the subscribers, or lost in a ring.
fn produced_events(h: &Harness) -> f64 {
    let metrics = h.dataplane_metrics();
    sample(&metrics, "flagella_monitor_events_total").unwrap_or(0.0)
        + sample(
            &metrics,
            "flagella_monitor_events_lost_total{source=\"worker_ring\"}",
        )
        .unwrap_or(0.0)
}

/// Every `{"flow"...}` and the lost counts in a monitor's JSON lines.
fn tally(lines: &str) -> (u64, u64) {
    let mut flows = 0;
    let mut lost = 0;
    for l in lines.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v.get("flow").is_some() {
            flows += 1;
        } else if let Some(n) = v["lost_events"]["num_events_lost"].as_u64() {
            lost += n;
        }
    }
    (flows, lost)
}

/// What one run of [`flood_beside_transfer`] saw.
struct FloodRun {
    moved: Result<usize, String>,
    /// The transfer's seconds (connect to last byte back).
    seconds: f64,
    sent: usize,
    answers: usize,
}

/// The flood (at least `flood` UDP datagrams from A to a port of B nobody is admitted to, by
/// sendmmsg, going on until the transfer is over) and beside it an allowed transfer of `bytes`
/// from B to A's echo server at `a_addr`, while the control socket is asked for its status
/// again and again.
fn flood_beside_transfer(h: &Harness, a_addr: SocketAddr, flood: usize, bytes: usize) -> FloodRun {
    let done = Arc::new(AtomicBool::new(false));
    let to_b = SocketAddr::new(IpAddr::V4(h.pod("b").ip), PORT + 1);
    let flooder = common::traffic::udp_flood(&h.pod("a").netns, to_b, flood, Arc::clone(&done));
    let b_netns = h.pod("b").netns.clone();
    let transfer_done = Arc::clone(&done);
    let transfer = thread::spawn(move || {
        let start = Instant::now();
        let moved = transfer(&b_netns, a_addr, bytes);
        let seconds = start.elapsed().as_secs_f64();
        transfer_done.store(true, Ordering::Relaxed);
        (moved, seconds)
    });
    let mut answers = 0;
    while !flooder.is_finished() {
        dataplane_request(&h.socket, &json!({"op": "status"}));
        answers += 1;
    }
    let (moved, seconds) = transfer.join().unwrap();
    let sent = flooder.join().unwrap();
    FloodRun {
        moved,
        seconds,
        sent,
        answers,
    }
}

#[test]
fn a_flood_of_denied_packets_loses_monitor_events_visibly_while_forwarding_and_control_go_on() {
    const FLOOD: usize = 1_000_000;
    const TRANSFER: usize = 8 << 20;
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    let h = Harness::start(&bin, "f");
    let stop = Arc::new(AtomicBool::new(false));
    let server_b = deny_into_b_after_a_reached_it(&h, &stop);
    let a = h.pod("a");
    let a_addr = SocketAddr::new(IpAddr::V4(a.ip), PORT);
    let server_a = tcp_server(&a.netns, a_addr, &stop, echo);

    // The baseline of the benchmark figure: the same flood and transfer, nobody monitoring.
    let baseline = flood_beside_transfer(&h, a_addr, FLOOD, TRANSFER);
    assert_eq!(
        baseline.moved,
        Ok(TRANSFER),
        "the baseline transfer completes"
    );

    // The CLI subscribes first (so it hears every event produced while anyone listens), then a
    // subscriber that reads nothing until the flood is over: its queue must overflow.
    let cli_out = h.dir.join("monitor.jsonl");
    let mut cli = spawn_monitor(
        &h,
        &["--no-labels"],
        Stdio::from(File::create(&cli_out).unwrap()),
    );
    wait_for_subscribers(&h, 1.0);
    let slow = UnixStream::connect(monitor_socket(&h)).unwrap();
    wait_for_subscribers(&h, 2.0);
    // Events produced before this (a pod's stray IPv6 neighbour discovery, say) reached the
    // CLI only; the slow subscriber may or may not have seen those of the last instants.
    let produced_before_slow = produced_events(&h);

    // The flood: real kernel UDP (sendmmsg) from A to a port of B nobody is admitted to; beside
    // it B -> A, allowed, and the control socket, asked until the flood is over.
    let run = flood_beside_transfer(&h, a_addr, FLOOD, TRANSFER);
    eprintln!(
        "flood: {} datagrams sent; control answered {} time(s) during it",
        run.sent, run.answers
    );
    assert_eq!(
        run.moved,
        Ok(TRANSFER),
        "the allowed transfer completes beside the flood"
    );
    assert!(run.sent >= FLOOD, "the flood was sent: {}", run.sent);
    assert!(
        run.answers > 0,
        "the control socket answered during the flood"
    );

    // The slow subscriber: what it missed (the rings', and its own queue's overflow: the flood
    // produced far more events than its queue and socket hold, so it lost some) is reported
    // to it, and what it read plus what it was told it lost is everything produced since it
    // subscribed.
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut reader = std::io::BufReader::new(&slow);
    let mut slow_lines = String::new();
    wait_for_within(
        "the slow subscriber's events and losses add up",
        CONVERGE,
        || {
            loop {
                match std::io::BufRead::read_line(&mut reader, &mut slow_lines) {
                    Ok(0) => panic!("the monitor socket closed"),
                    Ok(_) => continue,
                    Err(_) => break, // Nothing more for now.
                }
            }
            let (flows, lost) = tally(&slow_lines);
            let produced = produced_events(&h);
            eprintln!(
                "slow subscriber: {flows} flows + {lost} lost; dataplane: {produced} produced, \
                 {produced_before_slow} before it subscribed"
            );
            let accounted = (flows + lost) as f64;
            produced - produced_before_slow <= accounted && accounted <= produced && lost > 0
        },
    );
    drop(reader);
    drop(slow);
    let lost_total = dataplane_sample(
        &h,
        "flagella_monitor_events_lost_total{source=\"subscriber_queue\"}",
    ) + dataplane_sample(
        &h,
        "flagella_monitor_events_lost_total{source=\"worker_ring\"}",
    );
    assert!(lost_total > 0.0, "/metrics counts the lost events");

    // Accounting: every event produced while someone listened reached the CLI or was reported
    // to it as lost (once the stragglers are in).
    wait_for_within(
        "the CLI's events and losses add up to the dataplane's",
        CONVERGE,
        || {
            let metrics = h.dataplane_metrics();
            let produced = sample(&metrics, "flagella_monitor_events_total").unwrap_or(0.0)
                + sample(
                    &metrics,
                    "flagella_monitor_events_lost_total{source=\"worker_ring\"}",
                )
                .unwrap_or(0.0);
            let (flows, lost) = tally(&std::fs::read_to_string(&cli_out).unwrap());
            eprintln!("CLI: {flows} flows + {lost} lost; dataplane: {produced} produced");
            (flows + lost) as f64 == produced && flows > 0
        },
    );
    let denied = dataplane_sample(
        &h,
        "flagella_drops_total{direction=\"ingress\",reason=\"policy_denied_ingress\"}",
    );
    assert!(denied > 0.0);
    let _ = cli.kill();
    let _ = cli.wait();

    // A second baseline once nobody listens again, so that the figure is not one noisy run
    // (only a benchmark figure: when the dataplane still counts a subscriber after a while,
    // the figure is printed against the first baseline alone rather than failing the test).
    let unsubscribed = Instant::now() + CONVERGE;
    while dataplane_sample(&h, "flagella_monitor_subscribers") != 0.0
        && Instant::now() < unsubscribed
    {
        thread::sleep(Duration::from_millis(50));
    }
    let rate = |r: &FloodRun| TRANSFER as f64 / r.seconds / 1e6;
    let mut without = vec![rate(&baseline)];
    if dataplane_sample(&h, "flagella_monitor_subscribers") == 0.0 {
        let baseline_after = flood_beside_transfer(&h, a_addr, FLOOD, TRANSFER);
        assert_eq!(baseline_after.moved, Ok(TRANSFER));
        without.push(rate(&baseline_after));
    } else {
        eprintln!("subscribers still counted: one baseline only");
    }
    // The benchmark figure (bench/README.md), printed, not asserted: the transfer's rate beside
    // the flood with the monitor's subscribers, against the mean of the runs without them.
    let mean = without.iter().sum::<f64>() / without.len() as f64;
    eprintln!(
        "BENCH flood-monitor: an {} MiB transfer beside {FLOOD}+ denied datagrams: {without:.2?} \
         MB/s without monitor subscribers, {:.2} MB/s with two (the CLI and one that does not \
         read): {:.0}% of the mean without",
        TRANSFER >> 20,
        rate(&run),
        100.0 * rate(&run) / mean
    );
    stop.store(true, Ordering::Relaxed);
    server_b.join().unwrap();
    server_a.join().unwrap();
}

/// The exported flow of a denied SYN from A to B, checked against the dataplane's endpoints.
fn assert_denied_syn_from_a_to_b(h: &Harness, flow: &Value) {
    let (a_ep, a_id) = endpoint_of(h, "a");
    let (b_ep, b_id) = endpoint_of(h, "b");
    assert_eq!(flow["verdict"], "DROPPED", "{flow}");
    assert_eq!(flow["drop_reason_desc"], "policy_denied_ingress", "{flow}");
    assert_eq!(flow["event_type"]["type"], "drop");
    assert_eq!(flow["interface"]["index"], h.pod("a").ifindex);
    assert_eq!(flow["source"]["identity"], a_id);
    assert_eq!(flow["source"]["ID"], a_ep);
    assert_eq!(flow["destination"]["identity"], b_id);
    assert_eq!(flow["destination"]["ID"], b_ep);
    assert_eq!(flow["IP"]["source"], h.pod("a").ip.to_string());
    assert_eq!(flow["IP"]["destination"], h.pod("b").ip.to_string());
    assert_eq!(flow["l4"]["TCP"]["destination_port"], PORT);
    assert!(flow["l4"]["TCP"]["source_port"]
        .as_u64()
        .is_some_and(|p| p > 0));
    assert_eq!(flow["l4"]["TCP"]["flags"], json!({"SYN": true}));
}

/// The first denied SYN from A to B among JSON lines, if any.
fn denied_syn(lines: &str, h: &Harness) -> Option<Value> {
    let b = h.pod("b").ip.to_string();
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["flow"].clone())
        .find(|f| {
            f["drop_reason_desc"] == "policy_denied_ingress"
                && f["IP"]["destination"] == b.as_str()
                && f["l4"]["TCP"]["destination_port"] == PORT
        })
}

#[test]
fn flow_export_appends_the_denied_syn_to_a_file_and_accounts_for_rate_limited_flows() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // Two flows a second: the burst of denied SYNs below is mostly rate-limited.
    let h = Harness::start_with(&bin, "e", |dir| {
        vec![
            "--monitor-socket".into(),
            "off".into(),
            "--flow-export".into(),
            format!("file:{}", dir.join("flows.json").display()),
            "--flow-export-rate".into(),
            "2".into(),
            "--flow-export-type".into(),
            "drop".into(),
        ]
    });
    let file = h.dir.join("flows.json");
    let stop = Arc::new(AtomicBool::new(false));
    let server = deny_into_b_after_a_reached_it(&h, &stop);
    wait_for_within("the exported file shows a denied SYN", CONVERGE, || {
        let _ = h.connect_a_to_b(Duration::from_millis(300));
        denied_syn(&std::fs::read_to_string(&file).unwrap_or_default(), &h).is_some()
    });
    let text = std::fs::read_to_string(&file).unwrap();
    let flow = denied_syn(&text, &h).unwrap();
    eprintln!("exported: {flow}");
    assert_denied_syn_from_a_to_b(&h, &flow);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "one JSON object a line:\n{text}"
    );

    // Twenty SYNs in about two seconds at two a second: some are rate-limited, and the file's
    // flows and rate-limit reports add up to the dataplane's counts.
    for _ in 0..20 {
        let _ = h.connect_a_to_b(Duration::from_millis(100));
    }
    wait_for_within(
        "the file's flows and losses add up to /metrics",
        CONVERGE,
        || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let (flows, _) = tally(&text);
            let limited: u64 = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["lost_events"]["source"] == "rate_limited")
                .filter_map(|v| v["lost_events"]["num_events_lost"].as_u64())
                .sum();
            let metrics = h.dataplane_metrics();
            let exported = sample(&metrics, "flagella_flow_export_flows_total").unwrap_or(0.0);
            let limited_metric = sample(
                &metrics,
                "flagella_flow_export_lost_total{source=\"rate_limited\"}",
            )
            .unwrap_or(0.0);
            eprintln!(
                "file: {flows} flows, {limited} rate-limited; /metrics: {exported} flows, \
                 {limited_metric} rate-limited"
            );
            limited > 0 && flows as f64 == exported && limited as f64 == limited_metric
        },
    );
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn flow_export_streams_the_denied_syn_to_a_unix_socket_collector() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // The dataplane starts before the collector listens: the export connects once it does.
    let h = Harness::start_with(&bin, "u", |dir| {
        vec![
            "--flow-export".into(),
            format!("unix:{}", dir.join("collector.sock").display()),
        ]
    });
    let listener = std::os::unix::net::UnixListener::bind(h.dir.join("collector.sock")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = deny_into_b_after_a_reached_it(&h, &stop);
    // The export connects when it has a line to write: accept while denied SYNs are made.
    listener.set_nonblocking(true).unwrap();
    let mut collector = None;
    let mut lines = String::new();
    wait_for_within("the collector receives a denied SYN", CONVERGE, || {
        let _ = h.connect_a_to_b(Duration::from_millis(300));
        if collector.is_none() {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                collector = Some(std::io::BufReader::new(stream));
            }
        }
        if let Some(reader) = collector.as_mut() {
            while std::io::BufRead::read_line(reader, &mut lines).is_ok_and(|n| n > 0) {}
        }
        denied_syn(&lines, &h).is_some()
    });
    let flow = denied_syn(&lines, &h).unwrap();
    eprintln!("collected: {flow}");
    assert_denied_syn_from_a_to_b(&h, &flow);
    assert!(dataplane_sample(&h, "flagella_flow_export_flows_total") > 0.0);
    assert!(dataplane_sample(&h, "flagella_flow_export_reopens_total") >= 1.0);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

/// B's allowed ports in the replay test (the denied SYN goes to [`PORT`]).
const ALLOWED_TCP: u16 = PORT + 3;
const ALLOWED_UDP: u16 = PORT + 4;
/// A's second address, not its endpoint's: what it sends from there is spoofed.
const SPOOFED_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 99);
/// The service frontend (backend: B's allowed TCP port).
const FRONTEND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 79, 10)), 80);

/// `flagella policy import` of a NetworkPolicy that admits only A, only to B's allowed ports.
fn only_allowed_ports_into_b(h: &Harness) {
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "a-into-b-allowed-ports", "namespace": h.node},
        "spec": {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                "ports": [{"protocol": "TCP", "port": ALLOWED_TCP},
                          {"protocol": "UDP", "port": ALLOWED_UDP}],
            }],
        },
    });
    let file = h.dir.join("policy.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    let out = Command::new(FLAGELLA)
        .arg("--etcd")
        .arg(&h.etcd_url)
        .args(["policy", "import", "-f", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run flagella");
    assert!(out.status.success(), "flagella policy import: {out:?}");
}

/// The service `FRONTEND` -> B's allowed TCP port, put in etcd as an operator would.
fn service_to_b(h: &Harness) {
    let rt = common::runtime();
    let store = rt
        .block_on(Store::connect(
            std::slice::from_ref(&h.etcd_url),
            Duration::from_secs(2),
        ))
        .unwrap();
    let spec = json!({
        "frontends": [{"ip": FRONTEND.ip().to_string(), "port": FRONTEND.port(), "protocol": "TCP"}],
        "backends": [{"ip": h.pod("b").ip.to_string(), "port": ALLOWED_TCP}],
    });
    rt.block_on(store.put(&format!("{ROOT}services/{}/web", h.node), spec.to_string()))
        .unwrap();
}

/// A UDP echo server in namespace `netns` on `addr` (one datagram back per datagram), until
/// `stop`.
fn udp_echo_server(
    netns: &str,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = Arc::clone(stop);
    let handle = common::net::spawn_in(netns, move || {
        let socket = std::net::UdpSocket::bind(addr).expect("bind UDP in the namespace");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx.recv().expect("UDP server ready");
    handle
}

/// From namespace `netns`, bound to `from`: one datagram to `to`; whether its echo came back
/// within `timeout`.
fn udp_exchange(netns: &str, from: SocketAddr, to: SocketAddr, timeout: Duration) -> bool {
    common::net::spawn_in(netns, move || {
        let socket = std::net::UdpSocket::bind(from).expect("bind UDP in the namespace");
        socket.set_read_timeout(Some(timeout)).unwrap();
        socket.send_to(b"replay", to).expect("send UDP");
        let mut buf = [0u8; 64];
        socket.recv_from(&mut buf).is_ok()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The dataplane's summed counters (`status`), once its workers have published twice since
/// asked: everything processed before the call is in them.
fn settled_counters(h: &Harness) -> Value {
    let publications = |s: &Value| -> u64 {
        s["workers"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["publications"].as_u64()).sum())
            .unwrap_or(0)
    };
    let start = publications(&dataplane_request(&h.socket, &json!({"op": "status"})));
    let mut status = Value::Null;
    wait_for_within("the workers published their counters", CONVERGE, || {
        status = dataplane_request(&h.socket, &json!({"op": "status"}));
        publications(&status) >= start + 2
    });
    status["counters"].clone()
}

/// What a run of frames came to: forwarded frames, and drops by reason.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdicts {
    forwarded: u64,
    policy_denied: u64,
    spoofed: u64,
}

impl Verdicts {
    /// The tally of monitor records (`{"flow": ...}` JSON lines, others skipped).
    fn of_flows(flows: &[Value]) -> Verdicts {
        let mut v = Verdicts::default();
        for f in flows {
            match (f["verdict"].as_str(), f["drop_reason_desc"].as_str()) {
                (Some("FORWARDED"), _) => v.forwarded += 1,
                (Some("DROPPED"), Some("policy_denied_ingress")) => v.policy_denied += 1,
                (Some("DROPPED"), Some("invalid_source_ip")) => v.spoofed += 1,
                _ => {}
            }
        }
        v
    }

    /// The difference of two `status` counter sets.
    fn between(before: &Value, after: &Value) -> Verdicts {
        let n = |c: &Value, path: &[&str]| path.iter().fold(c, |v, k| &v[*k]).as_u64().unwrap_or(0);
        let delta = |path: &[&str]| n(after, path) - n(before, path);
        Verdicts {
            // The dataplane's own ARP and neighbour answers are transmitted frames but not
            // forwarded traffic (no trace event, nothing a capture of the pods' frames holds).
            forwarded: delta(&["tx_packets"]) - delta(&["arp_replies"]) - delta(&["ndp_replies"]),
            policy_denied: delta(&["drops", "policy_denied_ingress"]),
            spoofed: delta(&["drops", "invalid_source_ip"]),
        }
    }
}

/// The `flow` of every JSON line that has one.
fn flows_in(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

/// A replayed frame's flow `r` says what the live dataplane's `l` said of the same frame.
fn assert_same_fate(r: &Value, l: &Value, what: &str) {
    for field in [
        "verdict",
        "drop_reason_desc",
        "stage",
        "event_type",
        "interface",
        "IP",
        "l4",
    ] {
        assert_eq!(
            r[field], l[field],
            "{what}: {field}:\nreplayed {r}\nlive {l}"
        );
    }
    for side in ["source", "destination"] {
        assert_eq!(
            r[side]["identity"], l[side]["identity"],
            "{what}: {side}.identity:\nreplayed {r}\nlive {l}"
        );
    }
}

/// `flagella replay -o json` of `pcap` with `source`'s state: each frame's flow.
fn replay(pcap: &Path, source: &[&str]) -> Vec<Value> {
    let out = Command::new(FLAGELLA)
        .args(["replay", "--pcap", pcap.to_str().unwrap(), "-o", "json"])
        .args(source)
        .output()
        .unwrap();
    assert!(out.status.success(), "flagella replay {source:?}: {out:?}");
    flows_in(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn a_monitor_capture_of_allowed_denied_spoofed_and_service_traffic_replays_to_the_live_verdicts() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    // Traces: every forwarded frame is an event too, so the capture holds every frame.
    let h = Harness::start_with(&bin, "r", |_| vec!["--monitor-trace".into()]);
    let (a, b) = (h.pod("a"), h.pod("b"));
    // No IPv6 in the pods: their neighbour discovery is not this test's traffic.
    for pod in [a, b] {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod.netns, "sysctl", "-qw"])
            .arg("net.ipv6.conf.all.disable_ipv6=1")
            .output()
            .expect("run ip netns exec sysctl");
        assert!(out.status.success(), "sysctl in {}: {out:?}", pod.netns);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let allowed_tcp = SocketAddr::new(IpAddr::V4(b.ip), ALLOWED_TCP);
    let allowed_udp = SocketAddr::new(IpAddr::V4(b.ip), ALLOWED_UDP);
    let denied_tcp = SocketAddr::new(IpAddr::V4(b.ip), PORT);
    let servers = [
        tcp_server(&b.netns, allowed_tcp, &stop, echo),
        tcp_server(&b.netns, denied_tcp, &stop, echo),
        udp_echo_server(&b.netns, allowed_udp, &stop),
    ];
    only_allowed_ports_into_b(&h);
    service_to_b(&h);
    ip_in(
        &a.netns,
        &[
            "addr",
            "add",
            &format!("{SPOOFED_SOURCE}/32"),
            "dev",
            "eth0",
        ],
    );
    let a_udp = SocketAddr::new(IpAddr::V4(a.ip), 0);
    let spoofed_udp = SocketAddr::new(IpAddr::V4(SPOOFED_SOURCE), 0);
    wait_for_within("B's ingress is enforced", CONVERGE, || {
        h.ingress_of_b().is_some_and(|i| i["enforced"] == true)
    });
    // Every path works before the capture (ARP resolved, the service in the dataplane).
    wait_for_within(
        "A reaches B's allowed ports and the service",
        CONVERGE,
        || {
            tcp_echo(&a.netns, allowed_tcp, Duration::from_secs(1)).is_ok()
                && udp_exchange(&a.netns, a_udp, allowed_udp, Duration::from_secs(1))
                && tcp_echo(&a.netns, FRONTEND, Duration::from_secs(1)).is_ok()
        },
    );

    let pcap = h.dir.join("capture.pcap");
    let monitor_out = h.dir.join("monitor.jsonl");
    let mut monitor = spawn_monitor(
        &h,
        &[
            "--no-labels",
            "--type",
            "trace",
            "--type",
            "drop",
            "--type",
            "policy-verdict",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
        Stdio::from(File::create(&monitor_out).unwrap()),
    );
    wait_for_subscribers(&h, 1.0);
    let before = settled_counters(&h);

    // The traffic: allowed TCP and UDP, a denied SYN, a spoofed datagram, the service.
    tcp_echo(&a.netns, allowed_tcp, Duration::from_secs(5)).expect("allowed TCP to B");
    assert!(
        udp_exchange(&a.netns, a_udp, allowed_udp, Duration::from_secs(5)),
        "allowed UDP to B is echoed"
    );
    assert!(
        tcp_echo(&a.netns, denied_tcp, Duration::from_millis(500)).is_err(),
        "the SYN to B's port {PORT} is denied"
    );
    assert!(
        !udp_exchange(
            &a.netns,
            spoofed_udp,
            allowed_udp,
            Duration::from_millis(500)
        ),
        "the spoofed datagram is dropped"
    );
    tcp_echo(&a.netns, FRONTEND, Duration::from_secs(5)).expect("the service answers");

    // The live counts: the counters' deltas, once the monitor has shown every event of them.
    let mut live = Vec::new();
    let mut after = Value::Null;
    wait_for_within(
        "the monitor shows every frame the counters counted",
        CONVERGE,
        || {
            after = settled_counters(&h);
            live = flows_in(&std::fs::read_to_string(&monitor_out).unwrap_or_default());
            let counted = Verdicts::between(&before, &after);
            let shown = Verdicts::of_flows(&live);
            eprintln!("counters: {counted:?}; monitor: {shown:?}");
            counted == shown
        },
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
    let counted = Verdicts::between(&before, &after);
    let pod_ifindexes = [a.ifindex, b.ifindex];
    let live_from_pods: Vec<Value> = live
        .iter()
        .filter(|l| pod_ifindexes.contains(&l["interface"]["index"].as_u64().unwrap_or(0)))
        .cloned()
        .collect();
    assert_eq!(
        Verdicts::of_flows(&live_from_pods),
        counted,
        "the counted traffic is the pods'"
    );
    assert!(
        counted.forwarded > 0 && counted.policy_denied > 0 && counted.spoofed > 0,
        "every kind of traffic was counted: {counted:?}"
    );
    let text = std::fs::read_to_string(&monitor_out).unwrap();
    assert!(
        !text.contains("lost_events"),
        "the monitor lost no event:\n{text}"
    );

    // Replayed over the dataplane's tables (dumped by replay, kept), then over the kept file.
    let saved = h.dir.join("saved.jsonl");
    let from_socket = [
        "--dataplane-socket",
        h.socket.to_str().unwrap(),
        "--save-state",
        saved.to_str().unwrap(),
    ];
    let kept = ["--state", saved.to_str().unwrap()];
    for source in [&from_socket[..], &kept[..]] {
        let replayed = replay(&pcap, source);
        assert_eq!(
            replayed.len(),
            live.len(),
            "one replayed frame per live event ({source:?})"
        );
        // Frames the node's kernel sent (its IPv6 multicast reports, say) came in on the host
        // interface, which a snapshot does not hold (docs/monitor.md): only the pods' frames
        // are compared, and they are all the counted traffic.
        let from_pods: Vec<(&Value, &Value)> = replayed
            .iter()
            .zip(&live)
            .filter(|(_, l)| pod_ifindexes.contains(&l["interface"]["index"].as_u64().unwrap_or(0)))
            .collect();
        for (i, (r, l)) in from_pods.iter().enumerate() {
            assert_same_fate(r, l, &format!("pod frame {} ({source:?})", i + 1));
        }
        let replayed_from_pods: Vec<Value> = from_pods.iter().map(|(r, _)| (*r).clone()).collect();
        assert_eq!(
            Verdicts::of_flows(&replayed_from_pods),
            counted,
            "the replay's totals are the live counters' ({source:?})"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().unwrap();
    }
}
