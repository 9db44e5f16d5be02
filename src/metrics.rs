//! The names of the filter's metrics. Envoy exposes them with the prefix `wasmcustom.` in `/stats` and
//! `/stats/prometheus` (dots become underscores there). The adapter defines and updates them.

use std::time::Duration;

use crate::config::Config;

/// How often each worker hands its counted requests to Envoy: counters lag by at most this much, and a
/// request costs no metric host call.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Counter: requests allowed (forwarded to an external identity's cluster).
pub const REQUESTS_ALLOWED: &str = "egress_identity.requests_allowed";
/// Counter: requests denied, all layers and reasons.
pub const REQUESTS_DENIED: &str = "egress_identity.requests_denied";
/// Counter: peer-certificate lookups answered from the cache.
pub const CERTIFICATE_CACHE_HITS: &str = "egress_identity.certificate_cache.hits";
/// Counter: peer certificates parsed and validated (cache misses).
pub const CERTIFICATE_CACHE_MISSES: &str = "egress_identity.certificate_cache.misses";
/// Counter: requests that dry-run policies would have allowed / denied (see `dryRun`).
pub const DRY_RUN_SHADOW_ALLOW: &str = "egress_identity.dry_run.shadow_allow";
pub const DRY_RUN_SHADOW_DENY: &str = "egress_identity.dry_run.shadow_deny";
/// Counter: requests from callers accepted only by `acceptLegacyKumaSans`.
pub const LEGACY_KUMA_SAN_REQUESTS: &str = "egress_identity.legacy_kuma_san_requests";
/// Gauge: generation of the loaded configuration, 1 for the first, +1 for each different one.
pub const CONFIG_GENERATION: &str = "egress_identity.config_generation";

/// Every (layer, reason) a denial can have.
pub const DENIALS: &[(&str, &str)] = &[
    ("request", "malformed_request"),
    ("principal", "no_principal"),
    ("principal", "unparsable_certificate"),
    ("principal", "no_uri_san"),
    ("principal", "multiple_uri_sans"),
    ("principal", "invalid_spiffe_id"),
    ("principal", "ca_certificate"),
    ("principal", "untrusted_trust_domain"),
    ("gateway", "denied_by_policy"),
    ("gateway", "no_matching_allow"),
    ("destination", "unknown_destination"),
    ("destination", "denied_by_policy"),
    ("destination", "no_matching_allow"),
    ("identity", "no_identity_mapping"),
];

/// Counter: denials of one layer and reason, e.g. `egress_identity.denied.gateway.denied_by_policy`.
pub fn denied(layer: &str, reason: &str) -> String {
    format!("egress_identity.denied.{layer}.{reason}")
}

/// Counter: requests forwarded as one external identity of one destination,
/// e.g. `egress_identity.identity.partner-api.team.app1`.
pub fn identity_requests(destination: &str, identity: &str) -> String {
    format!("egress_identity.identity.{destination}.{identity}")
}

/// Every (destination, identity, cluster) the configuration can select, for defining their counters.
pub fn identities(config: &Config) -> impl Iterator<Item = (&str, &str, &str)> {
    config.destinations.iter().flat_map(|d| {
        d.identities.identities().map(move |i| (&*d.name, &*i.name, &*i.cluster))
    })
}

/// FNV-1a of the configuration document: tells one configuration from another across workers.
pub fn config_fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::EXAMPLE;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn names() {
        assert_eq!(denied("gateway", "denied_by_policy"), "egress_identity.denied.gateway.denied_by_policy");
        let config = Config::load(EXAMPLE.as_bytes()).unwrap();
        let all: Vec<_> = identities(&config).collect();
        assert_eq!(
            all,
            [("partner-api", "team.app1", "partner-api|team.app1"), ("partner-api", "team.app2", "partner-api|team.app2")]
        );
        assert_eq!(identity_requests("partner-api", "team.app1"), "egress_identity.identity.partner-api.team.app1");
        assert_ne!(config_fingerprint(b"a"), config_fingerprint(b"b"));
        assert_eq!(config_fingerprint(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn every_denial_the_core_can_produce_has_a_counter() {
        use crate::decision::{Denial, Layer, PrincipalError, Reason};
        use crate::peer_certificate::CertificateError;
        use crate::spiffe_id::SpiffeIdError;
        let principal = |e| (Layer::Principal, Reason::Principal(e));
        let cases = [
            (Layer::Request, Reason::MalformedRequest),
            principal(PrincipalError::Missing),
            principal(PrincipalError::InvalidSpiffeId(SpiffeIdError::Port)),
            principal(PrincipalError::Certificate(CertificateError::Unparsable)),
            principal(PrincipalError::Certificate(CertificateError::NoUriSan)),
            principal(PrincipalError::Certificate(CertificateError::MultipleUriSans)),
            principal(PrincipalError::Certificate(CertificateError::InvalidSpiffeId(SpiffeIdError::Port))),
            principal(PrincipalError::Certificate(CertificateError::CaCertificate)),
            (Layer::Principal, Reason::UntrustedTrustDomain),
            (Layer::Gateway, Reason::DeniedByPolicy),
            (Layer::Gateway, Reason::NoMatchingAllow),
            (Layer::Destination, Reason::UnknownDestination),
            (Layer::Destination, Reason::DeniedByPolicy),
            (Layer::Destination, Reason::NoMatchingAllow),
            (Layer::Identity, Reason::NoIdentityMapping),
        ];
        for (layer, reason) in cases {
            let d = Denial { layer, policy: None, reason };
            assert!(DENIALS.contains(&(d.layer.as_str(), d.reason.code())), "{d}");
        }
    }
}
