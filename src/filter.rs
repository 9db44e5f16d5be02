//! The proxy-wasm host adapter: the only module that talks to Envoy.
//!
//! It reads the configuration, the caller's principal and the request attributes from the host, asks the
//! core for a [`Decision`], and applies it: a 403 with a JSON body, or the internal headers that make the
//! route pick the per-identity cluster. Every host call is checked; none can panic the VM. If the
//! configuration did not load, every request is answered with 500 (fail closed).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::{Config, PrincipalSource};
use crate::decision::{Decision, Denial, Layer, PrincipalError, Reason, Request};
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

/// Counter of requests from callers accepted only by legacy mode (`acceptLegacyKumaSans`); Envoy shows
/// it as `wasmcustom.egress_identity.legacy_kuma_san_requests`.
const LEGACY_KUMA_SAN_REQUESTS: &str = "egress_identity.legacy_kuma_san_requests";

/// Per-VM (per worker) state: the loaded configuration, the certificate cache and metric ids.
#[derive(Default)]
struct EgressIdentityRoot {
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<PrincipalCache>>>,
    legacy_counter: Option<u32>,
}

impl Context for EgressIdentityRoot {}

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
                if self.legacy_counter.is_none() {
                    self.legacy_counter = hostcalls::define_metric(MetricType::Counter, LEGACY_KUMA_SAN_REQUESTS).ok();
                }
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EgressIdentityFilter {
            config: self.config.clone(),
            cache: self.cache.clone(),
            legacy_counter: self.legacy_counter,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EgressIdentityFilter {
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<PrincipalCache>>>,
    legacy_counter: Option<u32>,
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
        let Some(config) = self.config.clone() else {
            log::error!("egress-identity: request refused: the plugin has no valid configuration");
            respond(500, r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"not_configured"}"#);
            return Action::Pause;
        };
        // Whatever happens next, client-supplied copies of the internal headers must not survive.
        for name in [&*config.headers.principal, &*config.headers.cluster] {
            if hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err() {
                log::error!("egress-identity: cannot remove header {name}; refusing the request");
                respond(500, r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"host_error"}"#);
                return Action::Pause;
            }
        }

        let principal = self.principal(&config);
        if let (Ok(Caller::Certificate(cert)), Some(counter)) = (&principal, self.legacy_counter) {
            if cert.legacy_kuma_sans && hostcalls::increment_metric(counter, 1).is_err() {
                log::warn!("egress-identity: cannot increment {LEGACY_KUMA_SAN_REQUESTS}");
            }
        }
        let (authority, method, path) = (header(":authority"), header(":method"), header(":path"));
        let (Some(authority), Some(method), Some(path)) = (text(&authority), text(&method), text(&path)) else {
            return deny(&Denial { layer: Layer::Request, policy: None, reason: Reason::MalformedRequest });
        };
        let request = Request { authority, method, path };

        match config.decide(principal.as_ref().map(Caller::id).map_err(|e| *e), &request) {
            Decision::Allow(allowed) => {
                let principal_id = principal.as_ref().map(|p| p.id().as_str()).unwrap_or_default();
                let set = |name: &str, value: &str| {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
                };
                if !(set(&config.headers.principal, principal_id) && set(&config.headers.cluster, &allowed.identity.cluster)) {
                    log::error!("egress-identity: cannot set the internal headers; refusing the request");
                    respond(500, r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"host_error"}"#);
                    return Action::Pause;
                }
                log::debug!(
                    "egress-identity: allow principal={principal_id} destination={} identity={} gateway_policy={} destination_policy={}",
                    allowed.destination,
                    allowed.identity.name,
                    allowed.gateway_policy,
                    allowed.destination_policy
                );
                Action::Continue
            }
            Decision::Deny(denial) => {
                log::debug!(
                    "egress-identity: {denial} principal={} authority={}",
                    principal.as_ref().map(|p| p.id().as_str()).unwrap_or("-"),
                    request.authority
                );
                deny(&denial)
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
            (Some(digest), Some(cache)) => match cache.try_borrow_mut() {
                Ok(mut cache) => Some(cache.get_or_validate(digest, validate)),
                Err(_) => Some(validate().map(Rc::new)),
            },
            // No digest: either no certificate, or a host that does not expose the digest.
            _ => property(&PEER_CERTIFICATE).map(|pem| principal_from_pem(&pem, sans).map(Rc::new)),
        }
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

fn deny(denial: &Denial<'_>) -> Action {
    respond(403, &denial.to_json());
    Action::Pause
}

fn respond(status: u32, body: &str) {
    let headers = vec![("content-type", "application/json")];
    if let Err(status) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::error!("egress-identity: cannot send the local response: {status:?}");
    }
}
