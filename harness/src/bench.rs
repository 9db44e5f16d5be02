//! What the scale benchmarks (`identity_scale`, `dynamic_scale`) share: gateways rendered by the CLI with
//! `N` benchmark identities (`id-<i>`) whose certificates come from the harness's gRPC SDS server, Envoy
//! started natively (or under callgrind) on loopback, the nginx partner, and the readers of what they
//! measure (RSS, instructions per unit of work).
//!
//! A benchmark is a binary that gives up at the first error: [`fail`] prints `<program>: <message>` (the
//! name given to [`set_program`]) and exits 1.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};

use crate::pki::{CertFiles, Pki, WorkloadSpec, GATEWAY_HOST};
use crate::process::Supervised;
use crate::sds_server::{tls_certificate, SdsServer};
use crate::topology::{envoy_bin, nginx_bin};
use crate::{lds, Result};

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// Names the benchmark in [`fail`]'s messages; call it first in `main`.
pub fn set_program(name: &'static str) {
    let _ = PROGRAM.set(name);
}

/// One of a benchmark's gateways (a mode), on its own loopback ports.
pub trait Variant: Copy + Ord {
    /// Its name in file names, logs and messages.
    fn name(self) -> &'static str;
    /// Its listener, admin and metrics ports on 127.0.0.1.
    fn ports(self) -> (u16, u16, u16);
}

/// Prints `<program>: <msg>` and exits 1.
pub fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("{}: {msg}", PROGRAM.get().copied().unwrap_or("bench"));
    std::process::exit(1)
}

/// The value, or [`fail`] with `<what>: <error>`.
pub fn ok<T>(r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| fail(format!("{what}: {e}")))
}

/// Writes `bytes` to `path`, or [`fail`]s with `what`.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>, what: &str) {
    ok(fs::write(path, bytes).map_err(Into::into), what);
}

/// The command line after the program name.
pub struct Args(Vec<String>);

impl Args {
    /// The process's arguments.
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// The word after `name`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).cloned()
    }

    /// Whether `name` is given.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// The comma-separated numbers after `name` (`default` without it); [`fail`]s on a bad one.
    pub fn sizes(&self, name: &str, default: &str) -> Vec<usize> {
        self.value(name)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(|s| s.trim().parse().unwrap_or_else(|_| fail(format!("bad size {s:?}"))))
            .collect()
    }
}

/// The CPU's model name (`/proc/cpuinfo`).
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default()
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// `out`, created if need be, as an absolute path.
pub fn out_dir(out: impl AsRef<Path>) -> PathBuf {
    let out = out.as_ref();
    ok(
        fs::canonicalize(out)
            .or_else(|_| fs::create_dir_all(out).and_then(|_| fs::canonicalize(out)))
            .map_err(Into::into),
        "out dir",
    )
}

/// Writes the JSON `report` (pretty) to `out/<file>`; returns its path.
pub fn write_report(out: &Path, file: &str, report: &Value) -> PathBuf {
    let path = out.join(file);
    write(&path, serde_json::to_vec_pretty(report).unwrap_or_default(), "report");
    path
}

/// Benchmark identity `i`: `id-<i>`, also its secret's name on the SDS server.
pub fn identity(i: usize) -> String {
    format!("id-{i}")
}

/// The SPIFFE ID of caller `i`.
pub fn principal(i: usize) -> String {
    format!("spiffe://cluster.local/ns/bench/sa/id-{i}")
}

/// The workload certificate of caller `i` (issued by the mesh CA, [`principal`]).
pub fn caller(pki: &Pki, i: usize) -> CertFiles {
    ok(pki.issue_workload(&format!("bench-id-{i}"), &WorkloadSpec::spiffe(&principal(i))), "caller certificate")
}

/// A destination presenting identities `id-0` .. `id-<n-1>`, everybody allowed; `single`: one cluster for
/// all (`singleCluster`).
pub fn destination(name: &str, host: Value, port: Value, n: usize, single: bool) -> Value {
    let names: Vec<String> = (0..n).map(identity).collect();
    let mut destination = json!({
        "name": name, "host": host, "port": port,
        "policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}],
        "identities": names
    });
    if single {
        destination["singleCluster"] = json!(true);
    }
    destination
}

