# Helpers shared by the pktgen scripts in this directory (sourced, not run), in the style of
# the kernel's samples/pktgen: err/warn/info for messages, pg_detect for "is pktgen here", and
# pg_ctrl / pg_thread / pg_set, which write one command to pktgen's control file, to a
# kpktgend_<cpu> thread or to a device, and check pktgen's "Result: OK:" answer.
#
# Environment:
#   PKTGEN_PROC_DIR  pktgen's directory (default /proc/net/pktgen; per network namespace).
#   PKTGEN_DRY_RUN   when set, print "<file> <command>" for every write instead of writing,
#                    and skip the detection: what flagella-bench's unit tests check.
#   VERBOSE          when set, info lines go to stderr.

PROC_DIR=${PKTGEN_PROC_DIR:-/proc/net/pktgen}

# err EXIT_CODE MESSAGE...: print to stderr and exit.
err() {
    local code=$1
    shift
    echo "ERROR: $*" >&2
    exit "$code"
}

warn() {
    echo "WARN : $*" >&2
}

info() {
    if [ -n "$VERBOSE" ]; then
        echo "INFO : $*" >&2
    fi
}

# Exits 69 (EX_UNAVAILABLE, as flagella-bench does) with what to do where this kernel, or this
# network namespace, has no pktgen. Loading the module is left to the user: a benchmark does not
# change the host's kernel behind its back.
pg_detect() {
    if [ -n "$PKTGEN_DRY_RUN" ]; then
        return 0
    fi
    if [ ! -e "$PROC_DIR/pgctrl" ]; then
        err 69 "pktgen is not available here ($PROC_DIR/pgctrl is missing): run" \
            "'modprobe pktgen' as root, or use a kernel built with CONFIG_NET_PKTGEN;" \
            "with flagella-bench, --generator xdp needs no module"
    fi
}

# pg_write FILE COMMAND...: one command to $PROC_DIR/FILE. Threads and devices answer with a
# "Result:" line in the same file; pgctrl has none, and its "start" blocks until "stop" (or a
# signal to this shell).
pg_write() {
    local file=$1
    shift
    local path="$PROC_DIR/$file"
    if [ -n "$PKTGEN_DRY_RUN" ]; then
        echo "$file $*"
        return 0
    fi
    info "$* > $path"
    echo "$*" >"$path" || err 1 "could not write '$*' to $path: is the device in this namespace?"
    if [ "$file" != pgctrl ] && ! grep -q "Result: OK:" "$path"; then
        err 1 "pktgen refused '$*' in $path: $(grep 'Result:' "$path")"
    fi
}

# pg_ctrl COMMAND: start, stop or reset every thread.
pg_ctrl() {
    pg_write pgctrl "$@"
}

# pg_thread CPU COMMAND...: add_device / rem_device_all on kernel thread kpktgend_CPU.
pg_thread() {
    local cpu=$1
    shift
    pg_write "kpktgend_$cpu" "$@"
}

# pg_set DEVICE COMMAND...: one setting of the device's packets (size, addresses, flags...).
pg_set() {
    local dev=$1
    shift
    pg_write "$dev" "$@"
}

# pg_sent DEVICE: packets the device has sent so far (0 in a dry run).
pg_sent() {
    if [ -n "$PKTGEN_DRY_RUN" ]; then
        echo 0
        return 0
    fi
    awk '{ for (i = 1; i < NF; i++) if ($i == "pkts-sofar:") { print $(i + 1); exit } }' \
        "$PROC_DIR/$1"
}
