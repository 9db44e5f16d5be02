//! The configuration generation: 1 for the first configuration a gateway loads, +1 for each different
//! one. Workers (each with its own VM) agree on it through a record in the host's shared data,
//! `<fingerprint> <generation>`: a worker that loads the configuration another already recorded keeps its
//! generation instead of counting it again.

/// The shared-data key of the record.
pub const SHARED_DATA_KEY: &str = "egress_identity.config_generation";

/// FNV-1a of the configuration document: tells one configuration from another across workers.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A configuration's fingerprint and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    pub fingerprint: u64,
    pub generation: u64,
}

impl Generation {
    /// The generation of the configuration with `fingerprint`, given the record the host holds (if any).
    /// An absent or unreadable record counts as generation 0; the count saturates rather than wraps.
    pub fn next(stored: Option<&[u8]>, fingerprint: u64) -> Self {
        let stored = stored.and_then(Self::parse).unwrap_or(Self { fingerprint: 0, generation: 0 });
        let generation = if stored.fingerprint == fingerprint && stored.generation > 0 {
            stored.generation
        } else {
            stored.generation.saturating_add(1)
        };
        Self { fingerprint, generation }
    }

    /// The record as stored in shared data.
    pub fn record(&self) -> String {
        format!("{} {}", self.fingerprint, self.generation)
    }

    pub fn parse(record: &[u8]) -> Option<Self> {
        let (fingerprint, generation) = std::str::from_utf8(record).ok()?.split_once(' ')?;
        Some(Self { fingerprint: fingerprint.parse().ok()?, generation: generation.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn fingerprints_tell_documents_apart() {
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn generations_count_different_configurations_once() {
        let first = Generation::next(None, 7);
        assert_eq!(first, Generation { fingerprint: 7, generation: 1 });
        assert_eq!(first.record(), "7 1");
        // Another worker loading the same configuration keeps its generation.
        assert_eq!(Generation::next(Some(b"7 1"), 7).generation, 1);
        // A different configuration is the next generation.
        assert_eq!(Generation::next(Some(b"7 1"), 8), Generation { fingerprint: 8, generation: 2 });
        // A record that cannot be read starts the count again rather than failing.
        for bad in [&b"garbage"[..], b"7", b"x 1", b"7 -1", b"\xff 1", b""] {
            assert_eq!(Generation::next(Some(bad), 7).generation, 1, "{bad:?}");
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_count_saturates() {
        let max = format!("1 {}", u64::MAX);
        assert_eq!(Generation::next(Some(max.as_bytes()), 2).generation, u64::MAX);
        assert_eq!(Generation::next(Some(max.as_bytes()), 1).generation, u64::MAX);
    }
}
