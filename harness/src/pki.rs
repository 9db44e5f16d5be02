//! Throw-away test PKI, written as PEM files.
//!
//! Two independent CAs:
//!
//! * the **mesh CA** (trust domain `cluster.local`) signs the gateway's server certificate and the workload
//!   (caller) client certificates, whose identity is a URI SAN (`spiffe://cluster.local/ns/<ns>/sa/<sa>`);
//! * the **partner CA** (the external party's PKI) signs the external server's certificate
//!   (`api.partner.example`) and the external-identity client certificates the gateway presents upstream
//!   (`CN=team.app1`, `CN=team.app2`).
//!
//! File names inside the PKI directory are the constants of [`layout`]. nginx refers to them as
//! `pki/<name>`; the gateway gets its certificates through file-based SDS resources written from them
//! (see [`crate::sds`]).
//!
//! For rotation tests more material can be issued later: a second mesh CA ([`Pki::generate_mesh_ca`]) and
//! certificates signed by it, a re-issued external identity (same subject, new key and serial,
//! [`Pki::reissue_external_identity`]). [`certificate_serial`] reads a certificate's serial back. For tests of
//! certificate checks: external identities expired, not yet valid or expiring soon
//! ([`Pki::issue_external_identity_valid`]), or with DNS SANs ([`Pki::issue_external_identity_with_dns`]).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{err, Result};

/// File names, relative to the PKI directory (`<run>/pki`).
pub mod layout {
    /// Mesh CA certificate: the gateway listener validates callers against it, callers validate the gateway.
    pub const MESH_CA_CERT: &str = "mesh-ca.crt";
    /// Mesh CA key (kept so more workload certificates can be issued later, see `Pki::load`).
    pub const MESH_CA_KEY: &str = "mesh-ca.key";
    /// Gateway server certificate (DNS `egress-gateway.local`, `localhost`, IP `127.0.0.1`).
    pub const GATEWAY_CERT: &str = "gateway.crt";
    /// Gateway server key.
    pub const GATEWAY_KEY: &str = "gateway.key";
    /// Partner CA certificate: the gateway validates the external server against it, the external server
    /// validates the gateway's external-identity client certificates against it.
    pub const PARTNER_CA_CERT: &str = "partner-ca.crt";
    /// Partner CA key.
    pub const PARTNER_CA_KEY: &str = "partner-ca.key";
    /// External server certificate (DNS `api.partner.example`).
    pub const EXTERNAL_SERVER_CERT: &str = "external/api.partner.example.crt";
    /// External server key.
    pub const EXTERNAL_SERVER_KEY: &str = "external/api.partner.example.key";
    /// Directory of external-identity client certificates (`<identity>.crt`, `<identity>.key`).
    pub const EXTERNAL_DIR: &str = "external";
    /// Directory of workload (caller) certificates (`<name>.crt`, `<name>.key`).
    pub const WORKLOADS_DIR: &str = "workloads";
}

/// Trust domain of the mesh CA.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// DNS name of the gateway (its server certificate and the name callers use).
pub const GATEWAY_HOST: &str = "egress-gateway.local";
/// DNS name of the external server.
pub const EXTERNAL_HOST: &str = "api.partner.example";
/// The partner's name for TLS passthrough (the caller's own TLS reaches the partner): a second DNS SAN of
/// the partner's server certificate.
pub const EXTERNAL_TLS_HOST: &str = "tls.partner.example";
/// The other hosts of the example policy (`examples/policy.json`: `partner-db`, `partner-files`), on the
/// partner's server certificate too, so the Istio gateway istiod generates from the examples verifies them.
pub const EXAMPLE_HOSTS: &[&str] = &["db.partner.example", "files.partner.example"];
/// External identities issued by [`Pki::generate`] (certificate subject `CN=<name>`).
pub const EXTERNAL_IDENTITIES: &[&str] = &["team.app1", "team.app2"];
/// Partner servers of the dynamic (wildcard) destinations' tests, each with a certificate for its name
/// alone (`external/<host>.crt`), so a server that answers for another name is caught.
pub const DYNAMIC_PARTNER_HOSTS: &[&str] = &["a.partner.example", "b.partner.example", "x.db.example"];

