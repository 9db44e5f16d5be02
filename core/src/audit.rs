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

use std::fmt::Write;

use crate::decision::{Decision, Evaluation};

/// The filter-state key of the record (Envoy prefixes it with `wasm.`).
pub const FILTER_STATE_KEY: &str = "egress_identity.audit";

/// The filter-state key of the record as a `google.protobuf.Struct` (Envoy prefixes it with `wasm.`): an
/// access log's `%FILTER_STATE(wasm.egress_identity.decision:TYPED)%` renders it as a JSON object.
pub const STRUCT_FILTER_STATE_KEY: &str = "egress_identity.decision";
/// The type of [`record_struct`]'s bytes.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// The record's fields in order, empty values left out.
fn fields<'a>(evaluation: &'a Evaluation<'_>, principal: &'a str, mut field: impl FnMut(&str, &'a str)) {
    let mut field = |key: &str, value: &'a str| {
        if !value.is_empty() {
            field(key, value);
        }
    };
    match evaluation.decision {
        Decision::Allow(allowed) => {
            field("decision", "allow");
            field("principal", principal);
            field("destination", allowed.destination);
            field("gateway_policy", allowed.gateway_policy);
            field("destination_policy", allowed.destination_policy);
            field("identity", &allowed.identity.name);
        }
        Decision::Deny(denial) => {
            field("decision", "deny");
            field("principal", principal);
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

/// The audit record of `evaluation` for the caller `principal` (empty when it has none).
pub fn record(evaluation: &Evaluation<'_>, principal: &str) -> String {
    let mut line = String::with_capacity(192);
    fields(evaluation, principal, |key, value| {
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
pub fn record_struct(evaluation: &Evaluation<'_>, principal: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    fields(evaluation, principal, |key, value| {
        // Struct.fields (1): map entry { key (1): string, value (2): Value { string_value (3) } }.
        let value_len = 1 + varint_len(value.len()) + value.len();
        let entry_len = 1 + varint_len(key.len()) + key.len() + 1 + varint_len(value_len) + value_len;
        out.push(0x0a);
        push_varint(&mut out, entry_len);
        out.push(0x0a);
        push_varint(&mut out, key.len());
        out.extend_from_slice(key.as_bytes());
        out.push(0x12);
        push_varint(&mut out, value_len);
        out.push(0x1a);
        push_varint(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    });
    out
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
        record(&config.evaluate(Ok(&id), &request), principal)
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
            let line = record(&evaluation, principal);
            let pairs = decode_struct(&record_struct(&evaluation, principal));
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(joined.join(" "), line);
        }
        // A value longer than 127 bytes takes a two-byte length.
        let long = format!("spiffe://cluster.local/ns/team/sa/{}", "a".repeat(200));
        let id = SpiffeId::parse(&long).unwrap();
        let request = Request { authority: "api.partner.example", method: "GET", path: "/v1" };
        let pairs = decode_struct(&record_struct(&config.evaluate(Ok(&id), &request), &long));
        assert!(pairs.contains(&("principal".to_string(), long.clone())), "{pairs:?}");
    }
}
