//! The Istio egress gateway as istiod generates it, serving the demo's traffic on a real Envoy.
//!
//! istiod's own config generation (tests/istiod: istio.io/istio in-process, on the rendered
//! `examples/istio/egress-gateway`) dumps what it pushes to the gateway; [`istiod::bootstrap`] makes that a
//! static bootstrap -- dropping only istio-proxy's own filters, and putting in place what istiod would serve
//! over ADS (ECDS with the filter built here, RDS, SDS with the test PKI, EDS) -- and Envoy 1.40 runs it in
//! front of the real partner (nginx). Callers are what sidecars send: mesh mTLS with the destination's
//! host as SNI; HTTP with `Host: api.partner.example`, L4 on the gateway's port 8443.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::Path;

use egress_identity_harness::client::{raw_exchange, Call, Response};
use egress_identity_harness::istiod::{self, Expected, Proxy, Substitutions};
use egress_identity_harness::l4::{held, real_client_hello, L4Outcome};
use egress_identity_harness::pki::CertFiles;
use egress_identity_harness::topology::{
    Topology, ADMIN_PORT, EXTERNAL_PORT, EXTERNAL_TCP_PORT, EXTERNAL_TLS_PORT, GATEWAY_PORT, METRICS_PORT,
};

/// The readiness port of istio-agent's bootstrap.
const AGENT_HEALTH_PORT: u16 = 15021;

/// The port an Istio gateway's L4 server listens on (the filter's front for tcp/tls destinations).
const ISTIO_L4_PORT: u16 = 8443;

/// istio-proxy's own filters the generated gateway carries, which upstream Envoy does not have (by type).
const EXPECTED_DROPPED: &[&str] = &[
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
];

fn substitutions() -> Substitutions {
    Substitutions::on_topology(
        BTreeMap::from([
            // istio-agent's: the merged metrics Prometheus scrapes, and the readiness probe.
            ("0.0.0.0_15090".to_string(), METRICS_PORT),
            ("0.0.0.0_15021".to_string(), AGENT_HEALTH_PORT),
            ("0.0.0.0_443".to_string(), GATEWAY_PORT),
            (format!("0.0.0.0_{ISTIO_L4_PORT}"), ISTIO_L4_PORT),
        ]),
        BTreeMap::from([
            (("api.partner.example".to_string(), 443), EXTERNAL_PORT),
            (("db.partner.example".to_string(), 5432), EXTERNAL_TCP_PORT),
            (("files.partner.example".to_string(), 443), EXTERNAL_TLS_PORT),
            // istio-agent's prometheus_stats cluster reaches the admin interface, moved here.
            (("127.0.0.1".to_string(), 15000), ADMIN_PORT),
        ]),
    )
}

fn http(t: &Topology, who: &str, path: &str) -> Response {
    let client = t.client().as_sidecar("api.partner.example", t.pki().gateway_public_key().unwrap());
    client.send(&Call::get(&t.pki().workload(who), path)).unwrap()
}

fn field<'a>(r: &'a Response, name: &str) -> &'a str {
    r.field(name).unwrap_or_default()
}

