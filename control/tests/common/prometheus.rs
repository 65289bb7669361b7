//! A real Prometheus server for tests (Debian's `prometheus` package), and `promtool check
//! metrics`.
//!
//! The server runs inside a network namespace the test created (`ip netns exec`, which execs
//! it: the child's PID is Prometheus's), listens on that namespace's loopback, keeps its data in
//! a temporary directory, and is killed by its PID and its directory removed on drop, pass or
//! fail. Queries go through its HTTP API from a thread in the same namespace.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::net::{run_in, wait_for_within, Proc};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Why the Prometheus tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    [PROMETHEUS, PROMTOOL]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| {
            format!(
                "{p} is missing; install Debian's prometheus package (apt-get install prometheus)"
            )
        })
}

/// `promtool check metrics` on `text`: `Err` with promtool's complaints.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's result");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `GET path` on `addr` (HTTP/1.0, so the server closes): the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read {addr}{path}: {e}"))?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{addr}{path}: {head}\n{body}"));
    }
    Ok(body.to_string())
}

/// [`http_get`] from inside network namespace `ns`.
pub fn http_get_in(ns: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
    let path = path.to_string();
    run_in(ns, move || http_get(addr, &path))
}

/// Percent-encodes a PromQL query for a URL.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server in a test's namespace.
pub struct Prometheus {
    proc: Proc,
    ns: String,
    dir: PathBuf,
    pub address: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in namespace `ns` on `address` (that namespace's loopback), scraping
    /// `targets` (job name, `host:port`) every second, with its data under `dir` (created, and
    /// removed on drop). Returns once it answers `/-/ready`.
    pub fn start(ns: &str, address: SocketAddr, targets: &[(&str, &str)], dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, PROMETHEUS])
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            proc: Proc {
                child: Some(child),
                what: "prometheus",
                log,
            },
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            address,
        };
        wait_for_within(
            "prometheus answers /-/ready",
            Duration::from_secs(60),
            || {
                assert!(
                    p.proc.running(),
                    "prometheus exited:\n{}",
                    p.proc.log_text()
                );
                http_get_in(&p.ns, p.address, "/-/ready").is_ok()
            },
        );
        p
    }

    /// The value of the instant query `query`'s first series, if it has one.
    pub fn query(&self, query: &str) -> Option<f64> {
        let body = http_get_in(
            &self.ns,
            self.address,
            &format!("/api/v1/query?query={}", url_encode(query)),
        )
        .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Runs `query` through the query API: `Err` with Prometheus's error when it refuses it.
    pub fn check_query(&self, query: &str) -> Result<(), String> {
        let body = http_get_in(
            &self.ns,
            self.address,
            &format!("/api/v1/query?query={}", url_encode(query)),
        )?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        (v["status"] == "success")
            .then_some(())
            .ok_or_else(|| format!("`{query}`: {body}"))
    }

    /// Whether every target's last scrape succeeded (`up == 1`).
    pub fn targets_up(&self) -> bool {
        self.query("min(up)") == Some(1.0)
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `scripts/grafana/flagella-dashboard.json`'s queries, with Grafana's `$__rate_interval` made
/// a plain range so that Prometheus itself can run them.
pub fn dashboard_queries() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/grafana/flagella-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push(expr.replace("$__rate_interval", "1m"));
        }
    }
    queries
}

/// The `flagella_*` metric families `query` names (a histogram's `_bucket` series named by its
/// family).
pub fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("flagella_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        names.push(name.strip_suffix("_bucket").unwrap_or(name).to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric families (`# TYPE` lines) of a text exposition.
pub fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_string)
        .collect()
}
