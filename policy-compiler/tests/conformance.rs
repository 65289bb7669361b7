//! The network-policy conformance model: every case in `tests/conformance/` is compiled and
//! every pod pair is traced on 80/TCP, 81/TCP, 80/UDP and 81/UDP through the compiled maps;
//! the verdicts must equal the hand-written truth tables (see `tests/conformance/README.md`).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use policy_compiler::trace::{parse_port_proto, trace, Probe};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    policies: Vec<serde_json::Value>,
    tables: Vec<Table>,
    #[serde(default)]
    probes: Vec<ExtraProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    ports: Vec<String>,
    table: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraProbe {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    verdict: String,
}

const PORTS: [&str; 4] = ["80/TCP", "81/TCP", "80/UDP", "81/UDP"];

/// Parses a truth table: header `from\to dst...`, then `src cell...` with `.` allowed and `X`
/// denied. Returns (src, dst) -> allowed.
fn parse_table(text: &str) -> BTreeMap<(String, String), bool> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().skip(1).collect();
    assert_eq!(header.len(), 9, "header must name the 9 pods");
    let mut out = BTreeMap::new();
    let mut rows = 0;
    for line in lines {
        let mut cells = line.split_whitespace();
        let src = cells.next().unwrap();
        let cells: Vec<&str> = cells.collect();
        assert_eq!(cells.len(), 9, "row {src} must have 9 cells");
        for (dst, cell) in header.iter().zip(cells) {
            let allowed = match cell {
                "." => true,
                "X" => false,
                other => panic!("bad cell {other:?} in row {src}"),
            };
            out.insert((src.to_string(), dst.to_string()), allowed);
        }
        rows += 1;
    }
    assert_eq!(rows, 9, "a table has 9 rows");
    out
}

fn run_case(path: &Path, cluster_text: &str) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let case: Case = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let cluster = parse_cluster("cluster.yaml", cluster_text).unwrap();
    let policies_json = serde_json::to_string(&case.policies).unwrap();
    let parsed = parse_policies(&name, &policies_json).unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.warnings.is_empty(), "{name}: {:?}", parsed.warnings);
    let engine = PolicyEngine::build(&cluster, &parsed.policies).unwrap();

    let mut failures = Vec::new();
    let mut covered: BTreeMap<&str, usize> = BTreeMap::new();
    for table in &case.tables {
        let expected = parse_table(&table.table);
        for port in &table.ports {
            *covered.entry(port.as_str()).or_default() += 1;
            let (port_no, proto) = parse_port_proto(port).unwrap();
            for ((src, dst), allowed) in &expected {
                let probe = Probe {
                    from: src.clone(),
                    to: dst.clone(),
                    port: port_no,
                    protocol: proto,
                };
                let r = trace(&engine, &probe).unwrap();
                if r.allowed() != *allowed {
                    failures.push(format!(
                        "{name} ({}): {src} -> {dst} {port}: expected {}, got {}\n    egress: {:?}\n    ingress: {:?}",
                        case.description,
                        if *allowed { "allowed" } else { "denied" },
                        r.verdict,
                        r.egress,
                        r.ingress
                    ));
                }
            }
        }
    }
    for p in PORTS {
        assert_eq!(
            covered.get(p),
            Some(&1),
            "{name}: {p} must be covered by exactly one table"
        );
    }
    for p in &case.probes {
        let (port, protocol) = parse_port_proto(&format!("{}/{}", p.port, p.protocol)).unwrap();
        let probe = Probe {
            from: p.from.clone(),
            to: p.to.clone(),
            port,
            protocol,
        };
        let r = trace(&engine, &probe).unwrap();
        if r.verdict != p.verdict {
            failures.push(format!(
                "{name}: probe {} -> {} {}/{}: expected {}, got {}",
                p.from, p.to, p.port, p.protocol, p.verdict, r.verdict
            ));
        }
    }
    failures
}

#[test]
fn conformance_truth_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let cluster_text = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("cluster.yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the conformance cases, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|c| run_case(c, &cluster_text))
        .collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
