//! The audit record of one decision: a single logfmt line (`key=value` pairs) that the adapter stores in
//! Envoy's filter state as `wasm.egress_identity.audit`, so an access log shows it with
//! `%FILTER_STATE(wasm.egress_identity.audit:PLAIN)%`.
//!
//! One record rather than one filter-state key per field: each key costs a host call per request. The same
//! fields also go, as one `google.protobuf.Struct`, to `wasm.egress_identity.decision`, which a JSON access
//! log renders as an object ([`record_struct`]).
//!
//! ```text
//! decision=allow principal=spiffe://cluster.local/ns/team/sa/app1 destination=partner-api gateway_policy=mesh-egress destination_policy=partner-api-callers identity=team.app1
//! decision=deny principal=spiffe://cluster.local/ns/sandbox/sa/default layer=gateway reason=no_matching_allow
//! decision=deny principal=spiffe://cluster.local/ns/team/sa/app1 layer=destination policy=no-admin reason=denied_by_policy dry_run=deny
//! ```
//!
//! An allowed request or connection that then never reached the partner gets an [`Outcome`] appended once
//! Envoy has given up on its upstream ([`push_outcome`], [`push_outcome_struct`]); no `outcome` means
//! forwarded:
//!
//! ```text
//! decision=allow principal=spiffe://cluster.local/ns/team/sa/app1 destination=partner-api gateway_policy=mesh-egress destination_policy=partner-api-callers identity=team.app1 outcome=no_certificate upstream_detail="TLS error: Secret is not supplied by SDS"
//! ```

use std::fmt::Write;

use crate::decision::{Decision, Evaluation};

/// The filter-state key of the record (Envoy prefixes it with `wasm.`).
pub const FILTER_STATE_KEY: &str = "egress_identity.audit";

/// The filter-state key of the record as a `google.protobuf.Struct` (Envoy prefixes it with `wasm.`): an
/// access log's `%FILTER_STATE(wasm.egress_identity.decision:TYPED)%` renders it as a JSON object.
pub const STRUCT_FILTER_STATE_KEY: &str = "egress_identity.decision";
/// The type of [`record_struct`]'s bytes.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// The record's fields in order, empty values left out. `host`: the request's host (normalized), which
/// the record names with the concrete port when the destination is dynamic (a wildcard: metrics name only
/// the destination, the record the host it was for).
fn fields(evaluation: &Evaluation<'_>, principal: &str, host: &str, mut field: impl FnMut(&str, &str)) {
    let mut field = |key: &str, value: &str| {
        if !value.is_empty() {
            field(key, value);
        }
    };
    let concrete = |field: &mut dyn FnMut(&str, &str)| {
        if let Some(port) = evaluation.dynamic_port {
            field("host", host);
            let mut digits = [0u8; 5];
            field("port", port_text(port, &mut digits));
        }
    };
    match evaluation.decision {
        Decision::Allow(allowed) => {
            field("decision", "allow");
            field("principal", principal);
            field("destination", allowed.destination);
            concrete(&mut field);
            field("gateway_policy", allowed.gateway_policy);
            field("destination_policy", allowed.destination_policy);
            field("identity", &allowed.identity.name);
        }
        Decision::Deny(denial) => {
            field("decision", "deny");
            field("principal", principal);
            // A dynamic destination's denial names the host it was for (the record of a denial names no
            // destination otherwise: the layer and reason say it).
            if let (Some(destination), Some(_)) = (evaluation.destination, evaluation.dynamic_port) {
                field("destination", destination);
                concrete(&mut field);
            }
            field("layer", denial.layer.as_str());
            field("policy", denial.policy.unwrap_or_default());
            field("reason", denial.reason_code());
        }
    }
    match evaluation.shadow_allowed() {
        Some(true) => field("dry_run", "allow"),
        Some(false) => field("dry_run", "deny"),
        None => {}
    }
}

/// `port` in decimal, in `digits`.
fn port_text(port: u16, digits: &mut [u8; 5]) -> &str {
    let mut n = port;
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.get(start..).and_then(|d| std::str::from_utf8(d).ok()).unwrap_or_default()
}

/// The audit record of `evaluation` for the caller `principal` (empty when it has none); `host`: the
/// request's host (normalized, as [`crate::request::normalize_host`]), named when the destination is dynamic.
pub fn record(evaluation: &Evaluation<'_>, principal: &str, host: &str) -> String {
    let mut line = String::with_capacity(192);
    fields(evaluation, principal, host, |key, value| {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
        push_value(&mut line, value);
    });
    line
}

