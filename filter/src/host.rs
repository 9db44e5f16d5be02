//! The host calls the filter makes, each checked: a failure is a value, never a panic of ours.

use egress_identity_core::audit;
use egress_identity_core::identity_mapping::SECRET_FILTER_STATE_KEY;
use egress_identity_core::principal::{HostError, Lookup, PrincipalProperty};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

/// A property for the core's principal resolution: `None` when absent or empty.
pub fn property(property: PrincipalProperty) -> Lookup {
    match hostcalls::get_property(property.path().to_vec()) {
        Ok(value) => Ok(value.filter(|v| !v.is_empty())),
        Err(status) => {
            log::warn!("egress-identity: cannot read property {:?}: {status:?}", property.path());
            Err(HostError)
        }
    }
}

/// The SNI the caller sent (`connection.requested_server_name`); empty when none.
pub fn connection_server_name() -> Result<String, HostError> {
    let value = hostcalls::get_property(vec!["connection", "requested_server_name"]).map_err(|status| {
        log::warn!("egress-identity: cannot read the connection's server name: {status:?}");
        HostError
    })?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default())
}

/// The port the caller connected to (`destination.port`, an int64 in little-endian bytes).
pub fn destination_port() -> Result<u16, HostError> {
    let value = hostcalls::get_property(vec!["destination", "port"]).map_err(|status| {
        log::warn!("egress-identity: cannot read the destination port: {status:?}");
        HostError
    })?;
    let bytes: [u8; 8] = value.as_deref().and_then(|v| v.try_into().ok()).ok_or_else(|| {
        log::warn!("egress-identity: the destination port is not an int64");
        HostError
    })?;
    u16::try_from(i64::from_le_bytes(bytes)).map_err(|_| HostError)
}

/// Up to `max` bytes the caller has sent so far (held by the filter).
pub fn downstream_data(max: usize) -> Result<Vec<u8>, HostError> {
    hostcalls::get_buffer(BufferType::DownstreamData, 0, max).map(Option::unwrap_or_default).map_err(|status| {
        log::warn!("egress-identity: cannot read the connection's data: {status:?}");
        HostError
    })
}

/// Sets a well-known Envoy filter-state object (e.g. `envoy.tcp_proxy.cluster`) through the
/// `set_envoy_filter_state` foreign function, whose argument is the protobuf
/// `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments { path = 1; value = 2; }`.
pub fn set_envoy_filter_state(key: &str, value: &str) -> Result<(), HostError> {
    let mut arguments = Vec::with_capacity(key.len() + value.len() + 8);
    for (field, text) in [(1u8, key), (2u8, value)] {
        arguments.push(field << 3 | 2); // length-delimited
        let mut length = text.len();
        loop {
            let byte = u8::try_from(length & 0x7f).unwrap_or(0);
            length >>= 7;
            arguments.push(if length == 0 { byte } else { byte | 0x80 });
            if length == 0 {
                break;
            }
        }
        arguments.extend_from_slice(text.as_bytes());
    }
    hostcalls::call_foreign_function("set_envoy_filter_state", Some(&arguments)).map(|_| ()).map_err(|status| {
        log::warn!("egress-identity: cannot set filter state {key}: {status:?}");
        HostError
    })
}

/// Closes the caller's connection (of the current context). The SDK's `close_downstream` panics on any status
/// but Ok: this binding reports it.
pub fn close_downstream() -> bool {
    // SAFETY: no pointers; the host only reads the stream type.
    let status = unsafe { abi::proxy_close_stream(STREAM_DOWNSTREAM) };
    if status != Status::Ok as u32 {
        log::error!("egress-identity: cannot close the connection: status {status}");
    }
    status == Status::Ok as u32
}

/// `proxy_close_stream`'s downstream (the network filter's caller).
const STREAM_DOWNSTREAM: u32 = 2;

/// Closes the caller's connection of another context (from the root context's timer): the host's calls
/// then act on that context. Whether it was closed.
pub fn close_connection_of(context_id: u32) -> bool {
    // SAFETY: no pointers; the host only looks the context up.
    let status = unsafe { abi::proxy_set_effective_context(context_id) };
    if status != Status::Ok as u32 {
        log::warn!("egress-identity: connection {context_id} is gone (status {status})");
        return false;
    }
    close_downstream()
}

