//! The compiled configuration the data path runs on, and how a document becomes one.
//!
//! Loading either yields a fully compiled configuration or every error found, each naming the JSON path
//! of the field (`destinations[0].policies[1].action: ...`). There is no partial or permissive result.

use std::collections::HashSet;

use crate::config_document::{PluginConfigSpec, PrincipalSource};
use crate::config_error::{ConfigError, Errors, JsonPath};
use crate::destination::DestinationTable;
use crate::peer_certificate::SanPolicy;
use crate::policy::{LayerKind, PolicyLayer};
use crate::trust_domain::TrustDomains;

/// The largest `certificateCacheSize`.
const MAX_CACHE_SIZE: usize = 1_000_000;

/// Names of the internal headers the filter sets and the route removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub principal: Box<str>,
    pub cluster: Box<str>,
}

/// The configuration the data path runs on: validated, with every policy compiled.
#[derive(Debug)]
pub struct Config {
    pub trust_domains: TrustDomains,
    pub principal_sources: Vec<PrincipalSource>,
    pub headers: HeaderNames,
    pub default_port: u16,
    pub certificate_cache_size: usize,
    pub san_policy: SanPolicy,
    pub gateway: PolicyLayer,
    pub destinations: DestinationTable,
    /// The request attributes some policy looks at: the adapter reads only those headers.
    pub attributes_used: AttributesUsed,
}

/// Whether any policy (enforced or dry-run, either layer) constrains methods or paths. When none does,
/// the adapter does not read `:method` / `:path` (a host call each) and the decision sees them empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributesUsed {
    pub method: bool,
    pub path: bool,
}

impl AttributesUsed {
    fn of(spec: &PluginConfigSpec) -> Self {
        let layers = std::iter::once(&spec.gateway.policies).chain(spec.destinations.iter().map(|d| &d.policies));
        let operations = layers.flatten().flat_map(|p| &p.rules).flat_map(|r| &r.to).map(|t| &t.operation);
        operations.fold(Self::default(), |used, o| Self {
            method: used.method || !o.methods.is_empty() || !o.not_methods.is_empty(),
            path: used.path || !o.paths.is_empty() || !o.not_paths.is_empty(),
        })
    }
}

impl Config {
    /// Parses and compiles a configuration document. Returns every error found.
    pub fn load(json: &[u8]) -> Result<Self, Vec<ConfigError>> {
        // The fast path parses once; only a document that fails is parsed again to find the field's path.
        let spec: PluginConfigSpec = match serde_json::from_slice(json) {
            Ok(spec) => spec,
            Err(_) => {
                let de = &mut serde_json::Deserializer::from_slice(json);
                let e = match serde_path_to_error::deserialize::<_, PluginConfigSpec>(de) {
                    Err(e) => e,
                    Ok(_) => return Err(vec![ConfigError::new(".", "inconsistent parse")]),
                };
                return Err(vec![ConfigError::new(e.path().to_string(), e.into_inner().to_string())]);
            }
        };
        Self::compile(spec)
    }

    /// Validates and compiles a parsed document, taking over its strings.
    pub fn compile(spec: PluginConfigSpec) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Errors::default();

        let trust_domains =
            TrustDomains::new(&spec.trust_domains, spec.local_trust_domain.as_deref(), &spec.trust_domain_aliases)
                .unwrap_or_else(|trust_errors| {
                    for (path, message) in trust_errors {
                        errors.push(path, message);
                    }
                    TrustDomains::default()
                });

        if spec.principal_sources.is_empty() {
            errors.push("principalSources", "must list at least one source");
        }
        let mut seen = HashSet::new();
        for (i, source) in spec.principal_sources.iter().enumerate() {
            if !seen.insert(source) {
                errors.push(format!("principalSources[{i}]"), "source is listed twice");
            }
        }

        validate_header_name(&mut errors, "headers.principal", &spec.headers.principal);
        validate_header_name(&mut errors, "headers.cluster", &spec.headers.cluster);
        if spec.headers.principal.eq_ignore_ascii_case(&spec.headers.cluster) {
            errors.push("headers.cluster", "must differ from headers.principal");
        }
        if spec.default_port == 0 {
            errors.push("defaultPort", "must be a port (1-65535)");
        }
        if spec.certificate_cache_size == 0 || spec.certificate_cache_size > MAX_CACHE_SIZE {
            errors.push("certificateCacheSize", format!("must be between 1 and {MAX_CACHE_SIZE}"));
        }

