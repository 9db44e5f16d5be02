#!/usr/bin/env bash
# Regenerates the fixed certificates the core's unit tests read (they also run on wasm, where no PKI can
# be generated at test time). End-to-end tests make their own PKI at run time instead.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 -subj /O=test-mesh-ca \
  -keyout "$tmp/ca.key" -out ca.pem -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign -addext subjectAltName=URI:spiffe://cluster.local 2>/dev/null
leaf() { # name, extensions (one per line)
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=$1" -keyout "$tmp/$1.key" \
    -out "$tmp/$1.csr" 2>/dev/null
  printf '%s\n' "$2" > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA ca.pem -CAkey "$tmp/ca.key" -days 36500 -extfile "$tmp/$1.ext" \
    -out "$1.pem" 2>/dev/null
}
leaf app1 'subjectAltName=URI:spiffe://cluster.local/ns/team/sa/app1
keyUsage=critical,digitalSignature'
leaf two-uris 'subjectAltName=URI:spiffe://cluster.local/ns/team/sa/app1,URI:spiffe://cluster.local/ns/team/sa/app2
keyUsage=critical,digitalSignature'
leaf no-uri 'subjectAltName=DNS:app1.team.svc
keyUsage=critical,digitalSignature'
leaf key-cert-sign 'subjectAltName=URI:spiffe://cluster.local/ns/team/sa/app1
keyUsage=critical,digitalSignature,keyCertSign'
leaf bad-spiffe-id 'subjectAltName=URI:spiffe://cluster.local/ns/../sa/app1
keyUsage=critical,digitalSignature'
leaf kuma-legacy 'subjectAltName=URI:spiffe://default/backend,URI:kuma://kuma.io/service/backend,URI:kuma://version/v1
keyUsage=critical,digitalSignature'
leaf kuma-two-spiffe 'subjectAltName=URI:spiffe://default/backend,URI:spiffe://default/other,URI:kuma://version/v1
keyUsage=critical,digitalSignature'
leaf kuma-other-scheme 'subjectAltName=URI:spiffe://default/backend,URI:https://backend.example
keyUsage=critical,digitalSignature'
leaf trust-domain-id 'subjectAltName=URI:spiffe://cluster.local
keyUsage=critical,digitalSignature'
leaf no-key-usage 'subjectAltName=URI:spiffe://cluster.local/ns/team/sa/app1'
leaf no-digital-signature 'subjectAltName=URI:spiffe://cluster.local/ns/team/sa/app1
keyUsage=critical,keyEncipherment'
