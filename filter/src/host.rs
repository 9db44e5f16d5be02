//! The adapter's seam to its host: every call the filter makes of Envoy is a method of [`Host`], so the
//! contexts, the counters and the records run natively in tests against a mock (`host::mock`), failures
//! included. [`Envoy`] is the real host, over the raw ABI ([`crate::abi`]): a failure is a value -- a read
//! or a write the adapter then turns into a denial or a log line --, never a panic that takes the VM down.

use egress_identity_core::audit;
use egress_identity_core::identity_mapping::SECRET_FILTER_STATE_KEY;
use egress_identity_core::principal::{HostError, Lookup, PrincipalProperty};

use crate::abi::{self, HostStatus};
use crate::protobuf;

/// `upstream.transport_failure_reason`: why the upstream connection failed (e.g. "TLS error: Secret is not
/// supplied by SDS").
pub const UPSTREAM_TRANSPORT_FAILURE_REASON: &[u8] = b"upstream\0transport_failure_reason";
/// `response.code_details` (HTTP): e.g. `via_upstream`, `upstream_reset_before_response_started{...}`.
pub const RESPONSE_CODE_DETAILS: &[u8] = b"response\0code_details";
/// Envoy's filter state of the dynamic forward proxy's host.
pub const DYNAMIC_HOST: &str = "envoy.upstream.dynamic_host";
/// `upstream.local_address`: set once an upstream connection was made.
pub const UPSTREAM_LOCAL_ADDRESS: &[u8] = b"upstream\0local_address";

/// Everything the filter asks of its host. Reads of what may be absent return `Option`s; every failure is
/// a value, which the caller turns into a denial (`host_error`) or, where nothing depends on it, a log line.
pub trait Host {
    /// A property's bytes (`path`: its segments joined by NUL); `None` when absent.
    fn property_bytes(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError>;
    /// A request header's bytes; `None` when the request does not carry it.
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Sets a request header, replacing every copy the client sent.
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes a request header (every copy); Envoy then forgets the route it chose.
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    /// Answers the request locally with a JSON body.
    fn respond(&self, status: u32, body: &str) -> Result<(), HostError>;
    /// Up to `max` bytes the caller has sent so far (network filter).
    fn downstream_data(&self, max: usize) -> Result<Vec<u8>, HostError>;
    /// Closes the caller's connection (network filter).
    fn close_downstream(&self) -> Result<(), HostError>;
    /// Closes the caller's connection of another context (from the root context's timer).
    fn close_connection_of(&self, context_id: u32) -> Result<(), HostError>;
    /// Stores a Wasm filter-state value (Envoy prefixes the key with `wasm.`).
    fn set_filter_state(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Calls an Envoy foreign function with protobuf arguments.
    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), HostError>;
    /// The host's clock, in milliseconds since the epoch.
    fn now_ms(&self) -> Result<u64, HostError>;
    /// Defines a counter; its id.
    fn define_counter(&self, name: &str) -> Result<u32, HostError>;
    /// Adds `delta` to a counter.
    fn increment_counter(&self, id: u32, delta: i64) -> Result<(), HostError>;

    /// A property for the core's principal resolution: `None` when absent or empty.
    fn property(&self, property: PrincipalProperty) -> Lookup {
        Ok(self.property_bytes(principal_path(property))?.filter(|v| !v.is_empty()))
    }

    /// The SNI the caller sent (`connection.requested_server_name`); empty when none.
    fn connection_server_name(&self) -> Result<String, HostError> {
        let value = self.property_bytes(b"connection\0requested_server_name")?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default())
    }

