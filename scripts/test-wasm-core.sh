#!/usr/bin/env bash
# Runs the core unit tests compiled to wasm32-unknown-unknown, under node, with
# wasm-bindgen-test-runner (the tests are `#[wasm_bindgen_test(unsupported = test)]`, so the same
# tests also run natively under `cargo test`): the core crate only, which has no proxy-wasm
# dependency. Extra arguments go to cargo test (e.g. a test-name filter).
set -Eeuo pipefail
# shellcheck source=scripts/wasm-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/wasm-env.sh"

runner="$(command -v wasm-bindgen-test-runner)" ||
    wasm_die "wasm-bindgen-test-runner not on PATH: run scripts/setup.sh test (it installs wasm-bindgen-cli into ~/.cargo/bin)"
command -v node >/dev/null || wasm_die "node not on PATH: run scripts/setup.sh test"

export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$runner"
wasm_cargo wasm32-unknown-unknown test -p egress-identity-core --lib "$@"
