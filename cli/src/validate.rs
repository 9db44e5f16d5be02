//! `egress-identity validate`: the core's compile step, for every platform asked (all of them by default),
//! so that what `validate` accepts is exactly what each `render` accepts: both ask the same compiler with the
//! same platform ([`egress_identity_core::config::Config::load_for`]).

use std::path::Path;
use std::process::ExitCode;

use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::config_error::ConfigError;

/// A platform as `validate --platform` and `doctor` name it, with the defaults of its `render` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformArg {
    Envoy,
    IstioGateway,
    IstioWaypoint,
    /// Kuma with `render kuma`'s defaults (mesh default, zone zone-1, namespace kuma-system, port 10002).
    Kuma,
}

impl PlatformArg {
    pub const ALL: [Self; 4] = [Self::Envoy, Self::IstioGateway, Self::IstioWaypoint, Self::Kuma];

    pub fn spec(self) -> PlatformSpec {
        match self {
            Self::Envoy => PlatformSpec::Envoy,
            Self::IstioGateway => PlatformSpec::IstioGateway,
            Self::IstioWaypoint => PlatformSpec::IstioWaypoint,
            Self::Kuma => PlatformSpec::Kuma {
                mesh: "default".into(),
                zone: "zone-1".into(),
                namespace: "kuma-system".into(),
                egress_port: 10002,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Envoy => "envoy",
            Self::IstioGateway => "istio-gateway",
            Self::IstioWaypoint => "istio-waypoint",
            Self::Kuma => "kuma",
        }
    }
}

/// One platform's verdict.
struct Outcome {
    platform: PlatformArg,
    result: Result<Config, Vec<ConfigError>>,
}

/// Compiles `text` for each platform and prints every error (once, with the platforms it applies to when not
/// all) and warning; exit status 0 when every platform accepts the policy.
pub fn validate(path: &Path, text: &str, platforms: &[PlatformArg]) -> ExitCode {
    let platforms: Vec<PlatformArg> = if platforms.is_empty() { PlatformArg::ALL.to_vec() } else { platforms.to_vec() };
    let outcomes: Vec<Outcome> = platforms
        .iter()
        .map(|&platform| Outcome { platform, result: Config::load_for(text.as_bytes(), &platform.spec()) })
        .collect();
    let shown = path.display();
    // Each error once, in the order first met, with the platforms that refuse for it.
    let mut errors: Vec<(String, Vec<&str>)> = Vec::new();
    for o in &outcomes {
        for e in o.result.as_ref().err().into_iter().flatten() {
            let line = e.to_string();
            match errors.iter_mut().find(|(l, _)| *l == line) {
                Some((_, names)) => names.push(o.platform.name()),
                None => errors.push((line, vec![o.platform.name()])),
            }
        }
    }
    for (line, names) in &errors {
        if names.len() == outcomes.len() {
            eprintln!("{shown}: {line}");
        } else {
            eprintln!("{shown}: [{}] {line}", names.join(", "));
        }
    }
    let accepted: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    if let Some(config) = accepted.first().and_then(|o| o.result.as_ref().ok()) {
        let names: Vec<&str> = accepted.iter().map(|o| o.platform.name()).collect();
        println!(
            "{shown}: valid for {} ({} gateway policies, {} destinations, {} identities)",
            names.join(", "),
            config.gateway.len(),
            config.destinations.iter().count(),
            config.identities.len()
        );
    }
    if accepted.len() == outcomes.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
