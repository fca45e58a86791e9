#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it):
#  1. `cargo test --all-features` — unit, integration and doc tests against the broker at
#     FITVIZ_EVENTS_URL (127.0.0.1:5672 by default), in parallel;
#  2. the outbox's kill -9 test, alone: a relay process killed and restarted while 8
#     writers commit to the machine's PostgreSQL (127.0.0.1:5432, database `test`);
#  3. the TLS tests, serially, against a mutual-TLS node of their own on 127.0.0.1:5691
#     that the test starts and stops (scripts/rabbitmq-cluster.sh tls-start / tls-stop);
#  4. the cluster tests, serially, against a three-node cluster on 127.0.0.1:5681-5683
#     that the harness starts first and always stops afterwards (scripts/rabbitmq-cluster.sh run):
#     failover (node stopped, node killed), connections closed under load, the whole
#     cluster down for 30 s, a memory alarm; then loadgen over two nodes with the one it
#     uses stopped mid-run, and an independent consumer checking every confirmed id.
# Steps 3 and 4 start RabbitMQ nodes beside the machine's own broker (never touching it):
# they need `rabbitmq-server` installed and root (the nodes run as the `rabbitmq` user).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step is bounded, so that a hang fails the run instead of eating CI's time.
timeout 2400 cargo test --all-features
timeout 600 cargo test --all-features --test outbox_kill -- --ignored --test-threads=1
timeout 900 cargo test --all-features --test tls -- --ignored --test-threads=1
bash scripts/rabbitmq-cluster.sh run bash -c '
  timeout 1200 cargo test --all-features --test cluster -- --ignored --test-threads=1 --nocapture &&
  timeout 900 bash scripts/cluster-loadgen-check.sh'

