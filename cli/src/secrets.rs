//! `egress-identity secrets istio|kuma`: the Kubernetes Secrets the manifests of `render istio|kuma` read,
//! written from a user's own PEM files, so nobody assembles them with `kubectl create secret` by hand.
//!
//! The policy says which Secrets exist: every one the rendered manifests name must be given, and a given
//! identity or CA the policy does not use is refused (a typo would otherwise leave a Secret missing).
//! - Istio: `egress-identity-<identity>` (generic: `tls.crt`, `tls.key`, `ca.crt` = the partner's CA), read
//!   by istiod over SDS (`kubernetes://<secret>` and `kubernetes://<secret>-cacert`).
//! - Kuma: `<destination>-ca`, `egress-identity-<identity>-cert` and `-key`, each `type:
//!   system.kuma.io/secret` with `data.value`, labelled `kuma.io/mesh`.
//!
//! Every file is checked for the role it serves ([`crate::certificate_material`]): each identity's
//! certificate against what the policy declares it carries, each CA as a CA; a certificate field holds
//! certificates only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;

use crate::certificate_material::{Checker, KeyedCertificate, Role};
use crate::render::envoy::{originating_clusters, IdentityCluster};
use crate::render::{documents, istio, kuma, map, s, PolicyFile, Yaml};

/// The platform whose Secrets to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Istio,
    Kuma,
}

/// What to write.
#[derive(Debug)]
pub struct SecretsRequest {
    pub platform: Platform,
    pub namespace: String,
    /// Kuma: the mesh the Secrets belong to (label `kuma.io/mesh`).
    pub mesh: String,
    /// External identity name → (certificate chain, key).
    pub identities: BTreeMap<String, (PathBuf, PathBuf)>,
    /// Destination → CA bundle of the partner.
    pub cas: BTreeMap<String, PathBuf>,
}

fn b64(text: &str) -> Yaml {
    s(base64::engine::general_purpose::STANDARD.encode(text))
}

fn labels(extra: &[(&str, &str)]) -> Yaml {
    let mut out = vec![("app.kubernetes.io/managed-by".to_string(), s("egress-identity"))];
    out.extend(extra.iter().map(|(k, v)| (k.to_string(), s(*v))));
    Yaml::Map(out)
}

fn secret(name: &str, namespace: &str, labels: Yaml, kind: &str, data: Vec<(&str, Yaml)>) -> Yaml {
    map([
        ("apiVersion", s("v1")),
        ("kind", s("Secret")),
        ("metadata", map([("name", s(name)), ("namespace", s(namespace)), ("labels", labels)])),
        ("type", s(kind)),
        ("data", map(data)),
    ])
}

/// What was given but is never read, and what is read but was not given.
fn check_given(request: &SecretsRequest, clusters: &[IdentityCluster]) -> Vec<String> {
    let mut problems = Vec::new();
    for identity in request.identities.keys() {
        if !clusters.iter().any(|c| c.identity == *identity) {
            problems.push(format!("--identity {identity}: no destination of the policy originates TLS as it"));
        }
    }
    for destination in request.cas.keys() {
        if !clusters.iter().any(|c| c.destination == *destination) {
            problems.push(format!("--ca {destination}: not a destination of the policy that originates TLS"));
        }
    }
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in clusters.iter().filter(|c| !request.identities.contains_key(&c.identity)) {
        users.entry(&c.identity).or_default().push(&c.destination);
    }
    let mut missing: Vec<String> = users
        .iter()
        .map(|(identity, destinations)| format!("--identity {identity}=CERT,KEY (used by {})", destinations.join(", ")))
        .collect();
    let mut destinations: Vec<&str> = clusters.iter().map(|c| c.destination.as_str()).collect();
    destinations.dedup();
    for d in destinations.into_iter().filter(|d| !request.cas.contains_key(*d)) {
        missing.push(format!("--ca {d}=PEM (the partner's CA)"));
    }
    if !missing.is_empty() {
        problems.push(format!("the manifests of this policy also read: {}", missing.join(", ")));
    }
    problems
}

/// The Secrets, as one multi-document YAML text; refused with every problem, one per line. Warnings are
/// left in `checker`.
pub fn render(request: &SecretsRequest, policy: &PolicyFile, checker: &mut Checker) -> Result<String, String> {
    let clusters = originating_clusters(policy);
    let mut problems = check_given(request, &clusters);
    let mut cas: BTreeMap<&str, String> = BTreeMap::new();
    for (destination, path) in &request.cas {
        match checker.ca_bundle(Role::PartnerCa(destination), path) {
            Ok(bundle) => {
                cas.insert(destination, bundle);
            }
            Err(e) => problems.extend(e),
        }
    }
    let mut identities: BTreeMap<&str, KeyedCertificate> = BTreeMap::new();
    for (identity, (cert, key)) in &request.identities {
        // An identity the policy does not declare is named by check_given (no destination uses it).
        let Some((_, declared)) = policy.config.identities.get(identity) else { continue };
        match checker.keyed_certificate(Role::Identity { name: identity, expected: &declared.certificate }, cert, key) {
            Ok(material) => {
                identities.insert(identity, material);
            }
            Err(e) => problems.extend(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut docs = Vec::new();
    let ns = request.namespace.as_str();
    match request.platform {
        Platform::Istio => {
            for (identity, material) in &identities {
                // One Secret per identity carries the partner's CA too: every destination using it must
                // trust the same CA, or one partner's CA would vouch for another partner.
                let mut ca: Option<(&str, &String)> = None;
                for c in clusters.iter().filter(|c| c.identity == *identity) {
                    let Some(bundle) = cas.get(c.destination.as_str()) else { continue };
                    match ca {
                        Some((first, other)) if other != bundle => {
                            return Err(format!(
                                "identity {identity}: destinations {first} and {} have different CAs, but Istio reads one Secret ({}) per identity; give them different identity names",
                                c.destination,
                                istio::identity_secret(identity)
                            ))
                        }
                        Some(_) => {}
                        None => ca = Some((c.destination.as_str(), bundle)),
                    }
                }
                let Some((_, ca)) = ca else { continue };
                docs.push(secret(
                    &istio::identity_secret(identity),
                    ns,
                    labels(&[]),
                    "Opaque",
                    vec![("tls.crt", b64(&material.chain)), ("tls.key", b64(&material.key)), ("ca.crt", b64(ca))],
                ));
            }
        }
        Platform::Kuma => {
            let kuma_labels = || labels(&[("kuma.io/mesh", request.mesh.as_str())]);
            for (destination, ca) in &cas {
                docs.push(secret(
                    &format!("{destination}-ca"),
                    ns,
                    kuma_labels(),
                    "system.kuma.io/secret",
                    vec![("value", b64(ca))],
                ));
            }
            for (identity, material) in &identities {
                let base = kuma::secret_base(identity);
                docs.push(secret(
                    &format!("{base}-cert"),
                    ns,
                    kuma_labels(),
                    "system.kuma.io/secret",
                    vec![("value", b64(&material.chain))],
                ));
                docs.push(secret(
                    &format!("{base}-key"),
                    ns,
                    kuma_labels(),
                    "system.kuma.io/secret",
                    vec![("value", b64(&material.key))],
                ));
            }
        }
    }
    let header = "# Kubernetes Secrets written by `egress-identity secrets`: private keys inside -- apply them\n# (kubectl apply -f), do not commit them.\n";
    Ok(format!("{header}{}", documents(&docs)))
}
