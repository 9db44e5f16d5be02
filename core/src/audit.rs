//! The audit record of one decision: a single logfmt line (`key=value` pairs) that the adapter stores in
//! Envoy's filter state as `wasm.egress_identity.audit`, so an access log shows it with
//! `%FILTER_STATE(wasm.egress_identity.audit:PLAIN)%`.
//!
//! One record rather than one filter-state key per field: each key costs a host call per request.
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

/// The audit record of `evaluation` for the caller `principal` (empty when it has none).
pub fn record(evaluation: &Evaluation<'_>, principal: &str) -> String {
    let mut line = String::with_capacity(192);
    let mut field = |key: &str, value: &str| {
        if value.is_empty() {
            return;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
        push_value(&mut line, value);
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
    line
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
      "destinations": [ {
        "name": "partner-api", "hosts": ["api.partner.example"], "ports": [443],
        "policies": [ { "name": "callers", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
        "identities": [ { "name": "team.app1", "cluster": "partner-api|team-app1", "principals": ["cluster.local/ns/team/sa/*"] } ]
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
}
