#!/usr/bin/env bash
# Publishes the filter to an OCI registry in both layouts Istio's WasmPlugin accepts (`make publish`):
#   REGISTRY:TAG         the Wasm variant (two layers; the module as application/vnd.module.wasm.content.layer.v1+wasm)
#   REGISTRY:TAG-compat  the compat variant (one tar+gzip layer with plugin.wasm)
# then pulls both back by digest, checks the module bytes, and prints the digests and the WasmPlugin
# `url: oci://REGISTRY@sha256:<digest>`.
#
#   scripts/publish.sh [--check] REGISTRY TAG      REGISTRY is host[:port]/repository (or set REGISTRY, TAG)
#
# Environment:
#   INSECURE=1   plain HTTP, for a local registry (scripts/registry.sh run)
#   PIN=1        also rewrite the url: lines of examples/istio/*/wasm-plugin.yaml (and traffic-extension/) to the pushed Wasm variant
#   WASM=FILE    the module (default dist/egress_identity.wasm, built by `make build`)
#   EGRESS_REGISTRY_USERNAME, EGRESS_REGISTRY_PASSWORD   the registry's credentials (e.g. ghcr.io: your user
#                and a token with write:packages); anonymous when unset
# --check only validates the arguments (the Makefile runs it before building).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    echo "usage: make publish REGISTRY=host[:port]/repository TAG=tag [INSECURE=1] [PIN=1]" >&2
    echo "   or: scripts/publish.sh host[:port]/repository tag" >&2
    exit 2
}

CHECK=0
if [ "${1:-}" = --check ]; then CHECK=1; shift; fi
REGISTRY="${1:-${REGISTRY:-}}"
TAG="${2:-${TAG:-}}"
WASM="${WASM:-dist/egress_identity.wasm}"

if [ -z "$REGISTRY" ] || [ -z "$TAG" ]; then usage; fi
if [[ "$REGISTRY" != */* || "$REGISTRY" == *@* || "${REGISTRY##*/}" == *:* ]]; then
    echo "publish: REGISTRY must be host[:port]/repository, without tag or digest (got '$REGISTRY')" >&2
    usage
fi
if [[ ! "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
    echo "publish: TAG '$TAG' is not a valid tag" >&2
    usage
fi
[ "$CHECK" = 0 ] || exit 0

args=(push --wasm "$WASM" --image "$REGISTRY:$TAG")
[ "${INSECURE:-0}" != 1 ] || args+=(--insecure)
if [ "${PIN:-0}" = 1 ]; then
    for manifest in examples/istio/*/wasm-plugin.yaml examples/istio/*/traffic-extension/traffic-extension.yaml; do
        args+=(--pin "$manifest")
    done
fi
# cargo's own progress shows while the publisher compiles (about 2 minutes the first time).
echo "publish: building the publisher (egress-identity-publish), then pushing $WASM to $REGISTRY:$TAG" >&2
exec "${CARGO:-cargo}" run -p egress-identity-publish --bin egress-identity-publish -- "${args[@]}"
