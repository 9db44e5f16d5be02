# egress-identity: `make demo` runs the demo, `make test` runs every test. Each target installs what it
# needs, and only that (scripts/setup.sh build|demo|test|bench: idempotent, one quiet line once installed).
# EGRESS_WASM_TOOLCHAIN=debian forces the Debian rustc-web/-Zbuild-std wasm toolchain (see
# scripts/setup.sh); the default, auto, uses rustup's wasm targets when rustup can install them.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
# Prerequisites run one after another, in the order written, even under make -j.
.NOTPARALLEL:

CARGO ?= cargo
PYTEST := .venv/bin/pytest

.PHONY: setup setup-build setup-demo setup-test setup-bench build demo test test-native test-wasm test-manifests test-chart test-istiod \
	test-oci test-sbom test-release release fmt fmt-check core-deps clippy pki clean distclean

## setup: everything `make test` needs (setup-build, setup-demo, setup-bench: less, or other things)
setup: setup-test
setup-build:
	bash scripts/setup.sh build
setup-demo:
	bash scripts/setup.sh demo
setup-test:
	bash scripts/setup.sh test
setup-bench:
	bash scripts/setup.sh bench

## build: the proxy-wasm filter (filter/) -> dist/egress_identity.wasm
build: setup-build
	bash scripts/build-wasm.sh

demo: setup-demo build
	$(CARGO) run --release -p egress-identity-harness --bin demo

## test: format, native unit + e2e tests, core tests on wasm, manifest and chart tests, the release's OCI layout and
## SBOMs, clippy, fuzz smoke. Stops at the first failure.
test: setup-test build fmt-check core-deps test-native test-wasm test-manifests test-chart test-istiod test-oci \
	test-sbom test-release clippy fuzz-smoke

## core-deps: the core crate must not depend on proxy-wasm, even indirectly (the filter is the only adapter)
core-deps:
	@if $(CARGO) tree -p egress-identity-core -e normal,build --prefix none | grep -q '^proxy-wasm '; then \
		echo "core-deps: egress-identity-core depends on proxy-wasm:"; $(CARGO) tree -p egress-identity-core -i proxy-wasm; exit 1; \
	else echo "core-deps: egress-identity-core has no proxy-wasm dependency"; fi

test-native:
	$(CARGO) test --workspace

test-wasm:
	bash scripts/test-wasm-core.sh

# pytest exits 5 when it collects no test; that is not a failure here.
test-manifests:
	@if [ -d tests/manifests ]; then \
		echo "$(PYTEST) -q tests/manifests"; \
		rc=0; $(PYTEST) -q tests/manifests || rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "tests/manifests: no tests collected"; rc=0; fi; \
		exit $$rc; \
	else echo "tests/manifests: absent, skipped"; fi

## test-chart: the example Helm charts (examples/helm, `render --chart`) under Helm v4 (tools/helm, built into
## .tools/bin by scripts/setup.sh test): lint --strict, what they install = the plain render object for object and
## valid against the CRDs, the policy guard, the knobs (tests/chart).
test-chart:
	$(CARGO) build --quiet -p egress-identity-cli
	$(PYTEST) -q tests/chart

## test-istiod: istiod's own xDS generation (istio.io/istio, in-process) on the rendered Istio examples, checked
## against what the design assumes, istio-agent's bootstrap for them, and `istioctl analyze` offline (tests/istiod;
## the first run downloads and compiles Istio: minutes). cli/tests/istiod_*.rs run that output on Envoy.
test-istiod:
	$(CARGO) build --quiet -p egress-identity-cli
	cd tests/istiod && gofmt -l . | (! grep .) && go vet ./... && PILOT_ENABLE_AMBIENT=true go test -count=1 ./...

