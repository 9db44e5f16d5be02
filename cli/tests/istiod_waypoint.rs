//! The ambient egress waypoint as istiod generates it, serving the demo's HTTP traffic on a real Envoy.
//!
//! istiod's own config generation (tests/istiod: istio.io/istio in-process, ambient on, the rendered
//! `examples/istio/egress-waypoint`) dumps what it pushes to the waypoint; [`istiod::bootstrap`] makes that a
//! static bootstrap (istio-proxy's own filters dropped, ECDS and SDS made static), and Envoy 1.40 runs it with
//! the filter in front of the real partner (nginx). Callers are what ztunnel sends: HBONE, an HTTP/2 CONNECT
//! over mTLS with the source workload's certificate to the waypoint's tunnel listener (`connect_terminate`),
//! whose `:authority` is the ServiceEntry's VIP and port; inside, the application's plain HTTP to
//! `http://api.partner.example/`. So this runs, as generated: the tunnel's termination, the caller's principal
//! in filter state `io.istio.peer_principal` (set there from the tunnel's peer certificate), the internal
//! listener `main_internal` and its chain for the VIP, the filter, and the HTTPRoute's routes to the
//! identities' clusters. Not run: ztunnel itself.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::Path;

use egress_identity_harness::hbone::{HboneClient, Tunneled};
use egress_identity_harness::istiod::{self, Expected, Proxy, Substitutions};
use egress_identity_harness::topology::{
    Topology, ADMIN_PORT, EXTERNAL_PORT, EXTERNAL_TCP_PORT, EXTERNAL_TLS_PORT, GATEWAY_PORT, METRICS_PORT,
};
use serde_json::Value;

/// The address tests/istiod gives the ServiceEntry of `api.partner.example` (what Istio's IP auto-allocation
/// would), with its HTTP port: the `:authority` of the tunnel.
const API_VIP: &str = "240.240.0.1:80";
/// The same for the tcp destination `db.partner.example` (the second ServiceEntry), on the partner's port.
const DB_VIP: &str = "240.240.0.2:5432";
/// The same for the tls destination `files.partner.example` (the third).
const FILES_VIP: &str = "240.240.0.3:443";

/// The readiness port of istio-agent's bootstrap.
const AGENT_HEALTH_PORT: u16 = 15021;

/// istio-proxy's own filters the generated waypoint carries, which upstream Envoy does not have (by type).
const EXPECTED_DROPPED: &[&str] = &[
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "type.googleapis.com/istio.workload.BootstrapExtension",
];

fn substitutions() -> Substitutions {
    let on_topology = Substitutions::on_topology(
        BTreeMap::from([
            ("connect_terminate".to_string(), GATEWAY_PORT),
            // istio-agent's: the merged metrics Prometheus scrapes, and the readiness probe.
            ("0.0.0.0_15090".to_string(), METRICS_PORT),
            ("0.0.0.0_15021".to_string(), AGENT_HEALTH_PORT),
        ]),
        BTreeMap::from([
            (("api.partner.example".to_string(), 443), EXTERNAL_PORT),
            // The tcp destination: nginx's mTLS stream server, which answers with the client subject it saw.
            (("db.partner.example".to_string(), 5432), EXTERNAL_TCP_PORT),
            // The tls destination: nginx's TLS stream server, the caller's own TLS reaching it.
            (("files.partner.example".to_string(), 443), EXTERNAL_TLS_PORT),
            // istio-agent's prometheus_stats cluster reaches the admin interface, moved here.
            (("127.0.0.1".to_string(), 15000), ADMIN_PORT),
        ]),
    );
    Substitutions {
        // The fail-closed DestinationRule's Secret of the tcp destination's own cluster: it never exists.
        absent_secrets: [
            "kubernetes://egress-identity-no-identity".to_string(),
            "kubernetes://egress-identity-no-identity-cacert".to_string(),
        ]
        .into(),
        ..on_topology
    }
}

