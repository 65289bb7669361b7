//! Compile time and map memory for 1k / 10k / 50k pods with 1k policies, and the delta time for
//! adding one pod and for changing one policy at 50k pods.
//!
//! Synthetic cluster: 50 namespaces, pods labelled `app=app<i % 200>`; policy j (in namespace
//! `ns<j % 50>`) selects `app<j % 200>` and allows ingress from `app<(j+1) % 200>` of the same
//! namespace on 80/TCP plus from 10.<j % 200>.0.0/16 on 443/TCP.
//! Run: `cargo bench -p policy-compiler --bench compile`.
#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a bug in the setup

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use policy_compiler::cluster::{Cluster, Pod};
use policy_compiler::labels::Labels;
use policy_compiler::model::Policy;
use policy_compiler::{parse_policies, PolicyEngine};

const NAMESPACES: usize = 50;
const APPS: usize = 200;

fn pod(i: usize) -> Pod {
    Pod {
        namespace: format!("ns{}", i % NAMESPACES),
        name: format!("pod{i}"),
        labels: [("app", format!("app{}", i % APPS))].into_iter().collect(),
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1)),
        ports: Vec::new(),
        node: None,
        service_account: None,
    }
}

fn cluster(pods: usize) -> Cluster {
    Cluster {
        namespaces: (0..NAMESPACES)
            .map(|n| (format!("ns{n}"), Labels::new()))
            .collect(),
        pods: (0..pods).map(pod).collect(),
        nodes: Vec::new(),
    }
}

fn policy_text(j: usize, port: u16) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{j}, namespace: ns{}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}]\n    ports: [{{port: {port}}}]\n  - from: [{{ipBlock: {{cidr: 10.{}.0.0/16}}}}]\n    ports: [{{port: 443}}]\n",
        j % NAMESPACES,
        j % APPS,
        (j + 1) % APPS,
        j % APPS
    )
}

fn policies(n: usize) -> Vec<Policy> {
    let text: String = (0..n).map(|j| policy_text(j, 80)).collect();
    parse_policies("bench.yaml", &text).unwrap().policies
}

fn map_bytes(e: &PolicyEngine) -> (usize, usize) {
    e.endpoints().fold((0, 0), |(entries, bytes), (_, ep)| {
        (
            entries + ep.ingress.map.len() + ep.egress.map.len(),
            bytes + ep.ingress.map.approx_bytes() + ep.egress.map.approx_bytes(),
        )
    })
}

fn full_compile(c: &mut Criterion) {
    let pols = policies(1000);
    let mut g = c.benchmark_group("full_compile_1k_policies");
    g.sample_size(10);
    for pods in [1_000, 10_000, 50_000] {
        let cl = cluster(pods);
        // Report memory once (criterion measures time only).
        let start = Instant::now();
        let e = PolicyEngine::build(&cl, &pols).unwrap();
        let (entries, bytes) = map_bytes(&e);
        eprintln!(
            "{pods} pods, 1000 policies: first build {:?}, {entries} map entries, ~{} KiB of maps",
            start.elapsed(),
            bytes / 1024
        );
        if pods <= 10_000 {
            g.bench_function(format!("{pods}_pods"), |b| {
                b.iter(|| black_box(PolicyEngine::build(&cl, &pols).unwrap()))
            });
        }
    }
    g.finish();
}

fn deltas(c: &mut Criterion) {
    let pols = policies(1000);
    let cl = cluster(50_000);
    let base = PolicyEngine::build(&cl, &pols).unwrap();
    let mut g = c.benchmark_group("delta_at_50k_pods");
    g.sample_size(20);
    let mut e = base;
    let mut next = 50_000;
    g.bench_function("add_one_pod", |b| {
        b.iter(|| {
            e.upsert_pod(pod(next)).unwrap();
            next += 1;
            black_box(e.commit())
        })
    });
    let mut flip = false;
    g.bench_function("change_one_policy", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                let port = if flip { 8080 } else { 80 };
                parse_policies("p.yaml", &policy_text(7, port))
                    .unwrap()
                    .policies
                    .remove(0)
            },
            |p| {
                e.upsert_policy(p).unwrap();
                black_box(e.commit())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, full_compile, deltas);
criterion_main!(benches);
