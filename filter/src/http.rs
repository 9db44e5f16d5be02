//! The HTTP context: one per request. An allowed request is checked again when its response starts: if
//! Envoy never reached the partner (the router's local reply after an upstream failure passes through
//! this filter's encoder too), its record and counters say so ([`upstream`]).

use std::cell::RefCell;
use std::rc::Rc;

use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::decision::{Decision, Denial, Evaluation, Layer, Reason};
use egress_identity_core::principal::{self, Caller, HostError};
use egress_identity_core::request::{split_authority, Request};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::counters::Counters;
use crate::host::Host;
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
    host: Rc<dyn Host>,
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<CertificateCache>>>,
    counters: Rc<Counters>,
    /// Allowed, until the response starts.
    forwarded: Option<Forwarded>,
}

impl EgressIdentityFilter {
    pub fn new(
        host: Rc<dyn Host>,
        config: Option<Rc<Config>>,
        cache: Option<Rc<RefCell<CertificateCache>>>,
        counters: Rc<Counters>,
    ) -> Self {
        Self { host, config, cache, counters, forwarded: None }
    }

    /// Answers the request locally. If even that fails, the request stays paused: it never reaches a
    /// cluster (fail closed), and Envoy's stream timeouts end it.
    fn respond(&self, status: u32, body: &str) -> Action {
        if self.host.respond(status, body).is_err() {
            log::error!("egress-identity: cannot answer the request ({status}); it stays stopped");
        }
        Action::Pause
    }
}

impl Context for EgressIdentityFilter {}

