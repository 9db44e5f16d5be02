//! SPIFFE IDs as defined by the SPIFFE-ID specification (`spiffe://<trust-domain>/<path>`).
//!
//! Parsing is strict: the rules below are the ones of SPIFFE-ID.md section 2, and every rejection names
//! the rule that failed, so the CLI and deny reasons can say why.

use std::fmt;

const SCHEME: &str = "spiffe://";
/// Maximum length of a trust domain name (SPIFFE-ID.md 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID in a URI SAN (SPIFFE-ID.md 2.3).
pub const MAX_ID_LEN: usize = 2048;

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: Box<str>,
    /// Byte offset where the path starts (the `/` after the trust domain, or the end).
    path_start: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpiffeIdError {
    /// Does not start with `spiffe://` (lower case).
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    TrustDomainTooLong,
    /// A trust-domain character outside `a-z 0-9 . - _` (e.g. upper case).
    BadTrustDomainChar(char),
    /// A path character outside `a-z A-Z 0-9 . - _`.
    BadPathChar(char),
    /// `:` after the trust domain: SPIFFE IDs carry no port.
    Port,
    /// `@` in the authority: SPIFFE IDs carry no userinfo.
    UserInfo,
    /// `%`: SPIFFE IDs are never percent-encoded.
    PercentEncoding,
    /// `?`: SPIFFE IDs carry no query.
    Query,
    /// `#`: SPIFFE IDs carry no fragment.
    Fragment,
    /// `//` in the path.
    EmptySegment,
    /// A path segment that is `.` or `..`.
    DotSegment,
    /// The path ends with `/`.
    TrailingSlash,
    /// Longer than 2048 bytes.
    TooLong,
}

impl SpiffeIdError {
    /// Stable, machine-readable name of the rule that failed.
    pub fn code(self) -> &'static str {
        match self {
            Self::WrongScheme => "wrong_scheme",
            Self::EmptyTrustDomain => "empty_trust_domain",
            Self::TrustDomainTooLong => "trust_domain_too_long",
            Self::BadTrustDomainChar(_) => "bad_trust_domain_char",
            Self::BadPathChar(_) => "bad_path_char",
            Self::Port => "port",
            Self::UserInfo => "userinfo",
            Self::PercentEncoding => "percent_encoding",
            Self::Query => "query",
            Self::Fragment => "fragment",
            Self::EmptySegment => "empty_path_segment",
            Self::DotSegment => "dot_path_segment",
            Self::TrailingSlash => "trailing_slash",
            Self::TooLong => "too_long",
        }
    }
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongScheme => f.write_str("scheme must be \"spiffe://\""),
            Self::EmptyTrustDomain => f.write_str("trust domain is empty"),
            Self::TrustDomainTooLong => write!(f, "trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"),
            Self::BadTrustDomainChar(c) => {
                write!(f, "trust domain contains {c:?}; only lower-case letters, digits, '.', '-' and '_' are allowed")
            }
            Self::BadPathChar(c) => {
                write!(f, "path contains {c:?}; only letters, digits, '.', '-' and '_' are allowed in segments")
            }
            Self::Port => f.write_str("a SPIFFE ID has no port"),
            Self::UserInfo => f.write_str("a SPIFFE ID has no userinfo (\"user@\")"),
            Self::PercentEncoding => f.write_str("a SPIFFE ID is never percent-encoded"),
            Self::Query => f.write_str("a SPIFFE ID has no query (\"?\")"),
            Self::Fragment => f.write_str("a SPIFFE ID has no fragment (\"#\")"),
            Self::EmptySegment => f.write_str("path contains an empty segment (\"//\")"),
            Self::DotSegment => f.write_str("path contains a \".\" or \"..\" segment"),
            Self::TrailingSlash => f.write_str("path ends with \"/\""),
            Self::TooLong => write!(f, "SPIFFE ID is longer than {MAX_ID_LEN} bytes"),
        }
    }
}

impl std::error::Error for SpiffeIdError {}

/// A byte allowed in a trust domain name (SPIFFE-ID.md 2.1).
pub fn is_trust_domain_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
}

/// A byte allowed in a path segment (SPIFFE-ID.md 2.2).
pub fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')
}

/// Validates a trust domain name (no scheme), as used in configuration.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td.bytes().find(|c| !is_trust_domain_char(*c)) {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(char::from(c))),
        None => Ok(()),
    }
}

/// Validates a path (empty, or `/segment/...`), as in a SPIFFE ID.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The path starts with '/', so the first split element is empty and skipped.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment.bytes().find(|c| !is_path_char(*c)) {
            return Err(SpiffeIdError::BadPathChar(char::from(c)));
        }
    }
    Ok(())
}

