#!/usr/bin/env bash
# The crate as it would be released: `cargo package --list` ships only what a user needs
# (the library, the CLI, the examples, the JSON Schemas, the docs and licences; no tests,
# benches, scripts or CI files), and `cargo package --no-verify` builds the .crate (the
# verifying build, a full compile of the packaged crate, is left out: it is slow on 2
# cores and the same sources are built by the rest of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package: FAILED: $*"; exit 1; }
list=$(cargo package --list --allow-dirty 2>/dev/null)
unexpected=$(grep -Ev '^(src/|examples/|schemas/|docs/|README\.md$|CHANGELOG\.md$|BENCHMARKS\.md$|LICENSE-(MIT|APACHE)$|Cargo\.toml$|Cargo\.toml\.orig$|Cargo\.lock$|\.cargo_vcs_info\.json$)' <<<"$list" || true)
[ -z "$unexpected" ] || fail "files that should not ship: $unexpected"
for required in src/lib.rs src/bin/fitviz-events/main.rs README.md LICENSE-MIT LICENSE-APACHE \
    schemas/envelope.json examples/axum_app.rs docs/reference/settings.md; do
  grep -qx "$required" <<<"$list" || fail "$required is not in the package"
done
out=$(cargo package --no-verify --allow-dirty 2>&1) || { echo "$out"; fail "cargo package"; }
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
crate="${CARGO_TARGET_DIR:-target}/package/fitviz-events-$version.crate"
[ -f "$crate" ] || fail "no $crate"
size=$(stat -c %s "$crate")
# crates.io refuses crates over 10 MB.
[ "$size" -lt 10000000 ] || fail "$crate is $size bytes"
# The packaged manifest depends on nothing by path (crates.io would refuse it).
tar -xzOf "$crate" "fitviz-events-$version/Cargo.toml" | grep -Eq '^path = "\.\.' \
  && fail "the packaged Cargo.toml has a path dependency"
echo "package: $(wc -l <<<"$list") files, $crate $((size / 1024)) KiB"
