//! The names of the filter's metrics. Envoy exposes them with the prefix `wasmcustom.` in `/stats` and
//! `/stats/prometheus` (dots become underscores there). The adapter defines and updates them.

use std::time::Duration;

use crate::config::Config;
use crate::decision::DenialKind;

/// How often each worker hands its counted requests to Envoy: counters lag by at most this much, and a
/// request costs no metric host call.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Counter: requests allowed (forwarded to an external identity's cluster).
pub const REQUESTS_ALLOWED: &str = "egress_identity.requests_allowed";
/// Counter: requests denied, all layers and reasons.
pub const REQUESTS_DENIED: &str = "egress_identity.requests_denied";
/// Counter: connections (the network filter, `tcp` and `tls` destinations) allowed / denied. The other
/// counters count requests and connections together (a destination is one or the other).
pub const CONNECTIONS_ALLOWED: &str = "egress_identity.connections_allowed";
pub const CONNECTIONS_DENIED: &str = "egress_identity.connections_denied";
/// Counter: peer-certificate lookups answered from the cache.
pub const CERTIFICATE_CACHE_HITS: &str = "egress_identity.certificate_cache.hits";
/// Counter: peer certificates parsed and validated (cache misses).
pub const CERTIFICATE_CACHE_MISSES: &str = "egress_identity.certificate_cache.misses";
/// Counter: requests that dry-run policies would have allowed / denied (see `dryRun`).
pub const DRY_RUN_SHADOW_ALLOW: &str = "egress_identity.dry_run.shadow_allow";
pub const DRY_RUN_SHADOW_DENY: &str = "egress_identity.dry_run.shadow_deny";
/// Counter: requests from callers accepted only by `acceptLegacyKumaSans`.
pub const LEGACY_KUMA_SAN_REQUESTS: &str = "egress_identity.legacy_kuma_san_requests";
/// Counter: requests refused with 500 `host_error` because a host call failed.
pub const HOST_ERRORS: &str = "egress_identity.host_errors";
/// Gauge: generation of the loaded configuration, 1 for the first, +1 for each different one.
pub const CONFIG_GENERATION: &str = "egress_identity.config_generation";

/// Counter: denials of one kind, e.g. `egress_identity.denied.gateway.denied_by_policy`. Every
/// [`DenialKind`] has one.
pub fn denied(kind: DenialKind) -> String {
    format!("egress_identity.denied.{}.{}", kind.layer().as_str(), kind.reason_code())
}

/// Counter: requests forwarded as one external identity of one destination,
/// e.g. `egress_identity.identity.partner-api.team.app1`.
pub fn identity_requests(destination: &str, identity: &str) -> String {
    format!("egress_identity.identity.{destination}.{identity}")
}

/// The counter name of every external identity, in [`crate::identity_mapping::ExternalIdentity::index`]
/// order: the adapter keeps them in an array indexed like that.
pub fn identity_counters(config: &Config) -> impl Iterator<Item = String> + '_ {
    config.destinations.identities().map(|(d, i)| identity_requests(&d.name, &i.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::EXAMPLE;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn every_denial_kind_has_its_own_counter() {
        assert_eq!(denied(DenialKind::GatewayDeniedByPolicy), "egress_identity.denied.gateway.denied_by_policy");
        assert_eq!(
            denied(DenialKind::DestinationDeniedByPolicy),
            "egress_identity.denied.destination.denied_by_policy"
        );
        let names: std::collections::HashSet<String> = DenialKind::ALL.iter().map(|k| denied(*k)).collect();
        assert_eq!(names.len(), DenialKind::ALL.len());
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn identity_counters_follow_the_identity_index() {
        // A third identity shares the cluster of the first.
        let json = EXAMPLE.replace(
            r#""principals": ["cluster.local/ns/team/sa/app2"] }"#,
            r#""principals": ["cluster.local/ns/team/sa/app2"] },
          { "name": "team.app3", "cluster": "partner-api|team.app1", "principals": ["cluster.local/ns/team/sa/app3"] }"#,
        );
        let config = Config::load(json.as_bytes()).unwrap();
        let names: Vec<String> = identity_counters(&config).collect();
        assert_eq!(
            names,
            [
                "egress_identity.identity.partner-api.team.app1",
                "egress_identity.identity.partner-api.team.app2",
                "egress_identity.identity.partner-api.team.app3"
            ]
        );
        let indexes: Vec<usize> = config.destinations.identities().map(|(_, i)| i.index).collect();
        assert_eq!(indexes, [0, 1, 2], "one counter slot per identity, whatever its cluster");
        assert_eq!(config.destinations.identity_count(), names.len());
    }
}
