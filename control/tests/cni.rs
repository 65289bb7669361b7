//! `flagella-cni` driven exactly as a container runtime drives it: `CNI_*` environment
//! variables, the network configuration on stdin, a fresh network namespace per "container",
//! the plugin run inside the node's namespace (`ip netns exec`), real etcd and a real agent
//! (whose IPAM gives the addresses).
//!
//! Checked: ADD of three pods gives results with the spec's documented fields (interfaces with
//! the sandbox, ips pointing at it with the gateway, routes), the kernel state matches them and
//! the endpoints are in etcd; CHECK passes (and fails once an address is removed); DEL removes
//! the veth, the endpoint and the address allocation, a second DEL succeeds, a DEL after the
//! namespace is gone succeeds; ADD into a missing namespace is error 3, a malformed
//! configuration 6, an invalid one 7, an unknown cniVersion 1; GC removes a leaked endpoint and
//! keeps the listed ones; VERSION and STATUS answer. Debian's `ptp` + `host-local`, where
//! installed, are driven by the same harness and compared where they overlap (the result's
//! shape, DEL idempotence).
//!
//! Root only (namespaces); skipped with a message otherwise or without etcd.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::net::{ip_in, wait_for_within, NetNsGuard};
use common::traffic::{dataplane_request, echo, tcp_echo, tcp_server};
use common::Etcd;
use control::store::Store;
use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_flagella-cni");
const ROOT: &str = "/flagella/v1/";
const POD_CIDR: &str = "10.93.0.0/24";
const GATEWAY: &str = "10.93.0.1";
const PTP: &str = "/usr/lib/cni/ptp";

/// What a plugin printed and how it exited.
struct Ran {
    code: i32,
    out: Value,
    raw: String,
}

/// Runs `plugin` as a runtime does: inside `node`'s namespace, with `env` and `config` on stdin.
fn invoke(node: &str, plugin: &str, env: &[(&str, &str)], config: &Value) -> Ran {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node, plugin])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes())
        .expect("write the configuration");
    let out = child.wait_with_output().expect("plugin output");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("{plugin} stderr: {stderr}");
    }
    Ran {
        code: out.status.code().unwrap_or(-1),
        out: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    }
}

/// The `CNI_*` variables of one container.
fn cni_env<'a>(
    command: &'a str,
    id: &'a str,
    netns: &'a str,
    args: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ]
}

