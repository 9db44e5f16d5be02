//! The caller's principal from its TLS peer certificate, with the SPIFFE X.509-SVID checks Envoy does not
//! make: exactly one URI SAN, a valid SPIFFE ID, and a leaf that is not a CA.
//!
//! Envoy has already verified the chain and validity period; this module only reads the leaf. Parsing is
//! the expensive part of the filter, so the adapter caches results by certificate digest.
//!
//! Legacy mode (opt-in, `acceptLegacyKumaSans`): Kuma's older certificates carry `spiffe://mesh/svc` plus
//! `kuma://tag/value` URI SANs. Such a certificate is accepted when exactly one URI SAN is `spiffe://` and
//! every other is `kuma://`; it is flagged so the adapter can count these callers.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a peer certificate does not yield a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateError {
    /// Not a PEM X.509 certificate, or an extension that cannot be decoded (or appears twice).
    Unparsable,
    NoUriSan,
    MultipleUriSans,
    InvalidSpiffeId(SpiffeIdError),
    /// basicConstraints CA=true, or keyUsage keyCertSign or cRLSign: an X.509-SVID leaf must be neither.
    CaCertificate,
    /// No keyUsage extension, or one without digitalSignature: X509-SVID 4.3 requires both of a leaf.
    KeyUsage,
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparsable => f.write_str("peer certificate cannot be parsed"),
            Self::NoUriSan => f.write_str("peer certificate has no URI SAN"),
            Self::MultipleUriSans => f.write_str("peer certificate has more than one URI SAN"),
            Self::InvalidSpiffeId(e) => write!(f, "peer certificate URI SAN is not a SPIFFE ID: {e}"),
            Self::CaCertificate => f.write_str("peer certificate is a CA or may sign certificates or CRLs"),
            Self::KeyUsage => f.write_str("peer certificate has no keyUsage extension with digitalSignature"),
        }
    }
}

/// A peer certificate that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedCertificate {
    pub id: SpiffeId,
    /// Accepted only because of legacy mode: it also carries `kuma://` URI SANs.
    pub legacy_kuma_sans: bool,
}

/// Which URI SAN sets are acceptable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SanPolicy {
    /// SPIFFE X.509-SVID: exactly one URI SAN.
    #[default]
    Strict,
    /// Also: one `spiffe://` URI SAN plus any number of `kuma://` ones.
    AcceptLegacyKuma,
}

