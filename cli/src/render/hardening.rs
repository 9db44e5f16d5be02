//! Envoy's edge-proxy hardening ("Configuring Envoy as an edge proxy", Envoy's best practices) for the
//! listeners the filter serves: the gateway faces callers it has not yet authenticated, and callers it denies.
//! Every renderer takes its values from here; where a platform sets its own, its renderer says so.
//!
//! * A handshake deadline on each filter chain (`transport_socket_connect_timeout`): a caller that starts a
//!   TLS handshake and stalls is closed.
//! * HTTP: a deadline for the request headers (`request_headers_timeout`), idle deadlines for streams and
//!   connections, and HTTP/2 stream and window limits.
//! * Per-connection buffer limits on listeners and clusters.
//! * A global limit of downstream connections (the overload manager), where the bootstrap is ours.
//!
//! The network filter's own deadline, for connections it holds undecided, is `connectionDecisionTimeoutMs`
//! (core `pending_connections.rs`).

use super::{int, map, s, Yaml};

/// How long a caller may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: &str = "10s";
/// How long a caller may take to send a request's headers.
pub const REQUEST_HEADERS_TIMEOUT: &str = "10s";
/// How long a stream may see no activity (Envoy's default; Istio sets none).
pub const STREAM_IDLE_TIMEOUT: &str = "300s";
/// How long a downstream connection may stay without a request (Envoy's default is 1 h).
pub const CONNECTION_IDLE_TIMEOUT: &str = "300s";
/// Bytes buffered per connection, each way (the edge guide's 32 KiB).
pub const BUFFER_LIMIT_BYTES: i64 = 32 * 1024;
/// HTTP/2: concurrent streams per connection, and the initial stream and connection windows (edge guide).
pub const H2_MAX_CONCURRENT_STREAMS: i64 = 100;
pub const H2_INITIAL_STREAM_WINDOW: i64 = 64 * 1024;
pub const H2_INITIAL_CONNECTION_WINDOW: i64 = 1024 * 1024;
/// Downstream connections the whole gateway accepts (the overload manager's global limit).
pub const MAX_DOWNSTREAM_CONNECTIONS: i64 = 50_000;

/// The HTTP connection manager's hardening, as (field, value) pairs in Envoy's snake_case; `idle_timeout`
/// belongs in `common_http_protocol_options` (see [`connection_idle_timeout`]).
pub fn hcm_fields() -> Vec<(&'static str, Yaml)> {
    vec![
        ("request_headers_timeout", s(REQUEST_HEADERS_TIMEOUT)),
        ("stream_idle_timeout", s(STREAM_IDLE_TIMEOUT)),
        ("http2_protocol_options", http2_options()),
    ]
}

/// `common_http_protocol_options.idle_timeout`.
pub fn connection_idle_timeout() -> (&'static str, Yaml) {
    ("idle_timeout", s(CONNECTION_IDLE_TIMEOUT))
}

pub fn http2_options() -> Yaml {
    map([
        ("max_concurrent_streams", int(H2_MAX_CONCURRENT_STREAMS)),
        ("initial_stream_window_size", int(H2_INITIAL_STREAM_WINDOW)),
        ("initial_connection_window_size", int(H2_INITIAL_CONNECTION_WINDOW)),
    ])
}

/// The bootstrap's overload manager: a global limit of downstream connections (without one, Envoy accepts
/// connections until it runs out of file descriptors or memory, and says so in its log).
pub fn overload_manager() -> Yaml {
    map([
        ("refresh_interval", s("0.25s")),
        (
            "resource_monitors",
            Yaml::Seq(vec![map([
                ("name", s("envoy.resource_monitors.global_downstream_max_connections")),
                (
                    "typed_config",
                    map([
                        (
                            "@type",
                            s("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"),
                        ),
                        ("max_active_downstream_connections", int(MAX_DOWNSTREAM_CONNECTIONS)),
                    ]),
                ),
            ])]),
        ),
    ])
}
