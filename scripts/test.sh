#!/usr/bin/env bash
# The test command (README and CI): formatting, lints, every unit/property/integration test, and
# a short run of every fuzz target's seed corpus. Installs what it needs first.
# Budget: under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "install dependencies"
# clang/llvm/libelf/zlib/pkg-config/m4: the XDP program and libxdp-sys (xsk-rs); libpcap-dev:
# libxdp's configure script refuses to run without pcap headers; protobuf: etcd-client's build;
# etcd-server: the real etcd the control tests start on loopback; iputils-ping: `ping` between
# pods in dataplane/tests/daemon.rs; tshark (dumpcap) and ethtool: control/tests/cluster.rs decodes
# the tunnel frames and sets up a Linux VXLAN/Geneve device as a fourth node; curl: scrapes
# /metrics in dataplane/tests/daemon.rs; prometheus (promtool too): control/tests/observability.rs
# checks both /metrics endpoints with `promtool check metrics` and scrapes the dataplane with a
# real Prometheus server; strace and python3: scripts/systemd/check-syscalls.sh;
# containernetworking-plugins: control/tests/cni.rs compares flagella-cni with Debian's ptp;
# iptables: bench/tests/ingress.rs loads kube-proxy's rules as the baseline; nftables and
# fonts-dejavu-core: `flagella-bench policy` (bench/tests/policy.rs) loads an nftables set and
# draws its PNG plots' text with DejaVu Sans.
scripts/install-deps.sh clang llvm libelf-dev zlib1g-dev pkg-config m4 libpcap-dev iputils-ping \
  protobuf-compiler libprotobuf-dev etcd-server tshark ethtool curl prometheus strace python3 \
  containernetworking-plugins iptables nftables fonts-dejavu-core

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
# --all-features: dataplane's `afxdp` (AF_XDP I/O and its root-only integration test) too.
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "systemd units (systemd-analyze verify)"
scripts/systemd/verify.sh

step "cargo test"
cargo test --workspace --all-features --locked

step "systemd: the dataplane's system calls stay within its unit's SystemCallFilter="
# Uses target/debug/flagella-dataplane, built by the tests above.
scripts/systemd/check-syscalls.sh

# fuzz/ is its own workspace (see fuzz/README.md). On stable, without cargo-fuzz: the targets
# compile as replay tools and tests/seeds.rs runs every seed plus pseudo-random inputs through
# every fuzz body.
step "fuzz targets: fmt, clippy, seeds and random inputs"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
cargo test --manifest-path fuzz/Cargo.toml --locked

step "done"
