//! `flagella policy trace` end to end: the binary, its flags, output shapes and exit codes.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CLUSTER: &str = r#"
namespaces: {x: {ns: x}, y: {ns: y}, z: {ns: z}}
pods:
- {namespace: x, name: a, labels: {pod: a}, ip: 10.1.0.1, ports: [{name: http, containerPort: 80}]}
- {namespace: x, name: b, labels: {pod: b}, ip: 10.1.0.2}
- {namespace: x, name: c, labels: {pod: c}, ip: 10.1.0.3}
- {namespace: y, name: a, labels: {pod: a}, ip: 10.2.0.1}
- {namespace: y, name: b, labels: {pod: b}, ip: 10.2.0.2}
- {namespace: y, name: c, labels: {pod: c}, ip: 10.2.0.3}
- {namespace: z, name: a, labels: {pod: a}, ip: 10.3.0.1}
- {namespace: z, name: b, labels: {pod: b}, ip: 10.3.0.2}
- {namespace: z, name: c, labels: {pod: c}, ip: 10.3.0.3}
nodes: [{name: n1, ip: 192.168.0.1}]
"#;

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: http}]
"#;

const DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-world, namespace: y}
spec:
  endpointSelector: {}
  egressDeny:
  - toEntities: [world]
  egress:
  - toEntities: [all]
  - toFQDNs: [{matchName: example.com}]
"#;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = testkit::private_dir(&format!("flagella-trace-{name}-"));
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flagella(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flagella"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn single_flow_text_and_json() {
    let d = Dir::new("single");
    let (c, p) = (d.file("c.yaml", CLUSTER), d.file("p.yaml", POLICIES));
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        &c,
        "--from",
        "y/b",
        "--to",
        "x/a",
        "--port",
        "80/TCP",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("y/b -> x/a 80/TCP: ALLOWED"), "{text}");
    assert!(
        text.contains("NetworkPolicy x/a-from-y spec.ingress[0]"),
        "{text}"
    );

    // Denied is still exit code 0.
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        &c,
        "--from",
        "z/b",
        "--to",
        "10.1.0.1",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let r = &v[0];
    assert_eq!(r["verdict"], "denied");
    assert_eq!(r["protocol"], "TCP");
    assert_eq!(r["ingress"]["reason"], "default-deny");
    assert_eq!(r["ingress"]["endpoint"], "x/a");
    assert_eq!(r["ingress"]["enforced"], true);
    assert_eq!(r["egress"]["enforced"], false);
    assert_eq!(r["egress"]["decision"], "allowed");
}

