#!/usr/bin/env bash
# The main job, on a fresh machine: install what is needed, build, then
#   1. push a node's worth of traffic through the Flagella pipeline in memory (node_demo);
#   2. run flagella-dataplane for real: a node namespace with three pod namespaces joined by veth
#      pairs, the daemon attached to the pods' veths, configured over its control socket; show a
#      TCP connection allowed, then denied live by a policy with the drop counted, and the ARP
#      reply for the pods' gateway; then remove everything;
#   3. run the node from etcd as a cluster would: its own etcd, flagella-dataplane and the node
#      agent flagella-control; pods created with the `flagella` CLI get their addresses from the
#      agent's IPAM; a Kubernetes NetworkPolicy imported with the CLI refuses one pod live while
#      another still connects, `flagella monitor` shows the drop live with both identities'
#      labels, `policy trace` explains the verdict, deleting the policy opens the
#      way again; then remove everything;
#   4. two nodes from etcd on an underlay bridge, each with its dataplane and agent: next hops
#      from each node's kernel, pods created the CNI way on both, a cross-node connection over
#      VXLAN, a pod reaching its own node and a node its pods (the host interface), a pod
#      reaching a server outside the cluster masqueraded to its node's address, a client
#      outside the cluster reaching a pod through a NodePort with DSR and then SNAT, a policy on
#      node 2 that refuses one node-1 pod (decided from the VNI's identity) while another
#      connects, and the hosts' own ping between the nodes working throughout;
#   5. pods from the CNI plugin: flagella-cni run as a container runtime runs it (CNI_* variables,
#      the conflist's configuration on stdin, a fresh namespace per container) on a node whose
#      dataplane started with no pod interface; the pods talk through it; a CiliumNetworkPolicy
#      with `icmps` admits ping and refuses an ICMP timestamp request (`flagella monitor`,
#      `policy trace`); a host policy (`nodeSelector`) refuses pods on one of the node's ports
#      once the node carries the label (`flagella monitor`); CNI DEL removes every trace.
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
fail() { echo "demo.sh: $*" >&2; exit 1; }

header "installing what the build needs"
# As scripts/test.sh: the XDP program (clang, llvm, libelf, zlib) and libxdp (m4, pkg-config,
# pcap headers) for AF_XDP; protobuf for etcd-client's build (flagella-control, flagella);
# etcd-server for parts 3 to 5; ping for parts 4 and 5.
scripts/install-deps.sh clang llvm libelf-dev zlib1g-dev pkg-config m4 libpcap-dev \
  protobuf-compiler libprotobuf-dev etcd-server ethtool iputils-ping
# flagella-cni (part 5) runs `ip` and `nsenter` itself, as docs/cni.md says.
for tool in ip nsenter python3; do
  command -v "$tool" >/dev/null || { echo "demo.sh needs \`$tool\` (apt-get install iproute2 util-linux python3)" >&2; exit 1; }
done

header "building (release)"
# Everything the demo runs: node_demo (part 1), flagella-dataplane (parts 2 to 5), the node
# agent flagella-control and the flagella CLI (parts 3 to 5), the CNI plugin flagella-cni (part 5).
cargo build --release --locked -p dataplane --features dataplane/afxdp -p control \
  --example node_demo --bin flagella-dataplane --bin flagella-control --bin flagella \
  --bin flagella-cni

# A TCP client in namespace NS: one line saying what happened. `--retry`: a connection that must
# work (its first SYN may wait for ARP or the agent's last push) is retried for up to 10 s.
tcp_connect() { # [--retry] NS LABEL DST-IP PORT
  local tries=1
  if [ "$1" = "--retry" ]; then tries=15; shift; fi
  ip netns exec "$1" python3 - "$2" "$3" "$4" "$tries" <<'PY'
import socket, sys, time
label, dst, port, tries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for attempt in range(tries):
    try:
        s = socket.create_connection((dst, port), timeout=2 if tries == 1 else 0.5)
        print(f"  {label}: connected, server said: {s.recv(100).decode().strip()!r}")
        sys.exit(0)
    except socket.timeout:
        error = "no answer within 2 s (the SYN was dropped)"
    except OSError as e:
        error = f"failed: {e}"
    time.sleep(0.2)
print(f"  {label}: {error}")
sys.exit(1)
PY
}
# A TCP server in namespace NS on IP:PORT that greets each client with NAME, in the background
# ($! is its PID).
tcp_hello_server() { # NS IP PORT NAME
  ip netns exec "$1" python3 -c "
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
while True:
    c, peer = s.accept(); c.sendall(f'hello {peer[0]}, this is {sys.argv[3]}\\n'.encode()); c.close()
" "$2" "$3" "$4" &
}

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
tcp_hello_server "$NODE-p2" "${IP[2]}" "$PORT" pod2
SERVER_PID=$!
sleep 0.5
say "pod2 listens on ${IP[2]}:$PORT"
tcp_connect --retry "$NODE-p1" "pod1 -> pod2" "${IP[2]}" "$PORT" || fail "pod1 -> pod2 should connect"

header "policy: pod2 admits pod3 on tcp/$PORT and nothing else (pod1 is now denied)"
ctl "{\"op\":\"policy.update\",\"endpoint\":2,\"direction\":\"ingress\",\"enforced\":true,\"add\":[{\"identity\":1003,\"proto\":\"tcp\",\"port\":$PORT,\"action\":\"allow\"}]}"
tcp_connect "$NODE-p1" "pod1 -> pod2" "${IP[2]}" "$PORT" && fail "pod1 -> pod2 should be refused"
tcp_connect --retry "$NODE-p3" "pod3 -> pod2" "${IP[2]}" "$PORT" || fail "pod3 -> pod2 should connect"
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

# ---------------------------------------------------------------------------------------------
header "part 3: the node, run from etcd as a cluster would"
say "etcd holds the cluster; flagella-control (the node agent) turns it into dataplane state;"
say "the flagella CLI writes and reads etcd. Nothing is configured on the dataplane by hand."

