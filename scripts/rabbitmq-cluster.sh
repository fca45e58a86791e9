#!/usr/bin/env bash
# Test harness: extra, real RabbitMQ nodes on loopback, beside the machine's own broker.
#
#   cluster nodes  fvc1@localhost  fvc2@localhost  fvc3@localhost
#     AMQP         127.0.0.1:5681  127.0.0.1:5682  127.0.0.1:5683
#     Erlang dist  127.0.0.1:25681 127.0.0.1:25682 127.0.0.1:25683
#   TLS node       fvtls@localhost, AMQPS (mutual TLS) on 127.0.0.1:5691, dist 25691
#
# Everything a node owns (config, data, logs, pid file, enabled-plugins file, certs)
# lives under ${FITVIZ_HARNESS_DIR:-/tmp/fitviz-harness}/<short node name>/.
# See scripts/README.md for the subcommands and measured timings.
#
# SAFETY: the machine's own node rabbit@localhost (AMQP 5672) is never stopped,
# reconfigured, joined or sent any command. Every rabbitmqctl / rabbitmq-diagnostics
# call goes through ctl/diag below, which refuse any node that is not a harness node.
#
# How nodes are run (and why):
# * The server runs as the `rabbitmq` user (runuser), like the packaged broker, so
#   it uses the same Erlang cookie (/var/lib/rabbitmq/.erlang.cookie) as the CLI
#   tools, which the Debian wrappers run as `rabbitmq` too when called as root.
#   Hence every directory a node writes must be owned by `rabbitmq`.
# * We do not use `rabbitmq-server -detached`: it fails silently (e.g. when the data
#   dir is not writable). We start the server in the background in its own session
#   (setsid, so Ctrl-C of a test run does not hit the nodes) and keep its
#   stdout/stderr in <node dir>/startup.log, shown when a start fails.
# * RABBITMQ_* variables override /etc/rabbitmq/rabbitmq-env.conf, and
#   RABBITMQ_CONF_ENV_FILE / RABBITMQ_CONFIG_FILE / RABBITMQ_ADVANCED_CONFIG_FILE
#   point at per-node files, so nothing from /etc/rabbitmq leaks into a harness node.
# * RabbitMQ 3.10 starts Erlang distribution itself, so the node name does not appear
#   on the beam command line. Each node gets a marker argument
#   `-fitviz_harness_node <short name>` (a plain user flag, ignored by Erlang) that
#   pgrep can find: that is how `kill` and `stop` find harness processes, and only them.
set -euo pipefail

BASE_DIR=${FITVIZ_HARNESS_DIR:-/tmp/fitviz-harness}
SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RABBITMQ_USER=rabbitmq
# Seconds to wait for a node (or the cluster) to come up / go away.
TIMEOUT=${FITVIZ_HARNESS_TIMEOUT:-180}
# Extra VM flags of every node; see scripts/README.md for the measurements.
ERL_VM_ARGS=${FITVIZ_HARNESS_ERL_ARGS-}
CLUSTER_IDS=(1 2 3)
ALL_IDS=(1 2 3 tls)
MARKER_FILE=.fitviz-harness

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

log() { printf '[harness] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Seconds elapsed since $1 (an $EPOCHREALTIME value), with one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    sed -n '/^# USAGE-BEGIN/,/^# USAGE-END/p' "$SCRIPT_PATH" | sed -e '1d;$d' -e 's/^# \{0,1\}//'
}

# Node ids are 1, 2, 3 (cluster) and tls. These map an id to names and ports.
short_name() {
    case "$1" in
    1 | 2 | 3) echo "fvc$1" ;;
    tls) echo fvtls ;;
    *) die "unknown harness node id '$1' (expected 1, 2 or 3)" ;;
    esac
}
node_name() { echo "$(short_name "$1")@localhost"; }
amqp_port() { if [[ $1 == tls ]]; then echo 5691; else echo $((5680 + $1)); fi; }
dist_port() { echo $((20000 + $(amqp_port "$1"))); }
node_dir() { echo "$BASE_DIR/$(short_name "$1")"; }

# Validates a cluster node number given on the command line.
cluster_id() {
    [[ ${1:-} =~ ^[123]$ ]] || die "expected a cluster node number 1, 2 or 3, got '${1:-}'"
    echo "$1"
}

