//! Single-cluster mode (`singleCluster: true`, README.md "Identity scale") on the real gateway: destination
//! `partner-shared` of `envoy/policy.json` reaches the partner through ONE cluster (`partner-shared|shared`)
//! whose upstream TLS context picks the client certificate per connection (on-demand SDS selector,
//! filter-state mapper).
//!
//! The promises, each proved by what the partner (nginx) reports for every request (its certificate
//! subject, its connection, whether its TLS session was resumed):
//! * a pooled upstream connection is never reused by another identity (the secret is a HASHABLE filter
//!   state object, part of the pool key);
//! * a TLS session is never resumed by another identity (`max_session_keys: 0`);
//! * the detector itself works: a gateway that presents one identity for everybody is caught;
//! * a connection that names no identity presents no certificate (the mapper's default secret exists
//!   nowhere): it fails, it never borrows someone's identity;
//! * a caller without a mapping is denied locally.
//!
//! The gateways run one at a time on the fixed loopback ports (a static Mutex); run dirs
//! `target/tmp/single-cluster/<test>/`.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::topology::{Options, Topology};
use serde_json::Value;

/// The single-cluster destination of envoy/policy.json.
const SHARED_HOST: &str = "api.partner.example:8443";
/// Its one cluster (the platform's name for a single-cluster destination's cluster).
const SHARED_CLUSTER: &str = "partner-shared|shared";
const CALLERS: [(&str, &str); 2] = [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")];
/// Alternating requests per test: enough for pooled connections to be reused many times over.
const ROUNDS: usize = 12;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// Starts the gateway of `envoy/gateway.yaml`, with `edit` applied to its text (each `(from, to)` must
/// occur: a variant that silently changes nothing would prove nothing).
fn start(test: &str, edits: &[(&str, &str)]) -> Topology {
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("single-cluster").join(test);
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let mut gateway = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).expect("envoy/gateway.yaml");
    for (from, to) in edits {
        assert!(gateway.contains(from), "envoy/gateway.yaml has no {from:?} to replace");
        gateway = gateway.replace(from, to);
    }
    let variant = run_dir.join("gateway-single-cluster.yaml");
    std::fs::write(&variant, gateway).expect("writing the gateway variant");
    let mut opts = Options::new(&run_dir);
    opts.gateway_config = variant;
    Topology::start(&opts).unwrap_or_else(|e| panic!("starting the topology: {e}"))
}

fn send(topo: &Topology, caller: &str, path: &str) -> Response {
    let call = Call::get(&topo.pki().workload(caller), path).host(SHARED_HOST);
    topo.client().send(&call).expect("running curl")
}

/// The partner's log entries of the paths under `prefix`, once it has logged `expected` of them.
fn partner_entries(topo: &Topology, prefix: &str, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries: Vec<Value> = topo
            .external_requests()
            .into_iter()
            .filter(|e| e.get("uri").and_then(Value::as_str).is_some_and(|u| u.starts_with(prefix)))
            .collect();
        if entries.len() >= expected || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("<missing>")
}

/// What the partner saw of two callers alternating over the shared destination.
struct Alternation {
    /// Requests whose certificate at the partner was not the caller's identity: (path, expected, seen).
    wrong_identity: Vec<(String, String, String)>,
    /// Partner connections that carried more than one client identity.
    mixed_connections: BTreeMap<u64, Vec<String>>,
    /// Requests carried by a resumed TLS session.
    resumed: usize,
    /// Requests, and the partner connections that carried them.
    requests: usize,
    connections: usize,
    /// Responses other than 200.
    failures: Vec<String>,
}

fn alternate(topo: &Topology, test: &str) -> Alternation {
    let prefix = format!("/single-cluster/{test}/");
    let mut expected_subject = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        for (caller, subject) in CALLERS {
            let path = format!("{prefix}{round}/{caller}");
            let r = send(topo, caller, &path);
            if r.status != 200 {
                failures.push(format!("{path}: {}", r.summary()));
            }
            expected_subject.insert(path, subject.to_string());
        }
    }
    let entries = partner_entries(topo, &prefix, expected_subject.len());
    let mut by_connection: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut wrong_identity = Vec::new();
    let mut resumed = 0;
    for e in &entries {
        let uri = text(e, "uri").to_string();
        let seen = text(e, "client_subject").to_string();
        let expected = expected_subject.get(&uri).cloned().unwrap_or_default();
        if seen != expected {
            wrong_identity.push((uri, expected, seen.clone()));
        }
        if text(e, "session_reused") == "r" {
            resumed += 1;
        }
        let connection = e.get("connection").and_then(Value::as_u64).expect("the partner logs its connection number");
        let subjects = by_connection.entry(connection).or_default();
        if !subjects.contains(&seen) {
            subjects.push(seen);
        }
    }
    let connections = by_connection.len();
    let mixed_connections = by_connection.into_iter().filter(|(_, s)| s.len() > 1).collect();
    Alternation { wrong_identity, mixed_connections, resumed, requests: entries.len(), connections, failures }
}

