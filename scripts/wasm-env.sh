# shellcheck shell=bash
# Sourced by scripts/build-wasm.sh and scripts/test-wasm-core.sh (not run on its own).
#
# Reads the wasm toolchain mode that scripts/setup.sh recorded in target/wasm-toolchain.env
# (running `setup.sh build` first if nothing is recorded yet, or if EGRESS_WASM_TOOLCHAIN
# asks for another mode than the recorded one) and defines
#
#   wasm_cargo TARGET SUBCOMMAND [ARGS...]
#
# which runs cargo for a wasm target with that toolchain:
#   rustup - the rustup toolchain with its prebuilt wasm32 std (`rustup target add`).
#   debian - Debian's rustc-web/cargo-web (/usr/bin/rustc, /usr/bin/cargo) building std from
#            rust-web-src (-Zbuild-std, RUSTC_BOOTSTRAP=1), linked by lld-22's wasm-ld and, for
#            wasm32-wasip1, Debian's wasi-libc. Its artefacts go to target/wasm-debian/ so the two
#            toolchains never overwrite each other's.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

wasm_die() { printf '\n%s: ERROR: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

WASM_MODE_FILE="$ROOT/target/wasm-toolchain.env"
_want="${EGRESS_WASM_TOOLCHAIN:-auto}"
if [ ! -f "$WASM_MODE_FILE" ] ||
    { [ "$_want" != auto ] && ! grep -qx "EGRESS_WASM_MODE=$_want" "$WASM_MODE_FILE"; }; then
    bash "$ROOT/scripts/setup.sh" build
fi
# shellcheck source=/dev/null
. "$WASM_MODE_FILE"
: "${EGRESS_WASM_MODE:?missing in $WASM_MODE_FILE; run scripts/setup.sh}"

WASM_LD=/usr/lib/llvm-22/bin/wasm-ld
WASI_LIBC_DIR=/usr/lib/wasm32-wasi

case "$EGRESS_WASM_MODE" in
    rustup) WASM_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" ;;
    debian) WASM_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/wasm-debian" ;;
    *) wasm_die "unknown EGRESS_WASM_MODE '$EGRESS_WASM_MODE' in $WASM_MODE_FILE; run scripts/setup.sh" ;;
esac

# Reproducible modules: the paths rustc writes into them (panic locations) are the checkout's and cargo's
# home, which differ between machines; they become /egress-identity and /cargo, so the same commit and
# toolchain give the same bytes wherever they are built (tests/release checks two clean builds).
WASM_REMAP="--remap-path-prefix=$ROOT=/egress-identity --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"

# wasm_cargo TARGET SUBCOMMAND [ARGS...]
wasm_cargo() {
    local target="$1" sub="$2"
    shift 2
    if [ "$EGRESS_WASM_MODE" = rustup ]; then
        CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
            CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$WASM_REMAP" CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_REMAP" \
            cargo "$sub" --target "$target" "$@"
        return
    fi
    # build-std: `test` is needed to link libtest into test binaries.
    local std=std,panic_abort
    [ "$sub" = test ] && std=std,panic_abort,test
    env -u RUSTUP_TOOLCHAIN \
        RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$WASM_LD" \
        CARGO_TARGET_WASM32_WASIP1_LINKER="$WASM_LD" \
        CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C link-self-contained=no -L $WASI_LIBC_DIR $WASM_REMAP" \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$WASM_REMAP" \
        /usr/bin/cargo "$sub" --target "$target" -Zbuild-std="$std" "$@"
}