# The only way this script talks to a node: refuses anything but a harness node.
assert_harness_node() {
    [[ $1 =~ ^(fvc[123]|fvtls)@localhost$ ]] || die "refusing to send a command to non-harness node '$1'"
}
ctl() {
    local node=$1
    shift
    assert_harness_node "$node"
    rabbitmqctl -q -n "$node" "$@"
}
diag() {
    local node=$1
    shift
    assert_harness_node "$node"
    rabbitmq-diagnostics -q -n "$node" "$@"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# PIDs of the beam process(es) of harness node $1 (found by the marker argument).
node_pids() { pgrep -f -- "beam.*-fitviz_harness_node $(short_name "$1")( |\$)" || true; }
all_harness_pids() { pgrep -f -- "beam.*-fitviz_harness_node fv" || true; }
node_alive() { [[ -n $(node_pids "$1") ]]; }

# The running_nodes of the cluster as seen from node $1, one per line (empty if the
# node does not answer).
running_nodes() {
    local json
    json=$(ctl "$(node_name "$1")" cluster_status --formatter json 2>/dev/null) || return 0
    sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' <<<"$json" | tr ',' '\n' | tr -d '"' | sed '/^$/d'
}

# ---------------------------------------------------------------------------
# Node files and processes
# ---------------------------------------------------------------------------

# Creates the base dir (owned by rabbitmq, which must be able to reach it).
prepare_base() {
    if [[ -d $BASE_DIR && ! -f $BASE_DIR/$MARKER_FILE && -n $(ls -A "$BASE_DIR") ]]; then
        die "$BASE_DIR exists, is not empty and was not created by this script"
    fi
    mkdir -p "$BASE_DIR"
    touch "$BASE_DIR/$MARKER_FILE"
    chown "$RABBITMQ_USER:" "$BASE_DIR"
    runuser -u "$RABBITMQ_USER" -- test -w "$BASE_DIR" ||
        die "$BASE_DIR is not writable by the $RABBITMQ_USER user (the server runs as that user); pick another FITVIZ_HARNESS_DIR"
}

# Writes the config, env file and empty enabled-plugins file of node $1.
write_node_files() {
    local id=$1 dir
    dir=$(node_dir "$id")
    mkdir -p "$dir/mnesia" "$dir/log"
    # Plugins: none (fast start-up).
    echo '[].' >"$dir/enabled_plugins"
    # Replaces /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost and the
    # loopback-only epmd/distribution settings, which we set ourselves).
    cat >"$dir/rabbitmq-env.conf" <<EOF
# generated by scripts/rabbitmq-cluster.sh
ERL_EPMD_ADDRESS=127.0.0.1
EOF
    echo '[].' >"$dir/advanced.config"
    {
        echo "# generated by scripts/rabbitmq-cluster.sh for $(node_name "$id")"
        if [[ $id == tls ]]; then
            # Only the mutual-TLS listener; certs are copied into the node's own dir.
            cat <<EOF
listeners.tcp = none
listeners.ssl.local = 127.0.0.1:$(amqp_port "$id")
ssl_options.cacertfile = $dir/certs/ca.pem
ssl_options.certfile = $dir/certs/server.pem
ssl_options.keyfile = $dir/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
EOF
        else
            cat <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$id")
cluster_name = fitviz-harness
# No real network partitions can happen on loopback: a node we kill is simply
# down. pause_minority would make the last node pause itself when two are
# stopped (stop-node twice, or stop-all-nodes one by one), which is not what the
# tests want to simulate; quorum queues use Raft and do not depend on this.
cluster_partition_handling = ignore
# When every node was stopped, a restarting node waits for its peers' tables:
# up to limit x timeout = 60 x 5 s = 300 s (start them together: start-all-nodes).
mnesia_table_loading_retry_timeout = 5000
mnesia_table_loading_retry_limit = 60
EOF
        fi
        # guest may only log in from loopback: fine, everything is on 127.0.0.1.
        cat <<EOF
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 50MB
heartbeat = 10
log.console = false
log.file.level = warning
EOF
    } >"$dir/rabbitmq.conf"
    chown -R "$RABBITMQ_USER:" "$dir"
}

# Starts the server of node $1 in the background (its files must exist).
launch_node() {
    local id=$1 dir short
    dir=$(node_dir "$id")
    short=$(short_name "$id")
    [[ -f $dir/rabbitmq.conf ]] || die "$dir/rabbitmq.conf missing: was the harness started?"
    (
        export RABBITMQ_NODENAME="$short@localhost"
        export RABBITMQ_DIST_PORT
        RABBITMQ_DIST_PORT=$(dist_port "$id")
        export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
        export RABBITMQ_CONFIG_FILE="$dir/rabbitmq" # .conf is appended
        export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
        export RABBITMQ_MNESIA_BASE="$dir/mnesia"
        export RABBITMQ_LOG_BASE="$dir/log"
        export RABBITMQ_PID_FILE="$dir/pid"
        export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        # Distribution on loopback only; scheduler flags (FITVIZ_HARNESS_ERL_ARGS);
        # the marker lets pgrep find the node.
        export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} $ERL_VM_ARGS -fitviz_harness_node $short"
        unset ERL_FLAGS RABBITMQ_NODE_PORT RABBITMQ_NODE_IP_ADDRESS
        cd "$dir"
        echo "=== start $(date -Is)" >>"$dir/startup.log"
        setsid runuser -u "$RABBITMQ_USER" -- "$RABBITMQ_SERVER" >>"$dir/startup.log" 2>&1 </dev/null &
    )
}

