//! `egress-identity sds`: the file-based SDS resources a `render envoy` gateway reads, written from a user's
//! own PEM files, so nobody writes SDS YAML by hand. One resource file per secret, `<dir>/<secret>.yaml`,
//! each replaced atomically (temporary file, then rename: Envoy reloads on the rename, and a certificate
//! and its key change together because both are inlined in the one file).
//!
//! With `--policy`, every secret the rendered gateway will ask for must be given: the client certificate
//! of each external identity that originates TLS, and the CA of each destination.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::render::envoy::{originating_clusters, GATEWAY_CERT, MESH_CA};
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

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// A PEM file of certificates (a chain or a CA bundle), each parsed as X.509.
pub(crate) fn read_certificates(path: &Path, what: &str) -> Result<String, String> {
    let text = read(path)?;
    let mut found = 0;
    for (i, pem) in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()).enumerate() {
        let pem = pem.map_err(|e| format!("{}: PEM block {i}: {e}", path.display()))?;
        if pem.label == "CERTIFICATE" {
            pem.parse_x509().map_err(|e| format!("{}: certificate {i} is not X.509: {e}", path.display()))?;
            found += 1;
        }
    }
    if found == 0 {
        return Err(format!("{}: no PEM certificate ({what})", path.display()));
    }
    Ok(text)
}

/// A PEM file holding a private key.
pub(crate) fn read_key(path: &Path) -> Result<String, String> {
    let text = read(path)?;
    let is_key = |label: &str| label == "PRIVATE KEY" || label.ends_with(" PRIVATE KEY");
    let has_key = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()).flatten().any(|pem| is_key(&pem.label));
    if has_key {
        Ok(text)
    } else {
        Err(format!("{}: no PEM private key", path.display()))
    }
}

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

/// The secrets a `render envoy` gateway for `policy` reads, besides the listener's: (secret, what for).
pub fn wanted(policy: &PolicyFile, ca_secrets: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for c in originating_clusters(policy).map_err(|e| e.to_string())? {
        let ca = ca_secrets.get(&c.destination).cloned().unwrap_or_else(|| format!("{}-ca", c.destination));
        out.push((ca, format!("the CA of destination {}", c.destination)));
        out.push((format!("external-{}", c.identity), format!("the client certificate of identity {}", c.identity)));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Writes the resources; returns the files written. With `policy`, refuses when a secret it needs is missing.
pub fn write(request: &SdsRequest, policy: Option<&PolicyFile>) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<(String, String)> = Vec::new();
    if let Some((cert, key)) = &request.gateway {
        files.push((
            GATEWAY_CERT.into(),
            tls_certificate(GATEWAY_CERT, &read_certificates(cert, "gateway")?, &read_key(key)?),
        ));
    }
    if !request.mesh_ca.is_empty() {
        let bundle: Vec<String> =
            request.mesh_ca.iter().map(|p| read_certificates(p, "mesh CA")).collect::<Result<_, _>>()?;
        files.push((MESH_CA.into(), validation_context(MESH_CA, &bundle.join(""))));
    }
    for (identity, (cert, key)) in &request.identities {
        let name = format!("external-{identity}");
        files.push((name.clone(), tls_certificate(&name, &read_certificates(cert, "identity")?, &read_key(key)?)));
    }
    for (destination, ca) in &request.cas {
        let name = request.ca_secrets.get(destination).cloned().unwrap_or_else(|| format!("{destination}-ca"));
        if files.iter().any(|(n, _)| *n == name) {
            continue; // one CA secret shared by several destinations (--ca-secret)
        }
        files.push((name.clone(), validation_context(&name, &read_certificates(ca, "CA")?)));
    }
    if let Some(policy) = policy {
        let missing: Vec<String> = wanted(policy, &request.ca_secrets)?
            .into_iter()
            .filter(|(name, _)| !files.iter().any(|(n, _)| n == name))
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        if !missing.is_empty() {
            return Err(format!("the gateway of this policy also reads: {}", missing.join(", ")));
        }
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
