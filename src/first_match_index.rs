//! An index answering "which is the first (lowest-ordinal) pattern set matching this value?" without
//! scanning the sets: exact values by hash, prefixes and suffixes by hashing the value's own prefixes and
//! suffixes of the lengths that occur, `*` by a single ordinal. It makes first-match evaluation of
//! thousands of single-field rules (principals, paths) or identity mappings cost a few lookups.

use std::collections::HashMap;

use crate::pattern::PatternSet;

#[derive(Debug, Default)]
pub struct FirstMatchIndex {
    exact: HashMap<Box<str>, usize>,
    prefixes: HashMap<Box<str>, usize>,
    /// The distinct prefix lengths present, ascending: only those prefixes of a value are looked up.
    prefix_lengths: Vec<usize>,
    suffixes: HashMap<Box<str>, usize>,
    suffix_lengths: Vec<usize>,
    any_present: Option<usize>,
}

fn keep_lowest(map: &mut HashMap<Box<str>, usize>, key: &str, ordinal: usize) {
    map.entry(key.into()).and_modify(|o| *o = (*o).min(ordinal)).or_insert(ordinal);
}

fn add_length(lengths: &mut Vec<usize>, len: usize) {
    if let Err(at) = lengths.binary_search(&len) {
        lengths.insert(at, len);
    }
}

impl FirstMatchIndex {
    /// Adds every pattern of `set` under `ordinal` (the lowest ordinal wins for a repeated pattern).
    pub fn insert(&mut self, set: &PatternSet, ordinal: usize) {
        for value in set.exact_values() {
            keep_lowest(&mut self.exact, value, ordinal);
        }
        for prefix in set.prefixes() {
            keep_lowest(&mut self.prefixes, prefix, ordinal);
            add_length(&mut self.prefix_lengths, prefix.len());
        }
        for suffix in set.suffixes() {
            keep_lowest(&mut self.suffixes, suffix, ordinal);
            add_length(&mut self.suffix_lengths, suffix.len());
        }
        if set.matches_any_present() {
            self.any_present = Some(self.any_present.map_or(ordinal, |o| o.min(ordinal)));
        }
    }

    /// The lowest ordinal whose set matches `value` (same semantics as [`PatternSet::matches`]).
    pub fn first_match(&self, value: Option<&str>) -> Option<usize> {
        let value = value?;
        let mut best = self.exact.get(value).copied();
        let mut consider = |found: Option<&usize>| {
            if let Some(&o) = found {
                best = Some(best.map_or(o, |b| b.min(o)));
            }
        };
        for &len in &self.prefix_lengths {
            match value.get(..len) {
                Some(prefix) => consider(self.prefixes.get(prefix)),
                None if len > value.len() => break,
                None => {} // not a char boundary: no stored prefix can end there
            }
        }
        for &len in &self.suffix_lengths {
            let Some(start) = value.len().checked_sub(len) else { break };
            if let Some(suffix) = value.get(start..) {
                consider(self.suffixes.get(suffix));
            }
        }
        if !value.is_empty() {
            consider(self.any_present.as_ref());
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{verbatim, Case};
    use wasm_bindgen_test::wasm_bindgen_test;

    fn set(values: &[&str]) -> PatternSet {
        let owned: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        PatternSet::compile(&owned, Case::Sensitive, &verbatim).unwrap()
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn agrees_with_a_scan_of_the_sets() {
        let sets = [
            set(&["td/ns/a/sa/x"]),
            set(&["td/ns/b/*", "td/ns/c/sa/y"]),
            set(&["*/sa/x", "td/ns/a/*"]),
            set(&["*"]),
            set(&["td/ns/a/sa/x", "é*"]),
        ];
        let mut index = FirstMatchIndex::default();
        for (i, s) in sets.iter().enumerate() {
            index.insert(s, i);
        }
        for value in ["td/ns/a/sa/x", "td/ns/b/sa/z", "td/ns/c/sa/y", "other/sa/x", "zzz", "", "éa", "t"] {
            let scanned = sets.iter().position(|s| s.matches(Some(value)));
            assert_eq!(index.first_match(Some(value)), scanned, "{value:?}");
        }
        assert_eq!(index.first_match(None), None);
        assert_eq!(FirstMatchIndex::default().first_match(Some("x")), None);
    }
}
