#!/usr/bin/env bash
# The main job, on a fresh machine: install what is needed, build, then
#   1. push a node's worth of traffic through the Flagella pipeline in memory (node_demo), and
#   2. run flagella-dataplane for real: a node namespace with three pod namespaces joined by veth
#      pairs, the daemon attached to the pods' veths, configured over its control socket; show a
#      TCP connection allowed, then denied live by a policy with the drop counted, and the ARP
#      reply for the pods' gateway; then remove everything.
# Runs as root (namespaces, XDP, AF_XDP). Leaves nothing behind, even when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh must run as root: it creates network namespaces and attaches XDP programs." >&2
  echo "Run: sudo scripts/demo.sh" >&2
  exit 1
fi

header() { printf '\n==== %s\n' "$*"; }
say() { printf '  %s\n' "$*"; }

header "installing what the build needs"
# Same list as scripts/test.sh: the XDP program (clang, llvm, libelf, zlib) and libxdp (m4,
# pkg-config, pcap headers) for AF_XDP.
scripts/install-deps.sh clang llvm libelf-dev zlib1g-dev pkg-config m4 libpcap-dev
for tool in ip python3; do
  command -v "$tool" >/dev/null || { echo "demo.sh needs \`$tool\` (apt-get install iproute2 python3)" >&2; exit 1; }
done

header "building (release)"
cargo build --release --locked -p dataplane --features afxdp \
  --example node_demo --bin flagella-dataplane

header "part 1: the pipeline as a library, on frames built in memory"
target/release/examples/node_demo

# ---------------------------------------------------------------------------------------------
header "part 2: flagella-dataplane with real pods (network namespaces, AF_XDP)"

NODE="flg-demo-$$"
TMP="$(mktemp -d /tmp/flg-demo.XXXXXX)"
SOCK="$TMP/dataplane.sock"
LOG="$TMP/dataplane.log"
GATEWAY=10.80.0.1
ROUTER_MAC=02:80:00:00:00:01
PORT=8080
DAEMON_PID=""
SERVER_PID=""
NAMESPACES=()

