#!/usr/bin/env bash
# `make release`: everything a platform team installs, in one directory (default dist/release/):
#
#   egress_identity.wasm                     the module, built reproducibly (scripts/wasm-env.sh remaps paths)
#   egress-identity-<version>-<target>       the CLI, static (musl), per target that can be built here
#   oci/                                     the OCI artifact as an OCI image layout: both variants Istio
#                                            accepts, tagged <version> and <version>-compat
#   sbom/*.cdx.json                          CycloneDX SBOMs of the module and of the CLI (cargo-cyclonedx)
#   release.json                             the release's manifest: version, revision, digests, files
#                                            (`render istio|kuma --release release.json` pins from it)
#   SHA256SUMS                               sha256 of every file above
#   SHA256SUMS.sig, egress_identity.wasm.sig ECDSA P-256 / SHA-256 signatures, base64 DER: what
#   cosign.pub                               `cosign sign-blob` writes and `cosign verify-blob --key` checks
#
#   scripts/release.sh [OUT_DIR]
#
# Environment:
#   SIGNING_KEY=FILE   the release key (PEM, EC P-256, PKCS#8 or SEC1). Unset: a key made for this run
#                      (target/release-key/), and a warning: users can only trust a key published apart.
#   ALLOW_DIRTY=1      release from a working tree with uncommitted changes (revision gets "-dirty")
#   REPOSITORY=REG/REPO  where the OCI layout will be pushed (recorded in release.json for render istio)
#   CLI_TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"   the CLI's targets
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

OUT="${1:-dist/release}"
CARGO="${CARGO:-cargo}"
TARGETS="${CLI_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}"
STEPS=8
step=0
say() { printf 'release: %s\n' "$*" >&2; }
next() { step=$((step + 1)); printf '\nrelease: [%d/%d] %s\n' "$step" "$STEPS" "$*" >&2; }
die() { printf '\nrelease: ERROR: %s\n' "$*" >&2; exit 1; }
for tool in git openssl python3 sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

next "version and revision"
version="$("$CARGO" metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "egress-identity-filter"))')"
revision="$(git rev-parse --short=12 HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    [ "${ALLOW_DIRTY:-0}" = 1 ] || die "the working tree has uncommitted changes: a release is built from a commit (ALLOW_DIRTY=1 to release anyway)"
    revision="$revision-dirty"
fi
say "egress-identity $version, revision $revision -> $OUT/"
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

next "the wasm module (reproducible build: a minute or two when nothing is cached)"
EGRESS_IDENTITY_REVISION="$revision" bash scripts/build-wasm.sh
cp dist/egress_identity.wasm "$OUT/egress_identity.wasm"
# shellcheck source=/dev/null
. target/wasm-toolchain.env
if [ "$EGRESS_WASM_MODE" = rustup ]; then toolchain="$(rustc -V) (rustup)"; else toolchain="$(/usr/bin/rustc -V) (debian)"; fi

next "the CLI, static, for: $TARGETS (a few minutes per target when nothing is cached)"
built_targets=()
for target in $TARGETS; do
    if ! bash scripts/cli-target.sh setup "$target"; then
        say "skipping $target: no toolchain for it on this machine (see the messages above)"
        continue
    fi
    triple="${target//-/_}"
    # ring's C and the link: scripts/cli-target.sh.
    env "CC_$triple=$(bash scripts/cli-target.sh cc "$target")" \
        "CARGO_TARGET_$(echo "$triple" | tr '[:lower:]' '[:upper:]')_LINKER=$(bash scripts/cli-target.sh linker "$target")" \
        CARGO_TARGET_DIR=target/release-cli EGRESS_IDENTITY_REVISION="$revision" \
        "$CARGO" build --release --locked -p egress-identity-cli --target "$target" \
        --config "target.$target.rustflags=['--remap-path-prefix=$ROOT=/egress-identity', '--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo']"
    cp "target/release-cli/$target/release/egress-identity" "$OUT/egress-identity-$version-${target%%-unknown-*}-linux-musl"
    built_targets+=("$target")
done
[ "${#built_targets[@]}" -gt 0 ] || die "no CLI target could be built"