/// The application's `GET http://api.partner.example<path>` as `who`, through ztunnel's tunnel.
fn call(t: &Topology, who: &str, path: &str) -> Tunneled {
    let client = HboneClient::new(t.pki().mesh_ca_cert(), GATEWAY_PORT);
    client.http_get(&t.pki().workload(who), API_VIP, "api.partner.example", path).unwrap()
}

/// (status, JSON body) of the HTTP response the tunnel carried back.
fn answer(who: &str, tunneled: &Tunneled) -> (u16, Value) {
    assert_eq!(tunneled.connect_status, 200, "{who}: the waypoint refused the tunnel: {tunneled:?}");
    let (status, body) = tunneled
        .http_response()
        .unwrap_or_else(|| panic!("{who}: no HTTP response: {:?}", String::from_utf8_lossy(&tunneled.received)));
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{who}: {status} {body}")))
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn the_waypoint_istiod_generates_serves_each_caller_as_its_own_identity() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("istiod-waypoint");
    let cli = Path::new(env!("CARGO_BIN_EXE_egress-identity"));
    // The HTTP filter and the network filter of the tcp chains.
    let expected = Expected { dropped: EXPECTED_DROPPED, wasm_extensions: 2 };
    let proxy = Proxy {
        test: "TestWaypointAsIstiodGeneratesIt",
        dump: "egress-waypoint.json",
        agent_bootstrap: Some("egress-waypoint-bootstrap.json"),
    };
    let t = istiod::start(proxy, &dir, cli, substitutions(), expected).unwrap();

    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        let path = egress_identity_harness::unique_path(&format!("/v1/waypoint/{who}"));
        let (status, body) = answer(who, &call(&t, who, &path));
        assert_eq!((status, field(&body, "client_subject")), (200, cn), "{who}: {body}");
        assert_eq!(
            (field(&body, "uri"), field(&body, "cluster_header"), field(&body, "xfcc")),
            (path.as_str(), "", "")
        );
    }

    // Each denial names the caller's own namespace or principal's policy: the principal the filter decided on
    // is the tunnel's peer, as the waypoint's filter state carried it.
    for (who, path, layer, reason, policy) in [
        ("team-app1", "/admin/waypoint", "destination", "denied_by_policy", Some("deny-app1-admin")),
        ("team-app3", "/v1/waypoint/app3", "destination", "no_matching_allow", None),
        ("sandbox-default", "/v1/waypoint/sandbox", "gateway", "no_matching_allow", None),
        ("quarantine-default", "/v1/waypoint/quarantine", "gateway", "denied_by_policy", Some("deny-quarantine")),
    ] {
        let path = egress_identity_harness::unique_path(path);
        let (status, body) = answer(who, &call(&t, who, &path));
        assert_eq!((status, field(&body, "layer"), field(&body, "reason")), (403, layer, reason), "{who}: {body}");
        if let Some(policy) = policy {
            assert_eq!(field(&body, "policy"), policy, "{who}: {body}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(t.external_requests_for(&path).is_empty(), "{who}: {path} reached the partner");
    }

    // The tcp destination, as ztunnel tunnels a connection to its VIP: the chain inbound-vip|5432|tcp|db.partner.example
    // names it, the filter sends each allowed caller to its identity's cluster (the partner sees that identity),
    // and closes a denied caller's connection before anything reaches the partner.
    let client = HboneClient::new(t.pki().mesh_ca_cert(), GATEWAY_PORT);
    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        let tunneled = client.exchange(&t.pki().workload(who), DB_VIP, b"hello\n").unwrap();
        assert_eq!(tunneled.connect_status, 200, "{who}: {tunneled:?}");
        assert_eq!(String::from_utf8_lossy(&tunneled.received).trim(), format!("subject={cn}"), "{who}: {tunneled:?}");
    }
    let before = t.external_connections().len();
    for who in ["team-app3", "sandbox-default", "quarantine-default"] {
        // The filter closes the inner connection at once: the tunnel is refused (503), nothing forwarded.
        let tunneled = client.exchange(&t.pki().workload(who), DB_VIP, b"hello\n").unwrap();
        let received = String::from_utf8_lossy(&tunneled.received);
        assert!(tunneled.connect_status == 503 && !received.contains("subject="), "{who} was forwarded: {tunneled:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(t.external_connections().len(), before, "a denied caller reached the partner");

    // The tls destination (passthrough), on the chain inbound-vip|443|tcp|files.partner.example: app1 (the policy's
    // only caller) gets its own ClientHello to the partner, which answers with its TLS server's first flight (a
    // fatal alert after the ClientHello ends the exchange); app2 is closed at once; a ClientHello that names
    // another host never reaches the partner (tcp_proxy has connected, but no byte goes on).
    let hello = |sni: &str| {
        let mut bytes = egress_identity_harness::l4::real_client_hello(sni).unwrap();
        bytes.extend([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]); // alert: fatal, handshake_failure
        bytes
    };
    let tls_sessions = |name: &str| {
        t.external_connections().iter().filter(|c| c["port"] == EXTERNAL_TLS_PORT && c["server_name"] == name).count()
    };
    let tunneled = client.exchange(&t.pki().workload("team-app1"), FILES_VIP, &hello("files.partner.example")).unwrap();
    assert_eq!(tunneled.connect_status, 200, "{tunneled:?}");
    assert!(tunneled.received.starts_with(&[0x16, 0x03]), "the partner's TLS did not answer: {tunneled:?}");
    for (who, sni) in [("team-app2", "files.partner.example"), ("team-app1", "other.partner.example")] {
        let tunneled = client.exchange(&t.pki().workload(who), FILES_VIP, &hello(sni)).unwrap();
        assert!(!tunneled.received.starts_with(&[0x16]), "{who} ({sni}) was forwarded: {tunneled:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(tls_sessions("files.partner.example"), 1, "{:?}", t.external_connections());
    assert_eq!(tls_sessions("other.partner.example"), 0, "{:?}", t.external_connections());

    // A denied request with `Expect: 100-continue` gets its 403 alone (the waypoint's HCM proxies 100-continue).
    let client = HboneClient::new(t.pki().mesh_ca_cert(), GATEWAY_PORT);
    let head = "POST /v1/waypoint/expect HTTP/1.1\r\nHost: api.partner.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";
    let tunneled = client.exchange(&t.pki().workload("quarantine-default"), API_VIP, head.as_bytes()).unwrap();
    let got = String::from_utf8_lossy(&tunneled.received);
    assert!(got.starts_with("HTTP/1.1 403 ") && !got.contains(" 100 Continue"), "{got}");

    // The metrics, as Prometheus scrapes istio-agent's merged port, labelled by stats.yaml's override.
    t.settle_counters();
    istiod::check_decisions(&[
        (
            &[("protocol", "http"), ("decision", "allow"), ("destination", "partner-api"), ("identity", "team.app1")],
            1.0,
        ),
        // quarantine: once, and once with Expect: 100-continue.
        (&[("protocol", "http"), ("decision", "deny"), ("layer", "gateway"), ("policy", "deny-quarantine")], 2.0),
        (&[("protocol", "http"), ("decision", "deny"), ("layer", "destination")], 2.0),
        (&[("protocol", "l4"), ("decision", "allow"), ("destination", "partner-db"), ("identity", "team.app2")], 1.0),
        (
            &[("protocol", "l4"), ("decision", "deny"), ("destination", "partner-db"), ("reason", "no_matching_allow")],
            1.0,
        ),
        (&[("protocol", "l4"), ("decision", "deny"), ("layer", "gateway")], 2.0),
        (&[("protocol", "l4"), ("decision", "allow"), ("destination", "partner-files")], 1.0),
        (&[("protocol", "l4"), ("decision", "deny"), ("destination", "partner-files")], 2.0),
    ])
    .unwrap();
}
