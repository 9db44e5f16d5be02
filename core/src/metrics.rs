//! The names of the filter's metrics, and the tags Envoy extracts from them.
//!
//! A metric is a family name plus tags, each tag spelled `;<name>=<value>` after it:
//! `egress_identity.decisions_total;protocol=http;decision=deny;layer=gateway;reason=denied_by_policy;policy=deny-quarantine`.
//! Envoy's `stats_config.stats_tags` with the regexes of [`TAGS`] (rendered into every gateway
//! configuration) turn each `;<name>=<value>` into a tag, so `/stats/prometheus` shows
//! `egress_identity_decisions_total{protocol="http",decision="deny",layer="gateway",...}` (Envoy drops the
//! `wasmcustom.` namespace there). `;` and `=` occur in no name or value the configuration accepts, so a
//! value may hold dots (`team.app1`). Without the tag regexes the whole string is the name, still unique.
//! Counters end in `_total`, as Prometheus expects. The adapter defines and updates them.

use std::time::Duration;

use crate::audit::Outcome;
use crate::config::Config;
use crate::config_document::Protocol;
use crate::decision::DenialKind;

/// How often each worker hands its counted decisions to Envoy: counters lag by at most this much, and a
/// decision costs no metric host call.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Counter family: every decision. Tags: `protocol` (`http` for the HTTP filter, `l4` for the network
/// filter), `decision` (`allow`, `deny`); an allow has `destination` and `identity`; a deny has `layer` and
/// `reason`, `policy` when a policy decided, `destination` once the destination was known.
pub const DECISIONS: &str = "egress_identity.decisions_total";
/// Counter: peer-certificate lookups answered from the cache.
pub const CERTIFICATE_CACHE_HITS: &str = "egress_identity.certificate_cache_hits_total";
/// Counter: peer certificates parsed and validated (cache misses).
pub const CERTIFICATE_CACHE_MISSES: &str = "egress_identity.certificate_cache_misses_total";
/// Counter family: what dry-run policies would have decided (tag `decision`), see `dryRun`.
pub const DRY_RUN: &str = "egress_identity.dry_run_decisions_total";
/// Counter: decisions on callers accepted only by `acceptLegacyKumaSans`.
pub const LEGACY_KUMA_SANS: &str = "egress_identity.legacy_kuma_sans_total";
/// Counter: requests or connections refused because a host call failed (also a `decisions_total` deny
/// with `layer="plugin"`, `reason="host_error"`).
pub const HOST_ERRORS: &str = "egress_identity.host_errors_total";
/// Gauge: generation of the loaded configuration, 1 for the first, +1 for each different one.
pub const CONFIG_GENERATION: &str = "egress_identity.config_generation";
/// Counter: connections the handshake guard (the module as a network filter before an HTTP connection
/// manager, root id `…-guard`) closed at `connectionDecisionTimeoutMs`: no TLS handshake completed, or
/// nothing sent after it.
pub const HANDSHAKE_TIMEOUTS: &str = "egress_identity.handshake_timeouts_total";
/// Gauge family, always 1: the running module's `version` and source `revision` (tags).
pub const BUILD_INFO: &str = "egress_identity.build_info";
/// Counter family: allowed requests or connections that never reached the partner (each also counted as a
/// `decisions_total` allow: the policy did allow it). Tags: `protocol`, `destination`, `identity`, and
/// `reason`, the audit record's [`Outcome`] (`no_certificate`, `upstream_tls_error`,
/// `upstream_connect_failure`).
pub const UPSTREAM_FAILURES: &str = "egress_identity.upstream_failures_total";

/// The tags, in the order they are spelled, and the regex Envoy extracts each with (`stats_tags`: the first
/// group is removed from the name, the second is the value).
pub const TAGS: [(&str, &str); 9] = [
    ("protocol", "(;protocol=([^;]*))"),
    ("decision", "(;decision=([^;]*))"),
    ("layer", "(;layer=([^;]*))"),
    ("reason", "(;reason=([^;]*))"),
    ("policy", "(;policy=([^;]*))"),
    ("destination", "(;destination=([^;]*))"),
    ("identity", "(;identity=([^;]*))"),
    ("version", "(;version=([^;]*))"),
    ("revision", "(;revision=([^;]*))"),
];

/// Gauge: the module's version and source revision (its value is 1).
pub fn build_info(version: &str, revision: &str) -> String {
    format!("{BUILD_INFO};version={version};revision={revision}")
}

/// The `protocol` tag of the HTTP filter's and the network filter's decisions.
pub fn protocol(l4: bool) -> &'static str {
    if l4 {
        "l4"
    } else {
        "http"
    }
}

/// Counter: decisions that forwarded to one external identity of one destination.
pub fn allowed(protocol: &str, destination: &str, identity: &str) -> String {
    format!("{DECISIONS};protocol={protocol};decision=allow;destination={destination};identity={identity}")
}

