//! The host calls the filter makes, each checked: a failure is a value, never a panic of ours.

use egress_identity_core::principal::{HostError, Lookup, PrincipalProperty};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, Status};

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

/// Stores a value in the stream's filter state (Envoy prefixes the key with `wasm.`); a failure only
/// costs the value.
pub fn set_filter_state(key: &str, value: &str) {
    if let Err(status) = hostcalls::set_property(vec![key], Some(value.as_bytes())) {
        log::warn!("egress-identity: cannot set filter state {key}: {status:?}");
    }
}

/// Answers the request locally with a JSON body.
pub fn respond(status: u32, body: &str) {
    let headers = vec![("content-type", "application/json")];
    if let Err(e) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::error!("egress-identity: cannot send the local response: {e:?}");
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
    // The same import the SDK declares (as `*mut LogLevel -> Status`, both `repr(u32)`), with plain integers
    // so that no value the host returns can be an invalid enum.
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
    }
}

/// Native builds (`cargo test`, clippy) have no host: the level is unknown.
#[cfg(not(target_arch = "wasm32"))]
mod abi {
    pub unsafe fn proxy_get_log_level(_return_level: *mut u32) -> u32 {
        u32::MAX
    }
}
