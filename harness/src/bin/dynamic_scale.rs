//! `dynamic_scale --cli PATH --out DIR [--identities 10,200] [--hosts 2,50] [--workers 8] [--instructions N]`:
//! the dynamic-destination benchmark (BENCHMARKS.md, "Dynamic destinations: one forward-proxy cluster per
//! identity, or one for all"). For each N identities x H hosts, one destination `*.bench.example` with N
//! external identities is rendered twice by `egress-identity render envoy` -- one dynamic-forward-proxy (DFP)
//! cluster per identity (`bench|id-<i>`, all sharing the DNS cache `egress-identity`), and `singleCluster`
//! (ONE DFP cluster `bench|shared`, each identity's certificate chosen per connection by the on-demand
//! selector) -- and both gateways run side by side (`--concurrency 2`) in front of one nginx partner.
//!
//! The names `h0.bench.example` .. `h<H-1>.bench.example` resolve (harness `dns`, through c-ares
//! `resolvers`, `--allow-resolved 127.0.0.0/8`) to 127.0.0.3, where nginx listens on 25443 with ONE
//! certificate `*.bench.example` of the partner CA, verifies client certificates against the partner CA and
//! answers the server name and the client subject it saw. Both gateways take the identities' certificates
//! from the same gRPC SDS server (the harness's, 127.0.0.1:25447; file SDS would need an inotify instance
//! per secret). Measured, per mode:
//!
//! * ready: from the start of Envoy to `/ready` and its listener accepting;
//! * memory: VmRSS and Envoy's own heap (`/memory`: allocated) once ready, right after the warm-up, and
//!   again once the warm-up's upstream connections have closed (`max_connection_duration` 10 s);
//! * warm-up: every identity makes one request to every host (N x H requests; one curl per identity, its H
//!   requests on one keep-alive downstream connection, `--workers` curls in parallel), each checked to reach
//!   the partner under the host's name with the identity's certificate: wall time, then the same again
//!   (names resolved, certificates fetched, upstream connections pooled); the gateways one after the other;
//! * the hosts the DFP clusters hold (admin `/clusters`), the DNS queries, Envoy's `upstream_cx_overflow`;
//! * how many of the warm-up's requests reached the partner over a resumed TLS session (nginx's log);
//! * with `--instructions N`, at the smallest N x H only: instructions per keep-alive request (one
//!   identity, one host) and per first request of an identity to a host (the warm-up) under callgrind
//!   (`--concurrency 1`, an idle window subtracted).
//!
//! Uses 127.0.0.1:25100-25102 (per-cluster), 25200-25202 (single cluster), 25447 (SDS), 127.0.0.3:25443
//! (partner) and an ephemeral UDP port (DNS). Prints a Markdown table and writes `DIR/dynamic-scale.json`.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use egress_identity_harness::bench::{
    self, caller, certificate_from_sds, fail, http_get, identity, listening, ok, per_unit, rss_mb, secret, Args, Envoy,
    Variant,
};
use egress_identity_harness::dns::DnsServer;
use egress_identity_harness::pki::{CertFiles, Pki, GATEWAY_HOST};
use egress_identity_harness::process::Supervised;
use egress_identity_harness::topology::{populate_run_dir, wasm_path};
use egress_identity_harness::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

const DOMAIN: &str = "bench.example";
const PARTNER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const PARTNER_PORT: u16 = 25443;
const SDS_PORT: u16 = 25447;
/// The wildcard server certificate of the partner, `pki/external/<stem>.{crt,key}`.
const WILDCARD_STEM: &str = "wildcard.bench.example";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    PerCluster,
    Single,
}

impl Variant for Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerCluster => "per-cluster",
            Mode::Single => "single-cluster",
        }
    }

    fn ports(self) -> (u16, u16, u16) {
        match self {
            Mode::PerCluster => (25100, 25101, 25102),
            Mode::Single => (25200, 25201, 25202),
        }
    }
}

impl Mode {
    /// The key prefix of its results.
    fn key(self) -> &'static str {
        match self {
            Mode::PerCluster => "c",
            Mode::Single => "s",
        }
    }
}

