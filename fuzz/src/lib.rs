//! Shared checks and generators of the fuzz targets (fuzz_targets/*.rs).
//!
//! Every `check_*` function runs one of the core's entry points — exactly what the filter runs on untrusted
//! input — and asserts properties that must hold for every input. A crash, a panic or a failed assertion is a
//! finding; its input goes to `fuzz/regressions/<target>/` and `tests/fuzz_regressions.rs` replays it.

use arbitrary::{Result, Unstructured};
use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::decision::{Decision, Layer};
use egress_identity_core::peer_certificate::{principal_from_pem, SanPolicy};
use egress_identity_core::platform::Platform;
use egress_identity_core::principal::PrincipalError;
use egress_identity_core::request::{split_authority, Request};
use egress_identity_core::spiffe_id::SpiffeId;
use serde_json::{json, Map, Value};

/// The demo policy: the starting point of the structured configuration mutations.
pub const BASE_POLICY: &str = include_str!("../../envoy/policy.json");

/// `Config::load` on arbitrary bytes: never panics; loading is deterministic. A policy (a document naming no
/// platform) that loads, loads as plain Envoy, and `Config::load_for` it for Envoy (what `validate` and
/// `render envoy` ask) accepts it too, with the same destinations and identities.
pub fn check_config_load(data: &[u8]) {
    match Config::load(data) {
        Ok(config) => {
            assert!(Config::load(data).is_ok(), "a configuration loads only once");
            assert!(!config.principal_sources.is_empty());
            assert!(config.default_port != 0);
            assert!(config.certificate_cache_size >= 1);
            assert!(!config.headers.principal.eq_ignore_ascii_case(&config.headers.cluster));
            let names_platform =
                serde_json::from_slice::<Value>(data).ok().is_some_and(|v| v.get("platform").is_some());
            if !names_platform {
                assert_eq!(config.platform, Platform::Envoy, "a policy compiles as plain Envoy");
                match Config::load_for(data, &PlatformSpec::Envoy) {
                    Ok(rendered) => {
                        let clusters = |c: &Config| -> Vec<String> {
                            c.destinations.identities().map(|(_, i)| i.cluster.to_string()).collect()
                        };
                        assert_eq!(clusters(&rendered), clusters(&config), "load_for(Envoy) derives other clusters");
                        assert_eq!(rendered.identities.len(), config.identities.len());
                    }
                    Err(errors) => panic!("a policy that loads is refused by load_for(Envoy): {errors:?}"),
                }
            }
        }
        Err(errors) => assert!(!errors.is_empty(), "an error result lists at least one error"),
    }
}

/// `SpiffeId::parse` on an arbitrary string, with the accessors' invariants.
pub fn check_spiffe_id(input: &str) {
    let Ok(id) = SpiffeId::parse(input) else { return };
    assert_eq!(id.as_str(), input);
    assert_eq!(format!("spiffe://{}", id.principal()), input);
    assert_eq!(format!("{}{}", id.trust_domain(), id.path()), id.principal());
    assert!(!id.trust_domain().is_empty());
    assert!(id.path().is_empty() || id.path().starts_with('/'));
    assert!(!id.path().ends_with('/'), "trailing slash accepted: {input:?}");
    assert!(input.bytes().all(|c| c.is_ascii_graphic()), "non-visible byte accepted: {input:?}");
    for bad in ['%', '?', '#', '@'] {
        assert!(!id.principal().contains(bad), "{bad:?} accepted: {input:?}");
    }
    assert!(!id.trust_domain().contains(':'), "port accepted: {input:?}");
    assert!(
        !id.path().split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".."),
        "empty or dot segment accepted: {input:?}"
    );
    if let Some(ns) = id.namespace() {
        // Only Istio-shaped workload IDs carry a namespace (fuzz/regressions/spiffe_id/namespace-without-sa).
        let rest = id.path().strip_prefix(&format!("/ns/{ns}/sa/")).unwrap_or("");
        assert!(!rest.is_empty(), "namespace {ns:?} from a path not shaped /ns/<ns>/sa/<sa>: {input:?}");
    } else {
        let mut s = id.path().split('/').skip(1);
        let shaped = s.next() == Some("ns") && s.next().is_some() && s.next() == Some("sa") && s.next().is_some();
        assert!(!shaped, "no namespace for an Istio-shaped path: {input:?}");
    }
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id), "re-parse differs");
}

