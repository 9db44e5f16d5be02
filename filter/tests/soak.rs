//! Soak (ignored by default; `make soak`, SOAK_REQUESTS=1000000): SOAK_REQUESTS requests through the real
//! gateway (envoy/gateway.yaml + dist/egress_identity.wasm) to the real partner, zero unexpected statuses,
//! and the gateway's RSS (from /proc) flat after warm-up.
//!
//! curl (the harness load generator) manages a few hundred requests a second here, too slow for a million;
//! so `wrk` (plain HTTP/1.1, keep-alive) drives a client-side Envoy on the probe ports (127.0.0.1:19080,
//! admin 19901) that originates mTLS to the gateway with team-app1's workload certificate, as a sidecar
//! would. Allowed requests (`/soak/...`) must all be 200; the run is split into rounds so RSS can be sampled
//! between them and every round's counts checked (wrk: no socket errors, no non-2xx).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use egress_identity_harness::pki::GATEWAY_HOST;
use egress_identity_harness::process::Supervised;
use egress_identity_harness::topology::{Options, Topology};

const CLIENT_PORT: u16 = 19080;
const CLIENT_ADMIN_PORT: u16 = 19901;

/// The gateway Envoy's pid: the envoy process whose working directory is the run directory.
fn gateway_pid(run_dir: &Path) -> u32 {
    let run_dir = run_dir.canonicalize().unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("envoy")) && cwd == run_dir {
            return pid;
        }
    }
    panic!("no gateway envoy running in {}", run_dir.display());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A client-side Envoy: plain HTTP on 127.0.0.1:19080 → mTLS to the gateway as `cert`.
fn client_bootstrap(t: &Topology, cert: &egress_identity_harness::pki::CertFiles) -> serde_json::Value {
    serde_json::json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": CLIENT_ADMIN_PORT } } },
        "static_resources": {
            "listeners": [{
                "name": "client",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": CLIENT_PORT } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "client",
                        "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "gateway", "timeout": "30s" } }] }] },
                        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
                    }
                }] }]
            }],
            "clusters": [{
                "name": "gateway",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": { "cluster_name": "gateway", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": egress_identity_harness::topology::GATEWAY_PORT } } } }] }] },
                "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": GATEWAY_HOST,
                    "common_tls_context": {
                        "tls_certificates": [{ "certificate_chain": { "filename": cert.cert.display().to_string() },
                                               "private_key": { "filename": cert.key.display().to_string() } }],
                        "validation_context": { "trusted_ca": { "filename": t.pki().mesh_ca_cert().display().to_string() },
                                                "match_typed_subject_alt_names": [{ "san_type": "DNS", "matcher": { "exact": GATEWAY_HOST } }] }
                    }
                } }
            }]
        }
    })
}

#[derive(Debug, Default)]
struct WrkRound {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
}

fn wrk(seconds: u64, connections: u32, path: &str) -> WrkRound {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--timeout", "10s"])
        .args(["-H", "Host: api.partner.example"])
        .arg(format!("http://127.0.0.1:{CLIENT_PORT}{path}"))
        .output()
        .expect("running wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut r = WrkRound::default();
    for l in text.lines() {
        let l = l.trim();
        if let Some(n) = l.split(" requests in ").next().filter(|_| l.contains(" requests in ")) {
            r.requests = n.trim().parse().unwrap();
        } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = n.trim().parse().unwrap();
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            r.socket_errors = rest.split(',').filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok()).sum();
        }
    }
    assert!(r.requests > 0, "no requests in wrk's output: {text}");
    r
}

#[test]
#[ignore = "soak: minutes of load; run with `make soak`"]
fn soak_million_requests_flat_rss() {
    let want: u64 = std::env::var("SOAK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let run_dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak");
    let t = Topology::start(&Options::new(&run_dir)).expect("starting the gateway");
    let client_dir = run_dir.join("client");
    std::fs::create_dir_all(client_dir.join("logs")).unwrap();
    let bootstrap = client_dir.join("client.json");
    let app1 = t.pki().workload("team-app1");
    std::fs::write(&bootstrap, serde_json::to_string_pretty(&client_bootstrap(&t, &app1)).unwrap()).unwrap();
    let mut client = Supervised::spawn(
        "client envoy",
        &egress_identity_harness::topology::envoy_bin(),
        &[
            "-c".into(),
            bootstrap.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--base-id".into(),
            "7".into(),
            "--log-level".into(),
            "warning".into(),
        ],
        &client_dir,
        &client_dir.join("logs/envoy.log"),
    )
    .unwrap();
    client
        .wait_ready(Duration::from_secs(60), || {
            egress_identity_harness::topology::http_get(CLIENT_ADMIN_PORT, "/ready").is_some_and(|(s, _)| s == 200)
        })
        .expect("client envoy ready");

    let pid = gateway_pid(&run_dir);
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = vec![(0.0, 0, rss_kib(pid))];
    let (mut total, mut bad) = (0u64, 0u64);
    let mut round = 0;
    while total < want {
        round += 1;
        let r = wrk(20, 32, &format!("/soak/round-{round}"));
        total += r.requests;
        bad += r.non_2xx + r.socket_errors;
        let rss = rss_kib(pid);
        samples.push((started.elapsed().as_secs_f64(), total, rss));
        eprintln!(
            "soak: round {round}: {} requests ({} non-2xx, {} socket errors), total {total}, gateway RSS {} KiB",
            r.requests, r.non_2xx, r.socket_errors, rss
        );
        assert!(client.exited().is_none(), "client envoy exited");
    }
    t.settle_counters();
    let allowed = t.metric("egress_identity_decisions_total", &[("decision", "allow")]);
    let denied = t.metric("egress_identity_decisions_total", &[("decision", "deny")]);
    eprintln!(
        "soak: {total} requests in {:.0} s, {bad} unexpected; filter allowed {allowed}, denied {denied}",
        started.elapsed().as_secs_f64()
    );
    eprintln!("soak: RSS samples (s, requests, KiB): {samples:?}");
    assert_eq!(bad, 0, "unexpected statuses or socket errors");
    assert_eq!(denied, 0, "the filter denied requests");
    assert!(allowed >= total, "filter allowed {allowed} < {total} completed");
    // Flat after warm-up: from the sample after the first quarter to the end, RSS grows < 10 % (and < 16 MiB).
    let warm = samples.iter().find(|s| s.1 >= want / 4).map_or(samples[1].2, |s| s.2);
    let last = samples.last().unwrap().2;
    assert!(last <= warm + (warm / 10).min(16 * 1024), "gateway RSS grew from {warm} KiB after warm-up to {last} KiB");
    client.stop();
}
