//! `egress-identity`: the operator CLI. It runs the same core code as the filter.

use std::path::PathBuf;
use std::process::ExitCode;

mod certificate_material;
mod doctor;
mod explain;
mod migrate;
mod release;
mod render;
mod sds;
mod secrets;
mod validate;

use clap::{Parser, Subcommand};
use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::request::Request;
use egress_identity_core::spiffe_id::SpiffeId;
use render::chart;
use render::envoy::{name_value, EnvoyOptions, HostPort};
use render::istio::{self, IstioMode, IstioOptions};
use render::kuma::{self, KumaOptions};
use render::{Manifest, PolicyFile};
use validate::PlatformArg;

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
    /// Check a policy as every `render` will: print every error with the JSON path of the field (and the
    /// platforms it applies to, when not all), and what a platform leaves out.
    ///
    /// Exit status 0 when every platform asked accepts the policy, 1 when one does not.
    Validate {
        /// The policy (JSON).
        config: PathBuf,
        /// Check for this platform only (repeatable; default: every platform, with `render`'s defaults).
        #[arg(long, value_enum)]
        platform: Vec<PlatformArg>,
    },
    /// Show how the filter decides one request (or, with --sni, one L4 connection): each layer's verdict,
    /// the policy and rule that decided, and the external identity chosen.
    ///
    /// Exit status 0 when the request would be allowed, 3 when denied, 1 on a bad configuration.
    Explain {
        /// The policy (JSON), decided as plain Envoy receives requests; or a rendered plugin configuration,
        /// decided as its platform receives them.
        config: PathBuf,
        /// Decide as this platform receives the request (with render's defaults), e.g. kuma: --host
        /// partner-api.extsvc.mesh.local.
        #[arg(long, value_enum)]
        platform: Option<PlatformArg>,
        /// The caller's SPIFFE ID; omit it for a caller without one.
        #[arg(long)]
        principal: Option<String>,
        /// The external host the caller asks for (`:authority` without port).
        #[arg(long, required_unless_present = "sni", conflicts_with = "sni")]
        host: Option<String>,
        /// Explain a connection to the L4 listener instead of a request: the SNI it names (tcp and tls
        /// destinations).
        #[arg(long, conflicts_with_all = ["method", "path"])]
        sni: Option<String>,
        /// For a tls passthrough connection, the server name of the caller's own ClientHello inside it
        /// (default: the same as --sni).
        #[arg(long, requires = "sni", value_name = "NAME")]
        inner_sni: Option<String>,
        /// The destination port; the configuration's defaultPort when omitted.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        method: Option<String>,
        #[arg(long)]
        path: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the file-based SDS resources a `render envoy` gateway reads, from your own PEM files.
    ///
    /// One file per secret in DIR (gateway-cert, mesh-ca, external-<identity>, <destination>-ca), each
    /// replaced atomically so a running Envoy reloads it. Every file is checked first, and nothing is
    /// written when one fails (exit 1, every problem named with its identity or role and file): a
    /// certificate file must hold certificates only (no private key), each valid now (a warning when one
    /// expires within 30 days); a key must be its certificate's; a CA file must hold CAs only. With
    /// --policy, every secret that policy's gateway reads must be given (gateway certificate and mesh CA
    /// included), and each identity's certificate must carry what the policy declares (subject CN, DNS and
    /// URI SANs). --identity needs --policy.
    Sds {
        /// The directory of the SDS resources (render envoy's --sds-dir, relative to Envoy's directory).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The policy: every secret its gateway reads must be given, and it declares what each identity's
        /// certificate carries. Required with --identity.
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// The gateway's server certificate chain (PEM, leaf first, no key), presented to callers.
        #[arg(long, value_name = "PEM", requires = "gateway_key")]
        gateway_cert: Option<PathBuf>,
        /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, Ed25519 or RSA).
        #[arg(long, value_name = "PEM", requires = "gateway_cert")]
        gateway_key: Option<PathBuf>,
        /// A CA that issues callers' SVIDs (repeatable: old and new during a CA rotation).
        #[arg(long, value_name = "PEM")]
        mesh_ca: Vec<PathBuf>,
        /// An external identity's client certificate chain (leaf first, no key) and its key (repeatable;
        /// needs --policy).
        #[arg(long, value_name = "IDENTITY=CERT.pem,KEY.pem", value_parser = identity_files)]
        identity: Vec<(String, (PathBuf, PathBuf))>,
        /// The CA that verifies a destination's partner (repeatable).
        #[arg(long, value_name = "DESTINATION=PEM", value_parser = name_value::<PathBuf>)]
        ca: Vec<(String, PathBuf)>,
        /// The secret name of a destination's CA, as given to `render envoy --ca-secret` (default
        /// <destination>-ca). Repeatable.
        #[arg(long = "ca-secret", value_name = "DESTINATION=SECRET", value_parser = name_value::<String>)]
        ca_secret: Vec<(String, String)>,
    },
    /// Write the Kubernetes Secrets the `render istio|kuma` manifests read, from your own PEM files.
    ///
    /// Istio: egress-identity-<identity> (tls.crt, tls.key, ca.crt: the partner's CA). Kuma:
    /// <destination>-ca, egress-identity-<identity>-cert and -key (system.kuma.io/secret). Every Secret the
    /// policy's manifests read must be given, and nothing else; every file is checked as `sds` checks it
    /// (each identity's certificate against what the policy declares). Exit 1 names every problem.
    /// Output on stdout, or --out FILE (mode 0600): it holds private keys.
    Secrets {
        #[command(subcommand)]
        target: SecretsTarget,
    },
    /// Check a running gateway against the policy, through its admin API: the plugin configuration it loaded
    /// is this policy, every identity's cluster presents the certificate the policy declares (not expiring
    /// soon), every destination has a listener or route, and the metrics are exported with their labels.
    ///
    /// Exit status 0 when the gateway runs the policy, 1 with the list of what differs, 2 when the gateway
    /// cannot be asked.
    Doctor {
        /// The gateway's admin interface, e.g. http://127.0.0.1:9901 (kubectl port-forward POD 15000 for Istio).
        admin: String,
        /// The policy (JSON).
        policy: PathBuf,
        /// A certificate expiring within this many days is reported.
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        expiry_days: u32,
    },
    /// Convert a policy of the previous format (which named Envoy clusters and platform hosts) into the
    /// current, platform-neutral one; print what changed that you must know.
    ///
    /// Exit status 0 with the new policy on stdout (or --out), 1 with every problem that cannot be converted
    /// faithfully, each with its JSON path.
    Migrate {
        /// The policy in the previous format.
        old: PathBuf,
        /// Write the new policy to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Render what goes with a policy file: the Envoy bootstrap, or the Istio or Kuma manifests.
    ///
    /// The policy is validated first (errors with JSON paths, exit 1) and embedded verbatim. Output on
    /// stdout; exit 2 when the valid policy cannot be rendered as asked.
    Render {
        #[command(subcommand)]
        target: RenderTarget,
    },
}

