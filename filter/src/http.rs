//! The HTTP context: one per request. An allowed request is checked again when its response starts: if
//! Envoy never reached the partner (the router's local reply after an upstream failure passes through
//! this filter's encoder too), its record and counters say so ([`upstream`]).

use std::cell::RefCell;
use std::rc::Rc;

use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::decision::{Decision, Denial, Evaluation, Layer, Reason};
use egress_identity_core::principal::{self, Caller, HostError};
use egress_identity_core::request::Request;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::counters::Counters;
use crate::host;
use crate::record::Record;
use crate::upstream::{self, Forwarded};

/// Whether a benchmark-ladder build stops this request before step `step` (always false in any other build).
#[inline(always)]
fn ladder(step: u8) -> bool {
    #[cfg(feature = "bench-ladder")]
    return crate::bench_ladder::stops_before(step);
    #[cfg(not(feature = "bench-ladder"))]
    {
        let _ = step;
        false
    }
}

const NOT_CONFIGURED: &str = r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"not_configured"}"#;
const HOST_ERROR: &str = r#"{"decision":"deny","layer":"plugin","policy":null,"reason":"host_error"}"#;

pub struct EgressIdentityFilter {
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<CertificateCache>>>,
    counters: Rc<Counters>,
    /// Allowed, until the response starts.
    forwarded: Option<Forwarded>,
}

impl EgressIdentityFilter {
    pub fn new(
        config: Option<Rc<Config>>,
        cache: Option<Rc<RefCell<CertificateCache>>>,
        counters: Rc<Counters>,
    ) -> Self {
        Self { config, cache, counters, forwarded: None }
    }
}

impl Context for EgressIdentityFilter {}

impl HttpContext for EgressIdentityFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        crate::test_trap::maybe_trap(crate::test_trap::Point::Entry);
        let Some(config) = self.config.clone() else {
            log::error!("egress-identity: request refused: the plugin has no valid configuration");
            host::respond(500, NOT_CONFIGURED);
            return Action::Pause;
        };
        match self.decide(&config) {
            Ok(action) => action,
            Err(HostError) => {
                log::error!("egress-identity: a host call failed; refusing the request");
                self.counters.host_error();
                host::respond(500, HOST_ERROR);
                Action::Pause
            }
        }
    }

    /// An allowed request's response: from the partner, or Envoy's local reply when the upstream failed.
    /// One host call (the response flags) on the way of every allowed response; nothing for the others.
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(forwarded) = self.forwarded.take() {
            if let (Some(config), Some(failure)) = (self.config.as_deref(), upstream::failure(true)) {
                upstream::record(config, &self.counters, forwarded, &failure);
            }
        }
        Action::Continue
    }
}

impl EgressIdentityFilter {
    /// Decides the request and applies the decision. Client-supplied copies of the internal headers never
    /// survive: an allowed request gets both set (setting a header replaces every copy of it), any other
    /// request is answered here.
    fn decide(&mut self, config: &Config) -> Result<Action, HostError> {
        if ladder(1) {
            return Ok(Action::Continue);
        }
        if ladder(2) {
            host::property(egress_identity_core::principal::PrincipalProperty::PeerCertificateDigest)?;
            return Ok(Action::Continue);
        }
        let resolution = {
            let mut cache = self.cache.as_ref().and_then(|c| c.try_borrow_mut().ok());
            principal::resolve(config.principal_sources, config.san_policy, cache.as_deref_mut(), host::property)?
        };
        if !ladder(7) {
            self.counters.count_resolution(&resolution);
        }
        if ladder(3) {
            return Ok(Action::Continue);
        }
        let principal_id = resolution.principal.as_ref().map(|p| p.id().as_str()).unwrap_or_default();

        // Only the headers some policy looks at: each read is a host call (~2 µs of gateway CPU).
        let used = config.attributes_used;
        let method = if used.method { host::request_header(":method")? } else { None };
        let path = if used.path { host::request_header(":path")? } else { None };
        let authority = host::request_header(":authority")?;
        if ladder(4) {
            return Ok(Action::Continue);
        }
        let Some(request) = Request::from_headers(authority.as_deref(), method.as_deref(), path.as_deref()) else {
            let denial = Denial { layer: Layer::Request, policy: None, reason: Reason::MalformedRequest };
            Record::of(config.audit_record, &Evaluation::of(Decision::Deny(denial)), principal_id).store();
            return self.deny(config, &denial, None);
        };

        let evaluation = config.evaluate(resolution.principal.as_ref().map(Caller::id).map_err(|e| *e), &request);
        if ladder(5) {
            return Ok(Action::Continue);
        }
        if !ladder(7) {
            self.counters.count_dry_run(&evaluation);
        }
        let record = (!ladder(6)).then(|| Record::of(config.audit_record, &evaluation, principal_id));
        if let Some(record) = &record {
            record.store();
        }
        match evaluation.decision {
            Decision::Allow(allowed) => {
                for spelling in &config.headers.underscore_spellings {
                    host::remove_request_header(spelling)?;
                }
                host::set_request_header(&config.headers.principal, principal_id)?;
                host::set_request_header(&config.headers.cluster, &allowed.identity.cluster)?;
                if let Some(secret) = &allowed.identity.secret {
                    host::set_identity_secret(secret)?;
                }
                if !ladder(7) {
                    self.counters.allowed(config, allowed.identity.index);
                }
                if let Some(record) = record {
                    self.forwarded = Some(Forwarded { identity: allowed.identity.index, record });
                }
                #[cfg(feature = "test-trap")]
                crate::test_trap::maybe_trap(crate::test_trap::Point::AfterAllow);
                Ok(Action::Continue)
            }
            Decision::Deny(denial) => self.deny(config, &denial, evaluation.destination),
        }
    }

    /// Answers 403. The internal headers are removed first: Envoy resolved the route when the request
    /// arrived, from whatever cluster header the client sent, and the access log's `upstream_cluster` would
    /// name it; removing them clears that route (a denial is never recorded against a client's choice).
    fn deny(&self, config: &Config, denial: &Denial<'_>, destination: Option<&str>) -> Result<Action, HostError> {
        host::remove_request_header(&config.headers.cluster)?;
        host::remove_request_header(&config.headers.principal)?;
        self.counters.denied(denial, destination);
        host::respond(403, &denial.to_json());
        Ok(Action::Pause)
    }
}
