//! The values policies and identity mappings compare — principals, namespaces, trust domains, hosts,
//! methods, paths — checked and normalized at configure time the way the request side normalizes what
//! they are compared with ([`crate::request`], [`crate::trust_domain`]). A value that can never match a
//! request is a configuration error that says why, not a rule that silently does nothing.
//!
//! Each function takes one value as written (wildcards included: `*`, `prefix*`, `*suffix`) and returns it
//! normalized, or the reason it is refused. Values with a misplaced `*` pass through unchanged, for
//! [`crate::pattern::Pattern::parse`] to refuse.

use std::borrow::Cow;

use crate::request::{decode_unreserved, PathMatching};
use crate::spiffe_id::{is_path_char, is_trust_domain_char, validate_trust_domain, SpiffeId};
use crate::trust_domain::{TrustDomains, LOCAL_PLACEHOLDER};

/// What the normalizers need to know of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct ValueRules<'a> {
    pub trust: &'a TrustDomains,
    pub paths: PathMatching,
}

/// A value split at its wildcard.
enum Shape<'a> {
    Any,
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    /// More than one `*`, or one in the middle: left to the pattern parser.
    Other,
}

fn shape(value: &str) -> Shape<'_> {
    match value.matches('*').count() {
        0 => Shape::Exact(value),
        1 if value == "*" => Shape::Any,
        1 => match (value.strip_suffix('*'), value.strip_prefix('*')) {
            (Some(prefix), _) => Shape::Prefix(prefix),
            (_, Some(suffix)) => Shape::Suffix(suffix),
            _ => Shape::Other,
        },
        _ => Shape::Other,
    }
}

/// Reassembles a normalized body with its wildcard (the original value when nothing changed).
fn rebuild<'a>(original: &'a str, shape: &Shape<'_>, body: &str) -> Cow<'a, str> {
    match shape {
        Shape::Exact(b) | Shape::Prefix(b) | Shape::Suffix(b) if *b == body => Cow::Borrowed(original),
        Shape::Prefix(_) => Cow::Owned(format!("{body}*")),
        Shape::Suffix(_) => Cow::Owned(format!("*{body}")),
        _ => Cow::Owned(body.to_string()),
    }
}

