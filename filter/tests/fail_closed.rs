//! Fail closed end to end: the real gateway (`envoy/gateway.yaml`, Envoy 1.40) running a variant of the
//! filter built with the `test-trap` cargo feature (to `target/test-trap/`, never `dist/`), whose VM executes
//! the wasm `unreachable` instruction when a request carries `x-egress-identity-test-trap`.
//!
//! The header_mutation filter (defense in depth) is removed from the bootstrap here, so what is proved is
//! that the wasm filter itself fails closed: a trapping request — even one that carries a spoofed
//! `x-egress-identity-cluster`, or that traps after the filter set the header for an allowed caller — gets a
//! 5xx and never reaches the partner.
//!
//! What Envoy 1.40 does after the trap depends on the plugin's `failure_policy`:
//! * `fail_open: false` (= `FAIL_CLOSED`): the VM is not reloaded
//!   (`wasm.egress-identity.vm_reload*` stay 0) and *every* later request gets 503 until Envoy restarts or
//!   the plugin configuration changes — closed, but an outage.
//! * `failure_policy: FAIL_RELOAD` (what `envoy/gateway.yaml` says): the trapping request gets 503, the VM is reloaded after a back-off
//!   (`vm_reload_backoff`, then `vm_reload_success`), and later requests are decided normally again.
//!
//! Plugin configuration failures: a configuration the plugin refuses makes Envoy refuse to start
//! (`tests/e2e.rs`); through LDS it is a rejected update and the previous listener keeps serving
//! (`tests/reload.rs`).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use egress_identity_harness::client::Call;
use egress_identity_harness::pki::CertFiles;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{self, Options, Topology};

const TRAP_HEADER: &str = "x-egress-identity-test-trap";
const CLUSTER_HEADER: &str = "x-egress-identity-cluster";

/// The topology uses fixed ports: one test at a time.
static PORTS: Mutex<()> = Mutex::new(());

/// Builds the `test-trap` variant of the filter into target/test-trap/ and returns its path.
fn trap_wasm() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &*built {
        return p.clone();
    }
    let wasm = topology::build_wasm_variant("test-trap").unwrap();
    *built = Some(wasm.clone());
    wasm
}

/// envoy/gateway.yaml without the header_mutation filter, with the wasm filter's failure setting replaced.
fn gateway_variant(dir: &Path, failure: &str) -> PathBuf {
    let original = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    let lines = topology::without_header_mutation(&original).unwrap();
    let out: Vec<String> = lines
        .into_iter()
        .map(|l| {
            let rendered = "failure_policy: FAIL_RELOAD";
            if l.trim() == rendered {
                l.replace(rendered, failure)
            } else {
                l
            }
        })
        .collect();
    let text = out.join("\n") + "\n";
    assert!(!text.contains("header_mutation") && text.contains(failure));
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("gateway-{}.yaml", failure.replace([':', ' '], "-")));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(name: &str, failure: &str) -> Topology {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fail-closed");
    let mut opts = Options::new(base.join(name));
    opts.wasm = trap_wasm();
    opts.gateway_config = gateway_variant(&base, failure);
    Topology::start(&opts).expect("starting the gateway with the test-trap filter")
}

fn unique(test: &str) -> String {
    egress_identity_harness::unique_path(&format!("/fail-closed/{test}"))
}

