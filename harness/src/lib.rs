//! Test and demo harness for egress-identity.
//!
//! * [`pki`]: a throw-away test PKI (mesh CA, partner CA, gateway/server/client certificates).
//! * [`topology`]: the real gateway Envoy (`envoy/gateway.yaml`) with the filter wasm and an external
//!   mTLS server (nginx, `envoy/external-server/nginx.conf`), started natively on fixed loopback ports.
//! * [`client`]: calls the gateway as a workload with the `curl` binary.
//! * [`sds`]: the file-based SDS resources the gateway reads its certificates from (and rotation).
//! * [`load`]: a bounded load generator (W workers x K requests per connection, switchable caller).
//! * [`lds`]: the gateway's listener from file-based LDS, to push a new plugin configuration (reload).
//! * [`hbone`]: calls an Istio waypoint as ztunnel does (HTTP/2 CONNECT over mTLS).
//! * [`istiod`]: what istiod generates for a gateway (tests/istiod's dump) as a bootstrap upstream Envoy runs.
//! * [`spire`]: SPIRE servers and an agent on loopback, workloads fetching their SVIDs from it.
//! * [`dns`]: an authoritative DNS responder on loopback (A records from a table) for Envoy's c-ares resolver.
//! * [`bench`]: what the scale benchmarks share (rendered gateways, Envoy and nginx started, RSS, callgrind).
//!
//! Everything runs in a *run directory* laid out as
//!
//! ```text
//! <run>/pki/...                      certificates and keys (see pki::layout)
//! <run>/sds/<secret>.yaml            SDS resources for the gateway (see sds)
//! <run>/lds/listeners.yaml           the gateway's listener, with Options::with_lds (see lds)
//! <run>/dist/egress_identity.wasm    the filter (a copy)
//! <run>/logs/                        gateway-envoy.log, gateway-access.log, external-access.log, ...
//! ```
//!
//! and every path inside the Envoy and nginx configurations is relative to it, so the same configuration
//! files work unchanged in a container whose working directory holds that layout.

pub mod bench;
pub mod client;
pub mod dns;
pub mod hbone;
pub mod istiod;
pub mod l4;
pub mod lds;
pub mod load;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod sds;
pub mod sds_server;
pub mod spire;
pub mod topology;

/// Boxed error used across the harness.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Result used across the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// The repository root (the parent of the harness crate).
pub fn repo_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A request path no other request of this process uses — `<prefix>/<pid>-<n>` — so the partner's access
/// log tells whether *this* request arrived.
pub fn unique_path(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{prefix}/{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub(crate) fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}
