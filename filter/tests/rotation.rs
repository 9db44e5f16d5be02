//! Rotation without downtime, on the real gateway (`envoy/gateway.yaml`, certificates from file-based SDS)
//! under continuous load (harness::load): every request of every test must get a 200 from the partner.
//!
//! * external identity rotation: team.app1's client certificate is replaced through SDS;
//! * mesh CA rotation: bundle old+new, callers and the gateway's server certificate move to the new CA,
//!   bundle new only, and the old CA's certificates are refused;
//! * trust-domain migration: the caller moves from spiffe://example.com/... to spiffe://example.org/...
//!   (aliases of cluster.local in the gateway's plugin configuration).
//!
//! Each test starts its own topology (fresh PKI) in `target/tmp/rotation/<test>/` on the fixed loopback
//! ports, so the tests run one at a time (a static Mutex). Needs envoy, nginx and curl like tests/e2e.rs.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Client, Response};
use egress_identity_harness::load::{Caller, LoadGenerator, LoadReport, LoadSpec, Record};
use egress_identity_harness::pki::{certificate_serial, CertFiles, WorkloadSpec};
use egress_identity_harness::sds;
use egress_identity_harness::topology::{Options, Topology};

const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";
const TEAM_APP1: &str = "CN=team.app1";
/// `max_connection_duration` of the partner clusters in envoy/gateway.yaml: how long an established
/// upstream connection may keep presenting a rotated-out client certificate.
const UPSTREAM_MAX_CONNECTION_DURATION: Duration = Duration::from_secs(10);
/// Requests every test must at least have sent (they typically send several thousand).
const MIN_REQUESTS: usize = 1000;
/// Requests before and after each step of a rotation.
const PHASE_REQUESTS: usize = 300;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy counts each SDS update applied to the cluster's TLS context.
const CLUSTER_SDS_UPDATES: &str = "cluster.partner-api|team-app1.client_ssl_socket_factory.ssl_context_update_by_sds";
/// ... and to the listener's.
const LISTENER_SDS_UPDATES: &str = "listener.127.0.0.1_10443.server_ssl_socket_factory.ssl_context_update_by_sds";

/// One test at a time: they all use the same fixed ports.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(test: &str) -> Topology {
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rotation").join(test);
    Topology::start(&Options::new(run_dir)).unwrap_or_else(|e| panic!("starting the topology: {e}"))
}

fn spec(test: &str) -> LoadSpec {
    LoadSpec {
        workers: 4,
        requests_per_connection: 20,
        max_duration: Duration::from_secs(45),
        path_prefix: format!("/rotation/{test}"),
        ..LoadSpec::default()
    }
}

/// Poll `f` every 50 ms until it returns `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(ca: &Path, cert: &CertFiles, path: &str) -> Response {
    Client::new(ca.to_path_buf()).send(&Call::get(cert, path)).expect("running curl")
}

/// No HTTP response at all: the TLS handshake (client certificate verification) failed.
fn refused_at_tls(r: &Response) -> bool {
    r.status == 0 && r.curl_exit != 0
}

/// Every request 200 from the partner as team.app1, at least MIN_REQUESTS, over kept-alive connections.
fn check(report: &LoadReport) {
    if let Err(e) = report.check_all_as(TEAM_APP1, MIN_REQUESTS) {
        panic!("{e}");
    }
}

