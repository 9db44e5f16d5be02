//! End-to-end: the real filter (`dist/egress_identity.wasm`, built by `make build`) in the real gateway
//! (`envoy/gateway.yaml`) in front of a real mTLS partner server (`envoy/external-server/nginx.conf`).
//!
//! One topology per test binary, started on first use and shared by the tests (which may run in parallel
//! threads); its processes die with the test binary. Needs `envoy` (`$ENVOY_BIN` or `.venv/bin/envoy`),
//! `nginx` and `curl`. Run dir: `target/tmp/e2e/` (logs in `logs/`).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::pki::{certificate_serial, CertFiles, Pki, WorkloadSpec};
use egress_identity_harness::topology::{self, Options, Topology};
use serde_json::Value;

const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";
const APP2: &str = "spiffe://cluster.local/ns/team/sa/app2";
/// Counter of requests accepted only by `acceptLegacyKumaSans` (see tests/legacy_kuma.rs).
const LEGACY_KUMA_METRIC: &str = "egress_identity_legacy_kuma_sans_total";

fn topo() -> &'static Topology {
    static TOPOLOGY: OnceLock<Result<Topology, String>> = OnceLock::new();
    let t = TOPOLOGY.get_or_init(|| {
        let run_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        Topology::start(&Options::new(run_dir)).map_err(|e| e.to_string())
    });
    match t {
        Ok(t) => t,
        Err(e) => panic!("could not start the e2e topology: {e}"),
    }
}

fn unique_path(prefix: &str, test: &str) -> String {
    egress_identity_harness::unique_path(&format!("{prefix}/{test}"))
}

fn workload(name: &str) -> CertFiles {
    topo().pki().workload(name)
}

/// A fresh mesh-CA-signed workload certificate for a negative test.
fn issue(name: &str, spec: WorkloadSpec) -> CertFiles {
    topo().pki().issue_workload(name, &spec).expect("issuing a workload certificate")
}

fn send(call: &Call) -> Response {
    topo().client().send(call).expect("running curl")
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("<missing>")
}