struct Harness {
    node: String,
    /// The node's dataplane (serving no pod interface at start), when the test runs one.
    dataplane: Option<Child>,
    socket: PathBuf,
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    store: Store,
    netns: NetNsGuard,
    agent: Option<Child>,
    dir: PathBuf,
    /// etcd as seen from inside the node's namespace.
    etcd_in_node: String,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for mut child in [self.agent.take(), self.dataplane.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    /// Etcd, the node's entry, its agent, and with `dataplane` the node's dataplane (no pod
    /// interface at start: the agent adds them as endpoints appear).
    fn start(tag: &str, dataplane: Option<&Path>) -> Harness {
        let pid = std::process::id();
        let node = format!("fcni{pid}{tag}");
        let mut netns = NetNsGuard::default();
        netns.add(&node).expect("node namespace");
        ip_in(&node, &["link", "set", "lo", "up"]);
        let etcd = Etcd::start().expect("etcd (checked before)");
        let target: SocketAddr = etcd.url.trim_start_matches("http://").parse().expect("url");
        let port = common::proxy::relay_into(&node, target);
        let rt = common::runtime();
        let store = rt
            .block_on(Store::connect(&etcd.urls(), Duration::from_secs(2)))
            .expect("etcd");
        let dir = testkit::private_dir("fcni-");
        let mut h = Harness {
            socket: dir.join("dataplane.sock"),
            dataplane: None,
            node,
            etcd,
            rt,
            store,
            netns,
            agent: None,
            dir,
            etcd_in_node: format!("http://127.0.0.1:{port}"),
        };
        h.put(
            &format!("nodes/{}", h.node),
            &json!({"underlay_ip": "192.0.2.1", "pod_cidrs": [POD_CIDR], "tunnel": "vxlan"})
                .to_string(),
        );
        h.put("namespaces/shop", "{}");
        if let Some(bin) = dataplane {
            h.start_dataplane(bin);
        }
        let log = h.dir.join("control.log");
        h.agent = Some(common::net::spawn_agent(
            &h.etcd.url,
            &h.node,
            &h.socket,
            &h.dir.join("status.json"),
            &log,
        ));
        h
    }

    fn start_dataplane(&mut self, bin: &Path) {
        let config = self.dir.join("dataplane.toml");
        std::fs::write(&config, "").expect("config");
        let log = std::fs::File::create(self.dir.join("dataplane.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--idle-sleep-us", "100", "--metrics-address", "off"])
            .args(["--monitor-socket", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the dataplane");
        self.dataplane = Some(child);
        let dataplane = &mut self.dataplane;
        let socket = &self.socket;
        let log_path = self.dir.join("dataplane.log");
        wait_for_within("the dataplane's socket", Duration::from_secs(30), || {
            let running = matches!(dataplane.as_mut().map(Child::try_wait), Some(Ok(None)));
            assert!(
                running,
                "the dataplane exited:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
    }

    fn dataplane_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dataplane.log")).unwrap_or_default()
    }

    fn put(&self, key: &str, value: &str) {
        self.rt
            .block_on(
                self.store
                    .put(&format!("{ROOT}{key}"), value.as_bytes().to_vec()),
            )
            .expect("etcd put");
    }

    fn keys(&self, prefix: &str) -> BTreeMap<String, Value> {
        let (kvs, _) = self
            .rt
            .block_on(self.store.list(&format!("{ROOT}{prefix}")))
            .expect("etcd list");
        kvs.into_iter()
            .map(|kv| {
                let v = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                (kv.key.trim_start_matches(ROOT).to_string(), v)
            })
            .collect()
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "flagella",
            "type": "flagella-cni",
            "etcdEndpoints": [self.etcd_in_node],
            "node": self.node,
            "addressTimeoutSeconds": 20,
            "runtimeConfig": {"labels": {"app": "shop"}},
        })
    }

    /// A fresh "container": its namespace and its path.
    fn container(&mut self, name: &str) -> (String, String) {
        let ns = format!("{}-{name}", self.node);
        self.netns.add(&ns).expect("pod namespace");
        (ns.clone(), format!("/run/netns/{ns}"))
    }

    fn node_has_link(&self, name: &str) -> bool {
        ip_in(&self.node, &["-j", "link", "show"]).contains(&format!("\"ifname\":\"{name}\""))
    }
}

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (network namespaces)");
        return true;
    }
    common::skip()
}

/// The documented fields of an ADD result (CNI spec 1.1, "ADD Success").
fn assert_spec_result(r: &Value, version: &str, netns: &str) {
    assert_eq!(r["cniVersion"], version, "{r}");
    let interfaces = r["interfaces"].as_array().expect("interfaces");
    let sandbox = interfaces
        .iter()
        .position(|i| i["sandbox"] == netns)
        .unwrap_or_else(|| panic!("no interface in the sandbox: {r}"));
    for i in interfaces {
        assert!(
            i["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && n.len() <= 15),
            "{r}"
        );
        assert!(i["mac"].as_str().is_some_and(|m| m.len() == 17), "{r}");
    }
    let ips = r["ips"].as_array().expect("ips");
    assert!(!ips.is_empty(), "{r}");
    for ip in ips {
        let address = ip["address"].as_str().expect("address");
        let (addr, len) = address.split_once('/').expect("CIDR form");
        assert!(
            addr.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok(),
            "{r}"
        );
        assert_eq!(ip["interface"].as_u64(), Some(sandbox as u64), "{r}");
        assert!(
            ip["gateway"]
                .as_str()
                .is_some_and(|g| g.parse::<std::net::IpAddr>().is_ok()),
            "{r}"
        );
    }
    // `routes` is optional in the spec (ptp without configured routes leaves it out).
    for route in r["routes"].as_array().into_iter().flatten() {
        assert!(
            route["dst"].as_str().is_some_and(|d| d.contains('/')),
            "{r}"
        );
    }
}

#[test]
fn the_plugin_as_a_runtime_drives_it() {
    if skip() {
        return;
    }
    let bin = match common::net::preflight() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mut h = Harness::start("a", Some(&bin));
    let pods = ["web-1", "web-2", "db-1"];
    let mut added = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let (ns, path) = h.container(pod);
        let id = format!("c0ffee{i}{}", std::process::id());
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod};K8S_POD_SERVICE_ACCOUNT=sa-{i}"
        );
        let r = invoke(
            &h.node,
            PLUGIN,
            &cni_env("ADD", &id, &path, &args),
            &h.conf("1.1.0"),
        );
        assert_eq!(r.code, 0, "ADD {pod}: {}", r.raw);
        assert_spec_result(&r.out, "1.1.0", &path);
        assert_eq!(r.out["ips"][0]["gateway"], GATEWAY);
        assert_eq!(r.out["routes"][0]["dst"], "0.0.0.0/0");
        let host_if = r.out["interfaces"][0]["name"]
            .as_str()
            .expect("host side")
            .to_string();
        assert!(h.node_has_link(&host_if), "{host_if} on the node");
        let address = r.out["ips"][0]["address"]
            .as_str()
            .expect("address")
            .to_string();
        let in_pod = ip_in(&ns, &["-4", "addr", "show", "dev", "eth0"]);
        assert!(in_pod.contains(&address), "{address} in {in_pod}");
        let routes = ip_in(&ns, &["route", "show", "default"]);
        assert!(routes.contains(&format!("via {GATEWAY}")), "{routes}");
        let ep = &h.keys(&format!("endpoints/shop/{pod}"))[&format!("endpoints/shop/{pod}")];
        assert_eq!(ep["container_id"], id.as_str());
        assert_eq!(ep["interface"], host_if.as_str());
        assert_eq!(ep["labels"]["app"], "shop");
        assert_eq!(ep["service_account"], format!("sa-{i}").as_str());
        assert_eq!(
            format!("{}/32", ep["ipv4"].as_str().expect("ipv4")),
            address
        );
        added.push((ns, path, id, args, r.out, host_if));
    }

    // The pods talk TCP through the dataplane, which took their interfaces on while running
    // (no restart): the node's kernel does not forward, and only the dataplane answers for the
    // gateway.
    let stop = Arc::new(AtomicBool::new(false));
    let server_ip = |i: usize| -> Ipv4Addr {
        let a = added[i].4["ips"][0]["address"].as_str().expect("address");
        a.trim_end_matches("/32").parse().expect("IPv4")
    };
    let server = SocketAddr::new(server_ip(0).into(), 7000);
    let _server = tcp_server(&added[0].0, server, &stop, echo);
    for (ns, ..) in &added[1..] {
        wait_for_within(
            "TCP between pods through the dataplane",
            Duration::from_secs(30),
            || tcp_echo(ns, server, Duration::from_secs(1)).is_ok(),
        );
    }
    for (.., host_if) in &added {
        assert!(
            h.dataplane_log()
                .contains(&format!("{host_if}: added at run time")),
            "{host_if} added without a restart:\n{}",
            h.dataplane_log()
        );
    }
    let status = dataplane_request(&h.socket, &json!({"op": "status"}));
    assert!(
        status["workers"][0]["tx_packets"].as_u64() > Some(0),
        "{status}"
    );
    stop.store(true, Ordering::Relaxed);

    // CHECK passes with the ADD's result, and fails once the pod lost its address.
    for (_, path, id, args, result, _) in &added {
        let mut conf = h.conf("1.1.0");
        conf["prevResult"] = result.clone();
        let r = invoke(&h.node, PLUGIN, &cni_env("CHECK", id, path, args), &conf);
        assert_eq!((r.code, r.raw.as_str()), (0, ""), "CHECK");
    }
    {
        let (ns, path, id, args, result, _) = &added[2];
        let address = result["ips"][0]["address"].as_str().expect("address");
        ip_in(ns, &["addr", "del", address, "dev", "eth0"]);
        let mut conf = h.conf("1.1.0");
        conf["prevResult"] = result.clone();
        let r = invoke(&h.node, PLUGIN, &cni_env("CHECK", id, path, args), &conf);
        assert_ne!(r.code, 0, "CHECK after the address was removed");
        assert!(
            r.out["code"].as_u64().is_some() && r.out["msg"].is_string(),
            "{}",
            r.raw
        );
    }

    // DEL: veth, endpoint and allocation go; a second DEL succeeds.
    let (_, path, id, args, result, host_if) = &added[0];
    let mut conf = h.conf("1.1.0");
    conf["prevResult"] = result.clone();
    for round in 0..2 {
        let r = invoke(&h.node, PLUGIN, &cni_env("DEL", id, path, args), &conf);
        assert_eq!((r.code, r.raw.as_str()), (0, ""), "DEL round {round}");
    }
    assert!(!h.node_has_link(host_if), "{host_if} removed");
    assert!(
        h.keys("endpoints/shop/web-1").is_empty(),
        "endpoint removed"
    );
    wait_for_within(
        "the dataplane stops serving it",
        Duration::from_secs(20),
        || h.dataplane_log().contains(&format!("{host_if}: removed")),
    );
    let ip = result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .trim_end_matches("/32")
        .to_string();
    wait_for_within(
        "the agent releases the address",
        Duration::from_secs(20),
        || !h.keys("ipam/").keys().any(|k| k.ends_with(&ip)),
    );

    // DEL after the namespace is gone (and without CNI_NETNS) still releases everything.
    let (ns2, _, id2, args2, _, host_if2) = added[1].clone();
    testkit::run_ip(&["netns", "del", &ns2]).expect("delete the pod's namespace");
    let env: Vec<(&str, &str)> = cni_env("DEL", &id2, "", &args2)
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    let r = invoke(&h.node, PLUGIN, &env, &h.conf("1.1.0"));
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "DEL without a namespace");
    assert!(!h.node_has_link(&host_if2));
    assert!(h.keys("endpoints/shop/web-2").is_empty());

    // Errors: the spec's codes in its error object.
    let missing = format!("/run/netns/{}-missing", h.node);
    let r = invoke(
        &h.node,
        PLUGIN,
        &cni_env("ADD", "gone1", &missing, ""),
        &h.conf("1.1.0"),
    );
    assert_eq!(
        (r.code, r.out["code"].as_u64()),
        (1, Some(3)),
        "missing netns: {}",
        r.raw
    );
    assert!(
        r.out["msg"].is_string() && r.out["cniVersion"] == "1.1.0",
        "{}",
        r.raw
    );
    let (_, path4) = h.container("bad");
    let r = invoke(
        &h.node,
        PLUGIN,
        &cni_env("ADD", "bad1", &path4, ""),
        &json!("{\"cniVersion\":"),
    );
    assert_eq!(r.out["code"].as_u64(), Some(6), "malformed: {}", r.raw);
    let mut conf = h.conf("1.1.0");
    conf["etcdEndpoints"] = json!([]);
    let r = invoke(&h.node, PLUGIN, &cni_env("ADD", "bad2", &path4, ""), &conf);
    assert_eq!(r.out["code"].as_u64(), Some(7), "invalid: {}", r.raw);
    let r = invoke(
        &h.node,
        PLUGIN,
        &cni_env("ADD", "bad3", &path4, ""),
        &h.conf("7.0.0"),
    );
    assert_eq!(r.out["code"].as_u64(), Some(1), "version: {}", r.raw);
    assert!(!h.node_has_link(&control::cni::host_ifname("bad1")));
    let r = invoke(
        &h.node,
        PLUGIN,
        &cni_env(
            "ADD",
            "bad4",
            &path4,
            "K8S_POD_NAME=x;K8S_POD_SERVICE_ACCOUNT=Not_Valid",
        ),
        &h.conf("1.1.0"),
    );
    assert_eq!(
        r.out["code"].as_u64(),
        Some(7),
        "service account: {}",
        r.raw
    );
    assert!(!h.node_has_link(&control::cni::host_ifname("bad4")));

    // VERSION and STATUS.
    let r = invoke(
        &h.node,
        PLUGIN,
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.1.0"}),
    );
    assert_eq!(r.code, 0);
    assert!(r.out["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.contains(&json!("1.1.0"))));
    let r = invoke(
        &h.node,
        PLUGIN,
        &[("CNI_COMMAND", "STATUS")],
        &h.conf("1.1.0"),
    );
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "STATUS");

    // GC: a leaked endpoint (its container no longer listed) goes, db-1 (listed) stays.
    let (_, leak_path) = h.container("leak");
    let leak_id = format!("1eak{}", std::process::id());
    let leak_args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=leaked";
    let r = invoke(
        &h.node,
        PLUGIN,
        &cni_env("ADD", &leak_id, &leak_path, leak_args),
        &h.conf("1.1.0"),
    );
    assert_eq!(r.code, 0, "ADD leaked: {}", r.raw);
    let mut gc = h.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": added[2].2, "ifname": "eth0"}]);
    let r = invoke(&h.node, PLUGIN, &[("CNI_COMMAND", "GC")], &gc);
    assert_eq!((r.code, r.raw.as_str()), (0, ""), "GC");
    assert!(
        h.keys("endpoints/shop/leaked").is_empty(),
        "the leaked endpoint is collected"
    );
    assert!(!h.node_has_link(&control::cni::host_ifname(&leak_id)));
    assert_eq!(
        h.keys("endpoints/shop/db-1").len(),
        1,
        "a listed endpoint stays"
    );
}