# Prints the end of node $1's start-up output and log (for failures).
show_node_logs() {
    local dir
    dir=$(node_dir "$1")
    log "--- $dir/startup.log (tail)"
    tail -n 30 "$dir/startup.log" >&2 2>/dev/null || true
    log "--- $dir/log/$(node_name "$1").log (tail)"
    tail -n 30 "$dir/log/$(node_name "$1").log" >&2 2>/dev/null || true
}

# Waits until node $1 is booted: its AMQP port answers and the rabbit app runs.
wait_booted() {
    local id=$1 node port start=$EPOCHREALTIME
    node=$(node_name "$id")
    port=$(amqp_port "$id")
    while true; do
        if ! node_alive "$id"; then
            # Give the launcher a moment to exec the VM before calling it dead.
            sleep 1
            if ! node_alive "$id"; then
                show_node_logs "$id"
                die "$node is not running (start failed)"
            fi
        fi
        if port_open "$port" && diag "$node" check_running >/dev/null 2>&1; then
            return 0
        fi
        if (($(printf '%.0f' "$(since "$start")") > TIMEOUT)); then
            show_node_logs "$id"
            die "$node did not boot within ${TIMEOUT}s"
        fi
        sleep 0.3
    done
}

# Waits until every process of node $1 is gone; kill -9 after $2 seconds.
wait_gone() {
    local id=$1 grace=${2:-$TIMEOUT} start=$EPOCHREALTIME pids
    while node_alive "$id"; do
        if (($(printf '%.0f' "$(since "$start")") >= grace)); then
            pids=$(node_pids "$id")
            log "$(node_name "$id") still running after ${grace}s: kill -9 $pids"
            # shellcheck disable=SC2086 # one pid per word
            kill -9 $pids 2>/dev/null || true
            grace=$((grace + 10))
        fi
        sleep 0.2
    done
}

# Gracefully stops node $1 (the whole Erlang VM) and waits until it is gone.
stop_node_vm() {
    local id=$1
    node_alive "$id" || return 0
    ctl "$(node_name "$id")" stop >/dev/null 2>&1 || true
    wait_gone "$id" 30
}

# True when all three cluster nodes are up, answer on AMQP and see each other.
cluster_healthy() {
    local id
    for id in "${CLUSTER_IDS[@]}"; do
        if ! node_alive "$id" || ! port_open "$(amqp_port "$id")"; then
            return 1
        fi
    done
    [[ $(running_nodes 1 | grep -c '^fvc[123]@localhost$') -eq 3 ]]
}