fn host(j: usize) -> String {
    format!("h{j}.{DOMAIN}")
}

/// The policy: `n` identities, everybody allowed; one destination `*.bench.example` on the partner's port
/// presenting them all (in single-cluster mode, one cluster for all).
fn policy(n: usize, mode: Mode) -> Value {
    let destination =
        bench::destination("bench", json!(format!("*.{DOMAIN}")), json!([PARTNER_PORT]), n, mode == Mode::Single);
    bench::policy(n, vec![destination])
}

/// Renders the policy with the CLI (the DNS server as resolver, loopback allowed) into a JSON bootstrap; in
/// per-cluster mode, each identity cluster's certificate comes from the same gRPC SDS server as in
/// single-cluster mode (secret `id-<i>`). Returns the bootstrap path.
fn render(cli: &Path, dir: &Path, n: usize, mode: Mode, dns: SocketAddr) -> PathBuf {
    let mut args: Vec<String> =
        vec!["--ca-secret".into(), "bench=partner-ca".into(), "--dns-resolver".into(), dns.to_string()];
    args.extend(["--allow-resolved".into(), "127.0.0.0/8".into()]);
    if mode == Mode::Single {
        args.extend(["--identity-sds".into(), format!("127.0.0.1:{SDS_PORT}")]);
    }
    let mut bootstrap = bench::render(cli, dir, mode, &policy(n, mode), &args);
    if mode == Mode::PerCluster {
        let clusters = bootstrap["static_resources"]["clusters"].as_array_mut().unwrap_or_else(|| fail("no clusters"));
        clusters.iter_mut().for_each(certificate_from_sds);
        clusters.push(bench::sds_cluster(SDS_PORT));
    }
    bench::write_bootstrap(dir, mode, &bootstrap)
}

/// The partner's wildcard server certificate `*.bench.example`, signed by the run's partner CA (re-opened
/// from `pki/` as `Pki::load` does: the same distinguished name and the CA key on disk).
fn issue_wildcard(pki: &Pki) -> CertFiles {
    let build = || -> Result<CertFiles> {
        let mut ca = CertificateParams::default();
        ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
        ca.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Partner Example");
        dn.push(DnType::CommonName, "partner CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::from_pem(&fs::read_to_string(pki.dir().join("partner-ca.key"))?)?;
        let issuer = Issuer::new(ca, ca_key);

        let name = format!("*.{DOMAIN}");
        let mut params = CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.as_str().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let out = pki.external_identity(WILDCARD_STEM);
        fs::write(&out.cert, cert.pem())?;
        fs::write(&out.key, key.serialize_pem())?;
        Ok(out)
    };
    ok(build(), "wildcard certificate")
}

/// The partner: one wildcard certificate for every `*.bench.example` on 127.0.0.3:25443, client
/// certificates of the partner CA required; the answer names the server name and the client subject.
fn nginx_conf(connections: usize) -> String {
    let files = connections + 64;
    format!(
        r#"# dynamic_scale's partner (harness/src/bin/dynamic_scale.rs).
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {files};
pid logs/external-nginx.pid;
error_log logs/external-error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    client_body_temp_path logs/nginx-client-body-temp;
    proxy_temp_path logs/nginx-proxy-temp;
    fastcgi_temp_path logs/nginx-fastcgi-temp;
    uwsgi_temp_path logs/nginx-uwsgi-temp;
    scgi_temp_path logs/nginx-scgi-temp;
    log_format resumed '$ssl_session_reused $request_uri';
    access_log logs/partner-access.log resumed;
    default_type application/json;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_client_certificate pki/partner-ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 2;
    server {{
        listen {PARTNER_IP}:{PARTNER_PORT} ssl default_server;
        server_name *.{DOMAIN};
        ssl_certificate pki/external/{WILDCARD_STEM}.crt;
        ssl_certificate_key pki/external/{WILDCARD_STEM}.key;
        location / {{
            return 200 '{{"server_name":"$ssl_server_name","client_subject":"$ssl_client_s_dn"}}\n';
        }}
    }}
}}
"#
    )
}

struct Gateway {
    mode: Mode,
    /// Stops the gateway when dropped.
    _process: Supervised,
    pid: u32,
    ready_s: f64,
}