    /// The name of the filter chain the connection landed on (`xds.filter_chain_name`); empty when none.
    fn filter_chain_name(&self) -> Result<String, HostError> {
        let value = self.property_bytes(b"xds\0filter_chain_name")?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default())
    }

    /// The port the caller connected to (`destination.port`, an int64 in little-endian bytes).
    fn destination_port(&self) -> Result<u16, HostError> {
        let value = self.property_bytes(b"destination\0port")?;
        let bytes: [u8; 8] = value.as_deref().and_then(|v| v.try_into().ok()).ok_or_else(|| {
            log::warn!("egress-identity: the destination port is not an int64");
            HostError
        })?;
        u16::try_from(i64::from_le_bytes(bytes)).map_err(|_| HostError)
    }

    /// Envoy's response flags of the request or connection (`response.flags`, an int64: bit n is
    /// `StreamInfo::CoreResponseFlag` n); 0 when absent.
    fn response_flags(&self) -> Result<u64, HostError> {
        match self.property_bytes(b"response\0flags")?.as_deref().map(<[u8; 8]>::try_from) {
            None => Ok(0),
            Some(Ok(bytes)) => Ok(u64::from_le_bytes(bytes)),
            Some(Err(_)) => {
                log::warn!("egress-identity: the response flags are not an int64");
                Err(HostError)
            }
        }
    }

    /// A string property; empty when absent or unreadable (the failure is logged by the host).
    fn string_property(&self, path: &[u8]) -> String {
        match self.property_bytes(path) {
            Ok(value) => value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default(),
            Err(HostError) => String::new(),
        }
    }

    /// Whether a property is present (an unreadable one counts as absent).
    fn has_property(&self, path: &[u8]) -> bool {
        matches!(self.property_bytes(path), Ok(Some(v)) if !v.is_empty())
    }

    /// Sets a well-known Envoy filter-state object (e.g. `envoy.tcp_proxy.cluster`): the
    /// `set_envoy_filter_state` foreign function.
    fn set_envoy_filter_state(&self, key: &str, value: &str) -> Result<(), HostError> {
        self.foreign_function("set_envoy_filter_state", &protobuf::set_envoy_filter_state_arguments(key, value))
    }

    /// Hands Envoy's dynamic forward proxy the concrete upstream of a dynamic destination (a wildcard, several
    /// hosts or ports): the host and port its DNS cache resolves and its cluster connects to. `originate`: the
    /// gateway's own TLS to the partner from the network filter (`tcp`), where tcp_proxy applies neither
    /// `auto_sni` nor `auto_san_validation`, so the server name and the name the partner's certificate must
    /// carry are set too (the HTTP router takes both from `:authority`, which the decision compared).
    fn set_dynamic_upstream(&self, host: &str, port: u16, originate: bool) -> Result<(), HostError> {
        self.set_envoy_filter_state(DYNAMIC_HOST, host)?;
        self.set_envoy_filter_state("envoy.upstream.dynamic_port", &port.to_string())?;
        if originate {
            self.set_envoy_filter_state("envoy.network.upstream_server_name", host)?;
            self.set_envoy_filter_state("envoy.network.upstream_subject_alt_names", host)?;
        }
        Ok(())
    }

    /// Names the SDS secret of the identity chosen for a single-cluster destination in filter state
    /// (`wasm.egress_identity.secret`), which the gateway's `set_filter_state` hands to the upstream
    /// connection. Unlike the audit record, the request cannot go on without it.
    fn set_identity_secret(&self, secret: &str) -> Result<(), HostError> {
        self.set_filter_state(SECRET_FILTER_STATE_KEY, secret.as_bytes())
    }

    /// Declares filter state `wasm.egress_identity.decision` as a `google.protobuf.Struct` (the foreign
    /// function `declare_property`), so an access log's `%FILTER_STATE(...:TYPED)%` renders it as a JSON
    /// object. It lives as long as the request (HTTP filter) or the connection (network filter).
    fn declare_decision_property(&self, l4: bool) -> Result<(), HostError> {
        let span = if l4 { 2 } else { 1 }; // DownstreamConnection, DownstreamRequest
        let arguments =
            protobuf::declare_property_arguments(audit::STRUCT_FILTER_STATE_KEY, audit::STRUCT_TYPE_URL, span);
        self.foreign_function("declare_property", &arguments)
    }
}