fn assert_denied(t: &Topology, r: &Response, path: &str, layer: &str, reason: &str, policy: Option<&str>) {
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!((field(r, "decision"), field(r, "layer"), field(r, "reason")), ("deny", layer, reason), "{}", r.body);
    if let Some(policy) = policy {
        assert_eq!(field(r, "policy"), policy, "{}", r.body);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(t.external_requests_for(path).is_empty(), "{path} reached the partner");
}

fn partner_connections(t: &Topology, port: u16) -> usize {
    t.external_connections().iter().filter(|c| c["port"] == port).count()
}

fn l4(t: &Topology, who: &str, sni: &str) -> L4Outcome {
    let client = t.l4_client().on_port(ISTIO_L4_PORT);
    let caller: CertFiles = t.pki().workload(who);
    if sni.starts_with("files.") {
        client.passthrough(&caller, sni, sni, b"hello\n").unwrap()
    } else {
        client.call(&caller, sni, b"hello\n").unwrap()
    }
}

/// Refused: nothing came back and the partner saw no connection.
fn assert_refused(t: &Topology, who: &str, sni: &str, port: u16) {
    let before = partner_connections(t, port);
    let outcome = l4(t, who, sni);
    assert!(outcome.received.is_empty(), "{who} -> {sni}: the partner answered: {outcome:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(partner_connections(t, port), before, "{who} -> {sni} reached the partner");
}

#[test]
fn the_gateway_istiod_generates_serves_each_caller_as_its_own_identity() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("istiod-gateway");
    let cli = Path::new(env!("CARGO_BIN_EXE_egress-identity"));
    assert!(std::net::TcpListener::bind(("127.0.0.1", ISTIO_L4_PORT)).is_ok(), "port {ISTIO_L4_PORT} is in use");
    // The filter comes from istiod's ECDS (both WasmPlugins), not from this test.
    let expected = Expected { dropped: EXPECTED_DROPPED, wasm_extensions: 2 };
    let proxy = Proxy {
        test: "TestGatewayAsIstiodGeneratesIt",
        dump: "egress-gateway.json",
        agent_bootstrap: Some("egress-gateway-bootstrap.json"),
    };
    let t = istiod::start(proxy, &dir, cli, substitutions(), expected).unwrap();

    // HTTP: each caller reaches the partner with its own external identity, whatever it claims.
    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        let path = egress_identity_harness::unique_path(&format!("/v1/istiod/{who}"));
        let r = http(&t, who, &path);
        assert_eq!((r.status, field(&r, "client_subject")), (200, cn), "{who}: {}", r.summary());
        assert_eq!((field(&r, "uri"), field(&r, "cluster_header"), field(&r, "xfcc")), (path.as_str(), "", ""));
    }
    let spoof = egress_identity_harness::unique_path("/v1/istiod/spoof");
    let client = t.client().as_sidecar("api.partner.example", t.pki().gateway_public_key().unwrap());
    let r = client
        .send(
            &Call::get(&t.pki().workload("team-app2"), &spoof)
                .header("x-egress-identity-cluster", "partner-api|team-app1"),
        )
        .unwrap();
    assert_eq!((r.status, field(&r, "client_subject")), (200, "CN=team.app2"), "{}", r.summary());

    // HTTP denials, by layer.
    let path = egress_identity_harness::unique_path("/admin/istiod");
    assert_denied(&t, &http(&t, "team-app1", &path), &path, "destination", "denied_by_policy", Some("deny-app1-admin"));
    let path = egress_identity_harness::unique_path("/v1/istiod/app3");
    assert_denied(&t, &http(&t, "team-app3", &path), &path, "destination", "no_matching_allow", None);
    let path = egress_identity_harness::unique_path("/v1/istiod/sandbox");
    assert_denied(&t, &http(&t, "sandbox-default", &path), &path, "gateway", "no_matching_allow", None);
    let path = egress_identity_harness::unique_path("/v1/istiod/quarantine");
    let r = http(&t, "quarantine-default", &path);
    assert_denied(&t, &r, &path, "gateway", "denied_by_policy", Some("deny-quarantine"));

    // A denied request with `Expect: 100-continue` gets its 403 alone (the HCM proxies 100-continue).
    let path = egress_identity_harness::unique_path("/v1/istiod/expect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: api.partner.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    );
    let quarantine = t.pki().workload("quarantine-default");
    let mesh_ca = t.pki().mesh_ca_cert();
    let wait = std::time::Duration::from_secs(2);
    let got = raw_exchange(&mesh_ca, GATEWAY_PORT, "api.partner.example", &quarantine, head.as_bytes(), wait).unwrap();
    assert!(got.starts_with("HTTP/1.1 403 ") && !got.contains(" 100 Continue"), "{got}");

    // Hostile callers: a TLS handshake started and never finished (istiod bounds it: 15 s), request headers
    // that never end (the EnvoyFilter's hardening: 10 s).
    let max = std::time::Duration::from_secs(25);
    let hello = |sni| real_client_hello(sni).unwrap();
    let endless = b"GET /slow HTTP/1.1\r\nHost: api.partner.example\r\nX-Slow: 1\r\n";
    let app1 = t.pki().workload("team-app1");
    let (stalled_http, stalled_l4, headers) = std::thread::scope(|s| {
        let http = s.spawn(|| held(GATEWAY_PORT, &hello("api.partner.example"), max).unwrap());
        let l4 = s.spawn(|| held(ISTIO_L4_PORT, &hello("db.partner.example"), max).unwrap());
        let start = std::time::Instant::now();
        raw_exchange(&mesh_ca, GATEWAY_PORT, "api.partner.example", &app1, endless, max).unwrap();
        let headers = Some(start.elapsed()).filter(|e| *e < max);
        (http.join().unwrap(), l4.join().unwrap(), headers)
    });
    for (case, held, at_most) in [
        ("stalled handshake, HTTP", stalled_http, 17),
        ("stalled handshake, L4", stalled_l4, 17),
        ("endless headers", headers, 12),
    ] {
        assert!(held.is_some_and(|h| h.as_secs() <= at_most), "{case}: held {held:?} (None: still open after {max:?})");
    }

    // L4 on port 8443: tcp originates mTLS as the caller's identity; tls passes the caller's TLS through.
    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        let outcome = l4(&t, who, "db.partner.example");
        assert_eq!(outcome.received.trim(), format!("subject={cn}"), "{who}: {outcome:?}");
    }
    let outcome = l4(&t, "team-app1", "files.partner.example");
    assert_eq!(outcome.received.trim(), "server_name=files.partner.example", "{outcome:?}");
    assert_refused(&t, "team-app3", "db.partner.example", EXTERNAL_TCP_PORT);
    assert_refused(&t, "quarantine-default", "db.partner.example", EXTERNAL_TCP_PORT);
    assert_refused(&t, "team-app2", "files.partner.example", EXTERNAL_TLS_PORT);

    // The metrics, as Prometheus scrapes istio-agent's merged port, labelled by the stats tags of the
    // bootstrap override (stats.yaml): without them, none of these series is found.
    t.settle_counters();
    let allowed = |protocol, destination, identity| {
        [("protocol", protocol), ("decision", "allow"), ("destination", destination), ("identity", identity)]
    };
    istiod::check_decisions(&[
        (&allowed("http", "partner-api", "team.app1"), 1.0),
        (&allowed("http", "partner-api", "team.app2"), 2.0),
        // quarantine: once, and once with Expect: 100-continue.
        (&[("protocol", "http"), ("decision", "deny"), ("layer", "gateway"), ("policy", "deny-quarantine")], 2.0),
        (&allowed("l4", "partner-db", "team.app2"), 1.0),
        (&[("protocol", "l4"), ("decision", "deny"), ("layer", "destination")], 2.0),
    ])
    .unwrap();
}
