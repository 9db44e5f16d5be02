//! A wildcard destination on the Istio egress gateway as istiod generates it, on a real Envoy (issue 26).
//!
//! tests/istiod renders `tests/istiod/testdata/wildcard-policy.json` (`*.partner.example` on ports 18443 and
//! 18446, and the exact `b.partner.example` beside it) with `render istio --mode gateway`, runs istiod's
//! generator on it, and dumps what it pushes to the gateway; [`istiod::bootstrap`] makes that a static
//! bootstrap, its DNS cache resolving through the test's DNS server (harness `dns`: the partners' names to
//! 127.0.0.2, where nginx, `cli/tests/wildcard/partners.nginx.conf`, serves a.partner.example and
//! b.partner.example, each with a certificate for its name alone). Callers are what sidecars send: mesh mTLS
//! with the DestinationRule subset's SNI, and the application's authority (`host:port`).
//! Not run: Kubernetes, the sidecars themselves (tests/istiod does not generate them here), the pod's DNS.
#![cfg(test)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::dns::DnsServer;
use egress_identity_harness::istiod::{self, Expected, Proxy, Substitutions};
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Topology, ADMIN_PORT, GATEWAY_PORT, METRICS_PORT};

/// The readiness port of istio-agent's bootstrap.
const AGENT_HEALTH_PORT: u16 = 15021;

/// Where the test's DNS server sends the partners' names.
const PARTNERS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The SNI sidecars send the gateway for the wildcard destination (its DestinationRule subset's `tls.sni`).
const MESH_SNI: &str = "egress-identity.partner.example";

/// istio-proxy's own filters the generated gateway carries, which upstream Envoy does not have (by type).
const EXPECTED_DROPPED: &[&str] = &[
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
];

fn substitutions(dns: &DnsServer) -> Substitutions {
    let on_topology = Substitutions::on_topology(
        BTreeMap::from([
            ("0.0.0.0_15090".to_string(), METRICS_PORT),
            ("0.0.0.0_15021".to_string(), AGENT_HEALTH_PORT),
            ("0.0.0.0_443".to_string(), GATEWAY_PORT),
        ]),
        BTreeMap::from([
            // The exact destination's LOGICAL_DNS cluster: nginx's default server on loopback (b's certificate).
            (("b.partner.example".to_string(), 18443), 18443),
            (("127.0.0.1".to_string(), 15000), ADMIN_PORT),
        ]),
    );
    Substitutions { dns_resolver: Some(dns.addr()), ..on_topology }
}

fn get(t: &Topology, who: &str, authority: &str, path: &str) -> Response {
    let client = t.client().as_sidecar(MESH_SNI, t.pki().gateway_public_key().unwrap());
    client.send(&Call::get(&t.pki().workload(who), path).host(authority)).expect("running curl")
}

fn denial(r: &Response) -> (Option<&str>, Option<&str>, Option<&str>) {
    (r.field("layer"), r.field("policy"), r.field("reason"))
}

#[test]
fn the_gateway_istiod_generates_reaches_each_concrete_host_and_port_as_the_callers_identity() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("istiod-gateway-wildcard");
    let _ = std::fs::remove_dir_all(&dir);
    let cli = Path::new(env!("CARGO_BIN_EXE_egress-identity"));
    let records = [
        ("a.partner.example", PARTNERS),
        ("b.partner.example", PARTNERS),
        ("c.partner.example", PARTNERS),
        // A partner's name that points into the gateway's own network.
        ("inner.partner.example", Ipv4Addr::new(192, 168, 7, 7)),
    ];
    let dns = DnsServer::start(&records).unwrap();
    let expected = Expected { dropped: EXPECTED_DROPPED, wasm_extensions: 1 };
    let proxy = Proxy {
        test: "TestGatewayWildcardAsIstiodGeneratesIt",
        dump: "egress-gateway-wildcard.json",
        agent_bootstrap: Some("egress-gateway-wildcard-bootstrap.json"),
    };
    let partners = repo_root().join("cli/tests/wildcard/partners.nginx.conf");
    let t = istiod::start_with(proxy, &dir, cli, substitutions(&dns), expected, |o| o.nginx_config = partners).unwrap();

    // Each concrete host on each port the application names: the partner saw that name as SNI, on that
    // port, and the caller's external identity; app2's DENY on a holds under the wildcard's ALLOW.
    let cases = [
        ("team-app1", "a.partner.example", "18443"),
        ("team-app1", "a.partner.example", "18446"),
        ("team-app2", "b.partner.example", "18446"),
        ("team-app1", "b.partner.example", "18446"),
    ];
    for (who, host, port) in cases {
        let authority = format!("{host}:{port}");
        let r = get(&t, who, &authority, &format!("/wildcard/{who}"));
        assert_eq!(r.status, 200, "{authority} as {who}: {}", r.summary());
        assert_eq!(r.field("server_name"), Some(host), "{authority}: {}", r.body);
        assert_eq!(r.field("port"), Some(port), "{authority}: {}", r.body);
        let subject = format!("CN={}", who.replace('-', "."));
        assert_eq!(r.field("client_subject"), Some(subject.as_str()), "{authority}: {}", r.body);
    }
    for port in ["18443", "18446"] {
        let r = get(&t, "team-app2", &format!("a.partner.example:{port}"), "/wildcard/denied");
        assert_eq!(r.status, 403, "{}", r.summary());
        assert_eq!(denial(&r), (Some("destination"), Some("not-a-for-app2"), Some("denied_by_policy")), "{}", r.body);
    }

    // The exact host, as applications call it (http://b.partner.example/): its own LOGICAL_DNS cluster, not
    // the wildcard's forward proxy (the metrics below count it under destination api).
    let r = get(&t, "team-app2", "b.partner.example", "/exact");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!((r.field("server_name"), r.field("client_subject")), (Some("b.partner.example"), Some("CN=team.app2")));

    // Fail closed: a server whose certificate is not the requested host's (c is answered with b's), a name
    // that does not resolve, a name that resolves into the gateway's own network.
    for host in ["c.partner.example", "nowhere.partner.example", "inner.partner.example"] {
        let r = get(&t, "team-app1", &format!("{host}:18443"), "/wildcard/closed");
        assert_eq!(r.status, 503, "{host}: {}", r.summary());
        assert_eq!(r.field("client_subject"), None, "{host} reached a partner: {}", r.body);
    }
    // A port the destination does not declare, and a caller the gateway layer refuses.
    let r = get(&t, "team-app1", "a.partner.example:9443", "/wildcard/port");
    assert!(matches!(r.status, 403 | 404), "an undeclared port: {}", r.summary());
    assert_eq!(r.field("client_subject"), None, "{}", r.body);
    let r = get(&t, "sandbox-default", "a.partner.example:18443", "/wildcard/sandbox");
    assert_eq!((r.status, r.field("layer")), (403, Some("gateway")), "{}", r.summary());

    // The metrics, labelled by the declared destination only (bounded), as Prometheus scrapes them.
    t.settle_counters();
    let allowed = |destination, identity| {
        [("protocol", "http"), ("decision", "allow"), ("destination", destination), ("identity", identity)]
    };
    istiod::check_decisions(&[
        (&allowed("api", "team.app2"), 1.0),
        (&allowed("partner", "team.app2"), 1.0),
        (&[("protocol", "http"), ("decision", "deny"), ("layer", "destination"), ("policy", "not-a-for-app2")], 2.0),
    ])
    .unwrap();
}