/// The NUL-joined host path of a principal property (no allocation per request).
fn principal_path(property: PrincipalProperty) -> &'static [u8] {
    match property {
        PrincipalProperty::PeerCertificateDigest => b"connection\0sha256_peer_certificate_digest",
        PrincipalProperty::PeerCertificate => b"connection\0peer_certificate",
        PrincipalProperty::IstioPeerPrincipal => b"filter_state\0io.istio.peer_principal",
    }
}

/// Envoy, through the raw ABI.
pub struct Envoy;

/// The failure of a host call, logged (with what was asked), as the core's [`HostError`].
fn failed(what: &str, status: HostStatus) -> HostError {
    log::warn!("egress-identity: host call failed: {what}: status {status}");
    HostError
}

impl Host for Envoy {
    fn property_bytes(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        abi::get_property(path).map_err(|s| failed(&format!("property {}", String::from_utf8_lossy(path)), s))
    }

    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        abi::get_header(abi::REQUEST_HEADERS, name).map_err(|s| failed(&format!("request header {name}"), s))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        abi::replace_header(request_headers_map(), name, value)
            .map_err(|s| failed(&format!("set request header {name}"), s))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        abi::remove_header(abi::REQUEST_HEADERS, name).map_err(|s| failed(&format!("remove request header {name}"), s))
    }

    fn respond(&self, status: u32, body: &str) -> Result<(), HostError> {
        abi::send_local_response(status, &[("content-type", "application/json")], body.as_bytes())
            .map_err(|s| failed("local response", s))
    }

    fn downstream_data(&self, max: usize) -> Result<Vec<u8>, HostError> {
        abi::get_buffer(abi::DOWNSTREAM_DATA, 0, max)
            .map(Option::unwrap_or_default)
            .map_err(|s| failed("the connection's data", s))
    }

    fn close_downstream(&self) -> Result<(), HostError> {
        abi::close_stream(abi::STREAM_DOWNSTREAM).map_err(|s| failed("close the connection", s))
    }

    fn close_connection_of(&self, context_id: u32) -> Result<(), HostError> {
        abi::set_effective_context(context_id).map_err(|s| failed(&format!("connection {context_id} (gone?)"), s))?;
        self.close_downstream()
    }

    fn set_filter_state(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        abi::set_property(key.as_bytes(), value).map_err(|s| failed(&format!("filter state {key}"), s))
    }

    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), HostError> {
        abi::call_foreign_function(name, arguments).map(|_| ()).map_err(|s| failed(name, s))
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        abi::current_time_ns().map(|ns| ns / 1_000_000).map_err(|s| failed("the clock", s))
    }

    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        abi::define_metric(abi::COUNTER, name).map_err(|s| failed(&format!("define metric {name}"), s))
    }

    fn increment_counter(&self, id: u32, delta: i64) -> Result<(), HostError> {
        abi::increment_metric(id, delta).map_err(|s| failed(&format!("increment metric {id}"), s))
    }
}

/// The request-header map. A test build (`test-host-failure`) can make the next header write name a map
/// that does not exist, so that Envoy refuses it (BadArgument): a real failed host write.
fn request_headers_map() -> u32 {
    #[cfg(feature = "test-host-failure")]
    if crate::test_host_failure::take() {
        return 99;
    }
    abi::REQUEST_HEADERS
}

/// The plugin's root id (`root_id` in Envoy, Istio's `pluginName`); empty if unreadable.
pub fn plugin_root_id() -> String {
    Envoy.string_property(b"plugin_root_id")
}

/// Envoy's log level for Wasm plugins (`--component-log-level wasm:debug`, `/logging?wasm=debug`): 0 trace ..
/// 5 critical; `None` if unreadable.
pub fn envoy_log_level() -> Option<u32> {
    abi::log_level().ok()
}

