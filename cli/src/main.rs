//! `egress-identity`: the operator CLI. It runs the same core code as the filter.

use std::path::PathBuf;
use std::process::ExitCode;

mod explain;
mod render;
mod sds;
mod secrets;

use clap::{Parser, Subcommand};
use egress_identity_core::config::Config;
use egress_identity_core::request::Request;
use egress_identity_core::spiffe_id::SpiffeId;
use render::envoy::{name_value, EnvoyOptions, HostPort};
use render::istio::{self, IstioMode, IstioOptions};
use render::kuma::{self, KumaOptions};
use render::PolicyFile;

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
    /// Show how the filter decides one request (or, with --sni, one L4 connection): each layer's verdict,
    /// the policy and rule that decided, and the external identity chosen.
    ///
    /// Exit status 0 when the request would be allowed, 3 when denied, 1 on a bad configuration.
    Explain {
        /// The plugin configuration (JSON).
        config: PathBuf,
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
    /// replaced atomically so a running Envoy reloads it. With --policy, every secret that policy's gateway
    /// reads must be given (exit 1 names the missing ones).
    Sds {
        /// The directory of the SDS resources (render envoy's --sds-dir, relative to Envoy's directory).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Check that every secret this policy's gateway reads is given.
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// The gateway's server certificate chain (PEM), presented to callers.
        #[arg(long, value_name = "PEM", requires = "gateway_key")]
        gateway_cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, value_name = "PEM", requires = "gateway_cert")]
        gateway_key: Option<PathBuf>,
        /// A CA that issues callers' SVIDs (repeatable: old and new during a CA rotation).
        #[arg(long, value_name = "PEM")]
        mesh_ca: Vec<PathBuf>,
        /// An external identity's client certificate chain and key (repeatable).
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
    /// policy's manifests read must be given, and nothing else (exit 1 names what is missing or unused).
    /// Output on stdout, or --out FILE (mode 0600): it holds private keys.
    Secrets {
        #[command(subcommand)]
        target: SecretsTarget,
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
    /// An external identity's client certificate chain and key (repeatable).
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
    /// SAN are the destination's first exact host.
    Envoy {
        /// The policy (plugin configuration, JSON).
        config: PathBuf,
        /// Listener address.
        #[arg(long, default_value = "0.0.0.0:10443", value_name = "ADDR:PORT")]
        listen: HostPort,
        /// Listener of the network (L4) filter, for tcp/tls destinations (only when the policy has some).
        /// Repeatable: one listener on every address given; the port a caller connects to is the port the
        /// destination must declare.
        #[arg(long = "listen-l4", default_value = "0.0.0.0:10444", value_name = "ADDR:PORT")]
        listen_l4: Vec<HostPort>,
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
    },
    /// Istio manifests: egress gateway (sidecar mode) or ambient egress waypoint.
    Istio {
        /// The policy (plugin configuration, JSON).
        config: PathBuf,
        #[arg(long, value_enum, default_value = "gateway")]
        mode: IstioMode,
        /// Namespace of the gateway or waypoint (default istio-egress, or egress-waypoint).
        #[arg(long)]
        namespace: Option<String>,
        /// The filter's OCI image, pinned by digest.
        #[arg(long, default_value = istio::DEFAULT_IMAGE, value_name = "oci://...@sha256:...")]
        image: String,
        /// A namespace whose workloads the NetworkPolicy keeps off the external network, besides those the
        /// policy names. Repeatable.
        #[arg(long = "workload-namespace", value_name = "NAMESPACE")]
        workload_namespace: Vec<String>,
        /// Write one file per kind into this directory instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Kuma manifests for a mesh-scoped ZoneEgress.
    Kuma {
        /// The policy (plugin configuration, JSON).
        config: PathBuf,
        #[arg(long, default_value = "default")]
        mesh: String,
        #[arg(long, default_value = "zone-1")]
        zone: String,
        /// Kuma's system namespace.
        #[arg(long, default_value = "kuma-system")]
        namespace: String,
        /// The partner endpoint of a destination (default: its first exact host and port 443). Repeatable.
        #[arg(long, value_name = "DESTINATION=HOST:PORT", value_parser = name_value::<HostPort>)]
        upstream: Vec<(String, HostPort)>,
        /// A namespace whose workloads the NetworkPolicy keeps off the external network, besides those the
        /// policy names. Repeatable.
        #[arg(long = "workload-namespace", value_name = "NAMESPACE")]
        workload_namespace: Vec<String>,
        /// SHA-256 (hex) of the module the zone egress fetches.
        #[arg(long, default_value = kuma::SHA256_PLACEHOLDER, value_name = "HEX")]
        wasm_sha256: String,
        /// Port of the zone egress listener: the destination port tcp and tls destinations must list.
        #[arg(long, default_value_t = 10002, value_name = "PORT")]
        egress_port: u16,
        /// Write one file per kind into this directory instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::SpiffeId { id } => spiffe_id(&id),
        Command::Validate { config } => validate(&config),
        Command::Explain { config, principal, host, sni, inner_sni, port, method, path, json } => {
            let Some(config) = load(&config) else { return ExitCode::FAILURE };
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
        Command::Secrets { target } => secrets_command(target),
        Command::Sds { out, policy, gateway_cert, gateway_key, mesh_ca, identity, ca, ca_secret } => {
            let policy_file = match &policy {
                Some(path) => match load_policy(path) {
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
            match sds::write(&request, policy_file.as_ref()) {
                Ok(files) => {
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sds: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn secrets_command(target: SecretsTarget) -> ExitCode {
    let (files, platform, namespace, mesh) = match target {
        SecretsTarget::Istio { files, mode, namespace } => {
            let namespace = namespace.unwrap_or_else(|| mode.default_namespace().into());
            (files, secrets::Platform::Istio, namespace, String::new())
        }
        SecretsTarget::Kuma { files, mesh, namespace } => (files, secrets::Platform::Kuma, namespace, mesh),
    };
    let Some(policy) = load_policy(&files.config) else { return ExitCode::FAILURE };
    let request = secrets::SecretsRequest {
        platform,
        namespace,
        mesh,
        identities: files.identity.into_iter().collect(),
        cas: files.ca.into_iter().collect(),
    };
    let text = match secrets::render(&request, &policy) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("secrets: {e}");
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

fn load_policy(path: &PathBuf) -> Option<PolicyFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return None;
        }
    };
    match PolicyFile::parse(&text) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {error}", path.display());
            }
            None
        }
    }
}

fn render_command(target: RenderTarget) -> ExitCode {
    let (config, result) = match target {
        RenderTarget::Envoy {
            config,
            listen,
            listen_l4,
            admin,
            metrics,
            wasm,
            upstream,
            ca_secret,
            sds_dir,
            access_log,
            max_connection_duration,
            identity_sds,
        } => {
            let Some(policy) = load_policy(&config) else { return ExitCode::FAILURE };
            let opts = EnvoyOptions {
                identity_sds,
                listen,
                listen_l4,
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
            (config, render::envoy::render(&policy, &opts).map(|text| (None, vec![(String::new(), text)])))
        }
        RenderTarget::Istio { config, mode, namespace, image, workload_namespace, out_dir } => {
            let Some(policy) = load_policy(&config) else { return ExitCode::FAILURE };
            let opts = IstioOptions {
                namespace: namespace.unwrap_or_else(|| mode.default_namespace().into()),
                mode,
                image,
                workload_namespaces: workload_namespace,
            };
            if opts.image == istio::DEFAULT_IMAGE {
                eprintln!("warning: no --image: the WasmPlugin/TrafficExtension url is a placeholder (marked PLACEHOLDER in the output)");
            }
            (config, istio::render(&policy, &opts).map(|files| (out_dir, files)))
        }
        RenderTarget::Kuma {
            config,
            mesh,
            zone,
            namespace,
            upstream,
            wasm_sha256,
            egress_port,
            workload_namespace,
            out_dir,
        } => {
            let Some(policy) = load_policy(&config) else { return ExitCode::FAILURE };
            let opts = KumaOptions {
                mesh,
                zone,
                namespace,
                upstreams: upstream.into_iter().collect(),
                wasm_sha256,
                egress_port,
                workload_namespaces: workload_namespace,
            };
            if opts.wasm_sha256 == kuma::SHA256_PLACEHOLDER {
                eprintln!("warning: no --wasm-sha256: the module's digest is a placeholder (marked PLACEHOLDER in the output)");
            }
            (config, kuma::render(&policy, &opts).map(|files| (out_dir, files)))
        }
    };
    match result {
        Err(e) => {
            eprintln!("{}: cannot render: {e}", config.display());
            ExitCode::from(2)
        }
        Ok((None, files)) => {
            let texts: Vec<&str> = files.iter().map(|(_, text)| text.as_str()).collect();
            print!("{}", texts.join("---\n"));
            ExitCode::SUCCESS
        }
        Ok((Some(dir), files)) => {
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
