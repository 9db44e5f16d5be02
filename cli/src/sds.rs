//! `egress-identity sds`: the file-based SDS resources a `render envoy` gateway reads, written from a user's
//! own PEM files, so nobody writes SDS YAML by hand. One resource file per secret, `<dir>/<secret>.yaml`,
//! each replaced atomically (temporary file, then rename: Envoy reloads on the rename, and a certificate
//! and its key change together because both are inlined in the one file).
//!
//! Every file is checked for the role it serves ([`crate::certificate_material`]) before anything is
//! written. With `--policy`, every secret the rendered gateway will ask for must be given (the gateway's
//! certificate, the mesh CA, the client certificate of each external identity that originates TLS, the CA
//! of each destination), and each identity's certificate must carry what the policy declares; `--identity`
//! needs `--policy`, which declares it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::certificate_material::{Checker, Role};
use crate::render::envoy::{default_ca_secret, identity_secret, originating_clusters, GATEWAY_CERT, MESH_CA};
use crate::render::{map, s, to_yaml, PolicyFile, Yaml};

/// What to write.
#[derive(Debug, Default)]
pub struct SdsRequest {
    pub out: PathBuf,
    pub gateway: Option<(PathBuf, PathBuf)>,
    pub mesh_ca: Vec<PathBuf>,
    /// External identity name → (certificate chain, key).
    pub identities: BTreeMap<String, (PathBuf, PathBuf)>,
    /// Destination → CA bundle of the partner.
    pub cas: BTreeMap<String, PathBuf>,
    /// Destination → the name of its CA secret (default `<destination>-ca`, as `render envoy`).
    pub ca_secrets: BTreeMap<String, String>,
}

/// Why `--identity` needs `--policy`.
pub const IDENTITY_NEEDS_POLICY: &str = "--identity needs --policy: the policy declares what each identity's certificate must carry (identities[].certificate; by default CN=<name>), and without it the certificate cannot be checked";

fn secret(name: &str, body: (&str, Yaml)) -> String {
    let header = "# SDS resource written by `egress-identity sds`. Replace it atomically (write a temporary file in\n# this directory, then rename it over this one): Envoy reloads on the rename.\n";
    let resource = map([
        ("@type", s("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")),
        ("name", s(name)),
        body,
    ]);
    format!("{header}{}", to_yaml(&map([("resources", Yaml::Seq(vec![resource]))])))
}

fn inline(text: &str) -> Yaml {
    map([("inline_string", Yaml::Literal(text.trim_end().to_string() + "\n"))])
}

fn tls_certificate(name: &str, chain: &str, key: &str) -> String {
    secret(name, ("tls_certificate", map([("certificate_chain", inline(chain)), ("private_key", inline(key))])))
}

fn validation_context(name: &str, bundle: &str) -> String {
    secret(name, ("validation_context", map([("trusted_ca", inline(bundle))])))
}