fn start_gateway(dir: &Path, bootstrap: &Path, mode: Mode) -> Gateway {
    let Envoy { process, pid, ready_s } = bench::start_envoy(dir, bootstrap, mode);
    Gateway { mode, _process: process, pid, ready_s }
}

/// Envoy's own heap in use (admin `/memory`, `allocated`), MB.
fn heap_mb(mode: Mode) -> f64 {
    let body = http_get(mode.ports().1, "/memory").unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["allocated"].as_str().and_then(|a| a.parse::<f64>().ok()).map_or(f64::NAN, |b| b / 1_048_576.0)
}

/// A counter or gauge of admin `/stats`, summed over every stat whose name ends with `suffix`.
fn stat_sum(mode: Mode, prefix: &str, suffix: &str) -> u64 {
    let body = http_get(mode.ports().1, &format!("/stats?filter={suffix}")).unwrap_or_default();
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The (cluster, host) pairs the DFP clusters hold (admin `/clusters`).
fn dfp_hosts(mode: Mode) -> usize {
    let body = http_get(mode.ports().1, "/clusters").unwrap_or_default();
    body.lines().filter(|l| l.starts_with("bench|") && l.contains("::cx_total::")).count()
}

/// The curl arguments of one request to `host` through the gateway on `listen` (keep-alive with the
/// requests before it in the same curl).
fn curl_request(cmd: &mut Command, listen: u16, host: &str, path: &str) {
    cmd.args(["-H", &format!("Host: {host}:{PARTNER_PORT}")]);
    cmd.arg(format!("https://{GATEWAY_HOST}:{listen}{path}"));
}

/// Identity `i` asks every one of the `h` hosts once, its requests on one downstream connection (curl
/// `--next`); checks each answer came from that host's name with the identity's certificate. The requests
/// that did not.
fn one_identity_all_hosts(mode: Mode, cert: &CertFiles, ca: &Path, i: usize, h: usize, tag: &str) -> usize {
    let (listen, _, _) = mode.ports();
    let mut cmd = Command::new("curl");
    for j in 0..h {
        if j > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--http1.1", "--cacert"]).arg(ca);
        cmd.arg("--resolve").arg(format!("{GATEWAY_HOST}:{listen}:127.0.0.1"));
        cmd.arg("--cert").arg(&cert.cert).arg("--key").arg(&cert.key);
        curl_request(&mut cmd, listen, &host(j), &format!("/{tag}/{i}/{j}"));
    }
    let out = cmd.output().unwrap_or_else(|e| fail(format!("curl: {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    let subject = format!("CN={}", identity(i));
    let mut seen = vec![false; h];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        if v["client_subject"].as_str() != Some(subject.as_str()) {
            continue;
        }
        let Some(j) = v["server_name"]
            .as_str()
            .and_then(|s| s.strip_suffix(&format!(".{DOMAIN}")))
            .and_then(|s| s.strip_prefix('h'))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if let Some(s) = seen.get_mut(j) {
            *s = true;
        }
    }
    let missed = seen.iter().filter(|s| !**s).count();
    if missed > 0 && std::env::var_os("DYNAMIC_SCALE_DEBUG").is_some() {
        eprintln!("{} id {i}: {missed} missed: {text} {}", mode.name(), String::from_utf8_lossy(&out.stderr));
    }
    missed
}

/// The requests whose path starts with `/<tag>/` in the partner's log, and how many of them came over a
/// resumed TLS session (`$ssl_session_reused`).
fn resumed(dir: &Path, tag: &str) -> (usize, usize) {
    let log = fs::read_to_string(dir.join("logs/partner-access.log")).unwrap_or_default();
    let needle = format!(" /{tag}/");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
    (lines.len(), lines.iter().filter(|l| l.starts_with("r ")).count())
}

/// Every identity to every host, `workers` identities at a time: the wall time and the requests that failed.
fn warm_up(mode: Mode, callers: &[CertFiles], ca: &Path, h: usize, workers: usize, tag: &str) -> (f64, usize) {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(cert) = callers.get(i) else { break };
                failed.fetch_add(one_identity_all_hosts(mode, cert, ca, i, h, tag), Ordering::Relaxed);
            });
        }
    });
    (started.elapsed().as_secs_f64(), failed.into_inner())
}

