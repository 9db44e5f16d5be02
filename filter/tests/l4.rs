//! The network (L4) filter on the real gateway (envoy/gateway.yaml's `egress-l4` listener, the demo
//! policy's `partner-tcp` and `partner-tls` destinations) in front of the real partner's TCP and TLS
//! services (envoy/external-server/nginx.conf, `stream`).
//!
//! * tcp: the caller speaks plain bytes inside the mesh mTLS; the gateway originates mTLS to the partner
//!   with the external identity's client certificate, and the partner answers with the subject it saw;
//! * tls (passthrough): the caller's own TLS runs to the partner, whose answer names the server name it got;
//!   the gateway checks the ClientHello names the host it allowed;
//! * every denial closes the connection before anything reaches the partner.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use egress_identity_harness::l4::L4Outcome;
use egress_identity_harness::pki::{CertFiles, WorkloadSpec, EXTERNAL_HOST, EXTERNAL_TLS_HOST};
use egress_identity_harness::topology::{
    Options, Topology, EXTERNAL_TCP_PORT, EXTERNAL_TLS_PORT, GATEWAY_L4_PORT, GATEWAY_L4_SHARED_PORT,
};
use serde_json::Value;

fn topo() -> (MutexGuard<'static, ()>, &'static Topology) {
    static LOCK: Mutex<()> = Mutex::new(());
    static TOPOLOGY: OnceLock<Result<Topology, String>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = TOPOLOGY.get_or_init(|| {
        Topology::start(&Options::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("l4"))).map_err(|e| e.to_string())
    });
    match t {
        Ok(t) => (guard, t),
        Err(e) => panic!("could not start the L4 topology: {e}"),
    }
}

fn workload(t: &Topology, name: &str) -> CertFiles {
    t.pki().workload(name)
}

/// The partner's connection log entries for one of its ports, so far.
fn partner_connections(t: &Topology, port: u16) -> usize {
    t.external_connections().iter().filter(|c| c["port"] == port).count()
}

fn tcp(t: &Topology, who: &CertFiles, sni: &str) -> L4Outcome {
    t.l4_client().call(who, sni, b"hello\n").expect("connecting to the gateway")
}

/// The audit record of the newest L4 connection the gateway logged (the tests run one at a time).
fn last_audit(t: &Topology) -> String {
    std::thread::sleep(Duration::from_millis(300));
    t.gateway_access_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["protocol"] == "l4")
        .filter_map(|e| e["audit"].as_str().map(str::to_owned))
        .rfind(|a| a.starts_with("decision="))
        .unwrap_or_default()
}

/// Refused: the connection closes with nothing from the partner, the partner never saw a connection, and
/// the gateway's audit record says who and why.
fn assert_refused(
    t: &Topology,
    outcome: &L4Outcome,
    before: (usize, usize),
    principal: &str,
    layer: &str,
    reason: &str,
) {
    assert!(outcome.received.is_empty(), "the partner answered: {outcome:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counts(t), before, "a connection reached the partner");
    let last = last_audit(t);
    let fields: Vec<&str> = last.split(' ').collect();
    for field in ["decision=deny".to_string(), format!("layer={layer}"), format!("reason={reason}")] {
        assert!(fields.contains(&field.as_str()), "{field} not in {last:?}");
    }
    if !principal.is_empty() {
        assert!(fields.contains(&format!("principal={principal}").as_str()), "{principal} not in {last:?}");
    }
}

fn counts(t: &Topology) -> (usize, usize) {
    (partner_connections(t, EXTERNAL_TCP_PORT), partner_connections(t, EXTERNAL_TLS_PORT))
}

#[test]
fn tcp_callers_reach_the_partner_with_their_own_external_identity() {
    let (_lock, t) = topo();
    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2"), ("team-app1", "CN=team.app1")] {
        let outcome = tcp(t, &workload(t, who), EXTERNAL_HOST);
        assert!(outcome.connected, "{who}: {outcome:?}");
        assert_eq!(outcome.received.trim(), format!("subject={cn}"), "{who}: {outcome:?}");
    }
    let app1 = last_audit(t);
    assert!(
        app1.starts_with("decision=allow")
            && app1.contains(" destination=partner-tcp ")
            && app1.ends_with(" identity=team.app1"),
        "{app1}"
    );
}

#[test]
fn tls_passthrough_reaches_the_partner_when_the_client_hello_names_the_allowed_host() {
    let (_lock, t) = topo();
    let app1 = workload(t, "team-app1");
    let outcome = t.l4_client().passthrough(&app1, EXTERNAL_TLS_HOST, EXTERNAL_TLS_HOST, b"hello\n").unwrap();
    assert_eq!(outcome.received.trim(), format!("server_name={EXTERNAL_TLS_HOST}"), "{outcome:?}");
}