/// The partner's log entry for `path`, waiting briefly for nginx to write it.
fn partner_entry(path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = topo().external_requests_for(path).into_iter().next() {
            return e;
        }
        assert!(Instant::now() < deadline, "no partner access-log entry for {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Proves `path` never reached the partner: an allowed marker request sent afterwards has been logged
/// (nginx is a single process and logs a request before reading the next), and `path` has not.
fn assert_never_reached(path: &str) {
    let marker = unique_path("/e2e-marker", "after");
    let r = send(&Call::get(&workload("team-app1"), &marker));
    assert_eq!(r.status, 200, "marker request failed: {}", r.summary());
    partner_entry(&marker);
    let seen = topo().external_requests_for(path);
    assert!(seen.is_empty(), "request {path} reached the partner: {seen:?}");
}

/// 403 with the documented deny body, and the request never reached the partner.
fn assert_denied(r: &Response, path: &str, layer: &str, reason: &str, policy: Option<&str>) {
    assert_eq!(r.status, 403, "expected 403 {layer}/{reason}, got {}", r.summary());
    let j = r.json.as_ref().unwrap_or_else(|| panic!("deny body is not JSON: {:?}", r.body));
    assert_eq!(field(j, "decision"), "deny", "body {j}");
    assert_eq!(field(j, "layer"), layer, "body {j}");
    assert_eq!(field(j, "reason"), reason, "body {j}");
    match policy {
        Some(p) => assert_eq!(field(j, "policy"), p, "body {j}"),
        None => assert!(j.get("policy").is_none_or(Value::is_null), "expected no policy, body {j}"),
    }
    assert_never_reached(path);
}

/// 200 from the partner, which saw the external identity `cn` and none of the internal headers.
fn assert_forwarded_as(r: &Response, path: &str, cn: &str) {
    assert_eq!(r.status, 200, "expected 200 from the partner, got {}", r.summary());
    let j = r.json.as_ref().unwrap_or_else(|| panic!("partner body is not JSON: {:?}", r.body));
    assert_eq!(field(j, "client_subject"), format!("CN={cn}"), "body {j}");
    // The very certificate the harness issued for that identity and published through SDS.
    let serial = certificate_serial(&topo().pki().external_identity(cn).cert).expect("serial");
    assert_eq!(egress_identity_harness::pki::normalize_serial(field(j, "client_serial")), serial, "body {j}");
    assert_eq!(field(j, "uri"), path, "body {j}");
    assert_eq!(field(j, "host"), "api.partner.example", "body {j}");
    for h in ["principal_header", "cluster_header", "xfcc"] {
        assert_eq!(field(j, h), "", "the partner saw {h}: {j}");
    }
    let logged = partner_entry(path);
    assert_eq!(field(&logged, "client_subject"), format!("CN={cn}"), "partner log {logged}");
    assert_eq!(field(&logged, "client_verify"), "SUCCESS", "partner log {logged}");
}

#[test]
fn app1_reaches_partner_as_team_app1() {
    let path = unique_path("/e2e", "app1");
    let r = send(&Call::get(&workload("team-app1"), &path));
    assert_forwarded_as(&r, &path, "team.app1");
}

#[test]
fn app2_reaches_partner_as_team_app2() {
    let path = unique_path("/e2e", "app2");
    let r = send(&Call::get(&workload("team-app2"), &path).method("POST"));
    assert_forwarded_as(&r, &path, "team.app2");
}

#[test]
fn sandbox_caller_has_no_gateway_allow() {
    let path = unique_path("/e2e", "sandbox");
    let r = send(&Call::get(&workload("sandbox-default"), &path));
    assert_denied(&r, &path, "gateway", "no_matching_allow", None);
}

#[test]
fn app3_is_denied_at_destination_layer() {
    let path = unique_path("/e2e", "app3");
    let r = send(&Call::get(&workload("team-app3"), &path));
    assert_denied(&r, &path, "destination", "no_matching_allow", None);
}

#[test]
fn quarantine_deny_beats_allow() {
    let path = unique_path("/e2e", "quarantine");
    let r = send(&Call::get(&workload("quarantine-default"), &path));
    assert_denied(&r, &path, "gateway", "denied_by_policy", Some("deny-quarantine"));
}

#[test]
fn admin_paths_are_denied_even_for_app1() {
    let path = unique_path("/admin", "e2e");
    let r = send(&Call::get(&workload("team-app1"), &path));
    assert_denied(&r, &path, "destination", "denied_by_policy", Some("deny-admin-paths"));
}

/// Path tricks that would slip past a naive "/admin*" match are normalized by Envoy before the filter runs
/// (or refused), so they are denied like "/admin" and never reach the partner.
#[test]
fn path_tricks_cannot_bypass_a_path_deny() {
    for (n, trick) in ["//admin", "/./admin", "/x/../admin", "/%61dmin", "/admin%2F..%2Fok"].iter().enumerate() {
        let path = format!("{trick}/{}", unique_path("", &format!("trick{n}")).trim_start_matches('/'));
        let r = send(&Call::get(&workload("team-app1"), &path));
        match r.status {
            403 => assert_eq!(r.field("reason"), Some("denied_by_policy"), "{trick}: {}", r.summary()),
            400 => {} // refused by Envoy itself (escaped slash)
            _ => panic!("{trick} was not denied: {}", r.summary()),
        }
        assert_never_reached(&path);
    }
}

#[test]
fn unknown_host_is_unknown_destination() {
    let path = unique_path("/e2e", "unknown-host");
    let r = send(&Call::get(&workload("team-app1"), &path).host("unknown.example"));
    assert_denied(&r, &path, "destination", "unknown_destination", None);
}

#[test]
fn known_host_on_undeclared_port_is_unknown_destination() {
    let path = unique_path("/e2e", "unknown-port");
    let r = send(&Call::get(&workload("team-app1"), &path).host("api.partner.example:9443"));
    assert_denied(&r, &path, "destination", "unknown_destination", None);
}

#[test]
fn an_http_request_to_a_tcp_destination_is_a_protocol_mismatch() {
    // partner-tcp declares api.partner.example:10444 as a tcp destination: it is reached through the L4
    // listener, never by an HTTP request naming it (its policies were written for connections).
    let path = unique_path("/e2e", "protocol-mismatch");
    let r = send(&Call::get(&workload("team-app1"), &path).host("api.partner.example:10444"));
    assert_denied(&r, &path, "destination", "protocol_mismatch", None);
}

#[test]
fn two_uri_sans_are_rejected() {
    let cert = issue("two-uri-sans", WorkloadSpec { uri_sans: vec![APP1.into(), APP2.into()], ..Default::default() });
    let path = unique_path("/e2e", "two-sans");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "multiple_uri_sans", None);
}

#[test]
fn no_uri_san_is_rejected() {
    let cert = issue(
        "no-uri-san",
        WorkloadSpec {
            common_name: Some("no-uri-san".into()),
            dns_sans: vec!["app1.team.svc".into()],
            ..Default::default()
        },
    );
    let path = unique_path("/e2e", "no-san");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "no_uri_san", None);
}