/// `principal_from_pem` on arbitrary bytes under both SAN policies.
pub fn check_certificate(pem: &[u8]) {
    let strict = principal_from_pem(pem, SanPolicy::Strict);
    let legacy = principal_from_pem(pem, SanPolicy::AcceptLegacyKuma);
    if let Ok(cert) = &strict {
        assert!(!cert.legacy_kuma_sans);
        assert_eq!(SpiffeId::parse(cert.id.as_str()).as_ref(), Ok(&cert.id));
        // The legacy policy only widens what is accepted, and agrees on the identity.
        assert_eq!(legacy.as_ref().map(|c| &c.id), Ok(&cert.id), "legacy policy rejects a strict-valid SVID");
    }
    if let Ok(cert) = &legacy {
        assert_eq!(SpiffeId::parse(cert.id.as_str()).as_ref(), Ok(&cert.id));
        if cert.legacy_kuma_sans {
            assert!(strict.is_err(), "a legacy-only certificate passes the strict policy");
        }
    }
}

/// DER bytes as the PEM Envoy hands the filter (`connection.peer_certificate`, URL-encoded or not).
pub fn der_to_pem(der: &[u8], url_encoded: bool) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in b64.chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    if !url_encoded {
        return pem;
    }
    let mut out = Vec::with_capacity(pem.len() * 2);
    for c in pem {
        if c.is_ascii_alphanumeric() || c == b'-' {
            out.push(c);
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
    out
}

// ------------------------------------------------------------------------------------------ generators

const TRUST_DOMAINS: &[&str] = &["cluster.local", "example.com", "example.org", "partner-mesh.example", "td"];
const NAMESPACES: &[&str] = &["team", "quarantine", "ops", "*", "te*", "*am"];
const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/team/sa/app1",
    "spiffe://cluster.local/ns/team/sa/app2",
    "cluster.local/ns/quarantine/*",
    "example.com/ns/team/sa/app1",
    "partner-mesh.example/*",
    "*/ns/team/sa/app1",
    "*",
    "spiffe://example.org/ns/ops/sa/x",
];
/// Hosts of operations (wildcards allowed there) and of destinations (one exact host: a wildcard is refused).
const HOSTS: &[&str] =
    &["api.partner.example", "*.partner.example", "other.example", "API.Partner.Example", "*", "*.example"];
const DESTINATION_HOSTS: &[&str] =
    &["api.partner.example", "API.Partner.Example.", "other.example", "db.partner.example"];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "*", "G*", "get"];
const PATHS: &[&str] = &["/admin*", "/v1/*", "*", "/v1/orders", "*/users", "/"];
const PORTS: &[&str] = &["443", "8443", "0", "65536", "*"];
/// Identity names: declared ones, and some that are not names (or not declared).
const IDENTITY_NAMES: &[&str] =
    &["team.app1", "team.app2", "ops", "id-0", "Team.App1", "a|b", "team.", "passthrough", ""];
/// Keys of the policy format, and of the previous one (the legacy hint).
const CONFIG_KEYS: &[&str] = &[
    "trustDomains",
    "localTrustDomain",
    "trustDomainAliases",
    "acceptLegacyKumaSans",
    "headers",
    "principal",
    "cluster",
    "defaultPort",
    "certificateCacheSize",
    "auditRecord",
    "pathMatching",
    "identities",
    "certificate",
    "commonName",
    "dnsNames",
    "uris",
    "secret",
    "gateway",
    "policies",
    "destinations",
    "name",
    "protocol",
    "host",
    "port",
    "singleCluster",
    "principals",
    "defaultIdentity",
    "action",
    "dryRun",
    "rules",
    "from",
    "to",
    "source",
    "operation",
    "namespaces",
    "notNamespaces",
    "notPrincipals",
    "notTrustDomains",
    "hosts",
    "ports",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "notPorts",
    "notHosts",
    "platform",
    "kind",
    "mesh",
    "zone",
    "namespace",
    "egressPort",
    "principalSources",
    "sharedCluster",
];
const STRINGS: &[&str] = &[
    "ALLOW",
    "DENY",
    "http",
    "tcp",
    "tls",
    "envoy",
    "istio-gateway",
    "istio-waypoint",
    "kuma",
    "team.app1",
    "peer_certificate",
    "x-egress-identity-cluster",
    "partner-api|team-app1",
    "cluster.local",
    "spiffe://cluster.local/ns/team/sa/app1",
    "*",
    "",
    "api.partner.example",
    "/admin*",
];

