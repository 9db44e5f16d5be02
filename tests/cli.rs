//! The native CLI, run as a user would.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

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
