//! A bounded cache of validated peer certificates, keyed by the certificate's SHA-256 digest, so each
//! certificate is parsed once per worker rather than once per request. Oldest entries are evicted first.
//!
//! Only what the certificate itself decides is cached — a principal, or the reason the certificate is
//! unacceptable. A host call that failed while reading it never is ([`crate::principal::resolve`]).

use std::collections::VecDeque;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::peer_certificate::{CertificateError, ValidatedCertificate};

/// The validation result of one certificate.
pub type CachedCertificate = Result<Rc<ValidatedCertificate>, CertificateError>;

/// Bounded digest → validation result cache (failures are cached too: a bad certificate stays bad).
#[derive(Debug)]
pub struct CertificateCache {
    capacity: usize,
    entries: FxHashMap<Box<str>, CachedCertificate>,
    insertion_order: VecDeque<Box<str>>,
}

impl CertificateCache {
    /// A cache holding at most `capacity` (at least 1) certificates.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            entries: FxHashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            insertion_order: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    /// The cached result for `digest`, if any.
    pub fn get(&self, digest: &str) -> Option<CachedCertificate> {
        self.entries.get(digest).cloned()
    }

    /// Caches the validation result of the certificate with `digest` (evicting the oldest entry when
    /// full) and returns it.
    pub fn insert(
        &mut self,
        digest: &str,
        result: Result<ValidatedCertificate, CertificateError>,
    ) -> CachedCertificate {
        let result = result.map(Rc::new);
        if self.entries.contains_key(digest) {
            self.entries.insert(digest.into(), result.clone());
            return result;
        }
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
    fn keeps_results_and_failures() {
        let mut cache = CertificateCache::new(8);
        assert!(cache.get("d1").is_none());
        let stored = cache.insert("d1", id(1));
        assert_eq!(stored.unwrap().id.as_str(), "spiffe://td/w1");
        assert_eq!(cache.get("d1").unwrap().unwrap().id.as_str(), "spiffe://td/w1");
        let _ = cache.insert("d2", Err(CertificateError::MultipleUriSans));
        assert_eq!(cache.get("d2"), Some(Err(CertificateError::MultipleUriSans)), "a bad certificate stays bad");
        let _ = cache.insert("d1", id(3));
        assert_eq!(cache.len(), 2, "inserting a digest again replaces its entry");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn stays_bounded_and_evicts_oldest() {
        let mut cache = CertificateCache::new(3);
        for n in 0..10 {
            let _ = cache.insert(&format!("d{n}"), id(n));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("d0").is_none(), "d0 was evicted");
        assert!(cache.get("d9").is_some(), "d9 is still cached");
        let mut tiny = CertificateCache::new(0);
        let _ = tiny.insert("a", id(1));
        let _ = tiny.insert("b", id(2));
        assert_eq!(tiny.len(), 1, "a capacity of 0 is raised to 1");
        assert!(tiny.get("b").is_some());
    }
}
