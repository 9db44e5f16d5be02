//! An empty proxy-wasm HTTP filter: one root context, one HTTP context per request, every callback
//! returns `Continue`. Whatever it costs per request is the cost of having *a* Wasm filter in Envoy
//! (context creation, the host's callback dispatch into V8), i.e. the floor for egress-identity
//! (benchmark variant C, plugin configuration `{}`).
//!
//! For `bench/run.sh --probe NAME=CALLS` the plugin configuration names host calls to make on every
//! request, to price each kind of host call side by side (BENCHMARKS.md, "Where the time goes"):
//! `CALLS` is `;`-separated `call[:count]`, e.g. `set_cluster_header;get_header:10`.
//!
//! | call | host call |
//! |---|---|
//! | `set_cluster_header` | set `x-egress-identity-cluster` to the benchmark caller's cluster (the route picks it) |
//! | `get_header` | read `:path` |
//! | `get_headers` | read every request header at once |
//! | `set_header` / `remove_header` | set / remove `x-bench-probe-<i>` (i < 10) |
//! | `get_property` | read `connection.sha256_peer_certificate_digest` |
//! | `set_property` | write filter state `bench_probe.<i>`; counts above 10 are capped |
//! | `increment_metric` | increment a counter |

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot::default()) });
}}

/// The benchmark caller's cluster (bench/policy.py `CALLER_CLUSTER`).
const CALLER_CLUSTER: &str = "partner-api|team-app1";
const HEADERS: [&str; 10] = [
    "x-bench-probe-0",
    "x-bench-probe-1",
    "x-bench-probe-2",
    "x-bench-probe-3",
    "x-bench-probe-4",
    "x-bench-probe-5",
    "x-bench-probe-6",
    "x-bench-probe-7",
    "x-bench-probe-8",
    "x-bench-probe-9",
];
const PROPERTIES: [&str; 10] = [
    "bench_probe.0",
    "bench_probe.1",
    "bench_probe.2",
    "bench_probe.3",
    "bench_probe.4",
    "bench_probe.5",
    "bench_probe.6",
    "bench_probe.7",
    "bench_probe.8",
    "bench_probe.9",
];

#[derive(Clone, Copy)]
enum Call {
    SetClusterHeader,
    GetHeader,
    GetHeaders,
    SetHeader,
    RemoveHeader,
    GetProperty,
    SetProperty,
    IncrementMetric,
}

#[derive(Default)]
struct EmptyRoot {
    calls: Rc<Vec<(Call, usize)>>,
    counter: u32,
    /// Loaded as a network filter (root id ending in `-l4`, like egress-identity's): one stream context per
    /// connection, every callback `Continue` (benchmark variant L1).
    l4: bool,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config =
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let mut calls = Vec::new();
        for item in config.split(';').map(str::trim).filter(|s| !s.is_empty() && *s != "{}") {
            let (name, count) = item.split_once(':').unwrap_or((item, "1"));
            let call = match name {
                "set_cluster_header" => Call::SetClusterHeader,
                "get_header" => Call::GetHeader,
                "get_headers" => Call::GetHeaders,
                "set_header" => Call::SetHeader,
                "remove_header" => Call::RemoveHeader,
                "get_property" => Call::GetProperty,
                "set_property" => Call::SetProperty,
                "increment_metric" => Call::IncrementMetric,
                _ => return false,
            };
            let Ok(count) = count.parse::<usize>() else { return false };
            calls.push((call, count.min(HEADERS.len())));
        }
        self.calls = Rc::new(calls);
        self.counter = hostcalls::define_metric(MetricType::Counter, "bench_probe.requests").unwrap_or(0);
        let root_id = hostcalls::get_property(vec!["plugin_root_id"]).ok().flatten().unwrap_or_default();
        self.l4 = root_id.ends_with(b"-l4");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyFilter { calls: Rc::clone(&self.calls), counter: self.counter }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(EmptyConnection))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.l4 { ContextType::StreamContext } else { ContextType::HttpContext })
    }
}

/// Every callback of a connection: `Continue` (the SDK's defaults).
struct EmptyConnection;

impl Context for EmptyConnection {}

impl StreamContext for EmptyConnection {}

struct EmptyFilter {
    calls: Rc<Vec<(Call, usize)>>,
    counter: u32,
}

impl Context for EmptyFilter {}

impl HttpContext for EmptyFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for &(call, count) in self.calls.iter() {
            for (header, property) in HEADERS.iter().zip(PROPERTIES).take(count) {
                let _ = match call {
                    Call::SetClusterHeader => hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "x-egress-identity-cluster",
                        Some(CALLER_CLUSTER),
                    ),
                    Call::GetHeader => hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path").map(drop),
                    Call::GetHeaders => hostcalls::get_map_bytes(MapType::HttpRequestHeaders).map(drop),
                    Call::SetHeader => hostcalls::set_map_value(MapType::HttpRequestHeaders, header, Some("v")),
                    Call::RemoveHeader => hostcalls::remove_map_value(MapType::HttpRequestHeaders, header),
                    Call::GetProperty => {
                        hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]).map(drop)
                    }
                    Call::SetProperty => hostcalls::set_property(vec![property], Some(b"value")),
                    Call::IncrementMetric => hostcalls::increment_metric(self.counter, 1),
                };
            }
        }
        Action::Continue
    }
}
