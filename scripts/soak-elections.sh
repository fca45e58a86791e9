#!/usr/bin/env bash
# Soak: the leader-election scenarios of tests/cluster.rs (`election_*`) — a graceful
# stop and a kill -9 of the node the publisher is connected to, of the node holding the
# quorum queue's leader, and of a node that is both — each at 128 concurrent publishers with every setting at its default
# except the URL list, ROUNDS times (default 20), with a fixed CPU load beside them (as CI
# has while the parallel suite runs). Not part of .ci/run (it takes about an hour).
#
#   bash scripts/soak-elections.sh            # 20 rounds, one busy CPU hog
#   ROUNDS=3 CPU_HOGS=0 bash scripts/soak-elections.sh
#
# Runs under the cluster harness (started and stopped here), as root. Each scenario
# prints one `SOAK <fault>-<target> failed=… confirmed=… gap_ms=… max_latency_ms=…
# duplicates=… missing=…` line; they are kept in $OUT (default target/soak-elections.txt)
# and summarised at the end: per scenario, the runs that passed, and min / median / max
# of the longest time without a confirm, of the longest publish and of the duplicates an
# independent consumer read from the queue. Exits non-zero unless every run passed with
# 0 failed publishes and 0 confirmed ids missing from the queue.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-20}
CPU_HOGS=${CPU_HOGS:-1}
OUT=${OUT:-target/soak-elections.txt}
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

cargo test --quiet --all-features --test cluster --no-run

hogs=()
stop_hogs() { [[ ${#hogs[@]} == 0 ]] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop_hogs EXIT
for _ in $(seq 1 "$CPU_HOGS"); do
  # A fixed load: one core kept busy, bounded in time like everything here.
  timeout 7200 bash -c 'while :; do :; done' &
  hogs+=($!)
done

export ROUNDS OUT
failed_rounds=0
bash scripts/rabbitmq-cluster.sh run bash -c '
  failed=0
  for round in $(seq 1 "$ROUNDS"); do
    echo "soak-elections: round $round of $ROUNDS" >&2
    log=$(mktemp)
    if timeout 900 cargo test --quiet --all-features --test cluster election_ -- --ignored \
        --test-threads=1 --nocapture >"$log" 2>&1; then
      status=ok
    else
      status=FAILED
      failed=$((failed + 1))
      grep -E "panicked|failed publishes|MEASURED" "$log" | head -20 >&2 || true
    fi
    grep "^SOAK " "$log" | sed "s/^/round=$round status=$status /" >>"$OUT" || true
    rm -f "$log"
  done
  exit "$failed"
' || failed_rounds=$?

stop_hogs
summary=0
python3 - "$OUT" "$ROUNDS" <<'EOF' || summary=$?
import re, statistics, sys
path, rounds = sys.argv[1], int(sys.argv[2])
runs = {}
for line in open(path):
    m = re.search(r"SOAK (\S+) (.*)", line)
    if not m:
        continue
    fields = dict(kv.split("=") for kv in m.group(2).split())
    runs.setdefault(m.group(1), []).append({k: int(v) for k, v in fields.items()})
def spread(xs):
    xs = sorted(xs)
    return f"{xs[0]} / {statistics.median(xs):g} / {xs[-1]}"
print(f"| scenario | runs passed | longest time without a confirm, ms (min / median / max) | longest publish, ms | duplicates |")
print(f"|---|---|---|---|---|")
bad = 0
for name, rs in sorted(runs.items()):
    ok = sum(1 for r in rs if r["failed"] == 0 and r["missing"] == 0)
    bad += len(rs) - ok
    print(f"| {name} | {ok} of {len(rs)} | {spread([r['gap_ms'] for r in rs])} | "
          f"{spread([r['max_latency_ms'] for r in rs])} | {spread([r['duplicates'] for r in rs])} |")
expected = 6 * rounds
seen = sum(len(rs) for rs in runs.values())
if seen != expected:
    print(f"soak-elections: {seen} scenario runs reported, expected {expected}")
    bad += 1
sys.exit(1 if bad else 0)
EOF
[[ $failed_rounds == 0 && $summary == 0 ]] || { echo "soak-elections: FAILED" >&2; exit 1; }
echo "soak-elections: OK ($ROUNDS rounds)"
