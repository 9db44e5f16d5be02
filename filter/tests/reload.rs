//! Plugin configuration reload on the real gateway under continuous load (harness::load, caller team.app1):
//! the gateway's listener comes from file-based LDS (`Options::with_lds`, harness::lds), so a new plugin
//! configuration is pushed to the running Envoy the way a control plane would, by replacing the listener
//! resource (atomically: temporary file + rename into the watched `lds/` directory).
//!
//! * a valid configuration that changes the policy is applied within milliseconds, app1's requests never
//!   fail, the new policy decides from then on, and `wasmcustom.egress_identity.config_generation` counts
//!   the configurations; pushing the old one back restores the old behaviour;
//! * a configuration the filter refuses makes Envoy reject the whole listener update
//!   (`listener_manager.lds.update_rejected`, the log names the field): the previous listener and plugin
//!   keep serving, no request fails, and requests are still decided by the old policy, whatever
//!   `x-egress-identity-cluster` the client sends.
//!
//! Each test starts its own topology (fresh PKI) in `target/tmp/reload/<test>/` on the fixed loopback
//! ports, so the tests run one at a time (a static Mutex). Needs envoy, nginx, curl and the `.venv` Python
//! with PyYAML (to turn `envoy/gateway.yaml` into the LDS bootstrap).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::lds;
use egress_identity_harness::load::{Caller, LoadGenerator, LoadReport, LoadSpec};
use egress_identity_harness::pki::CertFiles;
use egress_identity_harness::topology::{Options, Topology};
use serde_json::{json, Value};

const TEAM_APP1: &str = "CN=team.app1";
const CLUSTER_HEADER: &str = "x-egress-identity-cluster";
/// Requests every test must at least have sent.
const MIN_REQUESTS: usize = 1500;
/// Requests before and after each step.
const PHASE_REQUESTS: usize = 400;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const GENERATION: &str = "wasmcustom.egress_identity.config_generation";
const LDS_SUCCESS: &str = "listener_manager.lds.update_success";
const LDS_REJECTED: &str = "listener_manager.lds.update_rejected";
const IN_PLACE_UPDATED: &str = "listener_manager.listener_in_place_updated";

/// One test at a time: they all use the same fixed ports.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(test: &str) -> Topology {
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reload").join(test);
    Topology::start(&Options::new(run_dir).with_lds()).unwrap_or_else(|e| panic!("starting the topology with LDS: {e}"))
}

fn spec(test: &str) -> LoadSpec {
    LoadSpec {
        workers: 4,
        requests_per_connection: 20,
        max_duration: Duration::from_secs(25),
        path_prefix: format!("/reload/{test}"),
        ..LoadSpec::default()
    }
}

fn stat(t: &Topology, name: &str) -> u64 {
    t.stat(name).unwrap_or_else(|| panic!("stat {name} missing"))
}

/// Poll `f` every 20 ms until it returns `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unique(what: &str) -> String {
    egress_identity_harness::unique_path(&format!("/reload-check/{what}"))
}

fn send(t: &Topology, caller: &CertFiles, path: &str, spoof: Option<&str>) -> Response {
    let mut call = Call::get(caller, path);
    if let Some(cluster) = spoof {
        call = call.header(CLUSTER_HEADER, cluster);
    }
    t.client().send(&call).expect("running curl")
}

/// A 200 from the partner that saw `subject` and no internal header.
fn assert_forwarded_as(r: &Response, subject: &str) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some(subject), "{}", r.summary());
    assert_eq!(r.field("cluster_header"), Some(""), "{}", r.summary());
}

/// A 403 from the filter naming `policy` (or `reason` when `policy` is None).
fn assert_denied(r: &Response, layer: &str, policy: Option<&str>, reason: &str) {
    assert_eq!(r.status, 403, "{}", r.summary());
    let j = r.json.as_ref().expect("JSON deny body");
    assert_eq!(j["decision"], "deny", "{j}");
    assert_eq!(j["layer"], layer, "{j}");
    assert_eq!(j["reason"], reason, "{j}");
    if let Some(p) = policy {
        assert_eq!(j["policy"], p, "{j}");
    }
}

