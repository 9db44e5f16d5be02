//! egress-identity: an identity-aware exit for Envoy egress gateways.
//!
//! The caller's SPIFFE principal (from its TLS peer certificate, or an Istio waypoint's filter state) goes
//! through two policy layers with Istio AuthorizationPolicy semantics — the gateway layer (who may use the
//! egress) and the destination layer (who may reach this host:port) — and is then mapped to an external
//! identity: an upstream cluster presenting that identity's client certificate.
//!
//! Everything but [`filter`] is host-agnostic plain Rust; `filter` is the thin proxy-wasm adapter.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod audit;
pub mod config;
pub mod decision;
pub mod destination;
pub mod first_match_index;
pub mod identity_mapping;
pub mod metrics;
pub mod pattern;
pub mod peer_certificate;
pub mod policy;
pub mod principal_cache;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod spiffe_id;
pub mod trust_domain;

#[cfg(feature = "filter")]
pub mod filter;