#[test]
fn non_spiffe_uri_san_is_rejected() {
    let cert = issue("not-spiffe", WorkloadSpec::spiffe("https://cluster.local/ns/team/sa/app1"));
    let path = unique_path("/e2e", "not-spiffe");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "invalid_spiffe_id", None);
}

#[test]
fn ca_certificate_as_client_is_rejected() {
    let cert = issue("ca-true", WorkloadSpec { is_ca: true, ..WorkloadSpec::spiffe(APP1) });
    let path = unique_path("/e2e", "ca-true");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "ca_certificate", None);
}

#[test]
fn key_cert_sign_client_is_rejected() {
    let cert = issue("key-cert-sign", WorkloadSpec { key_cert_sign: true, ..WorkloadSpec::spiffe(APP1) });
    let path = unique_path("/e2e", "key-cert-sign");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "ca_certificate", None);
}

#[test]
fn foreign_trust_domain_is_rejected() {
    let cert = issue("evil-app1", WorkloadSpec::spiffe("spiffe://evil.example/ns/team/sa/app1"));
    let path = unique_path("/e2e", "evil");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "untrusted_trust_domain", None);
}

/// `localTrustDomain: cluster.local` with aliases example.com and example.org: a workload of either
/// alias matches the policies and the mapping written for cluster.local/ns/team/sa/app1.
#[test]
fn trust_domain_aliases_match_cluster_local_policies() {
    for td in ["example.com", "example.org"] {
        let cert = issue(&format!("app1-{td}"), WorkloadSpec::spiffe(&format!("spiffe://{td}/ns/team/sa/app1")));
        let path = unique_path("/e2e", &format!("alias-{td}"));
        assert_forwarded_as(&send(&Call::get(&cert, &path)), &path, "team.app1");
        // Aliases are matched as the local trust domain for policies, not promoted to any other identity.
        let app3 = issue(&format!("app3-{td}"), WorkloadSpec::spiffe(&format!("spiffe://{td}/ns/team/sa/app3")));
        let path = unique_path("/e2e", &format!("alias-app3-{td}"));
        let r = send(&Call::get(&app3, &path));
        assert_denied(&r, &path, "destination", "no_matching_allow", None);
    }
}

/// The default (strict) gateway refuses Kuma's legacy certificates (one SPIFFE ID plus kuma:// URI SANs)
/// and does not count them as legacy requests.
#[test]
fn legacy_kuma_certificate_is_refused_by_the_strict_gateway() {
    let cert = issue(
        "kuma-legacy-strict",
        WorkloadSpec { uri_sans: vec![APP1.into(), "kuma://kuma.io/service/app1".into()], ..Default::default() },
    );
    let path = unique_path("/e2e", "kuma-legacy-strict");
    let r = send(&Call::get(&cert, &path));
    assert_denied(&r, &path, "principal", "multiple_uri_sans", None);
    topo().settle_counters();
    let counted = topo().metric(LEGACY_KUMA_METRIC, &[]);
    assert_eq!(counted, 0, "{LEGACY_KUMA_METRIC} counted a request on the strict gateway");
}

#[test]
fn no_client_certificate_is_refused_at_tls() {
    let path = unique_path("/e2e", "no-cert");
    let r = send(&Call::get(&workload("team-app1"), &path).without_certificate());
    assert_eq!(r.status, 0, "expected the TLS handshake to fail, got {}", r.summary());
    assert_ne!(r.curl_exit, 0, "curl reported success without a client certificate");
    assert_never_reached(&path);
}

#[test]
fn spoofed_internal_headers_do_not_change_identity() {
    let path = unique_path("/e2e", "spoof");
    let call = Call::get(&workload("team-app1"), &path)
        .header("x-egress-identity-cluster", "partner-api|team-app2")
        .header("x-egress-identity-principal", APP2)
        .header("x-forwarded-client-cert", &format!("By=spiffe://cluster.local/ns/egress;URI={APP2}"));
    let r = send(&call);
    assert_forwarded_as(&r, &path, "team.app1");
}

#[test]
fn spoofed_headers_cannot_unlock_a_denied_caller() {
    let path = unique_path("/e2e", "spoof-sandbox");
    let call = Call::get(&workload("sandbox-default"), &path)
        .header("x-egress-identity-cluster", "partner-api|team-app1")
        .header("x-egress-identity-principal", APP1);
    let r = send(&call);
    assert_denied(&r, &path, "gateway", "no_matching_allow", None);
}