## test-oci: the release's OCI image layout (`egress-identity-publish layout`: both variants, tagged test and
## test-compat) made from dist/egress_identity.wasm in a temporary directory and checked by go-containerregistry
## (tests/oci, Go): read, the printed digests, pushed into its in-process registry, pulled back by digest and by
## tag, the module taken out by Istio's fetcher rules and compared byte for byte.
test-oci: build
	$(CARGO) build --quiet -p egress-identity-publish
	cd tests/oci && gofmt -l . | (! grep .) && go vet ./...
	dir="$$(mktemp -d)"; trap 'rm -rf "$$dir"' EXIT; \
	digests="$$($(CARGO) run --quiet -p egress-identity-publish -- layout --wasm dist/egress_identity.wasm \
		--tag test --out "$$dir/layout" --json)"; \
	cd tests/oci && EGRESS_OCI_LAYOUT="$$dir/layout" EGRESS_WASM="$(CURDIR)/dist/egress_identity.wasm" \
		EGRESS_OCI_TAG=test EGRESS_OCI_DIGESTS="$$digests" go test -count=1 -v ./...

## test-sbom: the release's SBOMs (scripts/sbom.sh: cargo-cyclonedx, installed by scripts/setup.sh test) made twice,
## byte-identical, and checked against Cargo.lock and `cargo tree` (scripts/check-sbom.py).
test-sbom:
	dir="$$(mktemp -d)"; trap 'rm -rf "$$dir"' EXIT; \
	bash scripts/sbom.sh "$$dir/a" && bash scripts/sbom.sh "$$dir/b" 2>/dev/null && diff -r "$$dir/a" "$$dir/b" && \
	echo "test-sbom: two runs wrote the same bytes" && .venv/bin/python scripts/check-sbom.py "$$dir/a"

## test-release: `make release` into a temporary directory, checked with tools the project did not write
## (tests/release/test_release.sh): cosign verifies both signatures and refuses a tampered file and another key,
## sha256sum -c, static CLIs (file), the OCI layout (tests/oci), the SBOMs, render --release pins, and two clean
## builds of the module in other directories give the release's sha256.
test-release: setup-test build
	bash tests/release/test_release.sh

## release: everything a platform team installs, in dist/release/ (scripts/release.sh; README "Install"): the
## reproducible module, static CLIs (x86_64, aarch64), the OCI image layout (both variants), SBOMs,
## release.json, SHA256SUMS and cosign-format signatures.
##   make release SIGNING_KEY=release.key [REPOSITORY=ghcr.io/me/egress-identity]
release: setup-build
	SIGNING_KEY='$(SIGNING_KEY)' REPOSITORY='$(REPOSITORY)' bash scripts/release.sh dist/release

## fmt: format the workspace (rustfmt.toml); fmt-check: fail if anything is not formatted
fmt:
	$(CARGO) fmt --all
	cd fuzz && $(CARGO) fmt
fmt-check:
	$(CARGO) fmt --all --check
	cd fuzz && $(CARGO) fmt --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: egress-identity vs Envoy router only / native RBAC / an empty Wasm filter, rule scaling, criterion
## micro-benchmarks (BENCHMARKS.md). Not part of `make test`; installs wrk. ~7 min; shorter: make bench ROUNDS=1 DURATION=2
## (also NEWCONN_ROUNDS=, CONNECTIONS=, VARIANTS=A,C,D, MICRO=0, E2E=0, BENCH_ARGS="--probe F=set_cluster_header",
## BENCH_ARGS="--ladder --instructions 1000": the filter step by step, in instructions counted by callgrind).
## Config check only: make bench-check
.PHONY: bench bench-check
bench: setup-bench build
	ROUNDS='$(ROUNDS)' DURATION='$(DURATION)' CONNECTIONS='$(CONNECTIONS)' NEWCONN_ROUNDS='$(NEWCONN_ROUNDS)' \
		VARIANTS='$(VARIANTS)' MICRO='$(MICRO)' E2E='$(E2E)' CARGO='$(CARGO)' bash bench/run.sh $(BENCH_ARGS)

bench-check: setup-bench build
	CARGO='$(CARGO)' bash bench/run.sh --check

## bench-scale: one cluster per identity vs single-cluster mode (singleCluster) at SIZES identities (default
## 10,1000,10000): ready time, RSS, first request of a new identity, CPU per request, time to add one
## identity (BENCHMARKS.md, "Identity scale"). Not part of `make test`; uses the test ports. ~10 min.
SIZES ?= 10,1000,10000
SCALE_ROUNDS ?= 10
## SCALE_ARGS="--instructions 2000 [--instructions-breakdown]": also instructions per request and per tcp
## connection under callgrind, at the smallest size (+15 min; valgrind, from `make setup-bench`).
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: setup-test build
	$(CARGO) build --release -p egress-identity-cli -p egress-identity-harness --bin egress-identity --bin identity_scale
	target/release/identity_scale --cli target/release/egress-identity --out target/bench-scale \
		--sizes '$(SIZES)' --rounds '$(SCALE_ROUNDS)' $(SCALE_ARGS)

