#!/usr/bin/env bash
# `make test-release`: runs `make release`'s script into a temporary directory and checks what a platform team
# relies on, each with tools the project did not write:
#
#   * the module is reproducible: two clean builds of this commit in two other directories (fresh target
#     directories) give the release's sha256;
#   * cosign (sigstore, built from tools/cosign) accepts the signatures of SHA256SUMS and of the module with
#     cosign.pub, and refuses a tampered file and another key; sha256sum -c accepts the set and refuses a
#     tampered module;
#   * the CLI binaries are static (file(1)), the x86_64 one runs and names the version;
#   * the OCI layout's index names both variants with release.json's digests (tests/oci checks their content
#     with go-containerregistry), and the SBOMs name the locked dependencies (scripts/check-sbom.py);
#   * `render istio|kuma --release release.json` pin the release's digests: no placeholder left.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
COSIGN="$ROOT/.tools/bin/cosign"
CARGO="${CARGO:-cargo}"
[ -x "$COSIGN" ] || { echo "test-release: $COSIGN missing (scripts/setup.sh test builds it)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass() { printf 'test-release: ok   %s\n' "$*"; }
fail() { printf '\ntest-release: FAIL %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------ the release
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/release.key" 2>/dev/null
SIGNING_KEY="$tmp/release.key" bash scripts/release.sh "$tmp/release"
rel="$tmp/release"
version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$rel/release.json")"
revision="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["revision"])' "$rel/release.json")"
for f in egress_identity.wasm "egress-identity-$version-x86_64-linux-musl" oci/index.json oci/oci-layout release.json \
    SHA256SUMS SHA256SUMS.sig egress_identity.wasm.sig cosign.pub; do
    [ -s "$rel/$f" ] || fail "the release has no $f"
done
ls "$rel"/sbom/*.cdx.json >/dev/null 2>&1 || fail "the release has no SBOM"
pass "the release holds the module, the CLI, the OCI layout, the SBOMs, release.json, SHA256SUMS, signatures"

# ------------------------------------------------------------------------------------------ signatures
cosign_verify() { # KEY SIG FILE
    "$COSIGN" verify-blob --key "$1" --signature "$2" --insecure-ignore-tlog=true "$3" >"$tmp/cosign.out" 2>&1
}
for f in SHA256SUMS egress_identity.wasm; do
    cosign_verify "$rel/cosign.pub" "$rel/$f.sig" "$rel/$f" || { cat "$tmp/cosign.out" >&2; fail "cosign refuses the signature of $f"; }
    cp "$rel/$f" "$tmp/tampered"
    # One byte changed in the middle of the file.
    python3 - "$tmp/tampered" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x01
open(p, "wb").write(bytes(b))
EOF
    if cosign_verify "$rel/cosign.pub" "$rel/$f.sig" "$tmp/tampered"; then fail "cosign accepts a tampered $f"; fi
done
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/other.key" 2>/dev/null
openssl pkey -in "$tmp/other.key" -pubout -out "$tmp/other.pub"
if cosign_verify "$tmp/other.pub" "$rel/SHA256SUMS.sig" "$rel/SHA256SUMS"; then fail "cosign accepts another key"; fi
pass "cosign $("$COSIGN" version 2>&1 | sed -n 's/^GitVersion: *//p') verifies both signatures, refuses a tampered SHA256SUMS, a tampered module and another key"

(cd "$rel" && sha256sum --quiet -c SHA256SUMS) || fail "sha256sum -c SHA256SUMS"
cp -r "$rel" "$tmp/tampered-release"
printf '\0' >>"$tmp/tampered-release/egress_identity.wasm"
if (cd "$tmp/tampered-release" && sha256sum --quiet -c SHA256SUMS 2>/dev/null); then fail "sha256sum -c accepts a tampered module"; fi
pass "SHA256SUMS covers every file ($(wc -l <"$rel/SHA256SUMS") files) and catches a tampered module"

# ------------------------------------------------------------------------------------------ the CLI
for cli in "$rel"/egress-identity-"$version"-*-linux-musl; do
    file -b "$cli" | grep -Eq 'static(-pie)? linked|statically linked' || fail "$(basename "$cli") is not static: $(file -b "$cli")"
    pass "$(basename "$cli"): $(file -b "$cli" | cut -d, -f1-2), static"
done
got="$("$rel/egress-identity-$version-x86_64-linux-musl" --version)"
[ "$got" = "egress-identity $version" ] || fail "the x86_64 CLI says '$got'"
pass "the x86_64 CLI runs: $got"

# ------------------------------------------------------------------------------------------ OCI, SBOM
python3 - "$rel" <<'EOF'
import json, sys, pathlib
rel = pathlib.Path(sys.argv[1])
manifest = json.loads((rel / "release.json").read_text())
index = json.loads((rel / "oci" / "index.json").read_text())
by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
tag = manifest["oci"]["tag"]
assert by_tag == {tag: manifest["oci"]["wasm"], f"{tag}-compat": manifest["oci"]["compat"]}, (by_tag, manifest["oci"])
for m in index["manifests"]:
    assert (rel / "oci" / "blobs" / "sha256" / m["digest"].split(":")[1]).is_file(), m
EOF
pass "the OCI layout's index names both variants with release.json's digests"
EGRESS_OCI_LAYOUT="$rel/oci" EGRESS_WASM="$rel/egress_identity.wasm" EGRESS_OCI_TAG="$version" \
    EGRESS_OCI_DIGESTS="$(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["oci"]; print(json.dumps({"wasm": o["wasm"], "compat": o["compat"]}))' "$rel/release.json")" \
    bash -c 'cd tests/oci && go test -count=1 ./...' || fail "tests/oci on the release's layout"
pass "go-containerregistry reads both variants of the release's layout back to the module"
"${PYTHON:-.venv/bin/python}" scripts/check-sbom.py "$rel/sbom" >"$tmp/sbom.out" || { cat "$tmp/sbom.out" >&2; fail "the release's SBOMs"; }
pass "the SBOMs name the locked dependencies"

# ------------------------------------------------------------------------------------------ render pins
cli="$rel/egress-identity-$version-x86_64-linux-musl"
wasm_sha="$(sha256sum "$rel/egress_identity.wasm" | cut -d' ' -f1)"
oci_digest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["oci"]["wasm"])' "$rel/release.json")"
"$cli" render istio examples/policy.json --release "$rel/release.json" --image-repository registry.example/egress-identity \
    >"$tmp/istio.yaml"
grep -q "url: oci://registry.example/egress-identity@$oci_digest" "$tmp/istio.yaml" || fail "render istio --release does not pin $oci_digest"
if grep -q PLACEHOLDER "$tmp/istio.yaml"; then fail "render istio --release leaves a placeholder"; fi
"$cli" render kuma examples/policy.json --release "$rel/release.json" >"$tmp/kuma.yaml"
# The printer quotes a digest that starts with a digit.
grep -Eq "sha256: \"?$wasm_sha\"?\$" "$tmp/kuma.yaml" || fail "render kuma --release does not pin $wasm_sha"
if grep -q PLACEHOLDER "$tmp/kuma.yaml"; then fail "render kuma --release leaves a placeholder"; fi
if "$cli" render istio examples/policy.json --release "$rel/release.json" >/dev/null 2>"$tmp/err"; then
    fail "render istio --release without a repository succeeds"
fi
grep -q -- "--image-repository" "$tmp/err" || fail "render istio --release without a repository: $(cat "$tmp/err")"
pass "render istio and render kuma pin the release's digests (no placeholder)"

# ------------------------------------------------------------------------------------------ reproducible
# Two clean builds of this commit in two directories of different depth, each with its own target dir.
release_sha="$wasm_sha"
dirty=0
[[ "$revision" != *-dirty ]] || dirty=1
for dir in "$tmp/a/egress-identity" "$tmp/build/b/other-name"; do
    git clone -q --no-local "$ROOT" "$dir"
    mkdir -p "$dir/target"
    cp target/wasm-toolchain.env "$dir/target/"
    (cd "$dir" && EGRESS_IDENTITY_REVISION="${revision%-dirty}" bash scripts/build-wasm.sh >"$dir.log" 2>&1) ||
        { tail -20 "$dir.log" >&2; fail "clean build in $dir"; }
    sha="$(sha256sum "$dir/dist/egress_identity.wasm" | cut -d' ' -f1)"
    printf 'test-release: clean build in %s: %s\n' "$dir" "$sha"
    shas+=("$sha")
done
[ "${shas[0]}" = "${shas[1]}" ] || fail "two clean builds differ: ${shas[*]}"
if [ "$dirty" = 0 ]; then
    [ "${shas[0]}" = "$release_sha" ] || fail "the clean builds (${shas[0]}) differ from the release's module ($release_sha)"
    pass "reproducible: two clean builds in other directories give the release's sha256 $release_sha"
else
    pass "reproducible: two clean builds in other directories give $shas (the release itself was built from a dirty tree: not compared)"
fi