impl ValueRules<'_> {
    /// A principal (`spiffe://td/path` or Istio's `td/path`, with wildcards), as [`TrustDomains`] rewrites it
    /// for matching: `td/path` with the local family's trust domain made the local one. It must be a SPIFFE
    /// ID of a workload (a non-root path) up to its wildcard, in a trust domain callers can come from.
    pub fn principal<'v>(&self, value: &'v str) -> Result<Cow<'v, str>, String> {
        let scheme_less = match value.strip_prefix("spiffe://") {
            Some(rest) => rest,
            None if value.contains("://") || value.starts_with("spiffe:") => {
                return Err(format!("{value:?} is not a SPIFFE ID: the scheme is spiffe:// (or write td/path)"));
            }
            None => value,
        };
        let shape = shape(scheme_less);
        match shape {
            Shape::Any | Shape::Other => return Ok(Cow::Borrowed(value)),
            Shape::Exact(body) => {
                let id = SpiffeId::parse(&format!("spiffe://{body}"))
                    .map_err(|e| format!("{value:?} is not a SPIFFE ID (spiffe://td/path or td/path): {e}"))?;
                if id.path().is_empty() {
                    return Err(format!(
                        "{value:?} names a trust domain, not a workload: no caller has such an ID (X509-SVID: a leaf's SPIFFE ID has a path); use trustDomains for a whole trust domain"
                    ));
                }
                self.matchable_trust_domain(value, id.trust_domain())?;
            }
            Shape::Prefix(body) => match body.split_once('/') {
                Some((td, path)) => {
                    validate_trust_domain(td).map_err(|e| format!("{value:?}: trust domain {td:?}: {e}"))?;
                    self.matchable_trust_domain(value, td)?;
                    check_path_prefix(value, &format!("/{path}"))?;
                }
                None => {
                    check_chars(value, body, is_trust_domain_char, "a trust domain")?;
                    if self.trust.matchable().next().is_some() && !self.trust.matchable().any(|td| td.starts_with(body))
                    {
                        return Err(format!(
                            "{value:?} matches no trust domain callers can come from ({})",
                            self.trust_domain_list()
                        ));
                    }
                }
            },
            Shape::Suffix(body) => {
                if body.contains("spiffe:") || body.contains("://") {
                    return Err(format!(
                        "{value:?}: the scheme goes at the start (spiffe://td/path*), not after a '*'"
                    ));
                }
                // The part before the first '/' is the tail of a trust domain or of a path segment; every
                // segment after it is whole.
                let mut parts = body.split('/');
                check_chars(value, parts.next().unwrap_or_default(), is_path_char, "a SPIFFE ID")?;
                for segment in parts {
                    check_segment(value, segment)?;
                }
            }
        }
        Ok(self.trust.canonical_principal_pattern(value))
    }

    /// A value of `source.trustDomains` / `notTrustDomains`: a trust domain callers can come from.
    pub fn trust_domain<'v>(&self, value: &'v str) -> Result<Cow<'v, str>, String> {
        match shape(value) {
            Shape::Any | Shape::Other => {}
            Shape::Exact(td) => {
                validate_trust_domain(td).map_err(|e| format!("{value:?} is not a trust domain: {e}"))?;
                self.matchable_trust_domain(value, td)?;
            }
            Shape::Prefix(part) | Shape::Suffix(part) => {
                check_chars(value, part, is_trust_domain_char, "a trust domain")?;
                let fits = |td: &str| if value.starts_with('*') { td.ends_with(part) } else { td.starts_with(part) };
                if self.trust.matchable().next().is_some() && !self.trust.matchable().any(fits) {
                    return Err(format!(
                        "{value:?} matches no trust domain callers can come from ({})",
                        self.trust_domain_list()
                    ));
                }
            }
        }
        Ok(self.trust.canonical_trust_domain_pattern(value))
    }

    /// A `paths` / `notPaths` value, normalized like request paths ([`crate::request::matching_path`]).
    pub fn path<'v>(&self, value: &'v str) -> Result<Cow<'v, str>, String> {
        let shape = shape(value);
        let body = match shape {
            Shape::Any | Shape::Other => return Ok(Cow::Borrowed(value)),
            Shape::Exact(body) | Shape::Prefix(body) | Shape::Suffix(body) => body,
        };
        if !matches!(shape, Shape::Suffix(_)) && !body.starts_with('/') {
            return Err(format!("{value:?} never matches: request paths start with \"/\""));
        }
        if body.contains(['?', '#']) {
            return Err(format!("{value:?} never matches: paths are compared without the query string"));
        }
        if self.paths.ignore_parameters && body.contains(';') {
            return Err(format!(
                "{value:?} never matches: pathMatching.ignoreParameters drops ';' parameters from request paths"
            ));
        }
        let decoded = decode_unreserved(body).ok_or_else(|| format!("{value:?}: malformed percent-encoding"))?;
        let unresolved = |p: &str, end: bool| {
            p.contains("//")
                || p.contains("/./")
                || p.contains("/../")
                || (end && (p.ends_with("/.") || p.ends_with("/..")))
        };
        let never = match shape {
            // A prefix's last segment may be partial, a suffix's first one too.
            Shape::Prefix(_) => unresolved(decoded.rfind('/').and_then(|i| decoded.get(..=i)).unwrap_or(""), false),
            Shape::Suffix(_) => unresolved(decoded.find('/').and_then(|i| decoded.get(i..)).unwrap_or(""), true),
            _ => unresolved(&decoded, true),
        };
        if never {
            return Err(format!(
                "{value:?} never matches: the gateway merges slashes and resolves dot segments before matching"
            ));
        }
        let normalized = if self.paths.case_insensitive { decoded.to_ascii_lowercase() } else { decoded };
        Ok(rebuild(value, &shape, &normalized))
    }

    fn matchable_trust_domain(&self, value: &str, td: &str) -> Result<(), String> {
        let canonical = self.trust.canonical_trust_domain_pattern(td);
        // No trust domain at all: the configuration's own trust domains are in error, reported there.
        if self.trust.matchable().next().is_none() || self.trust.matchable().any(|m| m == canonical) {
            return Ok(());
        }
        let hint = if td == LOCAL_PLACEHOLDER {
            " (cluster.local stands for the local trust domain only when localTrustDomain is set)"
        } else {
            ""
        };
        Err(format!(
            "{value:?}: trust domain {td:?} is not one callers can come from ({}){hint}: this value never matches",
            self.trust_domain_list()
        ))
    }

    fn trust_domain_list(&self) -> String {
        let mut all: Vec<&str> = self.trust.matchable().collect();
        all.sort_unstable();
        all.join(", ")
    }
}

/// A `namespaces` / `notNamespaces` value: a Kubernetes namespace name (RFC 1123 label) up to its wildcard.
pub fn namespace(value: &str) -> Result<Cow<'_, str>, String> {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    match shape(value) {
        Shape::Any | Shape::Other => {}
        Shape::Exact(ns) => {
            let label =
                !ns.is_empty() && ns.len() <= 63 && ns.bytes().all(ok) && !ns.starts_with('-') && !ns.ends_with('-');
            if !label {
                return Err(format!("{value:?} is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63): it never matches"));
            }
        }
        Shape::Prefix(part) | Shape::Suffix(part) => check_chars(value, part, ok, "a Kubernetes namespace name")?,
    }
    Ok(Cow::Borrowed(value))
}

