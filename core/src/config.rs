//! The compiled configuration the data path runs on, and how a document becomes one.
//!
//! Loading either yields a fully compiled configuration or every error found, each naming the JSON path
//! of the field (`destinations[0].policies[1].action: ...`). There is no partial or permissive result.

use serde_path_to_error::Segment;

use crate::config_document::{AuditRecord, PlatformSpec, PluginConfigSpec, PrincipalSource};
use crate::config_error::{ConfigError, Errors, JsonPath};
use crate::destination::{Context, DestinationTable};
use crate::identity::Identities;
use crate::peer_certificate::SanPolicy;
use crate::platform::Platform;
use crate::policy::{LayerKind, PolicyLayer};
use crate::policy_value::ValueRules;
use crate::request::PathMatching;
use crate::trust_domain::TrustDomains;

/// The bounds of `connectionDecisionTimeoutMs`: the filter's timer ticks every second, so a shorter
/// deadline would not be kept; a longer one than five minutes holds a silent caller's connection for long.
pub const MIN_DECISION_TIMEOUT_MS: u64 = 1_000;
pub const MAX_DECISION_TIMEOUT_MS: u64 = 300_000;

/// The largest `certificateCacheSize`.
const MAX_CACHE_SIZE: usize = 1_000_000;
/// The largest configuration document (a 10,000-rule policy is about 1.5 MB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// At most this many schema errors are reported for one document.
const MAX_SCHEMA_ERRORS: usize = 100;

/// Every schema error (a wrong type, an unknown field or variant, a missing field) that can be found in a
/// document that does not deserialize, each with its JSON path; or the one syntax error, with its line and
/// column. serde stops at the first error, so the offending node is removed and the rest deserialized
/// again; a "missing field" caused only by such a removal is not reported.
fn schema_errors(json: &[u8]) -> Vec<ConfigError> {
    let mut document: serde_json::Value = match serde_json::from_slice(json) {
        Ok(document) => document,
        Err(e) => return vec![ConfigError::new(".", e.to_string())],
    };
    let mut errors = Vec::new();
    let mut removed: Vec<Vec<Step>> = Vec::new();
    while errors.len() < MAX_SCHEMA_ERRORS {
        let e = match serde_path_to_error::deserialize::<_, PluginConfigSpec>(&document) {
            Ok(_) => break,
            Err(e) => e,
        };
        let path: Vec<Step> = e.path().iter().map(Step::of).collect();
        let message = e.inner().to_string();
        let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
        // "missing field `k`" of an object whose `k` was just removed for an earlier error: not a new error.
        let artifact = missing.is_some_and(|k| {
            removed
                .last()
                .and_then(|r| r.split_last())
                .is_some_and(|(last, parent)| parent == path && *last == Step::Key(k.into()))
        });
        if !artifact {
            let message = match legacy_hint(&message) {
                Some(hint) => format!("{message}; {hint}"),
                None => message.clone(),
            };
            errors.push(ConfigError::new(original_path(&path, &removed), message));
        }
        // The node at fault is dropped and the rest tried again; an object that misses a field only if it
        // is an element of a list. Where nothing can be dropped, stop.
        let droppable = !path.is_empty() && (missing.is_none() || matches!(path.last(), Some(Step::Index(_))));
        if !droppable || !remove(&mut document, &path) {
            break;
        }
        removed.push(path);
    }
    if errors.is_empty() {
        errors.push(ConfigError::new(".", "the document does not match the configuration schema"));
    }
    errors
}

/// Fields of the previous policy format (which named Envoy clusters and platform hosts): where one is met,
/// the error says how to convert the document.
const LEGACY_FIELDS: &[&str] = &["principalSources", "hosts", "ports", "sharedCluster", "cluster"];

fn legacy_hint(message: &str) -> Option<&'static str> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    LEGACY_FIELDS.contains(&field).then_some(
        "it belongs to the previous policy format, which named Envoy clusters and platform hosts: `egress-identity migrate POLICY` rewrites it (CHANGELOG)",
    )
}

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Index(usize),
    Key(String),
    Other,
}