#[test]
fn tls_passthrough_to_another_host_under_an_allowed_name_is_refused() {
    let (_lock, t) = topo();
    let app1 = workload(t, "team-app1");
    let before = counts(t);
    // The mesh connection names tls.partner.example (allowed); the ClientHello inside asks for another host.
    let outcome = t.l4_client().passthrough(&app1, EXTERNAL_TLS_HOST, EXTERNAL_HOST, b"hello\n").unwrap();
    assert_refused(t, &outcome, before, "spiffe://cluster.local/ns/team/sa/app1", "destination", "sni_mismatch");
    // Plain bytes where a ClientHello must come: not TLS.
    let before = counts(t);
    let outcome = tcp(t, &app1, EXTERNAL_TLS_HOST);
    assert_refused(t, &outcome, before, "spiffe://cluster.local/ns/team/sa/app1", "request", "malformed_request");
}

#[test]
fn each_denial_closes_the_connection_before_the_partner_sees_it() {
    let (_lock, t) = topo();
    let app2 = workload(t, "team-app2");
    let app2_id = "spiffe://cluster.local/ns/team/sa/app2";
    let cases = [
        // Gateway layer: the sandbox namespace may not use the egress.
        (
            workload(t, "sandbox-default"),
            EXTERNAL_HOST,
            "spiffe://cluster.local/ns/sandbox/sa/default",
            "gateway",
            "no_matching_allow",
        ),
        // Gateway DENY beats ALLOW.
        (
            workload(t, "quarantine-default"),
            EXTERNAL_HOST,
            "spiffe://cluster.local/ns/quarantine/sa/default",
            "gateway",
            "denied_by_policy",
        ),
        // Destination DENY beats the destination's ALLOW (app3 is in namespace team).
        (
            workload(t, "team-app3"),
            EXTERNAL_HOST,
            "spiffe://cluster.local/ns/team/sa/app3",
            "destination",
            "denied_by_policy",
        ),
        // Destination layer: app2 may not use the passthrough destination.
        (app2.clone(), EXTERNAL_TLS_HOST, app2_id, "destination", "no_matching_allow"),
        // An SNI no destination declares on this port.
        (app2.clone(), "unknown.partner.example", app2_id, "destination", "unknown_destination"),
    ];
    for (who, sni, principal, layer, reason) in cases {
        let before = counts(t);
        let outcome = tcp(t, &who, sni);
        assert_refused(t, &outcome, before, principal, layer, reason);
    }
    // An SNI that is declared, on a port of the gateway where it is not: tls.partner.example is declared on
    // GATEWAY_L4_PORT only; the listener also listens on GATEWAY_L4_SHARED_PORT, for partner-shared-tcp.
    let app1 = workload(t, "team-app1");
    let app1_id = "spiffe://cluster.local/ns/team/sa/app1";
    let passthrough = |port: u16| {
        t.l4_client().on_port(port).passthrough(&app1, EXTERNAL_TLS_HOST, EXTERNAL_TLS_HOST, b"hello\n").unwrap()
    };
    let before = counts(t);
    let outcome = passthrough(GATEWAY_L4_SHARED_PORT);
    assert_refused(t, &outcome, before, app1_id, "destination", "unknown_destination");
    // The same caller and connection on the declared port gets through: the port alone made the difference.
    assert_eq!(passthrough(GATEWAY_L4_PORT).received.trim(), format!("server_name={EXTERNAL_TLS_HOST}"));
}

#[test]
fn bad_svids_and_foreign_trust_domains_are_refused() {
    let (_lock, t) = topo();
    let issue = |name: &str, spec: WorkloadSpec| t.pki().issue_workload(name, &spec).unwrap();
    let two = WorkloadSpec {
        uri_sans: vec![
            "spiffe://cluster.local/ns/team/sa/app1".into(),
            "spiffe://cluster.local/ns/team/sa/app2".into(),
        ],
        ..Default::default()
    };
    for (cert, principal, reason) in [
        (issue("l4-two-uris", two), "", "multiple_uri_sans"),
        (
            issue("l4-td-only", WorkloadSpec::spiffe("spiffe://cluster.local")),
            "spiffe://cluster.local",
            "trust_domain_id",
        ),
        (
            issue("l4-foreign", WorkloadSpec::spiffe("spiffe://evil.example/ns/team/sa/app1")),
            "spiffe://evil.example/ns/team/sa/app1",
            "untrusted_trust_domain",
        ),
    ] {
        let before = counts(t);
        let outcome = tcp(t, &cert, EXTERNAL_HOST);
        assert_refused(t, &outcome, before, principal, "principal", reason);
    }
}