/// A gateway-layer `hosts` / `notHosts` value, as request hosts are compared: lower case, without a
/// trailing dot, and without a port (the port is a separate attribute: use `ports`).
pub fn host(value: &str) -> Result<Cow<'_, str>, String> {
    if value.contains(':') {
        return Err(format!(
            "{value:?} never matches: the request's host is compared without its port; put the port in ports"
        ));
    }
    let shape = shape(value);
    let body = match shape {
        Shape::Any | Shape::Other => return Ok(Cow::Borrowed(value)),
        Shape::Exact(body) | Shape::Prefix(body) | Shape::Suffix(body) => body,
    };
    // Request hosts carry no trailing dot; a prefix's dot is part of what it matches.
    let body = if matches!(shape, Shape::Prefix(_)) { body } else { body.strip_suffix('.').unwrap_or(body) };
    let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    check_chars(value, body, ok, "a host name")?;
    if matches!(shape, Shape::Exact(_)) && (body.is_empty() || body.split('.').any(str::is_empty)) {
        return Err(format!("{value:?} is not a host name"));
    }
    Ok(rebuild(value, &shape, &body.to_ascii_lowercase()))
}

/// A `methods` / `notMethods` value: an HTTP method token, compared in upper case (so a client's `delete`
/// meets a `DELETE` rule).
pub fn method(value: &str) -> Result<Cow<'_, str>, String> {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&c);
    let shape = shape(value);
    let body = match shape {
        Shape::Any | Shape::Other => return Ok(Cow::Borrowed(value)),
        Shape::Exact(body) | Shape::Prefix(body) | Shape::Suffix(body) => body,
    };
    check_chars(value, body, tchar, "an HTTP method")?;
    Ok(rebuild(value, &shape, &body.to_ascii_uppercase()))
}

/// Every byte of `part` passes `ok`, else an error naming the first that does not.
fn check_chars(value: &str, part: &str, ok: impl Fn(u8) -> bool, what: &str) -> Result<(), String> {
    match part.bytes().find(|c| !ok(*c)) {
        None => Ok(()),
        Some(c) if c.is_ascii_uppercase() => {
            Err(format!("{value:?}: {what} is lower case here ({:?}): this value never matches", char::from(c)))
        }
        Some(c) => Err(format!("{value:?}: {:?} cannot appear in {what}: this value never matches", char::from(c))),
    }
}

/// The path of a principal prefix (`/ns/team/` of `td/ns/team/*`): complete segments are valid SPIFFE path
/// segments; the last one may be partial or empty.
fn check_path_prefix(value: &str, path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (last, complete) = segments.split_last().map_or((&"", &[][..]), |(l, c)| (l, c));
    for segment in complete {
        check_segment(value, segment)?;
    }
    check_chars(value, last, is_path_char, "a SPIFFE ID path")
}

