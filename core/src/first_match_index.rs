//! An index answering "which is the first (lowest-ordinal) pattern set matching this value?" without
//! scanning the sets: exact values by hash, prefixes and suffixes by hashing the value's own prefixes and
//! suffixes of the lengths that occur, `*` by a single ordinal. It makes first-match evaluation of
//! thousands of single-field rules (principals, paths) or identity mappings cost a few lookups.

use rustc_hash::FxHashMap;

use crate::pattern::Pattern;

/// Empty until the first pattern is added: then one word that allocates nothing (a destination has
/// several indexes, most of them usually empty).
#[derive(Debug, Default)]
pub struct FirstMatchIndex(Option<Box<Tables>>);

#[derive(Debug, Default)]
struct Tables {
    exact: FxHashMap<Box<str>, usize>,
    prefixes: FxHashMap<Box<str>, usize>,
    /// The distinct prefix lengths present, ascending: only those prefixes of a value are looked up.
    prefix_lengths: Vec<usize>,
    suffixes: FxHashMap<Box<str>, usize>,
    suffix_lengths: Vec<usize>,
    any_present: Option<usize>,
}

fn keep_lowest(map: &mut FxHashMap<Box<str>, usize>, key: Box<str>, ordinal: usize) {
    map.entry(key).and_modify(|o| *o = (*o).min(ordinal)).or_insert(ordinal);
}

fn add_length(lengths: &mut Vec<usize>, len: usize) {
    if let Err(at) = lengths.binary_search(&len) {
        lengths.insert(at, len);
    }
}

impl FirstMatchIndex {
    /// Adds `pattern` under `ordinal` (the lowest ordinal wins for a repeated pattern).
    pub fn insert(&mut self, pattern: Pattern, ordinal: usize) {
        let tables = self.0.get_or_insert_with(Box::default);
        match pattern {
            Pattern::Exact(value) => keep_lowest(&mut tables.exact, value, ordinal),
            Pattern::Prefix(prefix) => {
                add_length(&mut tables.prefix_lengths, prefix.len());
                keep_lowest(&mut tables.prefixes, prefix, ordinal);
            }
            Pattern::Suffix(suffix) => {
                add_length(&mut tables.suffix_lengths, suffix.len());
                keep_lowest(&mut tables.suffixes, suffix, ordinal);
            }
            Pattern::AnyPresent => tables.any_present = Some(tables.any_present.map_or(ordinal, |o| o.min(ordinal))),
        }
    }

    /// The lowest ordinal with a pattern matching `value` (same semantics as
    /// [`PatternSet::matches`](crate::pattern::PatternSet::matches)).
    pub fn first_match(&self, value: Option<&str>) -> Option<usize> {
        let tables = self.0.as_deref()?;
        let value = value?;
        let mut best = tables.exact.get(value).copied();
        let mut consider = |found: Option<&usize>| {
            if let Some(&o) = found {
                best = Some(best.map_or(o, |b| b.min(o)));
            }
        };
        for &len in &tables.prefix_lengths {
            match value.get(..len) {
                Some(prefix) => consider(tables.prefixes.get(prefix)),
                None if len > value.len() => break,
                None => {} // not a char boundary: no stored prefix can end there
            }
        }
        for &len in &tables.suffix_lengths {
            let Some(start) = value.len().checked_sub(len) else { break };
            if let Some(suffix) = value.get(start..) {
                consider(tables.suffixes.get(suffix));
            }
        }
        if !value.is_empty() {
            consider(tables.any_present.as_ref());
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{verbatim, Case, PatternSet};
    use wasm_bindgen_test::wasm_bindgen_test;

    fn owned(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn agrees_with_a_scan_of_the_sets() {
        let lists: [&[&str]; 5] = [
            &["td/ns/a/sa/x"],
            &["td/ns/b/*", "td/ns/c/sa/y"],
            &["*/sa/x", "td/ns/a/*"],
            &["*"],
            &["td/ns/a/sa/x", "é*"],
        ];
        let sets: Vec<PatternSet> =
            lists.iter().map(|l| PatternSet::compile(owned(l), Case::Sensitive, &verbatim).unwrap()).collect();
        let mut index = FirstMatchIndex::default();
        for (i, l) in lists.iter().enumerate() {
            Pattern::parse_each(owned(l), Case::Sensitive, &verbatim, |p| index.insert(p, i)).unwrap();
        }
        for value in ["td/ns/a/sa/x", "td/ns/b/sa/z", "td/ns/c/sa/y", "other/sa/x", "zzz", "", "éa", "t"] {
            let scanned = sets.iter().position(|s| s.matches(Some(value)));
            assert_eq!(index.first_match(Some(value)), scanned, "{value:?}");
        }
        assert_eq!(index.first_match(None), None);
        assert_eq!(FirstMatchIndex::default().first_match(Some("x")), None);
    }
}
