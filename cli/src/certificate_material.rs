//! Certificate material checked against the identity or role it serves, before `sds` or `secrets` writes any
//! of it: a certificate chain with its key (an external identity's client certificate, the gateway's server
//! certificate) or a CA bundle (the mesh CA, a destination's partner CA), each read from a user's PEM file.
//!
//! Refused, each problem naming the role and the file: a file that is not PEM certificates (or a key); a
//! private key in a certificate file (it would be copied into a non-secret field: Envoy's `/config_dump`,
//! Kuma's `-cert` Secret); a certificate expired or not yet valid (one expiring within
//! [`EXPIRY_WARNING_DAYS`] is a warning); a key that is not the leaf certificate's; a leaf whose subject or
//! SANs differ from what the policy declares for the identity (the core's
//! [`ExpectedCertificate::differences`] judges); a certificate of a CA bundle that is not a CA. What is
//! written holds only the file's `CERTIFICATE` blocks, or its one private key block, as given.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use egress_identity_core::identity::{ExpectedCertificate, PresentedCertificate};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// A certificate expiring within this many days is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

const DAY: i64 = 86_400;

/// What a file serves: how messages name it, and what it is checked for.
#[derive(Clone, Copy, Debug)]
pub enum Role<'a> {
    /// An external identity's client certificate, and what the policy declares it carries.
    Identity { name: &'a str, expected: &'a ExpectedCertificate },
    /// The gateway's server certificate, presented to callers.
    Gateway,
    /// The CA bundle callers' certificates are verified against.
    MeshCa,
    /// The CA bundle a destination's partner is verified against.
    PartnerCa(&'a str),
}

impl fmt::Display for Role<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Identity { name, .. } => write!(f, "identity {name}"),
            Role::Gateway => f.write_str("the gateway certificate"),
            Role::MeshCa => f.write_str("the mesh CA"),
            Role::PartnerCa(destination) => write!(f, "the CA of destination {destination}"),
        }
    }
}

/// A certificate chain and its key, checked, as they are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCertificate {
    /// The chain file's `CERTIFICATE` blocks (leaf first), as given: nothing else.
    pub chain: String,
    /// The key file's private key block, as given.
    pub key: String,
}

/// Reads and checks material as of one instant, and keeps the warnings (certificates expiring soon).
#[derive(Debug)]
pub struct Checker {
    /// Unix seconds.
    now: i64,
    pub warnings: Vec<String>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// A checker as of now.
    pub fn new() -> Self {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Self { now, warnings: Vec::new() }
    }

    /// The chain in `cert` and the key in `key` for `role` (an identity or the gateway): every problem
    /// when refused, one line each.
    pub fn keyed_certificate(
        &mut self,
        role: Role<'_>,
        cert: &Path,
        key: &Path,
    ) -> Result<KeyedCertificate, Vec<String>> {
        let at = |path: &Path, problem: String| format!("{role}: {}: {problem}", path.display());
        let private = read_key(key).map_err(|problem| at(key, problem));
        let ((certificates, mut problems), (key_text, public)) = match (self.certificates(role, cert), private) {
            (Ok(chain), Ok(private)) => (chain, private),
            (chain, private) => {
                let mut problems = chain.err().unwrap_or_default();
                problems.extend(private.err());
                return Err(problems);
            }
        };
        let parsed: Vec<X509Certificate<'_>> = certificates.iter().filter_map(|c| x509(&c.der).ok()).collect();
        if let Some(leaf) = parsed.first() {
            let public_key_of =
                |c: &X509Certificate<'_>| c.public_key().subject_public_key.data.as_ref() == public.as_slice();
            if !public_key_of(leaf) {
                problems.push(format!(
                    "{role}: {} and {}: the leaf certificate's public key is not the private key's{}",
                    cert.display(),
                    key.display(),
                    match parsed.iter().position(public_key_of) {
                        Some(i) => format!(" (the key is certificate {}'s: put the leaf first in the file)", i + 1),
                        None => " (a certificate and a key of different pairs)".into(),
                    }
                ));
            }
            if let Role::Identity { expected, .. } = role {
                match presented(leaf) {
                    Ok(presented) => problems.extend(
                        expected
                            .differences(&presented)
                            .into_iter()
                            .map(|d| at(cert, format!("the leaf certificate: {d}"))),
                    ),
                    Err(e) => problems.push(at(cert, format!("the leaf certificate: {e}"))),
                }
            }
        }
        if problems.is_empty() {
            Ok(KeyedCertificate { chain: blocks_text(&certificates), key: key_text })
        } else {
            Err(problems)
        }
    }