/// The secrets a `render envoy` gateway for `policy` reads: (secret, what for).
pub fn wanted(policy: &PolicyFile, ca_secrets: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = vec![
        (GATEWAY_CERT.to_string(), "the gateway's server certificate: --gateway-cert and --gateway-key".to_string()),
        (MESH_CA.to_string(), "the CA of the callers' certificates: --mesh-ca".to_string()),
    ];
    for c in originating_clusters(policy) {
        let ca = ca_secrets.get(&c.destination).cloned().unwrap_or_else(|| default_ca_secret(&c.destination));
        out.push((ca, format!("the CA of destination {}", c.destination)));
        out.push((identity_secret(&c.identity), format!("the client certificate of identity {}", c.identity)));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Checks every file and writes the resources; returns the files written. Refused, with every problem
/// (one per line) and nothing written, when a file does not serve its role, when `--identity` comes without
/// a policy, or when a secret the policy's gateway reads is missing. Warnings are left in `checker`.
pub fn write(request: &SdsRequest, policy: Option<&PolicyFile>, checker: &mut Checker) -> Result<Vec<PathBuf>, String> {
    if policy.is_none() && !request.identities.is_empty() {
        return Err(IDENTITY_NEEDS_POLICY.into());
    }
    let mut problems: Vec<String> = Vec::new();
    // Every secret given (written or refused), and the text of those that passed.
    let mut given: Vec<String> = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    if let Some((cert, key)) = &request.gateway {
        given.push(GATEWAY_CERT.into());
        match checker.keyed_certificate(Role::Gateway, cert, key) {
            Ok(k) => files.push((GATEWAY_CERT.into(), tls_certificate(GATEWAY_CERT, &k.chain, &k.key))),
            Err(e) => problems.extend(e),
        }
    }
    let mut mesh_bundle = None;
    if !request.mesh_ca.is_empty() {
        given.push(MESH_CA.into());
        let mut bundle = String::new();
        let before = problems.len();
        for path in &request.mesh_ca {
            match checker.ca_bundle(Role::MeshCa, path) {
                Ok(text) => bundle.push_str(&text),
                Err(e) => problems.extend(e),
            }
        }
        if problems.len() == before {
            files.push((MESH_CA.into(), validation_context(MESH_CA, &bundle)));
            mesh_bundle = Some(bundle);
        }
    }
    for (identity, (cert, key)) in &request.identities {
        let name = identity_secret(identity);
        given.push(name.clone());
        let Some((_, declared)) = policy.and_then(|p| p.config.identities.get(identity)) else {
            problems.push(format!("--identity {identity}: the policy declares no identity {identity}"));
            continue;
        };
        let role = Role::Identity { name: identity, expected: &declared.certificate };
        match checker.keyed_certificate(role, cert, key) {
            Ok(k) => files.push((name.clone(), tls_certificate(&name, &k.chain, &k.key))),
            Err(e) => problems.extend(e),
        }
    }
    // One CA secret may serve several destinations (--ca-secret), even be the mesh CA's: each file is
    // checked, and all must agree.
    let own: Vec<String> = given.iter().filter(|n| *n != MESH_CA).cloned().collect();
    let mut cas: BTreeMap<String, (&str, String)> = BTreeMap::new();
    if let Some(bundle) = mesh_bundle {
        cas.insert(MESH_CA.into(), ("--mesh-ca", bundle));
    }
    for (destination, path) in &request.cas {
        let name = request.ca_secrets.get(destination).cloned().unwrap_or_else(|| default_ca_secret(destination));
        if own.contains(&name) {
            problems.push(format!("--ca {destination}: its CA secret {name} is a certificate's, not a CA's"));
            continue;
        }
        given.push(name.clone());
        match checker.ca_bundle(Role::PartnerCa(destination), path) {
            Err(e) => problems.extend(e),
            Ok(bundle) => match cas.get(&name) {
                Some((first, other)) if *other != bundle => problems.push(format!(
                    "--ca {destination}: {first} and {destination} share the CA secret {name} but were given different CAs"
                )),
                Some(_) => {}
                None => {
                    files.push((name.clone(), validation_context(&name, &bundle)));
                    cas.insert(name, (destination, bundle));
                }
            },
        }
    }
    if let Some(policy) = policy {
        let missing: Vec<String> = wanted(policy, &request.ca_secrets)
            .into_iter()
            .filter(|(name, _)| !given.contains(name))
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("the gateway of this policy also reads: {}", missing.join(", ")));
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    if files.is_empty() {
        return Err("nothing to write: give --gateway-cert/--gateway-key, --mesh-ca, --identity or --ca".into());
    }
    std::fs::create_dir_all(&request.out).map_err(|e| format!("{}: {e}", request.out.display()))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let target = request.out.join(format!("{name}.yaml"));
        write_private(&target, &text)?;
        written.push(target);
    }
    Ok(written)
}

/// Replaces `target` atomically (a temporary file beside it, then rename) with a file only its owner can
/// read: private keys inside.
pub(crate) fn write_private(target: &Path, text: &str) -> Result<(), String> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp); // a leftover of an interrupted run would keep its old mode
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        // Created readable by the owner only: the key is never readable by others, not even briefly.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, target).map_err(|e| format!("{}: {e}", target.display()))
}