/// Waits until the partner logged `marker` (nginx logs in order), then checks none of `paths` arrived.
fn assert_never_forwarded(t: &Topology, paths: &[String], marker: &str) {
    poll(Duration::from_secs(5), "the marker at the partner", || {
        (!t.external_requests_for(marker).is_empty()).then_some(())
    });
    for p in paths {
        let seen = t.external_requests_for(p);
        assert!(seen.is_empty(), "{p} reached the partner: {seen:?}");
    }
}

/// The gateway's current plugin configuration, from the LDS resource file.
fn current_plugin_config(t: &Topology) -> Value {
    let listeners = lds::read_listeners(&t.lds_dir()).unwrap();
    serde_json::from_str(&lds::plugin_config(&listeners).unwrap()).unwrap()
}

/// Every request 200 from the partner as team.app1, at least MIN_REQUESTS, over kept-alive connections.
fn check(report: &LoadReport) {
    if let Err(e) = report.check_all_as(TEAM_APP1, MIN_REQUESTS) {
        panic!("{e}");
    }
}

/// Requests of batches (connections) open at `t`.
fn spanning(report: &LoadReport, t: Duration) -> usize {
    report.count(|r| r.batch_started < t && r.batch_finished > t)
}

/// Requests of batches (connections) started after `t`.
fn started_after(report: &LoadReport, t: Duration) -> usize {
    report.count(|r| r.batch_started > t)
}