/// A value from `vocab`, or now and then an arbitrary string.
fn word(u: &mut Unstructured, vocab: &[&str]) -> Result<String> {
    if u.ratio(1, 32)? {
        return u.arbitrary();
    }
    Ok((*u.choose(vocab)?).to_owned())
}

/// How many entries a list gets: 1 to `max`, now and then none (an empty list in a rule is refused).
fn count(u: &mut Unstructured, max: usize) -> Result<usize> {
    if u.ratio(1, 32)? {
        return Ok(0);
    }
    u.int_in_range(1..=max.max(1))
}

fn words(u: &mut Unstructured, vocab: &[&str], max: usize) -> Result<Vec<Value>> {
    let n = count(u, max)?;
    (0..n).map(|_| word(u, vocab).map(Value::String)).collect()
}

fn maybe_field(u: &mut Unstructured, map: &mut Map<String, Value>, key: &str, vocab: &[&str]) -> Result<()> {
    if u.ratio(1, 3)? {
        map.insert(key.into(), Value::Array(words(u, vocab, 3)?));
    }
    Ok(())
}

fn gen_source(u: &mut Unstructured) -> Result<Value> {
    let mut m = Map::new();
    maybe_field(u, &mut m, "principals", PRINCIPALS)?;
    maybe_field(u, &mut m, "notPrincipals", PRINCIPALS)?;
    maybe_field(u, &mut m, "namespaces", NAMESPACES)?;
    maybe_field(u, &mut m, "notNamespaces", NAMESPACES)?;
    maybe_field(u, &mut m, "trustDomains", TRUST_DOMAINS)?;
    maybe_field(u, &mut m, "notTrustDomains", TRUST_DOMAINS)?;
    Ok(Value::Object(m))
}

fn gen_ports(u: &mut Unstructured) -> Result<Value> {
    let n = count(u, 3)?;
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(if u.ratio(1, 8)? {
            json!(word(u, PORTS)?)
        } else if u.ratio(1, 16)? {
            json!(u.choose(&[0u32, 65536, 70000])?)
        } else {
            json!(u.choose(&[443u32, 8443, 5432, 65535])?)
        });
    }
    Ok(Value::Array(v))
}

/// An operation of the gateway layer or of a destination's; `http`: methods and paths apply (they are
/// refused on tcp/tls destinations and, once there is one, in the gateway layer: rare there).
fn gen_operation(u: &mut Unstructured, gateway: bool, http: bool) -> Result<Value> {
    let mut m = Map::new();
    if http || u.ratio(1, 8)? {
        maybe_field(u, &mut m, "methods", METHODS)?;
        maybe_field(u, &mut m, "notMethods", METHODS)?;
        maybe_field(u, &mut m, "paths", PATHS)?;
        maybe_field(u, &mut m, "notPaths", PATHS)?;
    }
    if u.ratio(1, 4)? {
        m.insert("ports".into(), gen_ports(u)?);
    }
    if u.ratio(1, 4)? {
        m.insert("notPorts".into(), gen_ports(u)?);
    }
    if gateway || u.ratio(1, 16)? {
        maybe_field(u, &mut m, "hosts", HOSTS)?;
        maybe_field(u, &mut m, "notHosts", HOSTS)?;
    }
    Ok(Value::Object(m))
}