    /// The CA bundle in `path` for `role` (the mesh CA or a partner CA): its `CERTIFICATE` blocks, each a CA.
    pub fn ca_bundle(&mut self, role: Role<'_>, path: &Path) -> Result<String, Vec<String>> {
        let (bundle, mut problems) = self.certificates(role, path)?;
        for (i, block) in bundle.iter().enumerate() {
            let Ok(cert) = x509(&block.der) else { continue };
            let at = |problem: String| format!("{role}: {}: {} {problem}", path.display(), which(i, &bundle, &cert));
            match cert.basic_constraints() {
                Ok(Some(bc)) if bc.value.ca => {}
                Ok(found) => problems.push(at(format!(
                    "is not a CA ({}): every certificate of a CA bundle needs basicConstraints CA:TRUE",
                    if found.is_some() { "basicConstraints CA:FALSE" } else { "no basicConstraints" }
                ))),
                Err(e) => problems.push(at(format!("has an unreadable basicConstraints extension: {e}"))),
            }
        }
        if problems.is_empty() {
            Ok(blocks_text(&bundle))
        } else {
            Err(problems)
        }
    }

    /// The `CERTIFICATE` blocks of `path`, with the problems of each (not X.509, not valid now); refused
    /// outright when the file holds a private key or no certificate.
    fn certificates(&mut self, role: Role<'_>, path: &Path) -> Result<(Vec<Block>, Vec<String>), Vec<String>> {
        let at = |problem: String| format!("{role}: {}: {problem}", path.display());
        let text = read(path).map_err(|e| vec![at(e)])?;
        let blocks = blocks(&text).map_err(|e| vec![at(e)])?;
        let certificates: Vec<Block> = blocks.iter().filter(|b| b.label == "CERTIFICATE").cloned().collect();
        if let Some(key) = blocks.iter().find(|b| is_private_key(&b.label)) {
            let found = if certificates.is_empty() {
                "no PEM certificate, but a private key"
            } else {
                "a private key besides the certificates"
            };
            return Err(vec![at(format!(
                "{found} ({}) where only certificates belong: give the certificates alone here, and the key as the key (a key here would be written where it is not secret)",
                key.label
            ))]);
        }
        if certificates.is_empty() {
            return Err(vec![at("no PEM certificate".into())]);
        }
        let mut problems = Vec::new();
        for (i, block) in certificates.iter().enumerate() {
            let cert = match x509(&block.der) {
                Ok(cert) => cert,
                Err(e) => {
                    problems.push(at(format!("certificate {} is not X.509: {e}", i + 1)));
                    continue;
                }
            };
            let (from, until) = (cert.validity().not_before, cert.validity().not_after);
            let what = which(i, &certificates, &cert);
            if until.timestamp() < self.now {
                problems.push(at(format!("{what} expired on {}", date(&until))));
            } else if from.timestamp() > self.now {
                problems.push(at(format!("{what} is not valid before {}", date(&from))));
            } else if until.timestamp() - self.now < EXPIRY_WARNING_DAYS * DAY {
                let days = (until.timestamp() - self.now) / DAY;
                let when = if days == 0 { "within a day".to_string() } else { format!("in {days} days") };
                self.warnings.push(at(format!("{what} expires on {}, {when}", date(&until))));
            }
        }
        Ok((certificates, problems))
    }
}

/// What a certificate presents, as the core compares it: every CN of the subject, every DNS and URI SAN.
pub fn presented(cert: &X509Certificate<'_>) -> Result<PresentedCertificate, String> {
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().map_or_else(|_| format!("#{}", hex(cn.attr_value().data)), str::to_owned))
        .collect();
    let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
    let san = cert.subject_alternative_name().map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    for name in san.iter().flat_map(|san| &san.value.general_names) {
        match name {
            GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
            GeneralName::URI(uri) => uris.push((*uri).to_owned()),
            _ => {}
        }
    }
    Ok(PresentedCertificate { common_names, dns_names, uris })
}

