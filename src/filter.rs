//! The proxy-wasm host adapter: the only module that talks to Envoy.
//!
//! It reads the configuration, the caller's principal and the request attributes from the host, asks the
//! core for an [`Evaluation`], and applies it: a 403 with a JSON body, or the internal headers that make
//! the route pick the per-identity cluster. It also records the decision in Envoy's filter state (for the
//! access log) and in metrics. Every host call is checked; none can panic the VM. If the configuration
//! did not load, every request is answered with 500 (fail closed).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use rustc_hash::FxHashMap;

use crate::audit;
use crate::config::{Config, PrincipalSource};
use crate::decision::{Decision, Denial, Evaluation, Layer, PrincipalError, Reason, Request};
use crate::metrics;
use crate::peer_certificate::{principal_from_pem, CertificateError, SanPolicy, ValidatedCertificate};
use crate::principal_cache::PrincipalCache;
use crate::spiffe_id::SpiffeId;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EgressIdentityRoot::default()) });
}}

const PEER_CERTIFICATE: [&str; 2] = ["connection", "peer_certificate"];
const PEER_CERTIFICATE_DIGEST: [&str; 2] = ["connection", "sha256_peer_certificate_digest"];
const ISTIO_PEER_PRINCIPAL: [&str; 2] = ["filter_state", "io.istio.peer_principal"];
/// Shared data (across this VM's workers) holding `<fingerprint> <generation>` of the loaded config.
const GENERATION_KEY: &str = "egress_identity.config_generation";

/// A counter whose increments stay in the VM until the next tick ([`metrics::FLUSH_INTERVAL`]): an
/// `increment_metric` host call per request would cost about 1 µs of gateway CPU each.
struct Counter {
    id: u32,
    pending: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Option<Counter> {
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => Some(Counter { id, pending: Cell::new(0) }),
            Err(status) => {
                log::warn!("egress-identity: cannot define metric {name}: {status:?}");
                None
            }
        }
    }

    /// Hands the pending increments to Envoy; kept for the next flush if the host refuses.
    fn flush(&self) {
        let pending = self.pending.get();
        if pending == 0 {
            return;
        }
        match hostcalls::increment_metric(self.id, i64::try_from(pending).unwrap_or(i64::MAX)) {
            Ok(()) => self.pending.set(0),
            Err(status) => log::warn!("egress-identity: cannot increment metric {}: {status:?}", self.id),
        }
    }
}

fn increment(counter: Option<&Counter>) {
    if let Some(c) = counter {
        c.pending.set(c.pending.get().saturating_add(1));
    }
}

/// The filter's counters, defined once per configuration.
#[derive(Default)]
struct Metrics {
    allowed: Option<Counter>,
    denied: Option<Counter>,
    denied_by: FxHashMap<(&'static str, &'static str), Counter>,
    /// Cluster → counter of requests forwarded as that external identity.
    identities: FxHashMap<Box<str>, Counter>,
    cache_hits: Option<Counter>,
    cache_misses: Option<Counter>,
    shadow_allow: Option<Counter>,
    shadow_deny: Option<Counter>,
    legacy_kuma_sans: Option<Counter>,
}

impl Metrics {
    fn define(config: &Config) -> Self {
        Self {
            allowed: Counter::define(metrics::REQUESTS_ALLOWED),
            denied: Counter::define(metrics::REQUESTS_DENIED),
            denied_by: metrics::DENIALS
                .iter()
                .filter_map(|&(layer, reason)| Some(((layer, reason), Counter::define(&metrics::denied(layer, reason))?)))
                .collect(),
            identities: metrics::identities(config)
                .filter_map(|(destination, identity, cluster)| {
                    Some((cluster.into(), Counter::define(&metrics::identity_requests(destination, identity))?))
                })
                .collect(),
            cache_hits: Counter::define(metrics::CERTIFICATE_CACHE_HITS),
            cache_misses: Counter::define(metrics::CERTIFICATE_CACHE_MISSES),
            shadow_allow: Counter::define(metrics::DRY_RUN_SHADOW_ALLOW),
            shadow_deny: Counter::define(metrics::DRY_RUN_SHADOW_DENY),
            legacy_kuma_sans: Counter::define(metrics::LEGACY_KUMA_SAN_REQUESTS),
        }
    }