# Waits until the three cluster nodes run and are clustered.
wait_cluster() {
    local start=$EPOCHREALTIME id
    for id in "${CLUSTER_IDS[@]}"; do
        wait_booted "$id"
    done
    until cluster_healthy; do
        if (($(printf '%.0f' "$(since "$start")") > TIMEOUT)); then
            log "cluster_status of fvc1: $(running_nodes 1 | tr '\n' ' ')"
            die "the cluster did not form within ${TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------

cmd_start() {
    local start=$EPOCHREALTIME id port out
    if cluster_healthy; then
        log "cluster already up and healthy: $(cmd_urls)"
        return 0
    fi
    if [[ -n $(all_harness_pids) ]] || [[ -d $BASE_DIR ]]; then
        log "leftover harness nodes or $BASE_DIR: cleaning up first"
        cmd_stop
    fi
    for id in "${CLUSTER_IDS[@]}"; do
        for port in "$(amqp_port "$id")" "$(dist_port "$id")"; do
            ! port_open "$port" || die "port $port is already in use by something else"
        done
    done
    prepare_base
    for id in "${CLUSTER_IDS[@]}"; do
        write_node_files "$id"
        launch_node "$id"
    done
    for id in "${CLUSTER_IDS[@]}"; do
        wait_booted "$id"
    done
    log "nodes booted after $(since "$start")s; joining fvc2 and fvc3 to fvc1"
    for id in 2 3; do
        # join_cluster on 3.10 logs harmless "Failed to create a tracked connection
        # table ... node_not_running" errors: keep its output for failures only.
        ctl "$(node_name "$id")" stop_app
        out=$(ctl "$(node_name "$id")" join_cluster fvc1@localhost 2>&1) ||
            die "join_cluster of $(node_name "$id") failed: $out"
        ctl "$(node_name "$id")" start_app
    done
    wait_cluster
    log "cluster up in $(since "$start")s: $(cmd_urls)"
}

cmd_stop() {
    local id pids start=$EPOCHREALTIME
    # Graceful stop of every harness node, concurrently.
    for id in "${ALL_IDS[@]}"; do
        if node_alive "$id"; then
            ctl "$(node_name "$id")" stop >/dev/null 2>&1 &
        fi
    done
    wait || true
    for id in "${ALL_IDS[@]}"; do
        wait_gone "$id" 30
    done
    # Any other harness beam (e.g. started with another FITVIZ_HARNESS_DIR).
    pids=$(all_harness_pids)
    if [[ -n $pids ]]; then
        log "kill -9 leftover harness processes: $pids"
        # shellcheck disable=SC2086 # one pid per word
        kill -9 $pids 2>/dev/null || true
        sleep 0.5
    fi
    if [[ -d $BASE_DIR ]]; then
        # Only remove a dir this script created (guards against FITVIZ_HARNESS_DIR=/).
        if [[ -f $BASE_DIR/$MARKER_FILE ]]; then
            rm -rf -- "$BASE_DIR"
        else
            log "not removing $BASE_DIR: no $MARKER_FILE in it"
        fi
    fi
    log "stopped in $(since "$start")s"
}

# Graceful stop of one node: `rabbitmqctl stop` halts the whole Erlang VM, as a
# service stop during a rolling restart does (clients get connection.close 320
# CONNECTION_FORCED, the other nodes see the node leave cleanly). `stop_app` would
# leave the VM running, which is not what a restarting server looks like.
cmd_stop_node() {
    local id start=$EPOCHREALTIME
    id=$(cluster_id "${1:-}")
    stop_node_vm "$id"
    log "$(node_name "$id") stopped in $(since "$start")s"
}

# Abrupt death: kill -9 of the node's beam process (clients see the TCP connection
# reset, the other nodes see nodedown).
cmd_kill() {
    local id pids
    id=$(cluster_id "${1:-}")
    pids=$(node_pids "$id")
    [[ -n $pids ]] || {
        log "$(node_name "$id") is not running"
        return 0
    }
    # shellcheck disable=SC2086 # one pid per word
    kill -9 $pids
    wait_gone "$id" 10
    log "$(node_name "$id") killed (pid $pids)"
}

# Starts node N again with its data dir; waits until it runs, is back in the
# cluster (sees itself and every other node whose AMQP port answers) and its AMQP
# port answers.
cmd_revive() {
    local id node start=$EPOCHREALTIME other expected have
    id=$(cluster_id "${1:-}")
    node=$(node_name "$id")
    if node_alive "$id"; then
        # A VM left running by a manual stop_app: start the app again.
        diag "$node" check_running >/dev/null 2>&1 || ctl "$node" start_app
    else
        launch_node "$id"
    fi
    wait_booted "$id"
    expected=("$node")
    for other in "${CLUSTER_IDS[@]}"; do
        [[ $other == "$id" ]] && continue
        port_open "$(amqp_port "$other")" && expected+=("$(node_name "$other")")
    done
    while true; do
        have=$(running_nodes "$id")
        local missing=0
        for other in "${expected[@]}"; do
            grep -qx "$other" <<<"$have" || missing=1
        done
        ((missing == 0)) && break
        (($(printf '%.0f' "$(since "$start")") <= TIMEOUT)) || die "$node not back in the cluster within ${TIMEOUT}s (sees: $have)"
        sleep 0.3
    done
    log "$node revived in $(since "$start")s (running nodes: $(tr '\n' ' ' <<<"$have"))"
}

# Stops all three cluster nodes, keeping their data (for "whole cluster down").
# They are stopped together so that, on start-all-nodes, none of them has to be
# the one that stopped last.
cmd_stop_all_nodes() {
    local id start=$EPOCHREALTIME
    for id in "${CLUSTER_IDS[@]}"; do
        if node_alive "$id"; then
            ctl "$(node_name "$id")" stop >/dev/null 2>&1 &
        fi
    done
    wait || true
    for id in "${CLUSTER_IDS[@]}"; do
        wait_gone "$id" 30
    done
    log "all cluster nodes stopped in $(since "$start")s"
}

# Starts every stopped cluster node at once (each waits for its peers' tables, so
# they must come up together) and waits until the cluster has formed again.
cmd_start_all_nodes() {
    local id start=$EPOCHREALTIME
    [[ -f $(node_dir 1)/rabbitmq.conf ]] || die "no cluster data in $BASE_DIR: use start"
    for id in "${CLUSTER_IDS[@]}"; do
        node_alive "$id" || launch_node "$id"
    done
    wait_cluster
    log "all cluster nodes started in $(since "$start")s"
}

# Raises (on) or clears (off) a memory alarm on node N. A memory alarm blocks
# publishers on every node of the cluster (resource alarms are cluster-wide).
cmd_memory_alarm() {
    local id node state start=$EPOCHREALTIME
    id=$(cluster_id "${1:-}")
    state=${2:-}
    node=$(node_name "$id")
    case "$state" in
    on)
        # 1 byte: certainly below what the node uses.
        ctl "$node" set_vm_memory_high_watermark absolute 1 >/dev/null
        until ! diag "$node" check_local_alarms >/dev/null 2>&1; do
            (($(printf '%.0f' "$(since "$start")") <= 30)) || die "memory alarm not raised on $node"
            sleep 0.2
        done
        ;;
    off)
        ctl "$node" set_vm_memory_high_watermark 0.4 >/dev/null
        until diag "$node" check_local_alarms >/dev/null 2>&1; do
            (($(printf '%.0f' "$(since "$start")") <= 30)) || die "memory alarm not cleared on $node"
            sleep 0.2
        done
        ;;
    *) die "memory-alarm N on|off" ;;
    esac
    log "memory alarm $state on $node ($(since "$start")s)"
}