/// `count` keep-alive requests in one curl, identity 0 to host 0, to the gateway of `mode`.
fn requests(mode: Mode, cert: &CertFiles, ca: &Path, tag: &str, count: usize) {
    let host = format!("{}:{PARTNER_PORT}", host(0));
    bench::requests(cert, ca, mode.ports().0, &host, tag, count, "requests failed");
}

/// Instructions of each mode's gateway under callgrind (`--concurrency 1`), each minus an idle window as
/// long: per keep-alive request (identity 0 to host 0; `count` requests after a warm-up of 200), and per
/// first request of an identity to a host (the warm-up of every caller to each of the `h` hosts: a new
/// upstream connection each, in single-cluster mode also the identity's SDS fetch).
fn instructions(
    dir: &Path,
    bootstraps: &[(Mode, PathBuf)],
    callers: &[CertFiles],
    h: usize,
    ca: &Path,
    count: usize,
) -> BTreeMap<Mode, (f64, f64)> {
    let cert = callers.first().unwrap_or_else(|| fail("no callers"));
    bench::under_callgrind(dir, bootstraps, |mode, pid| {
        requests(mode, cert, ca, "callgrind-warm", 200);
        let per_request = per_unit(dir, pid, count, &format!("{} request", mode.name()), || {
            requests(mode, cert, ca, "callgrind", count)
        });
        let pairs = callers.len() * h;
        let mut failed = 0;
        let tag = format!("callgrind-first-{}", mode.name());
        let per_first =
            per_unit(dir, pid, pairs, &format!("{} first request per identity x host", mode.name()), || {
                failed = warm_up(mode, callers, ca, h, 4, &tag).1;
            });
        std::thread::sleep(Duration::from_millis(300));
        let (total, reused) = resumed(dir, &tag);
        eprintln!("{}: {reused} of {total} first requests over a resumed upstream TLS session", mode.name());
        if failed > 0 {
            fail(format!("{}: {failed} first requests under callgrind failed", mode.name()));
        }
        (per_request, per_first)
    })
}

