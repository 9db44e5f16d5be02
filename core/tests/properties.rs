//! Property tests: the compiled policy engine against a deliberately simple reference evaluator written
//! straight from the documented semantics (README "Policies" and "Decisions"), on random policies and
//! requests; and no input to the core's parsers and decision panics.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use egress_identity_core::config::Config;
use egress_identity_core::decision::Decision;
use egress_identity_core::peer_certificate::{principal_from_pem, SanPolicy};
use egress_identity_core::principal::PrincipalError;
use egress_identity_core::request::{split_authority, Request};
use egress_identity_core::spiffe_id::SpiffeId;
use proptest::prelude::*;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------------------
// The reference evaluator: no compilation, no hash sets, no early exits — just the rules as written.

fn value_matches(pattern: &str, value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `field` (any value matches) and `notField` (no value matches), each ignored when absent or empty.
fn field_ok(spec: &Value, field: &str, not_field: &str, value: Option<&str>, normalize: fn(&str) -> String) -> bool {
    let any = strings(spec, field);
    let none = strings(spec, not_field);
    (any.is_empty() || any.iter().any(|p| value_matches(&normalize(p), value)))
        && (none.is_empty() || !none.iter().any(|p| value_matches(&normalize(p), value)))
}

fn same(p: &str) -> String {
    p.to_string()
}

fn no_scheme(p: &str) -> String {
    p.strip_prefix("spiffe://").unwrap_or(p).to_string()
}

struct Req<'a> {
    principal: &'a str,
    trust_domain: &'a str,
    namespace: Option<&'a str>,
    host: &'a str,
    port: u16,
    method: &'a str,
    path: &'a str,
}

fn rule_matches(rule: &Value, r: &Req<'_>) -> bool {
    let from: Vec<&Value> = rule.get("from").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let to: Vec<&Value> = rule.get("to").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    let source_ok = |f: &&Value| {
        let s = &f["source"];
        field_ok(s, "principals", "notPrincipals", Some(r.principal), no_scheme)
            && field_ok(s, "namespaces", "notNamespaces", r.namespace, same)
            && field_ok(s, "trustDomains", "notTrustDomains", Some(r.trust_domain), same)
    };
    let operation_ok = |t: &&Value| {
        let o = &t["operation"];
        let port = r.port.to_string();
        field_ok(o, "hosts", "notHosts", Some(r.host), |p| p.to_ascii_lowercase())
            && field_ok(o, "ports", "notPorts", Some(&port), same)
            && field_ok(o, "methods", "notMethods", Some(r.method), same)
            && field_ok(o, "paths", "notPaths", Some(r.path), same)
    };
    (from.is_empty() || from.iter().any(source_ok)) && (to.is_empty() || to.iter().any(operation_ok))
}

/// A layer: any enforced DENY policy matching → deny; else any enforced ALLOW matching → allow; else deny.
fn layer(policies: &Value, r: &Req<'_>) -> Result<String, (Option<String>, &'static str)> {
    let enforced: Vec<&Value> = policies.as_array().unwrap().iter().filter(|p| p["dryRun"] != json!(true)).collect();
    let matches =
        |p: &&&Value| p["rules"].as_array().is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, r)));
    if let Some(p) = enforced.iter().filter(|p| p["action"] == "DENY").find(matches) {
        return Err((Some(p["name"].as_str().unwrap().to_string()), "denied_by_policy"));
    }
    match enforced.iter().filter(|p| p["action"] == "ALLOW").find(matches) {
        Some(p) => Ok(p["name"].as_str().unwrap().to_string()),
        None => Err((None, "no_matching_allow")),
    }
}