/// team.app1's external client certificate (new key, new serial, same subject) is replaced through SDS
/// while callers keep calling. Before the rotation the partner saw the old serial; at once the new one
/// shows up (new upstream connections); after the upstream `max_connection_duration` no request presents
/// the old certificate any more. No request fails.
#[test]
fn external_identity_rotation_through_sds() {
    let _serial = serial();
    let topo = start("external-identity");
    let pki = topo.pki();
    let old_serial = certificate_serial(&pki.external_identity("team.app1").cert).unwrap();
    let caller = Caller::new("team-app1", pki.workload("team-app1"), pki.mesh_ca_cert());
    let load = LoadGenerator::start(spec("external-identity"), caller).unwrap();
    load.wait_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    let new = pki.reissue_external_identity("team.app1", "team.app1-rotated").unwrap();
    let new_serial = certificate_serial(&new.cert).unwrap();
    assert_ne!(old_serial, new_serial);
    let updates = || topo.stat(CLUSTER_SDS_UPDATES).expect("cluster SDS update counter");
    let updates_before = updates();
    let rotated_at = load.elapsed();
    sds::write_tls_certificate(&topo.sds_dir(), &sds::external_identity("team.app1"), &new).unwrap();
    let t = Instant::now();
    poll(STEP_TIMEOUT, "Envoy applying the SDS update", || (updates() > updates_before).then_some(()));
    let applied_at = load.elapsed();
    eprintln!("SDS update applied after {:?}", t.elapsed());

    // New upstream connections present the new certificate at once, but Envoy opens one only when the
    // pool needs it; at the latest, old ones are replaced after max_connection_duration.
    let first_new_timeout = UPSTREAM_MAX_CONNECTION_DURATION + Duration::from_secs(5);
    load.wait_for(first_new_timeout, "the partner seeing the new serial", |records| {
        records.iter().any(|r| r.client_serial.as_deref() == Some(&new_serial))
    })
    .unwrap();
    let first_new = load.elapsed();
    // Old upstream connections are drained within max_connection_duration; then some more load.
    let cutoff = applied_at + UPSTREAM_MAX_CONNECTION_DURATION + Duration::from_secs(1);
    load.wait_for(Duration::from_secs(25), "load after the drain deadline", |records| {
        records.iter().filter(|r| r.batch_started > cutoff).count() >= PHASE_REQUESTS
    })
    .unwrap();
    let report = load.stop();
    check(&report);

    let serial_of = |r: &Record| r.client_serial.clone().unwrap_or_default();
    let before: Vec<&Record> = report.records.iter().filter(|r| r.batch_finished < rotated_at).collect();
    assert!(before.len() >= PHASE_REQUESTS, "{} requests before the rotation", before.len());
    for r in &before {
        assert_eq!(serial_of(r), old_serial, "before the rotation: {}", r.describe());
    }
    for r in report.records.iter().filter(|r| r.batch_started > cutoff) {
        assert_eq!(serial_of(r), new_serial, "after the drain deadline: {}", r.describe());
    }
    let unknown: Vec<&Record> =
        report.records.iter().filter(|r| ![&old_serial, &new_serial].contains(&&serial_of(r))).collect();
    assert!(unknown.is_empty(), "unexpected serial: {}", unknown[0].describe());
    let last_old =
        report.records.iter().filter(|r| serial_of(r) == old_serial).map(|r| r.batch_finished).max().unwrap();
    eprintln!(
        "rotation at {rotated_at:.2?}: new serial first seen by {first_new:.2?}, old serial last seen by {last_old:.2?}; old {} / new {} requests",
        report.count(|r| serial_of(r) == old_serial),
        report.count(|r| serial_of(r) == new_serial),
    );
}

