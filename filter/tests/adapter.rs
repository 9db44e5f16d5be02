//! The adapter's own promises on the real gateway (envoy/gateway.yaml, whose single-cluster destination
//! `partner-shared` presents its two external identities, team.app1 and team.app2, through one cluster):
//!
//! * per-identity counters count each identity, even when identities share a cluster;
//! * a malformed `:authority` is a malformed request, decided before the principal and every layer;
//! * the plugin logs at Envoy's level for Wasm: its per-request debug line (the audit record) appears
//!   only while Envoy logs `wasm` at debug, and follows a change of level at run time.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::pki::WorkloadSpec;
use egress_identity_harness::topology::{Options, Topology};

fn topo() -> (MutexGuard<'static, ()>, &'static Topology) {
    static LOCK: Mutex<()> = Mutex::new(());
    static TOPOLOGY: OnceLock<Result<Topology, String>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = TOPOLOGY.get_or_init(|| {
        let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("adapter");
        Topology::start(&Options::new(run_dir)).map_err(|e| e.to_string())
    });
    match t {
        Ok(t) => (guard, t),
        Err(e) => panic!("could not start the adapter topology: {e}"),
    }
}

/// The single-cluster destination `partner-shared` of the demo policy, as callers address it.
const SHARED_HOST: &str = "api.partner.example:8443";
/// Its one cluster, whatever the identity.
const SHARED_CLUSTER: &str = "partner-shared|shared";

fn send(t: &Topology, who: &str, call: impl FnOnce(Call) -> Call) -> Response {
    let call = call(Call::get(&t.pki().workload(who), &egress_identity_harness::unique_path("/adapter")));
    t.client().send(&call).expect("running curl")
}

/// `egress_identity_decisions_total` of the HTTP filter with these labels, from `/stats/prometheus`.
fn counter(t: &Topology, labels: &[(&str, &str)]) -> u64 {
    let mut all = vec![("protocol", "http")];
    all.extend_from_slice(labels);
    t.metric("egress_identity_decisions_total", &all)
}

#[test]
fn identities_sharing_a_cluster_keep_their_own_counters() {
    let (_lock, t) = topo();
    let before = |id: &str| counter(t, &[("destination", "partner-shared"), ("identity", id)]);
    let (app1, app2) = (before("team.app1"), before("team.app2"));
    for (who, cn) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2"), ("team-app2", "CN=team.app2")] {
        let path = egress_identity_harness::unique_path("/adapter/shared");
        let call = Call::get(&t.pki().workload(who), &path).host(SHARED_HOST);
        let r = t.client().send(&call).expect("running curl");
        assert_eq!(r.status, 200, "{who}: {}", r.summary());
        assert_eq!(r.field("client_subject"), Some(cn), "{who}");
        // Every identity went out through the destination's one cluster.
        let entry = t.gateway_access_log_entry(&path).unwrap_or_else(|| panic!("no access-log entry for {path}"));
        assert_eq!(entry["upstream_cluster"], SHARED_CLUSTER, "{who}: {entry}");
    }
    t.settle_counters();
    assert_eq!(before("team.app1") - app1, 1, "team.app1's counter");
    assert_eq!(before("team.app2") - app2, 2, "team.app2's counter");
}

#[test]
fn a_malformed_authority_is_a_malformed_request_decided_first() {
    let (_lock, t) = topo();
    let malformed = counter(t, &[("layer", "request"), ("reason", "malformed_request")]);
    // sandbox-default has no gateway ALLOW: were the layers evaluated first, this would be a gateway denial.
    for (who, host) in [("sandbox-default", "api.partner.example:abc"), ("team-app1", "api.partner.example:0")] {
        let r = send(t, who, |c| c.host(host));
        assert_eq!(r.status, 403, "{who} {host}: {}", r.summary());
        assert_eq!((r.field("layer"), r.field("reason")), (Some("request"), Some("malformed_request")), "{who} {host}");
    }
    t.settle_counters();
    assert_eq!(counter(t, &[("layer", "request"), ("reason", "malformed_request")]) - malformed, 2);
}

/// Sets Envoy's log level for Wasm through the admin interface.
fn set_wasm_log_level(t: &Topology, level: &str) {
    let (status, body) = t.admin_post(&format!("/logging?wasm={level}")).expect("admin /logging");
    assert_eq!(status, 200, "{body}");
}

/// Whether the gateway log shows the audit record of a decision for `principal` within `wait`.
fn debug_line_for(t: &Topology, principal: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let line = t
            .gateway_log()
            .lines()
            .find(|l| l.contains("egress-identity: decision=") && l.contains(&format!("principal={principal} ")))
            .map(str::to_owned);
        if line.is_some() || Instant::now() > deadline {
            return line;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A denied request (no gateway ALLOW for the sandbox namespace) from a caller of its own, so that its
/// log line can be told from every other; returns that caller's SPIFFE ID.
fn denied_request_from_new_caller(t: &Topology, name: &str) -> String {
    let id = format!("spiffe://cluster.local/ns/sandbox/sa/{name}-{}", std::process::id());
    let cert = t.pki().issue_workload(name, &WorkloadSpec::spiffe(&id)).expect("issuing a workload certificate");
    let r = t.client().send(&Call::get(&cert, &egress_identity_harness::unique_path("/adapter/log"))).unwrap();
    assert_eq!(r.status, 403, "{}", r.summary());
    id
}

#[test]
fn the_plugin_logs_at_envoys_level_for_wasm() {
    let (_lock, t) = topo();
    // At Envoy's default (info), no per-request line.
    let quiet = denied_request_from_new_caller(t, "log-info");
    assert_eq!(debug_line_for(t, &quiet, Duration::from_secs(1)), None, "a debug line at level info");

    // Envoy at debug for Wasm: the plugin follows within a tick and logs each decision's audit record.
    set_wasm_log_level(t, "debug");
    std::thread::sleep(Duration::from_millis(1500));
    let loud = denied_request_from_new_caller(t, "log-debug");
    let line = debug_line_for(t, &loud, Duration::from_secs(5));
    set_wasm_log_level(t, "info");
    let line = line.unwrap_or_else(|| panic!("no debug line at level debug; gateway log:\n{}", t.gateway_log()));
    assert!(line.contains("decision=deny") && line.contains("layer=gateway reason=no_matching_allow"), "{line}");

    // Back at info: quiet again.
    std::thread::sleep(Duration::from_millis(1500));
    let quiet = denied_request_from_new_caller(t, "log-info-again");
    assert_eq!(debug_line_for(t, &quiet, Duration::from_secs(1)), None, "a debug line after returning to info");
}