fn reference(config: &Value, principal: &str, authority: &str, method: &str, path: &str) -> String {
    let deny = |layer: &str, policy: Option<String>, reason: &str| {
        format!("deny {layer} {} {reason}", policy.unwrap_or("-".into()))
    };
    let id = principal.strip_prefix("spiffe://").unwrap();
    let (td, rest) = id.split_once('/').unwrap_or((id, ""));
    if !strings(config, "trustDomains").iter().any(|t| t == td) {
        return deny("principal", None, "untrusted_trust_domain");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_ascii_lowercase(), p.parse::<u16>().unwrap()),
        None => (authority.to_ascii_lowercase(), 443),
    };
    // Only an Istio-shaped path, ns/<ns>/sa/<sa>..., carries a namespace.
    let segments: Vec<&str> = rest.split('/').collect();
    let namespace = match segments.as_slice() {
        ["ns", ns, "sa", _, ..] => Some(*ns),
        _ => None,
    };
    let path = path.split('?').next().unwrap();
    let r = Req { principal: id, trust_domain: td, namespace, host: &host, port, method, path };
    if let Err((policy, reason)) = layer(&config["gateway"]["policies"], &r) {
        return deny("gateway", policy, reason);
    }
    // Destination: the one whose host and port the request names.
    let destination = config["destinations"].as_array().unwrap().iter().find(|d| {
        d["host"].as_str().unwrap().to_ascii_lowercase() == host && d["port"].as_u64() == Some(u64::from(port))
    });
    let Some(destination) = destination else {
        return deny("destination", None, "unknown_destination");
    };
    if let Err((policy, reason)) = layer(&destination["policies"], &r) {
        return deny("destination", policy, reason);
    }
    let declared = |name: &str| config["identities"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap();
    let mapped = strings(destination, "identities")
        .into_iter()
        .find(|name| strings(declared(name), "principals").iter().any(|p| value_matches(&no_scheme(p), Some(id))))
        .or_else(|| destination["defaultIdentity"].as_str().map(str::to_string));
    match mapped {
        // The cluster the platform (plain Envoy) names: destination, then the identity with '.' as '-'.
        Some(identity) => format!("allow {}|{}", destination["name"].as_str().unwrap(), identity.replace('.', "-")),
        None => deny("identity", None, "no_identity_mapping"),
    }
}

fn engine(config: &Config, principal: &str, authority: &str, method: &str, path: &str) -> String {
    let id = SpiffeId::parse(principal).unwrap();
    match config.decide(Ok(&id), &Request { authority, method, path }) {
        Decision::Allow(a) => format!("allow {}", a.identity.cluster),
        Decision::Deny(d) => format!("deny {} {} {}", d.layer.as_str(), d.policy.unwrap_or("-"), d.reason_code()),
    }
}

// ------------------------------------------------------------------------------------------------------
// Random policies and requests over small domains, so that rules match often and in every way.

const PRINCIPALS: &[&str] = &[
    "spiffe://cluster.local/ns/team/sa/app1",
    "spiffe://cluster.local/ns/team/sa/app2",
    "spiffe://cluster.local/ns/legacy/sa/app1",
    "spiffe://cluster.local/billing",
    "spiffe://partner.example/ns/team/sa/app1",
    "spiffe://evil.example/ns/team/sa/app1",
];

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(values), 0..=2).prop_map(|v| v.into_iter().map(String::from).collect())
}

/// An object of the fields that have values: an empty list is refused (omitting the field matches any).
fn fields(entries: Vec<(&str, Vec<String>)>) -> Value {
    Value::Object(entries.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn source() -> impl Strategy<Value = Value> {
    let principals: &'static [&'static str] = &[
        "cluster.local/ns/team/sa/app1",
        "spiffe://cluster.local/ns/team/sa/app2",
        "cluster.local/ns/team/*",
        "*/sa/app1",
        "*",
        "partner.example/*",
    ];
    let namespaces: &'static [&'static str] = &["team", "legacy", "te*", "*acy", "*"];
    let trust_domains: &'static [&'static str] = &["cluster.local", "partner.example", "*.example", "*"];
    (pick(principals), pick(principals), pick(namespaces), pick(namespaces), pick(trust_domains), pick(trust_domains))
        .prop_map(|(p, np, n, nn, t, nt)| {
            let source = fields(vec![
                ("principals", p),
                ("notPrincipals", np),
                ("namespaces", n),
                ("notNamespaces", nn),
                ("trustDomains", t),
                ("notTrustDomains", nt),
            ]);
            json!({ "source": source })
        })
}

fn operation(with_hosts: bool) -> impl Strategy<Value = Value> {
    let methods: &'static [&'static str] = &["GET", "POST", "G*"];
    let paths: &'static [&'static str] = &["/admin*", "/v1/x", "*/x", "*"];
    let ports: &'static [&'static str] = &["443", "8443"];
    let hosts: &'static [&'static str] =
        &["api.partner.example", "*.partner.example", "*.other.example", "API.Partner.Example"];
    (pick(methods), pick(methods), pick(paths), pick(paths), pick(ports), pick(ports), pick(hosts), pick(hosts))
        .prop_map(move |(m, nm, p, np, po, npo, h, nh)| {
            let mut entries = vec![
                ("methods", m),
                ("notMethods", nm),
                ("paths", p),
                ("notPaths", np),
                ("ports", po),
                ("notPorts", npo),
            ];
            if with_hosts {
                entries.extend([("hosts", h), ("notHosts", nh)]);
            }
            json!({ "operation": fields(entries) })
        })
}