/// What `secrets istio` and `secrets kuma` share.
#[derive(clap::Args)]
struct SecretFiles {
    /// The policy (plugin configuration, JSON): it says which Secrets the manifests read.
    config: PathBuf,
    /// An external identity's client certificate chain (leaf first, no key) and its key (repeatable).
    #[arg(long, value_name = "IDENTITY=CERT.pem,KEY.pem", value_parser = identity_files)]
    identity: Vec<(String, (PathBuf, PathBuf))>,
    /// The CA that verifies a destination's partner (repeatable).
    #[arg(long, value_name = "DESTINATION=PEM", value_parser = name_value::<PathBuf>)]
    ca: Vec<(String, PathBuf)>,
    /// Write to this file (created with mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SecretsTarget {
    /// For `render istio` (gateway or waypoint): one Secret per external identity.
    Istio {
        #[command(flatten)]
        files: SecretFiles,
        #[arg(long, value_enum, default_value = "gateway")]
        mode: IstioMode,
        /// Namespace of the gateway or waypoint (default istio-egress, or egress-waypoint).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// For `render kuma`: the partners' CAs and each identity's certificate and key, as Kuma Secrets.
    Kuma {
        #[command(flatten)]
        files: SecretFiles,
        #[arg(long, default_value = "default")]
        mesh: String,
        /// Kuma's system namespace.
        #[arg(long, default_value = "kuma-system")]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum RenderTarget {
    /// The Envoy v3 bootstrap: mTLS listener, header_mutation -> egress-identity -> router with
    /// cluster_header, and one upstream cluster per external identity, every certificate from file SDS.
    ///
    /// SDS secrets: gateway-cert (listener certificate), mesh-ca (callers' CA), external-<identity name>
    /// (each identity's client certificate), <destination>-ca (the partner's CA). SNI and the checked DNS
    /// SAN are the destination's host.
    Envoy {
        /// The policy (JSON).
        config: PathBuf,
        /// Listener address.
        #[arg(long, default_value = "0.0.0.0:10443", value_name = "ADDR:PORT")]
        listen: HostPort,
        /// Address of the network (L4) filter's listener, for tcp/tls destinations (only when the policy has
        /// some): it listens there on every port a tcp/tls destination declares, the port callers connect to.
        #[arg(long = "l4-address", default_value = "0.0.0.0", value_name = "ADDR")]
        l4_address: String,
        /// Admin interface address.
        #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR:PORT")]
        admin: HostPort,
        /// Listener serving only /stats/prometheus (for scraping the pod; the admin interface stays local).
        #[arg(long, default_value = "0.0.0.0:15090", value_name = "ADDR:PORT")]
        metrics: HostPort,
        /// The filter module, relative to Envoy's working directory.
        #[arg(long, default_value = "dist/egress_identity.wasm", value_name = "PATH")]
        wasm: String,
        /// Where a destination's clusters connect (default: its first exact host and first port; a host
        /// name is resolved with LOGICAL_DNS, an IP address is STATIC). Repeatable.
        #[arg(long, value_name = "DESTINATION=ADDR:PORT", value_parser = name_value::<HostPort>)]
        upstream: Vec<(String, HostPort)>,
        /// SDS secret of the CA that verifies a destination (default <destination>-ca). Repeatable.
        #[arg(long = "ca-secret", value_name = "DESTINATION=SECRET", value_parser = name_value::<String>)]
        ca_secret: Vec<(String, String)>,
        /// Directory of the SDS resource files, relative to Envoy's working directory.
        #[arg(long, default_value = "sds", value_name = "DIR")]
        sds_dir: String,
        /// Access log file (JSON lines with the audit record; the container's stdout by default).
        #[arg(long, default_value = "/dev/stdout", value_name = "PATH")]
        access_log: String,
        /// Maximum life of an upstream connection, in seconds (bounds the use of a rotated-out certificate).
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        max_connection_duration: u32,
        /// The gRPC SDS server of the single-cluster destinations' identities (sharedCluster): ADDR:PORT,
        /// or unix:PATH (e.g. the SPIRE agent's socket). Required when the policy has such a destination:
        /// file SDS holds one secret per file.
        #[arg(long = "identity-sds", value_name = "ADDR:PORT|unix:PATH")]
        identity_sds: Option<String>,
        /// A DNS server for the names of dynamic destinations (wildcard, several hosts or ports), instead
        /// of the system's resolver. Repeatable.
        #[arg(long = "dns-resolver", value_name = "ADDR:PORT")]
        dns_resolver: Vec<HostPort>,
        /// Let dynamic destinations' names resolve into this range after all, one of those refused by
        /// default (loopback, RFC 1918, link-local, CGNAT, ULA; e.g. 127.0.0.0/8 for a local test). Repeatable.
        #[arg(long = "allow-resolved", value_name = "CIDR")]
        allow_resolved: Vec<String>,
        /// The SPIRE agent's SDS socket: the listener presents the gateway's X.509-SVID and verifies callers
        /// against SPIRE's bundles (own and federated trust domains), instead of the files gateway-cert and
        /// mesh-ca. With --gateway-id.
        #[arg(long = "spire-agent", value_name = "unix:PATH", requires = "gateway_id")]
        spire_agent: Option<String>,
        /// The SPIFFE ID the gateway is registered with in SPIRE (the name of its SVID's SDS secret).
        #[arg(long = "gateway-id", value_name = "SPIFFE_ID", requires = "spire_agent")]
        gateway_id: Option<String>,
    },
    /// Istio manifests: egress gateway (sidecar mode) or ambient egress waypoint.
    Istio {
        /// The policy (JSON).
        config: PathBuf,
        #[arg(long, value_enum, default_value = "gateway")]
        mode: IstioMode,
        /// Namespace of the gateway or waypoint (default istio-egress, or egress-waypoint).
        #[arg(long)]
        namespace: Option<String>,
        /// The filter's OCI image, pinned by digest.
        #[arg(long, default_value = istio::DEFAULT_IMAGE, value_name = "oci://...@sha256:...")]
        image: String,
        /// Pin the image to a release: its manifest (`make release`'s release.json) gives the digest of its
        /// OCI artifact (the Wasm variant).
        #[arg(long, value_name = "release.json", conflicts_with = "image")]
        release: Option<PathBuf>,
        /// Where the release's OCI artifact was pushed (REGISTRY/REPOSITORY), if its manifest does not say.
        #[arg(long, value_name = "REGISTRY/REPOSITORY", requires = "release")]
        image_repository: Option<String>,
        /// A namespace whose workloads the NetworkPolicy keeps off the external network, besides those the
        /// policy names. Repeatable.
        #[arg(long = "workload-namespace", value_name = "NAMESPACE")]
        workload_namespace: Vec<String>,
        /// Gateway mode, dynamic destinations: a DNS server for the gateway's forward-proxy cache instead
        /// of the pod's resolver. Repeatable.
        #[arg(long = "dns-resolver", value_name = "ADDR:PORT")]
        dns_resolver: Vec<HostPort>,
        /// Gateway mode, dynamic destinations: let their names resolve into this range after all, one of
        /// those refused by default (loopback, RFC 1918, link-local, CGNAT, ULA; e.g. 10.0.0.0/8 for partners
        /// inside your network). Repeatable.
        #[arg(long = "allow-resolved", value_name = "CIDR")]
        allow_resolved: Vec<String>,
        /// Write one file per kind into this directory instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Write a Helm chart of the manifests into this directory instead, with the policy as its values
        /// (refusing any other) and --image as `wasm.url`.
        #[arg(long, value_name = "DIR", conflicts_with = "out_dir")]
        chart: Option<PathBuf>,
    },
    /// Kuma manifests for a mesh-scoped ZoneEgress.
    Kuma {
        /// The policy (JSON).
        config: PathBuf,
        #[arg(long, default_value = "default")]
        mesh: String,
        #[arg(long, default_value = "zone-1")]
        zone: String,
        /// Kuma's system namespace.
        #[arg(long, default_value = "kuma-system")]
        namespace: String,
        /// The partner endpoint of a destination (default: its host and port). Repeatable.
        #[arg(long, value_name = "DESTINATION=HOST:PORT", value_parser = name_value::<HostPort>)]
        upstream: Vec<(String, HostPort)>,
        /// A namespace whose workloads the NetworkPolicy keeps off the external network, besides those the
        /// policy names. Repeatable.
        #[arg(long = "workload-namespace", value_name = "NAMESPACE")]
        workload_namespace: Vec<String>,
        /// SHA-256 (hex) of the module the zone egress fetches.
        #[arg(long, default_value = kuma::SHA256_PLACEHOLDER, value_name = "HEX")]
        wasm_sha256: String,
        /// Pin the module to a release: its manifest (`make release`'s release.json) gives the module's
        /// SHA-256.
        #[arg(long, value_name = "release.json", conflicts_with = "wasm_sha256")]
        release: Option<PathBuf>,
        /// SPIRE issues the dataplanes' identities, in this trust domain (MeshIdentity provider `Spire`); it
        /// must be the policy's localTrustDomain or one of its aliases.
        #[arg(long, value_name = "TRUST_DOMAIN")]
        spire: Option<String>,
        /// Port of the zone egress listener: the destination port tcp and tls destinations must list.
        #[arg(long, default_value_t = 10002, value_name = "PORT")]
        egress_port: u16,
        /// Write one file per kind into this directory instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Write a Helm chart of the manifests into this directory instead, with the policy as its values
        /// (refusing any other) and --wasm-sha256 as `wasm.sha256`.
        #[arg(long, value_name = "DIR", conflicts_with = "out_dir")]
        chart: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::SpiffeId { id } => spiffe_id(&id),
        Command::Validate { config, platform } => match std::fs::read_to_string(&config) {
            Ok(text) => validate::validate(&config, &text, &platform),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Explain { config, platform, principal, host, sni, inner_sni, port, method, path, json } => {
            let Some(config) = load(&config, platform) else { return ExitCode::FAILURE };
            if let Some(sni) = sni {
                let port = port.unwrap_or(config.default_port);
                let inner_sni = inner_sni.unwrap_or_else(|| sni.clone());
                let connection = explain::Connection { sni: &sni, port, inner_sni: &inner_sni };
                return explain::explain_connection(&config, principal.as_deref(), &connection, json);
            }
            let host = host.unwrap_or_default();
            let authority = match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            };
            let (method, path) = (method.unwrap_or_else(|| "GET".into()), path.unwrap_or_else(|| "/".into()));
            let request = Request { authority: &authority, method: &method, path: &path };
            explain::explain(&config, principal.as_deref(), &request, json)
        }
        Command::Render { target } => render_command(target),
        Command::Migrate { old, out } => migrate_command(&old, out.as_deref()),
        Command::Doctor { admin, policy, expiry_days } => match std::fs::read_to_string(&policy) {
            Ok(text) => doctor::run(&admin, &policy, &text, expiry_days),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", policy.display());
                ExitCode::FAILURE
            }
        },
        Command::Secrets { target } => secrets_command(target),
        Command::Sds { out, policy, gateway_cert, gateway_key, mesh_ca, identity, ca, ca_secret } => {
            let policy_file = match &policy {
                Some(path) => match load_policy(path, &PlatformSpec::Envoy) {
                    Some(p) => Some(p),
                    None => return ExitCode::FAILURE,
                },
                None => None,
            };
            let request = sds::SdsRequest {
                out,
                gateway: gateway_cert.zip(gateway_key),
                mesh_ca,
                identities: identity.into_iter().collect(),
                cas: ca.into_iter().collect(),
                ca_secrets: ca_secret.into_iter().collect(),
            };
            let mut checker = certificate_material::Checker::new();
            let result = sds::write(&request, policy_file.as_ref(), &mut checker);
            for warning in &checker.warnings {
                eprintln!("sds: warning: {warning}");
            }
            match result {
                Ok(files) => {
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for line in e.lines() {
                        eprintln!("sds: {line}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn migrate_command(path: &std::path::Path, out: Option<&std::path::Path>) -> ExitCode {
    let old = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(old) => old,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match migrate::migrate(&old) {
        Err(problems) => {
            for p in problems {
                eprintln!("{}: {p}", path.display());
            }
            ExitCode::FAILURE
        }
        Ok(migrated) => {
            for note in &migrated.notes {
                eprintln!("note: {note}");
            }
            let text = migrate::to_text(&migrated.policy);
            match out {
                None => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Some(file) => match std::fs::write(file, text) {
                    Ok(()) => {
                        eprintln!("wrote {}", file.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        ExitCode::FAILURE
                    }
                },
            }
        }
    }
}

fn secrets_command(target: SecretsTarget) -> ExitCode {
    let (files, platform, namespace, mesh, spec) = match target {
        SecretsTarget::Istio { files, mode, namespace } => {
            let namespace = namespace.unwrap_or_else(|| mode.default_namespace().into());
            (files, secrets::Platform::Istio, namespace, String::new(), mode.platform())
        }
        SecretsTarget::Kuma { files, mesh, namespace } => {
            // Secret names do not depend on the zone or the egress port: render kuma's defaults.
            let spec = PlatformSpec::Kuma {
                mesh: mesh.clone(),
                zone: "zone-1".into(),
                namespace: namespace.clone(),
                egress_port: 10002,
            };
            (files, secrets::Platform::Kuma, namespace, mesh, spec)
        }
    };
    let Some(policy) = load_policy(&files.config, &spec) else { return ExitCode::FAILURE };
    let request = secrets::SecretsRequest {
        platform,
        namespace,
        mesh,
        identities: files.identity.into_iter().collect(),
        cas: files.ca.into_iter().collect(),
    };
    let mut checker = certificate_material::Checker::new();
    let result = secrets::render(&request, &policy, &mut checker);
    for warning in &checker.warnings {
        eprintln!("secrets: warning: {warning}");
    }
    let text = match result {
        Ok(text) => text,
        Err(e) => {
            for line in e.lines() {
                eprintln!("secrets: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    match &files.out {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match sds::write_private(path, &text) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("secrets: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `IDENTITY=CERT.pem,KEY.pem`.
fn identity_files(text: &str) -> Result<(String, (PathBuf, PathBuf)), String> {
    let (name, files) = name_value::<String>(text)?;
    let (cert, key) = files.split_once(',').ok_or_else(|| format!("{text:?} is not IDENTITY=CERT.pem,KEY.pem"))?;
    Ok((name, (PathBuf::from(cert), PathBuf::from(key))))
}

/// The policy at `path`, compiled for `platform` (errors and warnings on stderr).
fn load_policy(path: &PathBuf, platform: &PlatformSpec) -> Option<PolicyFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return None;
        }
    };
    match PolicyFile::for_platform(&text, platform) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {error}", path.display());
            }
            None
        }
    }
}

/// Where `render` writes.
enum Output {
    Stdout,
    /// One file per kind (`--out-dir`).
    Dir(PathBuf),
    /// A Helm chart (`--chart`).
    Chart(PathBuf),
}

/// The files of `manifests` and where they go: a chart of them (`chart`: its directory and what it is made
/// from), one file each in `out_dir`, or stdout.
fn manifest_files(
    manifests: &[Manifest],
    out_dir: Option<PathBuf>,
    chart: Option<(PathBuf, chart::Source)>,
) -> Result<(Output, Vec<(String, String)>), render::RenderError> {
    match (chart, out_dir) {
        (Some((dir, source)), _) => Ok((Output::Chart(dir), chart::files(&source, manifests)?)),
        (None, Some(dir)) => Ok((Output::Dir(dir), manifests.iter().map(Manifest::file).collect())),
        (None, None) => Ok((Output::Stdout, manifests.iter().map(Manifest::file).collect())),
    }
}

fn render_command(target: RenderTarget) -> ExitCode {
    let (config, result) = match target {
        RenderTarget::Envoy {
            config,
            listen,
            l4_address,
            admin,
            metrics,
            wasm,
            upstream,
            ca_secret,
            sds_dir,
            access_log,
            max_connection_duration,
            identity_sds,
            dns_resolver,
            allow_resolved,
            spire_agent,
            gateway_id,
        } => {
            let Some(policy) = load_policy(&config, &PlatformSpec::Envoy) else { return ExitCode::FAILURE };
            let opts = EnvoyOptions {
                identity_sds,
                dns_resolvers: dns_resolver,
                allow_resolved,
                spire_agent,
                gateway_id,
                listen,
                l4_address,
                admin,
                metrics,
                wasm,
                upstreams: upstream.into_iter().collect(),
                ca_secrets: ca_secret.into_iter().collect(),
                sds_dir,
                access_log,
                max_connection_duration,
            };
            if let Some(warning) = render::envoy::scale_warning(&policy) {
                eprintln!("warning: {warning}");
            }
            (config, render::envoy::render(&policy, &opts).map(|text| (Output::Stdout, vec![(String::new(), text)])))
        }
        RenderTarget::Istio {
            config,
            mode,
            namespace,
            image,
            release,
            image_repository,
            workload_namespace,
            dns_resolver,
            allow_resolved,
            out_dir,
            chart,
        } => {
            let Some(policy) = load_policy(&config, &mode.platform()) else { return ExitCode::FAILURE };
            let pinned = release.map(|r| {
                let release = release::Release::load(&r)?;
                let image = release.istio_image(image_repository.as_deref())?;
                eprintln!("pinned to egress-identity {}: {image}", release.version);
                Ok::<_, String>(image)
            });
            let image = match pinned {
                None => image,
                Some(Ok(pinned)) => pinned,
                Some(Err(e)) => {
                    eprintln!("--release: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = IstioOptions {
                namespace: namespace.unwrap_or_else(|| mode.default_namespace().into()),
                mode,
                image,
                workload_namespaces: workload_namespace,
                dns_resolvers: dns_resolver,
                allow_resolved,
            };
            if opts.image == istio::DEFAULT_IMAGE {
                eprintln!("warning: no --image: the WasmPlugin/TrafficExtension url is a placeholder (marked PLACEHOLDER in the output)");
            }
            let (platform, command) = match mode {
                IstioMode::Gateway => ("istio-gateway", "istio --mode gateway"),
                IstioMode::Waypoint => ("istio-waypoint", "istio --mode waypoint"),
            };
            let chart = chart.map(|dir| {
                (dir, chart::Source { platform, command, policy: &policy.text, notes: istio::chart_notes(&opts) })
            });
            (config, istio::render(&policy, &opts).and_then(|m| manifest_files(&m, out_dir, chart)))
        }
        RenderTarget::Kuma {
            config,
            mesh,
            zone,
            namespace,
            upstream,
            wasm_sha256,
            release,
            spire,
            egress_port,
            workload_namespace,
            out_dir,
            chart,
        } => {
            let wasm_sha256 = match release.map(|r| release::Release::load(&r)) {
                None => wasm_sha256,
                Some(Ok(release)) => {
                    eprintln!("pinned to egress-identity {}: module sha256 {}", release.version, release.wasm_sha256);
                    release.wasm_sha256
                }
                Some(Err(e)) => {
                    eprintln!("--release: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = KumaOptions {
                mesh,
                zone,
                namespace,
                upstreams: upstream.into_iter().collect(),
                wasm_sha256,
                egress_port,
                workload_namespaces: workload_namespace,
                spire_trust_domain: spire,
            };
            let Some(policy) = load_policy(&config, &opts.platform()) else { return ExitCode::FAILURE };
            if opts.wasm_sha256 == kuma::SHA256_PLACEHOLDER {
                eprintln!("warning: no --wasm-sha256: the module's digest is a placeholder (marked PLACEHOLDER in the output)");
            }
            let chart = chart.map(|dir| {
                let notes = kuma::chart_notes(&opts);
                (dir, chart::Source { platform: "kuma", command: "kuma", policy: &policy.text, notes })
            });
            (config, kuma::render(&policy, &opts).and_then(|m| manifest_files(&m, out_dir, chart)))
        }
    };
    match result {
        Err(e) => {
            eprintln!("{}: cannot render: {e}", config.display());
            ExitCode::from(2)
        }
        Ok((Output::Stdout, files)) => {
            let texts: Vec<&str> = files.iter().map(|(_, text)| text.as_str()).collect();
            print!("{}", texts.join("---\n"));
            ExitCode::SUCCESS
        }
        Ok((Output::Chart(dir), files)) => match chart::write(&dir, &files) {
            Ok(written) => {
                written.iter().for_each(|path| eprintln!("wrote {}", path.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Ok((Output::Dir(dir), files)) => {
            for (name, text) in files {
                let path = dir.join(name);
                let parent = path.parent().unwrap_or(&dir);
                if let Err(e) = std::fs::create_dir_all(parent).and_then(|()| std::fs::write(&path, text)) {
                    eprintln!("{}: cannot write: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
    }
}

/// The document at `path`, compiled for `platform` (a policy), or for the platform it names.
fn load(path: &PathBuf, platform: Option<PlatformArg>) -> Option<Config> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return None;
        }
    };
    let compiled = match platform {
        Some(platform) => Config::load_for(&bytes, &platform.spec()),
        None => Config::load(&bytes),
    };
    match compiled {
        Ok(config) => Some(config),
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {error}", path.display());
            }
            None
        }
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
