#!/usr/bin/env bash
# A local OCI registry (Debian's docker-registry, i.e. CNCF Distribution) for trying `make publish` and for
# the publish test (publish/tests/registry.rs), which starts its own.
#
#   scripts/registry.sh install          install docker-registry if it is missing (idempotent, quiet when present)
#   scripts/registry.sh run [ADDR]       install if needed, then serve on ADDR (default 127.0.0.1:5000) in the
#                                        foreground, storage in a temporary directory removed on exit (Ctrl-C)
#
# Then, in another shell:
#   make publish REGISTRY=127.0.0.1:5000/egress-identity TAG=dev INSECURE=1
#
# The package's own service is never started (policy-rc.d denies it during the install).
set -Eeuo pipefail

BIN=/usr/bin/docker-registry

say() { printf 'registry: %s\n' "$*" >&2; }
die() { printf 'registry: ERROR: %s\n' "$*" >&2; exit 1; }

install_registry() {
    [ -x "$BIN" ] && return 0
    command -v apt-get >/dev/null || die "$BIN is missing and there is no apt-get to install docker-registry with"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "not root and no sudo: cannot install docker-registry"
        sudo=(sudo)
    fi
    say "installing Debian package docker-registry"
    "${sudo[@]}" apt-get update -qq || say "warning: apt-get update reported errors; trying the install anyway"
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod +x "$policy"
        made_policy=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 docker-registry || rc=$?
    [ "$made_policy" = 0 ] || "${sudo[@]}" rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install docker-registry failed (exit $rc)"
    [ -x "$BIN" ] || die "docker-registry installed, but $BIN is missing"
}

REG_DIR="" REG_PID=""
stop_registry() {
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
    if [ -n "$REG_DIR" ]; then rm -rf "$REG_DIR"; fi
}

run_registry() {
    local addr="${1:-127.0.0.1:5000}" rc=0
    install_registry
    REG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/egress-registry.XXXXXX")"
    trap stop_registry EXIT
    trap 'exit 130' INT TERM
    cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG_DIR/storage
  delete:
    enabled: true
http:
  addr: $addr
  secret: local-only-$RANDOM$RANDOM
EOF
    say "serving http://$addr/v2/ (storage $REG_DIR/storage); Ctrl-C stops it and removes the storage"
    say "(it logs an error for each 404, e.g. a client asking whether a blob exists before pushing it)"
    "$BIN" serve "$REG_DIR/config.yml" &
    REG_PID=$!
    wait "$REG_PID" || rc=$?
    REG_PID=""
    exit "$rc"
}

case "${1:-}" in
    install) install_registry ;;
    run) shift; run_registry "$@" ;;
    *) echo "usage: $0 install | run [ADDR]" >&2; exit 2 ;;
esac