fn policies(prefix: &'static str, with_hosts: bool) -> impl Strategy<Value = Value> {
    let complex = (prop::collection::vec(source(), 0..=2), prop::collection::vec(operation(with_hosts), 0..=2))
        .prop_map(|(from, to)| {
            let mut rule = json!({});
            if !from.is_empty() {
                rule["from"] = json!(from);
            }
            if !to.is_empty() {
                rule["to"] = json!(to);
            }
            rule
        });
    // Rules with a single principals or paths constraint: the ones the engine's first-match index serves.
    let principals: &'static [&'static str] = &[
        "cluster.local/ns/team/sa/app1",
        "spiffe://cluster.local/ns/team/sa/app2",
        "cluster.local/ns/team/*",
        "cluster.local/ns/legacy/*",
        "*/sa/app1",
        "*",
    ];
    let paths: &'static [&'static str] = &["/admin*", "/v1/x", "*/x", "/", "*"];
    let by_principal = prop::collection::vec(prop::sample::select(principals), 1..=3)
        .prop_map(|p| json!({ "from": [{ "source": { "principals": p } }] }));
    let by_path = prop::collection::vec(prop::sample::select(paths), 1..=3)
        .prop_map(|p| json!({ "to": [{ "operation": { "paths": p } }] }));
    let rule = prop_oneof![2 => complex, 2 => by_principal, 1 => by_path];
    let policy = (prop::bool::ANY, prop::bool::weighted(0.15), prop::collection::vec(rule, 0..=4));
    prop::collection::vec(policy, 0..=5).prop_map(move |ps| {
        Value::Array(
            ps.into_iter()
                .enumerate()
                .map(|(i, (deny, dry_run, rules))| {
                    json!({ "name": format!("{prefix}-{i}"), "action": if deny { "DENY" } else { "ALLOW" },
                            "dryRun": dry_run, "rules": rules })
                })
                .collect(),
        )
    })
}

fn identities() -> impl Strategy<Value = (Vec<Vec<&'static str>>, bool)> {
    let patterns: &'static [&'static str] = &[
        "spiffe://cluster.local/ns/team/sa/app1",
        "cluster.local/ns/team/*",
        "*/sa/app1",
        "partner.example/ns/team/sa/app1",
    ];
    (prop::collection::vec(prop::collection::vec(prop::sample::select(patterns), 1..=2), 0..=2), prop::bool::ANY)
}

/// A destination, and the identities it declares: `<name>.id<i>` with their principals, and
/// `<name>.default` (no principals) when it has a default.
fn destination(name: &'static str, host: &'static str, port: u16) -> impl Strategy<Value = (Value, Vec<Value>)> {
    (policies(name, false), identities()).prop_map(move |(policies, (ids, with_default))| {
        let mut declared: Vec<Value> =
            ids.iter().enumerate().map(|(i, p)| json!({ "name": format!("{name}.id{i}"), "principals": p })).collect();
        let mut d = json!({ "name": name, "host": host, "port": port, "policies": policies });
        if !ids.is_empty() {
            d["identities"] = json!((0..ids.len()).map(|i| format!("{name}.id{i}")).collect::<Vec<_>>());
        }
        if with_default || ids.is_empty() {
            d["defaultIdentity"] = json!(format!("{name}.default"));
            declared.push(json!({ "name": format!("{name}.default") }));
        }
        (d, declared)
    })
}

fn config() -> impl Strategy<Value = Value> {
    // Both trust domains the values name are accepted (a value naming another is a configuration error);
    // evil.example callers exercise untrusted_trust_domain.
    (
        Just(vec!["cluster.local", "partner.example"]),
        policies("gw", true),
        destination("partner", "api.partner.example", 443),
        destination("partner-alt", "api.partner.example", 8443),
        destination("other", "deep.x.other.example", 443),
    )
        .prop_map(|(tds, gateway, d1, d2, d3)| {
            let identities: Vec<Value> = [&d1, &d2, &d3].iter().flat_map(|(_, ids)| ids.clone()).collect();
            json!({ "trustDomains": tds, "identities": identities, "gateway": { "policies": gateway },
                    "destinations": [d1.0, d2.0, d3.0] })
        })
}

