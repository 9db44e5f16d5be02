//! The HTTP request as the decision sees it: `:authority`, `:method` and `:path` read from the host, the
//! rules for turning header bytes into text, and how each is normalized before policies compare it: the
//! authority into a lower-case host and a port, the method into upper case, the path into the form the
//! configured [`PathMatching`] describes. Policy values are normalized the same way at configure time
//! ([`crate::policy_value`]), so a value and a request that mean the same thing compare equal.

use std::borrow::Cow;

/// The HTTP request attributes the decision needs, as the proxy sees them. The adapter leaves `method`
/// and `path` empty when no policy looks at them ([`crate::config::AttributesUsed`]).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `:authority` (`host` or `host:port`).
    pub authority: &'a str,
    pub method: &'a str,
    /// `:path`, query string included (it is ignored).
    pub path: &'a str,
}

/// A header read from the host: its bytes, or `None` when the request does not carry it.
pub type HeaderValue<'a> = Option<&'a [u8]>;

impl<'a> Request<'a> {
    /// The request from the header values the adapter read: an absent header reads as empty, a header
    /// that is present but not UTF-8 makes the request malformed (`None`): the filter fails closed rather
    /// than match a mangled value.
    pub fn from_headers(authority: HeaderValue<'a>, method: HeaderValue<'a>, path: HeaderValue<'a>) -> Option<Self> {
        Some(Self { authority: header_text(authority)?, method: header_text(method)?, path: header_text(path)? })
    }
}

/// A header's text: `""` when absent, `None` when present but not UTF-8.
pub fn header_text(value: HeaderValue<'_>) -> Option<&str> {
    match value {
        Some(bytes) => std::str::from_utf8(bytes).ok(),
        None => Some(""),
    }
}

/// Splits `host[:port]` into a lower-case host without trailing dot and its port (`None` when it names
/// none). `None` for an empty host or a port that is not written as a number from 1 to 65535 (digits only,
/// no sign, no leading zero): a malformed authority.
pub fn split_authority(authority: &str) -> Option<(Cow<'_, str>, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        // "[::1]" alone has a ':' but no port.
        Some((host, port)) if !port.contains(']') => (host, Some(parse_port(port)?)),
        _ => (authority, None),
    };
    Some((normalize_host(host)?, port))
}

/// A host as destinations and policies compare it: lower case, without a trailing dot. `None` when empty.
pub fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// A port as written in an authority or a policy: 1 to 5 ASCII digits, no leading zero, 1 to 65535.
pub fn parse_port(text: &str) -> Option<u16> {
    let canonical =
        !text.is_empty() && text.len() <= 5 && text.bytes().all(|c| c.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse::<u16>().ok()).flatten()
}

/// The method as policies compare it: upper case (HTTP/2 lets a client send `delete`, which many servers
/// treat as `DELETE`).
pub fn normalize_method(method: &str) -> Cow<'_, str> {
    if method.bytes().any(|c| c.is_ascii_lowercase()) {
        Cow::Owned(method.to_ascii_uppercase())
    } else {
        Cow::Borrowed(method)
    }
}

/// The path policies match: `:path` without its query string or fragment.
pub fn path_without_query(path: &str) -> &str {
    path.find(['?', '#']).and_then(|end| path.get(..end)).unwrap_or(path)
}

/// How request paths are compared with `paths` values, beyond Envoy's own normalization (`normalize_path`,
/// `merge_slashes`, escaped slashes rejected) that the gateway applies first. Percent-encoded unreserved
/// characters (`%41` for `A`) are always decoded: every server reads them as the character.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMatching {
    /// Compare paths case-insensitively: for partners that serve `/ADMIN` as `/admin` (Windows/IIS,
    /// case-insensitive routers).
    pub case_insensitive: bool,
    /// Drop `;parameters` from every segment before comparing: for partners that strip them (Java servlet
    /// containers such as Tomcat and Jetty, Spring), where `/admin;x` and `/;x/admin` reach `/admin`.
    pub ignore_parameters: bool,
}

/// The path as policies compare it: without query, unreserved characters decoded, dot segments and empty
/// segments (`//`) resolved, and per `options` without parameters and in lower case. `None` when the path
/// carries a malformed percent-encoding or an encoded slash (`%2F`, `%5C`), which a partner may decode into
/// a segment boundary the policy never saw.
///
/// The gateways `render envoy` writes merge slashes and refuse encoded slashes before the filter runs; a
/// gateway whose configuration does not (an ambient waypoint, whose HTTP connection manager cannot be
/// patched, an Istio mesh whose `pathNormalization` is the default) gets the same here, so that `//admin`
/// never passes a `/admin*` DENY.
pub fn matching_path(path: &str, options: PathMatching) -> Option<Cow<'_, str>> {
    let path = path_without_query(path);
    let mut changed = path.contains("//") || path.contains("/.");
    let mut out = Cow::Borrowed(path);
    if path.contains('%') {
        if ["%2f", "%5c"].iter().any(|escape| contains_ignore_case(path, escape)) {
            return None;
        }
        out = Cow::Owned(decode_unreserved(path)?);
        changed = true;
    }
    if options.ignore_parameters && out.contains(';') {
        out = Cow::Owned(
            out.split('/').map(|segment| segment.split(';').next().unwrap_or_default()).collect::<Vec<_>>().join("/"),
        );
        changed = true;
    }
    if changed {
        out = Cow::Owned(resolve_segments(&out));
    }
    if options.case_insensitive && out.bytes().any(|c| c.is_ascii_uppercase()) {
        out = Cow::Owned(out.to_ascii_lowercase());
    }
    Some(out)
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986 2.3: letters, digits, `-._~`); other escapes
/// stay, with upper-case hex digits. `None` for a `%` not followed by two hex digits.
pub fn decode_unreserved(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (hi, lo) = (chars.next()?, chars.next()?);
        let byte = u8::try_from(hi.to_digit(16)? * 16 + lo.to_digit(16)?).ok()?;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(hi.to_ascii_uppercase());
            out.push(lo.to_ascii_uppercase());
        }
    }
    Some(out)
}