NODE3="flg-etcd-$$"          # the node's network namespace; pods are $NODE3-<pod>
VETH3="flge$$"               # host-side veths: ${VETH3}a, ${VETH3}b, ${VETH3}c
NODE_NAME=node-1             # the node's name in etcd (this etcd is private to the demo)
K8S_NS=shop                  # the Kubernetes namespace of the pods
POD_CIDR=10.81.0.0/24
GATEWAY3=10.81.0.1           # the first host address of the pod CIDR: the agent's gateway
UNDERLAY=192.168.81.1        # the node's address for other nodes (there is none here)
TMP=""                       # its temporary directory: daemon logs, etcd data, the socket
PIDS=()                      # processes this part started, stopped by PID in reverse order
declare -A WHAT=()           # PID -> what it is, for messages
NAMESPACES=()
FLAGELLA_BIN="$PWD/target/release/flagella"
ETCD_URL=""
IN_NODE=()                   # part 5 runs etcd, the daemons and the CLI in its node's namespace

stop_pid() { # PID: SIGTERM, SIGKILL after 5 s; only that process
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

cleanup3() {
  local status=$?
  set +e
  if [ "$status" -eq 130 ]; then
    echo "interrupted: stopping what this part started and removing its namespaces" >&2
  elif [ "$status" -ne 0 ]; then
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || echo "${WHAT[$pid]} (PID $pid) is not running any more" >&2
    done
    echo "the demo failed (exit $status); the daemons' last log lines:" >&2
    for log in "$TMP"/*.log; do
      [ -s "$log" ] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup3 EXIT
TMP="$(mktemp -d /tmp/flg-demo.XXXXXX)"
SOCK="$TMP/dataplane.sock"


# `flagella ARGS`: shows the command as a user types it, then its output, indented.
flagella() {
  printf '  $ flagella %s\n' "$*"
  "${IN_NODE[@]}" "$FLAGELLA_BIN" --etcd "$ETCD_URL" "$@" 2>&1 | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}

# Waits until `ARGS...` succeeds, at most TENTHS tenths of a second.
wait_until() { # TENTHS ARGS...
  local tries=$1
  shift
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

etcd_healthy() {
  "${IN_NODE[@]}" python3 -c '
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1] + "/health", timeout=1).read()
sys.exit(0 if b"\"health\":\"true\"" in body else 1)' "$ETCD_URL"
}

# A private etcd (parts 3 to 5): free loopback ports (in the namespace IN_NODE enters, if any),
# data in $TMP/etcd; sets ETCD_URL.
start_etcd() { # NAME
  local client_port peer_port peer_url
  read -r client_port peer_port < <("${IN_NODE[@]}" python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
  ETCD_URL="http://127.0.0.1:$client_port"
  peer_url="http://127.0.0.1:$peer_port"
  "${IN_NODE[@]}" /usr/bin/etcd --name="$1" --data-dir="$TMP/etcd" \
    --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
    --initial-cluster="$1=$peer_url" --logger=zap --log-level=warn >"$TMP/etcd.log" 2>&1 &
  PIDS+=($!)
  WHAT[$!]=etcd
  wait_until 200 etcd_healthy || fail "etcd did not become healthy within 20 s"
}

header "starting etcd (loopback, free ports, data in $TMP/etcd)"
start_etcd flg-demo
say "etcd $(/usr/bin/etcd --version | awk 'NR == 1 {print $3}') answers on $ETCD_URL (PID ${PIDS[-1]})"

header "the cluster's objects: a namespace, and this node with its pod CIDR"
flagella namespace upsert "$K8S_NS" --labels team=shop
flagella node upsert "$NODE_NAME" --underlay-ip "$UNDERLAY" --pod-cidr "$POD_CIDR"

header "the node: namespace $NODE3 and three pod namespaces, veths without addresses yet"
ip netns add "$NODE3"
NAMESPACES+=("$NODE3")
ip -n "$NODE3" link set lo up
PODS=(frontend backend reports)
declare -A VETH=([frontend]="${VETH3}a" [backend]="${VETH3}b" [reports]="${VETH3}c") PODIP
for pod in "${PODS[@]}"; do
  ns="$NODE3-$pod"
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip -n "$NODE3" link add "${VETH[$pod]}" type veth peer name eth0 netns "$ns"
  ip -n "$NODE3" link set "${VETH[$pod]}" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  say "pod $pod: namespace $ns, eth0 <-> ${VETH[$pod]} in $NODE3"
done

header "starting flagella-dataplane on the three veths, and flagella-control for $NODE_NAME"
echo "" >"$TMP/empty.toml"
ip netns exec "$NODE3" target/release/flagella-dataplane --config "$TMP/empty.toml" \
  --socket "$SOCK" --interface "${VETH3}a=pod" --interface "${VETH3}b=pod" \
  --interface "${VETH3}c=pod" 2>"$TMP/dataplane.log" &
PIDS+=($!)
WHAT[$!]=flagella-dataplane
wait_until 300 test -S "$SOCK" || fail "the dataplane's control socket did not appear"
say "flagella-dataplane (PID ${PIDS[-1]}): empty tables, control socket $SOCK"
target/release/flagella-control --etcd "$ETCD_URL" --node "$NODE_NAME" \
  --dataplane-socket "$SOCK" --status-file "$TMP/control-status.json" 2>"$TMP/control.log" &
PIDS+=($!)
WHAT[$!]=flagella-control
agent_synced() {
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
sys.exit(0 if s.get("etcd_reachable") and s.get("dataplane_connected") else 1)' \
    "$TMP/control-status.json"
}
wait_until 200 agent_synced || fail "flagella-control did not connect to etcd and the dataplane"
say "flagella-control (PID ${PIDS[-1]}): watches etcd, pushes to the dataplane"
say "daemon logs go to $TMP/{etcd,dataplane,control}.log (shown only on failure)"

header "creating the pods the CNI way: no address given, the agent's IPAM allocates one"
for pod in "${PODS[@]}"; do
  ns="$NODE3-$pod"
  ifindex=$(ip netns exec "$NODE3" cat "/sys/class/net/${VETH[$pod]}/ifindex")
  mac=$(ip netns exec "$ns" cat /sys/class/net/eth0/address)
  out=$(flagella endpoint create --node "$NODE_NAME" --namespace "$K8S_NS" --name "$pod" \
    --labels "app=$pod" --interface "${VETH[$pod]}" --ifindex "$ifindex" --mac "$mac" \
    --wait 10) || { echo "$out"; fail "flagella endpoint create $pod failed"; }
  echo "$out"
  PODIP[$pod]=$(echo "$out" | grep -oE '10\.81\.0\.[0-9]+' | tail -n 1)
  mtu=$(echo "$out" | grep -oE 'mtu [0-9]+' | awk '{print $2}')
  [[ "${PODIP[$pod]}" == 10.81.0.* ]] || fail "no address from IPAM for $pod"
  [ -n "$mtu" ] || fail "no MTU from the agent for $pod"
  ip -n "$ns" link set eth0 mtu "$mtu"
  ip -n "$ns" addr add "${PODIP[$pod]}/32" dev eth0
  ip -n "$ns" route add default via "$GATEWAY3" dev eth0 onlink
  say "  eth0 of $ns: ${PODIP[$pod]}/32, MTU $mtu, default via $GATEWAY3 (onlink)"
done

# Asks the dataplane over its control socket: `drops REASON` prints that drop counter;
# `present|enforced|open IP`: exit 0 when the endpoint with IPv4 address IP exists, when its
# ingress policy is enforced, when it is not.
cat >"$TMP/dp.py" <<'PY'
import json, socket, sys
sock, what, arg = sys.argv[1], sys.argv[2], sys.argv[3]
def ask(req):
    s = socket.socket(socket.AF_UNIX); s.connect(sock); f = s.makefile("rw")
    f.write(json.dumps(req) + "\n"); f.flush()
    return json.loads(f.readline())
if what == "drops":
    print(ask({"op": "status"})["counters"]["drops"].get(arg, 0))
    sys.exit(0)
eps = ask({"op": "dump", "table": "endpoints"}).get("entries", [])
ep = next((e for e in eps if e.get("ipv4") == arg), None)
if ep is None:
    sys.exit(1)
if what == "present":
    sys.exit(0)
enforced = ask({"op": "dump", "table": "policy", "endpoint": ep["id"]})["ingress"]["enforced"]
sys.exit(0 if enforced == (what == "enforced") else 1)
PY
dp() { python3 "$TMP/dp.py" "$SOCK" "$@"; }
DP_PY_TEXT=$(<"$TMP/dp.py") # part 4 asks its dataplanes the same way
for pod in "${PODS[@]}"; do
  wait_until 100 dp present "${PODIP[$pod]}" || fail "pod $pod never reached the dataplane"
done
say "the agent pushed the three endpoints, with their identities, to the dataplane"

header "what the cluster knows: endpoints and their security identities"
flagella endpoint list
flagella identity list

connect3() { # [--retry] FROM-POD TO-POD
  local retry=()
  if [ "$1" = "--retry" ]; then retry=(--retry); shift; fi
  tcp_connect "${retry[@]}" "$NODE3-$1" "$1 -> $2" "${PODIP[$2]}" "$PORT"
}

header "reports -> backend TCP, no policy: allowed"
tcp_hello_server "$NODE3-backend" "${PODIP[backend]}" "$PORT" backend
PIDS+=($!)
WHAT[$!]="backend's TCP server"
sleep 0.5
say "backend listens on ${PODIP[backend]}:$PORT"
connect3 --retry reports backend || fail "reports -> backend should connect before any policy"

header "policy: a Kubernetes NetworkPolicy as kubectl prints it, imported with the CLI"
say "backend admits pods labelled app=frontend on tcp/$PORT, and nothing else"
POLICY=backend-allow-frontend
cat >"$TMP/policy.yaml" <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 1
  name: $POLICY
  namespace: $K8S_NS
  resourceVersion: "4711"
  uid: 3f6c1a2e-8d4b-4c1d-9a2b-0123456789ab
spec:
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - port: $PORT
      protocol: TCP
  podSelector:
    matchLabels:
      app: backend
  policyTypes:
  - Ingress
YAML
printf '  $ flagella policy import -f - <<EOF\n'
sed 's/^/    /' "$TMP/policy.yaml"
printf '    EOF\n'
"$FLAGELLA_BIN" --etcd "$ETCD_URL" policy import -f - <"$TMP/policy.yaml" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "policy import failed"
wait_until 100 dp enforced "${PODIP[backend]}" || fail "the policy never reached the dataplane"
say "the agent compiled it and pushed backend's ingress policy to the dataplane"
# The drop, live: flagella monitor on the dataplane's monitor socket, until it has shown one.
"$FLAGELLA_BIN" --etcd "$ETCD_URL" monitor --socket "$TMP/dataplane-monitor.sock" \
  --reason policy_denied_ingress --count 1 >"$TMP/monitor.txt" 2>&1 &
MONITOR_PID=$!
PIDS+=("$MONITOR_PID")
WHAT[$MONITOR_PID]="flagella monitor"
sleep 0.5
drops_before=$(dp drops policy_denied_ingress)
if connect3 reports backend; then fail "reports -> backend should be refused by $POLICY"; fi
for _ in $(seq 50); do kill -0 "$MONITOR_PID" 2>/dev/null || break; sleep 0.1; done
printf '  $ flagella monitor --reason policy_denied_ingress --count 1\n'
sed 's/^/    /' "$TMP/monitor.txt"
kill -0 "$MONITOR_PID" 2>/dev/null && fail "flagella monitor showed no policy_denied_ingress drop"
connect3 --retry frontend backend || fail "frontend -> backend should be admitted by $POLICY"
sleep 0.3 # status lags the workers by one counter publication
drops_after=$(dp drops policy_denied_ingress)
say "the dataplane counted $((drops_after - drops_before)) drop(s) as policy_denied_ingress"

header "why is reports -> backend denied? flagella policy trace (live, from etcd)"
flagella policy trace --from "$K8S_NS/reports" --to "$K8S_NS/backend" --port "$PORT/TCP"

header "deleting the policy: reports -> backend connects again"
flagella policy delete "$K8S_NS/$POLICY"
wait_until 100 dp open "${PODIP[backend]}" || fail "the deletion never reached the dataplane"
connect3 --retry reports backend || fail "reports -> backend should connect once $POLICY is gone"

header "flagella status: etcd, the objects it holds, the dataplane's counters"
flagella status --dataplane-socket "$SOCK"

header "stopping the server, flagella-control, flagella-dataplane and etcd (by PID)"
trap - EXIT
cleanup3
left_ns=$(ip netns list | grep -c "^$NODE3" || true)
left_links=$(ip -o link show | grep -c "$VETH3" || true)
left_pids=0
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left_pids=$((left_pids + 1)); done
say "left behind: $left_ns namespaces, $left_links veths, $left_pids processes, temp dir removed"

# ---------------------------------------------------------------------------------------------
header "part 4: two nodes from etcd, joined by an underlay bridge (VXLAN)"
say "each node runs its own flagella-dataplane and flagella-control; the nodes, pods and policy"
say "come from etcd, the next hops from each node's kernel: no MAC is configured anywhere."

C4="flg-c4-$$"               # namespaces: $C4-u (underlay bridge), $C4-n1, $C4-n2, $C4-n1-<pod>...
VETH4="flgc$$"               # host-side pod veths: ${VETH4}f (frontend), ${VETH4}r, ${VETH4}b
K8S_NS4=shop
PORT4=8080
declare -A NODE_OF=([frontend]=1 [reports]=1 [backend]=2) PODVETH=([frontend]="${VETH4}f" [reports]="${VETH4}r" [backend]="${VETH4}b") PODIP4 PODMTU4
SOCK4=()                     # control socket of node N at index N

trap cleanup3 EXIT
PIDS=()
NAMESPACES=()
TMP="$(mktemp -d /tmp/flg-demo.XXXXXX)"

header "starting a fresh etcd for the cluster (loopback)"
start_etcd flg-demo4
say "etcd answers on $ETCD_URL (PID ${PIDS[-1]})"

header "the underlay: a bridge in $C4-u; node-1 is 10.84.0.1, node-2 is 10.84.0.2 (eth0 each)"
ip netns add "$C4-u"; NAMESPACES+=("$C4-u")
ip -n "$C4-u" link add br0 type bridge
ip -n "$C4-u" link set br0 up
for n in 1 2; do
  ns="$C4-n$n"
  ip netns add "$ns"; NAMESPACES+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$C4-u" link add "u$n" type veth peer name eth0 netns "$ns"
  ip -n "$C4-u" link set "u$n" master br0
  ip -n "$C4-u" link set "u$n" up
  ip -n "$ns" addr add "10.84.0.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
done
header "the world: a router (10.84.0.254 on the underlay) is each node's default gateway; behind it, 198.51.100.10 runs no Flagella"
ip netns add "$C4-r"; NAMESPACES+=("$C4-r")
ip netns add "$C4-w"; NAMESPACES+=("$C4-w")
ip -n "$C4-u" link add ur type veth peer name eth0 netns "$C4-r"
ip -n "$C4-u" link set ur master br0
ip -n "$C4-u" link set ur up
ip -n "$C4-r" link add eth1 type veth peer name eth0 netns "$C4-w"
ip -n "$C4-r" addr add 10.84.0.254/24 dev eth0
ip -n "$C4-r" addr add 198.51.100.1/24 dev eth1
for ns in "$C4-r" "$C4-w"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done
ip -n "$C4-r" link set eth1 up
ip netns exec "$C4-r" sysctl -qw net.ipv4.ip_forward=1
ip -n "$C4-w" addr add 198.51.100.10/24 dev eth0
ip -n "$C4-w" route add default via 198.51.100.1
# A veth hands on "checksum partial" TCP (the pseudo-header sum only) and the router forwards it
# as such; AF_XDP does not say so. A real host outside sends complete checksums: so does this one.
ip netns exec "$C4-w" ethtool -K eth0 tx off >/dev/null
for n in 1 2; do ip -n "$C4-n$n" route add default via 10.84.0.254; done
flagella node upsert node-1 --underlay-ip 10.84.0.1 --pod-cidr 10.85.1.0/24 --tunnel vxlan
flagella node upsert node-2 --underlay-ip 10.84.0.2 --pod-cidr 10.85.2.0/24 --tunnel vxlan
flagella namespace upsert "$K8S_NS4" --labels team=shop

header "pods: frontend and reports on node-1, backend on node-2 (veths, no address yet)"
for pod in frontend reports backend; do
  node="$C4-n${NODE_OF[$pod]}"
  ns="$node-$pod"
  ip netns add "$ns"; NAMESPACES+=("$ns")
  ip -n "$node" link add "${PODVETH[$pod]}" type veth peer name eth0 netns "$ns"
  ip -n "$node" link set "${PODVETH[$pod]}" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done

header "starting flagella-dataplane and flagella-control on each node"
echo "" >"$TMP/empty.toml"
for n in 1 2; do
  SOCK4[$n]="$TMP/node-$n.sock"
  args=(--interface eth0=uplink)
  for pod in frontend reports backend; do
    [ "${NODE_OF[$pod]}" = "$n" ] && args+=(--interface "${PODVETH[$pod]}=pod")
  done
  # --idle-sleep-us: two busy-polling nodes share this machine's cores.
  ip netns exec "$C4-n$n" target/release/flagella-dataplane --config "$TMP/empty.toml" \
    --socket "${SOCK4[$n]}" --idle-sleep-us 200 "${args[@]}" 2>"$TMP/dataplane-$n.log" &
  PIDS+=($!)
  WHAT[$!]="node-$n flagella-dataplane"
  wait_until 300 test -S "${SOCK4[$n]}" || fail "node-$n's dataplane socket did not appear"
  target/release/flagella-control --etcd "$ETCD_URL" --node "node-$n" \
    --dataplane-socket "${SOCK4[$n]}" --status-file "$TMP/control-$n.json" \
    --metrics-address off 2>"$TMP/control-$n.log" &
  PIDS+=($!)
  WHAT[$!]="node-$n flagella-control"
  say "node-$n: flagella-dataplane on eth0 (uplink) and its pods' veths; flagella-control"
done

header "creating the pods the CNI way: each node's agent allocates the address"
for pod in frontend reports backend; do
  n=${NODE_OF[$pod]}
  node="$C4-n$n"
  ns="$node-$pod"
  ifindex=$(ip netns exec "$node" cat "/sys/class/net/${PODVETH[$pod]}/ifindex")
  mac=$(ip netns exec "$ns" cat /sys/class/net/eth0/address)
  printf '  $ flagella endpoint create --node node-%s --namespace %s --name %s --labels app=%s ... --wait 10 -o json\n' \
    "$n" "$K8S_NS4" "$pod" "$pod"
  out=$("$FLAGELLA_BIN" --etcd "$ETCD_URL" endpoint create --node "node-$n" --namespace "$K8S_NS4" \
    --name "$pod" --labels "app=$pod" --interface "${PODVETH[$pod]}" --ifindex "$ifindex" \
    --mac "$mac" --wait 10 -o json) || { echo "$out"; fail "flagella endpoint create $pod failed"; }
  read -r PODIP4[$pod] PODMTU4[$pod] < <(echo "$out" | python3 -c '
import json, sys
e = json.load(sys.stdin)
print(e["ipv4"], e.get("mtu") or "")')
  [ -n "${PODMTU4[$pod]}" ] || fail "the agent gave pod $pod no MTU"
  ip -n "$ns" link set eth0 mtu "${PODMTU4[$pod]}"
  ip -n "$ns" addr add "${PODIP4[$pod]}/32" dev eth0
  ip -n "$ns" route add default via "10.85.$n.1" dev eth0 onlink
  say "pod $pod on node-$n: ${PODIP4[$pod]}, MTU ${PODMTU4[$pod]} (room for the VXLAN header)"
done

# `nexthops N`: node N's next hops as the dataplane resolved them from the kernel.
nexthops() {
  python3 - "${SOCK4[$1]}" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.write(json.dumps({"op": "dump", "table": "next_hops"}) + "\n"); f.flush()
peers = json.loads(f.readline())["next_hops"]["peers"]
if not peers:
    sys.exit(1)
for p in peers:
    print(f"    peer {p['underlay']} -> next hop MAC {p['mac']}")
PY
}
header "next hops: each dataplane asked its node's kernel (routes, neighbours), not etcd"
for n in 1 2; do
  wait_until 100 nexthops "$n" || fail "node-$n resolved no next hop"
  say "node-$n (its uplink is $(ip netns exec "$C4-n$n" cat /sys/class/net/eth0/address)):"
  nexthops "$n"
done

host_ping() {
  ip netns exec "$C4-n1" ping -c 2 -i 0.2 -W 2 10.84.0.2 >/dev/null \
    || fail "the hosts lost their network: node-1 cannot ping node-2's underlay address"
  say "node-1 -> node-2 host ping (underlay 10.84.0.2): ok ($1)"
}
header "the hosts keep their own network: the uplink's XDP program takes only tunnel traffic"
host_ping "dataplanes running"

tcp_hello_server "$C4-n2-backend" "${PODIP4[backend]}" "$PORT4" "backend on node-2"
PIDS+=($!)
WHAT[$!]="backend's TCP server"
sleep 0.5

connect4() { # [--retry] FROM-POD TO-POD
  local retry=()
  if [ "$1" = "--retry" ]; then retry=(--retry); shift; fi
  tcp_connect "${retry[@]}" "$C4-n${NODE_OF[$1]}-$1" "$1 -> $2" "${PODIP4[$2]}" "$PORT4"
}
header "cross-node TCP: frontend and reports (node-1) -> backend (node-2), over VXLAN"
connect4 --retry frontend backend || fail "frontend -> backend across nodes should connect"
connect4 --retry reports backend || fail "reports -> backend across nodes should connect"

header "pods and their node: through each node's host interface (flg_host), with the host identity"
tcp_hello_server "$C4-n1" 10.84.0.1 9000 "node-1 itself"
PIDS+=($!)
WHAT[$!]="node-1's TCP server"
sleep 0.5
tcp_connect --retry "$C4-n1-frontend" "frontend -> its node (10.84.0.1:9000)" 10.84.0.1 9000 \
  || fail "a pod should reach its own node"
tcp_connect --retry "$C4-n2" "node-2 (host) -> backend pod" "${PODIP4[backend]}" "$PORT4" \
  || fail "a node should reach its pods"

header "pods reach the world, masqueraded to their node's address (61000-65535)"
tcp_hello_server "$C4-w" 198.51.100.10 80 "a server outside the cluster"
PIDS+=($!)
WHAT[$!]="the world's TCP server"
sleep 0.5
tcp_connect --retry "$C4-n1-frontend" "frontend -> 198.51.100.10:80" 198.51.100.10 80 \
  || fail "a pod should reach the world through masquerade"
say "(the server saw node-1's address, not the pod's ${PODIP4[frontend]})"

header "a NodePort service with DSR: from outside, node-1:30080 -> the backend on node-2, which answers directly"
flagella service upsert "$K8S_NS4/backend" --frontend "10.96.0.30:$PORT4/tcp,nodeport=30080" \
  --backend "${PODIP4[backend]}:$PORT4" --mode dsr
flagella service list
tcp_connect --retry "$C4-w" "198.51.100.10 -> node-1 10.84.0.1:30080 (DSR)" 10.84.0.1 30080 \
  || fail "the NodePort should answer from outside the cluster"
say "(the backend saw the client's own address; its reply left node-2 for the client directly,"
say " from node-1's address and port 30080: Maglev on node-1 chose it, the frontend rode in an IPv4 option)"
header "the same service in SNAT mode: the backend sees node-1, replies go back through it"
flagella service upsert "$K8S_NS4/backend" --frontend "10.96.0.30:$PORT4/tcp,nodeport=30080" \
  --backend "${PODIP4[backend]}:$PORT4" --mode snat
tcp_connect --retry "$C4-w" "198.51.100.10 -> node-1 10.84.0.1:30080 (SNAT)" 10.84.0.1 30080 \
  || fail "the NodePort should answer in SNAT mode too"
host_ping "after the host path, masquerade and the NodePort"

header "policy: backend admits only app=frontend; node-2 decides, from the VNI's identity"
cat >"$TMP/policy4.yaml" <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend-allow-frontend
  namespace: $K8S_NS4
spec:
  podSelector:
    matchLabels:
      app: backend
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
YAML
"$FLAGELLA_BIN" --etcd "$ETCD_URL" policy import -f "$TMP/policy4.yaml" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "policy import failed"
printf '%s\n' "$DP_PY_TEXT" >"$TMP/dp.py"
drops_before=$(python3 "$TMP/dp.py" "${SOCK4[2]}" drops policy_denied_ingress)
refused=0
for _ in $(seq 50); do
  if ! connect4 reports backend >/dev/null; then refused=1; break; fi
  sleep 0.2
done
[ "$refused" = 1 ] || fail "reports -> backend should be refused by the policy"
connect4 reports backend || true
connect4 --retry frontend backend || fail "frontend -> backend should still connect"
sleep 0.3
drops_after=$(python3 "$TMP/dp.py" "${SOCK4[2]}" drops policy_denied_ingress)
say "node-2's dataplane counted $((drops_after - drops_before)) policy_denied_ingress drop(s)"
host_ping "after pod traffic and the policy"

header "stopping everything part 4 started (by PID) and removing its namespaces"
trap - EXIT
cleanup3
left_ns=$(ip netns list | grep -c "^$C4" || true)
left_pids=0
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left_pids=$((left_pids + 1)); done
say "left behind: $left_ns namespaces, $left_pids processes, temp dir removed"

# ---------------------------------------------------------------------------------------------
header "part 5: pods from the CNI plugin, ICMP type rules and a host policy"
say "flagella-cni is run exactly as a container runtime runs it: the CNI_* variables, the"
say "conflist's configuration on stdin, a fresh network namespace per container. It asks the"
say "node's agent (through etcd) for the pod's address; the agent has the running dataplane"
say "serve the new interface. The policies come from etcd too; nothing is pushed by hand."

N5="flg-cni-$$"              # the node's namespace (its etcd, daemons, CLI); containers: $N5-<pod>
K8S_NS5=shop
POD_CIDR5=10.86.0.0/24
UNDERLAY5=192.168.86.1       # node-1's own address (on its loopback: no other node here)
PORT5=8080                   # backend's server
HOST_OPEN=10250              # the node's port the host policy admits (a kubelet's)
HOST_CLOSED=9090             # the node's port it refuses
declare -A CID5 PODIP5       # pod -> its container id, its address

trap cleanup3 EXIT
PIDS=()
NAMESPACES=()
TMP="$(mktemp -d /tmp/flg-demo.XXXXXX)"
SOCK5="$TMP/dataplane.sock"

header "the node: namespace $N5 runs etcd, flagella-dataplane (no interface yet), flagella-control"
ip netns add "$N5"; NAMESPACES+=("$N5")
ip -n "$N5" link set lo up
ip -n "$N5" addr add "$UNDERLAY5/32" dev lo
IN_NODE=(ip netns exec "$N5") # etcd, the daemons and the CLI run on the node, as on a real one
start_etcd flg-demo5
say "etcd answers on $ETCD_URL inside $N5 (PID ${PIDS[-1]})"
flagella namespace upsert "$K8S_NS5" --labels team=shop
flagella node upsert node-1 --underlay-ip "$UNDERLAY5" --pod-cidr "$POD_CIDR5"
echo "" >"$TMP/empty.toml"
# No --interface: the pods' interfaces are added while it runs (--hot-interfaces, default 16).
"${IN_NODE[@]}" target/release/flagella-dataplane --config "$TMP/empty.toml" --socket "$SOCK5" \
  --idle-sleep-us 200 2>"$TMP/dataplane.log" &
PIDS+=($!)
WHAT[$!]=flagella-dataplane
wait_until 300 test -S "$SOCK5" || fail "the dataplane's control socket did not appear"
"${IN_NODE[@]}" target/release/flagella-control --etcd "$ETCD_URL" --node node-1 \
  --dataplane-socket "$SOCK5" --status-file "$TMP/control-status.json" 2>"$TMP/control.log" &
PIDS+=($!)
WHAT[$!]=flagella-control
wait_until 200 agent_synced || fail "flagella-control did not connect to etcd and the dataplane"
say "flagella-dataplane serves no pod interface yet; flagella-control is synced"

header "the runtime's view: flagella-cni in CNI_PATH and its conflist (scripts/cni/10-flagella.conflist)"
mkdir -p "$TMP/cni-bin"
ln -s "$PWD/target/release/flagella-cni" "$TMP/cni-bin/flagella-cni"
# The shipped conflist with this cluster's etcd and node name (what scripts/cni/install.sh
# writes to /etc/cni/net.d, kept in $TMP here); it declares the `labels` capability, so the
# runtime passes the pod's labels as runtimeConfig.
python3 - "$ETCD_URL" scripts/cni/10-flagella.conflist >"$TMP/10-flagella.conflist" <<'PY'
import json, sys
conf = json.load(open(sys.argv[2]))
plugin = conf["plugins"][0]
plugin.update({"etcdEndpoints": [sys.argv[1]], "node": "node-1"})
json.dump(conf, sys.stdout, indent=2)
PY
sed 's/^/    /' "$TMP/10-flagella.conflist"
echo

# What a runtime (containerd's libcni) does for one CNI call: the plugin named by the list's
# `type`, found in CNI_PATH, run with the CNI_* variables and its configuration on stdin (the
# list's name and cniVersion added, runtimeConfig for its declared capabilities, prevResult for
# CHECK and DEL: the ADD's result, which the runtime keeps). Prints the call and the plugin's
# answer; exits with the plugin's status.
cat >"$TMP/runtime.py" <<'PY'
import json, os, shlex, subprocess, sys
conflist, cni_path, state, command, cid, netns, pod_ns, pod, labels = sys.argv[1:10]
conf = json.load(open(conflist))
plugin = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
if plugin.get("capabilities", {}).get("labels") and labels:
    plugin["runtimeConfig"] = {"labels": dict(kv.split("=", 1) for kv in labels.split(","))}
saved = os.path.join(state, cid + ".json")
if command in ("CHECK", "DEL") and os.path.exists(saved):
    plugin["prevResult"] = json.load(open(saved))
env = {
    "PATH": os.environ["PATH"], "CNI_PATH": cni_path, "CNI_COMMAND": command,
    "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
    "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_ns};K8S_POD_NAME={pod}",
}
binary = next((os.path.join(d, plugin["type"]) for d in cni_path.split(":")
               if os.access(os.path.join(d, plugin["type"]), os.X_OK)), None)
if binary is None:
    sys.exit(f"runtime: no {plugin['type']} in CNI_PATH {cni_path}")
shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith("CNI_") and k != "CNI_PATH")
print(f"  $ {shown} {plugin['type']} <config", flush=True)
run = subprocess.run([binary], input=json.dumps(plugin), env=env, capture_output=True, text=True)
for line in run.stderr.splitlines():
    print(f"    (stderr) {line}")
if run.stdout.strip():
    out = json.loads(run.stdout)
    if command == "ADD" and run.returncode == 0:
        json.dump(out, open(saved, "w"))
        ips = ", ".join(f"{i['address']} via {i.get('gateway')}" for i in out.get("ips", []))
        ifaces = ", ".join(f"{i['name']}" + (f" in {i['sandbox']}" if i.get("sandbox") else " (host side)")
                           for i in out.get("interfaces", []))
        print(f"    result: interfaces {ifaces}; ips {ips}; mtu {out['interfaces'][-1].get('mtu')}")
    else:
        print("    " + json.dumps(out))
print(f"    exit {run.returncode}")
sys.exit(run.returncode)
PY
cni() { # COMMAND POD [LABELS]
  "${IN_NODE[@]}" python3 "$TMP/runtime.py" "$TMP/10-flagella.conflist" "$TMP/cni-bin" "$TMP" \
    "$1" "${CID5[$2]}" "/run/netns/$N5-$2" "$K8S_NS5" "$2" "${3:-}"
}

header "CNI ADD: three containers, each in a fresh network namespace"
for pod in frontend backend reports; do
  ip netns add "$N5-$pod"; NAMESPACES+=("$N5-$pod")
  CID5[$pod]=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  cni ADD "$pod" "app=$pod" || fail "CNI ADD of $pod failed"
  PODIP5[$pod]=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' \
    "$TMP/${CID5[$pod]}.json")
done
say "inside backend's namespace, as the plugin left it:"
ip -n "$N5-backend" -br addr show dev eth0 | sed 's/^/    /'
ip -n "$N5-backend" route | sed 's/^/    /'
printf '%s\n' "$DP_PY_TEXT" >"$TMP/dp.py"
dp5() { python3 "$TMP/dp.py" "$SOCK5" "$@"; }
for pod in frontend backend reports; do
  wait_until 100 dp5 present "${PODIP5[$pod]}" || fail "pod $pod never reached the dataplane"
done
say "the dataplane took the three interfaces on while running (its log):"
grep 'added at run time' "$TMP/dataplane.log" | sed 's/^/    /'
flagella endpoint list

header "pod to pod through the dataplane: frontend -> backend TCP, frontend pings reports"
tcp_hello_server "$N5-backend" "${PODIP5[backend]}" "$PORT5" backend
PIDS+=($!)
WHAT[$!]="backend's TCP server"
sleep 0.5
tcp_connect --retry "$N5-frontend" "frontend -> backend:$PORT5" "${PODIP5[backend]}" "$PORT5" \
  || fail "frontend -> backend should connect"
pod_ping() { # FROM TO: two echo requests; prints ping's summary
  local out
  out=$(ip netns exec "$N5-$1" ping -c 2 -i 0.2 -W 2 "${PODIP5[$2]}" 2>&1) || { echo "$out"; return 1; }
  say "$1 -> $2 ping: $(echo "$out" | grep 'packets transmitted')"
}
pod_ping frontend reports || fail "frontend should ping reports"

# An ICMP timestamp request (type 13) from a pod, with a raw socket: one line saying whether the
# timestamp reply (type 14) came within 1 s.
icmp_timestamp() { # FROM TO
  ip netns exec "$N5-$1" python3 - "$1 -> $2" "${PODIP5[$2]}" <<'PY'
import socket, struct, sys, time
label, dst = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.2)
msg = bytearray(struct.pack("!BBHHH12x", 13, 0, 0, 0x1717, 1))
total = sum(struct.unpack("!10H", msg))
while total > 0xFFFF:
    total = (total & 0xFFFF) + (total >> 16)
msg[2:4] = struct.pack("!H", ~total & 0xFFFF)
s.sendto(msg, (dst, 0))
deadline = time.time() + 1
while time.time() < deadline:
    try:
        packet, (src, _) = s.recvfrom(1500)
    except socket.timeout:
        continue
    ihl = (packet[0] & 0x0F) * 4
    if src == dst and len(packet) > ihl and packet[ihl] == 14:
        print(f"  {label} ICMP timestamp request (type 13): answered with a timestamp reply")
        sys.exit(0)
print(f"  {label} ICMP timestamp request (type 13): no reply within 1 s")
sys.exit(1)
PY
}

# `monitor5 REASON`: flagella monitor in the background until it has shown one such drop.
monitor5() {
  "${IN_NODE[@]}" "$FLAGELLA_BIN" --etcd "$ETCD_URL" monitor --socket "$TMP/dataplane-monitor.sock" \
    --reason "$1" --count 1 >"$TMP/monitor.txt" 2>&1 &
  MONITOR_PID=$!
  PIDS+=("$MONITOR_PID")
  WHAT[$MONITOR_PID]="flagella monitor"
  sleep 0.5
}
# `monitor5_show`: waits up to 5 s for the monitor to finish, prints what it showed.
monitor5_show() {
  for _ in $(seq 50); do kill -0 "$MONITOR_PID" 2>/dev/null || break; sleep 0.1; done
  printf '  $ flagella monitor --reason %s --count 1\n' "$1"
  sed 's/^/    /' "$TMP/monitor.txt"
  ! kill -0 "$MONITOR_PID" 2>/dev/null || fail "flagella monitor showed no $1 drop"
}

header "a CiliumNetworkPolicy with icmps: backend admits ping from the namespace, frontend on tcp/$PORT5"
say "before it, backend's kernel answers any ICMP, a timestamp request too:"
# reports asks now: its request leaves a conntrack entry (60 s) that would let its later ones
# through whatever a policy says; frontend's first request comes under the policy.
icmp_timestamp reports backend || fail "backend's kernel should answer a timestamp request before any policy"
cat >"$TMP/icmp.yaml" <<YAML
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-ping-only
  namespace: $K8S_NS5
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - {}
    icmps:
    - fields:
      - type: EchoRequest
        family: IPv4
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "$PORT5"
        protocol: TCP
YAML
printf '  $ flagella policy import -f - <<EOF\n'
sed 's/^/    /' "$TMP/icmp.yaml"
printf '    EOF\n'
"${IN_NODE[@]}" "$FLAGELLA_BIN" --etcd "$ETCD_URL" policy import -f - <"$TMP/icmp.yaml" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "policy import failed"
wait_until 100 dp5 enforced "${PODIP5[backend]}" || fail "the policy never reached the dataplane"
say "the agent compiled it and pushed backend's ingress policy to the dataplane"
pod_ping frontend backend || fail "frontend's ping (echo request) should be admitted"
monitor5 policy_denied_ingress
drops_before=$(dp5 drops policy_denied_ingress)
if icmp_timestamp frontend backend; then fail "the policy should refuse a timestamp request"; fi
monitor5_show policy_denied_ingress
tcp_connect --retry "$N5-frontend" "frontend -> backend:$PORT5" "${PODIP5[backend]}" "$PORT5" \
  || fail "frontend -> backend should still connect"
sleep 0.3 # status lags the workers by one counter publication
say "the dataplane counted $(( $(dp5 drops policy_denied_ingress) - drops_before )) drop(s) as policy_denied_ingress"
flagella policy trace --from "$K8S_NS5/frontend" --to "$K8S_NS5/backend" --protocol icmp --icmp-type EchoRequest
flagella policy trace --from "$K8S_NS5/frontend" --to "$K8S_NS5/backend" --protocol icmp --icmp-type 13

header "a host policy: nodes labelled role=fw admit pods on tcp/$HOST_OPEN only"
for port in "$HOST_OPEN" "$HOST_CLOSED"; do
  tcp_hello_server "$N5" 0.0.0.0 "$port" "node-1 itself, port $port"
  PIDS+=($!)
  WHAT[$!]="node-1's TCP server on $port"
done
sleep 0.5
host_connect() { # PORT [--retry]
  tcp_connect ${2:+"$2"} "$N5-reports" "reports -> node-1 $UNDERLAY5:$1" "$UNDERLAY5" "$1"
}
host_connect "$HOST_CLOSED" --retry || fail "a pod should reach its node before any host policy"
cat >"$TMP/host.yaml" <<YAML
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: fw-nodes
spec:
  nodeSelector:
    matchLabels:
      role: fw
  ingress:
  - fromEntities:
    - cluster
    toPorts:
    - ports:
      - port: "$HOST_OPEN"
        protocol: TCP
YAML
printf '  $ flagella policy import -f - <<EOF\n'
sed 's/^/    /' "$TMP/host.yaml"
printf '    EOF\n'
"${IN_NODE[@]}" "$FLAGELLA_BIN" --etcd "$ETCD_URL" policy import -f - <"$TMP/host.yaml" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "policy import failed"
say "node-1 has no label role=fw: the policy selects no node, port $HOST_CLOSED stays open"
sleep 1 # give the agent the time it would need to (wrongly) enforce it
host_connect "$HOST_CLOSED" || fail "the host policy must not apply to a node without role=fw"
say "labelling node-1 role=fw in etcd"
flagella node upsert node-1 --underlay-ip "$UNDERLAY5" --pod-cidr "$POD_CIDR5" --labels role=fw
monitor5 policy_denied_ingress
drops_before=$(dp5 drops policy_denied_ingress)
refused=0
for _ in $(seq 50); do
  if ! host_connect "$HOST_CLOSED" >/dev/null; then refused=1; break; fi
  sleep 0.2
done
[ "$refused" = 1 ] || fail "node-1's host policy should refuse tcp/$HOST_CLOSED from pods"
host_connect "$HOST_CLOSED" && fail "node-1's host policy should refuse tcp/$HOST_CLOSED from pods"
monitor5_show policy_denied_ingress
host_connect "$HOST_OPEN" --retry || fail "node-1's host policy should admit tcp/$HOST_OPEN"
sleep 0.3 # status lags the workers by one counter publication
say "node-1's dataplane counted $(( $(dp5 drops policy_denied_ingress) - drops_before )) more policy_denied_ingress drop(s): SYNs to"
say "the node itself (identity host), refused by the host policy's ingress map"

header "CNI DEL: the runtime removes the three containers"
for pod in frontend backend reports; do
  cni DEL "$pod" || fail "CNI DEL of $pod failed"
  ip netns del "$N5-$pod"
done
say "DEL again after the container's namespace is gone (a runtime retries): still success"
cni DEL reports || fail "a second CNI DEL of reports should succeed"
for pod in frontend backend reports; do
  wait_until 100 bash -c "! python3 '$TMP/dp.py' '$SOCK5' present '${PODIP5[$pod]}'" \
    || fail "the dataplane still has pod $pod"
done
flagella endpoint list
left_endpoints=$("${IN_NODE[@]}" "$FLAGELLA_BIN" --etcd "$ETCD_URL" endpoint list -o json \
  | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
[ "$left_endpoints" = 0 ] || fail "$left_endpoints endpoint(s) left in etcd after CNI DEL"
left_veths=$(ip -n "$N5" -o link show | grep -c ': flg[0-9a-f]\{12\}@' || true)
[ "$left_veths" = 0 ] || fail "$left_veths pod veth(s) left on the node"
say "the dataplane stopped serving their interfaces (its log):"
grep ': removed$' "$TMP/dataplane.log" | sed 's/^/    /'
say "left on the node: $left_endpoints endpoints in etcd, $left_veths pod veths, no pod in the dataplane"

header "stopping everything part 5 started (by PID) and removing its namespaces"
trap - EXIT
cleanup3
IN_NODE=()
left_ns=$(ip netns list | grep -c "^$N5" || true)
left_pids=0
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left_pids=$((left_pids + 1)); done
say "left behind: $left_ns namespaces, $left_pids processes, temp dir removed"

header "done"