/// A host for native tests: properties and headers from maps, every write recorded, and any call made to fail.
#[cfg(test)]
pub mod mock {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    pub struct MockHost {
        pub properties: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
        pub request_headers: RefCell<BTreeMap<String, String>>,
        pub downstream: RefCell<Vec<u8>>,
        pub now_ms: std::cell::Cell<u64>,
        /// Calls that fail, by name (e.g. "set_request_header", "respond").
        pub failing: RefCell<Vec<&'static str>>,
        /// What the filter did, in order: e.g. "respond 403 {...}", "close", "set_request_header x=y".
        pub calls: RefCell<Vec<String>>,
        pub filter_state: RefCell<BTreeMap<String, Vec<u8>>>,
        pub counters: RefCell<Vec<(String, i64)>>,
    }

    impl MockHost {
        fn call(&self, name: &'static str, what: String) -> Result<(), HostError> {
            if self.failing.borrow().contains(&name) {
                self.calls.borrow_mut().push(format!("FAILED {what}"));
                return Err(HostError);
            }
            self.calls.borrow_mut().push(what);
            Ok(())
        }

        pub fn fail(&self, name: &'static str) {
            self.failing.borrow_mut().push(name);
        }

        pub fn heal(&self) {
            self.failing.borrow_mut().clear();
        }

        /// The counter's total so far.
        pub fn counter(&self, name: &str) -> i64 {
            self.counters.borrow().iter().filter(|(n, _)| n == name).map(|(_, v)| *v).sum()
        }
    }

    impl Host for MockHost {
        fn property_bytes(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
            self.call("property", format!("property {}", String::from_utf8_lossy(path)))?;
            Ok(self.properties.borrow().get(path).cloned())
        }
        fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
            self.call("request_header", format!("request_header {name}"))?;
            Ok(self.request_headers.borrow().get(name).map(|v| v.as_bytes().to_vec()))
        }
        fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
            self.call("set_request_header", format!("set_request_header {name}={value}"))?;
            self.request_headers.borrow_mut().insert(name.into(), value.into());
            Ok(())
        }
        fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
            self.call("remove_request_header", format!("remove_request_header {name}"))?;
            self.request_headers.borrow_mut().remove(name);
            Ok(())
        }
        fn respond(&self, status: u32, body: &str) -> Result<(), HostError> {
            self.call("respond", format!("respond {status} {body}"))
        }
        fn downstream_data(&self, max: usize) -> Result<Vec<u8>, HostError> {
            self.call("downstream_data", "downstream_data".into())?;
            Ok(self.downstream.borrow().iter().take(max).copied().collect())
        }
        fn close_downstream(&self) -> Result<(), HostError> {
            self.call("close_downstream", "close".into())
        }
        fn close_connection_of(&self, context_id: u32) -> Result<(), HostError> {
            self.call("close_connection_of", format!("close {context_id}"))
        }
        fn set_filter_state(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
            self.call("set_filter_state", format!("set_filter_state {key}"))?;
            self.filter_state.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), HostError> {
            self.call("foreign_function", format!("{name} {arguments:?}"))
        }
        fn now_ms(&self) -> Result<u64, HostError> {
            self.call("now_ms", "now".into())?;
            Ok(self.now_ms.get())
        }
        fn define_counter(&self, name: &str) -> Result<u32, HostError> {
            if self.failing.borrow().contains(&"define_counter") {
                return Err(HostError);
            }
            let mut counters = self.counters.borrow_mut();
            counters.push((name.into(), 0));
            u32::try_from(counters.len() - 1).map_err(|_| HostError)
        }
        fn increment_counter(&self, id: u32, delta: i64) -> Result<(), HostError> {
            if self.failing.borrow().contains(&"increment_counter") {
                return Err(HostError);
            }
            let mut counters = self.counters.borrow_mut();
            let name = counters.get(id as usize).map(|(n, _)| n.clone()).ok_or(HostError)?;
            counters.push((name, delta));
            Ok(())
        }
    }
}