fn request() -> impl Strategy<Value = (String, String, String, String)> {
    let authorities: &'static [&'static str] = &[
        "api.partner.example",
        "API.Partner.Example:8443",
        "x.partner.example",
        "api.partner.example:443",
        "deep.x.other.example",
        "y.other.example",
        "unknown.example",
        "api.partner.example:9999",
    ];
    (
        prop::sample::select(PRINCIPALS),
        prop::sample::select(authorities),
        prop::sample::select(&["GET", "POST", "DELETE"][..]),
        prop::sample::select(&["/admin/users", "/v1/x", "/y/x?q=1", "/"][..]),
    )
        .prop_map(|(p, a, m, path)| (p.to_string(), a.to_string(), m.to_string(), path.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The engine and the reference evaluator agree on every decision: layer, policy and reason included.
    #[test]
    fn engine_agrees_with_the_reference_evaluator(config_json in config(), requests in prop::collection::vec(request(), 1..8)) {
        let config = Config::load(config_json.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("generated config rejected: {e:?}\n{config_json:#}"));
        for (principal, authority, method, path) in &requests {
            let expected = reference(&config_json, principal, authority, method, path);
            let got = engine(&config, principal, authority, method, path);
            prop_assert_eq!(got, expected, "{} {} {} {}\n{:#}", principal, authority, method, path, config_json);
        }
    }

    /// Parsers never panic, whatever the input.
    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), text in ".{0,300}") {
        let _ = Config::load(&bytes);
        let _ = Config::load(text.as_bytes());
        let _ = SpiffeId::parse(&text);
        let _ = SpiffeId::parse(&format!("spiffe://{text}"));
        let _ = principal_from_pem(&bytes, SanPolicy::AcceptLegacyKuma);
        let _ = principal_from_pem(format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----").as_bytes(), SanPolicy::Strict);
        let _ = split_authority(&text);
    }

    /// Whatever the request attributes, a decision is made without panicking.
    #[test]
    fn decisions_never_panic(config_json in config(), authority in ".{0,40}", method in ".{0,10}", path in ".{0,40}", principal in "[a-z.]{1,12}(/[a-zA-Z0-9._-]{1,8}){0,4}") {
        let config = Config::load(config_json.to_string().as_bytes()).unwrap();
        let request = Request { authority: &authority, method: &method, path: &path };
        let _ = config.decide(Err(PrincipalError::Missing), &request);
        if let Ok(id) = SpiffeId::parse(&format!("spiffe://{principal}")) {
            let _ = config.decide(Ok(&id), &request);
        }
    }
}

/// The reference evaluator itself must be able to disagree: a hand-made case where it differs from a
/// wrong answer (guards against a reference that mirrors everything the engine says).
#[test]
fn the_reference_evaluator_is_not_vacuous() {
    let c = json!({ "trustDomains": ["cluster.local"], "identities": [{ "name": "x" }],
        "gateway": { "policies": [
            { "name": "a", "action": "ALLOW", "rules": [{}] },
            { "name": "d", "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }] } ] },
        "destinations": [{ "name": "p", "host": "api.partner.example", "port": 443, "policies": [
            { "name": "app1", "action": "ALLOW", "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/team/sa/app1"] } }] }] }
        ], "defaultIdentity": "x" }] });
    let app1 = "spiffe://cluster.local/ns/team/sa/app1";
    assert_eq!(reference(&c, app1, "api.partner.example", "GET", "/admin/x"), "deny gateway d denied_by_policy");
    assert_eq!(reference(&c, app1, "api.partner.example", "GET", "/v1"), "allow p|x");
    let app2 = "spiffe://cluster.local/ns/team/sa/app2";
    assert_eq!(reference(&c, app2, "api.partner.example", "GET", "/v1"), "deny destination - no_matching_allow");
    assert_eq!(reference(&c, app1, "api.partner.example:8443", "GET", "/v1"), "deny destination - unknown_destination");
    assert_eq!(
        reference(&c, "spiffe://x.example/a", "api.partner.example", "GET", "/v1"),
        "deny principal - untrusted_trust_domain"
    );
    let config = Config::load(c.to_string().as_bytes()).unwrap();
    assert_eq!(engine(&config, app1, "api.partner.example", "GET", "/admin/x"), "deny gateway d denied_by_policy");
    assert_eq!(engine(&config, app1, "api.partner.example", "GET", "/v1"), "allow p|x");
}
