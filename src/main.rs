//! `egress-identity`: the operator CLI. It runs the same core code as the filter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_identity::config::Config;
use egress_identity::spiffe_id::SpiffeId;

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::SpiffeId { id } => spiffe_id(&id),
        Command::Validate { config } => validate(&config),
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
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match Config::load(&bytes) {
        Ok(config) => {
            println!(
                "{}: valid ({} gateway policies, {} destinations)",
                path.display(),
                config.gateway.len(),
                config.destinations.iter().count()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {error}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}