        let attributes_used = AttributesUsed::of(&spec);
        let gateway = PolicyLayer::compile(
            spec.gateway.policies,
            LayerKind::Gateway,
            &JsonPath::Root("gateway.policies"),
            &trust_domains,
            &mut errors,
        );
        let destinations = DestinationTable::compile(spec.destinations, &trust_domains, &mut errors);

        if !errors.is_empty() {
            return Err(errors.into_vec());
        }
        Ok(Self {
            trust_domains,
            principal_sources: spec.principal_sources,
            headers: HeaderNames {
                principal: spec.headers.principal.into_boxed_str(),
                cluster: spec.headers.cluster.into_boxed_str(),
            },
            default_port: spec.default_port,
            certificate_cache_size: spec.certificate_cache_size,
            san_policy: if spec.accept_legacy_kuma_sans { SanPolicy::AcceptLegacyKuma } else { SanPolicy::Strict },
            gateway,
            destinations,
            attributes_used,
        })
    }
}

fn validate_header_name(errors: &mut Errors, path: &str, name: &str) {
    let token = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.');
    if name.is_empty() || !name.bytes().all(token) {
        errors.push(path, format!("{name:?} is not a lower-case HTTP header name"));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config_document::{DEFAULT_CLUSTER_HEADER, DEFAULT_PRINCIPAL_HEADER};
    use wasm_bindgen_test::wasm_bindgen_test;

    /// A complete, valid configuration used across the core's tests.
    pub(crate) const EXAMPLE: &str = r#"{
      "trustDomains": ["cluster.local"],
      "gateway": { "policies": [
        { "name": "deny-quarantine", "action": "DENY",
          "rules": [ { "from": [ { "source": { "namespaces": ["quarantine"] } } ] } ] },
        { "name": "allow-mesh-workloads", "action": "ALLOW",
          "rules": [ { "from": [ { "source": { "namespaces": ["team", "quarantine"] } } ] } ] }
      ] },
      "destinations": [ {
        "name": "partner-api", "hosts": ["api.partner.example"], "ports": [443],
        "policies": [
          { "name": "deny-admin-paths", "action": "DENY",
            "rules": [ { "to": [ { "operation": { "paths": ["/admin*"] } } ] } ] },
          { "name": "allow-team-apps", "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "principals":
              ["cluster.local/ns/team/sa/app1", "spiffe://cluster.local/ns/team/sa/app2"] } } ] } ] }
        ],
        "identities": [
          { "name": "team.app1", "cluster": "partner-api|team.app1",
            "principals": ["spiffe://cluster.local/ns/team/sa/app1"] },
          { "name": "team.app2", "cluster": "partner-api|team.app2",
            "principals": ["cluster.local/ns/team/sa/app2"] }
        ]
      } ]
    }"#;

    fn errors_of(json: &str) -> Vec<String> {
        match Config::load(json.as_bytes()) {
            Ok(_) => panic!("expected errors for {json}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn with(patch: &str, value: serde_json::Value) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        let (parent, key) = patch.rsplit_once('/').unwrap();
        match doc.pointer_mut(parent).unwrap() {
            serde_json::Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            object => object[key] = value,
        }
        doc.to_string()
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn attributes_used_covers_both_layers_negations_and_dry_run() {
        let used = |json: &str| Config::load(json.as_bytes()).unwrap().attributes_used;
        assert_eq!(used(EXAMPLE), AttributesUsed { method: false, path: true });
        let op = |operation: serde_json::Value, dry_run: bool| {
            let policy = serde_json::json!({"name": "p", "action": "DENY", "dryRun": dry_run,
                "rules": [{"to": [{"operation": operation}]}]});
            let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
            doc["destinations"][0]["policies"] = serde_json::json!([policy.clone()]);
            let gateway = serde_json::json!({"name": "g", "action": "ALLOW", "rules": [{}]});
            doc["gateway"]["policies"] = serde_json::json!([gateway]);
            let destination_only = doc.to_string();
            doc["destinations"][0]["policies"] = serde_json::json!([gateway]);
            doc["gateway"]["policies"] = serde_json::json!([policy, gateway]);
            (used(&destination_only), used(&doc.to_string()))
        };
        let both = |u| (u, u);
        assert_eq!(
            op(serde_json::json!({"notMethods": ["DELETE"]}), false),
            both(AttributesUsed { method: true, path: false })
        );
        assert_eq!(
            op(serde_json::json!({"methods": ["GET"]}), true),
            both(AttributesUsed { method: true, path: false })
        );
        assert_eq!(
            op(serde_json::json!({"notPaths": ["/x"]}), false),
            both(AttributesUsed { method: false, path: true })
        );
        assert_eq!(op(serde_json::json!({"ports": [443]}), false), both(AttributesUsed::default()));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn example_loads_with_defaults() {
        let config = Config::load(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(&*config.headers.principal, DEFAULT_PRINCIPAL_HEADER);
        assert_eq!(&*config.headers.cluster, DEFAULT_CLUSTER_HEADER);
        assert_eq!(config.default_port, 443);
        assert_eq!(config.certificate_cache_size, 1024);
        assert_eq!(config.principal_sources, [PrincipalSource::PeerCertificate, PrincipalSource::IstioPeerPrincipal]);
        assert!(config.trust_domains.accepts("cluster.local"));
        assert_eq!(config.san_policy, SanPolicy::Strict, "legacy Kuma SANs are opt-in");
        let legacy = EXAMPLE.replacen('{', r#"{"acceptLegacyKumaSans": true,"#, 1);
        assert_eq!(Config::load(legacy.as_bytes()).unwrap().san_policy, SanPolicy::AcceptLegacyKuma);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn syntax_and_type_errors_name_the_field() {
        let e = errors_of(&with("/gateway/policies/0/action", "ALOW".into()));
        assert!(e[0].starts_with("gateway.policies[0].action: unknown variant `ALOW`"), "{e:?}");
        let e = errors_of(&with("/destinations/0/ports/0", "https".into()));
        assert!(e[0].starts_with("destinations[0].ports[0]: invalid type"), "{e:?}");
        let e = errors_of(&with("/defaultPort", 70000.into()));
        assert!(e[0].starts_with("defaultPort:"), "{e:?}");
        let e = errors_of("{ not json");
        assert_eq!(e.len(), 1);
        let e = errors_of("{}");
        assert!(e[0].contains("missing field `destinations`"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn unsupported_istio_fields_are_rejected_not_ignored() {
        let e = errors_of(&with("/gateway/policies/1/rules/0/when", serde_json::json!([{"key": "k"}])));
        assert!(e[0].starts_with("gateway.policies[1].rules[0].when: unknown field `when`"), "{e:?}");
        let e =
            errors_of(&with("/gateway/policies/1/rules/0/from/0/source/ipBlocks", serde_json::json!(["10.0.0.0/8"])));
        assert!(
            e[0].starts_with("gateway.policies[1].rules[0].from[0].source.ipBlocks: unknown field `ipBlocks`"),
            "{e:?}"
        );
        let e = errors_of(&with("/trustDomain", "x".into()));
        assert!(e[0].starts_with("trustDomain: unknown field `trustDomain`"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn semantic_errors_are_all_reported_with_paths() {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        doc["trustDomains"] = serde_json::json!(["Cluster.local", "ok.example", "ok.example"]);
        doc["headers"] = serde_json::json!({"principal": "X-Bad Header", "cluster": "x-egress-identity-cluster"});
        doc["certificateCacheSize"] = 0.into();
        doc["gateway"]["policies"][0]["name"] = "allow-mesh-workloads".into();
        let e = errors_of(&doc.to_string());
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "trustDomains[0]",
                "trustDomains[2]",
                "headers.principal",
                "certificateCacheSize",
                "gateway.policies[1].name"
            ],
            "{e:?}"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn empty_lists_that_would_deny_everything_by_mistake_are_errors() {
        let e = errors_of(&with("/trustDomains", serde_json::json!([])));
        assert!(e[0].starts_with("trustDomains: must list"), "{e:?}");
        let e = errors_of(&with("/principalSources", serde_json::json!([])));
        assert!(e[0].starts_with("principalSources: must list"), "{e:?}");
        let e = errors_of(&with("/headers", serde_json::json!({"principal": "x-a", "cluster": "X-A"})));
        assert!(e.iter().any(|m| m.starts_with("headers.cluster:")), "{e:?}");
    }
}