/// The host's clock, in milliseconds since the epoch; `None` if it cannot be read. (The SDK's
/// `get_current_time` panics on any status but Ok.)
pub fn now_ms() -> Option<u64> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer, which is valid for the call.
    let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == Status::Ok as u32).then_some(nanos / 1_000_000)
}

/// A request header's bytes; `None` when the request does not carry it.
pub fn request_header(name: &str) -> Result<Option<Vec<u8>>, HostError> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).map_err(|status| {
        log::warn!("egress-identity: cannot read request header {name}: {status:?}");
        HostError
    })
}

/// Sets a request header, replacing every copy the client sent.
pub fn set_request_header(name: &str, value: &str) -> Result<(), HostError> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).map_err(|status| {
        log::warn!("egress-identity: cannot set request header {name}: {status:?}");
        HostError
    })
}

/// Removes a request header (every copy). Also clears Envoy's route cache, so that nothing a client sent
/// selects the route any more.
pub fn remove_request_header(name: &str) -> Result<(), HostError> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).map_err(|status| {
        log::warn!("egress-identity: cannot remove request header {name}: {status:?}");
        HostError
    })
}

/// Sets a Wasm property (filter state `wasm.<key>`). The SDK's `set_property` panics on any status but Ok
/// (e.g. a read-only property already set): this binding reports it.
fn set_property(key: &str, value: &[u8]) -> Result<(), u32> {
    // SAFETY: both pointers are valid for their lengths for the duration of the call, which only reads them.
    let status = unsafe { abi::proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    if status == Status::Ok as u32 {
        Ok(())
    } else {
        Err(status)
    }
}

/// A property's bytes (`path`: its segments joined by NUL, e.g. `b"response\0flags"`); `None` when absent.
/// The SDK's `get_property` panics on an unexpected status: this binding reports it.
fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, u32> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the path is valid for its length; the host writes the two out-parameters, and on Ok hands over
    // a buffer it allocated through the SDK's `proxy_on_memory_allocate` (a boxed slice of `size` bytes).
    let status = unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    if status == Status::NotFound as u32 {
        return Ok(None);
    }
    if status != Status::Ok as u32 {
        return Err(status);
    }
    if data.is_null() {
        return Ok(None);
    }
    // SAFETY: see above: `data` is a `size`-byte allocation of this module's allocator, now ours.
    Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) }))
}

/// Stores a value in the stream's filter state (Envoy prefixes the key with `wasm.`); a failure only
/// costs the value.
pub fn set_filter_state(key: &str, value: &str) {
    if let Err(status) = set_property(key, value.as_bytes()) {
        log::warn!("egress-identity: cannot set filter state {key}: status {status}");
    }
}

/// Names the SDS secret of the identity chosen for a single-cluster destination in filter state
/// (`wasm.egress_identity.secret`), which the gateway's `set_filter_state` hands to the upstream connection.
/// Unlike the audit record, the request cannot go on without it.
pub fn set_identity_secret(secret: &str) -> Result<(), HostError> {
    set_property(SECRET_FILTER_STATE_KEY, secret.as_bytes()).map_err(|status| {
        log::warn!("egress-identity: cannot set filter state {SECRET_FILTER_STATE_KEY}: status {status}");
        HostError
    })
}

/// Envoy's response flags of the request or connection (`response.flags`, an int64: bit n is
/// `StreamInfo::CoreResponseFlag` n); 0 when absent.
pub fn response_flags() -> Result<u64, HostError> {
    let value = get_property(b"response\0flags").map_err(|status| {
        log::warn!("egress-identity: cannot read the response flags: status {status}");
        HostError
    })?;
    match value.as_deref().map(<[u8; 8]>::try_from) {
        None => Ok(0),
        Some(Ok(bytes)) => Ok(u64::from_le_bytes(bytes)),
        Some(Err(_)) => {
            log::warn!("egress-identity: the response flags are not an int64");
            Err(HostError)
        }
    }
}

/// A string property (`path` as for [`get_property`]); empty when absent or unreadable (what it could not
/// read is logged).
pub fn string_property(path: &[u8]) -> String {
    match get_property(path) {
        Ok(value) => value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default(),
        Err(status) => {
            log::warn!("egress-identity: cannot read property {}: status {status}", String::from_utf8_lossy(path));
            String::new()
        }
    }
}

