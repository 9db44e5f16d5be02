//! `identity_scale --cli PATH --out DIR [--sizes 10,1000,10000] [--rounds N] [--instructions N]`: the identity-scale benchmark
//! (BENCHMARKS.md, "Identity scale"). For each size N, one destination with N external identities is
//! rendered twice by `egress-identity render envoy` -- one cluster per identity (file SDS), and
//! single-cluster mode (`singleCluster`, certificates from the harness's gRPC SDS server) -- and both
//! gateways run side by side (`--concurrency 2`) in front of the partner (nginx). Measured, per mode:
//!
//! * ready: from the start of Envoy to `/ready` and its listener accepting;
//! * RSS: the gateway's VmRSS once ready and after the first requests;
//! * first request of an identity never used before (in single-cluster mode: the SDS fetch, then the
//!   handshake), against the next request of the same identity;
//! * CPU per request: gateway CPU time (all threads' `schedstat`) over batches of keep-alive requests of one
//!   identity, the two gateways alternating, batch by batch; the ratio per pair of batches, median; and,
//!   with `--instructions N`, at the smallest size, instructions per request under callgrind (N keep-alive
//!   requests, an idle window subtracted), repeatable where CPU time on these machines is not; and
//!   instructions per tcp connection (the destination `bench-tcp`, N / 10 connections, each a mesh mTLS
//!   handshake, the decision and an upstream mTLS handshake). `--instructions-breakdown` adds three
//!   variants that tell where single-cluster mode's extra instructions go (see [`Mode`]);
//! * adding one identity: from publishing the new configuration (the certificate on the SDS server; the
//!   policy over file LDS; per-cluster also the clusters over file CDS) to the new identity's first 200
//!   with its certificate.
//!
//! Both modes take the identities' certificates from the same gRPC SDS server (the harness's): with file
//! SDS, one watched directory per secret, Envoy runs out of inotify instances before 1,000 clusters.
//!
//! Runs on the fixed loopback ports of the test topology (partners 18443, 18444) plus 20000-24999: never during
//! `make test`. Prints a Markdown table and writes `DIR/identity-scale.json`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egress_identity_harness::bench::{
    self, caller, certificate_from_sds, fail, identity, ok, per_unit, rss_mb, secret, Args, Envoy, Variant,
};
use egress_identity_harness::client::{Call, Client};
use egress_identity_harness::l4::L4Client;
use egress_identity_harness::lds;
use egress_identity_harness::pki::{CertFiles, Pki};
use egress_identity_harness::process::Supervised;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{populate_run_dir, wasm_path, EXTERNAL_PORT, EXTERNAL_TCP_PORT};
use serde_json::{json, Value};

const HOST: &str = "api.partner.example";
const SDS_PORT: u16 = 21447;
/// Identities whose first request is timed (never used before the measurement).
const FIRST_REQUESTS: usize = 5;
/// Requests per curl (one keep-alive connection) in a CPU batch.
const BATCH: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    PerCluster,
    Single,
    /// `--instructions-breakdown`: single-cluster without the `set_filter_state` copy (the mapper's default
    /// is the benchmark caller's secret, so its requests still succeed): what the copy and the pool key
    /// cost, against [`Mode::Single`].
    NoCopy,
    /// `--instructions-breakdown`: single-cluster whose copy writes a constant (the benchmark caller's
    /// secret) instead of the filter's value: against [`Mode::NoCopy`], what the hashable object costs on
    /// the shared cluster, whatever its source.
    ConstantCopy,
    /// `--instructions-breakdown`: per-cluster plus the same `set_filter_state` copy, reading the cluster
    /// header the filter sets anyway (the object is ignored by a cluster without the selector): against
    /// [`Mode::PerCluster`], what the copy filter, its format string and the hashed pool key cost alone.
    PerClusterCopy,
}

