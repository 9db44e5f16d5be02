//! Honest records (issue 21, item 6): a request or connection the policy ALLOWED that then never reaches the
//! partner — its identity's certificate was never delivered by SDS, the upstream TLS handshake failed, or
//! the partner could not be reached — is recorded as such, on the real gateway (`envoy/gateway.yaml`, the
//! demo policy, `auditRecord: both`):
//!
//! * the audit record (the access log's logfmt line and decision object) keeps `decision=allow` (the policy
//!   did allow it) and gains `outcome=no_certificate | upstream_tls_error | upstream_connect_failure` and
//!   `upstream_detail` (Envoy's reason);
//! * `egress_identity_upstream_failures_total{protocol, destination, identity, reason}` counts it, while the
//!   allow series counts the decision as before;
//! * other identities are unaffected.
//!
//! Each failure is made real: a gateway variant whose identity secret source delivers nothing, whose partner
//! does not verify, or whose partner port is closed. The gateways run one at a time on the fixed loopback
//! ports (a static Mutex); run dirs `target/tmp/upstream-failures/<test>/`.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::l4::L4Outcome;
use egress_identity_harness::pki::EXTERNAL_HOST;
use egress_identity_harness::topology::{Options, Topology};
use serde_json::Value;

const FAILURES: &str = "egress_identity_upstream_failures_total";
const DECISIONS: &str = "egress_identity_decisions_total";
/// The single-cluster destination of envoy/policy.json.
const SHARED_HOST: &str = "api.partner.example:8443";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn run_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("upstream-failures").join(test)
}

/// Starts the gateway of `envoy/gateway.yaml` with `edits` applied to its text (each must occur: a variant
/// that silently changes nothing would prove nothing) and, if given, another plugin configuration.
fn start(test: &str, edits: &[(&str, &str)], plugin_config: Option<String>) -> Topology {
    let run_dir = run_dir(test);
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let mut gateway = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).expect("envoy/gateway.yaml");
    for (from, to) in edits {
        assert!(gateway.contains(from), "envoy/gateway.yaml has no {from:?} to replace");
        gateway = gateway.replace(from, to);
    }
    let variant = run_dir.join("gateway-upstream-failures.yaml");
    std::fs::write(&variant, gateway).expect("writing the gateway variant");
    let mut opts = Options::new(&run_dir);
    opts.gateway_config = variant;
    opts.plugin_config = plugin_config;
    Topology::start(&opts).unwrap_or_else(|e| panic!("starting the topology: {e}"))
}

fn send(t: &Topology, caller: &str, path: &str, host: &str) -> Response {
    t.client().send(&Call::get(&t.pki().workload(caller), path).host(host)).expect("running curl")
}

fn tcp(t: &Topology, caller: &str) -> L4Outcome {
    t.l4_client().call(&t.pki().workload(caller), EXTERNAL_HOST, b"hello\n").expect("connecting to the gateway")
}

/// The logfmt line's fields (values unquoted; a quoted value may hold spaces).
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((key.trim().to_string(), value));
        rest = next.trim_start();
    }
    out
}

/// One access-log entry's audit record, both forms, which must agree field for field.
struct Record {
    fields: Vec<(String, String)>,
    entry: Value,
}

impl Record {
    fn of(entry: Value) -> Record {
        let line = entry["audit"].as_str().unwrap_or_else(|| panic!("no audit line: {entry}")).to_string();
        let fields = logfmt(&line);
        let object = entry["decision"]["value"].as_object().unwrap_or_else(|| panic!("no decision object: {entry}"));
        let from_object: Vec<(String, String)> =
            object.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(sorted, from_object, "the line and the object disagree: {entry}");
        Record { fields, entry }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Allowed, as `identity`, and then `outcome` (`None`: forwarded, no outcome field at all).
    fn assert_allowed_then(&self, identity: &str, outcome: Option<&str>) {
        assert_eq!(self.get("decision"), Some("allow"), "{}", self.entry);
        assert_eq!(self.get("identity"), Some(identity), "{}", self.entry);
        assert_eq!(self.get("outcome"), outcome, "{}", self.entry);
        if outcome.is_none() {
            assert_eq!(self.get("upstream_detail"), None, "{}", self.entry);
        }
    }
}

fn http_record(t: &Topology, path: &str) -> Record {
    Record::of(t.gateway_access_log_entry(path).unwrap_or_else(|| panic!("no access-log entry for {path}")))
}

/// The L4 access-log entries so far.
fn l4_entries(t: &Topology) -> Vec<Value> {
    t.gateway_access_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["protocol"] == "l4")
        .collect()
}