#[test]
fn partner_never_sees_internal_headers_or_xfcc() {
    let a = unique_path("/e2e", "headers-app1");
    let b = unique_path("/e2e", "headers-app2");
    assert_forwarded_as(&send(&Call::get(&workload("team-app1"), &a)), &a, "team.app1");
    assert_forwarded_as(&send(&Call::get(&workload("team-app2"), &b)), &b, "team.app2");
    let all = topo().external_requests();
    assert!(all.len() >= 2, "partner log has {} entries", all.len());
    for e in &all {
        for h in ["principal_header", "cluster_header", "xfcc"] {
            assert_eq!(field(e, h), "", "the partner saw {h}: {e}");
        }
    }
}

#[test]
fn pki_reloaded_from_disk_issues_accepted_certificates() {
    let pki = Pki::load(topo().pki().dir()).expect("loading the PKI from disk");
    let cert = pki.issue_workload("reloaded-app2", &WorkloadSpec::spiffe(APP2)).expect("issuing");
    let path = unique_path("/e2e", "reloaded");
    assert_forwarded_as(&send(&Call::get(&cert, &path)), &path, "team.app2");
}

/// The gateway policy with its first action misspelt.
const INVALID_CONFIG: &str = r#"{
  "trustDomains": ["cluster.local"],
  "identities": [ { "name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"] } ],
  "gateway": { "policies": [ { "name": "allow-team", "action": "ALOW",
    "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
  "destinations": [ { "name": "partner-api", "host": "api.partner.example", "port": 443,
    "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ],
    "identities": ["team.app1"] } ]
}"#;

#[test]
fn invalid_plugin_config_stops_envoy_and_names_the_field() {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-config");
    let wasm = topology::wasm_path();
    let timeout = Duration::from_secs(60);

    // Control: the same configuration, spelt right, starts.
    let valid = INVALID_CONFIG.replace("\"ALOW\"", "\"ALLOW\"");
    let ok = topology::try_start_envoy(&base.join("valid"), &wasm, &valid, timeout).expect("starting envoy");
    assert!(ok.started, "envoy did not start with a valid plugin configuration:\n{}", ok.summary());

    let bad = topology::try_start_envoy(&base.join("invalid"), &wasm, INVALID_CONFIG, timeout).expect("starting envoy");
    assert!(!bad.started, "envoy started with \"action\": \"ALOW\"; log:\n{}", bad.summary());
    assert!(bad.exit.is_some_and(|s| !s.success()), "envoy did not exit with an error: {:?}", bad.exit);
    let line = bad.log.lines().find(|l| l.contains("gateway.policies[0].action"));
    assert!(line.is_some(), "no log line names gateway.policies[0].action; log:\n{}", bad.summary());
}

/// `envoy --mode validate` on both bootstraps, in a run directory with the filter and the SDS resources:
/// envoy/gateway.yaml and the production SPIRE bootstrap envoy/spire/gateway.yaml (whose SPIRE agent
/// need not exist for validation). Validation does load the filter and its configuration, and checks
/// that the SDS files exist: the control run without sds/ must fail.
#[test]
fn gateway_bootstraps_validate() {
    let run_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-validate");
    let root = egress_identity_harness::repo_root();
    topology::populate_run_dir(&run_dir, &topology::wasm_path(), &root.join("envoy/external-server/nginx.conf"))
        .expect("preparing the run directory");
    for config in ["envoy/gateway.yaml", "envoy/spire/gateway.yaml"] {
        let v = topology::validate_bootstrap(&root.join(config), &run_dir).expect("running envoy");
        assert!(v.ok, "{config} does not validate:\n{}", v.output);
        assert!(v.output.contains("OK"), "{config}: {}", v.output);
    }

    // Control: the same check without the SDS resources fails, so it does look at them.
    std::fs::rename(run_dir.join("sds"), run_dir.join("sds.away")).unwrap();
    for config in ["envoy/gateway.yaml", "envoy/spire/gateway.yaml"] {
        let v = topology::validate_bootstrap(&root.join(config), &run_dir).expect("running envoy");
        assert!(!v.ok, "{config} validated without sds/:\n{}", v.output);
        assert!(v.output.contains("sds/"), "{config}: {}", v.output);
    }
    std::fs::rename(run_dir.join("sds.away"), run_dir.join("sds")).unwrap();
}

/// A gateway variant ([`topology::gateway_variant`]) differs from envoy/gateway.yaml only in the plugin
/// configuration: every other line is identical, the old block parses as the original configuration and
/// the new one as the replacement.
#[test]
fn gateway_variant_replaces_only_the_plugin_configuration() {
    let original = std::fs::read_to_string(egress_identity_harness::repo_root().join("envoy/gateway.yaml")).unwrap();
    let config: Value = serde_json::from_str(&topology::plugin_config(&original).unwrap()).unwrap();
    assert_eq!(config["localTrustDomain"], "cluster.local", "{config}");
    let mut changed = config.clone();
    changed["acceptLegacyKumaSans"] = Value::Bool(true);
    let json = serde_json::to_string_pretty(&changed).unwrap();
    let variant = topology::gateway_variant(&original, &json).unwrap();
    assert_ne!(variant, original);
    only_plugin_config_differs(&original, &variant, &config, &changed).unwrap();
    // And the check cannot be fooled: a change elsewhere, or a different plugin configuration, is noticed.
    let tampered = variant.replace("port_value: 18443", "port_value: 18444");
    let e = only_plugin_config_differs(&original, &tampered, &config, &changed).unwrap_err();
    assert!(e.contains("outside the plugin block"), "{e}");
    let e = only_plugin_config_differs(&original, &variant, &config, &config).unwrap_err();
    assert!(e.contains("variant's plugin configuration"), "{e}");
}

/// Outside the plugin configuration blocks (the block scalars after `value: |`, located here independently
/// of the harness: one for the HTTP filter, one for the network filter) `variant` is `original` line for
/// line, and every block parses as `old` in the original and as `new` in the variant.
fn only_plugin_config_differs(original: &str, variant: &str, old: &Value, new: &Value) -> Result<(), String> {
    // (lines outside the blocks, the blocks' texts)
    let split = |text: &str| -> (Vec<String>, Vec<String>) {
        let lines: Vec<&str> = text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        let (mut outside, mut blocks) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < lines.len() {
            outside.push(lines[i].to_string());
            if lines[i].trim() == "value: |" {
                let base = indent(lines[i]);
                let end = (i + 1..lines.len())
                    .find(|&j| !lines[j].trim().is_empty() && indent(lines[j]) <= base)
                    .unwrap_or(lines.len());
                blocks.push(lines[i + 1..end].join("\n"));
                i = end;
            } else {
                i += 1;
            }
        }
        (outside, blocks)
    };
    let ((a, a_blocks), (b, b_blocks)) = (split(original), split(variant));
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        return Err(format!("outside the plugin block: {:?} became {:?}", a.get(i), b.get(i)));
    }
    if a_blocks.is_empty() || a_blocks.len() != b_blocks.len() {
        return Err(format!("{} plugin blocks in the original, {} in the variant", a_blocks.len(), b_blocks.len()));
    }
    for (name, blocks, want) in [("original", &a_blocks, old), ("variant", &b_blocks, new)] {
        for block in blocks {
            let json: Value =
                serde_json::from_str(block).map_err(|e| format!("{name}'s plugin block is not JSON: {e}"))?;
            if &json != want {
                return Err(format!("{name}'s plugin configuration is {json}, not {want}"));
            }
        }
    }
    Ok(())
}

/// `Expect: 100-continue` from a denied caller: the gateway must answer 403 and nothing else -- a
/// `100 Continue` first would invite the body of a request that is refused anyway (and tell a scanner the
/// request got past the front door).
#[test]
fn a_denied_request_never_receives_100_continue() {
    let t = topo();
    for (who, path) in [("quarantine-default", "/e2e/expect/quarantine"), ("team-app1", "/admin/e2e/expect")] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: api.partner.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        );
        let got = egress_identity_harness::client::raw_exchange(
            &t.pki().mesh_ca_cert(),
            topology::GATEWAY_PORT,
            egress_identity_harness::pki::GATEWAY_HOST,
            &workload(who),
            head.as_bytes(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(got.starts_with("HTTP/1.1 403 "), "{who}: the gateway answered:\n{got}");
        assert!(!got.contains(" 100 Continue"), "{who}: the gateway answered:\n{got}");
        assert_never_reached(path);
    }
}

/// The module says which build it is: `egress_identity_build_info{version,revision}` is 1, labelled by the
/// stats tags the gateway renders.
#[test]
fn the_module_reports_its_version_and_revision() {
    let samples = topo().prometheus();
    let info: Vec<_> = samples.iter().filter(|s| s.family == "egress_identity_build_info").collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let sample = info[0];
    assert_eq!(sample.value, 1.0);
    assert_eq!(sample.labels.get("version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    let revision = sample.labels.get("revision").cloned().unwrap_or_default();
    let hex = revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit());
    assert!(hex || revision == "unknown", "revision {revision:?}");
}
