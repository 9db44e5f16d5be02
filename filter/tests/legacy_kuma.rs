//! Kuma's legacy certificates (one `spiffe://` URI SAN plus `kuma://` ones) end to end, on a gateway
//! *variant*: envoy/gateway.yaml with only the plugin configuration changed to `"acceptLegacyKumaSans": true`
//! (harness::topology::gateway_variant). The strict default is covered by tests/e2e.rs
//! (`legacy_kuma_certificate_is_refused_by_the_strict_gateway`).
//!
//! One topology for this test binary (run dir `target/tmp/legacy-kuma/`), shared by its tests.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::pki::{CertFiles, WorkloadSpec};
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{self, Options, Topology};
use serde_json::Value;

const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";
const APP2: &str = "spiffe://cluster.local/ns/team/sa/app2";
const KUMA_APP1: &str = "kuma://kuma.io/service/app1";
const METRIC: &str = "egress_identity_legacy_kuma_sans_total";

fn original_gateway() -> String {
    std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap()
}

/// envoy/gateway.yaml's plugin configuration with `acceptLegacyKumaSans: true`.
fn legacy_config() -> Value {
    let mut config: Value = serde_json::from_str(&topology::plugin_config(&original_gateway()).unwrap()).unwrap();
    assert!(config.get("acceptLegacyKumaSans").is_none(), "already set: {config}");
    config["acceptLegacyKumaSans"] = Value::Bool(true);
    config
}

fn topo() -> &'static Topology {
    static TOPOLOGY: OnceLock<Result<Topology, String>> = OnceLock::new();
    let t = TOPOLOGY.get_or_init(|| {
        let run_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("legacy-kuma");
        let json = serde_json::to_string_pretty(&legacy_config()).unwrap();
        Topology::start(&Options::new(run_dir).with_plugin_config(json)).map_err(|e| e.to_string())
    });
    match t {
        Ok(t) => t,
        Err(e) => panic!("could not start the legacy-kuma topology: {e}"),
    }
}

fn issue(name: &str, uri_sans: &[&str]) -> CertFiles {
    let spec = WorkloadSpec { uri_sans: uri_sans.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    topo().pki().issue_workload(name, &spec).unwrap()
}

fn send(cert: &CertFiles, path: &str) -> Response {
    topo().client().send(&Call::get(cert, path)).unwrap()
}

fn counted() -> u64 {
    let samples = topo().prometheus();
    assert!(samples.iter().any(|s| s.family == METRIC), "{METRIC} not in /stats/prometheus");
    egress_identity_harness::prometheus::sum(&samples, METRIC, &[]) as u64
}

/// Poll the counter until it reaches `want` (the filter publishes its counters once a second); then,
/// once everything sent is published, it must be exactly `want`.
fn assert_counter_reaches(want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    topo().settle_counters();
    assert_eq!(counted(), want, "{METRIC}");
}

/// The one test that sends certificates the legacy mode accepts (the counter is global to the gateway;
/// the other tests here only send certificates that are refused before counting).
#[test]
fn legacy_kuma_certificate_is_accepted_and_counted() {
    let legacy = issue("kuma-legacy-app1", &[APP1, KUMA_APP1]);
    let before = counted();
    for i in 0..3 {
        let r = send(&legacy, &format!("/legacy-kuma/accepted/{i}"));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.field("client_subject"), Some("CN=team.app1"), "{}", r.summary());
    }
    assert_counter_reaches(before + 3);

    // A plain SVID is served as before and not counted as legacy.
    let r = send(&topo().pki().workload("team-app1"), "/legacy-kuma/plain");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some("CN=team.app1"), "{}", r.summary());
    // kuma:// SANs in any order, more than one.
    let r = send(&issue("kuma-legacy-app1-b", &[KUMA_APP1, APP1, "kuma://kuma.io/zone/east"]), "/legacy-kuma/order");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_counter_reaches(before + 4);
}

/// Legacy mode still refuses what is not a legacy Kuma certificate.
#[test]
fn legacy_mode_still_refuses_two_spiffe_ids_and_other_schemes() {
    for (name, sans) in [
        ("legacy-two-spiffe", vec![APP1, APP2]),
        ("legacy-two-spiffe-kuma", vec![APP1, KUMA_APP1, APP2]),
        ("legacy-https", vec![APP1, "https://kuma.io/service/app1"]),
        ("legacy-kuma-only", vec![KUMA_APP1, "kuma://kuma.io/zone/east"]),
    ] {
        let r = send(&issue(name, &sans), &format!("/legacy-kuma/{name}"));
        assert_eq!(r.status, 403, "{name}: {}", r.summary());
        assert_eq!(r.field("reason"), Some("multiple_uri_sans"), "{name}: {}", r.summary());
    }
}

/// The running gateway is the variant: envoy/gateway.yaml with only the plugin configuration replaced.
#[test]
fn the_variant_differs_from_the_gateway_only_in_the_plugin_configuration() {
    let variant = std::fs::read_to_string(topo().gateway_config()).unwrap();
    assert_ne!(topo().gateway_config(), repo_root().join("envoy/gateway.yaml"));
    let original = original_gateway();
    let a_block: Value = serde_json::from_str(&topology::plugin_config(&original).unwrap()).unwrap();
    let b_block: Value = serde_json::from_str(&topology::plugin_config(&variant).unwrap()).unwrap();
    assert_eq!(b_block, legacy_config());
    let mut without = b_block.clone();
    without.as_object_mut().unwrap().remove("acceptLegacyKumaSans");
    assert_eq!(without, a_block, "the variant changes more than acceptLegacyKumaSans");
    // Nothing else: the variant is the harness's plugin-only substitution (e2e.rs checks that one
    // independently), for the HTTP and the network filter alike.
    let json = serde_json::to_string_pretty(&legacy_config()).unwrap();
    assert_eq!(variant, topology::gateway_variant(&original, &json).unwrap());
    let occurrences = |text: &str| text.matches("\"acceptLegacyKumaSans\": true").count();
    assert_eq!(occurrences(&variant), original.matches("value: |").count(), "every plugin block is the variant's");
}
