//! Smoke test of `flagella-bench policy --quick` on a tiny scenario (flagella and iptables-nft,
//! 0 and 1000 entries): the report exists with a found rate and a flat-out rate for flagella
//! and the baseline at each entry count, the plots are PNGs, and nothing it made is left
//! behind (namespace, process, XDP program). Not a timed assertion: any non-zero rate passes.
//! Needs root, AF_XDP, iptables-nft-restore, ethtool and flagella-dataplane (skipped with the
//! reason otherwise; a failure under `CI=true`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The dataplane binary, or why this test cannot run here.
fn preflight() -> Result<PathBuf, String> {
    common::root_with_afxdp()?;
    for (program, package) in [("iptables-nft-restore", "iptables"), ("ethtool", "ethtool")] {
        if !have(program) {
            return Err(format!(
                "{program} is missing: scripts/install-deps.sh {package}"
            ));
        }
    }
    common::dataplane_binary()
}

/// Namespaces whose names start with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// PIDs of processes whose executable is `exe` or whose command line mentions `needle`.
fn processes(exe: &Path, needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let by_exe = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            by_exe || String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[test]
fn quick_run_reports_flagella_and_a_baseline_and_leaves_nothing_behind() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true: this test must run, but {why}")
        }
        Err(why) => {
            return eprintln!(
                "skipped: {why} (this test needs root, AF_XDP, iptables, ethtool and flagella-dataplane)"
            );
        }
    };
    let me = PathBuf::from(env!("CARGO_BIN_EXE_flagella-bench"));
    let out = std::env::temp_dir().join(format!("fbp-test-{}", std::process::id()));
    let child = Command::new(&me)
        .args(["policy", "--quick", "--targets", "flagella,iptables-nft"])
        .args(["--idle-sleep-us", "100", "--dataplane"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .spawn()
        .expect("start flagella-bench policy");
    let pid = child.id();
    let status = child
        .wait_with_output()
        .expect("wait for flagella-bench")
        .status;

    let prefix = format!("fbp-{pid}-");
    assert_eq!(namespaces(&prefix), Vec::<String>::new(), "namespaces left");
    assert_eq!(processes(&me, &prefix), Vec::<u32>::new(), "processes left");
    assert_eq!(
        bench::xdpsink::loaded_drop_programs().expect("list BPF programs"),
        0,
        "XDP_DROP programs left"
    );
    assert!(status.success(), "flagella-bench policy failed: {status}");

    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report.json is JSON");
    assert!(number(&report["ceiling"]["median"]) > 0.0, "{json}");
    for target in ["flagella", "iptables-nft"] {
        for entries in [0, 1000] {
            let point = report["points"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["target"] == target && p["entries"] == entries)
                })
                .unwrap_or_else(|| panic!("no point for {target} with {entries} entries"));
            assert!(
                point["error"].is_null(),
                "{target}/{entries}: {}",
                point["error"]
            );
            assert!(
                number(&point["rate"]["median"]) > 0.0,
                "{target}/{entries}: {point}"
            );
            assert!(
                number(&point["flat_out"]["median"]) > 0.0,
                "{target}/{entries}: {point}"
            );
            let latency = &point["latency"][0]["latency"];
            assert!(
                number(&latency["p50_ns"]) > 0.0,
                "{target}/{entries}: {point}"
            );
            assert!(number(&latency["p999_ns"]) >= number(&latency["p50_ns"]));
            let cost = &point["cost"];
            assert!(
                number(&cost["delivered"]) > 0.0,
                "{target}/{entries}: {cost}"
            );
            // Not `sent >= delivered`: the XDP sink also counts the kernel's own strays
            // (IPv6 router solicitations), as the loss arithmetic does.
            assert!(number(&cost["sent"]) > 0.0, "{target}/{entries}: {cost}");
            if target == "flagella" {
                assert!(number(&cost["flagella"]["rx_packets"]) > 0.0, "{cost}");
                let worker = cost["threads"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["thread"] == "flagella worker-*"))
                    .unwrap_or_else(|| panic!("no worker CPU figure: {cost}"));
                // The worker spins: it is charged ticks in some mode during the trials.
                assert!(
                    number(&worker["user_ns_per_packet"]) + number(&worker["kernel_ns_per_packet"])
                        > 0.0,
                    "{cost}"
                );
            }
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("| flagella | 1000 |"), "{md}");
    assert!(md.contains("| iptables-nft | 1000 |"), "{md}");
    assert!(md.contains("## Loss and CPU per point"), "{md}");
    for png in ["throughput.png", "latency.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{png} is not a PNG"
        );
        assert!(bytes.len() > 10_000, "{png} is nearly empty");
    }
    std::fs::remove_dir_all(&out).expect("remove the report directory");
}
