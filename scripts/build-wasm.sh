#!/usr/bin/env bash
# Builds the proxy-wasm filter (release, wasm32-wasip1) and copies it to dist/egress_identity.wasm.
# Uses the wasm toolchain recorded by scripts/setup.sh (see scripts/wasm-env.sh).
# Extra arguments go to cargo build.
set -Eeuo pipefail
# shellcheck source=scripts/wasm-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/wasm-env.sh"

wasm_cargo wasm32-wasip1 build --release -p egress-identity-filter "$@"

built="$WASM_TARGET_DIR/wasm32-wasip1/release/egress_identity.wasm"
[ -f "$built" ] || wasm_die "cargo build succeeded but $built is missing"
mkdir -p dist
cp "$built" dist/egress_identity.wasm.tmp
mv -f dist/egress_identity.wasm.tmp dist/egress_identity.wasm
echo "dist/egress_identity.wasm: $(stat -c %s dist/egress_identity.wasm) bytes (toolchain: $EGRESS_WASM_MODE)"
