#!/usr/bin/env bash
# Installs flagella-cni on this node: the plugin in /opt/cni/bin (where containerd and CRI-O look
# by default) and the network configuration in /etc/cni/net.d (docs/cni.md).
#
#   scripts/cni/install.sh [--etcd URL[,URL...]] [--node NAME] [--bin PATH]
#
# --etcd  the etcd client URLs written into the conflist (default http://127.0.0.1:2379);
# --node  this node's name in etcd when it differs from the host name (default: left out, the
#         plugin uses the host name, as flagella-control does);
# --bin   the built plugin (default target/release/flagella-cni, then target/debug/).
# Run as root. Idempotent: an existing conflist is replaced (the old one kept as .bak).
set -euo pipefail
cd "$(dirname "$0")/../.."

etcd="http://127.0.0.1:2379"
node=""
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --etcd) etcd="$2"; shift 2 ;;
    --node) node="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  for b in target/release/flagella-cni target/debug/flagella-cni; do
    [ -x "$b" ] && { bin="$b"; break; }
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "install.sh: no flagella-cni binary: build it (cargo build --release -p control --bin flagella-cni) or pass --bin" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "install.sh: needs python3 to write the conflist" >&2; exit 1; }

install -d -m 0755 /opt/cni/bin /etc/cni/net.d
install -m 0755 "$bin" /opt/cni/bin/flagella-cni
conf=/etc/cni/net.d/10-flagella.conflist
[ -f "$conf" ] && cp "$conf" "$conf.bak"
python3 - "$etcd" "$node" scripts/cni/10-flagella.conflist > "$conf.tmp" <<'PY'
import json, sys
etcd, node, template = sys.argv[1], sys.argv[2], sys.argv[3]
conf = json.load(open(template))
plugin = conf["plugins"][0]
plugin["etcdEndpoints"] = [u for u in etcd.split(",") if u]
if node:
    plugin["node"] = node
json.dump(conf, sys.stdout, indent=2)
print()
PY
chmod 0644 "$conf.tmp"
mv "$conf.tmp" "$conf"
echo "installed /opt/cni/bin/flagella-cni and $conf"