## bench-dynamic: dynamic destinations (`*.bench.example`), one forward-proxy cluster per identity vs one for all
## (singleCluster), at IDENTITIES x HOSTS (default 10,200 x 2,50): ready time, RSS and heap once ready, after
## every identity asked every host once and once those connections closed, the warm-up's wall time
## (BENCHMARKS.md, "Dynamic destinations"). Not part of `make test`; uses 127.0.0.1:25100-25447, 127.0.0.3:25443.
## ~4 min. DYNAMIC_ARGS="--instructions 2000": also instructions per keep-alive request and per first request
## of an identity to a host under callgrind, at the smallest size (+4 min; valgrind, from `make setup-bench`).
IDENTITIES ?= 10,200
HOSTS ?= 2,50
DYNAMIC_ARGS ?=
.PHONY: bench-dynamic
bench-dynamic: setup-test build
	$(CARGO) build --release -p egress-identity-cli -p egress-identity-harness --bin egress-identity --bin dynamic_scale
	target/release/dynamic_scale --cli target/release/egress-identity --out target/bench-dynamic \
		--identities '$(IDENTITIES)' --hosts '$(HOSTS)' $(DYNAMIC_ARGS)

## bench-attack: the gateway under attack (BENCHMARKS.md, "Under attack"): allowed callers alone, then while
## hundreds of idle L4 connections, stalled TLS handshakes and a flood of denied requests hit it; success
## rate, p50/p99 latency, gateway RSS side by side. Not part of `make test`; uses the test ports. ~2 min.
ATTACK_ARGS ?=
.PHONY: bench-attack
bench-attack: setup-demo build
	$(CARGO) build --release -p egress-identity-harness --bin under_attack
	target/release/under_attack --out target/bench-attack $(ATTACK_ARGS)

## dashboard-preview: docs/dashboard.png, the README's picture of monitoring/grafana-dashboard.json: a test
## gateway, a real Prometheus and 90 s of mixed traffic, the panels drawn with matplotlib (installed in .venv/).
.PHONY: dashboard-preview
dashboard-preview: setup-test build
	.venv/bin/pip install -q matplotlib
	mkdir -p docs
	$(CARGO) run --quiet --release -p egress-identity-harness --bin dashboard -- docs/dashboard.png 90

## fuzz: every cargo-fuzz target of fuzz/ for FUZZ_TIME seconds each (default 600), FUZZ_JOBS at a time.
## fuzz-smoke: 20 s each (part of `make test`; prints SKIP where no nightly toolchain can be installed).
## soak: SOAK_REQUESTS (default 1000000) through the real gateway with wrk, gateway RSS sampled
## (filter/tests/soak.rs, #[ignore]d so `make test-native` skips it; installs wrk).
FUZZ_TIME ?= 600
FUZZ_JOBS ?= 2
SOAK_REQUESTS ?= 1000000
.PHONY: fuzz fuzz-smoke soak
fuzz: setup-test
	FUZZ_JOBS=$(FUZZ_JOBS) bash scripts/fuzz.sh $(FUZZ_TIME)

fuzz-smoke: setup-test
	FUZZ_SMOKE=1 FUZZ_JOBS=$(FUZZ_JOBS) bash scripts/fuzz.sh 20

soak: setup-bench build
	SOAK_REQUESTS=$(SOAK_REQUESTS) $(CARGO) test --release -p egress-identity-filter --test soak -- --ignored --nocapture --test-threads=1

pki:
	$(CARGO) run -p egress-identity-harness --bin pki -- envoy/pki

clean:
	$(CARGO) clean
	rm -rf dist

## distclean: also the project's Python venv
distclean: clean
	rm -rf .venv

