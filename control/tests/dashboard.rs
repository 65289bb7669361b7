//! The shipped monitoring files: `scripts/prometheus/flagella.yml` passes `promtool check
//! config`, and every metric `scripts/grafana/flagella-dashboard.json` queries is one the
//! dataplane or the agent exports (rendered here from their own code; the kernel-side
//! `flagella_xdp_*` / `flagella_xsk_*` families need a running dataplane and are checked, with
//! every query run by a real Prometheus, in `observability.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::prometheus::{dashboard_queries, families, metric_names, PROMTOOL};
use control::metrics::AgentMetrics;
use dataplane::api::metrics::{render, KernelCounters};
use dataplane::api::publish::WorkerCounters;
use dataplane::pipeline::Counters;

#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let worker = WorkerCounters {
        name: "worker-0".into(),
        publications: 0,
        busy_ns: 0,
        running_ns: 0,
        io: Default::default(),
        conntrack: Default::default(),
        counters: Counters::default(),
    };
    let mut known =
        families(&render(&Counters::default(), &[worker], &KernelCounters::default()).unwrap());
    known.extend(families(&AgentMetrics::new().unwrap().render().unwrap()));
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has its panels: {queries:?}"
    );
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "`{query}` names no flagella metric");
        for name in names {
            let kernel = name.starts_with("flagella_xdp_") || name.starts_with("flagella_xsk_");
            assert!(
                kernel || known.contains(&name),
                "the dashboard queries `{name}`, which neither /metrics exports"
            );
        }
    }
}

#[test]
fn the_scrape_config_passes_promtool() {
    if !Path::new(PROMTOOL).exists() {
        eprintln!("SKIPPED: {PROMTOOL} is missing; install Debian's prometheus package");
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/prometheus/flagella.yml");
    let out = Command::new(PROMTOOL)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(out.status.success(), "promtool check config: {out:?}");
}