/// Debian's `ptp` with `host-local`, through the same harness: its result has the same shape
/// (the fields both fill), and its DEL is idempotent as ours is.
#[test]
fn ptp_and_host_local_compared_where_they_overlap() {
    if skip() {
        return;
    }
    if !Path::new(PTP).exists() {
        eprintln!("SKIPPED: {PTP} is missing; install Debian's containernetworking-plugins");
        return;
    }
    let mut h = Harness::start("p", None);
    let dir = h.dir.join("host-local");
    let network = format!("ptp-{}", h.node);
    let conf = |version: &str| {
        json!({
            "cniVersion": version,
            "name": network,
            "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.94.0.0/24", "dataDir": dir},
        })
    };
    let (_, path) = h.container("ptp");
    let id = format!("p7p{}", std::process::id());
    let r = invoke(
        &h.node,
        PTP,
        &cni_env("ADD", &id, &path, ""),
        &conf("1.0.0"),
    );
    assert_eq!(r.code, 0, "ptp ADD: {}", r.raw);
    assert_spec_result(&r.out, "1.0.0", &path);
    let ours = {
        let (_, p) = h.container("ours");
        let our_id = format!("0urs{}", std::process::id());
        let r = invoke(
            &h.node,
            PLUGIN,
            &cni_env("ADD", &our_id, &p, "K8S_POD_NAME=ours"),
            &h.conf("1.0.0"),
        );
        assert_eq!(r.code, 0, "ADD: {}", r.raw);
        assert_spec_result(&r.out, "1.0.0", &p);
        (our_id, p, r.out)
    };
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.retain(|k| k != "dns");
        k.sort();
        k
    };
    eprintln!("ptp's result: {}\nours: {}", r.out, ours.2);
    let theirs = keys(&r.out);
    assert!(
        theirs.iter().all(|k| keys(&ours.2).contains(k)),
        "every top-level field ptp fills, ours fills too: {theirs:?}"
    );
    assert_eq!(
        keys(&r.out["ips"][0]),
        keys(&ours.2["ips"][0]),
        "the same IP fields"
    );
    for round in 0..2 {
        let mut c = conf("1.0.0");
        c["prevResult"] = r.out.clone();
        let d = invoke(&h.node, PTP, &cni_env("DEL", &id, &path, ""), &c);
        assert_eq!(d.code, 0, "ptp DEL round {round}: {}", d.raw);
        let d = invoke(
            &h.node,
            PLUGIN,
            &cni_env("DEL", &ours.0, &ours.1, "K8S_POD_NAME=ours"),
            &h.conf("1.0.0"),
        );
        assert_eq!(d.code, 0, "our DEL round {round}: {}", d.raw);
    }
}