fn gen_policies(u: &mut Unstructured, gateway: bool, http: bool) -> Result<Value> {
    let n = u.int_in_range(0..=3)?;
    let mut policies = Vec::new();
    for i in 0..n {
        let mut rules = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            let mut rule = Map::new();
            if u.arbitrary()? {
                let from = (0..count(u, 2)?).map(|_| gen_source(u).map(|s| json!({ "source": s })));
                rule.insert("from".into(), Value::Array(from.collect::<Result<_>>()?));
            }
            if u.arbitrary()? {
                let to = (0..count(u, 2)?).map(|_| gen_operation(u, gateway, http).map(|o| json!({ "operation": o })));
                rule.insert("to".into(), Value::Array(to.collect::<Result<_>>()?));
            }
            rules.push(Value::Object(rule));
        }
        let action =
            if u.ratio(1, 32)? { word(u, &["allow", "ALOW"])? } else { (*u.choose(&["ALLOW", "DENY"])?).to_owned() };
        let mut p = json!({ "name": format!("p{i}"), "action": action, "rules": rules });
        if u.ratio(1, 4)? {
            p["dryRun"] = json!(u.arbitrary::<bool>()?);
        }
        policies.push(p);
    }
    // Often an ALLOW of every caller last, so that requests get through (and the checks on allowed
    // decisions run) unless a DENY or an earlier rule decides.
    if u.arbitrary()? {
        policies.push(json!({ "name": "allow-all", "action": "ALLOW", "rules": [{}] }));
    }
    Ok(Value::Array(policies))
}

/// The `platform` of a plugin configuration (absent: a policy, compiled as plain Envoy).
fn gen_platform(u: &mut Unstructured) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Some(json!({"kind": "envoy"})),
        1 => Some(json!({"kind": "istio-gateway"})),
        2 => Some(json!({"kind": "istio-waypoint"})),
        3 => Some(json!({"kind": "kuma", "mesh": word(u, &["default", "Default"])?, "zone": "zone-1",
            "namespace": "kuma-system", "egressPort": u.choose(&[10002u32, 0, 70000])?})),
        _ => None,
    })
}

/// A declared identity: principals (absent: only a default), sometimes what its certificate carries.
fn gen_identity(u: &mut Unstructured, name: String) -> Result<Value> {
    let mut identity = json!({ "name": name });
    if u.ratio(15, 16)? {
        identity["principals"] = Value::Array(words(u, PRINCIPALS, 2)?);
    }
    if u.ratio(1, 4)? {
        let mut certificate = Map::new();
        maybe_field(u, &mut certificate, "dnsNames", &["App1.Partner.Example", "a.example"])?;
        if u.arbitrary()? {
            certificate.insert("commonName".into(), json!(word(u, IDENTITY_NAMES)?));
        }
        if u.ratio(1, 8)? {
            certificate.insert("secret".into(), json!(word(u, &["team-app1-secret", "", "x/y"])?));
        }
        identity["certificate"] = Value::Object(certificate);
    }
    Ok(identity)
}

