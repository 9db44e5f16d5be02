//! A bounded cache of validated peer certificates, keyed by the certificate's SHA-256 digest, so each
//! certificate is parsed once per worker rather than once per request. Oldest entries are evicted first.

use std::collections::VecDeque;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::peer_certificate::{CertificateError, ValidatedCertificate};

pub type CachedPrincipal = Result<Rc<ValidatedCertificate>, CertificateError>;

/// Bounded digest → validation result cache (failures are cached too: a bad certificate stays bad).
#[derive(Debug)]
pub struct PrincipalCache {
    capacity: usize,
    entries: FxHashMap<Box<str>, CachedPrincipal>,
    insertion_order: VecDeque<Box<str>>,
    hits: u64,
    misses: u64,
}

impl PrincipalCache {
    /// A cache holding at most `capacity` (at least 1) certificates.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            entries: FxHashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            insertion_order: VecDeque::with_capacity(capacity.min(4096)),
            hits: 0,
            misses: 0,
        }
    }

    /// The cached result for `digest`, or the result of `validate` (then cached).
    pub fn get_or_validate(
        &mut self,
        digest: &str,
        validate: impl FnOnce() -> Result<ValidatedCertificate, CertificateError>,
    ) -> CachedPrincipal {
        if let Some(found) = self.entries.get(digest) {
            self.hits += 1;
            return found.clone();
        }
        self.misses += 1;
        let result = validate().map(Rc::new);
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self.insertion_order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(digest.into(), result.clone());
        self.insertion_order.push_back(digest.into());
        result
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::SpiffeId;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn id(n: u32) -> Result<ValidatedCertificate, CertificateError> {
        let id = SpiffeId::parse(&format!("spiffe://td/w{n}")).unwrap();
        Ok(ValidatedCertificate { id, legacy_kuma_sans: false })
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn validates_once_per_digest() {
        let mut cache = PrincipalCache::new(8);
        let mut calls = 0;
        for _ in 0..5 {
            let got = cache.get_or_validate("d1", || {
                calls += 1;
                id(1)
            });
            assert_eq!(got.unwrap().id.as_str(), "spiffe://td/w1");
        }
        assert_eq!(calls, 1);
        assert_eq!(cache.stats(), (4, 1));
        let bad = cache.get_or_validate("d2", || Err(CertificateError::MultipleUriSans));
        assert_eq!(bad, Err(CertificateError::MultipleUriSans));
        assert_eq!(cache.get_or_validate("d2", || id(2)), Err(CertificateError::MultipleUriSans), "failures are cached");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn stays_bounded_and_evicts_oldest() {
        let mut cache = PrincipalCache::new(3);
        for n in 0..10 {
            let _ = cache.get_or_validate(&format!("d{n}"), || id(n));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        let mut recomputed = false;
        let _ = cache.get_or_validate("d0", || {
            recomputed = true;
            id(0)
        });
        assert!(recomputed, "d0 was evicted");
        let mut recomputed = false;
        let _ = cache.get_or_validate("d9", || {
            recomputed = true;
            id(9)
        });
        assert!(!recomputed, "d9 is still cached");
        let mut tiny = PrincipalCache::new(0);
        let _ = tiny.get_or_validate("a", || id(1));
        let _ = tiny.get_or_validate("b", || id(2));
        assert_eq!(tiny.len(), 1, "a capacity of 0 is raised to 1");
    }
}
