//! Every denial the core can produce, produced from real inputs (certificates, configurations, requests),
//! is one of `DenialKind::ALL` — so it has a counter — and is documented in README's table of decisions;
//! and every kind and every documented row is produced by some input here. A new denial, a lost one, or a
//! README row that drifted fails this test.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeSet;
use std::path::Path;

use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::config_document::PrincipalSource;
use egress_identity_core::decision::{Decision, DenialKind, PassthroughVerdict};
use egress_identity_core::principal::{self, Lookup, PrincipalProperty};
use egress_identity_core::request::Request;
use egress_identity_core::spiffe_id::SpiffeId;
use egress_identity_core::tls_client_hello::ClientHello;

const POLICY: &str = r#"{
  "localTrustDomain": "cluster.local",
  "gateway": { "policies": [
    { "name": "deny-quarantine", "action": "DENY", "rules": [ { "from": [ { "source": { "namespaces": ["quarantine"] } } ] } ] },
    { "name": "allow-team", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team", "quarantine"] } } ] } ] }
  ] },
  "identities": [
    { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] },
    { "name": "team" }
  ],
  "destinations": [ {
    "name": "partner-api", "host": "api.partner.example", "port": 443,
    "policies": [
      { "name": "deny-admin", "action": "DENY", "rules": [ { "to": [ { "operation": { "paths": ["/admin*"] } } ] } ] },
      { "name": "allow-apps", "action": "ALLOW", "rules": [ { "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app*"] } } ] } ] }
    ],
    "identities": ["team.app1"]
  }, {
    "name": "partner-db", "protocol": "tcp", "host": "db.partner.example", "port": 5432,
    "policies": [ { "name": "allow-apps", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
    "defaultIdentity": "team"
  } ]
}"#;

fn certificate(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs").join(name)).unwrap()
}

/// The kind of denial for a caller (the PEM its connection presents, or none) and a request.
fn decide(
    config: &Config,
    pem: Option<Vec<u8>>,
    spiffe_id: Option<&str>,
    authority: &str,
    path: &str,
) -> Option<DenialKind> {
    let lookup = |p: PrincipalProperty| -> Lookup {
        Ok(match p {
            PrincipalProperty::PeerCertificate => pem.clone(),
            PrincipalProperty::IstioPeerPrincipal => spiffe_id.map(|s| s.as_bytes().to_vec()),
            PrincipalProperty::PeerCertificateDigest => pem.as_ref().map(|_| b"digest".to_vec()),
        })
    };
    let sources = [PrincipalSource::PeerCertificate, PrincipalSource::IstioPeerPrincipal];
    let mut cache = CertificateCache::new(4);
    let resolution = principal::resolve(&sources, config.san_policy, Some(&mut cache), lookup).unwrap();
    let request = Request { authority, method: "GET", path };
    let evaluation = config.evaluate(resolution.principal.as_ref().map(|c| c.id()).map_err(|e| *e), &request);
    match evaluation.decision {
        Decision::Allow(_) => None,
        Decision::Deny(denial) => {
            let kind = denial.kind();
            assert_eq!(denial.layer, kind.layer(), "{denial}");
            assert_eq!(denial.reason_code(), kind.reason_code(), "{denial}");
            Some(kind)
        }
    }
}

/// A caller (the PEM its connection presents, the filter-state principal) and a request (authority, path).
type Case = (Option<Vec<u8>>, Option<String>, &'static str, &'static str);