#[test]
fn no_client_certificate_no_connection() {
    let (_lock, t) = topo();
    let before = counts(t);
    let outcome = t.l4_client().call_without_certificate(EXTERNAL_HOST, b"hello\n").unwrap();
    assert!(outcome.received.is_empty(), "{outcome:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counts(t), before, "a connection reached the partner");
    // A certificate the mesh CA did not sign: the TLS handshake itself fails.
    let stranger_ca = t.pki().generate_mesh_ca("l4-stranger-ca").unwrap();
    let app1 = WorkloadSpec::spiffe("spiffe://cluster.local/ns/team/sa/app1");
    let cert = t.pki().issue_workload_by(&stranger_ca, "l4-stranger", &app1).unwrap();
    let outcome = tcp(t, &cert, EXTERNAL_HOST);
    assert!(outcome.received.is_empty(), "{outcome:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counts(t), before, "a connection reached the partner");
}

#[test]
fn connections_are_counted_apart_from_requests() {
    let (_lock, t) = topo();
    let family = "egress_identity_decisions_total";
    let series: [&[(&str, &str)]; 7] = [
        &[("protocol", "l4"), ("decision", "allow")],
        &[("protocol", "l4"), ("decision", "deny")],
        &[("protocol", "http"), ("decision", "allow")],
        &[("protocol", "http"), ("decision", "deny")],
        &[("protocol", "l4"), ("destination", "partner-tcp"), ("identity", "team.app1")],
        &[("protocol", "l4"), ("layer", "gateway"), ("reason", "no_matching_allow")],
        &[("protocol", "l4"), ("layer", "destination"), ("reason", "sni_mismatch"), ("destination", "partner-tls")],
    ];
    let stat = |labels: &[(&str, &str)]| t.metric(family, labels);
    let names = series;
    t.settle_counters();
    let before: Vec<u64> = names.iter().map(|n| stat(n)).collect();
    let app1 = workload(t, "team-app1");
    assert_eq!(tcp(t, &app1, EXTERNAL_HOST).received.trim(), "subject=CN=team.app1");
    assert!(tcp(t, &workload(t, "sandbox-default"), EXTERNAL_HOST).received.is_empty());
    let mismatch = t.l4_client().passthrough(&app1, EXTERNAL_TLS_HOST, EXTERNAL_HOST, b"hello\n").unwrap();
    assert!(mismatch.received.is_empty(), "{mismatch:?}");
    t.settle_counters();
    let deltas: Vec<u64> = names.iter().zip(&before).map(|(n, b)| stat(n) - b).collect();
    assert_eq!(deltas, [1, 2, 0, 0, 1, 1, 1], "{names:?}");
}

/// Each filter defines only series it can count: an HTTP request never forwards to a tcp or tls
/// destination's identity, and meets such a destination only as `protocol_mismatch` (a connection likewise
/// for HTTP destinations). Before, the network filter defined an allow series for every HTTP identity.
#[test]
fn neither_filter_defines_series_that_can_never_count() {
    let (_lock, t) = topo();
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json")).unwrap(),
    )
    .unwrap();
    let destinations: Vec<(String, bool)> = policy["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d["protocol"].as_str().is_some_and(|p| p != "http")))
        .collect();
    assert!(destinations.iter().any(|d| d.1) && destinations.iter().any(|d| !d.1), "{destinations:?}");
    let samples = t.prometheus();
    let decisions: Vec<_> = samples.iter().filter(|s| s.family == "egress_identity_decisions_total").collect();
    let label =
        |s: &&egress_identity_harness::prometheus::Sample, l: &str| s.labels.get(l).cloned().unwrap_or_default();
    let mut own_identities = 0;
    let mut mismatches = Vec::new();
    for s in &decisions {
        let Some((_, destination_l4)) = destinations.iter().find(|(name, _)| *name == label(s, "destination")) else {
            continue;
        };
        let filter_l4 = label(s, "protocol") == "l4";
        if filter_l4 == *destination_l4 {
            own_identities += usize::from(!label(s, "identity").is_empty());
            continue;
        }
        assert_eq!(
            label(s, "reason"),
            "protocol_mismatch",
            "a series the {} filter can never count: {:?}",
            if filter_l4 { "network" } else { "HTTP" },
            s.labels
        );
        mismatches.push(label(s, "destination"));
    }
    mismatches.sort();
    let mut expected: Vec<String> = destinations.iter().map(|d| d.0.clone()).collect();
    expected.sort();
    assert_eq!(mismatches, expected, "each destination's protocol_mismatch series in the other filter");
    let identities: usize = policy["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            // A tls (passthrough) destination declares no identity: its one route is named `passthrough`.
            d["identities"].as_array().map_or(0, Vec::len)
                + usize::from(d.get("defaultIdentity").is_some())
                + usize::from(d["protocol"] == "tls")
        })
        .sum();
    assert_eq!(own_identities, identities, "each identity's allow series, in its own filter only");
}

/// A passthrough ClientHello that names its server ambiguously, or hides it, is refused: the gateway could not
/// tell which host the caller's TLS is for. The control -- the same crafted ClientHello with one host_name --
/// reaches the partner, so each refusal is the gateway's.
#[test]
fn ambiguous_or_encrypted_server_names_are_refused() {
    use egress_identity_harness::l4::{crafted_client_hello, extension, server_name_list};
    let (_lock, t) = topo();
    let app1 = workload(t, "team-app1");
    let app1_id = "spiffe://cluster.local/ns/team/sa/app1";
    let host = EXTERNAL_TLS_HOST;
    let groups = (extension::SUPPORTED_GROUPS, vec![0, 2, 0, 29]);
    let sni = |entries: &[(u8, &str)]| (extension::SERVER_NAME, server_name_list(entries));
    let send = |hello: Vec<u8>| t.l4_client().call(&app1, host, &hello).expect("connecting to the gateway");

    let before = counts(t);
    let control = send(crafted_client_hello(&[groups.clone(), sni(&[(0, host)])]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counts(t).1, before.1 + 1, "the control did not reach the partner: {control:?}");

    let cases = [
        ("two names", vec![sni(&[(0, host), (0, EXTERNAL_HOST)])], "multiple_server_names"),
        ("the allowed name second", vec![sni(&[(0, EXTERNAL_HOST), (0, host)])], "multiple_server_names"),
        ("two server_name extensions", vec![sni(&[(0, host)]), sni(&[(0, EXTERNAL_HOST)])], "multiple_sni_extensions"),
        ("a name that is not a host_name", vec![sni(&[(1, host)])], "server_name_not_host_name"),
        ("ECH", vec![sni(&[(0, host)]), (extension::ENCRYPTED_CLIENT_HELLO, vec![0; 16])], "encrypted_client_hello"),
        ("ESNI", vec![sni(&[(0, host)]), (extension::ENCRYPTED_SERVER_NAME, vec![0; 16])], "encrypted_client_hello"),
    ];
    for (case, mut extensions, reason) in cases {
        extensions.insert(0, groups.clone());
        let before = counts(t);
        let outcome = send(crafted_client_hello(&extensions));
        eprintln!("{case}: {outcome:?}");
        assert_refused(t, &outcome, before, app1_id, "destination", reason);
    }
}

/// A caller the filter cannot decide on -- it sends nothing after its handshake, or only the start of a
/// ClientHello -- is closed at `connectionDecisionTimeoutMs` (10 s by default), not held for ever (tcp_proxy's
/// own timeouts never start while the filter holds the connection); the denial is counted.
#[test]
fn an_undecided_connection_is_closed_at_its_deadline() {
    use egress_identity_harness::l4::{crafted_client_hello, extension, server_name_list};
    let (_lock, t) = topo();
    let app1 = workload(t, "team-app1");
    let quarantine = workload(t, "quarantine-default");
    let partial = crafted_client_hello(&[(extension::SERVER_NAME, server_name_list(&[(0, EXTERNAL_TLS_HOST)]))]);
    let timeouts =
        || t.metric("egress_identity_decisions_total", &[("protocol", "l4"), ("reason", "decision_timeout")]);
    t.settle_counters();
    let before = (timeouts(), counts(t));
    let max = Duration::from_secs(15);
    let cases: [(&CertFiles, &str, &[u8]); 3] = [
        // An allowed caller to the tcp destination that never speaks.
        (&app1, EXTERNAL_HOST, b""),
        // A caller the policy denies, silent too: it is decided on its first bytes, which never come.
        (&quarantine, EXTERNAL_HOST, b""),
        // The first 20 bytes of a ClientHello to the passthrough destination.
        (&app1, EXTERNAL_TLS_HOST, partial.get(..20).unwrap()),
    ];
    let held: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(who, sni, send)| s.spawn(move || t.l4_client().held_open(who, sni, send, max).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((_, sni, send), held) in cases.iter().zip(&held) {
        let held = held.unwrap_or_else(|| panic!("{sni} ({} bytes sent): still open after {max:?}", send.len()));
        assert!(held >= Duration::from_secs(8) && held <= Duration::from_secs(13), "{sni}: closed after {held:?}");
    }
    t.settle_counters();
    assert_eq!(timeouts(), before.0 + 3, "each closed connection is a decision_timeout denial");
    assert_eq!(counts(t), before.1, "nothing reached the partner");
}