fn main() {
    bench::set_program("dynamic_scale");
    let args = Args::from_env();
    let arg = |name: &str| args.value(name);
    let (Some(cli), Some(out)) = (arg("--cli"), arg("--out")) else {
        fail("usage: dynamic_scale --cli PATH --out DIR [--identities 10,200] [--hosts 2,50] [--workers 8] [--instructions N]")
    };
    let identities = args.sizes("--identities", "10,200");
    let hosts = args.sizes("--hosts", "2,50");
    let workers: usize = arg("--workers").and_then(|w| w.parse().ok()).unwrap_or(8).max(1);
    let instruction_requests: Option<usize> = arg("--instructions").and_then(|r| r.parse().ok());
    let smallest = (identities.iter().copied().min().unwrap_or(0), hosts.iter().copied().min().unwrap_or(0));
    let cli = fs::canonicalize(&cli).unwrap_or_else(|e| fail(format!("{cli}: {e}")));
    let out = bench::out_dir(&out);
    let cpu = bench::cpu_model();
    println!(
        "dynamic-scale on {cpu}, {} cores; identities {identities:?} x hosts {hosts:?}, {workers} workers",
        bench::cores()
    );
    let max_connections = identities.iter().max().unwrap_or(&0) * hosts.iter().max().unwrap_or(&0);
    let nginx_file = out.join("partner.nginx.conf");
    bench::write(&nginx_file, nginx_conf(max_connections * 2 + 1024), "nginx config");
    let mut results = Vec::new();
    for &n in &identities {
        for &h in &hosts {
            let dir = out.join(format!("n{n}-h{h}"));
            let _ = fs::remove_dir_all(&dir);
            let pki = ok(populate_run_dir(&dir, &wasm_path(), &nginx_file), "run dir");
            issue_wildcard(&pki);
            let names: Vec<String> = (0..h).map(host).collect();
            let records: Vec<(&str, Ipv4Addr)> = names.iter().map(|n| (n.as_str(), PARTNER_IP)).collect();
            let dns = ok(DnsServer::start(&records).map_err(Into::into), "DNS server");
            let t = Instant::now();
            let sds_server = bench::start_sds(SDS_PORT);
            let mut secrets = Vec::with_capacity(n);
            let mut callers = Vec::with_capacity(n);
            for i in 0..n {
                let files = ok(pki.issue_external_identity(&identity(i)), "external identity");
                secrets.push(secret(&identity(i), &files));
                callers.push(caller(&pki, i));
            }
            sds_server.put(secrets);
            eprintln!("n={n} h={h}: {n} identities and callers in {:.1}s", t.elapsed().as_secs_f64());
            let nginx = bench::start_nginx(&dir);
            let partner = SocketAddr::from((PARTNER_IP, PARTNER_PORT));
            let since = Instant::now();
            while !listening(partner) {
                if since.elapsed() > Duration::from_secs(10) {
                    fail(format!("nginx not listening on {partner}: {}", nginx.log()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let ca = pki.mesh_ca_cert();
            let mut row: BTreeMap<String, Value> = BTreeMap::new();
            let modes = [Mode::Single, Mode::PerCluster];
            let bootstraps: Vec<(Mode, PathBuf)> =
                modes.iter().map(|&m| (m, render(&cli, &dir, n, m, dns.addr()))).collect();
            if let (Some(count), true) = (instruction_requests, (n, h) == smallest) {
                let ir = instructions(&dir, &bootstraps, &callers, h, &ca, count);
                for (mode, (request, first)) in &ir {
                    row.insert(format!("{}_instructions", mode.key()), json!(request));
                    row.insert(format!("{}_first_instructions", mode.key()), json!(first));
                }
                let (c, s) = (ir.get(&Mode::PerCluster), ir.get(&Mode::Single));
                row.insert("instructions_ratio".into(), json!(c.zip(s).map(|(c, s)| s.0 / c.0)));
                row.insert("first_instructions_ratio".into(), json!(c.zip(s).map(|(c, s)| s.1 / c.1)));
            }
            // Single-cluster first (beside nothing), then per-cluster (beside the idle single-cluster one).
            let mut gateways = Vec::new();
            for (mode, bootstrap) in &bootstraps {
                let g = start_gateway(&dir, bootstrap, *mode);
                std::thread::sleep(Duration::from_secs(2));
                let k = mode.key();
                row.insert(format!("{k}_ready_s"), json!(g.ready_s));
                row.insert(format!("{k}_rss_ready_mb"), json!(rss_mb(g.pid)));
                row.insert(format!("{k}_heap_ready_mb"), json!(heap_mb(*mode)));
                eprintln!("n={n} h={h} {}: ready {:.2}s, RSS {:.0} MB", mode.name(), g.ready_s, rss_mb(g.pid));
                gateways.push(g);
            }
            // The warm-up, one gateway after the other (each opens N x H upstream connections, closed by
            // max_connection_duration before the next starts).
            for g in &gateways {
                let k = g.mode.key();
                let queries = dns.queries();
                let (cold_tag, again_tag) = (format!("cold-{}", g.mode.name()), format!("again-{}", g.mode.name()));
                let (cold, cold_failed) = warm_up(g.mode, &callers, &ca, h, workers, &cold_tag);
                let (again, again_failed) = warm_up(g.mode, &callers, &ca, h, workers, &again_tag);
                // nginx writes its log line after the answer: let the last ones land.
                std::thread::sleep(Duration::from_millis(300));
                row.insert(format!("{k}_resumed_cold"), json!(resumed(&dir, &cold_tag).1));
                row.insert(format!("{k}_resumed_again"), json!(resumed(&dir, &again_tag).1));
                row.insert(format!("{k}_warm_s"), json!(cold));
                row.insert(format!("{k}_again_s"), json!(again));
                row.insert(format!("{k}_failed"), json!(cold_failed + again_failed));
                row.insert(format!("{k}_dns_queries"), json!(dns.queries() - queries));
                row.insert(format!("{k}_rss_mb"), json!(rss_mb(g.pid)));
                row.insert(format!("{k}_heap_mb"), json!(heap_mb(g.mode)));
                row.insert(format!("{k}_dfp_hosts"), json!(dfp_hosts(g.mode)));
                row.insert(format!("{k}_upstream_cx"), json!(stat_sum(g.mode, "cluster.bench|", "upstream_cx_total")));
                row.insert(
                    format!("{k}_cx_overflow"),
                    json!(stat_sum(g.mode, "cluster.bench|", "upstream_cx_overflow")),
                );
                eprintln!(
                    "n={n} h={h} {}: warm-up {cold:.2}s ({cold_failed} failed), again {again:.2}s ({again_failed} failed), RSS {:.0} MB",
                    g.mode.name(),
                    rss_mb(g.pid)
                );
                // The upstream connections close after max_connection_duration (10 s).
                std::thread::sleep(Duration::from_secs(13));
                row.insert(format!("{k}_rss_settled_mb"), json!(rss_mb(g.pid)));
                row.insert(format!("{k}_heap_settled_mb"), json!(heap_mb(g.mode)));
                row.insert(
                    format!("{k}_cx_active_settled"),
                    json!(stat_sum(g.mode, "cluster.bench|", "upstream_cx_active")),
                );
            }
            let f = |key: &str| row.get(key).and_then(Value::as_f64);
            let ratio = |what: &str| f(&format!("s_{what}")).zip(f(&format!("c_{what}"))).map(|(s, c)| s / c);
            let ratios: Vec<(String, Value)> =
                ["warm_s", "again_s", "ready_s"].iter().map(|w| (format!("{w}_ratio"), json!(ratio(w)))).collect();
            row.extend(ratios);
            drop(gateways);
            drop(nginx);
            drop(sds_server);
            println!("n={n} h={h}: {}", serde_json::to_string(&row).unwrap_or_default());
            results.push(json!({"identities": n, "hosts": h, "results": row}));
        }
    }
    let report =
        json!({"cpu": cpu, "workers": workers, "instructions_requests": instruction_requests, "sizes": results});
    let path = bench::write_report(&out, "dynamic-scale.json", &report);
    println!("\n| identities x hosts | mode | ready s | RSS MB ready | RSS MB after warm-up | RSS MB settled | heap MB ready / warm / settled | DFP hosts | warm-up s (N x H requests) | again s | upstream TLS resumed (warm-up / again) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let (n, h) = (&r["identities"], &r["hosts"]);
        let v = &r["results"];
        for (k, name) in [("c", "DFP cluster per identity"), ("s", "one DFP cluster (single)")] {
            let f = |key: &str| v[format!("{k}_{key}")].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {n} x {h} | {name} | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0} | {:.2} | {:.2} | {:.0} / {:.0} |",
                f("ready_s"),
                f("rss_ready_mb"),
                f("rss_mb"),
                f("rss_settled_mb"),
                f("heap_ready_mb"),
                f("heap_mb"),
                f("heap_settled_mb"),
                f("dfp_hosts"),
                f("warm_s"),
                f("again_s"),
                f("resumed_cold"),
                f("resumed_again"),
            );
        }
        let g = |key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {n} x {h} | single / per-cluster | {:.2} | | | | | | {:.2} | {:.2} | |",
            g("ready_s_ratio"),
            g("warm_s_ratio"),
            g("again_s_ratio")
        );
        if let (Some(c), Some(s)) = (v["c_instructions"].as_f64(), v["s_instructions"].as_f64()) {
            println!(
                "| {n} x {h} | instructions per keep-alive request (callgrind): per-cluster {c:.0}, single {s:.0} ({:+.0}, {:.4}) | | | | | | | | | |",
                s - c,
                s / c
            );
        }
        if let (Some(c), Some(s)) = (v["c_first_instructions"].as_f64(), v["s_first_instructions"].as_f64()) {
            println!(
                "| {n} x {h} | instructions per first request of an identity to a host (callgrind): per-cluster {c:.0}, single {s:.0} ({:+.0}, {:.4}) | | | | | | | | | |",
                s - c,
                s / c
            );
        }
    }
    println!("\nwrote {}", path.display());
}