## publish: push dist/egress_identity.wasm to an OCI registry in both layouts Istio's WasmPlugin accepts --
## REGISTRY:TAG (Wasm variant) and REGISTRY:TAG-compat (compat variant) -- pull both back to check them, and print
## their digests and the WasmPlugin `url: oci://REGISTRY@sha256:...`. PIN=1 also points
## examples/istio/*/wasm-plugin.yaml at the pushed digest. Credentials: EGRESS_REGISTRY_USERNAME/_PASSWORD.
##   make publish REGISTRY=ghcr.io/me/egress-identity TAG=0.1.0
##   make publish REGISTRY=127.0.0.1:5000/egress-identity TAG=dev INSECURE=1   (local registry: scripts/registry.sh run)
.PHONY: publish publish-args
publish: publish-args build
	REGISTRY='$(REGISTRY)' TAG='$(TAG)' INSECURE='$(INSECURE)' PIN='$(PIN)' CARGO='$(CARGO)' bash scripts/publish.sh

publish-args:
	@REGISTRY='$(REGISTRY)' TAG='$(TAG)' bash scripts/publish.sh --check

## render: regenerate envoy/gateway.yaml from the demo policy (envoy/policy.json) and every platform's files in
## examples/ from the one example policy (examples/policy.json) with `egress-identity render`, the Helm charts of
## examples/helm included; cli/tests/render.rs checks that the committed files are exactly this output.
RENDER := $(CARGO) run --quiet -p egress-identity-cli --bin egress-identity -- render
DEMO_RENDER_FLAGS := --listen 127.0.0.1:10443 --l4-address 127.0.0.1 \
	--metrics 127.0.0.1:15090 \
	--access-log logs/gateway-access.log --upstream partner-api=127.0.0.1:18443 \
	--ca-secret partner-api=partner-ca --upstream partner-shared=127.0.0.1:18443 --ca-secret partner-shared=partner-ca \
	--identity-sds 127.0.0.1:18447 \
	--upstream partner-tcp=127.0.0.1:18444 --ca-secret partner-tcp=partner-ca \
	--upstream partner-shared-tcp=127.0.0.1:18444 --ca-secret partner-shared-tcp=partner-ca \
	--upstream partner-tls=127.0.0.1:18445
## The demo gateway with its certificate and the callers' bundles from a SPIRE agent (cli/tests/spire.rs runs it).
SPIRE_RENDER_FLAGS := --spire-agent unix:spire/agent/public/api.sock \
	--gateway-id spiffe://cluster.local/ns/egress/sa/egress-gateway
ISTIO_IMAGE = $$(sed -n 's/^ *url: *//p' $(1)/wasm-plugin.yaml | head -n 1)
.PHONY: render
render:
	$(RENDER) envoy envoy/policy.json $(DEMO_RENDER_FLAGS) > envoy/gateway.yaml.tmp
	mv envoy/gateway.yaml.tmp envoy/gateway.yaml
	$(RENDER) envoy envoy/policy.json $(DEMO_RENDER_FLAGS) $(SPIRE_RENDER_FLAGS) > envoy/spire/gateway.yaml.tmp
	mv envoy/spire/gateway.yaml.tmp envoy/spire/gateway.yaml
	mkdir -p examples/envoy
	$(RENDER) envoy examples/policy.json > examples/envoy/gateway.yaml.tmp
	mv examples/envoy/gateway.yaml.tmp examples/envoy/gateway.yaml
	$(RENDER) istio examples/policy.json --mode gateway \
		--image "$(call ISTIO_IMAGE,examples/istio/egress-gateway)" --out-dir examples/istio/egress-gateway
	$(RENDER) istio examples/policy.json --mode waypoint \
		--image "$(call ISTIO_IMAGE,examples/istio/egress-waypoint)" --out-dir examples/istio/egress-waypoint
	$(RENDER) kuma examples/policy.json --out-dir examples/kuma
	$(RENDER) istio examples/policy.json --mode gateway \
		--image "$(call ISTIO_IMAGE,examples/istio/egress-gateway)" --chart examples/helm/istio-gateway
	$(RENDER) istio examples/policy.json --mode waypoint \
		--image "$(call ISTIO_IMAGE,examples/istio/egress-waypoint)" --chart examples/helm/istio-waypoint
	$(RENDER) kuma examples/policy.json --chart examples/helm/kuma
