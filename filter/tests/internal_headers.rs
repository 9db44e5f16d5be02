//! The filter alone keeps client-supplied internal headers out, end to end on the real gateway.
//!
//! `envoy/gateway.yaml` strips `x-egress-identity-principal` / `-cluster` three times: header_mutation
//! before the filter, the filter itself, and the route's `request_headers_to_remove` before the partner.
//! Here the gateway runs a variant *without* the header_mutation filter and without the route's removal of
//! the two internal headers, so what the partner and the access log see is exactly what the filter left:
//! setting a header replaces every client copy of it, and a denied request never leaves the gateway.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egress_identity_harness::client::Call;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{self, Options, Topology};

const PRINCIPAL_HEADER: &str = "x-egress-identity-principal";
const CLUSTER_HEADER: &str = "x-egress-identity-cluster";
const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";
const APP2: &str = "spiffe://cluster.local/ns/team/sa/app2";

/// envoy/gateway.yaml without the header_mutation filter, without the route's removal of the internal
/// headers and without refusing headers with underscores; its access log also records every value of both
/// headers as the gateway forwards them.
fn gateway_variant(dir: &Path) -> PathBuf {
    let original = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    let mut out = Vec::new();
    let lines = topology::without_header_mutation(&original).unwrap();
    let underscores = "headers_with_underscores_action: REJECT_REQUEST";
    for l in lines.iter().cloned() {
        let t = l.trim();
        // common_http_protocol_options keeps its other fields (the idle timeout).
        if t == format!("- {PRINCIPAL_HEADER}") || t == format!("- {CLUSTER_HEADER}") || t == underscores {
            continue;
        }
        let json_format = t == "json_format:";
        let indent = " ".repeat(l.len() - l.trim_start().len() + 2);
        out.push(l);
        if json_format {
            out.push(format!("{indent}forwarded_principal: \"%REQ({PRINCIPAL_HEADER})%\""));
            out.push(format!("{indent}forwarded_cluster: \"%REQ({CLUSTER_HEADER})%\""));
        }
    }
    let text = out.join("\n") + "\n";
    assert!(!text.contains("header_mutation"), "header_mutation still present");
    assert!(!text.contains(&format!("- {CLUSTER_HEADER}")), "route still removes the cluster header");
    assert!(text.contains("forwarded_cluster"), "no json_format access log to extend");
    assert!(!text.contains("headers_with_underscores_action"), "the gateway still refuses underscores");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("gateway-no-header-removal.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One test: the topology uses fixed ports.
#[test]
fn the_filter_replaces_every_client_copy_and_denied_requests_never_leave() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("internal-headers");
    let mut opts = Options::new(base.join("run"));
    opts.gateway_config = gateway_variant(&base);
    let t = Topology::start(&opts).expect("starting the gateway variant");
    let app1 = t.pki().workload("team-app1");
    let sandbox = t.pki().workload("sandbox-default");
    let unique = format!("/internal-headers/{}", std::process::id());

    // Control: without spoofing, the partner sees the headers the filter set (nothing removes them here).
    let plain = format!("{unique}/plain");
    let r = t.client().send(&Call::get(&app1, &plain)).unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("principal_header"), Some(APP1), "{}", r.summary());
    assert_eq!(r.field("cluster_header"), Some("partner-api|team-app1"), "{}", r.summary());

    // Two spoofed copies of each internal header, before and after the filter's own value would go.
    let spoofed = format!("{unique}/spoofed");
    let call = Call::get(&app1, &spoofed)
        .header(PRINCIPAL_HEADER, APP2)
        .header(CLUSTER_HEADER, "partner-api|team-app2")
        .header(PRINCIPAL_HEADER, "spiffe://cluster.local/ns/admin/sa/root")
        .header(CLUSTER_HEADER, "partner-api|team-app2");
    let r = t.client().send(&call).unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("client_subject"), Some("CN=team.app1"), "{}", r.summary());
    assert_eq!(r.field("principal_header"), Some(APP1), "{}", r.summary());
    assert_eq!(r.field("cluster_header"), Some("partner-api|team-app1"), "{}", r.summary());
    // Envoy's %REQ()% joins every value of a header: exactly one survived, the filter's.
    let entry = t.gateway_access_log_entry(&spoofed).expect("access-log entry");
    assert_eq!(entry["forwarded_principal"], APP1, "{entry}");
    assert_eq!(entry["forwarded_cluster"], "partner-api|team-app1", "{entry}");

    // Underscore spellings, which the partner (nginx with underscores_in_headers, like CGI/WSGI and many
    // frameworks) reads as the gateway's headers: the filter removes them from what it forwards.
    let underscores = format!("{unique}/underscores");
    let call = Call::get(&app1, &underscores)
        .header("x_egress_identity_cluster", "partner-api|team-app2")
        .header("x_egress_identity_principal", "spiffe://cluster.local/ns/admin/sa/root")
        .header("x_forwarded_client_cert", "By=spiffe://cluster.local/ns/admin/sa/root");
    let r = t.client().send(&call).unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.field("principal_header"), Some(APP1), "{}", r.summary());
    assert_eq!(r.field("cluster_header"), Some("partner-api|team-app1"), "{}", r.summary());
    assert_eq!(r.field("xfcc"), Some(""), "{}", r.summary());

    // A denied caller with a spoofed cluster header is answered by the gateway; the partner never sees it.
    let denied = format!("{unique}/denied");
    let r = t
        .client()
        .send(
            &Call::get(&sandbox, &denied)
                .header(CLUSTER_HEADER, "partner-api|team-app1")
                .header(PRINCIPAL_HEADER, APP1),
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!(r.field("reason"), Some("no_matching_allow"), "{}", r.summary());
    let marker = format!("{unique}/marker");
    assert_eq!(t.client().send(&Call::get(&app1, &marker)).unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.external_requests_for(&marker).is_empty() {
        assert!(Instant::now() < deadline, "marker never reached the partner");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.external_requests_for(&denied).is_empty(), "the denied request reached the partner");
}