impl Variant for Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerCluster => "per-cluster",
            Mode::Single => "single-cluster",
            Mode::NoCopy => "single-cluster-no-copy",
            Mode::ConstantCopy => "single-cluster-constant-copy",
            Mode::PerClusterCopy => "per-cluster-with-copy",
        }
    }

    fn ports(self) -> (u16, u16, u16) {
        match self {
            Mode::PerCluster => (20443, 20901, 20090),
            Mode::Single => (21443, 21901, 21090),
            Mode::NoCopy => (22443, 22901, 22090),
            Mode::ConstantCopy => (23443, 23901, 23090),
            Mode::PerClusterCopy => (24443, 24901, 24090),
        }
    }
}

impl Mode {
    fn per_cluster(self) -> bool {
        matches!(self, Mode::PerCluster | Mode::PerClusterCopy)
    }

    /// The gateway's tcp listener (instruction runs only).
    fn l4_port(self) -> u16 {
        self.ports().0 + 5
    }
}

/// The policy: `n` identities, declared once, everybody allowed; one destination presenting them all (in
/// single-cluster mode, one cluster for all); with `l4`, also the tcp destination `bench-tcp` (the same
/// identities, on the mode's tcp port). The identity clusters are derived: `<destination>|id-<i>`.
fn policy(n: usize, mode: Mode, l4: bool) -> Value {
    let destination =
        |name: &str, port: u16| bench::destination(name, json!(HOST), json!(port), n, !mode.per_cluster());
    let mut destinations = vec![destination("bench", 443)];
    if l4 {
        let mut tcp = destination("bench-tcp", mode.l4_port());
        tcp["protocol"] = json!("tcp");
        destinations.push(tcp);
    }
    bench::policy(n, destinations)
}

/// Renders the policy with the CLI and splits the bootstrap: listeners over file LDS and, one cluster per
/// identity, the clusters over file CDS (how a control plane would add one). Returns the bootstrap path.
/// `l4` adds the tcp destination (instruction runs).
fn render(cli: &Path, dir: &Path, n: usize, mode: Mode, l4: bool) -> PathBuf {
    let mut args: Vec<String> = vec![
        "--upstream".into(),
        format!("bench=127.0.0.1:{EXTERNAL_PORT}"),
        "--ca-secret".into(),
        "bench=partner-ca".into(),
    ];
    if l4 {
        // The L4 listener listens on the tcp destination's port (mode.l4_port()).
        args.extend(["--l4-address".into(), "127.0.0.1".into()]);
        args.extend(["--upstream".into(), format!("bench-tcp=127.0.0.1:{EXTERNAL_TCP_PORT}")]);
        args.extend(["--ca-secret".into(), "bench-tcp=partner-ca".into()]);
    }
    if !mode.per_cluster() {
        args.extend(["--identity-sds".into(), format!("127.0.0.1:{SDS_PORT}")]);
    }
    let bootstrap = bench::render(cli, dir, mode, &policy(n, mode, l4), &args);
    let (mut bootstrap, mut listeners) = ok(lds::split(bootstrap), "LDS split");
    if mode == Mode::NoCopy {
        for l in &mut listeners {
            without_filter(l, "envoy.filters.http.set_filter_state");
        }
        replace_key(&mut bootstrap, "default_value", &json!(identity(0)));
    }
    if mode == Mode::ConstantCopy {
        for l in &mut listeners {
            replace_key(l, "inline_string", &json!(identity(0)));
        }
    }
    if mode == Mode::PerClusterCopy {
        for l in &mut listeners {
            with_copy_of_cluster_header(l);
        }
    }
    let mode_dir = dir.join(mode.name());
    let lds_dir = mode_dir.join("lds");
    ok(lds::write_listeners(&lds_dir, &listeners).map(|_| ()), "LDS file");
    bootstrap["dynamic_resources"]["lds_config"]["path_config_source"] =
        json!({"path": lds_dir.join("listeners.yaml"), "watched_directory": {"path": lds_dir}});
    if mode.per_cluster() {
        let clusters = bootstrap["static_resources"]["clusters"].as_array().cloned().unwrap_or_default();
        let (mut identity_clusters, mut other): (Vec<Value>, Vec<Value>) =
            clusters.into_iter().partition(|c| c["name"].as_str().is_some_and(|n| n.contains('|')));
        // The same certificate source as single-cluster mode: file SDS watches a directory per secret and
        // Envoy runs out of inotify instances (max_user_instances, 128 by default) long before 1,000.
        identity_clusters.iter_mut().for_each(certificate_from_sds);
        other.push(bench::sds_cluster(SDS_PORT));
        bootstrap["static_resources"]["clusters"] = Value::Array(other);
        let cds_dir = mode_dir.join("cds");
        write_clusters(&cds_dir, &identity_clusters);
        bootstrap["dynamic_resources"]["cds_config"] = json!({
            "resource_api_version": "V3",
            "path_config_source": {"path": cds_dir.join("clusters.json"), "watched_directory": {"path": cds_dir}}
        });
    }
    bench::write_bootstrap(dir, mode, &bootstrap)
}

