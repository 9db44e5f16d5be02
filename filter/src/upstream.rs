//! What became of an allowed request's or connection's upstream: once its response starts (HTTP: a local
//! reply of the router after an upstream failure passes through this filter's encoder too) or its connection
//! closes (L4), Envoy's records say whether it ever reached the partner. The core classifies them
//! ([`audit::classify`]); an outcome goes into the audit record and the upstream-failure counters.
//!
//! Cost: one host call (`response.flags`) per allowed request or connection; the other properties are read
//! only when a flag says the upstream may have failed.

use egress_identity_core::audit::{self, Outcome};
use egress_identity_core::config::Config;

use crate::counters::Counters;
use crate::host::{self, Host};
use crate::record::Record;

/// An allowed request or connection until its upstream is known: what its record and counters need.
pub struct Forwarded {
    /// The external identity's index ([`ExternalIdentity::index`]).
    ///
    /// [`ExternalIdentity::index`]: egress_identity_core::identity_mapping::ExternalIdentity::index
    pub identity: usize,
    pub record: Record,
}

/// Why an allowed request or connection never reached the partner.
pub struct Failure {
    pub outcome: Outcome,
    /// Envoy's reason ([`audit::upstream_detail`]).
    pub detail: String,
}

/// Reads what Envoy knows of the upstream and classifies it: `None` when forwarded (or unreadable, which
/// is logged). `http`: a request, whose response-code details tell a response from the upstream; a
/// connection instead counts as forwarded once tcp_proxy made an upstream connection (a first attempt
/// may have failed).
pub fn failure(host: &dyn Host, http: bool) -> Option<Failure> {
    let flags = host.response_flags().ok()?;
    if !audit::may_have_failed_upstream(flags) {
        return None;
    }
    let details = if http { host.string_property(host::RESPONSE_CODE_DETAILS) } else { String::new() };
    if !http && host.has_property(host::UPSTREAM_LOCAL_ADDRESS) {
        return None;
    }
    let reason = host.string_property(host::UPSTREAM_TRANSPORT_FAILURE_REASON);
    let outcome = audit::classify(flags, &reason, &details)?;
    Some(Failure { outcome, detail: audit::upstream_detail(&reason, &details).to_string() })
}

/// Records an upstream failure of `forwarded`: its audit record rewritten with the outcome (filter state,
/// for the access log; the debug log), and the failure counted.
pub fn record(host: &dyn Host, config: &Config, counters: &Counters, mut forwarded: Forwarded, failure: &Failure) {
    forwarded.record.add_outcome(failure.outcome, &failure.detail);
    forwarded.record.store(host);
    if !forwarded.record.has_line() && log::log_enabled!(log::Level::Debug) {
        // No record line to log (neither written nor built at decision time): the debug log still says it.
        if let Some((d, i)) = config.destinations.identities().nth(forwarded.identity) {
            log::debug!(
                "egress-identity: upstream failure: destination={} identity={} outcome={} upstream_detail={:?}",
                d.name,
                i.name,
                failure.outcome.as_str(),
                failure.detail
            );
        }
    }
    counters.upstream_failure(config, forwarded.identity, failure.outcome);
}
