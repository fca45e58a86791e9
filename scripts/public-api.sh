#!/usr/bin/env bash
# The public API listing: builds rustdoc's JSON for the library (stable toolchain, with
# RUSTC_BOOTSTRAP=1 for the unstable JSON output) and lists every public item with
# scripts/public-api.py. Without arguments, fails when the listing differs from the
# checked-in public-api.txt (CI); with --write, updates public-api.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# A target directory of its own: RUSTC_BOOTSTRAP is part of cargo's fingerprints, so
# sharing the main one would rebuild the dependencies on every switch.
target="${CARGO_TARGET_DIR:-target}/public-api"
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
  cargo doc --quiet --lib --no-deps --all-features --target-dir "$target"
listing=$(python3 scripts/public-api.py "$target/doc/fitviz_events.json")
if [ "${1:-}" = "--write" ]; then
  printf '%s\n' "$listing" >public-api.txt
  echo "public-api.txt: $(wc -l <public-api.txt) items"
  exit 0
fi
if ! diff -u public-api.txt <(printf '%s\n' "$listing"); then
  echo "public API: the listing above differs from public-api.txt (- checked in, + now)."
  echo "If the change is intended: bash scripts/public-api.sh --write, and commit public-api.txt."
  exit 1
fi
echo "public API: unchanged ($(wc -l <public-api.txt) items)"