const MESH_CA_CN: &str = "mesh CA (cluster.local)";
const PARTNER_CA_CN: &str = "partner CA";
const PARTNER_ORG: &str = "Partner Example";

/// Workloads issued by [`Pki::generate`]: (file name, SPIFFE ID).
pub const STANDARD_WORKLOADS: &[(&str, &str)] = &[
    ("team-app1", "spiffe://cluster.local/ns/team/sa/app1"),
    ("team-app2", "spiffe://cluster.local/ns/team/sa/app2"),
    ("team-app3", "spiffe://cluster.local/ns/team/sa/app3"),
    ("sandbox-default", "spiffe://cluster.local/ns/sandbox/sa/default"),
    ("quarantine-default", "spiffe://cluster.local/ns/quarantine/sa/default"),
];

/// A certificate and its key on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
}

/// What to put in a workload certificate; every variant is signed by the mesh CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// URI SANs, in order (0, 1 or more; a valid workload has exactly one SPIFFE ID).
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// Subject common name (none by default, as for SPIFFE X.509-SVIDs).
    pub common_name: Option<String>,
    /// Mark the leaf as a CA (`basicConstraints CA:TRUE`).
    pub is_ca: bool,
    /// Add `keyCertSign` to the key usage.
    pub key_cert_sign: bool,
    /// Leave out the keyUsage extension (an X509-SVID must carry it).
    pub without_key_usage: bool,
    /// keyUsage `keyEncipherment` only, without `digitalSignature` (an X509-SVID leaf must set it).
    pub without_digital_signature: bool,
}

impl WorkloadSpec {
    /// A regular workload certificate with exactly one URI SAN.
    pub fn spiffe(id: &str) -> Self {
        WorkloadSpec { uri_sans: vec![id.to_string()], ..Default::default() }
    }
}

/// When a certificate of [`Pki::issue_external_identity_valid`] is valid, relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 2024-01-01 until a day ago.
    Expired,
    /// Valid from a day from now until 2049-12-31.
    NotYetValid,
    /// Valid from 2024-01-01 until this many days from now.
    EndsInDays(u32),
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

/// An additional mesh CA (same trust domain, its own key), e.g. the successor in a CA rotation.
pub struct CertificateAuthority {
    ca: Ca,
    cert: PathBuf,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// The CA certificate (PEM).
    pub fn cert(&self) -> &Path {
        &self.cert
    }
}

/// A test PKI rooted at a directory.
pub struct Pki {
    dir: PathBuf,
    mesh: Ca,
    partner: Ca,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    // A fixed window that is valid now and stays within UTCTime.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
}

fn ca_params(cn: &str, org: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    validity(&mut params);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String> {
    rcgen::string::Ia5String::try_from(s.to_string()).map_err(|e| err(format!("invalid IA5 string {s:?}: {e}")))
}

fn write_pem(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, contents).map_err(|e| err(format!("writing {}: {e}", path.display())))?;
    // Test material only: world-readable so an unprivileged Envoy/nginx (e.g. in a container) can read it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

impl Ca {
    fn generate(cn: &str, org: &str, dir: &Path, cert_name: &str, key_name: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let params = ca_params(cn, org);
        let cert = params.self_signed(&key)?;
        write_pem(&dir.join(cert_name), &cert.pem())?;
        write_pem(&dir.join(key_name), &key.serialize_pem())?;
        Ok(Ca { issuer: Issuer::new(params, key) })
    }

    /// Re-open a CA written by [`Ca::generate`]: its parameters are deterministic but for the key, so the
    /// issuer name and key identifier match the certificate on disk.
    fn load(cn: &str, org: &str, dir: &Path, cert_name: &str, key_name: &str) -> Result<Ca> {
        if !dir.join(cert_name).is_file() {
            return Err(err(format!("{} not found", dir.join(cert_name).display())));
        }
        let key = KeyPair::from_pem(&fs::read_to_string(dir.join(key_name))?)?;
        Ok(Ca { issuer: Issuer::new(ca_params(cn, org), key) })
    }

    fn issue(&self, params: &CertificateParams, out: &CertFiles) -> Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_pem(&out.cert, &cert.pem())?;
        write_pem(&out.key, &key.serialize_pem())?;
        Ok(())
    }
}