/// Counter: denials of one kind, by the policy that decided (if any) and the destination (if known).
pub fn denied(protocol: &str, kind: DenialKind, policy: Option<&str>, destination: Option<&str>) -> String {
    let mut name = format!(
        "{DECISIONS};protocol={protocol};decision=deny;layer={};reason={}",
        kind.layer().as_str(),
        kind.reason_code()
    );
    if let Some(policy) = policy {
        name.push_str(";policy=");
        name.push_str(policy);
    }
    if let Some(destination) = destination {
        name.push_str(";destination=");
        name.push_str(destination);
    }
    name
}

/// Counter: refusals by the plugin itself (`reason`: `host_error`, `not_configured`).
pub fn plugin_denied(protocol: &str, reason: &str) -> String {
    format!("{DECISIONS};protocol={protocol};decision=deny;layer=plugin;reason={reason}")
}

/// Counter: allowed requests or connections of one destination and external identity that never reached
/// the partner, by outcome.
pub fn upstream_failure(protocol: &str, destination: &str, identity: &str, outcome: Outcome) -> String {
    format!(
        "{UPSTREAM_FAILURES};protocol={protocol};destination={destination};identity={identity};reason={}",
        outcome.as_str()
    )
}

/// Whether an allowed request or connection to a destination of this protocol can end with `outcome`: a
/// `tls` passthrough presents no certificate and makes no handshake of its own, so it only fails to connect.
pub fn upstream_failure_possible(outcome: Outcome, destination_protocol: Protocol) -> bool {
    destination_protocol != Protocol::Tls || outcome == Outcome::UpstreamConnectFailure
}

/// The upstream-failure counters of every external identity, in
/// [`crate::identity_mapping::ExternalIdentity::index`] order, each identity's in [`Outcome::ALL`] order
/// (the adapter keeps them in an array indexed like that): `None` for the other filter's identities and for
/// outcomes the destination cannot have ([`upstream_failure_possible`]).
pub fn upstream_failure_counters(config: &Config, l4: bool) -> impl Iterator<Item = Option<String>> + '_ {
    let protocol = protocol(l4);
    config.destinations.identities().flat_map(move |(d, i)| {
        Outcome::ALL.into_iter().map(move |outcome| {
            (d.protocol.is_l4() == l4 && upstream_failure_possible(outcome, d.protocol))
                .then(|| upstream_failure(protocol, &d.name, &i.name, outcome))
        })
    })
}

/// Counter: dry-run decisions (`decision`: `allow`, `deny`).
pub fn dry_run(decision: &str) -> String {
    format!("{DRY_RUN};decision={decision}")
}

/// The allow counter of every external identity, in [`crate::identity_mapping::ExternalIdentity::index`]
/// order (the adapter keeps them in an array indexed like that): `None` for the identities of destinations
/// the other filter serves (an HTTP request never forwards to a tcp destination's identity, a connection
/// never to an HTTP one's), so that no series exists that can never count.
pub fn identity_counters(config: &Config, l4: bool) -> impl Iterator<Item = Option<String>> + '_ {
    let protocol = protocol(l4);
    config
        .destinations
        .identities()
        .map(move |(d, i)| (d.protocol.is_l4() == l4).then(|| allowed(protocol, &d.name, &i.name)))
}