/// A mesh CA rotation under load: the gateway's CA bundle becomes old+new, the callers switch to
/// certificates of the new CA (and trust both CAs for the gateway), the gateway's own server certificate
/// moves to the new CA, then the bundle becomes new only. No request fails, and afterwards a certificate
/// of the old CA is refused during the TLS handshake.
#[test]
fn mesh_ca_rotation() {
    let _serial = serial();
    let topo = start("mesh-ca");
    let pki = topo.pki();
    let sds_dir = topo.sds_dir();
    let old_ca = pki.mesh_ca_cert();
    let old_cert = pki.workload("team-app1");
    let new_ca = pki.generate_mesh_ca("mesh-ca-2").unwrap();
    let new_cert = pki.issue_workload_by(&new_ca, "team-app1-ca2", &WorkloadSpec::spiffe(APP1)).unwrap();
    // What callers trust for the gateway's server certificate during the rotation.
    let both: PathBuf = pki.dir().join("mesh-ca-old-and-new.crt");
    std::fs::write(&both, std::fs::read_to_string(&old_ca).unwrap() + &std::fs::read_to_string(new_ca.cert()).unwrap())
        .unwrap();

    // Control: the new CA is not trusted yet.
    let r = send(&both, &new_cert, "/rotation/mesh-ca/control");
    assert!(refused_at_tls(&r), "a new-CA certificate was accepted before the bundle had it: {}", r.summary());

    let load = LoadGenerator::start(spec("mesh-ca"), Caller::new("old-ca", old_cert.clone(), old_ca.clone())).unwrap();
    load.wait_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    let updates = || topo.stat(LISTENER_SDS_UPDATES).expect("listener SDS update counter");
    let updates_before = updates();

    // 1. The bundle trusts both CAs.
    sds::write_validation_context(&sds_dir, sds::MESH_CA, &[&old_ca, new_ca.cert()]).unwrap();
    let t1 = Instant::now();
    poll(STEP_TIMEOUT, "the gateway accepting a new-CA certificate", || {
        (send(&both, &new_cert, "/rotation/mesh-ca/step1").status == 200).then_some(())
    });
    eprintln!("bundle old+new effective after {:?}", t1.elapsed());
    load.wait_more_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    // 2. Callers switch to the new CA's certificate.
    let generation = load.switch_caller(Caller::new("new-ca", new_cert.clone(), both.clone()));
    load.wait_workers_on(generation, STEP_TIMEOUT).unwrap();
    load.wait_more_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    // 3. The gateway's server certificate comes from the new CA.
    let gateway_cert = pki.issue_gateway_cert_by(&new_ca, "gateway-ca2").unwrap();
    sds::write_tls_certificate(&sds_dir, sds::GATEWAY_CERT, &gateway_cert).unwrap();
    poll(STEP_TIMEOUT, "the gateway presenting its new-CA server certificate", || {
        (send(new_ca.cert(), &new_cert, "/rotation/mesh-ca/step3").status == 200).then_some(())
    });
    load.wait_more_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    // 4. The bundle trusts the new CA only.
    sds::write_validation_context(&sds_dir, sds::MESH_CA, &[new_ca.cert()]).unwrap();
    let t4 = Instant::now();
    poll(STEP_TIMEOUT, "the gateway refusing an old-CA certificate", || {
        refused_at_tls(&send(&both, &old_cert, "/rotation/mesh-ca/step4")).then_some(())
    });
    eprintln!("bundle new-only effective after {:?}", t4.elapsed());
    load.wait_more_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();
    let report = load.stop();
    check(&report);
    // Three listener updates: bundle old+new, server certificate, bundle new only.
    assert_eq!(updates(), updates_before + 3, "{LISTENER_SDS_UPDATES}");
    let by_caller = report.by_caller();
    for label in ["old-ca", "new-ca"] {
        assert!(
            by_caller.iter().any(|(l, n)| l == label && *n >= PHASE_REQUESTS),
            "too few requests as {label}: {by_caller:?}"
        );
    }

    // Afterwards: the old CA's certificate is refused during the handshake, the new one works.
    let r = send(&both, &old_cert, "/rotation/mesh-ca/after-old");
    assert!(refused_at_tls(&r), "an old-CA certificate was not refused at TLS: {}", r.summary());
    eprintln!("old-CA certificate after the rotation: {}", r.summary());
    let r = send(new_ca.cert(), &new_cert, "/rotation/mesh-ca/after-new");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some(TEAM_APP1), "{}", r.summary());
}

/// The caller's SPIFFE ID moves from example.com to example.org (both aliases of the local trust domain
/// cluster.local) under load: every request still reaches the partner as team.app1.
#[test]
fn trust_domain_migration() {
    let _serial = serial();
    let topo = start("trust-domain");
    let pki = topo.pki();
    let com =
        pki.issue_workload("app1-example-com", &WorkloadSpec::spiffe("spiffe://example.com/ns/team/sa/app1")).unwrap();
    let org =
        pki.issue_workload("app1-example-org", &WorkloadSpec::spiffe("spiffe://example.org/ns/team/sa/app1")).unwrap();
    let load = LoadGenerator::start(spec("trust-domain"), Caller::new("example.com", com, pki.mesh_ca_cert())).unwrap();
    load.wait_requests(2 * PHASE_REQUESTS, STEP_TIMEOUT).unwrap();
    let generation = load.switch_caller(Caller::new("example.org", org, pki.mesh_ca_cert()));
    load.wait_workers_on(generation, STEP_TIMEOUT).unwrap();
    load.wait_more_requests(2 * PHASE_REQUESTS, STEP_TIMEOUT).unwrap();
    let report = load.stop();
    check(&report);
    let by_caller = report.by_caller();
    for label in ["example.com", "example.org"] {
        assert!(by_caller.iter().any(|(l, n)| l == label && *n > 0), "no request as {label}: {by_caller:?}");
    }
    // The gateway saw both SPIFFE IDs.
    let log = topo.gateway_access_log();
    for id in ["spiffe://example.com/ns/team/sa/app1", "spiffe://example.org/ns/team/sa/app1"] {
        assert!(log.contains(id), "the gateway access log never shows {id}");
    }
}