fn check_segment(value: &str, segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("{value:?} never matches: a SPIFFE ID has no empty path segment (\"//\")"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("{value:?} never matches: a SPIFFE ID has no \".\" or \"..\" segment"));
    }
    check_chars(value, segment, is_path_char, "a SPIFFE ID path")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn trust() -> TrustDomains {
        TrustDomains::new(
            &["partner-mesh.example".into()],
            Some("prod.acme.internal"),
            &["old.acme.internal".into()],
            None,
        )
        .unwrap()
    }

    fn rules(trust: &TrustDomains, paths: PathMatching) -> ValueRules<'_> {
        ValueRules { trust, paths }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn principals_are_spiffe_ids_of_workloads_in_accepted_trust_domains() {
        let t = trust();
        let r = rules(&t, PathMatching::default());
        let ok = |v: &str| r.principal(v).unwrap_or_else(|e| panic!("{v}: {e}")).into_owned();
        assert_eq!(ok("spiffe://prod.acme.internal/ns/payments/sa/legacy"), "prod.acme.internal/ns/payments/sa/legacy");
        assert_eq!(ok("old.acme.internal/ns/payments/sa/legacy"), "prod.acme.internal/ns/payments/sa/legacy");
        assert_eq!(ok("cluster.local/ns/payments/*"), "prod.acme.internal/ns/payments/*");
        assert_eq!(ok("spiffe://partner-mesh.example/ns/x/sa/y"), "partner-mesh.example/ns/x/sa/y");
        assert_eq!(ok("cluster.local/ns/pay*"), "prod.acme.internal/ns/pay*");
        assert_eq!(ok("prod.*"), "prod.*");
        assert_eq!(ok("*/sa/legacy"), "*/sa/legacy");
        assert_eq!(ok("*legacy"), "*legacy");
        assert_eq!(ok("*"), "*");
        for (bad, why) in [
            ("spiffe:/prod.acme.internal/ns/payments/sa/legacy", "scheme"),
            ("https://prod.acme.internal/ns/payments/sa/legacy", "scheme"),
            ("spiffe://Prod.acme.internal/ns/payments/sa/legacy", "not a SPIFFE ID"),
            ("prod.acme.internal/ns//sa/legacy", "not a SPIFFE ID"),
            ("prod.acme.internal/ns/payments/sa/legacy/", "not a SPIFFE ID"),
            ("payments/checkout", "not one callers can come from"),
            ("spiffe://evil.example/ns/a/sa/b", "not one callers can come from"),
            ("prod.acme.internal", "names a trust domain"),
            ("spiffe://prod.acme.internal", "names a trust domain"),
            ("prod.acme.internal/ns//*", "empty path segment"),
            ("prod.acme.internal/ns/../*", "\".\" or \"..\""),
            ("Prod.acme.internal/ns/*", "trust domain"),
            ("evil.example/ns/*", "not one callers can come from"),
            ("evil.*", "matches no trust domain"),
            ("*/sa/legacy/", "empty path segment"),
            ("*//sa/legacy", "empty path segment"),
            ("*spiffe://x/sa/y", "scheme"),
            ("*/sa/le gacy", "cannot appear"),
        ] {
            let e = r.principal(bad).map(Cow::into_owned).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Misplaced wildcards are left to the pattern parser, which names them.
        assert_eq!(r.principal("a*b").unwrap(), "a*b");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn cluster_local_is_the_local_family_only_with_a_local_trust_domain() {
        let federated_only = TrustDomains::new(&["partner-mesh.example".into()], None, &[], None).unwrap();
        let r = rules(&federated_only, PathMatching::default());
        let e = r.principal("cluster.local/ns/a/sa/b").unwrap_err();
        assert!(e.contains("only when localTrustDomain is set"), "{e}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn trust_domains_namespaces_hosts_and_methods() {
        let t = trust();
        let r = rules(&t, PathMatching::default());
        assert_eq!(r.trust_domain("cluster.local").unwrap(), "prod.acme.internal");
        assert_eq!(r.trust_domain("*.example").unwrap(), "*.example");
        for bad in ["Cluster.local", "evil.example", "*.evil", "ev*"] {
            assert!(r.trust_domain(bad).is_err(), "{bad}");
        }
        assert!(namespace("payments").is_ok() && namespace("pay*").is_ok() && namespace("*").is_ok());
        for bad in ["Payments", "pay_ments", "-x", "x-", &"n".repeat(64), "PAY*"] {
            assert!(namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(host("API.Partner.Example.").unwrap(), "api.partner.example");
        assert_eq!(host("*.Partner.Example.").unwrap(), "*.partner.example");
        assert_eq!(host("api.partner.*").unwrap(), "api.partner.*");
        for bad in ["api.partner.example:443", "api.partner.example:*", "api partner", "a..b", "[::1]"] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert_eq!(method("delete").unwrap(), "DELETE");
        assert_eq!(method("GE*").unwrap(), "GE*");
        assert!(matches!(method("GET").unwrap(), Cow::Borrowed("GET")));
        for bad in ["GE T", "GET/", "(GET)"] {
            assert!(method(bad).is_err(), "{bad}");
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn paths_are_normalized_like_request_paths() {
        let t = trust();
        let strict = rules(&t, PathMatching::default());
        assert!(matches!(strict.path("/admin*").unwrap(), Cow::Borrowed("/admin*")));
        assert_eq!(strict.path("/%61dmin*").unwrap(), "/admin*");
        assert_eq!(strict.path("*.json").unwrap(), "*.json");
        assert_eq!(strict.path("/Admin").unwrap(), "/Admin");
        for (bad, why) in [
            ("admin*", "start with"),
            ("admin", "start with"),
            ("/admin?x=1", "query"),
            ("/admin#x", "query"),
            ("/%zz", "percent-encoding"),
            ("/a//b", "merges slashes"),
            ("/a/../b*", "dot segments"),
            ("*/./x", "dot segments"),
        ] {
            let e = strict.path(bad).map(Cow::into_owned).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let lenient = rules(&t, PathMatching { case_insensitive: true, ignore_parameters: true });
        assert_eq!(lenient.path("/Admin*").unwrap(), "/admin*");
        assert!(lenient.path("/admin;x").unwrap_err().contains("ignoreParameters"));
        assert!(strict.path("/admin;x").is_ok(), "without ignoreParameters a ';' is part of the path");
    }
}