fn leaf_params(cn: Option<&str>, server: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    validity(&mut params);
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    params.use_authority_key_identifier_extension = true;
    params
}

impl Pki {
    /// Generate a fresh PKI into `dir` (created if needed): both CAs, the gateway and external server
    /// certificates, the external identities [`EXTERNAL_IDENTITIES`] and the [`STANDARD_WORKLOADS`].
    pub fn generate(dir: impl AsRef<Path>) -> Result<Pki> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mesh = Ca::generate(MESH_CA_CN, TRUST_DOMAIN, &dir, layout::MESH_CA_CERT, layout::MESH_CA_KEY)?;
        let partner = Ca::generate(PARTNER_CA_CN, PARTNER_ORG, &dir, layout::PARTNER_CA_CERT, layout::PARTNER_CA_KEY)?;
        let pki = Pki { dir, mesh, partner };

        pki.mesh.issue(&gateway_params()?, &pki.gateway_cert())?;

        let mut ext = leaf_params(Some(EXTERNAL_HOST), true);
        ext.subject_alt_names = vec![SanType::DnsName(ia5(EXTERNAL_HOST)?), SanType::DnsName(ia5(EXTERNAL_TLS_HOST)?)];
        for host in EXAMPLE_HOSTS {
            ext.subject_alt_names.push(SanType::DnsName(ia5(host)?));
        }
        pki.partner.issue(&ext, &pki.external_server_cert())?;

