//! `egress-identity explain`: how the filter decides one request, layer by layer, with the exact 403 body
//! or identity and the audit record the filter would write.

use std::process::ExitCode;

use egress_identity_core::audit;
use egress_identity_core::config::Config;
use egress_identity_core::decision::{Decision, Evaluation};
use egress_identity_core::policy::Verdict;
use egress_identity_core::principal::PrincipalError;
use egress_identity_core::request::Request;
use egress_identity_core::spiffe_id::SpiffeId;
use serde_json::{json, Value};

/// Prints the explanation; exit status 0 when the request would be allowed, 3 when denied.
pub fn explain(config: &Config, principal: Option<&str>, request: &Request<'_>, as_json: bool) -> ExitCode {
    let parsed = match principal {
        None => Err(PrincipalError::Missing),
        Some(p) => SpiffeId::parse(p).map_err(PrincipalError::InvalidSpiffeId),
    };
    let evaluation = config.evaluate(parsed.as_ref().map_err(|e| *e), request);
    let audit_record = audit::record(&evaluation, parsed.as_ref().map(SpiffeId::as_str).unwrap_or_default());
    let report = report(principal, request, &evaluation, &audit_record);
    if as_json {
        println!("{report:#}");
    } else {
        print_text(&report);
    }
    match evaluation.decision {
        Decision::Allow(_) => ExitCode::SUCCESS,
        Decision::Deny(_) => ExitCode::from(3),
    }
}

fn verdict(v: Option<Verdict<'_>>) -> Value {
    match v {
        None => Value::Null,
        Some(Verdict::Allow { policy, rule }) => json!({"verdict": "allow", "policy": policy, "rule": rule}),
        Some(Verdict::DeniedByPolicy { policy, rule }) => json!({"verdict": "deny", "policy": policy, "rule": rule}),
        Some(Verdict::NoMatchingAllow) => json!({"verdict": "deny", "policy": null, "rule": null}),
    }
}

/// The explanation as JSON: `decision` is exactly what the filter does (the 403 body on deny).
fn report(principal: Option<&str>, request: &Request<'_>, e: &Evaluation<'_>, audit_record: &str) -> Value {
    let decision = match e.decision {
        Decision::Allow(a) => json!({
            "decision": "allow",
            "destination": a.destination,
            "identity": &*a.identity.name,
            "cluster": &*a.identity.cluster,
        }),
        Decision::Deny(d) => serde_json::from_str(&d.to_json()).unwrap_or(Value::Null),
    };
    json!({
        "request": {"principal": principal, "authority": request.authority, "method": request.method, "path": request.path},
        "gateway": verdict(e.gateway),
        "destination": e.destination,
        "destinationPolicies": verdict(e.destination_verdict),
        "dryRun": {"gateway": verdict(e.gateway_shadow), "destination": verdict(e.destination_shadow)},
        "decision": decision,
        "audit": audit_record,
    })
}

fn print_text(report: &Value) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let layer = |v: &Value| match v {
        Value::Null => "not reached".to_string(),
        v => match &v["policy"] {
            Value::Null => format!("{} (no ALLOW policy matched)", s(&v["verdict"])),
            p => format!("{} by policy {} rule {}", s(&v["verdict"]), s(p), s(&v["rule"])),
        },
    };
    let r = &report["request"];
    println!("request:      {} {} {} from {}", s(&r["method"]), s(&r["authority"]), s(&r["path"]), s(&r["principal"]));
    println!("gateway:      {}", layer(&report["gateway"]));
    println!("destination:  {}", s(&report["destination"]));
    println!("destination policies: {}", layer(&report["destinationPolicies"]));
    for name in ["gateway", "destination"] {
        match report.pointer(&format!("/dryRun/{name}")) {
            None | Some(Value::Null) => {}
            Some(shadow) => println!("dry-run {name}: {}", layer(shadow)),
        }
    }
    let d = &report["decision"];
    if s(&d["decision"]) == "allow" {
        println!("decision:     allow as {} (cluster {})", s(&d["identity"]), s(&d["cluster"]));
    } else {
        println!("decision:     deny layer={} policy={} reason={}", s(&d["layer"]), s(&d["policy"]), s(&d["reason"]));
    }
    println!("audit record: {}", s(&report["audit"]));
}