    fn flush(&self) {
        let singles = [
            &self.allowed,
            &self.denied,
            &self.cache_hits,
            &self.cache_misses,
            &self.shadow_allow,
            &self.shadow_deny,
            &self.legacy_kuma_sans,
        ];
        singles.into_iter().flatten().chain(self.denied_by.values()).chain(self.identities.values()).for_each(Counter::flush);
    }
}

/// Sets the config-generation gauge: the generation stored in shared data if another worker already
/// loaded this very configuration, else the next one.
fn publish_config_generation(fingerprint: u64) {
    let Ok(gauge) = hostcalls::define_metric(MetricType::Gauge, metrics::CONFIG_GENERATION) else { return };
    for _ in 0..8 {
        let (stored, cas) = hostcalls::get_shared_data(GENERATION_KEY).unwrap_or((None, None));
        let (stored_fingerprint, stored_generation) = stored
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split_once(' '))
            .and_then(|(f, g)| Some((f.parse::<u64>().ok()?, g.parse::<u64>().ok()?)))
            .unwrap_or((0, 0));
        let generation = if stored_fingerprint == fingerprint { stored_generation } else { stored_generation + 1 };
        let value = format!("{fingerprint} {generation}");
        match hostcalls::set_shared_data(GENERATION_KEY, Some(value.as_bytes()), cas) {
            Ok(()) => {
                let _ = hostcalls::record_metric(gauge, generation);
                return;
            }
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::warn!("egress-identity: cannot store the config generation: {status:?}");
                return;
            }
        }
    }
}

/// Per-VM (per worker) state: the loaded configuration, the certificate cache and metric ids.
#[derive(Default)]
struct EgressIdentityRoot {
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<PrincipalCache>>>,
    metrics: Rc<Metrics>,
}

impl Context for EgressIdentityRoot {
    /// The plugin is being removed (e.g. a listener update): publish what was counted since the last tick.
    fn on_done(&mut self) -> bool {
        self.metrics.flush();
        true
    }
}