impl Step {
    fn of(segment: &Segment) -> Self {
        match segment {
            Segment::Seq { index } => Self::Index(*index),
            Segment::Map { key } => Self::Key(key.clone()),
            _ => Self::Other,
        }
    }
}

/// `path` in the document as written: indexes after an element removed earlier are one higher there.
fn original_path(path: &[Step], removed: &[Vec<Step>]) -> String {
    let mut path = path.to_vec();
    for earlier in removed.iter().rev() {
        let Some((Step::Index(gone), parent)) = earlier.split_last() else { continue };
        if path.len() > parent.len() && path.get(..parent.len()) == Some(parent) {
            if let Some(Step::Index(i)) = path.get_mut(parent.len()) {
                if *i >= *gone {
                    *i += 1;
                }
            }
        }
    }
    if path.is_empty() {
        return ".".into();
    }
    let mut text = String::new();
    for step in &path {
        match step {
            Step::Key(key) if text.is_empty() => text.push_str(key),
            Step::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
            Step::Other => text.push_str(".?"),
        }
    }
    text
}

/// Removes the node at `path` from `document`; false when there is none.
fn remove(document: &mut serde_json::Value, path: &[Step]) -> bool {
    let Some((last, parent)) = path.split_last() else { return false };
    let mut node = document;
    for step in parent {
        let next = match (step, node) {
            (Step::Index(index), serde_json::Value::Array(items)) => items.get_mut(*index),
            (Step::Key(key), serde_json::Value::Object(map)) => map.get_mut(key),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Step::Index(index), serde_json::Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        (Step::Key(key), serde_json::Value::Object(map)) => map.remove(key).is_some(),
        _ => false,
    }
}

/// Names of the internal headers the filter sets and the route removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub principal: Box<str>,
    pub cluster: Box<str>,
    /// The underscore spellings of both and of `x-forwarded-client-cert` (`x_egress_identity_cluster`):
    /// partners that fold `_` into `-` would read a client's copy as the gateway's, so the filter removes
    /// them from every request it forwards.
    pub underscore_spellings: [Box<str>; 3],
}

impl HeaderNames {
    fn new(principal: String, cluster: String) -> Self {
        let underscored = |name: &str| name.replace('-', "_").into_boxed_str();
        let underscore_spellings =
            [underscored(&principal), underscored(&cluster), underscored("x-forwarded-client-cert")];
        Self { principal: principal.into_boxed_str(), cluster: cluster.into_boxed_str(), underscore_spellings }
    }
}

/// The configuration the data path runs on: validated, with every policy compiled, every name derived for
/// its platform. It is also the model every renderer builds from: what the policy means, once.
#[derive(Debug)]
pub struct Config {
    /// The platform the configuration was rendered for (plain Envoy when it names none).
    pub platform: Platform,
    pub trust_domains: TrustDomains,
    /// Where the caller's principal comes from (the platform's).
    pub principal_sources: &'static [PrincipalSource],
    pub headers: HeaderNames,
    pub default_port: u16,
    pub certificate_cache_size: usize,
    /// How long the network filter holds a connection undecided ([`crate::pending_connections`]).
    pub connection_decision_timeout_ms: u64,
    pub san_policy: SanPolicy,
    pub audit_record: AuditRecord,
    pub gateway: PolicyLayer,
    pub destinations: DestinationTable,
    /// The request attributes some policy looks at: the adapter reads only those headers.
    pub attributes_used: AttributesUsed,
    /// How request paths are compared with `paths` values.
    pub path_matching: PathMatching,
    /// The declared external identities.
    pub identities: Identities,
    /// The namespaces the policy names as callers ([`crate::caller_namespaces`]).
    pub caller_namespaces: Vec<Box<str>>,
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
        let operations =
            layers.flatten().flat_map(|p| &p.rules).flat_map(|r| r.to.iter().flatten()).map(|t| &t.operation);
        operations.fold(Self::default(), |used, o| Self {
            method: used.method || o.methods.is_some() || o.not_methods.is_some(),
            path: used.path || o.paths.is_some() || o.not_paths.is_some(),
        })
    }
}

