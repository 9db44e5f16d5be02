//! egress-identity-core: the host-agnostic decision of an identity-aware egress gateway.
//!
//! The caller's SPIFFE principal (from its TLS peer certificate, or an Istio waypoint's filter state) goes
//! through two policy layers with Istio AuthorizationPolicy semantics — the gateway layer (who may use the
//! egress) and the destination layer (who may reach this host:port) — and is then mapped to an external
//! identity: an upstream cluster presenting that identity's client certificate. The policy is
//! platform-neutral; [`platform`] derives the names each platform (plain Envoy, Istio, Kuma) gives its
//! destinations and clusters.
//!
//! Nothing here knows proxy-wasm: the filter crate (`egress-identity-filter`) is the only host adapter,
//! and the CLI (`egress-identity-cli`) runs this same code natively. What the core needs from a host it
//! asks through a closure ([`principal::resolve`]).
//!
//! Modules depend on each other one way, from the document to the decision:
//! `config_document`, `config_error` → `platform`, `policy`, `identity`, `identity_mapping`, `destination` →
//! `config` → `request`, `principal` → `decision` → `audit`, `metrics`, `pending_connections`.

pub mod audit;
pub mod caller_namespaces;
pub mod certificate_cache;
pub mod config;
pub mod config_document;
pub mod config_error;
pub mod config_generation;
pub mod decision;
pub mod destination;
pub mod first_match_index;
pub mod identity;
pub mod identity_mapping;
pub mod metrics;
pub mod pattern;
pub mod peer_certificate;
pub mod pending_connections;
pub mod platform;
pub mod policy;
pub mod policy_value;
pub mod principal;
pub mod request;
pub mod spiffe_id;
pub mod tls_client_hello;
pub mod trust_domain;
