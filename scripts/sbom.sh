#!/usr/bin/env bash
# CycloneDX SBOMs (JSON, specification 1.5) of what a release ships, made by cargo-cyclonedx from the Cargo
# metadata (Cargo.lock: every crate with its version, licence and, for crates.io, the SHA-256 of its .crate):
#
#   OUT_DIR/egress-identity.wasm.cdx.json             the filter crate for wasm32-wasip1 (egress_identity.wasm)
#   OUT_DIR/egress-identity-cli.<target>.cdx.json     the CLI crate, for each target of CLI_TARGETS
#
#   scripts/sbom.sh OUT_DIR      (scripts/check-sbom.py OUT_DIR checks them; make test-sbom does both)
#   scripts/sbom.sh --install    only install cargo-cyclonedx (scripts/setup.sh test does it)
#
# cargo-cyclonedx $CARGO_CYCLONEDX_VERSION is built with `cargo install --locked` into .tools/ (project-local), once:
# again only when it is missing or another version.
#
# Reproducible: SOURCE_DATE_EPOCH (default: the commit time of HEAD) is the SBOMs' timestamp and makes
# cargo-cyclonedx leave out its random serial number; the checkout's path, which cargo's package ids of the
# workspace's own crates hold (the bom-refs), becomes /egress-identity as in the release's builds. The same commit
# and Cargo.lock give the same bytes.
#
# Known limit (cargo metadata, cyclonedx-rust-cargo issue 760): features are resolved for the whole workspace at
# once, so a crate another member enables through a shared dependency is listed although the package's own build
# leaves it out (the module's SBOM lists ring, which the CLI's x509-parser features bring); it lists more, never
# less, and scripts/check-sbom.py names the difference against `cargo tree`.
#
# Environment: CLI_TARGETS (default "x86_64-unknown-linux-musl aarch64-unknown-linux-musl", release.sh's),
# SOURCE_DATE_EPOCH, CARGO.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

CARGO_CYCLONEDX_VERSION=0.5.9
TOOLS="$ROOT/.tools"
TOOL="$TOOLS/bin/cargo-cyclonedx"
CARGO="${CARGO:-cargo}"
WASM_TARGET=wasm32-wasip1
CLI_TARGETS="${CLI_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}"
# Where the checkout's path goes in the bom-refs (scripts/wasm-env.sh and release.sh remap it the same way).
REMAPPED_ROOT=/egress-identity

say() { printf 'sbom: %s\n' "$*" >&2; }
die() { printf 'sbom: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { echo "usage: scripts/sbom.sh OUT_DIR | --install" >&2; exit 2; }

tool_version() { "$TOOL" cyclonedx --version 2>/dev/null | awk '{ print $2 }'; }

install_tool() {
    mkdir -p "$TOOLS"
    exec 8>"$TOOLS/.cargo-cyclonedx.lock"
    flock 8
    local have
    have="$(tool_version)" || true
    [ "$have" != "$CARGO_CYCLONEDX_VERSION" ] || return 0
    say "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION into .tools/ (have: ${have:-none}): cargo builds it from source, about 2 minutes on 2 cores"
    "$CARGO" install --locked --quiet --root "$TOOLS" cargo-cyclonedx --version "$CARGO_CYCLONEDX_VERSION" ||
        die "cargo install --locked cargo-cyclonedx --version $CARGO_CYCLONEDX_VERSION failed"
    have="$(tool_version)" || true
    [ "$have" = "$CARGO_CYCLONEDX_VERSION" ] ||
        die "$TOOL reports '${have:-nothing}' after the install, want $CARGO_CYCLONEDX_VERSION"
    say "installed $TOOL $CARGO_CYCLONEDX_VERSION"
}

[ $# = 1 ] || usage
case "$1" in
    --install) install_tool; exit 0 ;;
    -*) usage ;;
esac
OUT="$1"
command -v python3 >/dev/null || die "python3 is missing"
install_tool

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null)" || die "not a git checkout: set SOURCE_DATE_EPOCH"
fi
export SOURCE_DATE_EPOCH
mkdir -p "$OUT"

# cargo-cyclonedx writes one file next to the Cargo.toml of every workspace member; under a name of this run's
# own, each taken out at once and the rest removed, so the tree is left as it was.
NAME=".sbom-$$.cdx"
members="$("$CARGO" metadata --format-version 1 --no-deps |
    python3 -c 'import json, os, sys
m = json.load(sys.stdin)
ids = set(m["workspace_members"])
print("\n".join(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["id"] in ids))')"
cleanup() {
    local dir
    while IFS= read -r dir; do rm -f "$dir/$NAME.json"; done <<<"$members"
}
trap cleanup EXIT

# sbom TARGET MEMBER_DIR OUT_FILE
sbom() {
    local target="$1" member="$2" out="$3"
    "$TOOL" cyclonedx --manifest-path "$ROOT/Cargo.toml" --quiet --format json --spec-version 1.5 \
        --target "$target" --override-filename "$NAME"
    python3 - "$ROOT/$member/$NAME.json" "$out" "path+file://$ROOT/" "path+file://$REMAPPED_ROOT/" <<'PY'
import sys
src, dst, root, remapped = sys.argv[1:]
text = open(src, encoding="utf-8").read().replace(root, remapped)
if "file://" + root.removeprefix("path+file://").rstrip("/") in text:
    sys.exit(f"sbom: {src} still names the checkout's path after remapping it")
open(dst, "w", encoding="utf-8").write(text)
PY
    cleanup
    say "$out ($target): $(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$out") components"
}

sbom "$WASM_TARGET" filter "$OUT/egress-identity.wasm.cdx.json"
for target in $CLI_TARGETS; do
    sbom "$target" cli "$OUT/egress-identity-cli.$target.cdx.json"
done