cleanup() {
  set +e
  # Only the processes this script started, by PID.
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null
  fi
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A control-socket client: sends each JSON argument as one line, prints each reply; with
# `--get a.b.c` prints that field of the last reply instead. Exit 1 when a reply is not ok.
cat >"$TMP/ctl.py" <<'PY'
import json, socket, sys
path, args = sys.argv[1], sys.argv[2:]
field = None
if args[:1] == ["--get"]:
    field, args = args[1], args[2:]
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw")
ok = True
for req in args:
    f.write(req + "\n"); f.flush()
    reply = json.loads(f.readline()); ok = ok and reply.get("ok", False)
    if field is None:
        print("  ->", req[:150]); print("  <-", json.dumps(reply)[:150])
if field is not None:
    for key in field.split("."):
        reply = reply.get(key, 0) if isinstance(reply, dict) else 0
    print(reply)
sys.exit(0 if ok else 1)
PY
ctl() { python3 "$TMP/ctl.py" "$SOCK" "$@"; }

# A TCP client in a pod: prints what happened in one line.
connect_from() { # pod-namespace label destination
  ip netns exec "$1" python3 - "$2" "$3" "$PORT" <<'PY'
import socket, sys
label, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    s = socket.create_connection((dst, port), timeout=2)
    print(f"  {label}: connected, server said: {s.recv(100).decode().strip()!r}")
except socket.timeout:
    print(f"  {label}: no answer within 2 s (the SYN was dropped)")
except OSError as e:
    print(f"  {label}: failed: {e}")
PY
}

header "building the node: namespace $NODE and three pods"
ip netns add "$NODE"; NAMESPACES+=("$NODE")
ip -n "$NODE" link set lo up
declare -A IFINDEX MAC IP
for i in 1 2 3; do
  pod="$NODE-p$i"; host="flg$$h$i"; IP[$i]="10.80.0.1$i"
  ip netns add "$pod"; NAMESPACES+=("$pod")
  ip -n "$NODE" link add "$host" type veth peer name eth0 netns "$pod"
  ip -n "$NODE" link set "$host" up
  ip -n "$pod" link set lo up
  ip -n "$pod" link set eth0 up
  ip -n "$pod" addr add "${IP[$i]}/32" dev eth0
  ip -n "$pod" route add default via "$GATEWAY" dev eth0 onlink
  IFINDEX[$i]=$(ip netns exec "$NODE" cat "/sys/class/net/$host/ifindex")
  MAC[$i]=$(ip netns exec "$pod" cat /sys/class/net/eth0/address)
  say "pod$i: namespace $pod, eth0 ${IP[$i]}/32 (MAC ${MAC[$i]}), node side $host (ifindex ${IFINDEX[$i]}), default via $GATEWAY"
done

header "starting flagella-dataplane in $NODE"
echo "" >"$TMP/empty.toml"
ip netns exec "$NODE" target/release/flagella-dataplane --config "$TMP/empty.toml" \
  --socket "$SOCK" --interface "flg$$h1=pod" --interface "flg$$h2=pod" --interface "flg$$h3=pod" \
  2>"$LOG" &
DAEMON_PID=$!
for _ in $(seq 100); do
  [ -S "$SOCK" ] && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$LOG"; echo "the dataplane did not start" >&2; exit 1; }
  sleep 0.1
done
[ -S "$SOCK" ] || { cat "$LOG"; echo "the dataplane's control socket did not appear" >&2; exit 1; }
sed 's/^/  /' "$LOG"
say "XDP on the node's veths: $(ip -n "$NODE" -o link show | grep -c 'xdp') interface(s)"

header "configuring it over the control socket ($SOCK)"
ctl "{\"op\":\"local_node.set\",\"name\":\"demo-node\",\"router_mac\":\"$ROUTER_MAC\",\"gateway_ipv4\":\"$GATEWAY\"}"
for i in 1 2 3; do
  ctl "{\"op\":\"endpoint.upsert\",\"id\":$i,\"ifindex\":${IFINDEX[$i]},\"mac\":\"${MAC[$i]}\",\"ipv4\":\"${IP[$i]}\",\"identity\":100$i}" \
      "{\"op\":\"ipcache.upsert\",\"prefix\":\"${IP[$i]}/32\",\"identity\":100$i}"
done

header "pod1 -> pod2 TCP, no policy: allowed"
ip netns exec "$NODE-p2" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${IP[2]}', $PORT)); s.listen()
while True:
    c, peer = s.accept(); c.sendall(f'hello {peer[0]}, this is pod2\n'.encode()); c.close()
" &
SERVER_PID=$!
sleep 0.5
say "pod2 listens on ${IP[2]}:$PORT"
connect_from "$NODE-p1" "pod1 -> pod2" "${IP[2]}"

header "policy: pod2 admits pod3 on tcp/$PORT and nothing else (pod1 is now denied)"
ctl "{\"op\":\"policy.update\",\"endpoint\":2,\"direction\":\"ingress\",\"enforced\":true,\"add\":[{\"identity\":1003,\"proto\":\"tcp\",\"port\":$PORT,\"action\":\"allow\"}]}"
connect_from "$NODE-p1" "pod1 -> pod2" "${IP[2]}"
connect_from "$NODE-p3" "pod3 -> pod2" "${IP[2]}"
sleep 0.3 # status lags the workers by one counter publication
say "drops counted as policy_denied_ingress: $(ctl --get counters.drops.policy_denied_ingress '{"op":"status"}')"

header "ARP: pods resolve their gateway $GATEWAY to the dataplane's router MAC ($ROUTER_MAC)"
ip -n "$NODE-p1" neigh show "$GATEWAY" | sed 's/^/  pod1: /'

header "stopping: SIGTERM to the dataplane (PID $DAEMON_PID), then removing the namespaces"
kill -TERM "$DAEMON_PID"
status=0; wait "$DAEMON_PID" || status=$?
DAEMON_PID=""
tail -n 1 "$LOG" | sed 's/^/  /'
say "exit code $status; XDP programs left on the node's veths: $(ip -n "$NODE" -o link show | grep -c 'xdp' || true)"
kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
cleanup
NAMESPACES=()
trap - EXIT
say "namespaces removed"
header "done"