/// Whether a filter (`l4` or HTTP) can record a denial of this kind against a destination of that protocol:
/// the other filter's destinations only ever meet `protocol_mismatch`.
pub fn denial_possible(kind: DenialKind, destination_protocol: Protocol, l4: bool) -> bool {
    destination_protocol.is_l4() == l4 || kind == DenialKind::ProtocolMismatch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::EXAMPLE;
    use wasm_bindgen_test::wasm_bindgen_test;

    /// What Envoy's tag extraction does with [`TAGS`]: every match of a regex's first group removed, its
    /// second group the tag's value.
    fn extract(name: &str) -> (String, Vec<(&'static str, String)>) {
        let mut rest = name.to_string();
        let mut tags = Vec::new();
        for (tag, _) in TAGS {
            let marker = format!(";{tag}=");
            if let Some(start) = rest.find(&marker) {
                let end = rest[start + 1..].find(';').map_or(rest.len(), |e| start + 1 + e);
                tags.push((tag, rest[start + marker.len()..end].to_string()));
                rest.replace_range(start..end, "");
            }
        }
        (rest, tags)
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn every_series_is_one_family_with_its_labels() {
        let name = denied("http", DenialKind::GatewayDeniedByPolicy, Some("deny-quarantine"), None);
        assert_eq!(
            name,
            "egress_identity.decisions_total;protocol=http;decision=deny;layer=gateway;reason=denied_by_policy;policy=deny-quarantine"
        );
        let (family, tags) = extract(&name);
        assert_eq!(family, DECISIONS);
        assert_eq!(tags.len(), 5);
        // Values keep their dots: the identity is whole.
        let (family, tags) = extract(&allowed("l4", "partner-api", "team.app1"));
        assert_eq!(family, DECISIONS);
        assert!(tags.contains(&("identity", "team.app1".to_string())), "{tags:?}");
        assert_eq!(extract(&dry_run("deny")).0, DRY_RUN);
        assert_eq!(extract(&plugin_denied("http", "host_error")).1.len(), 4);
        // Each kind its own series.
        let names: std::collections::HashSet<String> =
            DenialKind::ALL.iter().map(|k| denied("http", *k, None, None)).collect();
        assert_eq!(names.len(), DenialKind::ALL.len());
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_tag_regexes_cut_exactly_their_own_tag() {
        for (tag, regex) in TAGS {
            assert!(regex.starts_with(&format!("(;{tag}=")) && regex.ends_with("([^;]*))"), "{tag}: {regex}");
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn identity_counters_follow_the_identity_index() {
        // A third identity shares the one cluster of a single-cluster destination with the others.
        let json = EXAMPLE
            .replace(
                r#""principals": ["cluster.local/ns/team/sa/app2"] }"#,
                r#""principals": ["cluster.local/ns/team/sa/app2"] },
          { "name": "team.app3", "principals": ["cluster.local/ns/team/sa/app3"] }"#,
            )
            .replace(
                r#""identities": ["team.app1", "team.app2"]"#,
                r#""identities": ["team.app1", "team.app2", "team.app3"], "singleCluster": true"#,
            );
        let config = Config::load(json.as_bytes()).unwrap();
        let names: Vec<String> = identity_counters(&config, false).map(Option::unwrap).collect();
        let identities: Vec<String> = names.iter().map(|n| extract(n).1.last().unwrap().1.clone()).collect();
        assert_eq!(identities, ["team.app1", "team.app2", "team.app3"]);
        let indexes: Vec<usize> = config.destinations.identities().map(|(_, i)| i.index).collect();
        assert_eq!(indexes, [0, 1, 2], "one counter slot per identity, whatever its cluster");
        assert_eq!(config.destinations.identity_count(), names.len());
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn each_filter_counts_only_its_own_destinations_identities() {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        let tcp = serde_json::json!({
            "name": "partner-tcp", "protocol": "tcp", "host": "api.partner.example", "port": 5432,
            "policies": [{ "name": "all", "action": "ALLOW", "rules": [{}] }],
            "identities": ["team.app1"]
        });
        doc["destinations"].as_array_mut().unwrap().push(tcp);
        let config = Config::load(doc.to_string().as_bytes()).unwrap();
        let of = |l4| -> Vec<(bool, Option<String>)> {
            config
                .destinations
                .identities()
                .map(|(d, _)| d.protocol.is_l4())
                .zip(identity_counters(&config, l4))
                .collect()
        };
        for l4 in [false, true] {
            let counters = of(l4);
            assert_eq!(counters.len(), config.destinations.identity_count());
            assert!(counters.iter().any(|(d, _)| *d) && counters.iter().any(|(d, _)| !*d), "both kinds in the example");
            for (destination_l4, name) in counters {
                assert_eq!(name.is_some(), destination_l4 == l4, "{name:?}");
                if let Some(name) = name {
                    assert!(name.contains(&format!(";protocol={};", protocol(l4))), "{name}");
                }
            }
        }
        assert!(denial_possible(DenialKind::ProtocolMismatch, Protocol::Http, true));
        // Upstream failures: three series per identity of the filter's own destinations, only connect
        // failures for a passthrough; the same order as the identities.
        for l4 in [false, true] {
            let names: Vec<Option<String>> = upstream_failure_counters(&config, l4).collect();
            assert_eq!(names.len(), config.destinations.identity_count() * Outcome::ALL.len());
            for ((d, i), series) in config.destinations.identities().zip(names.chunks(Outcome::ALL.len())) {
                for (outcome, name) in Outcome::ALL.iter().zip(series) {
                    let expected = d.protocol.is_l4() == l4
                        && (d.protocol != Protocol::Tls || *outcome == Outcome::UpstreamConnectFailure);
                    assert_eq!(name.is_some(), expected, "{} {} {outcome:?}: {name:?}", d.name, i.name);
                    if let Some(name) = name {
                        let (family, tags) = extract(name);
                        assert_eq!(family, UPSTREAM_FAILURES);
                        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        assert_eq!(
                            tags,
                            [
                                ("protocol", protocol(l4)),
                                ("reason", outcome.as_str()),
                                ("destination", &*d.name),
                                ("identity", &*i.name)
                            ]
                        );
                    }
                }
            }
        }
        assert!(!denial_possible(DenialKind::NoIdentityMapping, Protocol::Http, true));
        assert!(!denial_possible(DenialKind::DestinationNoMatchingAllow, Protocol::Tcp, false));
        assert!(denial_possible(DenialKind::SniMismatch, Protocol::Tls, true));
    }
}
