#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (nightly toolchain, cargo-fuzz; both installed by scripts/setup.sh).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
#   FUZZ_JOBS=N   run N targets at a time (default 1)
#   FUZZ_SMOKE=1  a missing nightly toolchain or cargo-fuzz prints a SKIP line and exits 0 (for `make test`
#                 on machines where rustup cannot install nightly); otherwise it is an error.
#
# Corpus: fuzz/corpus/<target>/ (kept between runs, git-ignored), seeded from fuzz/seeds/<target>/.
# Crashes land in fuzz/artifacts/<target>/ and fail the run; copy them to fuzz/regressions/<target>/
# (replayed by tests/fuzz_regressions.rs). Logs: target/fuzz-logs/<target>.log.
set -Eeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_TARGET="${1:-600}"
shift || true
ALL_TARGETS=(config_load config_json spiffe_id cert_pem cert_der decide)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
JOBS="${FUZZ_JOBS:-1}"

skip_or_die() {
    if [ "${FUZZ_SMOKE:-0}" = 1 ]; then
        echo "fuzz: SKIP: $* (fuzzing needs rustup's nightly toolchain and cargo-fuzz; installed by scripts/setup.sh test)"
        exit 0
    fi
    echo "fuzz: ERROR: $*" >&2
    exit 1
}
command -v rustup >/dev/null || skip_or_die "no rustup"
rustup run nightly rustc --version >/dev/null 2>&1 || skip_or_die "no nightly toolchain (rustup toolchain install nightly)"
command -v cargo-fuzz >/dev/null || [ -x "$HOME/.cargo/bin/cargo-fuzz" ] || skip_or_die "no cargo-fuzz (cargo install cargo-fuzz)"

cargo +nightly fuzz build >/dev/null 2>target/fuzz-build.log || { cat target/fuzz-build.log >&2; exit 1; }
mkdir -p target/fuzz-logs

run_one() {
    local t="$1" log="target/fuzz-logs/$1.log"
    mkdir -p "fuzz/corpus/$t"
    if cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        local execs cov
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
        echo "fuzz: $t: ok, ${SECONDS_PER_TARGET}s, ${execs:-?} executions, ${cov:-cov: ?}"
    else
        echo "fuzz: $t: FAILED (log $log):" >&2
        grep -E 'panicked|ERROR|SUMMARY|artifact_prefix|Test unit written' "$log" | head -n 20 >&2
        return 1
    fi
}

pids=() failed=0
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
