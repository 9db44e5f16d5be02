//! The HTTP request as the decision sees it: `:authority`, `:method` and `:path` read from the host, the
//! rules for turning header bytes into text, and the normalization of the authority into host and port.

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

/// Splits `host[:port]` into a lower-case host without trailing dot and a port (`default_port` if none).
/// `None` for an empty host or a port that is not a number from 1 to 65535: a malformed authority.
pub fn split_authority(authority: &str, default_port: u16) -> Option<(Cow<'_, str>, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        // "[::1]" alone has a ':' but no port.
        Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok().filter(|p| *p != 0)?),
        _ => (authority, default_port),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let host = if host.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Some((host, port))
}

/// The path policies match: `:path` without its query string or fragment.
pub fn path_without_query(path: &str) -> &str {
    path.find(['?', '#']).and_then(|end| path.get(..end)).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn authority_forms() {
        assert_eq!(split_authority("API.Partner.Example", 443), Some((Cow::Owned("api.partner.example".into()), 443)));
        assert_eq!(
            split_authority("api.partner.example.:8443", 443),
            Some((Cow::Borrowed("api.partner.example"), 8443))
        );
        assert_eq!(split_authority("[::1]", 443), Some((Cow::Borrowed("[::1]"), 443)));
        assert_eq!(split_authority("[::1]:80", 443), Some((Cow::Borrowed("[::1]"), 80)));
        assert_eq!(split_authority("host:https", 443), None);
        assert_eq!(split_authority("host:abc", 443), None);
        assert_eq!(split_authority("host:0", 443), None);
        assert_eq!(split_authority("host:65536", 443), None);
        assert_eq!(split_authority(":443", 443), None);
        assert_eq!(split_authority("", 443), None);
        assert_eq!(path_without_query("/a/b?c=d#e"), "/a/b");
        assert_eq!(path_without_query("/a#e"), "/a");
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