        for host in DYNAMIC_PARTNER_HOSTS {
            let mut server = leaf_params(Some(host), true);
            server.subject_alt_names = vec![SanType::DnsName(ia5(host)?)];
            pki.partner.issue(&server, &pki.external_identity(host))?;
        }
        for identity in EXTERNAL_IDENTITIES {
            pki.issue_external_identity(identity)?;
        }
        for (name, id) in STANDARD_WORKLOADS {
            pki.issue_workload(name, &WorkloadSpec::spiffe(id))?;
        }
        Ok(pki)
    }

    /// Open a PKI previously written by [`Pki::generate`] (to issue more certificates with the same CAs).
    pub fn load(dir: impl AsRef<Path>) -> Result<Pki> {
        let dir = dir.as_ref().to_path_buf();
        let mesh = Ca::load(MESH_CA_CN, TRUST_DOMAIN, &dir, layout::MESH_CA_CERT, layout::MESH_CA_KEY)?;
        let partner = Ca::load(PARTNER_CA_CN, PARTNER_ORG, &dir, layout::PARTNER_CA_CERT, layout::PARTNER_CA_KEY)?;
        Ok(Pki { dir, mesh, partner })
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Mesh CA certificate (what callers trust for the gateway).
    pub fn mesh_ca_cert(&self) -> PathBuf {
        self.dir.join(layout::MESH_CA_CERT)
    }

    /// Partner CA certificate.
    pub fn partner_ca_cert(&self) -> PathBuf {
        self.dir.join(layout::PARTNER_CA_CERT)
    }

    /// Gateway server certificate and key.
    pub fn gateway_cert(&self) -> CertFiles {
        CertFiles { cert: self.dir.join(layout::GATEWAY_CERT), key: self.dir.join(layout::GATEWAY_KEY) }
    }

    /// The gateway certificate's public key (PEM, `gateway.pub.pem` beside it), e.g. to pin it.
    pub fn gateway_public_key(&self) -> Result<PathBuf> {
        let key = KeyPair::from_pem(&fs::read_to_string(self.gateway_cert().key)?)?;
        let out = self.dir.join("gateway.pub.pem");
        write_pem(&out, &key.public_key_pem())?;
        Ok(out)
    }

    /// External server certificate and key.
    pub fn external_server_cert(&self) -> CertFiles {
        CertFiles { cert: self.dir.join(layout::EXTERNAL_SERVER_CERT), key: self.dir.join(layout::EXTERNAL_SERVER_KEY) }
    }

    /// Paths of an external-identity client certificate (`external/<name>.{crt,key}`).
    pub fn external_identity(&self, name: &str) -> CertFiles {
        let d = self.dir.join(layout::EXTERNAL_DIR);
        CertFiles { cert: d.join(format!("{name}.crt")), key: d.join(format!("{name}.key")) }
    }

    /// Issue an external-identity client certificate `CN=<name>` signed by the partner CA.
    pub fn issue_external_identity(&self, name: &str) -> Result<CertFiles> {
        let out = self.external_identity(name);
        self.partner.issue(&leaf_params(Some(name), false), &out)?;
        Ok(out)
    }

    /// Paths of a workload certificate (`workloads/<name>.{crt,key}`), e.g. `team-app1`.
    pub fn workload(&self, name: &str) -> CertFiles {
        let d = self.dir.join(layout::WORKLOADS_DIR);
        CertFiles { cert: d.join(format!("{name}.crt")), key: d.join(format!("{name}.key")) }
    }

    /// Issue a workload (client) certificate signed by the mesh CA, as described by `spec`
    /// (any number of URI SANs, optionally CA:TRUE or keyCertSign, for negative tests).
    pub fn issue_workload(&self, name: &str, spec: &WorkloadSpec) -> Result<CertFiles> {
        self.issue_workload_with(&self.mesh, name, spec)
    }

    /// Like [`Pki::issue_workload`], signed by another mesh CA (see [`Pki::generate_mesh_ca`]).
    pub fn issue_workload_by(&self, ca: &CertificateAuthority, name: &str, spec: &WorkloadSpec) -> Result<CertFiles> {
        self.issue_workload_with(&ca.ca, name, spec)
    }

    /// A new mesh CA for the same trust domain, written to `<stem>.crt` / `<stem>.key` in the PKI
    /// directory, with subject `CN=<stem> (cluster.local)` (distinct from the original mesh CA's).
    pub fn generate_mesh_ca(&self, stem: &str) -> Result<CertificateAuthority> {
        check_stem(stem)?;
        let cert_name = format!("{stem}.crt");
        let ca = Ca::generate(
            &format!("{stem} ({TRUST_DOMAIN})"),
            TRUST_DOMAIN,
            &self.dir,
            &cert_name,
            &format!("{stem}.key"),
        )?;
        Ok(CertificateAuthority { ca, cert: self.dir.join(cert_name) })
    }

    /// A new gateway server certificate (same names as [`layout::GATEWAY_CERT`]) signed by `ca`, written
    /// to `<stem>.crt` / `<stem>.key` in the PKI directory.
    pub fn issue_gateway_cert_by(&self, ca: &CertificateAuthority, stem: &str) -> Result<CertFiles> {
        check_stem(stem)?;
        let out = CertFiles { cert: self.dir.join(format!("{stem}.crt")), key: self.dir.join(format!("{stem}.key")) };
        ca.ca.issue(&gateway_params()?, &out)?;
        Ok(out)
    }

    /// Re-issue the external identity `name` (subject `CN=<name>`, partner CA) with a new key, hence a new
    /// serial, into `external/<stem>.{crt,key}`; the files of the current certificate are left alone.
    pub fn reissue_external_identity(&self, name: &str, stem: &str) -> Result<CertFiles> {
        check_stem(stem)?;
        let out = self.external_identity(stem);
        self.partner.issue(&leaf_params(Some(name), false), &out)?;
        Ok(out)
    }

    /// Issue an external-identity certificate `CN=<name>` (partner CA) valid only as `validity` says, into
    /// `external/<stem>.{crt,key}` (tests of expiry checks).
    pub fn issue_external_identity_valid(&self, name: &str, stem: &str, validity: Validity) -> Result<CertFiles> {
        check_stem(stem)?;
        let mut params = leaf_params(Some(name), false);
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| err(e.to_string()))?;
        let day = std::time::Duration::from_secs(86_400);
        match validity {
            Validity::Expired => params.not_after = now - day,
            Validity::NotYetValid => params.not_before = now + day,
            Validity::EndsInDays(days) => params.not_after = now + day * days,
        }
        let out = self.external_identity(stem);
        self.partner.issue(&params, &out)?;
        Ok(out)
    }

    /// Issue an external-identity certificate `CN=<name>` (partner CA) with the DNS SANs `dns`, into
    /// `external/<stem>.{crt,key}`.
    pub fn issue_external_identity_with_dns(&self, name: &str, stem: &str, dns: &[&str]) -> Result<CertFiles> {
        check_stem(stem)?;
        let mut params = leaf_params(Some(name), false);
        for d in dns {
            params.subject_alt_names.push(SanType::DnsName(ia5(d)?));
        }
        let out = self.external_identity(stem);
        self.partner.issue(&params, &out)?;
        Ok(out)
    }

    fn issue_workload_with(&self, ca: &Ca, name: &str, spec: &WorkloadSpec) -> Result<CertFiles> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(err(format!("invalid workload file name {name:?}")));
        }
        let mut params = leaf_params(spec.common_name.as_deref(), false);
        for uri in &spec.uri_sans {
            params.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for dns in &spec.dns_sans {
            params.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
        }
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if spec.key_cert_sign {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        if spec.without_digital_signature {
            params.key_usages.retain(|u| *u != KeyUsagePurpose::DigitalSignature);
        }
        if spec.without_key_usage {
            params.key_usages.clear();
        }
        let out = self.workload(name);
        ca.issue(&params, &out)?;
        Ok(out)
    }
}