# Closes every client connection on node N (--global: all vhosts, this node only;
# without it rabbitmqctl would close the vhost's connections on every node).
cmd_close_connections() {
    local id
    id=$(cluster_id "${1:-}")
    ctl "$(node_name "$id")" close_all_connections --global harness >/dev/null
}

cmd_urls() {
    local id urls=()
    for id in "${CLUSTER_IDS[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$id")/%2f")
    done
    (
        IFS=,
        echo "${urls[*]}"
    )
}

cmd_status() {
    local id pids state
    for id in "${ALL_IDS[@]}"; do
        pids=$(node_pids "$id" | tr '\n' ' ')
        if [[ -z $pids ]]; then
            state=stopped
        elif port_open "$(amqp_port "$id")"; then
            state="running (pid ${pids% })"
        else
            state="starting or app stopped (pid ${pids% })"
        fi
        printf '%-16s 127.0.0.1:%s  %s\n' "$(node_name "$id")" "$(amqp_port "$id")" "$state"
    done
}

# Copies CERT_DIR/{ca.pem,server.pem,server.key} into the TLS node's own dir (the
# node runs as rabbitmq and may not be able to read CERT_DIR). Files are replaced by
# rename, so a handshake never reads a half-written file.
copy_certs() {
    local src=$1 dst f
    dst="$(node_dir tls)/certs"
    for f in ca.pem server.pem server.key; do
        [[ -r $src/$f ]] || die "$src/$f not found"
    done
    mkdir -p "$dst"
    for f in ca.pem server.pem server.key; do
        install -o "$RABBITMQ_USER" -g "$RABBITMQ_USER" -m 0600 "$src/$f" "$dst/.$f.new"
        mv -f "$dst/.$f.new" "$dst/$f"
    done
    chown "$RABBITMQ_USER:" "$dst"
    chmod 0700 "$dst"
}

