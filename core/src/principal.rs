//! The caller's principal: read from the configured sources in order, the first one that has a value
//! wins. The host is reached only through a property-lookup closure, so this runs (and is tested) without
//! proxy-wasm.
//!
//! * `peer_certificate`: the downstream TLS peer certificate. When the host gives its SHA-256 digest, the
//!   validation result is cached under it and the certificate itself is read only on a miss.
//! * `istio_peer_principal`: filter state `io.istio.peer_principal` (an Istio waypoint), `spiffe://td/path`
//!   or Istio's `td/path`.
//!
//! A host call that fails is reported as [`HostError`] (the adapter answers 500, `host_error`) and is never
//! cached: the next request reads the certificate again.

use std::rc::Rc;

use crate::certificate_cache::CertificateCache;
use crate::config_document::PrincipalSource;
use crate::peer_certificate::{principal_from_pem, CertificateError, SanPolicy, ValidatedCertificate};
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// A host property the principal is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrincipalProperty {
    /// `connection.sha256_peer_certificate_digest`: the cache key.
    PeerCertificateDigest,
    /// `connection.peer_certificate`: the PEM.
    PeerCertificate,
    /// `filter_state.io.istio.peer_principal`.
    IstioPeerPrincipal,
}

impl PrincipalProperty {
    /// The property's path as the host names it.
    pub fn path(self) -> &'static [&'static str] {
        match self {
            Self::PeerCertificateDigest => &["connection", "sha256_peer_certificate_digest"],
            Self::PeerCertificate => &["connection", "peer_certificate"],
            Self::IstioPeerPrincipal => &["filter_state", "io.istio.peer_principal"],
        }
    }
}

/// A host call that failed (as opposed to a property the host does not have).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError;

/// What a lookup returns: the value, `None` when the host has no such property (or it is empty), or the
/// host's failure.
pub type Lookup = Result<Option<Vec<u8>>, HostError>;

/// Why no principal could be established for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalError {
    /// No configured source yielded a principal (e.g. no client certificate).
    Missing,
    /// The peer certificate is not an acceptable X.509-SVID.
    Certificate(CertificateError),
    /// A principal from another source (filter state) is not a SPIFFE ID.
    InvalidSpiffeId(SpiffeIdError),
}

/// The caller's principal and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Certificate(Rc<ValidatedCertificate>),
    FilterState(SpiffeId),
}

impl Caller {
    pub fn id(&self) -> &SpiffeId {
        match self {
            Self::Certificate(c) => &c.id,
            Self::FilterState(id) => id,
        }
    }

    /// Accepted only because of `acceptLegacyKumaSans`.
    pub fn legacy_kuma_sans(&self) -> bool {
        matches!(self, Self::Certificate(c) if c.legacy_kuma_sans)
    }
}

/// How the certificate cache took part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// No certificate was looked up by digest.
    None,
    Hit,
    Miss,
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub principal: Result<Caller, PrincipalError>,
    pub cache: CacheUse,
}

/// The caller's principal from the first of `sources` that has one. `cache` is `None` when the adapter
/// cannot lend it (the certificate is then validated without caching).
pub fn resolve(
    sources: &[PrincipalSource],
    sans: SanPolicy,
    mut cache: Option<&mut CertificateCache>,
    mut lookup: impl FnMut(PrincipalProperty) -> Lookup,
) -> Result<Resolution, HostError> {
    let mut used = CacheUse::None;
    for source in sources {
        let found = match source {
            PrincipalSource::PeerCertificate => peer_certificate(sans, cache.as_deref_mut(), &mut lookup, &mut used)?
                .map(|r| r.map(Caller::Certificate).map_err(PrincipalError::Certificate)),
            PrincipalSource::IstioPeerPrincipal => lookup(PrincipalProperty::IstioPeerPrincipal)?.map(|value| {
                istio_peer_principal(&value).map(Caller::FilterState).map_err(PrincipalError::InvalidSpiffeId)
            }),
        };
        if let Some(principal) = found {
            return Ok(Resolution { principal, cache: used });
        }
    }
    Ok(Resolution { principal: Err(PrincipalError::Missing), cache: used })
}