/// The record of the L4 connection logged after the first `before` ones (tcp_proxy logs a connection when
/// it ends), waiting up to 10 s for it.
fn l4_record(t: &Topology, before: usize) -> Record {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = l4_entries(t);
        if let Some(entry) = entries.get(before) {
            assert_eq!(entries.len(), before + 1, "one connection at a time: {entries:?}");
            return Record::of(entry.clone());
        }
        assert!(Instant::now() < deadline, "no access-log entry for L4 connection {before}: {entries:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn failures(t: &Topology, protocol: &str, destination: &str, identity: &str, reason: &str) -> u64 {
    let labels = [("protocol", protocol), ("destination", destination), ("identity", identity), ("reason", reason)];
    t.metric(FAILURES, &labels)
}

fn all_failures(t: &Topology) -> u64 {
    t.metric(FAILURES, &[])
}

fn allowed(t: &Topology, protocol: &str, destination: &str, identity: &str) -> u64 {
    let labels = [("protocol", protocol), ("decision", "allow"), ("destination", destination), ("identity", identity)];
    t.metric(DECISIONS, &labels)
}

/// A port of the loopback interface that nothing listens on.
fn closed_port(port: u16) -> u16 {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(), "127.0.0.1:{port} is open");
    port
}

/// The identity team.app1's file-SDS secret source delivers no secret: its resource file holds no resource,
/// as an SDS server that never sends the identity's certificate (Envoy refuses to start on a resource file
/// that does not exist, and keeps the last certificate when a file is deleted later). Both clusters that
/// present team.app1 (partner-api|team-app1, partner-tcp|team-app1) then have no client certificate; Envoy
/// fails their connections with "TLS error: Secret is not supplied by SDS".
const WITHHOLD_APP1: (&str, &str) = (
    "path: sds/external-team.app1.yaml\n                watched_directory:\n                  path: sds",
    "path: withheld/external-team.app1.yaml\n                watched_directory:\n                  path: withheld",
);

fn withheld_app1(test: &str) -> Topology {
    let withheld = run_dir(test).join("withheld");
    std::fs::create_dir_all(&withheld).expect("withheld dir");
    std::fs::write(withheld.join("external-team.app1.yaml"), "resources: []\n").expect("empty SDS resource");
    start(test, &[WITHHOLD_APP1], None)
}