impl Config {
    /// Parses and compiles a configuration document: a policy, or a plugin configuration with the
    /// `platform` it was rendered for. Returns every error found.
    pub fn load(json: &[u8]) -> Result<Self, Vec<ConfigError>> {
        if json.len() > MAX_DOCUMENT_BYTES {
            return Err(vec![ConfigError::new(
                ".",
                format!("the configuration is {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted", json.len()),
            )]);
        }
        // The fast path parses once; only a document that fails is parsed again to find every field at fault.
        match serde_json::from_slice(json) {
            Ok(spec) => Self::compile(spec),
            Err(_) => Err(schema_errors(json)),
        }
    }

    /// Compiles the policy `json` (which must not name a platform) for `platform`: what `validate
    /// --platform` and `render` check. The plugin configuration `render` writes is
    /// [`crate::platform::plugin_configuration`] of the same text, which compiles to the same result.
    pub fn load_for(json: &[u8], platform: &PlatformSpec) -> Result<Self, Vec<ConfigError>> {
        let text = std::str::from_utf8(json).map_err(|e| vec![ConfigError::new(".", e.to_string())])?;
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(document)) if document.contains_key("platform") => {
                return Err(vec![ConfigError::new(
                    "platform",
                    "a policy names no platform: `render` adds it to the plugin configuration it writes (this looks like one; render from the policy file)",
                )]);
            }
            Ok(serde_json::Value::Object(_)) => {}
            // Not JSON, or not an object: the document's own errors, with line and column.
            _ => return Self::load(json),
        }
        let configuration = crate::platform::plugin_configuration(text, platform)
            .ok_or_else(|| vec![ConfigError::new(".", "the policy is not a JSON object")])?;
        Self::load(configuration.as_bytes())
    }

    /// Validates and compiles a parsed document, taking over its strings.
    pub fn compile(spec: PluginConfigSpec) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Errors::default();
        let platform = Platform::compile(spec.platform.as_ref(), &mut errors);
        let platform_td = platform.local_trust_domain();

        let trust_domains = TrustDomains::new(
            &spec.trust_domains,
            spec.local_trust_domain.as_deref(),
            &spec.trust_domain_aliases,
            platform_td.as_deref(),
        )
        .unwrap_or_else(|trust_errors| {
            for (path, message) in trust_errors {
                errors.push(path, message);
            }
            TrustDomains::default()
        });

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
        if !(MIN_DECISION_TIMEOUT_MS..=MAX_DECISION_TIMEOUT_MS).contains(&spec.connection_decision_timeout_ms) {
            errors.push(
                "connectionDecisionTimeoutMs",
                format!("must be between {MIN_DECISION_TIMEOUT_MS} and {MAX_DECISION_TIMEOUT_MS} (milliseconds)"),
            );
        }

        if spec.destinations.iter().any(|d| d.protocol.is_l4()) {
            let why = "HTTP-only in the gateway layer of a policy with tcp/tls destinations: their connections carry no method or path, so this rule would never apply to them; put it on the HTTP destinations' policies";
            crate::destination::refuse_http_only_fields(
                &spec.gateway.policies,
                &JsonPath::Root("gateway.policies"),
                why,
                &mut errors,
            );
        }
        let attributes_used = AttributesUsed::of(&spec);
        let caller_namespaces = crate::caller_namespaces::of(&spec);
        let path_matching = PathMatching {
            case_insensitive: spec.path_matching.case_insensitive,
            ignore_parameters: spec.path_matching.ignore_parameters,
        };
        let rules = ValueRules { trust: &trust_domains, paths: path_matching };
        let gateway = PolicyLayer::compile(
            spec.gateway.policies,
            LayerKind::Gateway,
            &JsonPath::Root("gateway.policies"),
            &rules,
            &mut errors,
        );
        let identities = Identities::compile(spec.identities, &rules, &mut errors);
        let mut used = vec![false; identities.len()];
        let context =
            Context { declared: &identities, platform: &platform, default_port: spec.default_port, rules: &rules };
        let destinations = DestinationTable::compile(spec.destinations, &context, &mut used, &mut errors);
        for (i, identity) in identities.iter().enumerate() {
            if !used.get(i).copied().unwrap_or(true) {
                errors.push(
                    format!("identities[{i}]"),
                    format!("{:?} is used by no destination (identities or defaultIdentity): a typo?", identity.name),
                );
            } else if identity.certificate.secret.is_some()
                && !destinations
                    .iter()
                    .any(|d| d.single_cluster && d.identities.identities().any(|e| e.name == identity.name))
            {
                errors.push(
                    format!("identities[{i}].certificate.secret"),
                    "no single-cluster destination presents this identity, and only those fetch a certificate by secret name: it would never be read",
                );
            }
        }

        if !errors.is_empty() {
            return Err(errors.into_vec());
        }
        Ok(Self {
            principal_sources: platform.principal_sources(),
            platform,
            trust_domains,
            headers: HeaderNames::new(spec.headers.principal, spec.headers.cluster),
            default_port: spec.default_port,
            certificate_cache_size: spec.certificate_cache_size,
            connection_decision_timeout_ms: spec.connection_decision_timeout_ms,
            san_policy: if spec.accept_legacy_kuma_sans { SanPolicy::AcceptLegacyKuma } else { SanPolicy::Strict },
            audit_record: spec.audit_record,
            gateway,
            destinations,
            attributes_used,
            path_matching,
            identities,
            caller_namespaces,
        })
    }
}

