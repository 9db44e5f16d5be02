//! Istio value patterns: exact, `prefix*`, `*suffix`, and `*` (any non-empty value).
//!
//! A [`PatternSet`] compiles the values of one policy field once, at configure time: exact values go
//! into a hash set, so a field with thousands of principals costs one lookup per request.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Why a pattern is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    /// `*` anywhere but at the start or the end, or at both (Istio has no such match).
    MisplacedWildcard,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty value"),
            Self::MisplacedWildcard => f.write_str(
                "'*' is only allowed alone, as a prefix (\"*suffix\") or as a suffix (\"prefix*\")",
            ),
        }
    }
}

/// How pattern values are compared with request values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Sensitive,
    /// Patterns are stored lower-cased; callers pass lower-cased values (hosts).
    Insensitive,
}

/// Up to this many exact values are compared linearly rather than hashed.
const LINEAR_EXACT_MAX: usize = 8;

/// The compiled values of one field (e.g. `principals`). Matches when any value matches.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    /// Exact values while there are few (compared one by one: no hashing on the data path)...
    exact: Vec<Box<str>>,
    /// ... or all of them once there are more than [`LINEAR_EXACT_MAX`].
    exact_set: HashSet<Box<str>>,
    prefixes: Vec<Box<str>>,
    suffixes: Vec<Box<str>>,
    any_present: bool,
}

impl PatternSet {
    /// Compiles `values`; `normalize` may rewrite each value first (e.g. strip `spiffe://`).
    /// On error, returns the index of the bad value.
    pub fn compile<'a, I>(values: I, case: Case, normalize: &dyn Fn(&'a str) -> Cow<'a, str>) -> Result<Self, (usize, PatternError)>
    where
        I: IntoIterator<Item = &'a String>,
    {
        let mut set = Self::default();
        for (index, raw) in values.into_iter().enumerate() {
            set.add(&normalize(raw), case).map_err(|e| (index, e))?;
        }
        if set.exact.len() > LINEAR_EXACT_MAX {
            set.exact_set = std::mem::take(&mut set.exact).into_iter().collect();
        }
        Ok(set)
    }

    fn add(&mut self, value: &str, case: Case) -> Result<(), PatternError> {
        let value: Box<str> = match case {
            Case::Sensitive => value.into(),
            Case::Insensitive => value.to_ascii_lowercase().into(),
        };
        if value.is_empty() {
            return Err(PatternError::Empty);
        }
        if &*value == "*" {
            self.any_present = true;
            return Ok(());
        }
        let stars = value.matches('*').count();
        if let Some(prefix) = value.strip_suffix('*').filter(|_| stars == 1) {
            self.prefixes.push(prefix.into());
        } else if let Some(suffix) = value.strip_prefix('*').filter(|_| stars == 1) {
            self.suffixes.push(suffix.into());
        } else if stars == 0 {
            self.exact.push(value);
        } else {
            return Err(PatternError::MisplacedWildcard);
        }
        Ok(())
    }

    /// The exact values.
    pub fn exact_values(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().chain(&self.exact_set).map(|v| &**v)
    }

    /// The `prefix*` patterns, without the `*`.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.prefixes.iter().map(|v| &**v)
    }

    /// The `*suffix` patterns, without the `*`.
    pub fn suffixes(&self) -> impl Iterator<Item = &str> {
        self.suffixes.iter().map(|v| &**v)
    }

    /// Whether the set holds `*` (any non-empty value).
    pub fn matches_any_present(&self) -> bool {
        self.any_present
    }

    /// Whether `value` matches any pattern. An absent value matches nothing.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        (self.any_present && !value.is_empty())
            || self.exact.iter().any(|e| **e == *value)
            || (!self.exact_set.is_empty() && self.exact_set.contains(value))
            || self.prefixes.iter().any(|p| value.starts_with(&**p))
            || self.suffixes.iter().any(|s| value.ends_with(&**s))
    }
}

/// Gives a closure the higher-ranked signature a value normalizer needs (closures do not infer it).
pub fn normalizer<F: for<'x> Fn(&'x str) -> Cow<'x, str>>(f: F) -> F {
    f
}

/// Leaves a value as it is.
pub fn verbatim(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn set(values: &[&str]) -> PatternSet {
        let owned: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        PatternSet::compile(&owned, Case::Sensitive, &verbatim).unwrap()
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn exact_prefix_suffix_and_presence() {
        let s = set(&["GET", "/api/*", "*.json"]);
        assert!(s.matches(Some("GET")));
        assert!(!s.matches(Some("get")), "exact match is case-sensitive");
        assert!(s.matches(Some("/api/v1")));
        assert!(s.matches(Some("/api/")));
        assert!(!s.matches(Some("/ap")));
        assert!(s.matches(Some("/x/y.json")));
        assert!(!s.matches(Some("/x/y.jsonl")));
        assert!(!s.matches(None));
        let any = set(&["*"]);
        assert!(any.matches(Some("x")));
        assert!(!any.matches(Some("")), "'*' means present and non-empty");
        assert!(!any.matches(None));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn small_and_large_exact_sets_match_the_same() {
        let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
        for n in [1, LINEAR_EXACT_MAX, LINEAR_EXACT_MAX + 1, 20] {
            let s = PatternSet::compile(&values[..n], Case::Sensitive, &verbatim).unwrap();
            for (i, v) in values.iter().enumerate() {
                assert_eq!(s.matches(Some(v)), i < n, "{n} values, {v}");
            }
            assert!(!s.matches(Some("v")));
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn empty_set_matches_nothing() {
        assert!(!PatternSet::default().matches(Some("x")));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn case_insensitive_sets_store_lower_case() {
        let owned = vec!["API.Partner.Example".to_string(), "*.Other.Example".to_string()];
        let s = PatternSet::compile(&owned, Case::Insensitive, &verbatim).unwrap();
        assert!(s.matches(Some("api.partner.example")));
        assert!(s.matches(Some("a.other.example")));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_bad_patterns_with_their_index() {
        let owned = vec!["ok".to_string(), "a*b".to_string()];
        assert_eq!(
            PatternSet::compile(&owned, Case::Sensitive, &verbatim).unwrap_err(),
            (1, PatternError::MisplacedWildcard)
        );
        let owned = vec!["*a*".to_string()];
        assert_eq!(PatternSet::compile(&owned, Case::Sensitive, &verbatim).unwrap_err().1, PatternError::MisplacedWildcard);
        let owned = vec![String::new()];
        assert_eq!(PatternSet::compile(&owned, Case::Sensitive, &verbatim).unwrap_err().1, PatternError::Empty);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn normalize_is_applied_before_compiling() {
        let owned = vec!["spiffe://td/ns/a/sa/b".to_string()];
        let s = PatternSet::compile(&owned, Case::Sensitive, &|v| Cow::Borrowed(v.strip_prefix("spiffe://").unwrap_or(v))).unwrap();
        assert!(s.matches(Some("td/ns/a/sa/b")));
    }
}
