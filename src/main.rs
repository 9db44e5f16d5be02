//! `egress-identity`: the operator CLI. It runs the same core code as the filter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_identity::config::Config;
use egress_identity::decision::{Decision, Evaluation, PrincipalError, Request};
use egress_identity::policy::Verdict;
use egress_identity::spiffe_id::SpiffeId;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "egress-identity", version, about = "Identity-aware egress for Envoy: operator tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check one SPIFFE ID as the filter does; print its trust domain and path.
    ///
    /// Exit status 0 when valid, 1 (with the rule that failed) when not.
    SpiffeId {
        /// e.g. spiffe://cluster.local/ns/team/sa/app1
        id: String,
    },
    /// Check a plugin configuration file; print every error with the JSON path of the field.
    ///
    /// Exit status 0 when valid, 1 when not.
    Validate {
        /// The plugin configuration (JSON), as given to Envoy or Istio's pluginConfig.
        config: PathBuf,
    },
    /// Show how the filter decides one request: each layer's verdict, the policy and rule that decided,
    /// and the external identity chosen.
    ///
    /// Exit status 0 when the request would be allowed, 3 when denied, 1 on a bad configuration.
    Explain {
        /// The plugin configuration (JSON).
        config: PathBuf,
        /// The caller's SPIFFE ID; omit it for a caller without one.
        #[arg(long)]
        principal: Option<String>,
        /// The external host the caller asks for (`:authority` without port).
        #[arg(long)]
        host: String,
        /// The destination port; the configuration's defaultPort when omitted.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::SpiffeId { id } => spiffe_id(&id),
        Command::Validate { config } => validate(&config),
        Command::Explain { config, principal, host, port, method, path, json } => {
            let Some(config) = load(&config) else { return ExitCode::FAILURE };
            let authority = match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            };
            let request = Request { authority: &authority, method: &method, path: &path };
            explain(&config, principal.as_deref(), &request, json)
        }
    }
}

fn load(path: &PathBuf) -> Option<Config> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return None;
        }
    };
    match Config::load(&bytes) {
        Ok(config) => Some(config),
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {error}", path.display());
            }
            None
        }
    }
}

fn explain(config: &Config, principal: Option<&str>, request: &Request<'_>, as_json: bool) -> ExitCode {
    let parsed = match principal {
        None => Err(PrincipalError::Missing),
        Some(p) => SpiffeId::parse(p).map_err(PrincipalError::InvalidSpiffeId),
    };
    let evaluation = config.evaluate(parsed.as_ref().map_err(|e| *e), request);
    let report = report(principal, request, &evaluation);
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
fn report(principal: Option<&str>, request: &Request<'_>, e: &Evaluation<'_>) -> Value {
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
}

fn spiffe_id(id: &str) -> ExitCode {
    match SpiffeId::parse(id) {
        Ok(id) => {
            println!("trust domain: {}", id.trust_domain());
            println!("path: {}", if id.path().is_empty() { "(none)" } else { id.path() });
            if let Some(ns) = id.namespace() {
                println!("namespace: {ns}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("invalid SPIFFE ID {id:?}: {e} ({})", e.code());
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &PathBuf) -> ExitCode {
    match load(path) {
        Some(config) => {
            println!(
                "{}: valid ({} gateway policies, {} destinations)",
                path.display(),
                config.gateway.len(),
                config.destinations.iter().count()
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
