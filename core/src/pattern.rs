//! Istio value patterns: exact, `prefix*`, `*suffix`, and `*` (any non-empty value).
//!
//! A [`PatternSet`] compiles the values of one policy field once, at configure time: exact values go
//! into a hash set, so a field with thousands of principals costs one lookup per request.

use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::fmt;

/// Why a pattern is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    /// `*` anywhere but at the start or the end, or at both (Istio has no such match).
    MisplacedWildcard,
    /// The field's rules refuse the value ([`crate::policy_value`]); the message says why.
    Invalid(String),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty value"),
            Self::MisplacedWildcard => {
                f.write_str("'*' is only allowed alone, as a prefix (\"*suffix\") or as a suffix (\"prefix*\")")
            }
            Self::Invalid(why) => f.write_str(why),
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

/// The most values one field may list.
pub const MAX_VALUES: usize = 100_000;
/// The longest value (a SPIFFE ID is at most 2048 bytes).
pub const MAX_VALUE_LEN: usize = 2048;

/// Up to this many exact values are compared linearly rather than hashed.
const LINEAR_EXACT_MAX: usize = 8;

/// Checks and rewrites a pattern value before it is classified (e.g. strips `spiffe://`), or says why the
/// value is refused; see [`normalizer`] and [`crate::policy_value`].
pub type Normalize<'a> = dyn Fn(&str) -> Result<Cow<'_, str>, String> + 'a;

/// One pattern value, classified; wildcard patterns are stored without their `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<str>),
    /// `prefix*`.
    Prefix(Box<str>),
    /// `*suffix`.
    Suffix(Box<str>),
    /// `*`: any non-empty value.
    AnyPresent,
}

impl Pattern {
    /// Classifies `value`, taking over its allocation (lower-cased first for [`Case::Insensitive`]).
    pub fn parse(mut value: String, case: Case) -> Result<Self, PatternError> {
        if case == Case::Insensitive {
            value.make_ascii_lowercase();
        }
        if value.is_empty() {
            return Err(PatternError::Empty);
        }
        if value == "*" {
            return Ok(Self::AnyPresent);
        }
        match value.bytes().filter(|&c| c == b'*').count() {
            0 => Ok(Self::Exact(value.into_boxed_str())),
            1 if value.ends_with('*') => {
                value.truncate(value.len().saturating_sub(1));
                Ok(Self::Prefix(value.into_boxed_str()))
            }
            1 if value.starts_with('*') => {
                value.replace_range(..1, "");
                Ok(Self::Suffix(value.into_boxed_str()))
            }
            _ => Err(PatternError::MisplacedWildcard),
        }
    }

    /// Parses the values of one field in order, handing each pattern to `add`; `normalize` may rewrite a
    /// value first (e.g. strip `spiffe://`). Stops at the first bad value and returns its index.
    pub fn parse_each(
        values: impl IntoIterator<Item = String>,
        case: Case,
        normalize: &Normalize<'_>,
        mut add: impl FnMut(Self),
    ) -> Result<(), (usize, PatternError)> {
        for (index, value) in values.into_iter().enumerate() {
            if value.is_empty() {
                return Err((index, PatternError::Empty));
            }
            if index >= MAX_VALUES {
                return Err((index, PatternError::Invalid(format!("more than {MAX_VALUES} values in one field"))));
            }
            if value.len() > MAX_VALUE_LEN {
                let why = format!("a value of {} bytes; at most {MAX_VALUE_LEN} are accepted", value.len());
                return Err((index, PatternError::Invalid(why)));
            }
            let value = normalized(value, normalize).map_err(|why| (index, PatternError::Invalid(why)))?;
            add(Self::parse(value, case).map_err(|e| (index, e))?);
        }
        Ok(())
    }
}

/// The pattern as written (`prefix*`, `*suffix`, `*`), after normalization.
impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => f.write_str(v),
            Self::Prefix(v) => write!(f, "{v}*"),
            Self::Suffix(v) => write!(f, "*{v}"),
            Self::AnyPresent => f.write_str("*"),
        }
    }
}

/// The compiled values of one field (e.g. `principals`). Matches when any value matches. One pointer
/// wide, so the many absent fields of a policy rule cost little.
#[derive(Clone, Debug, Default)]
pub struct PatternSet(Box<Matcher>);

