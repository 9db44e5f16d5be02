#!/usr/bin/env bash
# Builds bench/empty-filter (the do-nothing proxy-wasm filter, benchmark variant C) for wasm32-wasip1 with
# the same toolchain and release profile as the real filter (scripts/wasm-env.sh), into its own target
# directory (target/bench/) so it never contends with, or overwrites, the main build.
# Writes target/bench/empty_filter.wasm.
set -Eeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="$ROOT/target/bench"
# shellcheck source=scripts/wasm-env.sh
. "$ROOT/scripts/wasm-env.sh"

wasm_cargo wasm32-wasip1 build --release --manifest-path "$ROOT/bench/empty-filter/Cargo.toml" "$@"
built="$WASM_TARGET_DIR/wasm32-wasip1/release/bench_empty_filter.wasm"
[ -f "$built" ] || wasm_die "cargo build succeeded but $built is missing"
cp "$built" "$ROOT/target/bench/empty_filter.wasm"
echo "target/bench/empty_filter.wasm: $(stat -c %s "$ROOT/target/bench/empty_filter.wasm") bytes (toolchain: $EGRESS_WASM_MODE)"