/// Every denial produced from real inputs.
fn produced() -> BTreeSet<(&'static str, &'static str)> {
    let config = Config::load(POLICY.as_bytes()).unwrap();
    let host = "api.partner.example";
    let app = |sa: &str| format!("spiffe://cluster.local/ns/team/sa/{sa}");
    let app1 = app("app1");
    let cases: Vec<Case> = vec![
        (None, Some(app1.clone()), "api.partner.example:abc", "/"),
        (None, None, host, "/"),
        (Some(b"not a certificate".to_vec()), None, host, "/"),
        (Some(certificate("no-uri.pem")), None, host, "/"),
        (Some(certificate("two-uris.pem")), None, host, "/"),
        (Some(certificate("bad-spiffe-id.pem")), None, host, "/"),
        (Some(certificate("ca.pem")), None, host, "/"),
        (Some(certificate("no-key-usage.pem")), None, host, "/"),
        (Some(certificate("trust-domain-id.pem")), None, host, "/"),
        (None, Some("spiffe://evil.example/ns/team/sa/app1".into()), host, "/"),
        (None, Some("spiffe://cluster.local/ns/quarantine/sa/x".into()), host, "/"),
        (None, Some("spiffe://cluster.local/ns/sandbox/sa/x".into()), host, "/"),
        (None, Some(app1.clone()), "unknown.example", "/"),
        (None, Some(app1.clone()), host, "/admin/users"),
        (None, Some(app("intruder")), host, "/"),
        (None, Some(app("app2")), host, "/"),
        (Some(certificate("app1.pem")), None, host, "/"),
    ];
    let mut kinds = BTreeSet::new();
    let mut allowed = 0;
    for (pem, id, authority, path) in cases {
        match decide(&config, pem, id.as_deref(), authority, path) {
            Some(kind) => {
                kinds.insert((kind.layer().as_str(), kind.reason_code()));
            }
            None => allowed += 1,
        }
    }
    assert_eq!(allowed, 1, "only app1's certificate is allowed");
    kinds.extend(produced_by_connections(&config));
    kinds
}

/// Denials only connections (the L4 filter) produce, and the ones they share with requests.
fn produced_by_connections(config: &Config) -> Vec<(&'static str, &'static str)> {
    let app1 = SpiffeId::parse("spiffe://cluster.local/ns/team/sa/app1").unwrap();
    let mut kinds = Vec::new();
    let mut record = |decision: Decision<'_>| {
        if let Decision::Deny(denial) = decision {
            let kind = denial.kind();
            assert_eq!((denial.layer, denial.reason_code()), (kind.layer(), kind.reason_code()), "{denial}");
            kinds.push((kind.layer().as_str(), kind.reason_code()));
        }
    };
    // An SNI that is not a host name; a connection to the HTTP destination; one that is allowed.
    for (sni, port) in [("db.partner.example:5432", 5432), ("api.partner.example", 443), ("db.partner.example", 5432)] {
        record(config.evaluate_connection(Ok(&app1), sni, port).decision);
    }
    // A passthrough connection whose ClientHello names another host, or whose first bytes are not TLS, or
    // whose server name is ambiguous or encrypted.
    for hello in [
        ClientHello::ServerName("elsewhere.example".into()),
        ClientHello::NotClientHello,
        ClientHello::MultipleServerNames,
        ClientHello::MultipleServerNameExtensions,
        ClientHello::NotHostName,
        ClientHello::Encrypted(Some("db.partner.example".into())),
    ] {
        if let PassthroughVerdict::Deny(denial) = config.passthrough_verdict("db.partner.example", false, &hello) {
            record(Decision::Deny(denial));
        }
    }
    // A connection still undecided at its deadline (the adapter closes it).
    record(Decision::Deny(egress_identity_core::pending_connections::PendingConnections::DENIAL));
    // A request to the tcp destination.
    let request = Request { authority: "db.partner.example:5432", method: "GET", path: "/" };
    record(config.evaluate(Ok(&app1), &request).decision);
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    kinds
}

fn all_kinds() -> BTreeSet<(&'static str, &'static str)> {
    DenialKind::ALL.iter().map(|k| (k.layer().as_str(), k.reason_code())).collect()
}

/// The (layer, reason) rows of README's "Decisions and the deny response" table, plugin errors aside.
fn documented() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme.split("### Decisions and the deny response").nth(1).expect("README has the decisions section");
    let section = section.split("\n#").next().unwrap_or_default();
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut rows = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').collect();
        for layer in ticked(cells[1]).into_iter().filter(|l| l != "plugin") {
            for reason in ticked(cells[2]) {
                rows.insert((layer.clone(), reason));
            }
        }
    }
    rows
}

#[test]
fn every_denial_kind_is_produced_by_a_real_input() {
    assert_eq!(produced(), all_kinds());
}

#[test]
fn denial_kinds_are_numbered_in_order() {
    for (i, kind) in DenialKind::ALL.iter().enumerate() {
        assert_eq!(kind.index(), i, "{kind:?}");
    }
    assert_eq!(all_kinds().len(), DenialKind::ALL.len(), "two kinds share a (layer, reason)");
}

#[test]
fn the_readme_documents_exactly_the_denials_there_are() {
    let kinds: BTreeSet<(String, String)> =
        all_kinds().into_iter().map(|(l, r)| (l.to_string(), r.to_string())).collect();
    assert_eq!(documented(), kinds);
}
