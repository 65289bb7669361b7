#!/usr/bin/env bash
# Checks that flagella-dataplane needs no system call outside its unit's SystemCallFilter=
# (scripts/systemd/flagella-dataplane.service): runs the daemon under `strace -f` in namespaces
# this script creates (a pod veth and an uplink veth with a default route, so the next-hop
# thread, the uplink program's maps and core pinning all run), sends it control requests (status,
# local_node.set, node.upsert, endpoint.upsert, a conntrack dump), scrapes /metrics, sends pod
# traffic, stops it with SIGTERM, then compares every system call it made with the filter's
# set as `systemd-analyze syscall-filter` expands it.
#
# Usage (root): scripts/systemd/check-syscalls.sh [path/to/flagella-dataplane]
#   default: target/debug/flagella-dataplane (cargo build -p dataplane --features afxdp)
# Needs: root, ip, strace, systemd-analyze, python3, curl. Skips (exit 0) saying what is missing.
# Touches only the namespaces it creates (prefix fsc<pid>), removed on exit, pass or fail.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
daemon="${1:-$here/../../target/debug/flagella-dataplane}"
for tool in ip strace systemd-analyze python3 curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: $tool is not installed"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: needs root (namespaces, XDP)"
  exit 0
fi
[ -x "$daemon" ] || { echo "no daemon at $daemon: cargo build -p dataplane --features afxdp" >&2; exit 2; }

p="fsc$$"
tmp="$(mktemp -d)"
tracer=""
cleanup() {
  if [ -n "$tracer" ] && kill -0 "$tracer" 2>/dev/null; then
    kill -KILL "$tracer" 2>/dev/null || true
  fi
  for ns in "$p-p" "$p-r" "$p-n"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$p-n"; ip netns add "$p-p"; ip netns add "$p-r"
ip -n "$p-n" link add "${p}h" type veth peer name eth0 netns "$p-p"
ip -n "$p-n" link add "${p}u" type veth peer name eth0 netns "$p-r"
for l in "${p}h" "${p}u" lo; do ip -n "$p-n" link set "$l" up; done
ip -n "$p-n" addr add 192.168.77.1/24 dev "${p}u"
ip -n "$p-n" route add default via 192.168.77.2
ip -n "$p-r" link set eth0 up; ip -n "$p-r" addr add 192.168.77.2/24 dev eth0
ip -n "$p-p" link set eth0 up; ip -n "$p-p" addr add 10.77.0.11/32 dev eth0
ip -n "$p-p" route add default via 10.77.0.1 dev eth0 onlink
uplink_ifindex="$(ip -n "$p-n" -o link show "${p}u" | cut -d: -f1)"
pod_ifindex="$(ip -n "$p-n" -o link show "${p}h" | cut -d: -f1)"
: >"$tmp/dp.toml"

# `ip netns exec` execs in place: $! is strace, whose child is the daemon.
ip netns exec "$p-n" strace -f -qq -o "$tmp/trace" "$daemon" --config "$tmp/dp.toml" \
  --socket "$tmp/s.sock" --interface "${p}h=pod" --interface "${p}u=uplink" --core 0 \
  >"$tmp/log" 2>&1 &
tracer=$!
for _ in $(seq 100); do [ -S "$tmp/s.sock" ] && break; sleep 0.1; done
[ -S "$tmp/s.sock" ] || { cat "$tmp/log" >&2; echo "the daemon did not start" >&2; exit 1; }

python3 - "$tmp/s.sock" "$uplink_ifindex" "$pod_ifindex" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for r in [
    {"op": "status"},
    {"op": "local_node.set", "name": "n1", "underlay_ipv4": "192.168.77.1",
     "uplink_ifindex": int(sys.argv[2])},
    {"op": "node.upsert", "name": "n2", "underlay": "192.168.77.2",
     "pod_cidrs": ["10.78.0.0/24"]},
    {"op": "endpoint.upsert", "id": 1, "ifindex": int(sys.argv[3]),
     "mac": "02:00:00:00:00:01", "ipv4": "10.77.0.11", "identity": 1001},
    {"op": "dump", "table": "conntrack"},
]:
    f.write((json.dumps(r) + "\n").encode())
    f.flush()
    reply = json.loads(f.readline())
    if not reply.get("ok"):
        sys.exit(f"{r['op']}: {reply}")
EOF
ip netns exec "$p-n" curl -sf 127.0.0.1:9962/metrics >/dev/null
ip netns exec "$p-p" ping -c 2 -W 1 10.78.0.5 >/dev/null || true
dp="$(pgrep -P "$tracer" || true)"
[ -n "$dp" ] && kill -TERM "$dp"
wait "$tracer" || true
tracer=""
grep -q "stopped cleanly" "$tmp/log" || { cat "$tmp/log" >&2; echo "the daemon did not stop cleanly" >&2; exit 1; }

# The filter's set: the unit's SystemCallFilter= items, groups expanded recursively.
expand() {
  local item
  for item in "$@"; do
    case "$item" in
      @*) expand $(systemd-analyze syscall-filter "$item" | grep -v '^ *#' | sed 's/^ *//' | grep -v "^$item\$") ;;
      *) echo "$item" ;;
    esac
  done
}
filter="$(sed -n 's/^SystemCallFilter=//p' "$here/flagella-dataplane.service")"
allowed="$(expand $filter | sort -u)"
used="$(sed -n 's/^[0-9]* *\([a-z_0-9]*\)(.*/\1/p' "$tmp/trace" | sort -u)"
missing="$(comm -23 <(echo "$used") <(echo "$allowed"))"
if [ -n "$missing" ]; then
  echo "flagella-dataplane made system calls its unit's filter refuses:" $missing >&2
  echo "add them to SystemCallFilter= in scripts/systemd/flagella-dataplane.service" >&2
  exit 1
fi
echo "system calls: $(echo "$used" | wc -l) distinct, all within SystemCallFilter=$filter"
