//! The proxy-wasm host ABI, as this filter calls it: every call returns the host's status as a value, and
//! none panics. (The SDK's `hostcalls` panic on any status they do not expect -- a failed header write, a
//! local response or a close the host refuses -- which takes the worker's VM down; a value lets the adapter
//! deny the request instead.) The SDK remains the context dispatcher and allocator: buffers the host hands
//! over are allocated by its `proxy_on_memory_allocate`, and taken over here.
//!
//! Native builds (`cargo test`, clippy) have no host: every call fails ([`NO_HOST`]) and nothing is found.

/// A host status that is not Ok (`proxy_wasm::types::Status` as a plain integer: 1 NotFound, 2 BadArgument,
/// 8 CasMismatch, 10 InternalFailure...).
pub type HostStatus = u32;

pub const OK: HostStatus = 0;
pub const NOT_FOUND: HostStatus = 1;
pub const CAS_MISMATCH: HostStatus = 8;
/// What the native stubs return.
#[cfg(not(target_arch = "wasm32"))]
pub const NO_HOST: HostStatus = u32::MAX;

/// `proxy_wasm::types::MapType::HttpRequestHeaders`.
pub const REQUEST_HEADERS: u32 = 0;
/// `proxy_wasm::types::BufferType`: the caller's bytes (network filter), the plugin configuration.
pub const DOWNSTREAM_DATA: u32 = 2;
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// `proxy_wasm::types::StreamType::Downstream`.
pub const STREAM_DOWNSTREAM: u32 = 2;
/// `proxy_wasm::types::MetricType`.
pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;

fn status(code: u32) -> Result<(), HostStatus> {
    if code == OK {
        Ok(())
    } else {
        Err(code)
    }
}

/// A buffer the host allocated (through the SDK's `proxy_on_memory_allocate`) and handed over, now ours.
fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: on Ok the host hands over a `size`-byte allocation of this module's allocator (a boxed slice,
    // which the SDK allocates with exactly that capacity); nothing else refers to it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Logs `message` at `level` (0 trace .. 5 critical).
pub fn log(level: u32, message: &str) -> Result<(), HostStatus> {
    // SAFETY: the message is valid for its length for the call, which only reads it.
    status(unsafe { imports::proxy_log(level, message.as_ptr(), message.len()) })
}

/// Envoy's log level for Wasm (0 trace .. 5 critical).
pub fn log_level() -> Result<u32, HostStatus> {
    let mut level = 0;
    // SAFETY: the host writes one u32 through the pointer, valid for the call.
    status(unsafe { imports::proxy_get_log_level(&mut level) }).map(|()| level)
}

/// A property's bytes (`path`: its segments joined by NUL); `None` when absent.
pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: the path is valid for its length; the host writes the two out-parameters.
    match unsafe { imports::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) } {
        OK => Ok(take(data, size)),
        NOT_FOUND => Ok(None),
        code => Err(code),
    }
}

/// Sets a property (a Wasm filter-state value, `wasm.<path>`).
pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: both are valid for their lengths for the call, which only reads them.
    status(unsafe { imports::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// Up to `max` bytes of a buffer from `start`; `None` when there is none.
pub fn get_buffer(buffer: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: the host writes the two out-parameters.
    match unsafe { imports::proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) } {
        OK => Ok(take(data, size)),
        NOT_FOUND => Ok(None),
        code => Err(code),
    }
}

/// A header's bytes from `map`; `None` when absent.
pub fn get_header(map: u32, name: &str) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: the name is valid for its length; the host writes the two out-parameters.
    match unsafe { imports::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) } {
        OK => Ok(take(data, size)),
        NOT_FOUND => Ok(None),
        code => Err(code),
    }
}

/// Sets a header of `map`, replacing every copy.
pub fn replace_header(map: u32, name: &str, value: &str) -> Result<(), HostStatus> {
    // SAFETY: both are valid for their lengths for the call, which only reads them.
    status(unsafe {
        imports::proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes every copy of a header of `map`.
pub fn remove_header(map: u32, name: &str) -> Result<(), HostStatus> {
    // SAFETY: the name is valid for its length for the call, which only reads it.
    status(unsafe { imports::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// The proxy-wasm serialization of a header map: the count, each (name, value) length, then each name and
/// value NUL-terminated (all lengths little-endian u32).
pub fn serialize_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::with_capacity(4 + headers.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>());
    out.extend_from_slice(&len(headers.len()));
    for (name, value) in headers {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Answers the request locally.
pub fn send_local_response(code: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostStatus> {
    let headers = serialize_headers(headers);
    // SAFETY: every pointer is valid for its length for the call, which only reads them.
    status(unsafe {
        imports::proxy_send_local_response(
            code,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Closes a stream of the current context (e.g. the network filter's caller, [`STREAM_DOWNSTREAM`]).
pub fn close_stream(stream: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { imports::proxy_close_stream(stream) })
}

/// Makes later calls act on another context (e.g. from the root context's timer).
pub fn set_effective_context(context_id: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { imports::proxy_set_effective_context(context_id) })
}

/// The host's clock, in nanoseconds since the epoch.
pub fn current_time_ns() -> Result<u64, HostStatus> {
    let mut nanos = 0;
    // SAFETY: the host writes one u64 through the pointer, valid for the call.
    status(unsafe { imports::proxy_get_current_time_nanoseconds(&mut nanos) }).map(|()| nanos)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { imports::proxy_set_tick_period_milliseconds(period) })
}

/// Calls a host-defined function (e.g. Envoy's `set_envoy_filter_state`) with protobuf-encoded arguments.
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: name and arguments are valid for their lengths; the host writes the two out-parameters.
    match unsafe {
        imports::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    } {
        OK => Ok(take(data, size)),
        code => Err(code),
    }
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, HostStatus> {
    let mut id = 0;
    // SAFETY: the name is valid for its length; the host writes one u32.
    status(unsafe { imports::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { imports::proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    status(unsafe { imports::proxy_record_metric(id, value) })
}

/// A shared-data value and its compare-and-swap token (0 when the key is absent).
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), HostStatus> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0, 0);
    // SAFETY: the key is valid for its length; the host writes the three out-parameters.
    match unsafe { imports::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok((take(data, size), cas)),
        NOT_FOUND => Ok((None, 0)),
        code => Err(code),
    }
}

/// Stores a shared-data value if its token is still `cas` (0: unconditionally); [`CAS_MISMATCH`] otherwise.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostStatus> {
    // SAFETY: key and value are valid for their lengths for the call, which only reads them.
    status(unsafe { imports::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

#[cfg(target_arch = "wasm32")]
mod imports {
    // The imports the SDK declares (returning `Status`, a `repr(u32)` enum, and taking enums), with plain
    // integers, so that no value the host returns can be an invalid enum.
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
        pub fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_send_local_response(
            code: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_close_stream(stream: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_call_foreign_function(
            name: *const u8,
            name_size: usize,
            arguments: *const u8,
            arguments_size: usize,
            results: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, size: usize, cas: u32) -> u32;
    }
}

/// No host: every call fails; reads find nothing.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod imports {
    use super::{NOT_FOUND, NO_HOST};
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_log_level(_: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NOT_FOUND
    }
    pub unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NOT_FOUND
    }
    pub unsafe fn proxy_get_header_map_value(_: u32, _: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NOT_FOUND
    }
    pub unsafe fn proxy_replace_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_close_stream(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_call_foreign_function(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_record_metric(_: u32, _: u64) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_shared_data(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize, _: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_shared_data(_: *const u8, _: usize, _: *const u8, _: usize, _: u32) -> u32 {
        NO_HOST
    }
}
