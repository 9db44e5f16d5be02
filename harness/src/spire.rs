//! SPIRE on loopback, for the tests: a server and an agent (join-token node attestation, the unix workload
//! attestor), registration entries, and workloads that fetch their X.509-SVIDs from the agent's Workload API.
//!
//! The binaries are SPIRE's own (`.tools/bin/spire-server`, `.tools/bin/spire-agent`, built from `tools/spire` by
//! `scripts/setup.sh test`). Workloads are told apart by the path of their binary (`unix:path`): each
//! workload is a hard link to `spire-agent` in its own directory, run as `api fetch x509`, so the process the
//! agent attests is that link. The gateway is the Envoy binary, by its path too.
//!
//! Layout, under the directory given to [`SpireServer::start`]:
//!
//! ```text
//! <dir>/server/server.conf, data/, api.sock     the server and its admin API
//! <dir>/agent/agent.conf, data/, public/api.sock the agent; its Workload API and SDS socket
//! <dir>/workloads/<name>/spire-agent             a workload's binary (a hard link)
//! <dir>/logs/                                    server.log, agent.log
//! ```

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pki::CertFiles;
use crate::process::{self, Supervised};
use crate::{err, repo_root, Result};

/// `.tools/bin/<name>` (or `$SPIRE_SERVER_BIN` / `$SPIRE_AGENT_BIN`).
pub fn binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tools/bin").join(name))
}

/// The version of the SPIRE binaries (`spire-server --version`).
pub fn version() -> Result<String> {
    let out = Command::new(binary("spire-server")).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string() + String::from_utf8_lossy(&out.stderr).trim();
    Ok(text)
}

/// How a server federates with another trust domain (the `https_spiffe` profile of its bundle endpoint).
#[derive(Debug, Clone)]
pub struct Federation {
    pub trust_domain: String,
    /// The other server's bundle endpoint, `https://127.0.0.1:<port>`.
    pub bundle_endpoint_url: String,
}

/// What a server is started with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub trust_domain: String,
    /// The agent API port.
    pub port: u16,
    /// The bundle endpoint's port (served for other trust domains to federate with this one).
    pub bundle_port: Option<u16>,
    pub federates_with: Vec<Federation>,
    /// The default X.509-SVID lifetime (entries may set their own).
    pub svid_ttl: Duration,
    /// An upstream CA (certificate, key) that signs the server's CA (UpstreamAuthority "disk"): the trust
    /// domain's bundle is then that CA, and a test can sign certificates as the trust domain's CA would.
    pub upstream_ca: Option<CertFiles>,
}

/// A registration entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub spiffe_id: String,
    /// E.g. `unix:path:/x` ([`SpireAgent::workload_selector`]).
    pub selectors: Vec<String>,
    /// The X.509-SVID's lifetime.
    pub ttl: Duration,
    /// Trust domains (`spiffe://td`) whose bundles the holder receives besides its own.
    pub federates_with: Vec<String>,
    /// DNS SANs of the SVID (a server's name, for clients that check host names).
    pub dns_names: Vec<String>,
}

impl Entry {
    pub fn new(spiffe_id: &str, selector: String, ttl: Duration) -> Entry {
        Entry { spiffe_id: spiffe_id.into(), selectors: vec![selector], ttl, federates_with: vec![], dns_names: vec![] }
    }
}

/// A running SPIRE server.
#[derive(Debug)]
pub struct SpireServer {
    dir: PathBuf,
    socket: PathBuf,
    opts: ServerOptions,
    process: Supervised,
}

