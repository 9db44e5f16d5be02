//! The native CLI, run as a user would.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-identity")).args(args).output().expect("running the CLI")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn spiffe_id_prints_trust_domain_and_path_of_a_valid_id() {
    let out = cli(&["spiffe-id", "spiffe://cluster.local/ns/team/sa/app1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("trust domain: cluster.local\n"), "{stdout}");
    assert!(stdout.contains("path: /ns/team/sa/app1\n"), "{stdout}");
}

#[test]
fn spiffe_id_exits_1_with_the_rule_that_failed() {
    let long_td = format!("spiffe://{}/a", "a".repeat(256));
    for (id, code) in [
        ("https://cluster.local/a", "wrong_scheme"),
        ("spiffe:///a", "empty_trust_domain"),
        (long_td.as_str(), "trust_domain_too_long"),
        ("spiffe://Cluster.local/a", "bad_trust_domain_char"),
        ("spiffe://td/a//b", "empty_path_segment"),
        ("spiffe://td/a/../b", "dot_path_segment"),
        ("spiffe://td/a/", "trailing_slash"),
        ("spiffe://td/a%20b", "percent_encoding"),
        ("spiffe://td:443/a", "port"),
        ("spiffe://me@td/a", "userinfo"),
        ("spiffe://td/a?q=1", "query"),
        ("spiffe://td/a#f", "fragment"),
    ] {
        let out = cli(&["spiffe-id", id]);
        assert_eq!(out.status.code(), Some(1), "{id}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("({code})")), "{id}: {stderr}");
        assert!(out.stdout.is_empty(), "{id}");
    }
}

#[test]
fn validate_reports_every_error_with_its_path() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"trustDomains": ["Bad"], "destinations": [{"name": "d", "hosts": ["x.example"], "ports": [0],
            "identities": [{"name": "i", "cluster": "c", "principals": ["*"]}]}]}"#,
    )
    .unwrap();
    let out = cli(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("trustDomains[0]: \"Bad\""), "{stderr}");
    assert!(stderr.contains("destinations[0].ports[0]: 0 is not a port"), "{stderr}");

    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"trustDomains": ["cluster.local"], "destinations": [{"name": "d", "hosts": ["x.example"], "ports": [443],
            "identities": [{"name": "i", "cluster": "c", "principals": ["*"]}]}]}"#,
    )
    .unwrap();
    let out = cli(&["validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid (0 gateway policies, 1 destinations)"));
}

#[test]
fn explain_exits_0_on_allow_3_on_deny_and_1_on_a_bad_configuration() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    let explain = |principal: &str, path: &str| {
        cli(&["explain", policy, "--principal", principal, "--host", "api.partner.example", "--path", path, "--json"])
    };
    let allowed = explain("spiffe://cluster.local/ns/team/sa/app1", "/v1/orders");
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
    let report: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(report["decision"]["decision"], "allow");
    assert_eq!(report["decision"]["identity"], "team.app1");

    let denied = explain("spiffe://cluster.local/ns/team/sa/app1", "/admin/users");
    assert_eq!(denied.status.code(), Some(3), "{}", text(&denied.stderr));
    let report: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(report["decision"]["reason"], "denied_by_policy");
    assert_eq!(report["decision"]["policy"], "deny-admin-paths");

    // Text output, a caller without a principal: denied too.
    let out = cli(&["explain", policy, "--host", "api.partner.example"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).contains("reason=no_principal"), "{}", text(&out.stdout));

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-explain");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"destinations": []}"#).unwrap();
    let out = cli(&["explain", bad.to_str().unwrap(), "--host", "api.partner.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("destinations: must declare"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}