/// `upstream.transport_failure_reason`: why the upstream connection failed (e.g. "TLS error: Secret is not
/// supplied by SDS").
pub const UPSTREAM_TRANSPORT_FAILURE_REASON: &[u8] = b"upstream\0transport_failure_reason";
/// `response.code_details` (HTTP): e.g. `via_upstream`, `upstream_reset_before_response_started{...}`.
pub const RESPONSE_CODE_DETAILS: &[u8] = b"response\0code_details";
/// `upstream.local_address`: set once an upstream connection was made.
pub const UPSTREAM_LOCAL_ADDRESS: &[u8] = b"upstream\0local_address";

/// Whether the property at `path` is present (an unreadable one counts as absent, and is logged).
pub fn has_property(path: &[u8]) -> bool {
    match get_property(path) {
        Ok(value) => value.is_some_and(|v| !v.is_empty()),
        Err(status) => {
            log::warn!("egress-identity: cannot read property {}: status {status}", String::from_utf8_lossy(path));
            false
        }
    }
}

/// Declares filter state `wasm.egress_identity.decision` as a `google.protobuf.Struct` (the foreign function
/// `declare_property`), so an access log's `%FILTER_STATE(...:TYPED)%` renders it as a JSON object. It
/// lives as long as the request (HTTP filter) or the connection (network filter).
pub fn declare_decision_property(l4: bool) -> Result<(), proxy_wasm::types::Status> {
    // DeclarePropertyArguments { name = 1, readonly = 2, type = 3 (Protobuf = 3), schema = 4, span = 5 }
    let name = audit::STRUCT_FILTER_STATE_KEY.as_bytes();
    let schema = audit::STRUCT_TYPE_URL.as_bytes();
    let span = if l4 { 2 } else { 1 }; // DownstreamConnection, DownstreamRequest
    let mut arguments = Vec::with_capacity(name.len() + schema.len() + 12);
    for (tag, bytes) in [(0x0a, name), (0x22, schema)] {
        arguments.push(tag);
        arguments.push(u8::try_from(bytes.len()).unwrap_or(0));
        arguments.extend_from_slice(bytes);
    }
    arguments.extend_from_slice(&[0x18, 3, 0x28, span]);
    hostcalls::call_foreign_function("declare_property", Some(&arguments)).map(|_| ())
}

/// Sets the declared `wasm.egress_identity.decision` to a serialized Struct.
pub fn set_decision_struct(bytes: &[u8]) {
    if let Err(status) = set_property(audit::STRUCT_FILTER_STATE_KEY, bytes) {
        log::warn!("egress-identity: cannot set filter state {}: status {status}", audit::STRUCT_FILTER_STATE_KEY);
    }
}

/// Answers the request locally with a JSON body.
pub fn respond(status: u32, body: &str) {
    let headers = vec![("content-type", "application/json")];
    if let Err(e) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::error!("egress-identity: cannot send the local response: {e:?}");
    }
}

/// The plugin's root id (`root_id` in Envoy, Istio's `pluginName`).
pub fn plugin_root_id() -> String {
    match hostcalls::get_property(vec!["plugin_root_id"]) {
        Ok(Some(id)) => String::from_utf8_lossy(&id).into_owned(),
        _ => String::new(),
    }
}

/// Envoy's log level for Wasm plugins (`--component-log-level wasm:debug`, `/logging?wasm=debug`).
/// The SDK's own `get_log_level` panics on an unexpected status; this binding reports it instead.
pub fn envoy_log_level() -> Option<LogLevel> {
    let mut level: u32 = 0;
    // SAFETY: the host writes one u32 through the pointer, which is valid for the call.
    let status = unsafe { abi::proxy_get_log_level(&mut level) };
    if status != Status::Ok as u32 {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

#[cfg(target_arch = "wasm32")]
mod abi {
    // The same imports the SDK declares (returning `Status`, a `repr(u32)` enum), with plain integers so
    // that no value the host returns can be an invalid enum.
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_close_stream(stream_type: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    }
}

/// Native builds (`cargo test`, clippy) have no host: the level is unknown, properties are absent and cannot
/// be set.
#[cfg(not(target_arch = "wasm32"))]
mod abi {
    pub unsafe fn proxy_get_log_level(_return_level: *mut u32) -> u32 {
        u32::MAX
    }
    pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        1 // NotFound
    }
    pub unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        u32::MAX
    }
    pub unsafe fn proxy_close_stream(_: u32) -> u32 {
        u32::MAX
    }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 {
        u32::MAX
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        u32::MAX
    }
}
