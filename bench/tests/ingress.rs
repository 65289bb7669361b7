//! Smoke test of `flagella-bench ingress`: the whole subcommand, once, with the shortest window
//! (1 s per measurement): its table has the ceiling and every (scenario, target) row with
//! non-zero Mpps and connections per second, and nothing it made is left behind. Not a timed
//! assertion: any non-zero rate passes. Needs root, AF_XDP, iptables-restore and
//! flagella-dataplane (skipped with the reason otherwise; a failure under `CI=true`).

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The dataplane binary, or why this test cannot run here.
fn preflight() -> Result<PathBuf, String> {
    common::root_with_afxdp()?;
    let restore = Command::new("sh")
        .args(["-c", "command -v iptables-restore"])
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    if !restore.status.success() {
        return Err("iptables-restore is missing: scripts/install-deps.sh iptables".into());
    }
    common::dataplane_binary()
}

/// The rows of the Markdown table: (scenario, target, sink Mpps, conn/s).
fn rows(table: &str) -> Vec<(String, String, f64, f64)> {
    table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| scenario"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let num = |i: usize| cells.get(i).and_then(|c| c.parse().ok()).unwrap_or(0.0);
            (cells[0].to_string(), cells[1].to_string(), num(2), num(5))
        })
        .collect()
}

#[test]
fn every_scenario_and_target_has_a_rate() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true: this test must run, but {why}")
        }
        Err(why) => {
            return eprintln!(
                "skipped: {why} (this test needs root, AF_XDP, iptables and flagella-dataplane)"
            );
        }
    };
    let child = Command::new(env!("CARGO_BIN_EXE_flagella-bench"))
        .args(["ingress", "--duration", "1", "--clients", "8", "--markdown"])
        .args(["--flows", "16", "--idle-sleep-us", "100", "--dataplane"])
        .arg(&bin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flagella-bench ingress");
    let prefix = format!("fin-{}-", child.id());
    let child = child
        .wait_with_output()
        .expect("wait for flagella-bench ingress");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        child.status.success(),
        "flagella-bench ingress failed:\n{stdout}\n{stderr}"
    );

    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left behind:\n{namespaces}"
    );

    let rows = rows(&stdout);
    let mut expected = vec![("-", "ceiling")];
    for scenario in ["nodeport-dsr", "nodeport-snat", "masquerade"] {
        expected.push((scenario, "iptables"));
        expected.push((scenario, "flagella"));
    }
    for (scenario, target) in expected {
        let row = rows
            .iter()
            .find(|r| r.0 == scenario && r.1 == target)
            .unwrap_or_else(|| panic!("no row {scenario} {target} in:\n{stdout}"));
        assert!(
            row.2 > 0.0 && row.3 > 0.0,
            "{scenario} {target}: {} Mpps, {} connections/s:\n{stdout}\n{stderr}",
            row.2,
            row.3
        );
    }
    assert!(
        stdout.contains("command: ") && stdout.contains("nproc"),
        "{stdout}"
    );
}