#[test]
fn alternating_identities_never_share_a_connection_or_a_session() {
    let _serial = serial();
    let topo = start("protected", &[]);
    let a = alternate(&topo, "protected");
    assert!(a.failures.is_empty(), "every request must reach the partner: {:?}", a.failures);
    assert_eq!(a.requests, ROUNDS * CALLERS.len(), "the partner saw every request");
    assert!(a.wrong_identity.is_empty(), "requests that reached the partner as someone else: {:?}", a.wrong_identity);
    assert!(a.mixed_connections.is_empty(), "connections shared by identities: {:?}", a.mixed_connections);
    assert_eq!(a.resumed, 0, "no TLS session may be resumed (it would carry the identity that created it)");
    // Pooling must be at work, or this test could not see a connection shared: per identity, far fewer
    // connections than requests (one per identity and gateway worker at most).
    assert!(
        a.connections <= 2 * CALLERS.len(),
        "{} partner connections for {} requests: upstream connections are not pooled",
        a.connections,
        a.requests
    );
    // The gateway chose the certificate per connection inside one cluster.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ours = loop {
        let log = topo.gateway_access_log();
        let ours: Vec<String> =
            log.lines().filter(|l| l.contains("/single-cluster/protected/")).map(str::to_string).collect();
        if ours.len() >= a.requests || Instant::now() > deadline {
            break ours;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ours.len(), a.requests, "{ours:?}");
    let cluster = format!(r#""upstream_cluster":"{SHARED_CLUSTER}""#);
    assert!(ours.iter().all(|l| l.contains(&cluster)), "{ours:?}");
    // Each identity's certificate was fetched from the SDS server, and nothing else.
    let fetched = topo.identity_sds().requested_names();
    assert_eq!(fetched.into_iter().collect::<Vec<_>>(), ["team.app1", "team.app2"]);
}

/// The detector works: in a gateway whose shared cluster presents one identity to everybody (the mapper
/// never sees the connection's identity and falls back to team.app1), the partner reports team.app1 for
/// team-app2's requests, and the test says so. A pooled connection or a resumed session reused by
/// another identity would show the same way: the partner names the identity of the handshake.
#[test]
fn the_test_sees_a_request_that_reaches_the_partner_as_someone_else() {
    let _serial = serial();
    let topo = start(
        "one-identity-for-all",
        &[
            (
                "object_key: envoy.tls.certificate_mappers.on_demand_secret",
                "object_key: egress-identity.test.elsewhere",
            ),
            ("default_value: egress-identity-no-identity", "default_value: team.app1"),
        ],
    );
    let a = alternate(&topo, "one-identity-for-all");
    assert!(a.failures.is_empty(), "{:?}", a.failures);
    assert_eq!(a.wrong_identity.len(), ROUNDS, "every team-app2 request, and only those: {:?}", a.wrong_identity);
    assert!(a.wrong_identity.iter().all(|(path, _, seen)| path.ends_with("/team-app2") && seen == "CN=team.app1"));
}

/// A connection that names no identity (here: `set_filter_state` writes another key, as a gateway whose
/// chain lost the filter would) gets the mapper's default secret, which no source serves: it presents no
/// certificate and fails; the partner never sees it.
#[test]
fn a_connection_that_names_no_identity_fails_and_never_reaches_the_partner() {
    let _serial = serial();
    let topo = start(
        "no-identity",
        &[("object_key: envoy.tls.certificate_mappers.on_demand_secret", "object_key: egress-identity.test.elsewhere")],
    );
    let path = "/single-cluster/no-identity/app1";
    let r = send(&topo, "team-app1", path);
    assert_eq!(r.status, 503, "{}", r.summary());
    assert!(partner_entries(&topo, path, 1).is_empty(), "the partner saw a request that named no identity");
    assert!(topo.identity_sds().requested("egress-identity-no-identity") > 0, "the mapper's default was used");
    assert_eq!(topo.identity_sds().requested("team.app1"), 0, "no identity's certificate was fetched");
}

/// A caller the destination maps to no identity is denied by the filter: nothing is fetched, nothing sent.
#[test]
fn a_caller_without_a_mapping_is_denied_locally() {
    let _serial = serial();
    let topo = start("unmapped", &[]);
    let path = "/single-cluster/unmapped/app3";
    let r = send(&topo, "team-app3", path);
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!(r.field("reason"), Some("no_identity_mapping"), "{}", r.summary());
    assert_eq!(r.field("layer"), Some("identity"), "{}", r.summary());
    assert!(partner_entries(&topo, path, 1).is_empty());
    assert!(topo.identity_sds().requested_names().is_empty(), "{:?}", topo.identity_sds().requested_names());
}

/// Identity scale: a destination with more identities than the filter defines counters for up front
/// (1,024) still counts each one's allowed decisions, the later ones from their first request, so a
/// configuration of 10,000 identities does not define 10,000 stats before it serves.
#[test]
fn identities_past_the_up_front_counters_are_counted_from_their_first_request() {
    let _serial = serial();
    let mut policy: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("envoy/policy.json")).unwrap()).unwrap();
    // 1,100 more declared identities, listed by partner-shared before its own two.
    let bulk: Vec<String> = (0..1100).map(|i| format!("bulk.{i}")).collect();
    let declared = policy["identities"].as_array_mut().expect("identities in envoy/policy.json");
    declared.extend(bulk.iter().enumerate().map(|(i, name)| {
        serde_json::json!({"name": name, "principals": [format!("spiffe://cluster.local/ns/bulk/sa/s{i}")]})
    }));
    let shared = policy["destinations"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["name"] == "partner-shared")
        .expect("partner-shared in envoy/policy.json");
    let mut identities: Vec<Value> = bulk.into_iter().map(Value::from).collect();
    identities.extend(shared["identities"].as_array().unwrap().iter().cloned());
    assert_eq!(identities.last(), Some(&Value::from("team.app2")), "{identities:?}");
    shared["identities"] = Value::Array(identities);
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("single-cluster").join("many-identities");
    let opts = Options::new(&run_dir).with_plugin_config(serde_json::to_string(&policy).unwrap());
    let topo = Topology::start(&opts).unwrap_or_else(|e| panic!("starting the topology: {e}"));
    let series = |identity: &str| {
        topo.prometheus()
            .into_iter()
            .filter(|s| {
                s.family == "egress_identity_decisions_total"
                    && s.labels.get("identity").map(String::as_str) == Some(identity)
                    && s.labels.get("destination").map(String::as_str) == Some("partner-shared")
                    && s.labels.get("protocol").map(String::as_str) == Some("http")
            })
            .map(|s| s.value)
            .collect::<Vec<f64>>()
    };
    assert_eq!(series("bulk.0"), [0.0], "the first identities' counters exist from the start, at zero");
    assert!(series("team.app1").is_empty(), "identity 1,100 has no counter before its first request");
    let r = send(&topo, "team-app1", "/single-cluster/many-identities/app1");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some("CN=team.app1"));
    topo.settle_counters();
    assert_eq!(series("team.app1").iter().sum::<f64>(), 1.0, "{:?}", series("team.app1"));
}