/// One PEM block of a file: its label, its lines as given, and its decoded bytes.
#[derive(Clone, Debug)]
struct Block {
    label: String,
    text: String,
    der: Vec<u8>,
    /// Whether it has RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`): a legacy encrypted key.
    headers: bool,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// The PEM blocks of `text`, in order (text between blocks is ignored).
fn blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut current: Option<(String, String, String, bool)> = None; // label, text, base64, headers
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let marker = |kind: &str| line.strip_prefix(kind).and_then(|l| l.strip_suffix("-----")).map(str::to_owned);
        match current.as_mut() {
            None => {
                if let Some(label) = marker("-----BEGIN ") {
                    current = Some((label, format!("{line}\n"), String::new(), false));
                }
            }
            Some((label, block, body, headers)) => {
                block.push_str(line);
                block.push('\n');
                if let Some(end) = marker("-----END ") {
                    if end != *label {
                        return Err(format!("line {}: BEGIN {label} ended by END {end}", n + 1));
                    }
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("line {}: the {label} block is not base64: {e}", n + 1));
                    let der = if *headers { der.unwrap_or_default() } else { der? };
                    out.push(Block { label: label.clone(), text: block.clone(), der, headers: *headers });
                    current = None;
                } else if line.starts_with("-----BEGIN ") {
                    return Err(format!("line {}: a block begins inside the {label} block", n + 1));
                } else if line.contains(':') {
                    *headers = true;
                } else {
                    body.push_str(line.trim());
                }
            }
        }
    }
    match current {
        Some((label, ..)) => Err(format!("the {label} block has no END line")),
        None => Ok(out),
    }
}

fn blocks_text(blocks: &[Block]) -> String {
    blocks.iter().map(|b| b.text.as_str()).collect()
}

fn is_private_key(label: &str) -> bool {
    label.ends_with("PRIVATE KEY")
}

fn x509(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der).map(|(_, cert)| cert).map_err(|e| e.to_string())
}

/// How messages name certificate `i` of `all`: `the certificate (CN=…)` or `certificate 2 (CN=…)`.
fn which(i: usize, all: &[Block], cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    let subject = if subject.is_empty() { "no subject".to_string() } else { subject };
    if all.len() == 1 {
        format!("the certificate ({subject})")
    } else {
        format!("certificate {} ({subject})", i + 1)
    }
}

