#!/usr/bin/env bash
# `make bench`: the end-to-end benchmark (bench/bench.py) and the criterion micro-benchmarks (core/benches/).
# Results go to target/bench/run/ (summary.md, results.json, logs/) and target/criterion/.
#
#   ROUNDS=5 DURATION=8 CONNECTIONS=8   rounds of every variant, seconds per variant per round, wrk connections
#   NEWCONN_ROUNDS=3 NEWCONN_DURATION=4 the new-connection-per-request series (A C D L0 L1 L2); 0 skips it
#   VARIANTS=A,B,C,D                    a subset (default: all nine: A B C D D10 D10k, and L0 L1 L2 for L4)
#   MICRO=0                             skip the criterion benches; E2E=0 skips the end-to-end one
#   bash bench/run.sh --check           only generate and validate every config (envoy --mode validate, nginx -t)
#   bash bench/run.sh --wasm-variant X=path/to/other.wasm   also measure another build (A/B experiments)
#   bash bench/run.sh --probe P=set_cluster_header\;get_header:10   price host calls (bench/empty-filter)
#   bash bench/run.sh --ladder         the filter stopped after each step, R0..R7 (filter/src/bench_ladder.rs)
# Needs dist/egress_identity.wasm (make build), wrk, nginx and .venv/bin/envoy. Ports: BENCH_PORT_BASE (28400)
# .. +399, none of which the e2e tests use.
set -Eeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN="$ROOT/target/bench/run"
CARGO="${CARGO:-cargo}"

[ -f dist/egress_identity.wasm ] || { echo "bench: dist/egress_identity.wasm missing: run make build" >&2; exit 1; }
command -v "${WRK:-wrk}" >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
echo "== dist/egress_identity.wasm: $(stat -c %s dist/egress_identity.wasm) bytes (target <= 800 KB = 819200 bytes)"
bash bench/build-empty-filter.sh 2>&1 | tail -1

rm -rf "$RUN"
mkdir -p "$RUN"
"$CARGO" run -q --release -p egress-identity-harness --bin pki -- "$RUN/pki" "$RUN/sds" >/dev/null
cp dist/egress_identity.wasm target/bench/empty_filter.wasm "$RUN/"
for arg in "$@"; do
    if [ "$arg" = --ladder ]; then
        # The same filter with the bench-ladder feature, in its own target directory (never dist/).
        (export CARGO_TARGET_DIR="$ROOT/target/ladder"; . scripts/wasm-env.sh
         wasm_cargo wasm32-wasip1 build --release -p egress-identity-filter --features bench-ladder &&
         cp "$WASM_TARGET_DIR/wasm32-wasip1/release/egress_identity.wasm" "$RUN/egress_identity_ladder.wasm")
        echo "== ladder build: $(stat -c %s "$RUN/egress_identity_ladder.wasm") bytes"
    fi
done

if [ "${1:-}" = --check ]; then
    exec python3 bench/bench.py "$RUN" --check
fi

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(.venv/bin/envoy --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*/[A-Z]*' | head -1), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${E2E:-1}" != 0 ]; then
    python3 bench/bench.py "$RUN" --rounds "${ROUNDS:-5}" --duration "${DURATION:-8}" --connections "${CONNECTIONS:-8}" \
        --newconn-rounds "${NEWCONN_ROUNDS:-3}" --newconn-duration "${NEWCONN_DURATION:-4}" \
        ${VARIANTS:+--variants "$VARIANTS"} "$@"
fi
if [ "${MICRO:-1}" != 0 ]; then
    echo "== criterion micro-benchmarks (native, release): core/benches/decision.rs"
    # criterion needs unwinding; the release profile (which `bench` inherits) aborts, as the Wasm build must.
    CARGO_PROFILE_RELEASE_PANIC=unwind "$CARGO" bench -p egress-identity-core --bench decision -- --warm-up-time "${MICRO_WARMUP:-1}" --measurement-time "${MICRO_TIME:-3}" 2>&1 |
        grep -E '^[a-z_/0-9 ]+time:|^[a-zA-Z_/0-9]+$|time:' || true
fi
