#!/bin/bash
# UDP to one destination from a range of source ports (one flow each), from one kernel thread,
# until stopped: the script `flagella-bench gen --generator pktgen` runs inside pod A's
# namespace (and the one to copy for your own runs). Modelled on the kernel's
# samples/pktgen/pktgen_sample01_simple.sh; helpers in functions.sh beside it.
#
# It configures kpktgend_<cpu>, starts, and blocks until SIGINT/SIGTERM (or "stop" written to
# pgctrl), then prints `sent <packets>` and removes its device from the thread, pass or fail.
#
# Example (as root, in the namespace that owns eth0):
#   ./pktgen_udp_flows.sh -i eth0 -d 10.0.0.2 -m 02:00:00:00:00:01 -p 9000 -f 64

basedir=$(dirname "$0")
# shellcheck source=functions.sh
source "$basedir/functions.sh"

usage() {
    cat <<USAGE
Usage: $0 -i DEV -d DST_IP -m DST_MAC [options]
  -i DEV       interface to send on (in this network namespace)
  -d DST_IP    destination IPv4 address
  -m DST_MAC   destination MAC (the next hop's)
  -p PORT      UDP destination port (default 9)
  -P PORT      first UDP source port (default 20000); flows use PORT .. PORT+FLOWS-1
  -f FLOWS     number of flows, 1..65536 and within the port range (default 64)
  -s SIZE      Ethernet frame size without FCS, 42..1514 (default 64)
  -t CPU       kernel thread kpktgend_CPU to send from (default 0)
  -n COUNT     packets to send, 0 = until stopped (default 0)
  -v           print every pktgen command to stderr
  -h           this help
Environment: PKTGEN_PROC_DIR (default /proc/net/pktgen), PKTGEN_DRY_RUN (print, do not write).
Exit codes: 0 done, 1 pktgen refused a command, 2 usage, 69 no pktgen on this kernel.
USAGE
}

DEV=
DST_IP=
DST_MAC=
DST_PORT=9
SRC_PORT=20000
FLOWS=64
SIZE=64
CPU=0
COUNT=0
while getopts "i:d:m:p:P:f:s:t:n:vh" opt; do
    case $opt in
    i) DEV=$OPTARG ;;
    d) DST_IP=$OPTARG ;;
    m) DST_MAC=$OPTARG ;;
    p) DST_PORT=$OPTARG ;;
    P) SRC_PORT=$OPTARG ;;
    f) FLOWS=$OPTARG ;;
    s) SIZE=$OPTARG ;;
    t) CPU=$OPTARG ;;
    n) COUNT=$OPTARG ;;
    v) export VERBOSE=yes ;;
    h)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
done

# usage_err MESSAGE: a bad option, with the usage and exit code 2.
usage_err() {
    echo "ERROR: $*" >&2
    usage >&2
    exit 2
}

is_number() {
    [[ $1 =~ ^[0-9]+$ ]]
}

[ -n "$DEV" ] || usage_err "-i DEV is required (the interface to send on)"
[[ $DST_IP =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || usage_err "-d needs an IPv4 address, got '$DST_IP'"
[[ $DST_MAC =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] || usage_err "-m needs a MAC like 02:00:00:00:00:01, got '$DST_MAC'"
for value in "$DST_PORT" "$SRC_PORT" "$FLOWS" "$SIZE" "$CPU" "$COUNT"; do
    is_number "$value" || usage_err "'$value' is not a number"
done
((SIZE >= 42 && SIZE <= 1514)) || usage_err "-s $SIZE: a frame is 42..1514 bytes"
((FLOWS >= 1)) || usage_err "-f $FLOWS: at least one flow"
LAST_PORT=$((SRC_PORT + FLOWS - 1))
((DST_PORT <= 65535 && LAST_PORT <= 65535)) || usage_err "ports end at 65535 (source ports $SRC_PORT..$LAST_PORT)"

pg_detect

# Whatever happens from here, the thread gives the device back.
cleanup() {
    pg_thread "$CPU" rem_device_all
}
trap cleanup EXIT

pg_thread "$CPU" rem_device_all
pg_thread "$CPU" add_device "$DEV"

pg_set "$DEV" "count $COUNT"
# One fresh skb per packet: the source port changes every packet.
pg_set "$DEV" "clone_skb 0"
# pktgen counts the 4-byte FCS in its size.
pg_set "$DEV" "pkt_size $((SIZE + 4))"
pg_set "$DEV" "dst $DST_IP"
pg_set "$DEV" "dst_mac $DST_MAC"
pg_set "$DEV" "udp_dst_min $DST_PORT"
pg_set "$DEV" "udp_dst_max $DST_PORT"
pg_set "$DEV" "udp_src_min $SRC_PORT"
pg_set "$DEV" "udp_src_max $LAST_PORT"
pg_set "$DEV" "flag UDPSRC_RND"

# "start" blocks this shell until stop; a signal interrupts it (pktgen then stops its threads)
# and the trap lets the script go on to print the count.
trap true INT TERM
info "sending on $DEV from kpktgend_$CPU; SIGINT or SIGTERM to stop"
pg_ctrl start
trap - INT TERM
if [ -z "$PKTGEN_DRY_RUN" ]; then
    echo stop >"$PROC_DIR/pgctrl" 2>/dev/null
fi
echo "sent $(pg_sent "$DEV")"