/// The policy: `n` identities, declared once (caller `i` is identity `i`), everybody allowed at the gateway.
pub fn policy(n: usize, destinations: Vec<Value>) -> Value {
    let identities: Vec<Value> = (0..n).map(|i| json!({"name": identity(i), "principals": [principal(i)]})).collect();
    json!({
        "trustDomains": ["cluster.local"],
        "auditRecord": "none",
        "identities": identities,
        "gateway": {"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]},
        "destinations": destinations
    })
}

/// Writes `policy` (compact) to `dir/policy-<name>.json`, renders it with `cli render envoy` on the
/// variant's ports plus `args`, keeps the YAML as `dir/gateway-<name>.yaml` and returns the bootstrap as
/// JSON.
pub fn render(cli: &Path, dir: &Path, variant: impl Variant, policy: &Value, args: &[String]) -> Value {
    let (name, (listen, admin, metrics)) = (variant.name(), variant.ports());
    let policy_file = dir.join(format!("policy-{name}.json"));
    // Compact, as a generated policy of thousands of identities would be: Envoy parses it inside the LDS
    // resource (pretty-printed, it is twice the size).
    write(&policy_file, serde_json::to_vec(policy).unwrap_or_default(), "policy");
    let mut cmd = Command::new(cli);
    cmd.arg("render").arg("envoy").arg(&policy_file);
    cmd.args(["--listen", &format!("127.0.0.1:{listen}"), "--admin", &format!("127.0.0.1:{admin}")]);
    cmd.args(["--metrics", &format!("127.0.0.1:{metrics}"), "--access-log", "/dev/null"]);
    cmd.args(args);
    let out = cmd.output().unwrap_or_else(|e| fail(format!("running {}: {e}", cli.display())));
    if !out.status.success() {
        fail(format!("render: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let yaml = dir.join(format!("gateway-{name}.yaml"));
    write(&yaml, &out.stdout, "bootstrap");
    ok(lds::yaml_file_to_json(&yaml), "bootstrap to JSON")
}

/// Writes `bootstrap` to `dir/gateway-<name>.json`; returns its path.
pub fn write_bootstrap(dir: &Path, variant: impl Variant, bootstrap: &Value) -> PathBuf {
    let path = dir.join(format!("gateway-{}.json", variant.name()));
    write(&path, serde_json::to_vec(bootstrap).unwrap_or_default(), "bootstrap");
    path
}

/// The config source of the harness's gRPC SDS server (as `render envoy --identity-sds` writes it).
pub fn grpc_sds_config() -> Value {
    json!({"resource_api_version": "V3", "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "egress-identity-sds"}}]}})
}

/// The cluster `egress-identity-sds` of [`grpc_sds_config`]: the SDS server on `127.0.0.1:<port>`.
pub fn sds_cluster(port: u16) -> Value {
    json!({"name": "egress-identity-sds", "type": "STATIC", "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": [{"max_requests": 1_000_000, "max_pending_requests": 1_000_000, "max_connections": 1_000_000}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "egress-identity-sds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
}

/// Points an identity cluster (`<destination>|<identity>`) at its certificate on the gRPC SDS server (the
/// secret named after the identity), as single-cluster mode gets it; other clusters are left alone.
pub fn certificate_from_sds(cluster: &mut Value) {
    let Some(id) = cluster["name"].as_str().and_then(|n| n.split_once('|')).map(|(_, id)| id.to_string()) else {
        return;
    };
    cluster["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"] =
        json!([{"name": id, "sds_config": grpc_sds_config()}]);
}

/// The harness's gRPC SDS server on `127.0.0.1:<port>`.
pub fn start_sds(port: u16) -> SdsServer {
    ok(SdsServer::start(SocketAddr::from(([127, 0, 0, 1], port))), "SDS server")
}

/// The SDS secret `name` of a certificate and key on disk.
pub fn secret(name: &str, files: &CertFiles) -> (String, Any) {
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    (name.to_string(), tls_certificate(name, read(&files.cert), read(&files.key)))
}

/// The partner: nginx with `dir/external-server.nginx.conf`, logs in `dir/logs`.
pub fn start_nginx(dir: &Path) -> Supervised {
    ok(
        Supervised::spawn(
            "partner",
            &nginx_bin(),
            &[
                "-p".into(),
                format!("{}/", dir.display()),
                "-c".into(),
                "external-server.nginx.conf".into(),
                "-e".into(),
                "logs/external-error.log".into(),
            ],
            dir,
            &dir.join("logs/nginx.out"),
        ),
        "nginx",
    )
}

/// The body of a 200 answer of `127.0.0.1:<port><path>`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    crate::topology::http_get(port, path).filter(|(s, _)| *s == 200).map(|(_, b)| b)
}

/// Whether `addr` accepts a TCP connection.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether the Envoy with admin port `admin` is `/ready` and its listener on `127.0.0.1:<listen>` accepts.
pub fn envoy_ready(listen: u16, admin: u16) -> bool {
    http_get(admin, "/ready").is_some_and(|b| b.trim() == "LIVE")
        && listening(SocketAddr::from(([127, 0, 0, 1], listen)))
}

/// A started gateway Envoy.
pub struct Envoy {
    /// Stops the gateway when dropped.
    pub process: Supervised,
    /// Envoy's process id.
    pub pid: u32,
    /// Seconds from its start to [`envoy_ready`].
    pub ready_s: f64,
}

/// Starts the variant's Envoy (`--concurrency 2`, base id its admin port) on `bootstrap` in `dir`, logging
/// to `logs/gateway-<name>.log`, and waits (10 minutes at most) until it is ready.
pub fn start_envoy(dir: &Path, bootstrap: &Path, variant: impl Variant) -> Envoy {
    let (name, (listen, admin, _)) = (variant.name(), variant.ports());
    let started = Instant::now();
    let mut process = ok(
        Supervised::spawn(
            name,
            &envoy_bin(),
            &[
                "-c".into(),
                bootstrap.display().to_string(),
                "--disable-hot-restart".into(),
                "--concurrency".into(),
                "2".into(),
                "--base-id".into(),
                (admin as u32).to_string(),
            ],
            dir,
            &dir.join(format!("logs/gateway-{name}.log")),
        ),
        "starting envoy",
    );
    ok(process.wait_ready(Duration::from_secs(600), || envoy_ready(listen, admin)), "gateway ready");
    let ready_s = started.elapsed().as_secs_f64();
    let pid = process.program_pid().unwrap_or_else(|| fail("no envoy pid"));
    Envoy { process, pid, ready_s }
}

/// Starts each variant's Envoy (`--concurrency 1`, base id its admin port + 7) on its bootstrap under
/// callgrind (all at once: their start takes minutes), dumps in `dir`, logs `logs/gateway-<name>.callgrind.log`;
/// then, one after the other, waits until it is ready, runs `measure(variant, pid)` (see [`per_unit`]) and
/// stops it.
pub fn under_callgrind<V: Variant, R>(
    dir: &Path,
    bootstraps: &[(V, PathBuf)],
    mut measure: impl FnMut(V, u32) -> R,
) -> BTreeMap<V, R> {
    let mut gateways: Vec<(V, Supervised)> =
        bootstraps.iter().map(|(v, bootstrap)| (*v, start_callgrind(dir, bootstrap, v.name(), v.ports().1))).collect();
    let mut out = BTreeMap::new();
    for (variant, process) in &mut gateways {
        let (listen, admin, _) = variant.ports();
        ok(process.wait_ready(Duration::from_secs(1800), || envoy_ready(listen, admin)), "gateway under callgrind");
        let pid = process.program_pid().unwrap_or_else(|| fail("no valgrind pid"));
        out.insert(*variant, measure(*variant, pid));
        process.stop();
    }
    out
}

fn start_callgrind(dir: &Path, bootstrap: &Path, name: &str, admin: u16) -> Supervised {
    ok(
        Supervised::spawn(
            &format!("{name} (callgrind)"),
            Path::new("valgrind"),
            &[
                "--tool=callgrind".into(),
                "--smc-check=all-non-file".into(),
                format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
                envoy_bin().display().to_string(),
                "-c".into(),
                bootstrap.display().to_string(),
                "--concurrency".into(),
                "1".into(),
                "--disable-hot-restart".into(),
                "-l".into(),
                "warning".into(),
                "--base-id".into(),
                (admin as u32 + 7).to_string(),
            ],
            dir,
            &dir.join(format!("logs/gateway-{name}.callgrind.log")),
        ),
        "valgrind",
    )
}

/// The process's resident set (`VmRSS`), MB.
pub fn rss_mb(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// curl as `cert` (verifying the gateway with `ca`) to the gateway on `127.0.0.1:<listen>`, HTTP/1.1.
pub fn curl(cert: &CertFiles, ca: &Path, listen: u16) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "--cacert"]).arg(ca);
    cmd.arg("--resolve").arg(format!("{GATEWAY_HOST}:{listen}:127.0.0.1"));
    cmd.arg("--cert").arg(&cert.cert).arg("--key").arg(&cert.key);
    cmd
}

/// `count` keep-alive requests (`/cpu/<tag>/<k>`, `Host: <host>`) in one curl to the gateway on `listen`;
/// [`fail`]s with `what` if curl does.
pub fn requests(cert: &CertFiles, ca: &Path, listen: u16, host: &str, tag: &str, count: usize, what: &str) {
    let mut cmd = curl(cert, ca, listen);
    cmd.args(["-o", "/dev/null", "-H", &format!("Host: {host}")]);
    for k in 0..count {
        cmd.arg(format!("https://{GATEWAY_HOST}:{listen}/cpu/{tag}/{k}"));
    }
    let out = cmd.output().unwrap_or_else(|e| fail(format!("curl: {e}")));
    if !out.status.success() {
        fail(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
    }
}

/// The `summary:` of the callgrind dump `label` of `pid` in `dir`.
fn callgrind_dump(dir: &Path, pid: u32, label: &str) -> f64 {
    let status = Command::new("callgrind_control").arg(format!("--dump={label}")).arg(pid.to_string()).status();
    if !status.is_ok_and(|s| s.success()) {
        fail(format!("callgrind_control --dump {pid} failed"));
    }
    let prefix = format!("callgrind.out.{pid}.");
    let trigger = format!("desc: Trigger: dump {label}\n");
    let mut files: Vec<_> = fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).collect())
        .unwrap_or_default();
    files.sort_by_key(|e| std::cmp::Reverse(e.metadata().and_then(|m| m.modified()).ok()));
    for f in files {
        let text = fs::read_to_string(f.path()).unwrap_or_default();
        if text.contains(&trigger) {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("summary: ")).and_then(|v| v.trim().parse().ok())
            {
                return v;
            }
        }
    }
    fail(format!("no callgrind dump {label} of {pid}"))
}

fn callgrind_zero(pid: u32) {
    let status = Command::new("callgrind_control").arg("-z").arg(pid.to_string()).status();
    if !status.is_ok_and(|s| s.success()) {
        fail(format!("callgrind_control -z {pid} failed"));
    }
}

/// The instructions the gateway under callgrind `pid` (dumps in `dir`) executes per unit of `work` (which
/// runs `count` units), minus an idle window as long (timers).
pub fn per_unit(dir: &Path, pid: u32, count: usize, what: &str, work: impl FnOnce()) -> f64 {
    callgrind_zero(pid);
    let started = Instant::now();
    work();
    let busy = callgrind_dump(dir, pid, "busy");
    let elapsed = started.elapsed();
    callgrind_zero(pid);
    std::thread::sleep(elapsed);
    let idle = callgrind_dump(dir, pid, "idle");
    let per_unit = (busy - idle) / count as f64;
    eprintln!("{what}: {per_unit:.0} instructions each (busy {busy}, idle {idle}, {:.1}s)", elapsed.as_secs_f64());
    per_unit
}