/// The validated peer certificate; `None` when the connection has none.
fn peer_certificate(
    sans: SanPolicy,
    cache: Option<&mut CertificateCache>,
    lookup: &mut impl FnMut(PrincipalProperty) -> Lookup,
    used: &mut CacheUse,
) -> Result<Option<Result<Rc<ValidatedCertificate>, CertificateError>>, HostError> {
    let digest = lookup(PrincipalProperty::PeerCertificateDigest)?;
    let (Some(cache), Some(digest)) = (cache, digest.as_deref().and_then(|d| std::str::from_utf8(d).ok())) else {
        // No digest (no certificate, or a host that does not expose it), or no cache: validate each time.
        return Ok(lookup(PrincipalProperty::PeerCertificate)?.map(|pem| principal_from_pem(&pem, sans).map(Rc::new)));
    };
    if let Some(cached) = cache.get(digest) {
        *used = CacheUse::Hit;
        return Ok(Some(cached));
    }
    // The host named a certificate by its digest but cannot show it: its failure, not the certificate's.
    let pem = lookup(PrincipalProperty::PeerCertificate)?.ok_or(HostError)?;
    *used = CacheUse::Miss;
    Ok(Some(cache.insert(digest, principal_from_pem(&pem, sans))))
}

/// The value of filter state `io.istio.peer_principal`: `spiffe://td/path`, or Istio's `td/path`.
pub fn istio_peer_principal(value: &[u8]) -> Result<SpiffeId, SpiffeIdError> {
    let text = std::str::from_utf8(value).map_err(|_| SpiffeIdError::WrongScheme)?;
    if text.starts_with("spiffe://") {
        SpiffeId::parse(text)
    } else {
        SpiffeId::parse(&format!("spiffe://{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_certificate::tests::{APP1, TWO_URIS};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use wasm_bindgen_test::wasm_bindgen_test;

    use PrincipalProperty::{IstioPeerPrincipal, PeerCertificate, PeerCertificateDigest};
    use PrincipalSource::{IstioPeerPrincipal as Istio, PeerCertificate as Cert};

    const BOTH: [PrincipalSource; 2] = [Cert, Istio];

    /// A host with fixed properties that records every lookup.
    #[derive(Default)]
    struct Host {
        properties: HashMap<PrincipalProperty, Lookup>,
        calls: RefCell<Vec<PrincipalProperty>>,
    }

    impl Host {
        fn with(mut self, property: PrincipalProperty, value: Lookup) -> Self {
            self.properties.insert(property, value);
            self
        }

        fn lookup(&self, property: PrincipalProperty) -> Lookup {
            self.calls.borrow_mut().push(property);
            self.properties.get(&property).cloned().unwrap_or(Ok(None))
        }

        fn reads(&self, property: PrincipalProperty) -> usize {
            self.calls.borrow().iter().filter(|p| **p == property).count()
        }

        fn resolve(
            &self,
            sources: &[PrincipalSource],
            cache: Option<&mut CertificateCache>,
        ) -> Result<Resolution, HostError> {
            resolve(sources, SanPolicy::Strict, cache, |p| self.lookup(p))
        }
    }

    fn value(text: &str) -> Lookup {
        Ok(Some(text.as_bytes().to_vec()))
    }

    fn app1_host() -> Host {
        Host::default().with(PeerCertificateDigest, value("d-app1")).with(PeerCertificate, value(APP1))
    }

    fn principal(r: &Result<Resolution, HostError>) -> Result<&str, PrincipalError> {
        r.as_ref().unwrap().principal.as_ref().map(|c| c.id().as_str()).map_err(|e| *e)
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_first_source_that_has_a_principal_wins() {
        let host = app1_host().with(IstioPeerPrincipal, value("cluster.local/ns/waypoint/sa/caller"));
        assert_eq!(principal(&host.resolve(&BOTH, None)), Ok("spiffe://cluster.local/ns/team/sa/app1"));
        assert_eq!(host.reads(IstioPeerPrincipal), 0, "a later source is not read once one has a value");
        assert_eq!(principal(&host.resolve(&[Istio, Cert], None)), Ok("spiffe://cluster.local/ns/waypoint/sa/caller"));
        // No certificate: the next source is asked.
        let waypoint = Host::default().with(IstioPeerPrincipal, value("spiffe://cluster.local/ns/a/sa/b"));
        let r = waypoint.resolve(&BOTH, None);
        assert_eq!(principal(&r), Ok("spiffe://cluster.local/ns/a/sa/b"));
        assert!(matches!(r.unwrap().principal, Ok(Caller::FilterState(_))));
        assert_eq!(principal(&Host::default().resolve(&BOTH, None)), Err(PrincipalError::Missing));
        assert_eq!(
            principal(&waypoint.resolve(&[Cert], None)),
            Err(PrincipalError::Missing),
            "only configured sources"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn istio_filter_state_in_both_forms() {
        assert_eq!(istio_peer_principal(b"td/ns/a/sa/b").unwrap().as_str(), "spiffe://td/ns/a/sa/b");
        assert_eq!(istio_peer_principal(b"spiffe://td/ns/a/sa/b").unwrap().as_str(), "spiffe://td/ns/a/sa/b");
        assert!(istio_peer_principal(b"https://td/a").is_err());
        assert_eq!(istio_peer_principal(b"\xff"), Err(SpiffeIdError::WrongScheme));
        let host = Host::default().with(IstioPeerPrincipal, value("TD/a"));
        assert!(matches!(principal(&host.resolve(&BOTH, None)), Err(PrincipalError::InvalidSpiffeId(_))));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_certificate_is_read_and_validated_once_per_digest() {
        let host = app1_host();
        let mut cache = CertificateCache::new(8);
        let first = host.resolve(&BOTH, Some(&mut cache)).unwrap();
        assert_eq!(first.cache, CacheUse::Miss);
        for _ in 0..3 {
            let again = host.resolve(&BOTH, Some(&mut cache)).unwrap();
            assert_eq!(again.cache, CacheUse::Hit);
            assert_eq!(again.principal, first.principal);
        }
        assert_eq!(host.reads(PeerCertificate), 1, "the PEM is read on the miss only");
        assert_eq!(host.reads(PeerCertificateDigest), 4);
        // Without a cache (or without a digest), every request validates and the cache is not used.
        let r = host.resolve(&BOTH, None).unwrap();
        assert_eq!(r.cache, CacheUse::None);
        let no_digest = Host::default().with(PeerCertificate, value(APP1));
        let r = no_digest.resolve(&BOTH, Some(&mut cache)).unwrap();
        assert_eq!(
            (r.cache, principal(&Ok(r.clone()))),
            (CacheUse::None, Ok("spiffe://cluster.local/ns/team/sa/app1"))
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_bad_certificate_is_cached_as_bad() {
        let host = Host::default().with(PeerCertificateDigest, value("d-two")).with(PeerCertificate, value(TWO_URIS));
        let mut cache = CertificateCache::new(8);
        let bad = Err(PrincipalError::Certificate(CertificateError::MultipleUriSans));
        assert_eq!(principal(&host.resolve(&BOTH, Some(&mut cache))), bad);
        let again = host.resolve(&BOTH, Some(&mut cache));
        assert_eq!(principal(&again), bad);
        assert_eq!(again.unwrap().cache, CacheUse::Hit);
        assert_eq!(host.reads(PeerCertificate), 1);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_host_failure_is_reported_and_never_cached() {
        let mut cache = CertificateCache::new(8);
        // The digest is there, the certificate cannot be read: the host's failure.
        let failing =
            Host::default().with(PeerCertificateDigest, value("d-app1")).with(PeerCertificate, Err(HostError));
        assert_eq!(failing.resolve(&BOTH, Some(&mut cache)), Err(HostError));
        // The digest is there, the certificate is not: also the host's failure, not an unparsable certificate.
        let missing = Host::default().with(PeerCertificateDigest, value("d-app1"));
        assert_eq!(missing.resolve(&BOTH, Some(&mut cache)), Err(HostError));
        assert!(cache.is_empty(), "nothing was cached for the digest");
        // Once the host answers, the same digest yields the caller.
        let r = app1_host().resolve(&BOTH, Some(&mut cache)).unwrap();
        assert_eq!(
            (principal(&Ok(r.clone())), r.cache),
            (Ok("spiffe://cluster.local/ns/team/sa/app1"), CacheUse::Miss)
        );
        // Every other failing read is reported too.
        let digest_fails = Host::default().with(PeerCertificateDigest, Err(HostError));
        assert_eq!(digest_fails.resolve(&BOTH, Some(&mut cache)), Err(HostError));
        let state_fails = Host::default().with(IstioPeerPrincipal, Err(HostError));
        assert_eq!(state_fails.resolve(&BOTH, None), Err(HostError));
        let pem_fails = Host::default().with(PeerCertificate, Err(HostError));
        assert_eq!(pem_fails.resolve(&BOTH, None), Err(HostError));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn legacy_kuma_callers_are_flagged() {
        let id = SpiffeId::parse("spiffe://mesh/svc").unwrap();
        let legacy = Caller::Certificate(Rc::new(ValidatedCertificate { id: id.clone(), legacy_kuma_sans: true }));
        assert!(legacy.legacy_kuma_sans());
        assert!(!Caller::FilterState(id).legacy_kuma_sans());
    }
}