fn hcl_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| err(format!("{}: {e}", program.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(err(format!(
            "{} {}: {}\n{}{}",
            program.display(),
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(err(format!("{what}: not within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

impl SpireServer {
    /// Writes `<dir>/server/server.conf` and runs `spire-server run` until its health check passes.
    pub fn start(dir: &Path, opts: ServerOptions) -> Result<SpireServer> {
        let home = dir.join("server");
        fs::create_dir_all(home.join("data"))?;
        let socket = home.join("api.sock");
        let federation = match opts.bundle_port {
            None => String::new(),
            Some(port) => {
                let with: String = opts
                    .federates_with
                    .iter()
                    .map(|f| {
                        format!(
                            "    federates_with \"{td}\" {{\n      bundle_endpoint_url = \"{url}\"\n      bundle_endpoint_profile \"https_spiffe\" {{\n        endpoint_spiffe_id = \"spiffe://{td}/spire/server\"\n      }}\n    }}\n",
                            td = f.trust_domain,
                            url = f.bundle_endpoint_url
                        )
                    })
                    .collect();
                format!(
                    "  federation {{\n    bundle_endpoint {{\n      address = \"127.0.0.1\"\n      port = {port}\n    }}\n{with}  }}\n"
                )
            }
        };
        let conf = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{td}"
  data_dir = "{data}"
  log_level = "DEBUG"
  ca_ttl = "24h"
  default_x509_svid_ttl = "{ttl}"
{federation}}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
{upstream}}}
"#,
            upstream = match &opts.upstream_ca {
                None => String::new(),
                Some(ca) => format!(
                    "  UpstreamAuthority \"disk\" {{\n    plugin_data {{\n      cert_file_path = \"{}\"\n      key_file_path = \"{}\"\n    }}\n  }}\n",
                    ca.cert.display(),
                    ca.key.display()
                ),
            },
            port = opts.port,
            socket = socket.display(),
            td = opts.trust_domain,
            data = home.join("data").display(),
            ttl = hcl_duration(opts.svid_ttl),
        );
        let config = home.join("server.conf");
        fs::write(&config, conf)?;
        let mut process = Supervised::spawn(
            &format!("spire-server ({})", opts.trust_domain),
            &binary("spire-server"),
            &["run".into(), "-config".into(), config.display().to_string()],
            &home,
            &dir.join("logs").join(format!("spire-server-{}.log", opts.trust_domain)),
        )?;
        let probe = socket.display().to_string();
        let healthy = || run(&binary("spire-server"), &["healthcheck", "-socketPath", &probe]).is_ok();
        process.wait_ready(Duration::from_secs(60), || healthy() && port_open(opts.port))?;
        Ok(SpireServer { dir: dir.to_path_buf(), socket, opts, process })
    }

    pub fn trust_domain(&self) -> &str {
        &self.opts.trust_domain
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-socketPath", &socket]);
        run(&binary("spire-server"), &all)
    }

    /// A join token for an agent; its SPIFFE ID is `spiffe://<td>/spire/agent/join_token/<token>`.
    pub fn join_token(&self) -> Result<String> {
        let out = self.cli(&["token", "generate", "-ttl", "600"])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Token:"))
            .map(|t| t.trim().to_string())
            .ok_or_else(|| err(format!("token generate said {out:?}")))
    }

    /// Registers `entry` for workloads of the agent `parent`.
    pub fn register(&self, parent: &str, entry: &Entry) -> Result<()> {
        let ttl = entry.ttl.as_secs().max(1).to_string();
        let mut args =
            vec!["entry", "create", "-parentID", parent, "-spiffeID", &entry.spiffe_id, "-x509SVIDTTL", &ttl];
        for s in &entry.selectors {
            args.extend(["-selector", s.as_str()]);
        }
        for td in &entry.federates_with {
            args.extend(["-federatesWith", td.as_str()]);
        }
        for name in &entry.dns_names {
            args.extend(["-dns", name.as_str()]);
        }
        self.cli(&args).map(|_| ())
    }

    /// This trust domain's bundle, PEM.
    pub fn bundle_pem(&self) -> Result<String> {
        self.cli(&["bundle", "show", "-format", "pem"])
    }

    /// This trust domain's bundle in SPIFFE (JWKS) format, to bootstrap another server's federation with it.
    pub fn bundle_spiffe(&self) -> Result<String> {
        self.cli(&["bundle", "show", "-format", "spiffe"])
    }

    /// Sets the bundle of trust domain `td` (SPIFFE format): the first bundle of a federation relationship
    /// whose endpoint is authenticated by `https_spiffe`.
    pub fn set_federated_bundle(&self, td: &str, bundle: &str) -> Result<()> {
        let path = self.dir.join(format!("bundle-{td}.json"));
        fs::write(&path, bundle)?;
        let id = format!("spiffe://{td}");
        let path = path.display().to_string();
        self.cli(&["bundle", "set", "-format", "spiffe", "-id", &id, "-path", &path]).map(|_| ())
    }

    /// The bundles this server holds for other trust domains (`bundle list`), PEM by trust domain.
    pub fn federated_bundles(&self) -> Result<String> {
        self.cli(&["bundle", "list", "-format", "pem"])
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A running SPIRE agent, attested to its server with a join token.
#[derive(Debug)]
pub struct SpireAgent {
    dir: PathBuf,
    /// The agent's SPIFFE ID (the parent of the entries registered for its workloads).
    pub id: String,
    /// The Workload API (and SDS) socket.
    pub socket: PathBuf,
    config: PathBuf,
    trust_domain: String,
    process: Option<Supervised>,
}

impl SpireAgent {
    /// Attests an agent to `server` with a fresh join token and starts it.
    pub fn start(dir: &Path, server: &SpireServer) -> Result<SpireAgent> {
        let home = dir.join("agent");
        fs::create_dir_all(home.join("data"))?;
        fs::create_dir_all(home.join("public"))?;
        let token = server.join_token()?;
        let socket = home.join("public").join("api.sock");
        let bundle = home.join("bootstrap.pem");
        fs::write(&bundle, server.bundle_pem()?)?;
        let conf = format!(
            r#"agent {{
  data_dir = "{data}"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  trust_bundle_path = "{bundle}"
  trust_domain = "{td}"
  join_token = "{token}"
  sds {{
    default_svid_name = "default"
    default_bundle_name = "ROOTCA"
    default_all_bundles_name = "ALL"
  }}
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = "{data}"
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{
      discover_workload_path = true
    }}
  }}
}}
"#,
            data = home.join("data").display(),
            port = server.opts.port,
            socket = socket.display(),
            bundle = bundle.display(),
            td = server.trust_domain(),
        );
        let config = home.join("agent.conf");
        fs::write(&config, conf)?;
        let mut agent = SpireAgent {
            dir: dir.to_path_buf(),
            id: format!("spiffe://{}/spire/agent/join_token/{token}", server.trust_domain()),
            socket,
            config,
            trust_domain: server.trust_domain().to_string(),
            process: None,
        };
        agent.run()?;
        Ok(agent)
    }

    fn run(&mut self) -> Result<()> {
        let mut process = Supervised::spawn(
            &format!("spire-agent ({})", self.trust_domain),
            &binary("spire-agent"),
            &["run".into(), "-config".into(), self.config.display().to_string()],
            &self.dir.join("agent"),
            &self.dir.join("logs").join(format!("spire-agent-{}.log", self.trust_domain)),
        )?;
        let socket = self.socket.display().to_string();
        let healthy = || run(&binary("spire-agent"), &["healthcheck", "-socketPath", &socket]).is_ok();
        process.wait_ready(Duration::from_secs(60), healthy)?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the agent and starts it again: its key and SVID are on disk (KeyManager "disk"), so it comes back
    /// as the same agent without a new join token (a join token attests once).
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        self.run()
    }

    /// The binary of workload `name`: a hard link to `spire-agent` in its own directory (its `unix:path`).
    pub fn workload_binary(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("workloads").join(name);
        fs::create_dir_all(&dir)?;
        let path = dir.join("spire-agent");
        if !path.exists() {
            let source = binary("spire-agent");
            if fs::hard_link(&source, &path).is_err() {
                fs::copy(&source, &path)?;
            }
        }
        Ok(path.canonicalize()?)
    }

    /// The selector of workload `name` ([`SpireAgent::workload_binary`]).
    pub fn workload_selector(&self, name: &str) -> Result<String> {
        Ok(format!("unix:path:{}", self.workload_binary(name)?.display()))
    }

    /// Workload `name` fetches its X.509-SVID from the Workload API, waiting until the agent has one for it
    /// (entries reach the agent within its sync interval), and writes it to `out` (svid.0.pem, svid.0.key,
    /// bundle.0.pem, federated_bundle.0.N.pem).
    pub fn fetch_x509(&self, name: &str, out: &Path, timeout: Duration) -> Result<CertFiles> {
        fs::create_dir_all(out)?;
        let binary = self.workload_binary(name)?;
        let socket = self.socket.display().to_string();
        let dir = out.display().to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let fetched =
                run(&binary, &["api", "fetch", "x509", "-socketPath", &socket, "-write", &dir, "-timeout", "5s"]);
            match fetched {
                Ok(_) => return Ok(CertFiles { cert: out.join("svid.0.pem"), key: out.join("svid.0.key") }),
                Err(e) if Instant::now() > deadline => {
                    return Err(err(format!("workload {name}: no SVID within {timeout:?}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Supervised::log).unwrap_or_default()
    }
}

/// The first certificate of a PEM file (the SVID's leaf), DER.
pub fn first_certificate_der(pem_path: &Path) -> Result<Vec<u8>> {
    let text = fs::read(pem_path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|e| err(format!("{}: {e}", pem_path.display())))?;
    Ok(pem.contents)
}

/// Waits until `ok`, for SPIRE's asynchronous work (entry sync, federation refresh).
pub fn eventually(what: &str, timeout: Duration, ok: impl FnMut() -> bool) -> Result<()> {
    wait_until(what, timeout, ok)
}

/// The tail of a log, for failure messages.
pub fn tail(log: &str) -> String {
    process::tail(log, 40)
}