#[test]
fn a_missing_identity_secret_is_recorded_as_no_certificate() {
    let _serial = serial();
    let t = withheld_app1("no-certificate");
    // Wasm at debug: the plugin follows Envoy's level within a tick, and logs each record.
    let (status, body) = t.admin_post("/logging?wasm=debug").expect("admin /logging");
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(1500));

    let path = "/upstream-failures/no-certificate/app1";
    let r = send(&t, "team-app1", path, EXTERNAL_HOST);
    assert_eq!(r.status, 503, "the gateway must fail closed: {}", r.summary());
    assert!(t.external_requests_for(path).is_empty(), "the partner saw {path}");
    let record = http_record(&t, path);
    record.assert_allowed_then("team.app1", Some("no_certificate"));
    let detail = record.get("upstream_detail").unwrap_or_default();
    assert!(detail.contains("Secret is not supplied by SDS"), "{}", record.entry);

    // Another identity of the same destination is unaffected.
    let ok = "/upstream-failures/no-certificate/app2";
    let r = send(&t, "team-app2", ok, EXTERNAL_HOST);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some("CN=team.app2"));
    http_record(&t, ok).assert_allowed_then("team.app2", None);

    // The same over L4: partner-tcp presents team.app1 from the same secret.
    let outcome = tcp(&t, "team-app1");
    assert!(outcome.received.is_empty(), "the partner answered: {outcome:?}");
    let record = l4_record(&t, 0);
    record.assert_allowed_then("team.app1", Some("no_certificate"));
    assert!(record.get("upstream_detail").unwrap_or_default().contains("Secret is not supplied by SDS"));
    let outcome = tcp(&t, "team-app2");
    assert_eq!(outcome.received.trim(), "subject=CN=team.app2", "{outcome:?}");
    l4_record(&t, 1).assert_allowed_then("team.app2", None);

    t.settle_counters();
    assert_eq!(failures(&t, "http", "partner-api", "team.app1", "no_certificate"), 1);
    assert_eq!(failures(&t, "l4", "partner-tcp", "team.app1", "no_certificate"), 1);
    assert_eq!(all_failures(&t), 2, "{:?}", t.prometheus().iter().filter(|s| s.family == FAILURES).collect::<Vec<_>>());
    // The policy did allow them: the allow series count them as before.
    assert_eq!(allowed(&t, "http", "partner-api", "team.app1"), 1);
    assert_eq!(allowed(&t, "l4", "partner-tcp", "team.app1"), 1);
    assert_eq!(allowed(&t, "http", "partner-api", "team.app2"), 1);
    // Every series a failure can land in exists from the start, at zero, so a first failure is seen.
    let zero: Vec<_> = t
        .prometheus()
        .into_iter()
        .filter(|s| s.family == FAILURES && s.labels.get("identity").map(String::as_str) == Some("team.app2"))
        .collect();
    assert!(zero.len() >= 6 && zero.iter().all(|s| s.value == 0.0), "{zero:?}");
    // And the plugin's log says it.
    let log = t.gateway_log();
    assert!(
        log.lines().any(|l| l.contains("outcome=no_certificate") && l.contains("identity=team.app1")),
        "the gateway log does not name the failure"
    );
}

/// The partner's certificate does not verify (here: the gateway expects another name, as with a partner CA
/// or SAN that does not match the partner): Envoy fails the upstream handshake.
#[test]
fn a_failed_upstream_handshake_is_recorded_as_upstream_tls_error() {
    let _serial = serial();
    let t = start("tls-error", &[("exact: api.partner.example", "exact: impostor.partner.example")], None);

    let path = "/upstream-failures/tls-error/app2";
    let r = send(&t, "team-app2", path, EXTERNAL_HOST);
    assert_eq!(r.status, 503, "{}", r.summary());
    assert!(t.external_requests_for(path).is_empty(), "the partner saw {path}");
    let record = http_record(&t, path);
    record.assert_allowed_then("team.app2", Some("upstream_tls_error"));
    assert!(
        record.get("upstream_detail").unwrap_or_default().contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        record.entry
    );

    let outcome = tcp(&t, "team-app2");
    assert!(outcome.received.is_empty(), "the partner answered: {outcome:?}");
    l4_record(&t, 0).assert_allowed_then("team.app2", Some("upstream_tls_error"));

    t.settle_counters();
    assert_eq!(failures(&t, "http", "partner-api", "team.app2", "upstream_tls_error"), 1);
    assert_eq!(failures(&t, "l4", "partner-tcp", "team.app2", "upstream_tls_error"), 1);
    assert_eq!(all_failures(&t), 2);
}

/// The partner is down (its ports closed): connections are refused.
#[test]
fn an_unreachable_partner_is_recorded_as_upstream_connect_failure() {
    let _serial = serial();
    let (http_port, tcp_port) = (closed_port(18449), closed_port(18448));
    let t = start(
        "connect-failure",
        &[
            ("port_value: 18443", &format!("port_value: {http_port}")),
            ("port_value: 18444", &format!("port_value: {tcp_port}")),
        ],
        None,
    );

    let path = "/upstream-failures/connect-failure/app1";
    let r = send(&t, "team-app1", path, EXTERNAL_HOST);
    assert_eq!(r.status, 503, "{}", r.summary());
    let record = http_record(&t, path);
    record.assert_allowed_then("team.app1", Some("upstream_connect_failure"));
    assert!(record.get("upstream_detail").unwrap_or_default().contains("Connection refused"), "{}", record.entry);

    // A single-cluster destination: the same.
    let shared = "/upstream-failures/connect-failure/shared";
    let r = send(&t, "team-app2", shared, SHARED_HOST);
    assert_eq!(r.status, 503, "{}", r.summary());
    http_record(&t, shared).assert_allowed_then("team.app2", Some("upstream_connect_failure"));

    let outcome = tcp(&t, "team-app1");
    assert!(outcome.received.is_empty(), "{outcome:?}");
    let record = l4_record(&t, 0);
    record.assert_allowed_then("team.app1", Some("upstream_connect_failure"));
    assert!(record.get("upstream_detail").unwrap_or_default().contains("Connection refused"), "{}", record.entry);

    t.settle_counters();
    assert_eq!(failures(&t, "http", "partner-api", "team.app1", "upstream_connect_failure"), 1);
    assert_eq!(failures(&t, "http", "partner-shared", "team.app2", "upstream_connect_failure"), 1);
    assert_eq!(failures(&t, "l4", "partner-tcp", "team.app1", "upstream_connect_failure"), 1);
    assert_eq!(all_failures(&t), 3);
}