const ICMP_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress:
  - fromEndpoints: [{}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
"#;

#[test]
fn icmp_types_with_protocol_and_icmp_type() {
    let d = Dir::new("icmp");
    let (c, p) = (d.file("c.yaml", CLUSTER), d.file("p.yaml", ICMP_POLICY));
    let trace = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "trace",
            "--policies",
            &p,
            "--cluster",
            &c,
            "--from",
            "x/a",
            "--to",
            "x/b",
        ];
        args.extend_from_slice(extra);
        flagella(&args)
    };
    for (extra, verdict) in [
        (
            &["--protocol", "icmp", "--icmp-type", "8"][..],
            "8/ICMP: ALLOWED",
        ),
        (&["--icmp-type", "EchoRequest"][..], "8/ICMP: ALLOWED"),
        (
            &["--protocol", "icmpv6", "--icmp-type", "EchoRequest"][..],
            "128/ICMPv6: ALLOWED",
        ),
        (
            &["--protocol", "icmp", "--icmp-type", "13"][..],
            "13/ICMP: DENIED",
        ),
        (&["--port", "Timestamp/ICMP"][..], "13/ICMP: DENIED"),
        (&["--port", "8/TCP"][..], "8/TCP: DENIED"),
    ] {
        let o = trace(extra);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(
            text.starts_with(&format!("x/a -> x/b {verdict}")),
            "{extra:?}: {text}"
        );
    }
    let o = trace(&["--protocol", "tcp", "--icmp-type", "8"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("icmp or icmpv6"), "{}", stderr(&o));
    let o = trace(&["--icmp-type", "Bogus"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an ICMP type"), "{}", stderr(&o));
}

#[test]
fn several_policy_files_and_warnings() {
    let d = Dir::new("multi");
    let (c, p, q) = (
        d.file("c.yaml", CLUSTER),
        d.file("p.yaml", POLICIES),
        d.file("q.yaml", DENY),
    );
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--policies",
        &q,
        "--cluster",
        &c,
        "--from",
        "y/a",
        "--to",
        "8.8.8.8",
        "--port",
        "443/TCP",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning:") && stderr(&o).contains("spec.egress[1].toFQDNs"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["verdict"], "denied");
    assert_eq!(v[0]["egress"]["reason"], "deny-rule");
    assert_eq!(v[0]["egress"]["rules"][0]["policy"], "y/no-world");
    assert_eq!(v[0]["egress"]["rules"][0]["rule"], "spec.egressDeny[0]");
    assert_eq!(v[0]["egress"]["rules"][0]["kind"], "CiliumNetworkPolicy");
}

#[test]
fn bad_input_exits_non_zero_with_a_useful_message() {
    let d = Dir::new("bad");
    let c = d.file("c.yaml", CLUSTER);
    let bad = d.file(
        "bad.yaml",
        &POLICIES.replace("podSelector: {matchLabels", "podSelectr: {matchLabels"),
    );
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &bad,
        "--cluster",
        &c,
        "--from",
        "y/b",
        "--to",
        "x/a",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("bad.yaml, document 1 (NetworkPolicy x/a-from-y)")
            && e.contains("spec.podSelectr"),
        "{e}"
    );

    let p = d.file("p.yaml", POLICIES);
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        &c,
        "--from",
        "y/q",
        "--to",
        "x/a",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`y/q`"), "{}", stderr(&o));

    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        "/nonexistent/c.yaml",
        "--from",
        "y/a",
        "--to",
        "x/a",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read the --cluster file"),
        "{}",
        stderr(&o)
    );

    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        &c,
        "--from",
        "y/a",
        "--to",
        "x/a",
        "--port",
        "300/ICMP",
    ]);
    assert_eq!(o.status.code(), Some(1), "an ICMP type is at most 255");

    // Usage errors are clap's exit code 2.
    let o = flagella(&["policy", "trace", "--policies", &p, "--cluster", &c]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_explains_the_command() {
    let o = flagella(&["policy", "trace", "--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for needle in [
        "--policies",
        "--cluster",
        "--probes",
        "namespace/pod",
        "EXIT STATUS",
        "EXAMPLES",
    ] {
        assert!(h.contains(needle), "help lacks {needle}:\n{h}");
    }
}

fn probes_file(dir: &Dir, n: usize) -> String {
    let ends = [
        "x/a",
        "x/b",
        "x/c",
        "y/a",
        "y/b",
        "y/c",
        "z/a",
        "z/b",
        "z/c",
        "8.8.8.8",
        "192.168.0.1",
    ];
    let probes: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "from": ends[i % ends.len()],
                "to": ends[(i / ends.len()) % 9],
                "port": 80 + (i % 3) as u16,
                "protocol": if i % 2 == 0 { "TCP" } else { "UDP" },
            })
        })
        .collect();
    dir.file("probes.json", &serde_json::to_string(&probes).unwrap())
}

#[test]
fn five_thousand_probes_in_well_under_a_second() {
    let d = Dir::new("many");
    let (c, p, q) = (
        d.file("c.yaml", CLUSTER),
        d.file("p.yaml", POLICIES),
        d.file("q.yaml", DENY),
    );
    let probes = probes_file(&d, 5000);
    let start = Instant::now();
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--policies",
        &q,
        "--cluster",
        &c,
        "--probes",
        &probes,
        "-o",
        "json",
    ]);
    let took = start.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 5000);
    // In the probes' order.
    assert_eq!(list[1]["from"], "x/b");
    assert_eq!(list[1]["protocol"], "UDP");
    // Generous for a debug build on a shared machine; a release build takes milliseconds.
    assert!(took < Duration::from_secs(5), "5000 probes took {took:?}");
    assert!(Path::new(&probes).exists());
}