/// Waits until the partner logged `marker` (nginx logs in order), then checks `paths` never arrived.
fn assert_never_forwarded(t: &Topology, paths: &[String], marker: Option<&str>) {
    match marker {
        Some(m) => {
            let deadline = Instant::now() + Duration::from_secs(5);
            while t.external_requests_for(m).is_empty() {
                assert!(Instant::now() < deadline, "marker {m} never reached the partner");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // No request can pass any more; give nginx time to log anything that did.
        None => std::thread::sleep(Duration::from_secs(1)),
    }
    for p in paths {
        let seen = t.external_requests_for(p);
        assert!(seen.is_empty(), "{p} reached the partner: {seen:?}");
    }
}

fn stat(t: &Topology, name: &str) -> u64 {
    t.stat(name).unwrap_or(0)
}

/// A request after a trap: either failed closed by Envoy (503, `wasm_fail_stream`, the worker whose VM
/// trapped) or decided normally by a healthy VM — then forwarded as the caller's own identity, whatever
/// cluster header the client sent. Returns whether it failed.
fn failed_or_correct(
    t: &Topology,
    caller: &CertFiles,
    cn: &str,
    spoof: Option<&str>,
    failed: &mut Vec<String>,
    ok: &mut Vec<String>,
) -> bool {
    let p = unique("after");
    let mut call = Call::get(caller, &p);
    if let Some(c) = spoof {
        call = call.header(CLUSTER_HEADER, c);
    }
    let r = t.client().send(&call).unwrap();
    match r.status {
        503 => {
            failed.push(p);
            true
        }
        200 => {
            let j = r.json.as_ref().expect("partner JSON");
            assert_eq!(j["client_subject"], format!("CN={cn}"), "spoofed {spoof:?}: {j}");
            assert_eq!(j["cluster_header"], "", "{j}");
            ok.push(p);
            false
        }
        _ => panic!("request after the trap: {}", r.summary()),
    }
}

/// `fail_open: false` (FAIL_CLOSED): the trapping request gets 503 and is not forwarded, even
/// with a spoofed cluster header. The VM is not reloaded: the worker whose VM trapped answers 503 from then
/// on (Envoy runs one VM per worker; the gateway runs 2), the other worker decides normally.
#[test]
fn vm_trap_with_fail_open_false_fails_closed_for_good() {
    let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let t = start("fail-open-false", "fail_open: false");
    let app1 = t.pki().workload("team-app1");
    let app2 = t.pki().workload("team-app2");

    // Before the trap the variant behaves like the filter (a trap header with another value is ignored).
    let before = unique("before");
    let r = t.client().send(&Call::get(&app1, &before).header(TRAP_HEADER, "none")).unwrap();
    assert_eq!(r.status, 200, "before the trap: {}", r.summary());

    // Traps after setting x-egress-identity-cluster for an allowed caller, with a spoofed copy of it too.
    let trapped = unique("trapped");
    let r = t
        .client()
        .send(
            &Call::get(&app1, &trapped)
                .header(TRAP_HEADER, "after-allow")
                .header(CLUSTER_HEADER, "partner-api|team-app2"),
        )
        .unwrap();
    assert_eq!(r.status, 503, "trapping request: {}", r.summary());
    assert!(t.gateway_log().contains("proxy_on_request_headers failed"), "no trap in the gateway log");

    let (mut failed, mut ok) = (vec![trapped], Vec::new());
    for _ in 0..10 {
        failed_or_correct(&t, &app1, "team.app1", None, &mut failed, &mut ok);
        failed_or_correct(&t, &app2, "team.app2", Some("partner-api|team-app1"), &mut failed, &mut ok);
        failed_or_correct(&t, &app1, "team.app1", Some("partner-api|team-app2"), &mut failed, &mut ok);
    }
    assert!(failed.len() > 1, "no request after the trap failed: the trapped VM came back");
    let marker = ok.last().cloned();
    assert_never_forwarded(&t, &failed, marker.as_deref());
    assert_eq!(stat(&t, "wasm.egress-identity.vm_reload_success"), 0);
    assert_eq!(stat(&t, "wasm.egress-identity.vm_reload"), 0);
    eprintln!("after the trap: {} failed (503), {} decided normally", failed.len() - 1, ok.len());
}

/// `failure_policy: FAIL_RELOAD` (the rendered gateway's): the trapping request gets 503 and is not forwarded, even with a spoofed
/// cluster header; Envoy reloads the VM after a back-off, and then every request is decided normally.
#[test]
fn vm_trap_with_fail_reload_fails_the_request_and_recovers() {
    let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let t = start("fail-reload", "failure_policy: FAIL_RELOAD");
    let app1 = t.pki().workload("team-app1");
    let app2 = t.pki().workload("team-app2");

    for (round, point) in ["entry", "after-allow"].into_iter().enumerate() {
        let trapped = unique(point);
        let r = t
            .client()
            .send(
                &Call::get(&app1, &trapped).header(TRAP_HEADER, point).header(CLUSTER_HEADER, "partner-api|team-app2"),
            )
            .unwrap();
        assert_eq!(r.status, 503, "trapping request ({point}): {}", r.summary());
        let (mut failed, mut ok) = (vec![trapped], Vec::new());
        // Requests until the VM was reloaded (on a request after the back-off).
        let deadline = Instant::now() + Duration::from_secs(30);
        while stat(&t, "wasm.egress-identity.vm_reload_success") < round as u64 + 1 {
            assert!(Instant::now() < deadline, "the VM was not reloaded");
            failed_or_correct(&t, &app2, "team.app2", Some("partner-api|team-app1"), &mut failed, &mut ok);
            std::thread::sleep(Duration::from_millis(200));
        }
        // Then every request is decided normally again.
        for _ in 0..6 {
            assert!(!failed_or_correct(&t, &app1, "team.app1", Some("partner-api|team-app2"), &mut failed, &mut ok));
            let denied = format!("/admin{}", unique("denied"));
            let r = t.client().send(&Call::get(&app1, &denied)).unwrap();
            assert_eq!(r.status, 403, "deny after the reload: {}", r.summary());
            failed.push(denied);
        }
        assert_never_forwarded(&t, &failed, ok.last().map(String::as_str));
    }
}