/// Validates a PEM-encoded leaf certificate and returns its SPIFFE ID.
///
/// Envoy may hand the PEM URL-encoded (as `%DOWNSTREAM_PEER_CERT%` does); both forms are accepted.
pub fn principal_from_pem(pem: &[u8], sans: SanPolicy) -> Result<ValidatedCertificate, CertificateError> {
    let decoded;
    let pem = if pem.contains(&b'%') {
        decoded = percent_decode(pem).ok_or(CertificateError::Unparsable)?;
        &decoded[..]
    } else {
        pem
    };
    let (_, pem) = parse_x509_pem(pem).map_err(|_| CertificateError::Unparsable)?;
    let cert = pem.parse_x509().map_err(|_| CertificateError::Unparsable)?;

    let is_ca = cert.basic_constraints().map_err(|_| CertificateError::Unparsable)?.is_some_and(|bc| bc.value.ca);
    let key_usage = cert.key_usage().map_err(|_| CertificateError::Unparsable)?;
    let signs = key_usage.as_ref().is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign());
    if is_ca || signs {
        return Err(CertificateError::CaCertificate);
    }
    // X509-SVID 4.3: the extension MUST be set on every SVID and a leaf MUST set digitalSignature; a leaf
    // that does not was not issued as an SVID.
    if !key_usage.is_some_and(|ku| ku.value.digital_signature()) {
        return Err(CertificateError::KeyUsage);
    }

    let san = cert.subject_alternative_name().map_err(|_| CertificateError::Unparsable)?;
    let mut uris = san.iter().flat_map(|san| san.value.general_names.iter()).filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let first = uris.next().ok_or(CertificateError::NoUriSan)?;
    let Some(second) = uris.next() else {
        let id = SpiffeId::parse(first).map_err(CertificateError::InvalidSpiffeId)?;
        return Ok(ValidatedCertificate { id, legacy_kuma_sans: false });
    };
    if sans == SanPolicy::Strict {
        return Err(CertificateError::MultipleUriSans);
    }
    let mut spiffe = None;
    for uri in [first, second].into_iter().chain(uris) {
        if uri.starts_with("spiffe://") {
            if spiffe.replace(uri).is_some() {
                return Err(CertificateError::MultipleUriSans);
            }
        } else if !uri.starts_with("kuma://") {
            return Err(CertificateError::MultipleUriSans);
        }
    }
    let uri = spiffe.ok_or(CertificateError::MultipleUriSans)?;
    let id = SpiffeId::parse(uri).map_err(CertificateError::InvalidSpiffeId)?;
    Ok(ValidatedCertificate { id, legacy_kuma_sans: true })
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(*bytes.next()?).to_digit(16)?;
            let lo = char::from(*bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    // Fixed test certificates, made by tests/certs/generate.sh.
    // (Native e2e tests make their own PKI at run time; these fixed ones let the core run on wasm too.)
    pub(crate) const APP1: &str = include_str!("../tests/certs/app1.pem");
    pub(crate) const TWO_URIS: &str = include_str!("../tests/certs/two-uris.pem");
    const NO_URI: &str = include_str!("../tests/certs/no-uri.pem");
    const CA: &str = include_str!("../tests/certs/ca.pem");
    const KEY_CERT_SIGN: &str = include_str!("../tests/certs/key-cert-sign.pem");
    const BAD_ID: &str = include_str!("../tests/certs/bad-spiffe-id.pem");

    const KUMA_LEGACY: &str = include_str!("../tests/certs/kuma-legacy.pem");
    const KUMA_TWO_SPIFFE: &str = include_str!("../tests/certs/kuma-two-spiffe.pem");
    const KUMA_OTHER_SCHEME: &str = include_str!("../tests/certs/kuma-other-scheme.pem");

    fn strict(pem: &str) -> Result<SpiffeId, CertificateError> {
        principal_from_pem(pem.as_bytes(), SanPolicy::Strict).map(|v| v.id)
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn valid_svid_yields_its_spiffe_id() {
        let v = principal_from_pem(APP1.as_bytes(), SanPolicy::Strict).unwrap();
        assert_eq!(v.id.as_str(), "spiffe://cluster.local/ns/team/sa/app1");
        assert!(!v.legacy_kuma_sans);
        let v = principal_from_pem(APP1.as_bytes(), SanPolicy::AcceptLegacyKuma).unwrap();
        assert!(!v.legacy_kuma_sans, "a plain SVID is not a legacy certificate");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn legacy_kuma_sans_only_in_legacy_mode() {
        assert_eq!(strict(KUMA_LEGACY), Err(CertificateError::MultipleUriSans));
        let v = principal_from_pem(KUMA_LEGACY.as_bytes(), SanPolicy::AcceptLegacyKuma).unwrap();
        assert_eq!(v.id.as_str(), "spiffe://default/backend");
        assert!(v.legacy_kuma_sans);
        for (name, pem) in
            [("two spiffe", KUMA_TWO_SPIFFE), ("other scheme", KUMA_OTHER_SCHEME), ("two uris", TWO_URIS)]
        {
            assert_eq!(
                principal_from_pem(pem.as_bytes(), SanPolicy::AcceptLegacyKuma).map(|v| v.id),
                Err(CertificateError::MultipleUriSans),
                "{name}"
            );
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn url_encoded_pem_is_accepted() {
        let encoded = APP1.replace('\n', "%0A").replace(' ', "%20").replace('+', "%2B").replace('/', "%2F");
        assert_eq!(strict(&encoded).unwrap().as_str(), "spiffe://cluster.local/ns/team/sa/app1");
        assert_eq!(strict("%zz"), Err(CertificateError::Unparsable));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn non_svids_are_rejected_with_their_reason() {
        assert_eq!(strict(TWO_URIS), Err(CertificateError::MultipleUriSans));
        assert_eq!(strict(NO_URI), Err(CertificateError::NoUriSan));
        assert_eq!(strict(CA), Err(CertificateError::CaCertificate));
        assert_eq!(strict(KEY_CERT_SIGN), Err(CertificateError::CaCertificate));
        assert_eq!(strict(BAD_ID), Err(CertificateError::InvalidSpiffeId(SpiffeIdError::DotSegment)));
        assert_eq!(strict("not a certificate"), Err(CertificateError::Unparsable));
        assert_eq!(strict(&APP1[..APP1.len() / 2]), Err(CertificateError::Unparsable));
    }
}
