//! The handshake guard (root id `egress-identity-guard`, `filter/src/guard.rs`) on a real gateway whose HTTP
//! chain has no handshake deadline, as Kuma's zone egress chains have none (README.md, "Threat model"):
//! envoy/gateway.yaml without its `transport_socket_connect_timeout`, first alone (the attack holds its
//! connections: the test can fail), then with the guard before the HTTP connection manager, as `render kuma`
//! places it. Callers who speak are served as before.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egress_identity_harness::client::{raw_exchange, Call};
use egress_identity_harness::l4::{held, real_client_hello};
use egress_identity_harness::pki::GATEWAY_HOST;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{self, Options, Topology, GATEWAY_PORT};

/// The guard's deadline is `connectionDecisionTimeoutMs` (10 s), kept to within the 1 s tick.
const HELD_AT_MOST: Duration = Duration::from_secs(13);

/// The HTTP listener's only handshake deadline in envoy/gateway.yaml.
const HANDSHAKE_DEADLINE: &str = "    - transport_socket_connect_timeout: 10s\n      transport_socket:\n";
const HCM: &str = "      filters:\n      - name: envoy.filters.network.http_connection_manager\n";

/// envoy/gateway.yaml's HTTP listener without its handshake deadline, and (`guard`) with the module as the
/// handshake guard before the HTTP connection manager, on the same VM and plugin configuration.
fn variant(guard: bool) -> String {
    let original = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    assert_eq!(original.matches(HANDSHAKE_DEADLINE).count(), 2, "the HTTP and L4 listeners' deadlines");
    let mut out = original.replacen(HANDSHAKE_DEADLINE, "    - transport_socket:\n", 1);
    if guard {
        let config = topology::plugin_config(&original).unwrap();
        let value: String = config.lines().map(|l| format!("                {l}\n")).collect();
        let filter = format!(
            "      filters:\n      - name: envoy.filters.network.wasm\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm\n          config:\n            name: egress-identity-guard\n            root_id: egress-identity-guard\n            failure_policy: FAIL_RELOAD\n            vm_config:\n              vm_id: egress-identity\n              runtime: envoy.wasm.runtime.v8\n              code:\n                local:\n                  filename: dist/egress_identity.wasm\n            configuration:\n              \"@type\": type.googleapis.com/google.protobuf.StringValue\n              value: |\n{value}      - name: envoy.filters.network.http_connection_manager\n"
        );
        assert_eq!(out.matches(HCM).count(), 1, "the HTTP listener's connection manager");
        out = out.replacen(HCM, &filter, 1);
    }
    out
}

fn start(name: &str, guard: bool) -> Topology {
    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let config = run_dir.join("gateway-guard-variant.yaml");
    std::fs::write(&config, variant(guard)).unwrap();
    let mut opts = Options::new(&run_dir);
    opts.gateway_config = config;
    Topology::start(&opts).unwrap()
}

/// How long each attack held its connection (`None`: still open after `max`).
fn attack(t: &Topology, max: Duration) -> Vec<(&'static str, Option<Duration>)> {
    let hello = real_client_hello(GATEWAY_HOST).unwrap();
    std::thread::scope(|s| {
        let stalled = s.spawn(|| held(GATEWAY_PORT, &hello, max).unwrap());
        let half = s.spawn(|| held(GATEWAY_PORT, hello.get(..hello.len() / 2).unwrap(), max).unwrap());
        // An authenticated caller that completes its handshake and sends nothing.
        let silent = s.spawn(|| {
            let start = Instant::now();
            // An error is the gateway closing the connection (e.g. right after the handshake).
            let got = raw_exchange(
                &t.pki().mesh_ca_cert(),
                GATEWAY_PORT,
                GATEWAY_HOST,
                &t.pki().workload("team-app1"),
                b"",
                max,
            );
            let elapsed = start.elapsed();
            eprintln!("handshake done, nothing sent: {got:?} after {elapsed:?}");
            (elapsed < max).then_some(elapsed)
        });
        vec![
            ("stalled handshake", stalled.join().unwrap()),
            ("half a ClientHello", half.join().unwrap()),
            ("handshake done, nothing sent", silent.join().unwrap()),
        ]
    })
}

#[test]
fn the_guard_closes_silent_connections_on_a_chain_without_a_handshake_deadline() {
    // The attack first, on the chain as Kuma generates it (no deadline): every connection is still held.
    let max = Duration::from_secs(16);
    {
        let t = start("handshake-guard-without", false);
        let results = attack(&t, max);
        for (case, held) in &results {
            assert!(held.is_none_or(|h| h > HELD_AT_MOST), "{case}: closed without the guard: {results:?}");
        }
    }
    let t = start("handshake-guard", true);
    let results = attack(&t, Duration::from_secs(20));
    for (case, held) in &results {
        assert!(held.is_some_and(|h| h <= HELD_AT_MOST), "{case} held too long (None: still open): {results:?}");
    }
    t.settle_counters();
    let counted = t.metric("egress_identity_handshake_timeouts_total", &[]);
    assert_eq!(counted, 3, "the three attacks, on the Prometheus endpoint");
    // A caller that speaks is decided by the HTTP filter as before, with its own certificate upstream.
    let path = egress_identity_harness::unique_path("/guard/allowed");
    let r = t.client().send(&Call::get(&t.pki().workload("team-app1"), &path)).unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some("CN=team.app1"), "{}", r.summary());
    let denied = t.client().send(&Call::get(&t.pki().workload("sandbox-default"), &path)).unwrap();
    assert_eq!(denied.status, 403, "{}", denied.summary());
    // The guard counted no caller that spoke.
    t.settle_counters();
    let after = t.metric("egress_identity_handshake_timeouts_total", &[]);
    assert_eq!(after, counted, "callers that spoke were counted as timeouts");
}