/// The same fields as a serialized `google.protobuf.Struct` of strings (for structured access logs).
pub fn record_struct(evaluation: &Evaluation<'_>, principal: &str, host: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    fields(evaluation, principal, host, |key, value| push_struct_field(&mut out, key, value));
    out
}

/// Appends one string field to a serialized Struct: Struct.fields (1) is a map, so more entries appended to
/// a serialized Struct are more fields of it.
fn push_struct_field(out: &mut Vec<u8>, key: &str, value: &str) {
    // Struct.fields (1): map entry { key (1): string, value (2): Value { string_value (3) } }.
    let value_len = 1 + varint_len(value.len()) + value.len();
    let entry_len = 1 + varint_len(key.len()) + key.len() + 1 + varint_len(value_len) + value_len;
    out.push(0x0a);
    push_varint(out, entry_len);
    out.push(0x0a);
    push_varint(out, key.len());
    out.extend_from_slice(key.as_bytes());
    out.push(0x12);
    push_varint(out, value_len);
    out.push(0x1a);
    push_varint(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// How an ALLOWED request or connection ended when it never reached the partner: the record's `outcome`
/// (absent: forwarded) and the `reason` of [`crate::metrics::UPSTREAM_FAILURES`]. The policy did allow
/// it: the record keeps `decision=allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The identity's client certificate was never delivered (Envoy: "TLS error: Secret is not supplied by
    /// SDS", the cluster's TLS context is not ready).
    NoCertificate,
    /// The upstream TLS handshake failed (e.g. the partner's certificate did not verify).
    UpstreamTlsError,
    /// No connection to the partner: refused, timed out (in single-cluster mode also a certificate the SDS
    /// server never sends: Envoy reports only the timeout), no healthy host, no cluster, circuit breaker.
    UpstreamConnectFailure,
    /// A dynamic destination's host did not resolve, or resolved only into ranges the gateway refuses
    /// (Envoy's `DF` flag, `dns_resolution_failure`).
    UpstreamDnsFailure,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::NoCertificate,
        Outcome::UpstreamTlsError,
        Outcome::UpstreamConnectFailure,
        Outcome::UpstreamDnsFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NoCertificate => "no_certificate",
            Outcome::UpstreamTlsError => "upstream_tls_error",
            Outcome::UpstreamConnectFailure => "upstream_connect_failure",
            Outcome::UpstreamDnsFailure => "upstream_dns_failure",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Bits of Envoy's response flags (the `response.flags` property: bit n is `StreamInfo::CoreResponseFlag` n)
/// that mean a request or connection may not have reached an upstream.
pub mod response_flags {
    /// `UH`: no healthy upstream host.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// `UF`: the upstream connection failed (refused, timed out, TLS handshake, no certificate).
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// `UO`: circuit breaker overflow.
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
    /// `NC`: the cluster does not exist.
    pub const NO_CLUSTER_FOUND: u64 = 1 << 24;
    /// `DF`: DNS resolution failed.
    pub const DNS_RESOLUTION_FAILED: u64 = 1 << 26;
    /// Any of them.
    pub const NOT_FORWARDED: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_OVERFLOW
        | NO_CLUSTER_FOUND
        | DNS_RESOLUTION_FAILED;
}

/// Envoy's transport failure reason for a TLS context without its certificate (`NotReadySslSocket`).
pub const SECRET_NOT_SUPPLIED: &str = "Secret is not supplied by SDS";

/// The response-code details of a response from the upstream.
pub const VIA_UPSTREAM: &str = "via_upstream";

/// Whether response flags `flags` say the request or connection may not have reached an upstream: the one
/// check on the path of every allowed request ([`classify`] only after it).
pub fn may_have_failed_upstream(flags: u64) -> bool {
    flags & response_flags::NOT_FORWARDED != 0
}

/// What Envoy's records of an allowed request or connection say of its upstream: its response flags, the
/// upstream transport failure reason and (HTTP) the response-code details, empty when absent. `None`:
/// forwarded (no failure flag, or the response came from the upstream after all).
pub fn classify(flags: u64, transport_failure_reason: &str, code_details: &str) -> Option<Outcome> {
    if !may_have_failed_upstream(flags) || code_details == VIA_UPSTREAM {
        return None;
    }
    // The reason, or the details that embed it with spaces as underscores
    // (`upstream_reset_before_response_started{remote_connection_failure|TLS_error:_Secret_is_not_...}`).
    let says = |text: &str| {
        [transport_failure_reason, code_details].iter().any(|s| s.contains(text) || s.contains(&text.replace(' ', "_")))
    };
    Some(if flags & response_flags::DNS_RESOLUTION_FAILED != 0 || says("dns_resolution_failure") {
        Outcome::UpstreamDnsFailure
    } else if says(SECRET_NOT_SUPPLIED) {
        Outcome::NoCertificate
    } else if says("TLS error") {
        Outcome::UpstreamTlsError
    } else {
        Outcome::UpstreamConnectFailure
    })
}

/// Longest `upstream_detail` recorded (Envoy's TLS failure reasons list every OpenSSL error).
pub const MAX_UPSTREAM_DETAIL: usize = 512;

/// Envoy's reason to record as `upstream_detail`: the transport failure reason, else the response-code
/// details; at most [`MAX_UPSTREAM_DETAIL`] bytes.
pub fn upstream_detail<'a>(transport_failure_reason: &'a str, code_details: &'a str) -> &'a str {
    let detail = if transport_failure_reason.is_empty() { code_details } else { transport_failure_reason };
    let mut end = detail.len().min(MAX_UPSTREAM_DETAIL);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    detail.get(..end).unwrap_or_default()
}

/// The fields an outcome adds to a record, in order, empty values left out.
fn outcome_fields(outcome: Outcome, detail: &str) -> impl Iterator<Item = (&'static str, &str)> {
    [("outcome", outcome.as_str()), ("upstream_detail", detail)].into_iter().filter(|(_, v)| !v.is_empty())
}

/// Appends `outcome` and Envoy's `detail` to a record line built by [`record`].
pub fn push_outcome(line: &mut String, outcome: Outcome, detail: &str) {
    for (key, value) in outcome_fields(outcome, detail) {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        push_value(line, value);
    }
}

/// Appends the same fields to a record Struct built by [`record_struct`].
pub fn push_outcome_struct(out: &mut Vec<u8>, outcome: Outcome, detail: &str) {
    for (key, value) in outcome_fields(outcome, detail) {
        push_struct_field(out, key, value);
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).unwrap_or(0));
}

/// A logfmt value: as is when it needs no quoting, else in double quotes with `"` and `\` escaped and
/// control characters written as `\u{..}`.
fn push_value(line: &mut String, value: &str) {
    let plain = value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                line.push('\\');
                line.push(c);
            }
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request::Request;
    use crate::spiffe_id::SpiffeId;
    use wasm_bindgen_test::wasm_bindgen_test;

    const CONFIG: &str = r#"{
      "localTrustDomain": "cluster.local",
      "gateway": { "policies": [
        { "name": "no-quarantine", "action": "DENY", "rules": [ { "from": [ { "source": { "namespaces": ["quarantine"] } } ] } ] },
        { "name": "mesh-egress", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team", "quarantine"] } } ] } ] },
        { "name": "shadow", "action": "DENY", "dryRun": true, "rules": [ { "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app2"] } } ] } ] }
      ] },
      "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/*"] } ],
      "destinations": [ {
        "name": "partner-api", "host": "api.partner.example", "port": 443,
        "policies": [ { "name": "callers", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
        "identities": ["team.app1"]
      } ]
    }"#;

    fn record_for(principal: &str) -> String {
        let config = Config::load(CONFIG.as_bytes()).unwrap();
        let id = SpiffeId::parse(principal).unwrap();
        let request = Request { authority: "api.partner.example", method: "GET", path: "/v1" };
        record(&config.evaluate(Ok(&id), &request), principal, "")
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn allow_names_every_policy_and_the_identity() {
        assert_eq!(
            record_for("spiffe://cluster.local/ns/team/sa/app1"),
            "decision=allow principal=spiffe://cluster.local/ns/team/sa/app1 destination=partner-api \
             gateway_policy=mesh-egress destination_policy=callers identity=team.app1 dry_run=allow"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn deny_names_layer_policy_and_reason() {
        assert_eq!(
            record_for("spiffe://cluster.local/ns/quarantine/sa/x"),
            "decision=deny principal=spiffe://cluster.local/ns/quarantine/sa/x layer=gateway \
             policy=no-quarantine reason=denied_by_policy dry_run=deny"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn dry_run_verdict_is_appended() {
        assert!(record_for("spiffe://cluster.local/ns/team/sa/app2").ends_with(" identity=team.app1 dry_run=deny"));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn quoting_escapes_quotes_backslashes_and_controls() {
        let mut line = String::new();
        push_value(&mut line, "a \"b\"\\c\nd");
        assert_eq!(line, r#""a \"b\"\\c\u{a}d""#);
        let mut line = String::new();
        push_value(&mut line, "x=y");
        assert_eq!(line, "\"x=y\"");
    }

    /// A minimal decoder of what [`record_struct`] writes (varint lengths, the three nested messages).
    fn decode_struct(mut bytes: &[u8]) -> Vec<(String, String)> {
        fn varint(bytes: &mut &[u8]) -> usize {
            let (mut n, mut shift) = (0usize, 0);
            loop {
                let b = bytes[0];
                *bytes = &bytes[1..];
                n |= usize::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return n;
                }
                shift += 7;
            }
        }
        fn field<'a>(bytes: &mut &'a [u8], tag: u8) -> &'a [u8] {
            assert_eq!(bytes[0], tag);
            *bytes = &bytes[1..];
            let len = varint(bytes);
            let (value, rest) = bytes.split_at(len);
            *bytes = rest;
            value
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let mut entry = field(&mut bytes, 0x0a);
            let key = String::from_utf8(field(&mut entry, 0x0a).to_vec()).unwrap();
            let mut value = field(&mut entry, 0x12);
            let text = String::from_utf8(field(&mut value, 0x1a).to_vec()).unwrap();
            assert!(entry.is_empty() && value.is_empty());
            out.push((key, text));
        }
        out
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_struct_carries_the_same_fields_as_the_line() {
        let config = Config::load(CONFIG.as_bytes()).unwrap();
        for principal in ["spiffe://cluster.local/ns/team/sa/app1", "spiffe://cluster.local/ns/quarantine/sa/x"] {
            let id = SpiffeId::parse(principal).unwrap();
            let request = Request { authority: "api.partner.example", method: "GET", path: "/v1" };
            let evaluation = config.evaluate(Ok(&id), &request);
            let line = record(&evaluation, principal, "");
            let pairs = decode_struct(&record_struct(&evaluation, principal, ""));
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(joined.join(" "), line);
        }
        // A value longer than 127 bytes takes a two-byte length.
        let long = format!("spiffe://cluster.local/ns/team/sa/{}", "a".repeat(200));
        let id = SpiffeId::parse(&long).unwrap();
        let request = Request { authority: "api.partner.example", method: "GET", path: "/v1" };
        let pairs = decode_struct(&record_struct(&config.evaluate(Ok(&id), &request), &long, ""));
        assert!(pairs.contains(&("principal".to_string(), long.clone())), "{pairs:?}");
    }

    /// What Envoy 1.40 recorded for each failure on the e2e gateway (filter/tests/upstream_failures.rs), as
    /// the filter read it: (response flags, `upstream.transport_failure_reason`, `response.code_details`;
    /// a connection has no details).
    const SEEN: [(u64, &str, &str, Option<Outcome>); 11] = [
        // The identity's SDS secret never delivered (per-identity cluster): HTTP (UF), then tcp_proxy (UF,URX).
        (
            1 << 5,
            "TLS error: Secret is not supplied by SDS",
            "upstream_reset_before_response_started{remote_connection_failure|TLS_error:_Secret_is_not_supplied_by_SDS}",
            Some(Outcome::NoCertificate),
        ),
        (1 << 5 | 1 << 15, "TLS error: Secret is not supplied by SDS", "", Some(Outcome::NoCertificate)),
        // The partner's certificate does not verify (here its SANs).
        (
            1 << 5,
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: SAN matcher, certificate SANs are [api.partner.example, tls.partner.example]:TLS_error_end",
            "upstream_reset_before_response_started{remote_connection_failure|TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_SAN_matcher,_certificate_SANs_are_[api.partner.example,_tls.partner.example]:TLS_error_end}",
            Some(Outcome::UpstreamTlsError),
        ),
        (
            1 << 5 | 1 << 15,
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: SAN matcher, certificate SANs are [api.partner.example, tls.partner.example]:TLS_error_end",
            "",
            Some(Outcome::UpstreamTlsError),
        ),
        // A dynamic destination's name that does not resolve (cli/tests/wildcard.rs): DF.
        (1 << 26, "", "dns_resolution_failure{cares_norecords:Domain_name_not_found}", Some(Outcome::UpstreamDnsFailure)),
        // The partner's port is closed.
        (
            1 << 5,
            "delayed connect error: Connection refused",
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            Some(Outcome::UpstreamConnectFailure),
        ),
        (1 << 5 | 1 << 15, "delayed connect error: Connection refused", "", Some(Outcome::UpstreamConnectFailure)),
        // Single-cluster mode, a secret the SDS server never sends: only the connect timeout, no reason.
        (1 << 5, "", "upstream_reset_before_response_started{connection_timeout}", Some(Outcome::UpstreamConnectFailure)),
        // No healthy upstream.
        (1 << 1, "", "no_healthy_upstream", Some(Outcome::UpstreamConnectFailure)),
        // Forwarded: no flag; or a failed first try and then a response from the upstream.
        (0, "", "via_upstream", None),
        (1 << 5, "delayed connect error: Connection refused", "via_upstream", None),
    ];

    #[wasm_bindgen_test(unsupported = test)]
    fn envoys_records_of_each_failure_classify_as_their_outcome() {
        for (flags, reason, details, expected) in SEEN {
            assert_eq!(classify(flags, reason, details), expected, "{flags:#x} {reason:?} {details:?}");
            assert_eq!(may_have_failed_upstream(flags), flags != 0, "{flags:#x}");
        }
        // Flags that say nothing of the upstream connection (DC: the client went away; UT: the partner
        // was too slow, so it was reached) classify as forwarded.
        assert_eq!(classify(1 << 14, "", "downstream_remote_disconnect"), None);
        assert_eq!(classify(1 << 2, "", "response_timeout"), None);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_detail_is_envoys_reason_bounded() {
        assert_eq!(
            upstream_detail("delayed connect error: Connection refused", "x"),
            "delayed connect error: Connection refused"
        );
        assert_eq!(
            upstream_detail("", "upstream_reset_before_response_started{connection_timeout}"),
            "upstream_reset_before_response_started{connection_timeout}"
        );
        assert_eq!(upstream_detail("", ""), "");
        let long = "é".repeat(MAX_UPSTREAM_DETAIL);
        let cut = upstream_detail(&long, "");
        assert!(cut.len() <= MAX_UPSTREAM_DETAIL && cut.len() >= MAX_UPSTREAM_DETAIL - 1 && long.starts_with(cut));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_outcome_is_appended_to_both_forms_alike() {
        let config = Config::load(CONFIG.as_bytes()).unwrap();
        let principal = "spiffe://cluster.local/ns/team/sa/app1";
        let id = SpiffeId::parse(principal).unwrap();
        let request = Request { authority: "api.partner.example", method: "GET", path: "/v1" };
        let evaluation = config.evaluate(Ok(&id), &request);
        let mut line = record(&evaluation, principal, "");
        let mut object = record_struct(&evaluation, principal, "");
        push_outcome(&mut line, Outcome::NoCertificate, "TLS error: Secret is not supplied by SDS");
        push_outcome_struct(&mut object, Outcome::NoCertificate, "TLS error: Secret is not supplied by SDS");
        assert!(
            line.ends_with(" identity=team.app1 dry_run=allow outcome=no_certificate upstream_detail=\"TLS error: Secret is not supplied by SDS\""),
            "{line}"
        );
        let pairs = decode_struct(&object);
        assert_eq!(
            pairs.last(),
            Some(&("upstream_detail".to_string(), "TLS error: Secret is not supplied by SDS".to_string()))
        );
        assert_eq!(pairs[pairs.len() - 2], ("outcome".to_string(), "no_certificate".to_string()));
        assert_eq!(pairs[0], ("decision".to_string(), "allow".to_string()), "the policy did allow it");
        // No detail: the outcome alone.
        let mut line = record(&evaluation, principal, "");
        push_outcome(&mut line, Outcome::UpstreamConnectFailure, "");
        assert!(line.ends_with(" dry_run=allow outcome=upstream_connect_failure"), "{line}");
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names, ["no_certificate", "upstream_tls_error", "upstream_connect_failure", "upstream_dns_failure"]);
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| o.index() == i));
    }
}