cmd_tls_start() {
    local cert_dir=${1:-} start=$EPOCHREALTIME port
    [[ -n $cert_dir ]] || die "tls-start CERT_DIR"
    port=$(amqp_port tls)
    # Restart from scratch if it already runs (new certs, fresh state).
    stop_node_vm tls
    ! port_open "$port" || die "port $port is already in use by something else"
    prepare_base
    rm -rf -- "$(node_dir tls)"
    write_node_files tls
    copy_certs "$cert_dir"
    launch_node tls
    wait_booted tls
    log "fvtls@localhost up in $(since "$start")s: amqps://127.0.0.1:$port"
}

# New certificates for new connections without a restart: the listener keeps the
# file paths, and OTP's ssl application caches the decoded PEM files per path;
# clearing that cache makes the next handshake read the new files (verified on
# RabbitMQ 3.10.8 / OTP 25, see scripts/README.md).
cmd_tls_reload() {
    local cert_dir=${1:-}
    [[ -n $cert_dir ]] || die "tls-reload CERT_DIR"
    node_alive tls || die "fvtls@localhost is not running (tls-start first)"
    copy_certs "$cert_dir"
    ctl fvtls@localhost eval 'ssl:clear_pem_cache().' >/dev/null
    log "fvtls@localhost: certificates reloaded"
}

cmd_tls_stop() {
    stop_node_vm tls
    rm -rf -- "$(node_dir tls)"
    log "fvtls@localhost stopped"
}

# start; CMD with FITVIZ_CLUSTER_URLS and FITVIZ_HARNESS_SCRIPT; stop (always).
cmd_run() {
    [[ $# -gt 0 ]] || die "run CMD..."
    trap 'cmd_stop || log "stop failed"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cmd_start
    FITVIZ_CLUSTER_URLS=$(cmd_urls)
    export FITVIZ_CLUSTER_URLS
    export FITVIZ_HARNESS_SCRIPT="$SCRIPT_PATH"
    local status=0
    "$@" || status=$?
    log "command exited with status $status"
    exit "$status"
}

main() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (nodes run as $RABBITMQ_USER via runuser)"
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    stop-node) cmd_stop_node "$@" ;;
    kill) cmd_kill "$@" ;;
    revive) cmd_revive "$@" ;;
    stop-all-nodes) cmd_stop_all_nodes ;;
    start-all-nodes) cmd_start_all_nodes ;;
    memory-alarm) cmd_memory_alarm "$@" ;;
    close-connections) cmd_close_connections "$@" ;;
    urls) cmd_urls ;;
    status) cmd_status ;;
    tls-start) cmd_tls_start "$@" ;;
    tls-reload) cmd_tls_reload "$@" ;;
    tls-stop) cmd_tls_stop ;;
    run) cmd_run "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

# USAGE-BEGIN
# usage: rabbitmq-cluster.sh SUBCOMMAND [ARGS]   (as root)
#
#   start                  start the 3-node cluster fvc1..3 (AMQP 5681..5683)
#   stop                   stop every harness node, remove the base dir
#   stop-node N            graceful stop of node N (whole VM, like a service stop)
#   kill N                 kill -9 node N
#   revive N               start node N again, wait until it is back in the cluster
#   stop-all-nodes         stop the three cluster nodes, keep their data
#   start-all-nodes        start the three again together, wait for the cluster
#   memory-alarm N on|off  raise / clear a memory alarm on node N
#   close-connections N    close every client connection on node N
#   urls                   print the comma-separated AMQP URLs of the cluster
#   status                 one line per harness node
#   tls-start CERT_DIR     start fvtls (mutual TLS only, 127.0.0.1:5691)
#   tls-reload CERT_DIR    serve new cert files to new connections, no restart
#   tls-stop               stop fvtls
#   run CMD...             start; CMD with FITVIZ_CLUSTER_URLS and
#                          FITVIZ_HARNESS_SCRIPT set; stop (always); CMD's status
#
# Base dir: ${FITVIZ_HARNESS_DIR:-/tmp/fitviz-harness}. Never touches rabbit@localhost.
# USAGE-END

main "$@"