/// A configuration document from a small vocabulary: mostly valid, often not.
pub fn gen_config(u: &mut Unstructured) -> Result<Value> {
    let mut c = Map::new();
    // Mostly every trust domain of the vocabulary, so that principals naming them are accepted.
    match u.int_in_range(0..=7)? {
        4..=7 => {
            c.insert("localTrustDomain".into(), json!("cluster.local"));
            c.insert("trustDomainAliases".into(), json!(["example.com", "example.org"]));
            c.insert("trustDomains".into(), json!(["partner-mesh.example", "td"]));
        }
        0 => {
            c.insert("trustDomains".into(), Value::Array(words(u, TRUST_DOMAINS, 3)?));
        }
        1 => {
            c.insert("localTrustDomain".into(), json!(word(u, TRUST_DOMAINS)?));
        }
        _ => {
            c.insert("localTrustDomain".into(), json!(word(u, TRUST_DOMAINS)?));
            c.insert("trustDomainAliases".into(), Value::Array(words(u, TRUST_DOMAINS, 2)?));
            if u.arbitrary()? {
                c.insert("trustDomains".into(), Value::Array(words(u, TRUST_DOMAINS, 2)?));
            }
        }
    }
    if u.ratio(1, 4)? {
        c.insert("defaultPort".into(), json!(if u.ratio(1, 16)? { 0 } else { *u.choose(&[443u32, 8443, 80])? }));
    }
    if u.ratio(1, 8)? {
        c.insert("acceptLegacyKumaSans".into(), json!(u.arbitrary::<bool>()?));
    }
    // Identities are declared once; destinations name them (and now and then one that is not declared).
    let mut names: Vec<String> = Vec::new();
    let mut identities = Vec::new();
    for i in 0..count(u, 3)? {
        let name = if u.ratio(15, 16)? { format!("id.{i}") } else { word(u, IDENTITY_NAMES)? };
        identities.push(gen_identity(u, name.clone())?);
        names.push(name);
    }
    c.insert("identities".into(), Value::Array(identities));
    c.insert("gateway".into(), json!({ "policies": gen_policies(u, true, false)? }));
    let mut destinations = Vec::new();
    for d in 0..count(u, 3)? {
        let protocol = *u.choose(&["http", "http", "http", "tcp", "tls"])?;
        let mut dest = json!({
            "name": format!("dest{d}"),
            "host": if u.ratio(1, 16)? { word(u, HOSTS)? } else { word(u, DESTINATION_HOSTS)? },
            "port": if u.ratio(1, 16)? { *u.choose(&[0u32, 70000])? } else { *u.choose(&[443u32, 8443, 5432])? },
            "policies": gen_policies(u, false, protocol == "http")?,
        });
        if protocol != "http" || u.ratio(1, 16)? {
            dest["protocol"] = json!(protocol);
        }
        // A tls destination takes no identities (refused when it names some).
        if protocol != "tls" || u.ratio(1, 8)? {
            // Mostly declared names, each once.
            let mut named = Vec::new();
            for _ in 0..count(u, 3)? {
                let name = if names.is_empty() || u.ratio(1, 16)? {
                    word(u, IDENTITY_NAMES)?
                } else {
                    u.choose(&names)?.clone()
                };
                if !named.contains(&json!(name)) || u.ratio(1, 16)? {
                    named.push(json!(name));
                }
            }
            if !named.is_empty() || u.ratio(1, 8)? {
                dest["identities"] = Value::Array(named);
            }
            if u.arbitrary()? {
                let default = if names.is_empty() { word(u, IDENTITY_NAMES)? } else { u.choose(&names)?.clone() };
                dest["defaultIdentity"] = json!(default);
            }
        }
        if u.ratio(1, if protocol == "tls" { 32 } else { 6 })? {
            dest["singleCluster"] = json!(true);
        }
        destinations.push(dest);
    }
    // Mostly, every declared identity is used (an unused one is refused): the first destination that may
    // present identities names those no destination does.
    if u.ratio(7, 8)? {
        let used = |d: &Value, name: &str| {
            d.get("identities").and_then(Value::as_array).is_some_and(|l| l.contains(&json!(name)))
                || d.get("defaultIdentity") == Some(&json!(name))
        };
        let unused: Vec<String> = names.iter().filter(|n| !destinations.iter().any(|d| used(d, n))).cloned().collect();
        if let Some(first) = destinations.iter_mut().find(|d| d.get("protocol") != Some(&json!("tls"))) {
            if let Some(list) = first.get_mut("identities").and_then(Value::as_array_mut) {
                list.extend(unused.into_iter().map(Value::String));
            } else if !unused.is_empty() {
                first["identities"] = json!(unused);
            }
        }
    }
    c.insert("destinations".into(), Value::Array(destinations));
    if let Some(platform) = gen_platform(u)? {
        c.insert("platform".into(), platform);
    }
    Ok(Value::Object(c))
}

