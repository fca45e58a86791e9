#!/usr/bin/env bash
# loadgen against two cluster nodes keeps "failed":0 when the node its connection uses is
# stopped mid-run, and an independent consumer finds every confirmed id on the nodes
# that stayed up (issue 11). Run under the harness, as root:
#
#   scripts/rabbitmq-cluster.sh run bash scripts/cluster-loadgen-check.sh
#
# loadgen gets FITVIZ_EVENTS_URL with nodes 1 and 2, a quorum demo queue it keeps
# (--queue-type quorum --max-length ... --keep-queue) and --confirmed-ids. The node its
# publisher connection is on is found with `rabbitmqctl -n fvcN@localhost
# list_connections client_properties` (connection name fitviz-loadgen-<pid>), stopped
# once loadgen is under way, and revived afterwards; tests/loadgen_check.rs then reads
# the queue through the other node.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FITVIZ_CLUSTER_URLS:?run under scripts/rabbitmq-cluster.sh run}"
: "${FITVIZ_HARNESS_SCRIPT:?run under scripts/rabbitmq-cluster.sh run}"
harness=$FITVIZ_HARNESS_SCRIPT
IFS=, read -r url1 url2 _ <<<"$FITVIZ_CLUSTER_URLS"
fail() { echo "cluster-loadgen-check: FAILED: $*" >&2; exit 1; }
tmp=$(mktemp -d)
# Whatever happens, leave every node running.
loadgen=""
trap '[[ -z $loadgen ]] || kill "$loadgen" 2>/dev/null || true; rm -rf "$tmp"; "$harness" start-all-nodes >/dev/null 2>&1 || true' EXIT

cargo build --quiet --example loadgen
bin="${CARGO_TARGET_DIR:-target}/debug/examples/loadgen"
exchange="fvcheck.loadgen.$$"
events=40000
FITVIZ_EVENTS_URL="$url1,$url2" "$bin" --events "$events" --concurrency 32 \
  --exchange "$exchange" --queue-type quorum --max-length 1000000 --keep-queue \
  --confirmed-ids "$tmp/ids" >"$tmp/out" 2>"$tmp/err" &
loadgen=$!

# The node(s) of loadgen's publisher connections (not its " set-up" ones).
nodes_of_loadgen() {
  local n out
  for n in 1 2; do
    # Captured first: `grep -q` closing the pipe early would fail it (pipefail).
    out=$(rabbitmqctl -q -n "fvc$n@localhost" list_connections client_properties 2>/dev/null || true)
    if grep -qF "\"fitviz-loadgen-$loadgen\"}" <<<"$out"; then
      echo "$n"
    fi
  done
}
node=""
for _ in $(seq 1 100); do
  node=$(nodes_of_loadgen)
  node=${node%%$'\n'*}
  [[ -n $node ]] && break
  kill -0 "$loadgen" 2>/dev/null || break
  sleep 0.2
done
[[ -n $node ]] || { cat "$tmp/err" "$tmp/out"; fail "loadgen's connection was not found on node 1 or 2"; }
echo "cluster-loadgen-check: loadgen (pid $loadgen) publishes through node(s) $(nodes_of_loadgen | paste -sd ' ')"

# Under way: some events confirmed.
for _ in $(seq 1 300); do
  [[ $(wc -l <"$tmp/ids" 2>/dev/null || echo 0) -ge 3000 ]] && break
  sleep 0.1
done
at_stop=$(wc -l <"$tmp/ids")
echo "cluster-loadgen-check: stopping node $node after $at_stop confirmed events"
"$harness" stop-node "$node"
rc=0
wait "$loadgen" || rc=$?
summary=$(tail -n 1 "$tmp/out")
echo "cluster-loadgen-check: loadgen: $summary"
[[ $rc == 0 ]] || { cat "$tmp/err"; fail "loadgen exited $rc"; }
confirmed=$(wc -l <"$tmp/ids")
((confirmed > at_stop)) || fail "nothing was confirmed after the stop ($at_stop confirmed before)"
((at_stop < events)) || fail "the stop came after the run"
grep -q '"failed":0[,}]' <<<"$summary" || fail "loadgen reported failures: $summary"
queue=$(sed -n 's/.*"queue":"\([^"]*\)".*/\1/p' <<<"$summary")
[[ -n $queue ]] || fail "no queue in the summary: $summary"

other=$((3 - node))
other_url=$url1
[[ $other == 2 ]] && other_url=$url2
FITVIZ_CHECK_URL=$other_url FITVIZ_CHECK_QUEUE=$queue FITVIZ_CHECK_EXCHANGE=$exchange \
  FITVIZ_CHECK_IDS="$tmp/ids" \
  cargo test --quiet --all-features --test loadgen_check -- --ignored --nocapture
"$harness" revive "$node"
echo "cluster-loadgen-check: OK ($confirmed confirmed, $events events, node $node stopped after $at_stop)"