/// Header prefixes and names that Envoy, tracers or common frameworks give a meaning to: an internal header
/// must be none of them, or the filter would overwrite what the gateway or the partner relies on.
const RESERVED_HEADER_PREFIXES: &[&str] =
    &["x-envoy-", "x-forwarded-", "x-b3-", "x-ot-", "x-datadog-", "x-amzn-", "x-cloud-trace-", "x-istio-", "x-kuma-"];
const RESERVED_HEADER_NAMES: &[&str] = &[
    "x-request-id",
    "x-real-ip",
    "x-client-trace-id",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// An internal header name: a custom `x-` header of lower-case letters, digits and single dashes, that no
/// proxy or framework reads for another purpose. No underscores: partners that fold `_` into `-` would
/// read a client's `x_name` as it.
fn validate_header_name(errors: &mut Errors, path: &str, name: &str) {
    let shape = name.len() <= 64
        && name.starts_with("x-")
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !shape {
        errors.push(
            path,
            format!("{name:?} is not an internal header name: use a custom \"x-\" header of lower-case letters, digits and single dashes (at most 64), e.g. \"x-egress-identity-cluster\""),
        );
    } else if RESERVED_HEADER_PREFIXES.iter().any(|p| name.starts_with(p)) || RESERVED_HEADER_NAMES.contains(&name) {
        errors
            .push(path, format!("{name:?} already means something to Envoy, tracing or partners: choose another name"));
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
      "identities": [
        { "name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"] },
        { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app2"] }
      ],
      "gateway": { "policies": [
        { "name": "deny-quarantine", "action": "DENY",
          "rules": [ { "from": [ { "source": { "namespaces": ["quarantine"] } } ] } ] },
        { "name": "allow-mesh-workloads", "action": "ALLOW",
          "rules": [ { "from": [ { "source": { "namespaces": ["team", "quarantine"] } } ] } ] }
      ] },
      "destinations": [ {
        "name": "partner-api", "host": "api.partner.example", "port": 443,
        "policies": [
          { "name": "deny-admin-paths", "action": "DENY",
            "rules": [ { "to": [ { "operation": { "paths": ["/admin*"] } } ] } ] },
          { "name": "allow-team-apps", "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "principals":
              ["cluster.local/ns/team/sa/app1", "spiffe://cluster.local/ns/team/sa/app2"] } } ] } ] }
        ],
        "identities": ["team.app1", "team.app2"]
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
        let spellings: Vec<&str> = config.headers.underscore_spellings.iter().map(|h| &**h).collect();
        assert_eq!(spellings, ["x_egress_identity_principal", "x_egress_identity_cluster", "x_forwarded_client_cert"]);
        assert_eq!(config.default_port, 443);
        assert_eq!(config.certificate_cache_size, 1024);
        assert_eq!(config.principal_sources, [PrincipalSource::PeerCertificate], "plain Envoy's");
        assert_eq!(config.platform, Platform::Envoy);
        let namespaces: Vec<&str> = config.caller_namespaces.iter().map(|n| &**n).collect();
        assert_eq!(namespaces, ["quarantine", "team"]);
        assert!(config.trust_domains.accepts("cluster.local"));
        assert_eq!(config.san_policy, SanPolicy::Strict, "legacy Kuma SANs are opt-in");
        let legacy = EXAMPLE.replacen('{', r#"{"acceptLegacyKumaSans": true,"#, 1);
        assert_eq!(Config::load(legacy.as_bytes()).unwrap().san_policy, SanPolicy::AcceptLegacyKuma);
        assert_eq!(config.audit_record, AuditRecord::Object, "the JSON object only, unless asked");
        for (text, forms, line, object) in [
            ("both", AuditRecord::Both, true, true),
            ("line", AuditRecord::Line, true, false),
            ("none", AuditRecord::None, false, false),
        ] {
            let with = EXAMPLE.replacen('{', &format!(r#"{{"auditRecord": "{text}","#), 1);
            let loaded = Config::load(with.as_bytes()).unwrap().audit_record;
            assert_eq!((loaded, loaded.line(), loaded.object()), (forms, line, object));
        }
        let typo = EXAMPLE.replacen('{', r#"{"auditRecord": "json","#, 1);
        let e = Config::load(typo.as_bytes()).unwrap_err();
        assert!(e[0].to_string().starts_with("auditRecord: unknown variant `json`"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn syntax_and_type_errors_name_the_field() {
        let e = errors_of(&with("/gateway/policies/0/action", "ALOW".into()));
        assert!(e[0].starts_with("gateway.policies[0].action: unknown variant `ALOW`"), "{e:?}");
        let e = errors_of(&with("/destinations/0/port", "https".into()));
        assert!(e[0].starts_with("destinations[0].port: invalid type"), "{e:?}");
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
        doc["connectionDecisionTimeoutMs"] = 500.into();
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
                "connectionDecisionTimeoutMs",
                "gateway.policies[1].name"
            ],
            "{e:?}"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn empty_lists_that_would_deny_everything_by_mistake_are_errors() {
        let e = errors_of(&with("/trustDomains", serde_json::json!([])));
        assert!(e[0].starts_with("trustDomains: must list"), "{e:?}");
        let e = errors_of(&with("/headers", serde_json::json!({"principal": "x-a", "cluster": "X-A"})));
        assert!(e.iter().any(|m| m.starts_with("headers.cluster:")), "{e:?}");
    }

    /// `principals: []` reads as "nobody" but would match anybody (Istio's semantics for an unset field):
    /// every empty list in a rule is refused, saying to omit the field.
    #[wasm_bindgen_test(unsupported = test)]
    fn empty_lists_in_rules_are_refused_with_their_path() {
        let compile_rule = |rule: serde_json::Value| {
            let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
            doc["destinations"][0]["policies"][1]["rules"] = serde_json::json!([rule]);
            errors_of(&doc.to_string())
        };
        let at = "destinations[0].policies[1].rules[0]";
        for (rule, path) in [
            (serde_json::json!({"from": [{"source": {"principals": []}}]}), "from[0].source.principals"),
            (serde_json::json!({"from": [{"source": {"notNamespaces": []}}]}), "from[0].source.notNamespaces"),
            (serde_json::json!({"to": [{"operation": {"ports": []}}]}), "to[0].operation.ports"),
            (serde_json::json!({"to": [{"operation": {"paths": [], "methods": ["GET"]}}]}), "to[0].operation.paths"),
            (serde_json::json!({"from": []}), "from"),
            (serde_json::json!({"to": []}), "to"),
        ] {
            let e = compile_rule(rule);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with(&format!("{at}.{path}: an empty list")), "{e:?}");
            assert!(e[0].contains("omit the field to match any"), "{e:?}");
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn identities_are_declared_once_and_each_is_used() {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        doc["identities"].as_array_mut().unwrap().push(serde_json::json!({"name": "team.app3",
            "principals": ["cluster.local/ns/team/sa/app3"], "certificate": {"secret": "team-app3"}}));
        let e = errors_of(&doc.to_string());
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("identities[2]: \"team.app3\" is used by no destination"), "{e:?}");
        doc["destinations"][0]["identities"] = serde_json::json!(["team.app1", "team.app2", "team.app3"]);
        let e = errors_of(&doc.to_string());
        assert!(e[0].starts_with("identities[2].certificate.secret: no single-cluster destination"), "{e:?}");
        doc["destinations"][0]["singleCluster"] = true.into();
        let config = Config::load(doc.to_string().as_bytes()).unwrap();
        let secrets: Vec<Option<&str>> = config.destinations.identities().map(|(_, i)| i.secret.as_deref()).collect();
        assert_eq!(secrets, [Some("team.app1"), Some("team.app2"), Some("team-app3")]);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_previous_format_is_named_with_the_way_out() {
        let old = EXAMPLE.replace(
            r#""host": "api.partner.example", "port": 443"#,
            r#""hosts": ["api.partner.example"], "ports": [443]"#,
        );
        let e = errors_of(&old);
        assert!(e[0].starts_with("destinations[0].hosts: unknown field `hosts`"), "{e:?}");
        assert!(e[0].contains("egress-identity migrate POLICY"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_policy_compiles_for_each_platform_with_the_platforms_names() {
        let kuma = PlatformSpec::Kuma {
            mesh: "default".into(),
            zone: "zone-1".into(),
            namespace: "kuma-system".into(),
            egress_port: 10002,
        };
        let config = Config::load_for(EXAMPLE.as_bytes(), &kuma).unwrap();
        assert_eq!(config.platform.name(), "kuma");
        let clusters: Vec<&str> = config.destinations.identities().map(|(_, i)| &*i.cluster).collect();
        assert_eq!(
            clusters,
            [
                "kri_extsvc_default_zone-1_kuma-system_partner-api-team-app1_80",
                "kri_extsvc_default_zone-1_kuma-system_partner-api-team-app2_80"
            ]
        );
        // Kuma's callers come from the MeshIdentity's trust domain, matched as the local family.
        assert!(config.trust_domains.accepts("default.zone-1.mesh.local"));
        let waypoint = Config::load_for(EXAMPLE.as_bytes(), &PlatformSpec::IstioWaypoint).unwrap();
        assert_eq!(waypoint.principal_sources, [PrincipalSource::IstioPeerPrincipal]);
        // A rendered plugin configuration is not a policy to render again.
        let rendered = crate::platform::plugin_configuration(EXAMPLE, &PlatformSpec::IstioGateway).unwrap();
        assert_eq!(Config::load(rendered.as_bytes()).unwrap().platform, Platform::IstioGateway);
        let e = Config::load_for(rendered.as_bytes(), &PlatformSpec::Envoy).unwrap_err();
        assert_eq!(e[0].path, "platform");
        // A syntax error is reported as such, with its line and column.
        let e = Config::load_for(b"{\"destinations\": [\n", &PlatformSpec::Envoy).unwrap_err();
        assert!(e[0].message.contains("line 2"), "{e:?}");
    }
}