#[derive(Clone, Debug, Default)]
struct Matcher {
    /// Exact values while there are few (compared one by one: no hashing on the data path)...
    exact: Vec<Box<str>>,
    /// ... or all of them once there are more than [`LINEAR_EXACT_MAX`].
    exact_set: FxHashSet<Box<str>>,
    prefixes: Vec<Box<str>>,
    suffixes: Vec<Box<str>>,
    any_present: bool,
}

impl PatternSet {
    /// Compiles `values` with [`Pattern::parse_each`]. On error, returns the index of the bad value.
    pub fn compile(
        values: impl IntoIterator<Item = String>,
        case: Case,
        normalize: &Normalize<'_>,
    ) -> Result<Self, (usize, PatternError)> {
        let mut set = Matcher::default();
        Pattern::parse_each(values, case, normalize, |pattern| match pattern {
            Pattern::Exact(value) => set.exact.push(value),
            Pattern::Prefix(prefix) => set.prefixes.push(prefix),
            Pattern::Suffix(suffix) => set.suffixes.push(suffix),
            Pattern::AnyPresent => set.any_present = true,
        })?;
        if set.exact.len() > LINEAR_EXACT_MAX {
            set.exact_set = std::mem::take(&mut set.exact).into_iter().collect();
        }
        Ok(Self(Box::new(set)))
    }

    /// Whether `value` matches any pattern. An absent value matches nothing.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let set = &*self.0;
        let Some(value) = value else { return false };
        (set.any_present && !value.is_empty())
            || set.exact.iter().any(|e| **e == *value)
            || (!set.exact_set.is_empty() && set.exact_set.contains(value))
            || set.prefixes.iter().any(|p| value.starts_with(&**p))
            || set.suffixes.iter().any(|s| value.ends_with(&**s))
    }
}

/// `value` normalized. Its own allocation is kept when normalizing leaves it as it is or only drops a
/// prefix (`spiffe://`).
fn normalized(mut value: String, normalize: &Normalize<'_>) -> Result<String, String> {
    let kept_from = match normalize(&value)? {
        Cow::Borrowed(tail) if value.ends_with(tail) => Ok(value.len() - tail.len()),
        rewritten => Err(rewritten.into_owned()),
    };
    Ok(match kept_from {
        Ok(0) => value,
        Ok(start) => {
            value.replace_range(..start, "");
            value
        }
        Err(rewritten) => rewritten,
    })
}

/// Gives a closure the higher-ranked signature a value normalizer needs (closures do not infer it).
pub fn normalizer<F: for<'x> Fn(&'x str) -> Result<Cow<'x, str>, String>>(f: F) -> F {
    f
}

/// Leaves a value as it is.
pub fn verbatim(value: &str) -> Result<Cow<'_, str>, String> {
    Ok(Cow::Borrowed(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn set(values: &[&str]) -> PatternSet {
        let owned: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        PatternSet::compile(owned, Case::Sensitive, &verbatim).unwrap()
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
            let s = PatternSet::compile(values[..n].to_vec(), Case::Sensitive, &verbatim).unwrap();
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
        let s = PatternSet::compile(owned, Case::Insensitive, &verbatim).unwrap();
        assert!(s.matches(Some("api.partner.example")));
        assert!(s.matches(Some("a.other.example")));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_bad_patterns_with_their_index() {
        let owned = vec!["ok".to_string(), "a*b".to_string()];
        assert_eq!(
            PatternSet::compile(owned, Case::Sensitive, &verbatim).unwrap_err(),
            (1, PatternError::MisplacedWildcard)
        );
        let owned = vec!["*a*".to_string()];
        assert_eq!(
            PatternSet::compile(owned, Case::Sensitive, &verbatim).unwrap_err().1,
            PatternError::MisplacedWildcard
        );
        let owned = vec![String::new()];
        assert_eq!(PatternSet::compile(owned, Case::Sensitive, &verbatim).unwrap_err().1, PatternError::Empty);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn normalize_is_applied_before_compiling() {
        let owned = vec!["spiffe://td/ns/a/sa/b".to_string()];
        let s = PatternSet::compile(owned, Case::Sensitive, &|v| {
            Ok(Cow::Borrowed(v.strip_prefix("spiffe://").unwrap_or(v)))
        })
        .unwrap();
        assert!(s.matches(Some("td/ns/a/sa/b")));
    }
}
