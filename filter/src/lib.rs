//! The egress-identity proxy-wasm filter: the thin adapter between Envoy and `egress-identity-core`, and
//! the only place proxy-wasm appears.
//!
//! Loaded as an HTTP filter (`envoy.filters.http.wasm`) it decides requests; loaded as a network filter
//! (`envoy.filters.network.wasm`, before tcp_proxy) with a root id ending in `-l4` it decides connections
//! to `tcp` and `tls` destinations ([`stream`]); with a root id ending in `-guard`, before an HTTP connection
//! manager, it only closes connections silent at their deadline ([`guard`]). Per request it asks the host for the caller's principal (through the core's [`principal::resolve`]
//! seam) and the request headers some policy needs, lets the core decide, and applies the decision: a 403
//! with a JSON body, or the internal headers that make the route pick the per-identity cluster. It records
//! the decision in filter state (for the access log) and in per-worker counters; an allowed request or
//! connection that then never reaches the partner gets its record and counters amended ([`upstream`]).
//! Every host call is checked; a failed one refuses the request with 500 `host_error` (after the decision,
//! when the upstream is checked, it only costs that check, and is logged). Without a valid configuration
//! every request is refused with 500 `not_configured` (fail closed).
//!
//! [`principal::resolve`]: egress_identity_core::principal::resolve

mod abi;
#[cfg(feature = "bench-ladder")]
mod bench_ladder;
mod counters;
mod guard;
mod host;
mod http;
mod logger;
mod protobuf;
mod record;
mod root;
mod stream;
#[cfg(feature = "test-host-failure")]
mod test_host_failure;
#[cfg(feature = "test-trap")]
mod test_trap;
mod upstream;

use proxy_wasm::traits::RootContext;

proxy_wasm::main! {{
    // Until the first configuration asks Envoy for its level (root::follow_envoy_log_level).
    logger::init(log::LevelFilter::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::EgressIdentityRoot::default()) });
}}