fn date(t: &x509_parser::time::ASN1Time) -> String {
    let t = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys ring reads (through rcgen).
const SUPPORTED: &str = "ECDSA P-256 or P-384, Ed25519, RSA of 2048 to 8192 bits";

/// The one private key of `path`: its block as given, and its public key as a certificate's
/// SubjectPublicKeyInfo carries it.
fn read_key(path: &Path) -> Result<(String, Vec<u8>), String> {
    let blocks = blocks(&read(path)?)?;
    let keys: Vec<&Block> = blocks.iter().filter(|b| is_private_key(&b.label)).collect();
    let key = match keys.as_slice() {
        [key] => *key,
        [] if blocks.iter().any(|b| b.label == "CERTIFICATE") => {
            return Err("no PEM private key, but certificates (the certificate file given as the key?)".into())
        }
        [] => return Err("no PEM private key".into()),
        more => return Err(format!("{} private keys: give the one of the certificate", more.len())),
    };
    if key.headers || key.label == "ENCRYPTED PRIVATE KEY" {
        return Err(format!(
            "an encrypted private key ({}): nothing it is written for is given a passphrase; decrypt it with: openssl pkey -in KEY -out KEY.plain",
            key.label
        ));
    }
    let public = match key.label.as_str() {
        "PRIVATE KEY" => public_key(&key.der).map_err(|e| format!("a PKCS#8 private key that is not {SUPPORTED} ({e})"))?,
        "RSA PRIVATE KEY" => public_key(&pkcs8(RSA_ENCRYPTION, &key.der))
            .map_err(|e| format!("an RSA (PKCS#1) private key that cannot be read ({e}): RSA keys of 2048 to 8192 bits are supported"))?,
        "EC PRIVATE KEY" => [EC_P256, EC_P384]
            .iter()
            .find_map(|curve| public_key(&pkcs8(curve, &key.der)).ok())
            .ok_or_else(|| "an EC (SEC1) private key that is not on P-256 or P-384, or is unreadable".to_string())?,
        other => return Err(format!("a {other} block, not a supported private key: {SUPPORTED}, in PEM as PKCS#8 (PRIVATE KEY), SEC1 (EC PRIVATE KEY) or PKCS#1 (RSA PRIVATE KEY)")),
    };
    Ok((key.text.clone(), public))
}

/// The public key of a PKCS#8 private key.
fn public_key(pkcs8: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
    rcgen::KeyPair::try_from(pkcs8).map(|k| k.public_key_raw().to_vec())
}

/// AlgorithmIdentifier contents: rsaEncryption, NULL.
const RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
/// id-ecPublicKey, prime256v1.
const EC_P256: &[u8] =
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// id-ecPublicKey, secp384r1.
const EC_P384: &[u8] =
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// A PKCS#1 or SEC1 key wrapped as PKCS#8 (RFC 5208 PrivateKeyInfo, version 0), which ring reads.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut info = vec![0x02, 0x01, 0x00];
    info.extend(der(0x30, algorithm));
    info.extend(der(0x04, key));
    der(0x30, &info)
}

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let len = content.len().to_be_bytes();
            let significant: Vec<u8> = len.iter().copied().skip_while(|b| *b == 0).collect();
            out.push(0x80 | u8::try_from(significant.len()).unwrap_or(0));
            out.extend(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test-only keys, made with openssl 3.0: `genrsa -traditional 2048`, `ecparam -genkey -noout` (prime256v1,
    // secp384r1), and each as `pkcs8 -topk8 -nocrypt`.
    const RSA_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAmriWiu/O1WRCPqNQYKoxeV9CmG5S+ZFPUXg/MO9Eg/CH496W\n\
Vm7io0NrmvK0oAfbwqSGWvve0SpypMAKtS859Q/Kw5bPXEIuHhWenHKm/ptP1T8I\n\
hoXVsldzPzsLvysYfFYSLUBHcAB61GD1SDPNXkPHf/r9vsXD5RgMv5ouu+I7ouot\n\
DSTU6Oqmq4FW27MnwBXbTLcnOcDJy1SOLNDNfs82g0jxmH5TAdumVMjVXcECDalV\n\
CAwc4OXqt2jePUkRaTYbKo4LN4T2YKezsCXCN9bliu6PFVLIXx2aI0iBvXyv5wsw\n\
JuhxPk6q/32FwuLkP05rfgzlPBByjBRXBYzTkwIDAQABAoIBABEoj2lxFtsLd11C\n\
91MBDOOM8PG+qm0K9GTwlPF0V4DaV/epY7rKKVA51eElMWrd9D0tycilThycPIKQ\n\
2Z8mUaMf0TjHrM9qd3rWovRusp5h0wSvLN7eUMiqchl9DtxwhxKi6Pkju8hsBTMw\n\
XYNYW1os4h8LUsCpZgQuGpvVGYG0dOuUWAz3tc8bTemTVeNOapKn/7+J0o2HEFvn\n\
EUlbi4N34FPwcY+b9JRaDpAWEIR5ih9Phqj1xp+2d680VldEAf0gGfsD+e4CgqVI\n\
ql2KNBbvIfn1EYKeXtPeElMDCzyktPLvvQl5+Qky+B9XqG7km8kH2tdMN1qFDeuA\n\
d1G2UsECgYEA1rPxNLZexUaeait80dtNZKdDc3YQTyhGlz/PRaBG1QvHWNB92jPn\n\
0EokzHfjbpvUwVSXfh0tEsB9lzqykUlI7+UItfC38KjzQAOXA4xjq5T/aKtMkOfX\n\
r5MSvRk63CG7zxOB4kTaqc+nDAR/s8Gw+t2zb7/e0K0grroA90qNI7kCgYEAuHsd\n\
eVl1g6EhprOKPpqFraTHDLKrR2VAOXwvBA+J8JgbUPRH3lR5DsDHg7Pf4qcUvPWY\n\
UlJFM1r63+Ws8oPEoWfs5ggsb94EO++d367wYmVMrXFZK7JYhwlMcRQCJ82hi1FU\n\
DFNdk3jwjmoppUCPOnoiGlihYIsePmBu2qbvL6sCgYBP7rgbRtYrnen2XvBedMXw\n\
djEveEIEJlt5jeEN6+jTAkqaLyzbor1oF2Jx2SSMFmnz/BlWc2hHdfCL7+dxHZaQ\n\
8XT3v4HLkCrXpz5+rLKiu5sHDdc4j4gGLrwoOI9oSwrPwlR1t+qsk8l+OOKOOss3\n\
6ngWX5mFmR70zfz0FAZNyQKBgDNWn6crjBZreu/nOuudGOJv3qzb8+pUdQEKXBMn\n\
N93qln962501qNLAN0WhgwaSNKU5O4B9QKDACtzQD8cVgFzijPye/a7L/CWp0ydy\n\
iZb4VdRWnNgaM6Swo8M8LDVjdjdNFLSxZnMpztfzF0/TnYhKgL8QNyikzm/RakgS\n\
+LEtAoGAbQMtcaS+3muYS7fQWuioA6G9KqHgx8NlwDECj2liUnTyc5zaOAaugL7Y\n\
wjrqsiAeoBmRljsoxuPXcW1QsUPXuf6cd8kVU4320CRH78vVRu8WB1Ug2nGBX/uF\n\
yPToqzg+PAlbYXJT5jFZBEKQhFVedZTSUhf1eunqqh9dZCujRJM=\n\
-----END RSA PRIVATE KEY-----\n\
";
    const RSA_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCauJaK787VZEI+\n\
o1BgqjF5X0KYblL5kU9ReD8w70SD8Ifj3pZWbuKjQ2ua8rSgB9vCpIZa+97RKnKk\n\
wAq1Lzn1D8rDls9cQi4eFZ6ccqb+m0/VPwiGhdWyV3M/Owu/Kxh8VhItQEdwAHrU\n\
YPVIM81eQ8d/+v2+xcPlGAy/mi674jui6i0NJNTo6qargVbbsyfAFdtMtyc5wMnL\n\
VI4s0M1+zzaDSPGYflMB26ZUyNVdwQINqVUIDBzg5eq3aN49SRFpNhsqjgs3hPZg\n\
p7OwJcI31uWK7o8VUshfHZojSIG9fK/nCzAm6HE+Tqr/fYXC4uQ/Tmt+DOU8EHKM\n\
FFcFjNOTAgMBAAECggEAESiPaXEW2wt3XUL3UwEM44zw8b6qbQr0ZPCU8XRXgNpX\n\
96ljusopUDnV4SUxat30PS3JyKVOHJw8gpDZnyZRox/ROMesz2p3etai9G6ynmHT\n\
BK8s3t5QyKpyGX0O3HCHEqLo+SO7yGwFMzBdg1hbWiziHwtSwKlmBC4am9UZgbR0\n\
65RYDPe1zxtN6ZNV405qkqf/v4nSjYcQW+cRSVuLg3fgU/Bxj5v0lFoOkBYQhHmK\n\
H0+GqPXGn7Z3rzRWV0QB/SAZ+wP57gKCpUiqXYo0Fu8h+fURgp5e094SUwMLPKS0\n\
8u+9CXn5CTL4H1eobuSbyQfa10w3WoUN64B3UbZSwQKBgQDWs/E0tl7FRp5qK3zR\n\
201kp0NzdhBPKEaXP89FoEbVC8dY0H3aM+fQSiTMd+Num9TBVJd+HS0SwH2XOrKR\n\
SUjv5Qi18LfwqPNAA5cDjGOrlP9oq0yQ59evkxK9GTrcIbvPE4HiRNqpz6cMBH+z\n\
wbD63bNvv97QrSCuugD3So0juQKBgQC4ex15WXWDoSGms4o+moWtpMcMsqtHZUA5\n\
fC8ED4nwmBtQ9EfeVHkOwMeDs9/ipxS89ZhSUkUzWvrf5azyg8ShZ+zmCCxv3gQ7\n\
753frvBiZUytcVkrsliHCUxxFAInzaGLUVQMU12TePCOaimlQI86eiIaWKFgix4+\n\
YG7apu8vqwKBgE/uuBtG1iud6fZe8F50xfB2MS94QgQmW3mN4Q3r6NMCSpovLNui\n\
vWgXYnHZJIwWafP8GVZzaEd18Ivv53EdlpDxdPe/gcuQKtenPn6ssqK7mwcN1ziP\n\
iAYuvCg4j2hLCs/CVHW36qyTyX444o46yzfqeBZfmYWZHvTN/PQUBk3JAoGAM1af\n\
pyuMFmt67+c6650Y4m/erNvz6lR1AQpcEyc33eqWf3rbnTWo0sA3RaGDBpI0pTk7\n\
gH1AoMAK3NAPxxWAXOKM/J79rsv8JanTJ3KJlvhV1Fac2BozpLCjwzwsNWN2N00U\n\
tLFmcynO1/MXT9OdiEqAvxA3KKTOb9FqSBL4sS0CgYBtAy1xpL7ea5hLt9Ba6KgD\n\
ob0qoeDHw2XAMQKPaWJSdPJznNo4Bq6AvtjCOuqyIB6gGZGWOyjG49dxbVCxQ9e5\n\
/px3yRVTjfbQJEfvy9VG7xYHVSDacYFf+4XI9OirOD48CVthclPmMVkEQpCEVV51\n\
lNJSF/V66eqqH11kK6NEkw==\n\
-----END PRIVATE KEY-----\n\
";
    const P256_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEINcE1s5P4kSdwFs3RQLsZtsLRouXWlo3Aey4Sc+hJ3HVoAoGCCqGSM49\n\
AwEHoUQDQgAEofarKnIFlrQbForfv1D7LO+90i1FDaAUbbI8rgFy3VHVjgrDUrBr\n\
OP8GpzPmDaoPBCHpbZb5tOxBbYETt5DQxw==\n\
-----END EC PRIVATE KEY-----\n\
";
    const P256_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1wTWzk/iRJ3AWzdF\n\
Auxm2wtGi5daWjcB7LhJz6EncdWhRANCAASh9qsqcgWWtBsWit+/UPss773SLUUN\n\
oBRtsjyuAXLdUdWOCsNSsGs4/wanM+YNqg8EIeltlvm07EFtgRO3kNDH\n\
-----END PRIVATE KEY-----\n\
";
    const P384_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MIGkAgEBBDBs6youBfD8Nna+cScAlznmbFii5Q3LzIyuShDsVh8mqVMa8zbVmFeq\n\
To0+STI+k9igBwYFK4EEACKhZANiAAR9wknRrxOPcM7zw3pFCt4exCr98eUKAzlW\n\
DV2o92VouCLcikFvjjIXbDZ++LclKWBzkky5dMNiAsRYvFF4BSOIV4UNWT7vxgTv\n\
UwKL4oN6BAuMEmpJLUDnJCB5VsYG3ZA=\n\
-----END EC PRIVATE KEY-----\n\
";
    const P384_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBs6youBfD8Nna+cScA\n\
lznmbFii5Q3LzIyuShDsVh8mqVMa8zbVmFeqTo0+STI+k9ihZANiAAR9wknRrxOP\n\
cM7zw3pFCt4exCr98eUKAzlWDV2o92VouCLcikFvjjIXbDZ++LclKWBzkky5dMNi\n\
AsRYvFF4BSOIV4UNWT7vxgTvUwKL4oN6BAuMEmpJLUDnJCB5VsYG3ZA=\n\
-----END PRIVATE KEY-----\n\
";

    struct Files(std::path::PathBuf);

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("egress-identity-material-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Files(dir)
        }
        fn put(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate `CN=<cn>` for the PKCS#8 key `key`.
    fn certificate(cn: &str, key: &rcgen::KeyPair) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        params.self_signed(key).unwrap().pem()
    }

    fn key_from(text: &str) -> rcgen::KeyPair {
        let blocks = blocks(text).unwrap();
        rcgen::KeyPair::try_from(blocks[0].der.as_slice()).unwrap()
    }

    fn identity(name: &str) -> ExpectedCertificate {
        ExpectedCertificate { common_name: Some(name.into()), defaulted: true, ..Default::default() }
    }

    #[test]
    fn every_supported_key_format_is_matched_with_its_certificate() {
        let files = Files::new("formats");
        let expected = identity("id");
        let role = Role::Identity { name: "id", expected: &expected };
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let other = files.put("other.key", &pkcs8_pem(&rcgen::KeyPair::generate().unwrap()));
        let cases: [(&str, rcgen::KeyPair, String); 7] = [
            ("rsa-pkcs8", key_from(RSA_PKCS8), RSA_PKCS8.into()),
            ("rsa-pkcs1", key_from(RSA_PKCS8), RSA_PKCS1.into()),
            ("p256-pkcs8", key_from(P256_PKCS8), P256_PKCS8.into()),
            ("p256-sec1", key_from(P256_PKCS8), P256_SEC1.into()),
            ("p384-sec1", key_from(P384_PKCS8), P384_SEC1.into()),
            ("p384-generated", key_from(&pkcs8_pem(&p384)), pkcs8_pem(&p384)),
            ("ed25519", key_from(&pkcs8_pem(&ed25519)), pkcs8_pem(&ed25519)),
        ];
        for (name, signer, key_text) in cases {
            let cert = files.put(&format!("{name}.crt"), &certificate("id", &signer));
            let key = files.put(&format!("{name}.key"), &key_text);
            let got = Checker::new().keyed_certificate(role, &cert, &key);
            assert_eq!(got.as_ref().map(|k| k.key.as_str()), Ok(key_text.as_str()), "{name}");
            let mismatch = Checker::new().keyed_certificate(role, &cert, &other).unwrap_err();
            assert!(mismatch[0].contains("public key is not the private key's"), "{name}: {mismatch:?}");
        }
    }

    /// PKCS#8 PEM (rcgen's `pem` feature is off in the CLI).
    fn pkcs8_pem(key: &rcgen::KeyPair) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.serialize_der());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    #[test]
    fn unsupported_and_ambiguous_keys_are_refused_with_a_way_out() {
        let files = Files::new("keys");
        let expected = identity("id");
        let role = Role::Identity { name: "id", expected: &expected };
        let signer = key_from(P256_PKCS8);
        let cert_text = certificate("id", &signer);
        let cert = files.put("id.crt", &cert_text);
        let problem = |key_text: &str| {
            let key = files.put("id.key", key_text);
            Checker::new().keyed_certificate(role, &cert, &key).unwrap_err().join("\n")
        };
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(problem(encrypted).contains("encrypted private key"), "{}", problem(encrypted));
        let legacy = P256_SEC1.replacen("\n", "\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n", 1);
        assert!(problem(&legacy).contains("encrypted private key"), "{}", problem(&legacy));
        assert!(problem(&format!("{P256_PKCS8}{RSA_PKCS8}")).contains("2 private keys"));
        assert!(problem(&cert_text).contains("no PEM private key, but certificates"));
        let dsa = "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n";
        assert!(problem(dsa).contains("a DSA PRIVATE KEY block, not a supported private key"), "{}", problem(dsa));
        // The key's block alone is written, not what surrounds it.
        let with_params =
            format!("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{P256_SEC1}");
        let key = files.put("params.key", &with_params);
        assert_eq!(Checker::new().keyed_certificate(role, &cert, &key).unwrap().key, P256_SEC1);
    }

    #[test]
    fn what_is_written_for_a_certificate_is_certificates_only() {
        let files = Files::new("only");
        let signer = key_from(P256_PKCS8);
        let cert_text = certificate("id", &signer);
        let expected = identity("id");
        let role = Role::Identity { name: "id", expected: &expected };
        let key = files.put("id.key", P256_PKCS8);
        let noisy = files.put(
            "noisy.crt",
            &format!("subject=CN=id\n{cert_text}-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"),
        );
        assert_eq!(Checker::new().keyed_certificate(role, &noisy, &key).unwrap().chain, cert_text);
        for given in [format!("{cert_text}{P256_PKCS8}"), format!("{P256_SEC1}{cert_text}")] {
            let combined = files.put("combined.crt", &given);
            let e = Checker::new().keyed_certificate(role, &combined, &key).unwrap_err();
            assert!(e[0].contains("a private key besides the certificates"), "{e:?}");
            assert!(e[0].starts_with("identity id: "), "{e:?}");
        }
    }

    #[test]
    fn the_leaf_is_judged_by_the_core_and_the_key_order_is_explained() {
        let files = Files::new("leaf");
        let (a, b) = (key_from(P256_PKCS8), key_from(P384_PKCS8));
        let chain = files.put("chain.crt", &format!("{}{}", certificate("intermediate", &b), certificate("id", &a)));
        let key = files.put("id.key", P256_PKCS8);
        let expected = identity("id");
        let e = Checker::new()
            .keyed_certificate(Role::Identity { name: "id", expected: &expected }, &chain, &key)
            .unwrap_err();
        assert!(e.iter().any(|p| p.contains("the key is certificate 2's: put the leaf first in the file")), "{e:?}");
        assert!(e.iter().any(|p| p.contains("CN=intermediate, not the declared CN=id")), "{e:?}");
    }

    #[test]
    fn pem_structure_errors_are_named() {
        assert!(blocks("-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err().contains("no END line"));
        assert!(blocks("-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .contains("ended by"));
        assert!(blocks("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .contains("not base64"));
        let crlf = blocks("junk\r\n-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----\r\n").unwrap();
        assert_eq!((crlf.len(), crlf[0].der.as_slice()), (1, &[0u8, 0, 0][..]));
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
