//! Path policies hold whatever the gateway's own path normalization: a gateway whose HTTP connection
//! manager neither merges slashes nor refuses encoded slashes -- what istiod generates for an egress gateway
//! and an ambient waypoint by default (observed with istiod's generator, tests/istiod) -- still never lets
//! `//admin` or `/%2Fadmin` pass a `/admin*` DENY: the filter merges empty segments and refuses encoded
//! slashes itself.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;

use egress_identity_harness::client::Call;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Options, Topology};

#[test]
fn slashes_the_gateway_leaves_alone_do_not_pass_a_path_deny() {
    let run = Path::new(env!("CARGO_TARGET_TMPDIR")).join("path-normalization");
    std::fs::create_dir_all(&run).unwrap();
    // The demo gateway, with Istio's default path handling: normalize_path only.
    let original = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    assert_eq!(original.matches("merge_slashes: true\n").count(), 1);
    let lenient = original.replace("merge_slashes: true\n", "merge_slashes: false\n").replace(
        "path_with_escaped_slashes_action: REJECT_REQUEST",
        "path_with_escaped_slashes_action: KEEP_UNCHANGED",
    );
    let config = run.join("gateway-lenient-paths.yaml");
    std::fs::write(&config, lenient).unwrap();
    let mut opts = Options::new(run.join("run"));
    opts.gateway_config = config;
    let t = Topology::start(&opts).unwrap();
    let app1 = t.pki().workload("team-app1");

    let control = egress_identity_harness::unique_path("/v1/path-normalization");
    let r = t.client().send(&Call::get(&app1, &control)).unwrap();
    assert_eq!((r.status, r.field("client_subject")), (200, Some("CN=team.app1")), "{}", r.summary());

    // partner-api's DENY deny-admin-paths (/admin*), whatever the spelling the gateway lets through.
    for (spelling, reason) in [
        ("//admin/users", "denied_by_policy"),
        // Envoy's normalize_path (RFC 3986) resolves this to //admin/users, which the partner may merge.
        ("/v1/..//admin/users", "denied_by_policy"),
        ("/%2Fadmin/users", "malformed_request"),
        ("/x%2F..%2Fadmin/users", "malformed_request"),
    ] {
        let p = format!("{spelling}/{}", egress_identity_harness::unique_path("/n").trim_start_matches('/'));
        let r = t.client().send(&Call::get(&app1, &p)).unwrap();
        assert_eq!(r.status, 403, "{spelling} got through: {}", r.summary());
        assert_eq!(r.field("reason"), Some(reason), "{spelling}: {}", r.body);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let unique = p.rsplit('/').next().unwrap_or_default();
        assert!(
            t.external_requests().iter().all(|e| !e.to_string().contains(unique)),
            "{spelling} reached the partner"
        );
    }
}