fn check_stem(stem: &str) -> Result<()> {
    if stem.is_empty() || stem.contains('/') || stem.starts_with('.') {
        return Err(err(format!("invalid file name {stem:?}")));
    }
    Ok(())
}

fn gateway_params() -> Result<CertificateParams> {
    let mut gw = leaf_params(Some(GATEWAY_HOST), true);
    gw.subject_alt_names = vec![
        SanType::DnsName(ia5(GATEWAY_HOST)?),
        SanType::DnsName(ia5("localhost")?),
        SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
    ];
    Ok(gw)
}

fn parse_pem_certificate<T>(
    path: &Path,
    f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T> {
    let pem_text = fs::read(path).map_err(|e| err(format!("reading {}: {e}", path.display())))?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&pem_text).map_err(|e| err(format!("{}: not PEM: {e}", path.display())))?;
    let cert = pem.parse_x509().map_err(|e| err(format!("{}: not an X.509 certificate: {e}", path.display())))?;
    Ok(f(&cert))
}

/// The serial number of the (first) certificate in a PEM file, as upper-case hex without leading zeros —
/// the form nginx reports in `$ssl_client_serial` after [`normalize_serial`].
pub fn certificate_serial(path: &Path) -> Result<String> {
    let hex: String = parse_pem_certificate(path, |c| c.raw_serial().iter().map(|b| format!("{b:02X}")).collect())?;
    Ok(normalize_serial(&hex))
}

/// The subject of the (first) certificate in a PEM file, RFC 4514 style (e.g. `CN=team.app1`).
pub fn certificate_subject(path: &Path) -> Result<String> {
    parse_pem_certificate(path, |c| c.subject().to_string())
}

/// A hex serial number in one canonical form: upper case, no separators, no leading zeros.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_uppercase()).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}