/// Removes the filters named `name` from every `http_filters` list in `v`.
fn without_filter(v: &mut Value, name: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(filters)) = o.get_mut("http_filters") {
                filters.retain(|f| f["name"] != name);
            }
            o.values_mut().for_each(|x| without_filter(x, name));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| without_filter(x, name)),
        _ => {}
    }
}

/// Adds, before the router of every `http_filters` list in `v`, the single-cluster mode's `set_filter_state`
/// copy, reading the cluster header ([`Mode::PerClusterCopy`]).
fn with_copy_of_cluster_header(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(filters)) = o.get_mut("http_filters") {
                let router = filters.iter().position(|f| f["name"] == "envoy.filters.http.router").unwrap_or(0);
                filters.insert(
                    router,
                    json!({"name": "envoy.filters.http.set_filter_state", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                        "on_request_headers": [{
                            "object_key": "envoy.tls.certificate_mappers.on_demand_secret",
                            "factory_key": "envoy.hashable_string",
                            "format_string": {"text_format_source": {"inline_string": "%REQ(x-egress-identity-cluster)%"},
                                              "omit_empty_values": true},
                            "skip_if_empty": true,
                            "shared_with_upstream": "ONCE"}]}}),
                );
            }
            o.values_mut().for_each(with_copy_of_cluster_header);
        }
        Value::Array(a) => a.iter_mut().for_each(with_copy_of_cluster_header),
        _ => {}
    }
}

/// Sets every `key` in `v` to `value`.
fn replace_key(v: &mut Value, key: &str, value: &Value) {
    match v {
        Value::Object(o) => {
            if let Some(x) = o.get_mut(key) {
                *x = value.clone();
            }
            o.values_mut().for_each(|x| replace_key(x, key, value));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| replace_key(x, key, value)),
        _ => {}
    }
}

fn write_clusters(cds_dir: &Path, clusters: &[Value]) {
    let resources: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
            c
        })
        .collect();
    ok(fs::create_dir_all(cds_dir).map_err(Into::into), "CDS dir");
    let tmp = cds_dir.join(".clusters.json.tmp");
    ok(
        fs::write(&tmp, serde_json::to_vec(&json!({"resources": resources})).unwrap_or_default()).map_err(Into::into),
        "CDS",
    );
    ok(fs::rename(&tmp, cds_dir.join("clusters.json")).map_err(Into::into), "CDS rename");
}

struct Gateway {
    mode: Mode,
    /// Stops the gateway when dropped.
    _process: Supervised,
    pid: u32,
    ready_s: f64,
    client: Client,
    lds_dir: PathBuf,
}