next "the OCI image layout (both variants, tags $version and $version-compat)"
"$CARGO" run -p egress-identity-publish --bin egress-identity-publish -- \
    layout --wasm "$OUT/egress_identity.wasm" --tag "$version" --out "$OUT/oci" --json > "$OUT/.oci.json"

next "the SBOMs (cargo-cyclonedx, from the Cargo metadata)"
CLI_TARGETS="${built_targets[*]}" bash scripts/sbom.sh "$OUT/sbom"

next "release.json"
VERSION="$version" REVISION="$revision" TOOLCHAIN="$toolchain" REPOSITORY="${REPOSITORY:-}" \
    TARGETS="${built_targets[*]}" OUT="$OUT" python3 - <<'EOF'
import hashlib, json, os, pathlib
out = pathlib.Path(os.environ["OUT"])
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
version = os.environ["VERSION"]
oci = json.loads((out / ".oci.json").read_text())
(out / ".oci.json").unlink()
manifest = {
    "name": "egress-identity",
    "version": version,
    "revision": os.environ["REVISION"],
    "toolchain": os.environ["TOOLCHAIN"],
    "wasm": {"file": "egress_identity.wasm", "sha256": sha(out / "egress_identity.wasm")},
    "oci": {"layout": "oci", "tag": version, "wasm": oci["wasm"], "compat": oci["compat"],
            **({"repository": os.environ["REPOSITORY"]} if os.environ["REPOSITORY"] else {})},
    "cli": [{"file": f"egress-identity-{version}-{t.split('-unknown-')[0]}-linux-musl", "target": t,
             "sha256": sha(out / f"egress-identity-{version}-{t.split('-unknown-')[0]}-linux-musl")}
            for t in os.environ["TARGETS"].split()],
    "sbom": sorted(str(p.relative_to(out)) for p in (out / "sbom").glob("*.json")),
    "signatures": {"key": "cosign.pub", "SHA256SUMS": "SHA256SUMS.sig", "egress_identity.wasm": "egress_identity.wasm.sig"},
}
(out / "release.json").write_text(json.dumps(manifest, indent=2) + "\n")
EOF

next "SHA256SUMS and the signatures"
(cd "$OUT" && find . -type f ! -name 'SHA256SUMS*' ! -name '*.sig' ! -name cosign.pub -printf '%P\n' | LC_ALL=C sort |
    xargs sha256sum > SHA256SUMS)
key="${SIGNING_KEY:-}"
if [ -z "$key" ]; then
    key=target/release-key/release.key
    mkdir -p "$(dirname "$key")"
    [ -f "$key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null
    chmod 600 "$key"
    say "WARNING: no SIGNING_KEY: signed with a key made on this machine ($key); publish cosign.pub where users can fetch it apart from the release, or they cannot tell this key from an attacker's"
fi
openssl pkey -in "$key" -pubout -out "$OUT/cosign.pub"
for file in SHA256SUMS egress_identity.wasm; do
    openssl dgst -sha256 -sign "$key" "$OUT/$file" | openssl base64 -A > "$OUT/$file.sig"
done

next "check"
(cd "$OUT" && sha256sum --quiet -c SHA256SUMS)
for file in SHA256SUMS egress_identity.wasm; do
    openssl base64 -d -A -in "$OUT/$file.sig" -out "$OUT/.sig.der"
    openssl dgst -sha256 -verify "$OUT/cosign.pub" -signature "$OUT/.sig.der" "$OUT/$file" >/dev/null ||
        die "the signature of $file does not verify"
done
rm -f "$OUT/.sig.der"
say "done: $OUT"
say "  module   sha256 $(sha256sum "$OUT/egress_identity.wasm" | cut -d' ' -f1)"
say "  OCI      $(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["oci"]; print(o["wasm"], "(wasm),", o["compat"], "(compat)")' "$OUT/release.json")"
say "  verify   cosign verify-blob --key cosign.pub --signature SHA256SUMS.sig --insecure-ignore-tlog SHA256SUMS && sha256sum -c SHA256SUMS"
say "  pin      egress-identity render istio POLICY --release $OUT/release.json --image-repository REGISTRY/REPOSITORY"