/// Removes `.` and `..` segments and empty segments (RFC 3986 5.2.4, plus merged slashes), keeping a
/// trailing slash.
fn resolve_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn authority_forms() {
        assert_eq!(split_authority("API.Partner.Example"), Some((Cow::Owned("api.partner.example".into()), None)));
        assert_eq!(
            split_authority("api.partner.example.:8443"),
            Some((Cow::Borrowed("api.partner.example"), Some(8443)))
        );
        assert_eq!(split_authority("[::1]"), Some((Cow::Borrowed("[::1]"), None)));
        assert_eq!(split_authority("[::1]:80"), Some((Cow::Borrowed("[::1]"), Some(80))));
        assert_eq!(split_authority("host:https"), None);
        assert_eq!(split_authority("host:abc"), None);
        assert_eq!(split_authority("host:0"), None);
        assert_eq!(split_authority("host:65536"), None);
        for odd in ["host:+443", "host:0443", "host: 443", "host:443 ", "host:-1", "host:", "host:4430000"] {
            assert_eq!(split_authority(odd), None, "{odd}");
        }
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(split_authority(":443"), None);
        assert_eq!(split_authority(""), None);
        assert_eq!(path_without_query("/a/b?c=d#e"), "/a/b");
        assert_eq!(path_without_query("/a#e"), "/a");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn methods_compare_in_upper_case() {
        assert_eq!(normalize_method("delete"), "DELETE");
        assert_eq!(normalize_method("Delete"), "DELETE");
        assert!(matches!(normalize_method("GET"), Cow::Borrowed("GET")));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn paths_are_matched_as_servers_read_them() {
        let strict = PathMatching::default();
        let path = |p: &str, o: PathMatching| matching_path(p, o).map(Cow::into_owned);
        assert_eq!(path("/admin/x?y=%41", strict).as_deref(), Some("/admin/x"));
        assert!(matches!(matching_path("/v1/orders?x=1", strict), Some(Cow::Borrowed("/v1/orders"))));
        // Unreserved characters are always decoded; other escapes stay (hex in upper case).
        assert_eq!(path("/%41dmin/%7Euser/x/%3b", strict).as_deref(), Some("/Admin/~user/x/%3B"));
        assert_eq!(path("/%61dmin", strict).as_deref(), Some("/admin"));
        assert_eq!(path("/%2561dmin", strict).as_deref(), Some("/%2561dmin"), "decoded once, as a server does");
        // Decoding can make dot segments: they are resolved as the server would.
        assert_eq!(path("/x/%2e%2e/admin", strict).as_deref(), Some("/admin"));
        assert_eq!(path("/a/%2E/b/", strict).as_deref(), Some("/a/b/"));
        for bad in ["/%", "/%4", "/%zz", "/%4g"] {
            assert_eq!(matching_path(bad, strict), None, "{bad}");
        }
        // Whatever the gateway's own normalization (a waypoint's cannot be patched): empty segments are
        // merged and dot segments resolved, and an encoded slash, which a partner may decode into a segment
        // boundary, makes the request malformed.
        assert_eq!(path("//admin/x", strict).as_deref(), Some("/admin/x"));
        assert_eq!(path("/v1//x/./y/../z", strict).as_deref(), Some("/v1/x/z"));
        assert_eq!(path("/a/.well-known/x", strict).as_deref(), Some("/a/.well-known/x"));
        for bad in ["/%2Fadmin", "/a%2fb", "/%5Cadmin", "/x%5cy"] {
            assert_eq!(matching_path(bad, strict), None, "{bad}");
        }
        // Parameters and case only when asked for.
        assert_eq!(path("/admin;x/y", strict).as_deref(), Some("/admin;x/y"));
        assert_eq!(path("/ADMIN", strict).as_deref(), Some("/ADMIN"));
        let lenient = PathMatching { case_insensitive: true, ignore_parameters: true };
        assert_eq!(path("/admin;x/y", lenient).as_deref(), Some("/admin/y"));
        assert_eq!(path("/;x/admin", lenient).as_deref(), Some("/admin"));
        assert_eq!(path("/ADMIN/Users", lenient).as_deref(), Some("/admin/users"));
        assert_eq!(path("/%41DMIN;jsessionid=1", lenient).as_deref(), Some("/admin"));
        assert_eq!(path("/", lenient).as_deref(), Some("/"));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn header_text_rules() {
        assert_eq!(header_text(None), Some(""), "an absent header reads as empty");
        assert_eq!(header_text(Some(b"GET")), Some("GET"));
        assert_eq!(header_text(Some(b"")), Some(""));
        assert_eq!(header_text(Some(b"\xff\xfe")), None, "not UTF-8: malformed");
        let request = Request::from_headers(Some(b"api.partner.example"), None, Some(b"/v1")).unwrap();
        assert_eq!((request.authority, request.method, request.path), ("api.partner.example", "", "/v1"));
        assert!(Request::from_headers(Some(b"api.partner.example"), Some(b"G\xffT"), None).is_none());
        assert!(Request::from_headers(Some(b"\xc3\x28"), None, None).is_none());
    }
}