impl RootContext for EgressIdentityRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                log::error!("egress-identity: invalid configuration: .: no plugin configuration given");
                return false;
            }
        };
        match Config::load(&bytes) {
            Ok(config) => {
                log::info!(
                    "egress-identity: configuration loaded: {} gateway policies, {} destinations",
                    config.gateway.len(),
                    config.destinations.iter().count()
                );
                self.cache = Some(Rc::new(RefCell::new(PrincipalCache::new(config.certificate_cache_size))));
                self.metrics.flush();
                self.metrics = Rc::new(Metrics::define(&config));
                if let Err(status) = hostcalls::set_tick_period(metrics::FLUSH_INTERVAL) {
                    log::warn!("egress-identity: cannot set the tick period, counters are not published: {status:?}");
                }
                publish_config_generation(metrics::config_fingerprint(&bytes));
                self.config = Some(Rc::new(config));
                true
            }
            Err(errors) => {
                for error in errors {
                    log::error!("egress-identity: invalid configuration: {error}");
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EgressIdentityFilter {
            config: self.config.clone(),
            cache: self.cache.clone(),
            metrics: Rc::clone(&self.metrics),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EgressIdentityFilter {
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<PrincipalCache>>>,
    metrics: Rc<Metrics>,
}

/// The caller's principal and where it came from.
enum Caller {
    Certificate(Rc<ValidatedCertificate>),
    FilterState(SpiffeId),
}

impl Caller {
    fn id(&self) -> &SpiffeId {
        match self {
            Self::Certificate(c) => &c.id,
            Self::FilterState(id) => id,
        }
    }
}

impl Context for EgressIdentityFilter {}

impl HttpContext for EgressIdentityFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        test_trap::maybe_trap(test_trap::Point::Entry);
        let Some(config) = self.config.clone() else {
            log::error!("egress-identity: request refused: the plugin has no valid configuration");
            respond(500, r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"not_configured"}"#);
            return Action::Pause;
        };
        // Client-supplied copies of the internal headers never survive: an allowed request gets both set
        // below, and setting a header replaces every copy of it; any other request is answered here.
        let principal = self.principal(&config);
        if let Ok(Caller::Certificate(cert)) = &principal {
            if cert.legacy_kuma_sans {
                increment(self.metrics.legacy_kuma_sans.as_ref());
            }
        }
        let principal_id = principal.as_ref().map(|p| p.id().as_str()).unwrap_or_default();
        // Only the headers some policy looks at: each read is a host call (~2 µs of gateway CPU).
        let used = config.attributes_used;
        let method = if used.method { header(":method") } else { None };
        let path = if used.path { header(":path") } else { None };
        let authority = header(":authority");
        let (Some(authority), Some(method), Some(path)) = (text(&authority), text(&method), text(&path)) else {
            let denial = Denial { layer: Layer::Request, policy: None, reason: Reason::MalformedRequest };
            record_audit(&audit::record(&Evaluation::of(Decision::Deny(denial)), principal_id));
            return self.deny(&denial);
        };
        let request = Request { authority, method, path };

        let evaluation = config.evaluate(principal.as_ref().map(Caller::id).map_err(|e| *e), &request);
        self.count_dry_run(&evaluation);
        record_audit(&audit::record(&evaluation, principal_id));
        match evaluation.decision {
            Decision::Allow(allowed) => {
                let set = |name: &str, value: &str| {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
                };
                if !(set(&config.headers.principal, principal_id) && set(&config.headers.cluster, &allowed.identity.cluster)) {
                    return self.host_error("cannot set the internal headers");
                }
                increment(self.metrics.allowed.as_ref());
                increment(self.metrics.identities.get(&*allowed.identity.cluster));
                log::debug!(
                    "egress-identity: allow principal={principal_id} destination={} identity={} gateway_policy={} destination_policy={}",
                    allowed.destination,
                    allowed.identity.name,
                    allowed.gateway_policy,
                    allowed.destination_policy
                );
                #[cfg(feature = "test-trap")]
                test_trap::maybe_trap(test_trap::Point::AfterAllow);
                Action::Continue
            }
            Decision::Deny(denial) => {
                log::debug!("egress-identity: {denial} principal={principal_id} authority={}", request.authority);
                self.deny(&denial)
            }
        }
    }
}

impl EgressIdentityFilter {
    /// The caller's principal from the first configured source that has one.
    fn principal(&self, config: &Config) -> Result<Caller, PrincipalError> {
        for source in &config.principal_sources {
            match source {
                PrincipalSource::PeerCertificate => {
                    if let Some(result) = self.peer_certificate(config.san_policy) {
                        return result.map(Caller::Certificate).map_err(PrincipalError::Certificate);
                    }
                }
                PrincipalSource::IstioPeerPrincipal => {
                    if let Some(value) = property(&ISTIO_PEER_PRINCIPAL) {
                        return istio_peer_principal(&value)
                            .map(Caller::FilterState)
                            .map_err(PrincipalError::InvalidSpiffeId);
                    }
                }
            }
        }
        Err(PrincipalError::Missing)
    }

    /// The validated peer certificate (from the cache when seen before); `None` when there is none.
    fn peer_certificate(&self, sans: SanPolicy) -> Option<Result<Rc<ValidatedCertificate>, CertificateError>> {
        let digest = property(&PEER_CERTIFICATE_DIGEST);
        let validate = || match property(&PEER_CERTIFICATE) {
            Some(pem) => principal_from_pem(&pem, sans),
            None => Err(CertificateError::Unparsable),
        };
        match (digest.as_deref().and_then(|d| std::str::from_utf8(d).ok()), &self.cache) {
            (Some(digest), Some(cache)) => {
                let mut missed = false;
                let result = match cache.try_borrow_mut() {
                    Ok(mut cache) => cache.get_or_validate(digest, || {
                        missed = true;
                        validate()
                    }),
                    Err(_) => {
                        missed = true;
                        validate().map(Rc::new)
                    }
                };
                increment(if missed { self.metrics.cache_misses.as_ref() } else { self.metrics.cache_hits.as_ref() });
                Some(result)
            }
            // No digest: either no certificate, or a host that does not expose the digest.
            _ => property(&PEER_CERTIFICATE).map(|pem| principal_from_pem(&pem, sans).map(Rc::new)),
        }
    }

    fn count_dry_run(&self, evaluation: &Evaluation<'_>) {
        match evaluation.shadow_allowed() {
            None => {}
            Some(true) => increment(self.metrics.shadow_allow.as_ref()),
            Some(false) => {
                increment(self.metrics.shadow_deny.as_ref());
                log::info!("egress-identity: dry-run policies would deny this request: {evaluation:?}");
            }
        }
    }

    fn deny(&self, denial: &Denial<'_>) -> Action {
        increment(self.metrics.denied.as_ref());
        increment(self.metrics.denied_by.get(&(denial.layer.as_str(), denial.reason.code())));
        respond(403, &denial.to_json());
        Action::Pause
    }

    fn host_error(&self, what: &str) -> Action {
        log::error!("egress-identity: {what}; refusing the request");
        increment(self.metrics.denied.as_ref());
        respond(500, r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"host_error"}"#);
        Action::Pause
    }
}

/// The value of filter state `io.istio.peer_principal`: `spiffe://td/path`, or Istio's `td/path`.
fn istio_peer_principal(value: &[u8]) -> Result<SpiffeId, crate::spiffe_id::SpiffeIdError> {
    let text = std::str::from_utf8(value).map_err(|_| crate::spiffe_id::SpiffeIdError::WrongScheme)?;
    if text.starts_with("spiffe://") {
        SpiffeId::parse(text)
    } else {
        SpiffeId::parse(&format!("spiffe://{text}"))
    }
}

/// Stores the audit record in filter state (one host call); a failure only costs the record.
fn record_audit(record: &str) {
    if let Err(status) = hostcalls::set_property(vec![audit::FILTER_STATE_KEY], Some(record.as_bytes())) {
        log::warn!("egress-identity: cannot record the audit record: {status:?}");
    }
}

/// A non-empty property, or `None` (absent, empty, or the host refused).
fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten().filter(|v| !v.is_empty())
}

fn header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// A header's text; `None` if it is present but not UTF-8. An absent header reads as empty.
fn text(value: &Option<Vec<u8>>) -> Option<&str> {
    match value {
        Some(bytes) => std::str::from_utf8(bytes).ok(),
        None => Some(""),
    }
}

fn respond(status: u32, body: &str) {
    let headers = vec![("content-type", "application/json")];
    if let Err(status) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::error!("egress-identity: cannot send the local response: {status:?}");
    }
}

/// Test-only VM traps (cargo feature `test-trap`, never in dist/): `tests/fail_closed.rs` builds a variant
/// that executes the wasm `unreachable` instruction when a request carries `x-egress-identity-test-trap:
/// entry` (before anything else) or `after-allow` (after an allowed request's internal headers are set, just
/// before the request would continue), to prove Envoy fails closed when the VM crashes.
#[cfg(feature = "test-trap")]
mod test_trap {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::MapType;

    #[derive(PartialEq, Eq)]
    pub enum Point {
        Entry,
        AfterAllow,
    }

    pub fn maybe_trap(point: Point) {
        let want = match point {
            Point::Entry => "entry",
            Point::AfterAllow => "after-allow",
        };
        let value = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-egress-identity-test-trap");
        if matches!(value, Ok(Some(v)) if v == want) {
            log::warn!("egress-identity: test-trap: trapping ({want})");
            trap();
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn trap() -> ! {
        core::arch::wasm32::unreachable()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn trap() -> ! {
        std::process::abort()
    }
}