/// The same over L4: the single-cluster tcp destination `partner-shared-tcp` (gateway port 10447). The
/// network filter holds the chain until it has decided; the network `set_filter_state` after it then hands
/// the secret to the upstream connection. Two callers alternate; the partner answers each connection with
/// the subject it saw, and logs whether the TLS session was resumed.
#[test]
fn l4_connections_through_one_cluster_present_each_callers_identity() {
    let _serial = serial();
    let topo = start("l4", &[]);
    let client = topo.l4_client().on_port(egress_identity_harness::topology::GATEWAY_L4_SHARED_PORT);
    let mut wrong = Vec::new();
    for round in 0..6 {
        for (caller, subject) in CALLERS {
            let outcome = client
                .call(&topo.pki().workload(caller), egress_identity_harness::pki::EXTERNAL_HOST, b"hello\n")
                .expect("connecting to the gateway");
            if outcome.received.trim() != format!("subject={subject}") {
                wrong.push(format!("round {round} {caller}: {outcome:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "connections that reached the partner as someone else (or not at all): {wrong:?}");
    let log = std::fs::read_to_string(topo.run_dir().join("logs/external-stream.log")).unwrap_or_default();
    let entries: Vec<Value> =
        log.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|e: &Value| e["port"] == 18444).collect();
    assert_eq!(entries.len(), 12, "{log}");
    assert!(entries.iter().all(|e| e["session_reused"] != "r"), "no TLS session may be resumed: {log}");
    let fetched = topo.identity_sds().requested_names();
    assert_eq!(fetched.into_iter().collect::<Vec<_>>(), ["team.app1", "team.app2"]);
}