impl SpiffeId {
    /// Parses and validates `spiffe://<trust-domain>[/<path>]`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        // URI parts a SPIFFE ID must not have get their own reasons, before the character rules.
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoding);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        if td.contains('@') {
            return Err(SpiffeIdError::UserInfo);
        }
        if td.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self { id: id.into(), path_start: SCHEME.len() + td_len })
    }

    /// The whole ID, `spiffe://td/path`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        self.id.get(SCHEME.len()..self.path_start).unwrap_or_default()
    }

    /// The path, empty or starting with `/`, e.g. `/ns/team/sa/app1`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// The ID without its scheme, `td/path`: the form Istio's `principals` match against.
    pub fn principal(&self) -> &str {
        self.id.get(SCHEME.len()..).unwrap_or_default()
    }

    /// The Kubernetes namespace of an Istio-style workload ID: `Some(ns)` only when the path starts with
    /// `/ns/<ns>/sa/<sa>`. Any other path has no namespace, so `namespaces` rules never match it (and
    /// `notNamespaces` rules always do).
    pub fn namespace(&self) -> Option<&str> {
        let mut segments = self.path().split('/').skip(1);
        match (segments.next(), segments.next(), segments.next(), segments.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(_)) => Some(ns),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn err(id: &str) -> SpiffeIdError {
        match SpiffeId::parse(id) {
            Ok(ok) => panic!("{id} should be rejected, parsed as {ok:?}"),
            Err(e) => e,
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn parses_istio_style_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/team/sa/app1").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/team/sa/app1");
        assert_eq!(id.principal(), "cluster.local/ns/team/sa/app1");
        assert_eq!(id.namespace(), Some("team"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/team/sa/app1");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn parses_id_without_path_and_non_istio_path() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "");
        assert_eq!(id.namespace(), None);
        let id = SpiffeId::parse("spiffe://example.org/Billing_Svc-1.v2").unwrap();
        assert_eq!(id.namespace(), None);
        // Found by fuzzing: only the Istio workload shape /ns/<ns>/sa/<sa> carries a namespace.
        for path in ["/ns/teapp1", "/ns/team/x/app1", "/ns/team/sa", "/x/ns/team/sa/app1"] {
            assert_eq!(SpiffeId::parse(&format!("spiffe://td{path}")).unwrap().namespace(), None, "{path}");
        }
        let extra = SpiffeId::parse("spiffe://td/ns/team/sa/app1/extra").unwrap();
        assert_eq!(extra.namespace(), Some("team"));
        assert_eq!(id.path(), "/Billing_Svc-1.v2");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_wrong_scheme() {
        assert_eq!(err("https://cluster.local/ns/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("SPIFFE://cluster.local/ns/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("cluster.local/ns/a"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/cluster.local"), SpiffeIdError::WrongScheme);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_bad_trust_domains() {
        assert_eq!(err("spiffe://"), SpiffeIdError::EmptyTrustDomain);
        assert_eq!(err("spiffe:///ns/a"), SpiffeIdError::EmptyTrustDomain);
        let long = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(err(&long), SpiffeIdError::TrustDomainTooLong);
        assert!(SpiffeId::parse(&format!("spiffe://{}/a", "a".repeat(255))).is_ok());
        assert_eq!(err("spiffe://Cluster.local/a"), SpiffeIdError::BadTrustDomainChar('C'));
        assert!(SpiffeId::parse("spiffe://cluster_1.local-2/a").is_ok());
        assert_eq!(err("spiffe://cluster.local:8080/a"), SpiffeIdError::Port);
        assert_eq!(err("spiffe://user@cluster.local/a"), SpiffeIdError::UserInfo);
        assert_eq!(err("spiffe://user:pw@cluster.local/a"), SpiffeIdError::UserInfo);
        assert_eq!(err("spiffe://clu%73ter.local/a"), SpiffeIdError::PercentEncoding);
        assert_eq!(err("spiffe://cluster.local?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://cluster.local#f"), SpiffeIdError::Fragment);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_bad_paths() {
        assert_eq!(err("spiffe://td/ns//sa"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/ns/./sa"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/ns/.."), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/ns/a/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://td/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://td/ns/a%2Fb"), SpiffeIdError::PercentEncoding);
        assert_eq!(err("spiffe://td/ns/a?x=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td/ns/a#frag"), SpiffeIdError::Fragment);
        assert_eq!(err("spiffe://td/ns/a@b"), SpiffeIdError::BadPathChar('@'));
        assert_eq!(err("spiffe://td/ns/a:b"), SpiffeIdError::BadPathChar(':'));
        assert_eq!(err("spiffe://td/ns/a b"), SpiffeIdError::BadPathChar(' '));
        assert!(SpiffeId::parse("spiffe://td/.../a").is_ok(), "'...' is a legal segment");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn rejects_too_long_ids() {
        let id = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(err(&id), SpiffeIdError::TooLong);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn error_codes_and_messages_are_distinct() {
        let all = [
            SpiffeIdError::WrongScheme,
            SpiffeIdError::EmptyTrustDomain,
            SpiffeIdError::TrustDomainTooLong,
            SpiffeIdError::BadTrustDomainChar('x'),
            SpiffeIdError::BadPathChar('x'),
            SpiffeIdError::EmptySegment,
            SpiffeIdError::DotSegment,
            SpiffeIdError::TrailingSlash,
            SpiffeIdError::TooLong,
            SpiffeIdError::Port,
            SpiffeIdError::UserInfo,
            SpiffeIdError::PercentEncoding,
            SpiffeIdError::Query,
            SpiffeIdError::Fragment,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        let messages: std::collections::HashSet<_> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), all.len());
    }
}
