//! `egress-identity explain`: how the filter decides one request (or L4 connection), layer by layer, with the exact 403 body
//! or identity and the audit record the filter would write.

use std::process::ExitCode;

use egress_identity_core::audit;
use egress_identity_core::config::Config;
use egress_identity_core::config_document::Protocol;
use egress_identity_core::decision::{Decision, Evaluation, PassthroughVerdict};
use egress_identity_core::policy::Verdict;
use egress_identity_core::principal::PrincipalError;
use egress_identity_core::request::{normalize_host, split_authority, Request};
use egress_identity_core::spiffe_id::SpiffeId;
use egress_identity_core::tls_client_hello::ClientHello;
use serde_json::{json, Value};

/// A connection to the L4 listener, as the network filter sees it.
pub struct Connection<'a> {
    pub sni: &'a str,
    pub port: u16,
    /// The server name of the caller's own ClientHello (what a `tls` passthrough destination checks).
    pub inner_sni: &'a str,
}

fn parse_principal(principal: Option<&str>) -> Result<SpiffeId, PrincipalError> {
    match principal {
        None => Err(PrincipalError::Missing),
        Some(p) => SpiffeId::parse(p).map_err(PrincipalError::InvalidSpiffeId),
    }
}

/// Prints the explanation; exit status 0 when the request would be allowed, 3 when denied.
pub fn explain(config: &Config, principal: Option<&str>, request: &Request<'_>, as_json: bool) -> ExitCode {
    let parsed = parse_principal(principal);
    let evaluation = config.evaluate(parsed.as_ref().map_err(|e| *e), request);
    let concrete = split_authority(request.authority).map(|(host, _)| host).unwrap_or_default();
    let audit_record = audit::record(&evaluation, parsed.as_ref().map(SpiffeId::as_str).unwrap_or_default(), &concrete);
    let asked =
        json!({"principal": principal, "authority": request.authority, "method": request.method, "path": request.path});
    finish(report(config, asked, &evaluation, &audit_record), &evaluation.decision, as_json)
}

/// As [`explain`], for a connection: the same layers on SNI and port, then, for an allowed `tls`
/// passthrough destination, the check of the inner ClientHello's server name.
pub fn explain_connection(config: &Config, principal: Option<&str>, c: &Connection<'_>, as_json: bool) -> ExitCode {
    let parsed = parse_principal(principal);
    let mut evaluation = config.evaluate_connection(parsed.as_ref().map_err(|e| *e), c.sni, c.port);
    let asked = json!({"principal": principal, "sni": c.sni, "port": c.port, "innerSni": c.inner_sni});
    let concrete = normalize_host(c.sni).unwrap_or_default();
    if let Decision::Allow(allowed) = evaluation.decision {
        if allowed.protocol == Protocol::Tls {
            let hello = ClientHello::ServerName(c.inner_sni.to_string());
            let host = allowed.partner_host(&concrete);
            if let PassthroughVerdict::Deny(denial) =
                config.passthrough_verdict(host, allowed.allow_encrypted_client_hello, &hello)
            {
                evaluation.decision = Decision::Deny(denial);
            }
        }
    }
    let audit_record = audit::record(&evaluation, parsed.as_ref().map(SpiffeId::as_str).unwrap_or_default(), &concrete);
    finish(report(config, asked, &evaluation, &audit_record), &evaluation.decision, as_json)
}

fn finish(report: Value, decision: &Decision<'_>, as_json: bool) -> ExitCode {
    if as_json {
        println!("{report:#}");
    } else {
        print_text(&report);
    }
    match decision {
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

/// The explanation as JSON: `decision` is exactly what the filter does (the 403 body on deny; for a
/// connection, the audit record's fields before it is closed).
fn report(config: &Config, asked: Value, e: &Evaluation<'_>, audit_record: &str) -> Value {
    let decision = match e.decision {
        Decision::Allow(a) => {
            let mut allowed = json!({
                "decision": "allow",
                "destination": a.destination,
                "protocol": a.protocol.as_str(),
                "identity": &*a.identity.name,
                "cluster": &*a.identity.cluster,
            });
            if let Some(fields) = allowed.as_object_mut() {
                if let Some(secret) = &a.identity.secret {
                    // Single-cluster mode: the SDS secret the shared cluster presents for this request.
                    fields.insert("secret".into(), Value::from(&**secret));
                }
                // What the partner sees: the declared identity's certificate; nothing of the gateway's
                // for a passthrough.
                let declared = a.identity.declared.and_then(|_| config.identities.get(&a.identity.name));
                let presents = match declared {
                    Some((_, identity)) => identity.certificate.describe(),
                    None => "the caller's own certificate (tls passthrough)".to_string(),
                };
                fields.insert("presents".into(), Value::from(presents));
            }
            allowed
        }
        Decision::Deny(d) => serde_json::from_str(&d.to_json()).unwrap_or(Value::Null),
    };
    json!({
        "request": asked,
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
    if r["sni"].is_null() {
        println!(
            "request:      {} {} {} from {}",
            s(&r["method"]),
            s(&r["authority"]),
            s(&r["path"]),
            s(&r["principal"])
        );
    } else {
        let (sni, inner) = (s(&r["sni"]), s(&r["innerSni"]));
        let inner = if inner == sni { String::new() } else { format!(" (ClientHello names {inner})") };
        println!("connection:   sni {sni} port {}{inner} from {}", s(&r["port"]), s(&r["principal"]));
    }
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
        println!("partner sees: {}", s(&d["presents"]));
    } else {
        println!("decision:     deny layer={} policy={} reason={}", s(&d["layer"]), s(&d["policy"]), s(&d["reason"]));
    }
    println!("audit record: {}", s(&report["audit"]));
}