fn start_gateway(dir: &Path, bootstrap: &Path, mode: Mode) -> Gateway {
    let listen = mode.ports().0;
    let Envoy { process, pid, ready_s } = bench::start_envoy(dir, bootstrap, mode);
    let pki = ok(Pki::load(dir.join("pki")), "PKI");
    Gateway {
        mode,
        _process: process,
        pid,
        ready_s,
        client: Client::new(pki.mesh_ca_cert()).on_port(listen),
        lds_dir: dir.join(mode.name()).join("lds"),
    }
}

/// CPU seconds the process has used, all threads, in nanoseconds' resolution (`schedstat`: time on CPU).
fn cpu_s(pid: u32) -> f64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    let ns: u64 = tasks
        .iter()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e9
}

/// One request as caller `i`; the seconds it took and whether the partner saw identity `i`.
fn request(g: &Gateway, cert: &CertFiles, i: usize, path: &str) -> (f64, bool) {
    let started = Instant::now();
    let r = ok(g.client.send(&Call::get(cert, path).host(HOST)), "curl");
    let seen = r.status == 200 && r.field("client_subject") == Some(&format!("CN={}", identity(i)));
    (started.elapsed().as_secs_f64(), seen)
}

/// `BATCH` keep-alive requests in one curl (one downstream connection, one upstream identity).
fn batch(g: &Gateway, cert: &CertFiles, ca: &Path, tag: &str) {
    requests(g.mode, cert, ca, tag, BATCH);
}

/// `count` keep-alive requests in one curl to the gateway of `mode`.
fn requests(mode: Mode, cert: &CertFiles, ca: &Path, tag: &str, count: usize) {
    bench::requests(cert, ca, mode.ports().0, HOST, tag, count, "CPU batch failed");
}

/// `count` tcp connections of one identity through the mode's `bench-tcp` destination, each checked to
/// reach the partner with the identity's certificate.
fn connections(mode: Mode, client: &L4Client, cert: &CertFiles, count: usize) {
    let client = client.clone().on_port(mode.l4_port());
    for _ in 0..count {
        let outcome = ok(client.call(cert, HOST, b"hello\n"), "tcp connection");
        if outcome.received.trim() != format!("subject=CN={}", identity(0)) {
            fail(format!("{}: tcp connection not served with its certificate: {outcome:?}", mode.name()));
        }
    }
}

