//! File-based SDS resources for the gateway (`envoy/gateway.yaml`).
//!
//! The gateway reads every certificate, key and CA bundle it uses from one SDS resource file each,
//! `<run>/sds/<secret name>.yaml`, through
//! `sds_config: { path_config_source: { path: sds/<name>.yaml, watched_directory: { path: sds } } }`.
//! Envoy reloads a resource when a file is *moved into* the watched directory, so every write here is
//! atomic: the new content goes to a temporary file in the same directory, which is then renamed over
//! the resource file. A reader never sees half a file, and a certificate and its key change together
//! because the PEM is inlined in the resource (one file, one rename).
//!
//! | secret (file `sds/<name>.yaml`) | kind | used by |
//! |---|---|---|
//! | [`GATEWAY_CERT`] | `tls_certificate` | the listener's server certificate |
//! | [`MESH_CA`] | `validation_context` | the listener's CA bundle for callers (one or more CAs) |
//! | [`PARTNER_CA`] | `validation_context` | every per-identity cluster, to verify the partner |
//! | [`external_identity`]`("team.app1")` = `external-team.app1` | `tls_certificate` | cluster `partner-api|team-app1` |

use std::fs;
use std::path::{Path, PathBuf};

use crate::pki::{CertFiles, Pki, EXTERNAL_IDENTITIES};
use crate::{err, Result};

/// Run-directory relative directory of the SDS resource files (the watched directory).
pub const SDS_DIR_IN_RUN_DIR: &str = "sds";
/// Secret: the gateway's server certificate and key.
pub const GATEWAY_CERT: &str = "gateway-cert";
/// Secret: the CA bundle that verifies callers (mesh CA; old + new during a CA rotation).
pub const MESH_CA: &str = "mesh-ca";
/// Secret: the partner CA that verifies the external server.
pub const PARTNER_CA: &str = "partner-ca";

/// Secret name of an external identity's client certificate: `external-<identity>`.
pub fn external_identity(identity: &str) -> String {
    format!("external-{identity}")
}

/// Path of a secret's resource file in `sds_dir`.
pub fn resource_path(sds_dir: &Path, name: &str) -> PathBuf {
    sds_dir.join(format!("{name}.yaml"))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(err(format!("invalid SDS secret name {name:?}")))
    }
}

fn block(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in pem.trim_end().lines() {
        out.push_str(&pad);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn read(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).map_err(|e| err(format!("reading {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(err(format!("{} is not PEM", path.display())));
    }
    Ok(text)
}

const HEADER: &str = "# SDS resource (egress-identity-harness). Replace atomically: write a temporary file in this\n\
# directory, then rename it over this one; Envoy reloads on the rename.\n";

/// The resource file content for a `tls_certificate` secret (certificate chain and key inlined).
pub fn tls_certificate_resource(name: &str, chain_pem: &str, key_pem: &str) -> String {
    format!(
        "{HEADER}resources:\n\
         - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {name}\n  \
         tls_certificate:\n    \
         certificate_chain:\n      \
         inline_string: |\n{}    \
         private_key:\n      \
         inline_string: |\n{}",
        block(chain_pem, 8),
        block(key_pem, 8)
    )
}

/// The resource file content for a `validation_context` secret trusting the given CA certificates.
pub fn validation_context_resource(name: &str, ca_pems: &[String]) -> String {
    let bundle: String = ca_pems.iter().map(|p| block(p, 8)).collect();
    format!(
        "{HEADER}resources:\n\
         - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {name}\n  \
         validation_context:\n    \
         trusted_ca:\n      \
         inline_string: |\n{bundle}"
    )
}

/// Write `contents` as the resource file of secret `name` in `sds_dir`, atomically (temporary file in the
/// same directory, then rename). Returns the resource file's path.
pub fn write_resource(sds_dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    check_name(name)?;
    fs::create_dir_all(sds_dir)?;
    let target = resource_path(sds_dir, name);
    let tmp = sds_dir.join(format!(".{name}.yaml.tmp"));
    fs::write(&tmp, contents).map_err(|e| err(format!("writing {}: {e}", tmp.display())))?;
    // Test material only: world-readable so an unprivileged Envoy (e.g. in a container) can read it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    }
    fs::rename(&tmp, &target).map_err(|e| err(format!("renaming {} to {}: {e}", tmp.display(), target.display())))?;
    Ok(target)
}

/// Publish a certificate and key (PEM files) as `tls_certificate` secret `name`.
pub fn write_tls_certificate(sds_dir: &Path, name: &str, files: &CertFiles) -> Result<PathBuf> {
    let resource = tls_certificate_resource(name, &read(&files.cert)?, &read(&files.key)?);
    write_resource(sds_dir, name, &resource)
}

/// Publish a CA bundle (the concatenation of the given PEM files) as `validation_context` secret `name`.
pub fn write_validation_context(sds_dir: &Path, name: &str, cas: &[&Path]) -> Result<PathBuf> {
    if cas.is_empty() {
        return Err(err(format!("validation context {name}: no CA certificate")));
    }
    let pems = cas.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
    write_resource(sds_dir, name, &validation_context_resource(name, &pems))
}

/// Every secret `envoy/gateway.yaml` needs, from the PKI: [`GATEWAY_CERT`], [`MESH_CA`], [`PARTNER_CA`]
/// and one [`external_identity`] per [`EXTERNAL_IDENTITIES`]. Returns the written files.
pub fn write_gateway_secrets(pki: &Pki, sds_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = vec![
        write_tls_certificate(sds_dir, GATEWAY_CERT, &pki.gateway_cert())?,
        write_validation_context(sds_dir, MESH_CA, &[&pki.mesh_ca_cert()])?,
        write_validation_context(sds_dir, PARTNER_CA, &[&pki.partner_ca_cert()])?,
    ];
    for identity in EXTERNAL_IDENTITIES {
        written.push(write_tls_certificate(sds_dir, &external_identity(identity), &pki.external_identity(identity))?);
    }
    Ok(written)
}