/// Single-cluster mode, where the red team saw it: the identity's secret (here `never.delivered`, which the
/// SDS server does not have) never arrives. Envoy's on-demand certificate selector holds the upstream
/// handshake until the cluster's connect_timeout (5 s) and reports only a connection timeout — no transport
/// failure reason, nothing that tells it from a partner that never answers. The record says what Envoy
/// knows: not forwarded, `upstream_connect_failure`, `connection_timeout`; never a plain allow.
#[test]
fn a_single_cluster_secret_that_never_arrives_is_not_recorded_as_forwarded() {
    let _serial = serial();
    let app1 = r#"{ "name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"] }"#;
    let policy = std::fs::read_to_string(repo_root().join("envoy/policy.json")).expect("envoy/policy.json");
    assert!(policy.contains(app1), "envoy/policy.json declares team.app1 differently");
    let policy = policy.replace(
        app1,
        r#"{ "name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"], "certificate": { "secret": "never.delivered" } }"#,
    );
    let t = start("single-cluster-undelivered", &[], Some(policy));

    let path = "/upstream-failures/single-cluster/app1";
    let r = send(&t, "team-app1", path, SHARED_HOST);
    assert_eq!(r.status, 503, "{}", r.summary());
    let record = http_record(&t, path);
    record.assert_allowed_then("team.app1", Some("upstream_connect_failure"));
    assert!(record.get("upstream_detail").unwrap_or_default().contains("connection_timeout"), "{}", record.entry);
    assert!(t.identity_sds().requested("never.delivered") > 0, "the gateway asked for the identity's secret");

    // The other identity of the destination is unaffected.
    let ok = "/upstream-failures/single-cluster/app2";
    let r = send(&t, "team-app2", ok, SHARED_HOST);
    assert_eq!(r.status, 200, "{}", r.summary());
    http_record(&t, ok).assert_allowed_then("team.app2", None);

    t.settle_counters();
    assert_eq!(failures(&t, "http", "partner-shared", "team.app1", "upstream_connect_failure"), 1);
    assert_eq!(all_failures(&t), 1);
}

/// Requests and connections that reach the partner carry no outcome, and count no failure.
#[test]
fn forwarded_requests_and_connections_carry_no_outcome() {
    let _serial = serial();
    let t = start("forwarded", &[], None);
    for (caller, identity) in [("team-app1", "team.app1"), ("team-app2", "team.app2")] {
        let path = format!("/upstream-failures/forwarded/{caller}");
        let r = send(&t, caller, &path, EXTERNAL_HOST);
        assert_eq!(r.status, 200, "{}", r.summary());
        http_record(&t, &path).assert_allowed_then(identity, None);
    }
    let outcome = tcp(&t, "team-app1");
    assert_eq!(outcome.received.trim(), "subject=CN=team.app1", "{outcome:?}");
    l4_record(&t, 0).assert_allowed_then("team.app1", None);
    // A denial has no outcome either.
    let path = "/upstream-failures/forwarded/sandbox";
    assert_eq!(send(&t, "sandbox-default", path, EXTERNAL_HOST).status, 403);
    assert_eq!(http_record(&t, path).get("outcome"), None);
    t.settle_counters();
    assert_eq!(all_failures(&t), 0);
}