/// An arbitrary JSON value whose keys and strings come mostly from the configuration's vocabulary.
pub fn gen_value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kind = if depth == 0 { u.int_in_range(0..=4)? } else { u.int_in_range(0..=6)? };
    Ok(match kind {
        0 => Value::Null,
        1 => json!(u.arbitrary::<bool>()?),
        2 => match u.int_in_range(0..=3)? {
            0 => json!(u.arbitrary::<i64>()?),
            1 => json!(u.arbitrary::<u64>()?),
            2 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
            _ => json!(u.choose(&[0i64, 1, -1, 443, 65535, 65536, 1_000_000, 1_000_001])?),
        },
        3 | 4 => json!(word(u, STRINGS)?),
        5 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| gen_value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                m.insert(word(u, CONFIG_KEYS)?, gen_value(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

/// Applies structured mutations to a JSON document: replace, delete, add or duplicate nodes.
pub fn mutate(u: &mut Unstructured, doc: &mut Value) -> Result<()> {
    for _ in 0..u.int_in_range(1..=4)? {
        mutate_at(u, doc)?;
    }
    Ok(())
}

fn mutate_at(u: &mut Unstructured, node: &mut Value) -> Result<()> {
    // Walk down a random path, then change the node reached.
    if u.ratio(3, 4)? {
        match node {
            Value::Object(m) if !m.is_empty() => {
                let key = u.choose(&m.keys().cloned().collect::<Vec<_>>())?.clone();
                if let Some(child) = m.get_mut(&key) {
                    return mutate_at(u, child);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = u.choose_index(a.len())?;
                if let Some(child) = a.get_mut(i) {
                    return mutate_at(u, child);
                }
            }
            _ => {}
        }
    }
    match (u.int_in_range(0..=3)?, node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let key = u.choose(&m.keys().cloned().collect::<Vec<_>>())?.clone();
            m.remove(&key);
        }
        (1, Value::Object(m)) => {
            m.insert(word(u, CONFIG_KEYS)?, gen_value(u, 2)?);
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let i = u.choose_index(a.len())?;
            let copy = a.get(i).cloned().unwrap_or(Value::Null);
            a.push(copy);
        }
        (_, node) => *node = gen_value(u, 2)?,
    }
    Ok(())
}

/// One request to decide: a configuration, a principal (or why there is none) and the request attributes.
#[derive(Debug)]
pub struct Scenario {
    pub config: Value,
    /// `Ok(spiffe id)` or `Err(())` for a missing principal.
    pub principal: std::result::Result<String, ()>,
    pub authority: String,
    pub method: String,
    pub path: String,
}

impl Scenario {
    pub fn generate(u: &mut Unstructured) -> Result<Self> {
        let config = gen_config(u)?;
        let principal = if u.ratio(1, 16)? {
            Err(())
        } else {
            let td = word(u, TRUST_DOMAINS)?;
            let path =
                word(u, &["/ns/team/sa/app1", "/ns/team/sa/app2", "/ns/quarantine/sa/x", "/ns/ops/sa/y", "", "/x"])?;
            Ok(format!("spiffe://{td}{path}"))
        };
        // How each platform delivers requests: the partner's host and port (Envoy), the host alone or on
        // port 80 (Istio, Kuma's `<destination>.extsvc.mesh.local`).
        let authority = word(
            u,
            &[
                "api.partner.example",
                "api.partner.example:443",
                "API.PARTNER.EXAMPLE:8443",
                "api.partner.example:80",
                "a.b.partner.example",
                "other.example:443",
                "dest0.extsvc.mesh.local",
                "dest1.extsvc.mesh.local:80",
                "[::1]:443",
                "api.partner.example:",
                "api.partner.example:99999",
            ],
        )?;
        let method = word(u, &["GET", "POST", "DELETE", "get"])?;
        let path = word(u, &["/v1/orders", "/admin/users", "/v1/orders?x=/admin", "/", "", "/users"])?;
        Ok(Self { config, principal, authority, method, path })
    }

    /// The scenario as one JSON document (the format of `fuzz/regressions/decide/*.json`).
    pub fn to_json(&self) -> Value {
        json!({
            "config": self.config,
            "principal": self.principal.as_ref().ok(),
            "authority": self.authority,
            "method": self.method,
            "path": self.path,
        })
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            config: v.get("config")?.clone(),
            principal: s("principal").ok_or(()),
            authority: s("authority")?,
            method: s("method")?,
            path: s("path")?,
        })
    }
}

/// The (identity, cluster) pairs an allowed request to `dest` may get, derived from the document as README.md
/// documents the names (an independent reading of core/src/platform.rs): Envoy and Istio
/// `<destination>|<identity, '.' -> '-'>` (`|shared` in single-cluster mode, `|passthrough` for tls); Kuma
/// `kri_extsvc_<mesh>_<zone>_<namespace>_<destination>-<identity>_<port>`, port 80 for http.
fn expected_routes(config: &Value, dest: &Value) -> Vec<(String, String)> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let name = text(dest.get("name"));
    let protocol = dest.get("protocol").and_then(Value::as_str).unwrap_or("http");
    let mut identities: Vec<String> =
        dest.get("identities").and_then(Value::as_array).into_iter().flatten().map(|i| text(Some(i))).collect();
    identities.extend(dest.get("defaultIdentity").map(|i| text(Some(i))));
    if protocol == "tls" {
        identities = vec!["passthrough".into()];
    }
    let single = dest.get("singleCluster") == Some(&json!(true));
    let platform = config.get("platform");
    identities
        .into_iter()
        .map(|identity| {
            let route = if protocol == "tls" {
                "passthrough".to_string()
            } else if single {
                "shared".to_string()
            } else {
                identity.replace('.', "-")
            };
            let cluster = match platform.and_then(|p| p.get("kind")).and_then(Value::as_str) {
                Some("kuma") => {
                    let p = platform.unwrap_or(&Value::Null);
                    let port = if protocol == "http" { "80".to_string() } else { dest["port"].to_string() };
                    let (mesh, zone, namespace) = (text(p.get("mesh")), text(p.get("zone")), text(p.get("namespace")));
                    format!("kri_extsvc_{mesh}_{zone}_{namespace}_{name}-{route}_{port}")
                }
                _ => format!("{name}|{route}"),
            };
            (identity, cluster)
        })
        .collect()
}

fn allow_policy_names(policies: Option<&Value>) -> Vec<String> {
    let empty = Vec::new();
    let list = policies.and_then(Value::as_array).unwrap_or(&empty);
    list.iter()
        .filter(|p| p.get("action") == Some(&json!("ALLOW")) && p.get("dryRun") != Some(&json!(true)))
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// `Config::decide` on a scenario: deterministic, agrees with `evaluate`, fails closed.
pub fn check_decide(s: &Scenario) {
    let Ok(bytes) = serde_json::to_vec(&s.config) else { return };
    let Ok(config) = Config::load(&bytes) else { return };
    let id = match &s.principal {
        Ok(p) => match SpiffeId::parse(p) {
            Ok(id) => Some(id),
            Err(_) => return,
        },
        Err(()) => None,
    };
    let principal = id.as_ref().ok_or(PrincipalError::Missing);
    let request = Request { authority: &s.authority, method: &s.method, path: &s.path };
    let decision = config.decide(principal, &request);
    assert_eq!(decision, config.decide(principal, &request), "decision not deterministic");
    let evaluation = config.evaluate(principal, &request);
    assert_eq!(decision, evaluation.decision, "decide and evaluate disagree");
    let _ = evaluation.shadow_allowed();
    match decision {
        Decision::Deny(denial) => {
            let body: Value = serde_json::from_str(&denial.to_json()).expect("deny body is JSON");
            assert_eq!(body["decision"], "deny");
            assert_eq!(body["layer"], denial.layer.as_str());
            // The documented order: a malformed request first, then a caller without a principal.
            if split_authority(&s.authority).is_none() {
                assert_eq!(denial.layer, Layer::Request, "a malformed authority is denied before anything else");
            } else if id.is_none() {
                assert_eq!(denial.layer, Layer::Principal);
            }
            let _ = denial.to_string();
        }
        Decision::Allow(allowed) => {
            let id = id.as_ref().expect("allowed without a principal");
            assert!(config.trust_domains.accepts(id.trust_domain()), "allowed from an untrusted trust domain");
            // Default deny: only an enforced ALLOW policy of each layer can allow.
            let gateway_allows = allow_policy_names(s.config.pointer("/gateway/policies"));
            assert!(
                gateway_allows.iter().any(|n| n == allowed.gateway_policy),
                "gateway allowed by {:?}",
                allowed.gateway_policy
            );
            let destinations = s.config.get("destinations").and_then(Value::as_array).expect("destinations");
            let dest = destinations
                .iter()
                .find(|d| d.get("name").and_then(Value::as_str) == Some(allowed.destination))
                .expect("allowed to an undeclared destination");
            let dest_allows = allow_policy_names(dest.get("policies"));
            assert!(
                dest_allows.iter().any(|n| n == allowed.destination_policy),
                "destination allowed by {:?}",
                allowed.destination_policy
            );
            // The identity is one the destination names, its cluster the one the platform derives for it:
            // never anything request-controlled.
            let expected = expected_routes(&s.config, dest);
            assert!(
                expected.iter().any(|(identity, cluster)| {
                    *identity == *allowed.identity.name && *cluster == *allowed.identity.cluster
                }),
                "identity {:?} with cluster {:?} is not one of the destination's {expected:?}",
                allowed.identity.name,
                allowed.identity.cluster
            );
            assert!(allowed.identity.cluster.bytes().all(|c| c.is_ascii_graphic()));
        }
    }
}