/// A valid new plugin configuration that denies app2 at the destination and a new path prefix for
/// everyone is pushed under load, then the original one is pushed back. No app1 request fails; each
/// configuration decides new connections from the moment Envoy applied it; the generation gauge counts
/// both pushes.
#[test]
fn valid_plugin_config_reload_under_load() {
    let _serial = serial();
    let t = start("valid");
    let app1 = t.pki().workload("team-app1");
    let app2 = t.pki().workload("team-app2");
    let original = current_plugin_config(&t);

    let mut changed = original.clone();
    let policies = changed["destinations"][0]["policies"].as_array_mut().expect("destination policies");
    policies.insert(
        0,
        json!({ "name": "deny-after-reload", "action": "DENY", "rules": [
            { "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app2"] } } ] },
            { "to": [ { "operation": { "paths": ["/reload-denied*"] } } ] }
        ] }),
    );
    let changed = serde_json::to_string_pretty(&changed).unwrap();
    let original = serde_json::to_string_pretty(&original).unwrap();

    // Before: app2 is allowed, the new path is not denied.
    assert_forwarded_as(&send(&t, &app2, &unique("app2-before"), None), "CN=team.app2");
    assert_forwarded_as(&send(&t, &app1, &format!("/reload-denied{}", unique("before")), None), TEAM_APP1);
    let generation_before = stat(&t, GENERATION);
    let success_before = stat(&t, LDS_SUCCESS);
    let in_place_before = stat(&t, IN_PLACE_UPDATED);
    assert_eq!(generation_before, 1, "the gateway started with one configuration");

    let caller = Caller::new("team-app1", app1.clone(), t.pki().mesh_ca_cert());
    let load = LoadGenerator::start(spec("valid"), caller).unwrap();
    load.wait_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    // 1. Push the changed configuration.
    let mut denied_paths = Vec::new();
    let pushed_at = load.elapsed();
    let pushed = Instant::now();
    t.push_plugin_config(&changed).unwrap();
    poll(STEP_TIMEOUT, "the new configuration's generation", || {
        (stat(&t, GENERATION) > generation_before).then_some(())
    });
    let generation_seen = pushed.elapsed();
    // Until the new filter chain serves, app2 may still be allowed by the old one; nothing else.
    let mut polls = 0;
    poll(STEP_TIMEOUT, "app2 denied by the new policy", || {
        polls += 1;
        let p = unique("app2-switch");
        let r = send(&t, &app2, &p, None);
        if r.status == 200 {
            assert_forwarded_as(&r, "CN=team.app2");
            return None;
        }
        assert_denied(&r, "destination", Some("deny-after-reload"), "denied_by_policy");
        denied_paths.push(p);
        Some(())
    });
    let denied_seen = pushed.elapsed();
    let applied_at = load.elapsed();
    assert_eq!(stat(&t, GENERATION), generation_before + 1, "{GENERATION}");
    assert_eq!(stat(&t, LDS_SUCCESS), success_before + 1, "{LDS_SUCCESS}");
    // From now on the new policy decides every new connection (each curl is one).
    for _ in 0..3 {
        let p = unique("app2-after");
        assert_denied(
            &send(&t, &app2, &p, Some("partner-api|team-app2")),
            "destination",
            Some("deny-after-reload"),
            "denied_by_policy",
        );
        denied_paths.push(p);
        let p = format!("/reload-denied{}", unique("after"));
        assert_denied(&send(&t, &app1, &p, None), "destination", Some("deny-after-reload"), "denied_by_policy");
        denied_paths.push(p);
    }
    load.wait_for(STEP_TIMEOUT, "load on the new configuration", |records| {
        records.iter().filter(|r| r.batch_started > applied_at).count() >= PHASE_REQUESTS
    })
    .unwrap();

    // 2. Push the original configuration back.
    let restored = Instant::now();
    t.push_plugin_config(&original).unwrap();
    poll(STEP_TIMEOUT, "app2 allowed again", || {
        let r = send(&t, &app2, &unique("app2-restore"), None);
        if r.status == 403 {
            assert_denied(&r, "destination", Some("deny-after-reload"), "denied_by_policy");
            return None;
        }
        assert_forwarded_as(&r, "CN=team.app2");
        Some(())
    });
    let restored_seen = restored.elapsed();
    let restored_at = load.elapsed();
    load.wait_for(STEP_TIMEOUT, "load on the restored configuration", |records| {
        records.iter().filter(|r| r.batch_started > restored_at).count() >= PHASE_REQUESTS
    })
    .unwrap();
    load.wait_requests(MIN_REQUESTS, STEP_TIMEOUT).unwrap();
    let report = load.stop();
    check(&report);

    // A different configuration is a new generation, also when it is an earlier one again.
    assert_eq!(stat(&t, GENERATION), generation_before + 2, "{GENERATION}");
    assert_eq!(stat(&t, LDS_SUCCESS), success_before + 2, "{LDS_SUCCESS}");
    assert_eq!(stat(&t, LDS_REJECTED), 0, "{LDS_REJECTED}");
    let marker = unique("marker");
    assert_forwarded_as(&send(&t, &app1, &marker, None), TEAM_APP1);
    assert_never_forwarded(&t, &denied_paths, &marker);

    let before = report.count(|r| r.batch_finished < pushed_at);
    let during_new = report.count(|r| r.batch_started > applied_at && r.batch_finished < restored_at);
    let after = started_after(&report, restored_at);
    // Kept-alive connections open while Envoy switched configurations (they finish on the old filter chain).
    let across = spanning(&report, applied_at) + spanning(&report, restored_at);
    assert!(across > 0, "no connection was open across a switch");
    assert!(before >= PHASE_REQUESTS, "{before} requests before the push");
    assert!(after >= PHASE_REQUESTS, "{after} requests after the restore");
    eprintln!(
        "reload: push at {pushed_at:.2?}: generation {generation_before}->{} seen after {generation_seen:.2?}, \
         app2 denied after {denied_seen:.2?} ({polls} probe(s)); restore: app2 allowed after {restored_seen:.2?}; \
         app1 requests: {before} on the first configuration only, {during_new} on the second only, {after} after the restore, \
         {across} on connections open across a switch; {IN_PLACE_UPDATED} +{}",
        generation_before + 1,
        stat(&t, IN_PLACE_UPDATED) - in_place_before,
    );
}