/// Instructions per request and per tcp connection of each mode's gateway under callgrind
/// (`--concurrency 1`): `count` keep-alive requests of one identity after a warm-up, then `count / 10`
/// connections, each minus an idle window as long (timers).
fn instructions(
    dir: &Path,
    bootstraps: &[(Mode, PathBuf)],
    cert: &CertFiles,
    ca: &Path,
    l4: &L4Client,
    count: usize,
) -> BTreeMap<Mode, (f64, f64)> {
    bench::under_callgrind(dir, bootstraps, |mode, pid| {
        requests(mode, cert, ca, "callgrind-warm", 200);
        let per_request = per_unit(dir, pid, count, &format!("{} request", mode.name()), || {
            requests(mode, cert, ca, "callgrind", count)
        });
        let conns = (count / 10).max(1);
        connections(mode, l4, cert, 5);
        let per_connection = per_unit(dir, pid, conns, &format!("{} tcp connection", mode.name()), || {
            connections(mode, l4, cert, conns)
        });
        (per_request, per_connection)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Polls the new identity until its request reaches the partner with its certificate.
fn until_served(g: &Gateway, cert: &CertFiles, i: usize, since: Instant) -> f64 {
    loop {
        if request(g, cert, i, "/add").1 {
            return since.elapsed().as_secs_f64();
        }
        if since.elapsed() > Duration::from_secs(300) {
            fail(format!("{}: identity {i} not served after 300 s", g.mode.name()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    bench::set_program("identity_scale");
    let args = Args::from_env();
    let arg = |name: &str| args.value(name);
    let (Some(cli), Some(out)) = (arg("--cli"), arg("--out")) else {
        fail("usage: identity_scale --cli PATH --out DIR [--sizes 10,1000,10000] [--rounds 10] [--instructions N [--instructions-breakdown]]")
    };
    let sizes = args.sizes("--sizes", "10,1000,10000");
    let rounds: usize = arg("--rounds").and_then(|r| r.parse().ok()).unwrap_or(10);
    // Instructions per request under callgrind, at the smallest size only (valgrind makes a gateway of
    // thousands of clusters take many minutes to start).
    let instruction_requests: Option<usize> = arg("--instructions").and_then(|r| r.parse().ok());
    let smallest = sizes.iter().copied().min().unwrap_or(0);
    let breakdown = args.flag("--instructions-breakdown");
    let cli = fs::canonicalize(&cli).unwrap_or_else(|e| fail(format!("{cli}: {e}")));
    let out = PathBuf::from(out);
    let cpu = bench::cpu_model();
    println!("identity-scale on {cpu}, {} cores; sizes {sizes:?}", bench::cores());
    let mut results = Vec::new();
    for n in sizes {
        let dir = bench::out_dir(&out).join(format!("n{n}"));
        let _ = fs::remove_dir_all(&dir);
        let nginx_conf = repo_root().join("envoy/external-server/nginx.conf");
        let pki = ok(populate_run_dir(&dir, &wasm_path(), &nginx_conf), "run dir");
        // The identities' certificates, +1 for the identity added at the end.
        let t = Instant::now();
        let sds_server = bench::start_sds(SDS_PORT);
        let mut secrets = Vec::with_capacity(n);
        for i in 0..=n {
            let files = ok(pki.issue_external_identity(&identity(i)), "external identity");
            if i < n {
                secrets.push(secret(&identity(i), &files));
            }
        }
        sds_server.put(secrets);
        eprintln!("n={n}: {} certificates in {:.1}s", n + 1, t.elapsed().as_secs_f64());
        let nginx = bench::start_nginx(&dir);
        std::thread::sleep(Duration::from_millis(300));

        let mut row: BTreeMap<&str, Value> = BTreeMap::new();
        let mut gateways = Vec::new();
        let bootstraps: Vec<(Mode, PathBuf)> =
            // Single-cluster first: started beside an idle gateway, not beside one still fetching thousands of
            // secrets (the per-cluster gateway's start is measured beside the idle single-cluster one).
            [Mode::Single, Mode::PerCluster].into_iter().map(|mode| (mode, render(&cli, &dir, n, mode, false))).collect();
        if let (Some(count), true) = (instruction_requests, n == smallest) {
            let cert = caller(&pki, 0);
            let mut modes = vec![Mode::Single, Mode::PerCluster];
            if breakdown {
                modes.extend([Mode::NoCopy, Mode::ConstantCopy, Mode::PerClusterCopy]);
            }
            let measured: Vec<(Mode, PathBuf)> =
                modes.into_iter().map(|m| (m, render(&cli, &dir, n, m, true))).collect();
            let l4 = L4Client::new(pki.mesh_ca_cert(), pki.partner_ca_cert());
            let ir = instructions(&dir, &measured, &cert, &pki.mesh_ca_cert(), &l4, count);
            let of = |mode: Mode| ir.get(&mode).map(|r| r.0);
            let (c, s) = (of(Mode::PerCluster), of(Mode::Single));
            row.insert("c_instructions", json!(c));
            row.insert("s_instructions", json!(s));
            row.insert("s_no_copy_instructions", json!(of(Mode::NoCopy)));
            row.insert("s_constant_copy_instructions", json!(of(Mode::ConstantCopy)));
            row.insert("c_with_copy_instructions", json!(of(Mode::PerClusterCopy)));
            row.insert("instructions_ratio", json!(c.zip(s).map(|(c, s)| s / c)));
            let (cl4, sl4) = (ir.get(&Mode::PerCluster).map(|r| r.1), ir.get(&Mode::Single).map(|r| r.1));
            row.insert("c_l4_instructions", json!(cl4));
            row.insert("s_l4_instructions", json!(sl4));
            row.insert("l4_instructions_ratio", json!(cl4.zip(sl4).map(|(c, s)| s / c)));
            // Fresh LDS/CDS files for the timed gateways.
            for (mode, _) in &bootstraps {
                render(&cli, &dir, n, *mode, false);
            }
        }
        for (mode, bootstrap) in &bootstraps {
            let mode = *mode;
            let g = start_gateway(&dir, bootstrap, mode);
            std::thread::sleep(Duration::from_secs(2));
            eprintln!("n={n} {}: ready {:.2}s, RSS {:.0} MB", mode.name(), g.ready_s, rss_mb(g.pid));
            row.insert(if mode == Mode::PerCluster { "c_ready_s" } else { "s_ready_s" }, json!(g.ready_s));
            row.insert(
                if mode == Mode::PerCluster { "c_rss_ready_mb" } else { "s_rss_ready_mb" },
                json!(rss_mb(g.pid)),
            );
            gateways.push(g);
        }
        // First requests of identities never used, alternating gateways; then the same identities again.
        let callers: Vec<CertFiles> = (0..FIRST_REQUESTS).map(|i| caller(&pki, i)).collect();
        let mut first: BTreeMap<Mode, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for (i, cert) in callers.iter().enumerate() {
            for g in &gateways {
                let (cold, seen) = request(g, cert, i, "/first");
                let (warm, seen_again) = request(g, cert, i, "/again");
                if !(seen && seen_again) {
                    fail(format!("{}: identity {i} not served with its certificate", g.mode.name()));
                }
                let e = first.entry(g.mode).or_default();
                e.0.push(cold * 1000.0);
                e.1.push(warm * 1000.0);
            }
        }
        for g in &gateways {
            let (cold, warm) = first.remove(&g.mode).unwrap_or_default();
            let key = if g.mode == Mode::PerCluster { "c" } else { "s" };
            row.insert(if key == "c" { "c_first_ms" } else { "s_first_ms" }, json!(median(cold)));
            row.insert(if key == "c" { "c_again_ms" } else { "s_again_ms" }, json!(median(warm)));
        }
        // CPU per request: alternating batches of one identity.
        let ca = pki.mesh_ca_cert();
        let cert = &callers[0];
        for g in &gateways {
            batch(g, cert, &ca, "warm");
        }
        let mut ratios = Vec::new();
        let mut per_request: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
        for r in 0..rounds {
            let mut us = BTreeMap::new();
            let order: Vec<&Gateway> =
                if r % 2 == 0 { gateways.iter().collect() } else { gateways.iter().rev().collect() };
            for g in order {
                let before = cpu_s(g.pid);
                batch(g, cert, &ca, &format!("r{r}"));
                let used = (cpu_s(g.pid) - before) * 1e6 / BATCH as f64;
                us.insert(g.mode, used);
                per_request.entry(g.mode).or_default().push(used);
            }
            if let (Some(c), Some(s)) = (us.get(&Mode::PerCluster), us.get(&Mode::Single)) {
                ratios.push(s / c);
            }
        }
        row.insert("c_cpu_us", json!(median(per_request.remove(&Mode::PerCluster).unwrap_or_default())));
        row.insert("s_cpu_us", json!(median(per_request.remove(&Mode::Single).unwrap_or_default())));
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        row.insert("cpu_ratio_median", json!(median(ratios)));
        row.insert("cpu_ratio_min", json!(sorted.first()));
        row.insert("cpu_ratio_max", json!(sorted.last()));
        for g in &gateways {
            let key = if g.mode == Mode::PerCluster { "c_rss_mb" } else { "s_rss_mb" };
            row.insert(key, json!(rss_mb(g.pid)));
        }
        // Add identity n.
        let new_cert = caller(&pki, n);
        let new_files = pki.external_identity(&identity(n));
        for g in &gateways {
            let text = serde_json::to_string(&policy(n + 1, g.mode, false)).unwrap_or_default();
            let started = Instant::now();
            sds_server.put([secret(&identity(n), &new_files)]);
            if g.mode == Mode::PerCluster {
                let cds_dir = dir.join(g.mode.name()).join("cds");
                let text = fs::read_to_string(cds_dir.join("clusters.json")).unwrap_or_default();
                let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut clusters = doc["resources"].as_array().cloned().unwrap_or_default();
                if let Some(mut added) = clusters.first().cloned() {
                    added["name"] = json!(format!("bench|id-{n}"));
                    added["load_assignment"]["cluster_name"] = json!(format!("bench|id-{n}"));
                    added["transport_socket"]["typed_config"]["common_tls_context"]
                        ["tls_certificate_sds_secret_configs"][0]["name"] = json!(identity(n));
                    clusters.push(added);
                }
                write_clusters(&cds_dir, &clusters);
            }
            ok(lds::push_plugin_config(&g.lds_dir, &text).map(|_| ()), "LDS write");
            let took = until_served(g, &new_cert, n, started);
            row.insert(if g.mode == Mode::PerCluster { "c_add_s" } else { "s_add_s" }, json!(took));
            eprintln!("n={n} {}: identity {n} added and served in {took:.2}s", g.mode.name());
        }
        drop(gateways);
        drop(nginx);
        println!("n={n}: {}", serde_json::to_string(&row).unwrap_or_default());
        results.push(json!({"identities": n, "results": row}));
    }
    let report = json!({"cpu": cpu, "batch": BATCH, "rounds": rounds, "sizes": results});
    let path = bench::write_report(&out, "identity-scale.json", &report);
    println!("\n| identities | mode | ready s | RSS MB (ready) | RSS MB (after load) | first request ms | next request ms | CPU µs/request | add one identity s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let n = &r["identities"];
        let v = &r["results"];
        for (k, name) in [("c", "one cluster per identity"), ("s", "single cluster")] {
            let f = |key: &str| v[format!("{k}_{key}")].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {n} | {name} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} |",
                f("ready_s"),
                f("rss_ready_mb"),
                f("rss_mb"),
                f("first_ms"),
                f("again_ms"),
                f("cpu_us"),
                f("add_s")
            );
        }
        println!(
            "| {n} | single/per-cluster CPU per request | | | | | | {:.3} (min {:.3}, max {:.3}) | |",
            v["cpu_ratio_median"].as_f64().unwrap_or(f64::NAN),
            v["cpu_ratio_min"].as_f64().unwrap_or(f64::NAN),
            v["cpu_ratio_max"].as_f64().unwrap_or(f64::NAN)
        );
        if let (Some(c), Some(s)) = (v["c_instructions"].as_f64(), v["s_instructions"].as_f64()) {
            println!("| {n} | instructions per request (callgrind): per-cluster {c:.0}, single cluster {s:.0} | | | | | | {:.4} | |", s / c);
            let variants = [
                ("s_no_copy_instructions", "single cluster without set_filter_state"),
                ("s_constant_copy_instructions", "single cluster, set_filter_state of a constant"),
                ("c_with_copy_instructions", "per-cluster plus set_filter_state (of the cluster header)"),
            ];
            for (key, what) in variants {
                if let Some(x) = v[key].as_f64() {
                    println!(
                        "| {n} | {what}: {x:.0} ({:+.0} vs per-cluster, {:+.0} vs single) | | | | | | | |",
                        x - c,
                        x - s
                    );
                }
            }
        }
        if let (Some(c), Some(s)) = (v["c_l4_instructions"].as_f64(), v["s_l4_instructions"].as_f64()) {
            println!("| {n} | instructions per tcp connection (callgrind): per-cluster {c:.0}, single cluster {s:.0} ({:+.0}) | | | | | | {:.4} | |", s - c, s / c);
        }
    }
    println!("\nwrote {}", path.display());
}
