#!/usr/bin/env bash
# The main job, on a fresh machine: install what is needed, build, and push a node's worth of
# traffic through the Flagella pipeline (allowed and denied connections with the drop counted,
# a service DNAT, a VXLAN-encapsulated packet, anti-spoofing, ARP for the gateway).
#
# Today the pipeline runs as a library on frames built in memory; the AF_XDP daemon issue grows
# this demo into real pod namespaces talking through flagella-dataplane.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building (release)"
cargo build --release --locked -p dataplane --example node_demo
echo "== running"
exec target/release/examples/node_demo