/// A plugin configuration the filter refuses (an unknown Istio field `when`, in a rule that would allow
/// every caller) is pushed under load. Envoy rejects the listener update and names the field; the old
/// listener keeps serving app1 without a failure, and the old policy still decides: app3 is denied, app2
/// goes out as team.app2 and app1 as team.app1 whatever cluster header they send.
#[test]
fn invalid_plugin_config_is_rejected_and_the_old_one_keeps_serving() {
    let _serial = serial();
    let t = start("invalid");
    let app1 = t.pki().workload("team-app1");
    let app2 = t.pki().workload("team-app2");
    let app3 = t.pki().workload("team-app3");

    let mut invalid = current_plugin_config(&t);
    assert_eq!(invalid["destinations"][0]["policies"][1]["name"], "allow-team-apps");
    let rules = invalid["destinations"][0]["policies"][1]["rules"].as_array_mut().expect("allow-team-apps rules");
    rules.push(json!({ "when": [ { "key": "request.headers[x-egress-identity-cluster]", "values": ["*"] } ] }));
    let invalid = serde_json::to_string_pretty(&invalid).unwrap();
    let field = "destinations[0].policies[1].rules[1].when: unknown field `when`";

    let mut denied_paths = Vec::new();
    let old_policy_decides = |denied_paths: &mut Vec<String>, when: &str| {
        let p = unique(&format!("app3-{when}"));
        assert_denied(&send(&t, &app3, &p, Some("partner-api|team-app1")), "destination", None, "no_matching_allow");
        denied_paths.push(p);
        let p = format!("/admin{}", unique(when));
        assert_denied(
            &send(&t, &app1, &p, Some("partner-api|team-app2")),
            "destination",
            Some("deny-admin-paths"),
            "denied_by_policy",
        );
        denied_paths.push(p);
        assert_forwarded_as(&send(&t, &app2, &unique(when), Some("partner-api|team-app1")), "CN=team.app2");
        assert_forwarded_as(&send(&t, &app1, &unique(when), Some("partner-api|team-app2")), TEAM_APP1);
    };
    old_policy_decides(&mut denied_paths, "before");
    let generation_before = stat(&t, GENERATION);
    let success_before = stat(&t, LDS_SUCCESS);
    let rejected_before = stat(&t, LDS_REJECTED);

    let caller = Caller::new("team-app1", app1.clone(), t.pki().mesh_ca_cert());
    let load = LoadGenerator::start(spec("invalid"), caller).unwrap();
    load.wait_requests(PHASE_REQUESTS, STEP_TIMEOUT).unwrap();

    let pushed_at = load.elapsed();
    let pushed = Instant::now();
    t.push_plugin_config(&invalid).unwrap();
    poll(STEP_TIMEOUT, "Envoy rejecting the listener update", || {
        (stat(&t, LDS_REJECTED) > rejected_before).then_some(())
    });
    let rejected_seen = pushed.elapsed();
    let rejected_at = load.elapsed();
    // The file Envoy watches does hold the invalid configuration: what serves is the old listener.
    assert!(current_plugin_config(&t).to_string().contains("\"when\""));
    let log = t.gateway_log();
    assert!(
        log.contains(&format!("invalid configuration: {field}")),
        "the gateway log does not name the field ({field})"
    );
    assert!(
        log.contains("lds: listener 'egress' config rejected"),
        "the gateway log does not show the rejected listener"
    );
    assert_eq!(stat(&t, LDS_REJECTED), rejected_before + 1, "{LDS_REJECTED}");
    assert_eq!(stat(&t, LDS_SUCCESS), success_before, "{LDS_SUCCESS}");
    assert_eq!(stat(&t, GENERATION), generation_before, "{GENERATION}");

    old_policy_decides(&mut denied_paths, "after");
    load.wait_for(STEP_TIMEOUT, "load after the rejection", |records| {
        records.iter().filter(|r| r.batch_started > rejected_at).count() >= 2 * PHASE_REQUESTS
    })
    .unwrap();
    old_policy_decides(&mut denied_paths, "later");
    load.wait_requests(MIN_REQUESTS, STEP_TIMEOUT).unwrap();
    let report = load.stop();
    check(&report);
    let across = spanning(&report, rejected_at);
    assert!(across > 0, "no connection was open across the rejected update");
    assert_eq!(stat(&t, GENERATION), generation_before, "{GENERATION}");
    let marker = unique("marker");
    assert_forwarded_as(&send(&t, &app1, &marker, None), TEAM_APP1);
    assert_never_forwarded(&t, &denied_paths, &marker);
    eprintln!(
        "invalid push at {pushed_at:.2?}: rejected after {rejected_seen:.2?} ({LDS_REJECTED} {rejected_before}->{}), \
         generation stays {generation_before}; app1 requests: {} before, {} after the rejection, {across} on connections open across it",
        stat(&t, LDS_REJECTED),
        report.count(|r| r.batch_finished < pushed_at),
        started_after(&report, rejected_at),
    );
}