impl HttpContext for EgressIdentityFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        crate::test_trap::maybe_trap(crate::test_trap::Point::Entry);
        #[cfg(feature = "test-host-failure")]
        crate::test_host_failure::arm_if_asked();
        let Some(config) = self.config.clone() else {
            log::error!("egress-identity: request refused: the plugin has no valid configuration");
            return self.respond(500, NOT_CONFIGURED);
        };
        match self.decide(&config) {
            Ok(action) => action,
            Err(HostError) => {
                log::error!("egress-identity: a host call failed; refusing the request");
                self.counters.host_error();
                // Whatever the filter set before the failure must not route the request.
                let _ = self.host.remove_request_header(&config.headers.cluster);
                self.respond(500, HOST_ERROR)
            }
        }
    }

    /// An allowed request's response: from the partner, or Envoy's local reply when the upstream failed.
    /// One host call (the response flags) on the way of every allowed response; nothing for the others.
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(forwarded) = self.forwarded.take() {
            if let (Some(config), Some(failure)) = (self.config.as_deref(), upstream::failure(&*self.host, true)) {
                upstream::record(&*self.host, config, &self.counters, forwarded, &failure);
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
            self.host.property(egress_identity_core::principal::PrincipalProperty::PeerCertificateDigest)?;
            return Ok(Action::Continue);
        }
        let host = Rc::clone(&self.host);
        let resolution = {
            let mut cache = self.cache.as_ref().and_then(|c| c.try_borrow_mut().ok());
            let lookup = |p| host.property(p);
            principal::resolve(config.principal_sources, config.san_policy, cache.as_deref_mut(), lookup)?
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
        let method = if used.method { host.request_header(":method")? } else { None };
        let path = if used.path { host.request_header(":path")? } else { None };
        let authority = host.request_header(":authority")?;
        if ladder(4) {
            return Ok(Action::Continue);
        }
        let Some(request) = Request::from_headers(authority.as_deref(), method.as_deref(), path.as_deref()) else {
            let denial = Denial { layer: Layer::Request, policy: None, reason: Reason::MalformedRequest };
            Record::of(config.audit_record, &Evaluation::of(Decision::Deny(denial)), principal_id, "").store(&*host);
            return self.deny(config, &denial, None);
        };

        let evaluation = config.evaluate(resolution.principal.as_ref().map(Caller::id).map_err(|e| *e), &request);
        if ladder(5) {
            return Ok(Action::Continue);
        }
        if !ladder(7) {
            self.counters.count_dry_run(&evaluation);
        }
        // A dynamic destination's concrete host: what its upstream connects to and its record names.
        let concrete = evaluation.dynamic_port.and_then(|_| split_authority(request.authority)).map(|(h, _)| h);
        let concrete = concrete.as_deref().unwrap_or_default();
        let record = (!ladder(6)).then(|| Record::of(config.audit_record, &evaluation, principal_id, concrete));
        if let Some(record) = &record {
            record.store(&*host);
        }
        match evaluation.decision {
            Decision::Allow(allowed) => {
                for spelling in &config.headers.underscore_spellings {
                    host.remove_request_header(spelling)?;
                }
                host.set_request_header(&config.headers.principal, principal_id)?;
                host.set_request_header(&config.headers.cluster, &allowed.identity.cluster)?;
                if let Some(secret) = &allowed.identity.secret {
                    host.set_identity_secret(secret)?;
                }
                if allowed.dynamic {
                    host.set_dynamic_upstream(concrete, allowed.port, false)?;
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
        self.host.remove_request_header(&config.headers.cluster)?;
        self.host.remove_request_header(&config.headers.principal)?;
        self.host.respond(403, &denial.to_json())?;
        self.counters.denied(denial, destination);
        Ok(Action::Pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const POLICY: &str = r#"{
      "localTrustDomain": "cluster.local",
      "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] } ],
      "gateway": { "policies": [ { "name": "team", "action": "ALLOW",
        "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
      "destinations": [ { "name": "partner-api", "host": "api.partner.example", "port": 443,
        "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ],
        "identities": ["team.app1"] } ],
      "platform": { "kind": "istio-waypoint" }
    }"#;

    /// A request from `principal` (the waypoint's filter state) to the partner, on a mock host.
    fn request(principal: &str) -> (Rc<MockHost>, EgressIdentityFilter) {
        let config = Rc::new(Config::load(POLICY.as_bytes()).unwrap());
        let host = Rc::new(MockHost::default());
        host.properties
            .borrow_mut()
            .insert(b"filter_state\0io.istio.peer_principal".to_vec(), principal.as_bytes().to_vec());
        host.request_headers.borrow_mut().insert(":authority".into(), "api.partner.example".into());
        let counters = Rc::new(Counters::define(host.clone(), &config, false));
        let filter = EgressIdentityFilter::new(host.clone(), Some(config), None, counters);
        (host, filter)
    }

    const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";

    fn responses(host: &MockHost) -> Vec<String> {
        host.calls.borrow().iter().filter(|c| c.contains("respond")).cloned().collect()
    }

    #[test]
    fn an_allowed_request_gets_its_cluster_and_a_denied_one_a_403() {
        let (host, mut filter) = request(APP1);
        assert_eq!(filter.on_http_request_headers(0, true), Action::Continue);
        assert_eq!(
            host.request_headers.borrow().get("x-egress-identity-cluster").map(String::as_str),
            Some("partner-api|team-app1")
        );
        let (host, mut filter) = request("spiffe://cluster.local/ns/other/sa/x");
        assert_eq!(filter.on_http_request_headers(0, true), Action::Pause);
        let said = responses(&host);
        assert!(
            said.len() == 1 && said[0].starts_with("respond 403 ") && said[0].contains("\"layer\":\"gateway\""),
            "{said:?}"
        );
    }

    /// Every host call that can fail, failing in turn: the request is refused with 500 `host_error` (or,
    /// when even the answer fails, stays stopped), never forwarded with a cluster, and counted.
    #[test]
    fn each_failing_host_call_refuses_the_request() {
        for failing in ["property", "request_header", "set_request_header", "remove_request_header", "respond"] {
            // The answer fails on a request that is answered: a denied one.
            let who = if failing == "respond" { "spiffe://cluster.local/ns/other/sa/x" } else { APP1 };
            let (host, mut filter) = request(who);
            host.fail(failing);
            assert_eq!(filter.on_http_request_headers(0, true), Action::Pause, "{failing}");
            assert!(
                !host.request_headers.borrow().contains_key("x-egress-identity-cluster"),
                "{failing}: the request keeps a cluster"
            );
            let said = responses(&host);
            if failing == "respond" {
                assert!(said.iter().all(|r| r.starts_with("FAILED")), "{said:?}");
            } else {
                assert!(
                    said.iter().any(|r| r.starts_with("respond 500 ") && r.contains("host_error")),
                    "{failing}: {said:?}"
                );
            }
            filter.counters.flush();
            assert_eq!(host.counter("egress_identity.host_errors_total"), 1, "{failing}");
            // The next request on a healthy host is decided normally.
            host.heal();
            let (host, mut next) = request(APP1);
            assert_eq!(next.on_http_request_headers(0, true), Action::Continue, "after {failing}");
            drop(host);
        }
    }
}
