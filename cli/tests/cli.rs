//! The native CLI, run as a user would.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::process::{Command, Output};

use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::platform::plugin_configuration;

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
        r#"{"trustDomains": ["Bad"], "identities": [{"name": "i", "principals": ["*"]}],
            "destinations": [{"name": "d", "host": "x.example", "port": 0, "identities": ["i"]}]}"#,
    )
    .unwrap();
    let out = cli(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    // Every platform refuses both: each said once, untagged.
    let shown = bad.display();
    assert!(stderr.contains(&format!("{shown}: trustDomains[0]: \"Bad\"")), "{stderr}");
    assert!(stderr.contains(&format!("{shown}: destinations[0].port: 0 is not a port")), "{stderr}");
    assert_eq!(stderr.matches("destinations[0].port: ").count(), 1, "{stderr}");
    assert!(out.stdout.is_empty(), "no platform accepts it: {}", text(&out.stdout));

    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"trustDomains": ["cluster.local"], "identities": [{"name": "i", "principals": ["*"]}],
            "destinations": [{"name": "d", "host": "x.example", "port": 443, "identities": ["i"]}]}"#,
    )
    .unwrap();
    let out = cli(&["validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "valid for envoy, istio-gateway, istio-waypoint, kuma (0 gateway policies, 1 destinations, 1 identities)"
        ),
        "{}",
        text(&out.stdout)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

/// `validate` compiles for every platform unless told which: what one platform refuses fails the policy,
/// each error tagged with the platforms that refuse it when not all of them do.
#[test]
fn validate_checks_every_platform_and_names_those_that_refuse() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    // The demo's single-cluster destinations are Envoy's alone.
    let out = cli(&["validate", demo]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("valid for envoy (2 gateway policies, 5 destinations, 2 identities)"), "{stdout}");
    for platform in ["istio-gateway", "istio-waypoint", "kuma"] {
        for d in [3, 4] {
            let tagged =
                format!("[{platform}] destinations[{d}].singleCluster: {platform} cannot carry single-cluster mode");
            assert!(stderr.contains(&tagged), "{tagged:?} in:\n{stderr}");
        }
    }
    assert!(!stderr.contains("[envoy"), "{stderr}");
    // Asked for Envoy alone: valid, and nothing said of the others.
    let out = cli(&["validate", demo, "--platform", "envoy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid for envoy (2 gateway policies"), "{}", text(&out.stdout));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // Asked for Kuma alone: refused, its errors untagged (every platform asked refuses), nothing valid.
    let out = cli(&["validate", demo, "--platform", "kuma"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("policy.json: destinations[3].singleCluster: kuma cannot carry"), "{stderr}");
    assert!(!stderr.contains("[kuma]"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // One error shared by three platforms: Kuma alone gives callers its MeshIdentity's trust domain.
    let kuma_callers = r#"{"localTrustDomain": "cluster.local",
        "identities": [{"name": "app", "principals": ["spiffe://default.zone-1.mesh.local/ns/team/sa/app1"]}],
        "destinations": [{"name": "d", "host": "x.example", "port": 443, "identities": ["app"]}]}"#;
    let (code, stdout, stderr) = validate_on("kuma-callers", kuma_callers, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.contains("valid for kuma (0 gateway policies, 1 destinations, 1 identities)"), "{stdout}");
    assert!(
        stderr.contains("[envoy, istio-gateway, istio-waypoint] identities[0].principals[0]: ")
            && stderr.contains("not one callers can come from"),
        "{stderr}"
    );
    let (code, _, stderr) = validate_on("kuma-callers", kuma_callers, &["kuma"]);
    assert_eq!(code, Some(0), "{stderr}");

    // What a platform leaves out is a warning, tagged with it; the policy is valid everywhere.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.json");
    let out = cli(&["validate", example]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "valid for envoy, istio-gateway, istio-waypoint, kuma (2 gateway policies, 3 destinations, 2 identities)"
        ),
        "{}",
        text(&out.stdout)
    );
    // Every platform carries every destination of the example: nothing to warn about.
    assert_eq!(text(&out.stderr), "");
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

/// Writes `json` to a file of its own and runs `validate` on it for `platforms` (every platform when none):
/// (exit code, stdout, stderr).
fn validate_on(name: &str, json: &str, platforms: &[&str]) -> (Option<i32>, String, String) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-validate");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, json).unwrap();
    let mut args = vec!["validate", file.to_str().unwrap()];
    for platform in platforms {
        args.extend(["--platform", platform]);
    }
    let out = cli(&args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `validate --platform envoy` of `json` (the demo policy is a plain Envoy one: its single-cluster
/// destinations are Envoy's alone): (exit code, stderr).
fn validate_text(name: &str, json: &str) -> (Option<i32>, String) {
    let (code, _, stderr) = validate_on(name, json, &["envoy"]);
    (code, stderr)
}

/// The demo policy with `edit` applied to its JSON.
fn demo_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json")).unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut policy);
    policy.to_string()
}

#[test]
fn validate_refuses_values_that_can_never_match_naming_the_field_and_why() {
    use serde_json::json;
    // A DENY written with a typo would never deny; explain would say allow. Each is refused instead.
    let deny = |values: serde_json::Value| {
        demo_with(|p| {
            p["gateway"]["policies"][0]["rules"] = json!([{"from": [{"source": values}]}]);
        })
    };
    let at = "gateway.policies[0].rules[0].from[0].source";
    for (name, source, field, why) in [
        (
            "one-slash",
            json!({"principals": ["spiffe:/cluster.local/ns/payments/sa/legacy"]}),
            "principals[0]",
            "scheme",
        ),
        (
            "upper-td",
            json!({"principals": ["spiffe://Cluster.local/ns/payments/sa/legacy"]}),
            "principals[0]",
            "not a SPIFFE ID",
        ),
        ("empty-segment", json!({"principals": ["cluster.local/ns//sa/legacy"]}), "principals[0]", "not a SPIFFE ID"),
        ("https", json!({"principals": ["https://cluster.local/ns/payments/sa/legacy"]}), "principals[0]", "scheme"),
        ("bare", json!({"principals": ["payments/checkout"]}), "principals[0]", "not one callers can come from"),
        ("td-only", json!({"notPrincipals": ["spiffe://cluster.local"]}), "notPrincipals[0]", "names a trust domain"),
        ("namespace", json!({"namespaces": ["Payments"]}), "namespaces[0]", "namespace"),
        ("trust-domain", json!({"trustDomains": ["evil.example"]}), "trustDomains[0]", "not one callers can come from"),
    ] {
        let (code, stderr) = validate_text(name, &deny(source));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{at}.{field}: ")) && stderr.contains(why), "{name}: {stderr}");
    }
    // (The demo's tcp/tls destinations aside: a gateway rule on methods or paths would not apply to them.)
    let operation = |op: serde_json::Value| {
        demo_with(|p| {
            p["gateway"]["policies"][0]["rules"] = json!([{"to": [{"operation": op}]}]);
            if let Some(destinations) = p["destinations"].as_array_mut() {
                destinations.retain(|d| d.get("protocol").is_none());
            }
        })
    };
    let at = "gateway.policies[0].rules[0].to[0].operation";
    for (name, op, field, why) in [
        ("host-port", json!({"notHosts": ["api.partner.example:443"]}), "notHosts[0]", "without its port"),
        ("method", json!({"methods": ["DEL ETE"]}), "methods[0]", "HTTP method"),
        ("path-slash", json!({"paths": ["admin*"]}), "paths[0]", "start with"),
        ("path-query", json!({"paths": ["/admin?debug=1"]}), "paths[0]", "query"),
        ("port-sign", json!({"ports": ["+443"]}), "ports[0]", "not a port"),
    ] {
        let (code, stderr) = validate_text(name, &operation(op));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{at}.{field}: ")) && stderr.contains(why), "{name}: {stderr}");
    }
    // Values the request side normalizes are normalized the same way, not refused.
    let (code, stderr) =
        validate_text("normalized", &operation(json!({"hosts": ["API.Partner.Example."], "methods": ["delete"]})));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn validate_refuses_internal_header_names_that_mean_something_else() {
    for (name, header) in [
        ("host", "host"),
        ("authorization", "authorization"),
        ("pseudo", ":authority"),
        ("underscore", "x_egress_identity"),
        ("envoy", "x-envoy-original-path"),
        ("forwarded", "x-forwarded-for"),
        ("request-id", "x-request-id"),
        ("upper", "X-Egress"),
    ] {
        let json = demo_with(|p| p["headers"] = serde_json::json!({"principal": header}));
        let (code, stderr) = validate_text(&format!("header-{name}"), &json);
        assert_eq!(code, Some(1), "{header}: {stderr}");
        assert!(stderr.contains("headers.principal: "), "{header}: {stderr}");
    }
}

#[test]
fn validate_reports_every_schema_error_and_bounds_the_document() {
    use serde_json::json;
    let json = demo_with(|p| {
        p["gateway"]["policies"][0]["action"] = json!("ALOW");
        p["gateway"]["policies"][1]["rules"][0]["when"] = json!([{"key": "k"}]);
        p["destinations"][0]["port"] = json!("https");
        p["identities"][1]["principals"] = json!("spiffe://cluster.local/ns/team/sa/app2");
        p["trustDomain"] = json!("x");
    });
    let (code, stderr) = validate_text("schema", &json);
    assert_eq!(code, Some(1), "{stderr}");
    for path in [
        "gateway.policies[0].action: unknown variant `ALOW`",
        "gateway.policies[1].rules[0].when: unknown field `when`",
        "destinations[0].port: invalid type",
        "identities[1].principals: invalid type",
        "trustDomain: unknown field `trustDomain`",
    ] {
        assert!(stderr.contains(path), "missing {path:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("missing field `action`"), "an artifact of the first error was reported:\n{stderr}");

    let (code, stderr) = validate_text("trailing", &format!("{}\n}} garbage", demo_with(|_| {})));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("trailing characters at line 2"), "{stderr}");

    let long_name = "d".repeat(200);
    let (code, stderr) = validate_text("long-name", &demo_with(|p| p["destinations"][0]["name"] = json!(long_name)));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("destinations[0].name: ") && stderr.contains("(200 bytes) is not a DNS label"), "{stderr}");

    let huge = format!("{{\"destinations\": [], \"pad\": \"{}\"}}", "x".repeat(17 * 1024 * 1024));
    let (code, stderr) = validate_text("huge", &huge);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("at most 16777216 are accepted"), "{}", &stderr[..stderr.len().min(300)]);
}

#[test]
fn a_trust_domain_id_is_a_spiffe_id_but_never_a_caller() {
    let out = cli(&["spiffe-id", "spiffe://cluster.local"]);
    assert_eq!(out.status.code(), Some(0), "it is a SPIFFE ID: {}", text(&out.stderr));
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    let out =
        cli(&["explain", policy, "--principal", "spiffe://cluster.local", "--host", "api.partner.example", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decision"]["layer"], "principal");
    assert_eq!(report["decision"]["reason"], "trust_domain_id");
}

#[test]
fn explain_takes_an_l4_connection_by_sni_and_port() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    let explain = |principal: &str, extra: &[&str]| {
        let mut args = vec!["explain", policy, "--principal", principal, "--port", "10444", "--json"];
        args.extend_from_slice(extra);
        let out = cli(&args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), report, text(&out.stderr))
    };
    let app1 = "spiffe://cluster.local/ns/team/sa/app1";
    // The tcp destination on the same host as the HTTP one: the port tells them apart.
    let (code, report, stderr) = explain(app1, &["--sni", "api.partner.example"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["decision"]["destination"], "partner-tcp");
    assert_eq!(report["decision"]["protocol"], "tcp");
    assert_eq!(report["decision"]["cluster"], "partner-tcp|team-app1");
    assert_eq!(report["request"]["sni"], "api.partner.example");
    // Passthrough: allowed when the ClientHello names the same host, refused when it names another.
    let (code, report, _) = explain(app1, &["--sni", "tls.partner.example"]);
    assert_eq!((code, report["decision"]["protocol"].as_str()), (Some(0), Some("tls")), "{report}");
    let (code, report, _) = explain(app1, &["--sni", "tls.partner.example", "--inner-sni", "api.partner.example"]);
    assert_eq!(code, Some(3), "{report}");
    assert_eq!(
        (report["decision"]["layer"].as_str(), report["decision"]["reason"].as_str()),
        (Some("destination"), Some("sni_mismatch"))
    );
    // The destination layer of the passthrough destination: app2 is not allowed.
    let (code, report, _) = explain("spiffe://cluster.local/ns/team/sa/app2", &["--sni", "tls.partner.example"]);
    assert_eq!((code, report["decision"]["reason"].as_str()), (Some(3), Some("no_matching_allow")), "{report}");
    // The HTTP destination's port, asked as a connection.
    let out = cli(&["explain", policy, "--principal", app1, "--sni", "api.partner.example", "--port", "443"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).contains("reason=protocol_mismatch"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("connection:   sni api.partner.example port 443"), "{}", text(&out.stdout));
    // Methods and paths mean nothing to a connection.
    let out = cli(&["explain", policy, "--sni", "api.partner.example", "--path", "/admin"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn validate_refuses_http_only_fields_where_connections_are_decided() {
    let on_l4 = demo_with(|p| {
        p["destinations"][1]["policies"][0]["rules"][0]["to"] =
            serde_json::json!([{"operation": {"methods": ["GET"]}}]);
    });
    let (code, stderr) = validate_text("l4-methods", &on_l4);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("destinations[1].policies[0].rules[0].to[0].operation.methods: HTTP-only"), "{stderr}");
    let on_gateway = demo_with(|p| {
        p["gateway"]["policies"][0]["rules"][0]["to"] = serde_json::json!([{"operation": {"paths": ["/admin*"]}}]);
    });
    let (code, stderr) = validate_text("gateway-paths", &on_gateway);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("gateway.policies[0].rules[0].to[0].operation.paths: HTTP-only"), "{stderr}");
    // The same rule on the HTTP destination is fine.
    let on_http = demo_with(|p| {
        p["destinations"][0]["policies"][0]["rules"][0]["to"] =
            serde_json::json!([{"operation": {"methods": ["DELETE"]}}]);
    });
    assert_eq!(validate_text("http-methods", &on_http).0, Some(0));
}

/// Envoy files a cluster's stats under its name split at '.': identity names may have dots (`team.app1`)
/// because no cluster is named by hand any more; the derived cluster writes them as '-'. A name that could
/// not be written into a cluster, a file or a Secret is refused.
#[test]
fn identity_names_with_dots_give_clusters_without_them() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    let explain = |principal: &str, extra: &[&str]| {
        let mut args = vec!["explain", policy, "--principal", principal, "--json"];
        args.extend_from_slice(extra);
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {}{}", text(&out.stdout), text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["decision"].clone()
    };
    let app2 = "spiffe://cluster.local/ns/team/sa/app2";
    let d = explain(app2, &["--host", "api.partner.example"]);
    assert_eq!((d["identity"].as_str(), d["cluster"].as_str()), (Some("team.app2"), Some("partner-api|team-app2")));
    let d = explain(app2, &["--sni", "api.partner.example", "--port", "10444"]);
    assert_eq!((d["identity"].as_str(), d["cluster"].as_str()), (Some("team.app2"), Some("partner-tcp|team-app2")));
    // Single-cluster mode: one cluster for the destination, the identity's SDS secret by its own name.
    let d = explain(app2, &["--host", "api.partner.example", "--port", "8443"]);
    assert_eq!(
        (d["identity"].as_str(), d["cluster"].as_str(), d["secret"].as_str()),
        (Some("team.app2"), Some("partner-shared|shared"), Some("team.app2"))
    );
    // Kuma names the same identity's cluster after the MeshExternalService `<destination>-<identity>`.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.json")).unwrap();
    let kuma = PlatformSpec::Kuma {
        mesh: "default".into(),
        zone: "zone-1".into(),
        namespace: "kuma-system".into(),
        egress_port: 10002,
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-explain");
    std::fs::create_dir_all(&dir).unwrap();
    let kuma_configuration = dir.join("kuma-plugin-configuration.json");
    std::fs::write(&kuma_configuration, plugin_configuration(&example, &kuma).unwrap()).unwrap();
    let out = cli(&[
        "explain",
        kuma_configuration.to_str().unwrap(),
        "--principal",
        "spiffe://default.zone-1.mesh.local/ns/team/sa/app2",
        "--host",
        "partner-api.extsvc.mesh.local",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decision"]["identity"], "team.app2");
    assert_eq!(report["decision"]["cluster"], "kri_extsvc_default_zone-1_kuma-system_partner-api-team-app2_80");
    for (name, bad) in [("pipe", "team|app1"), ("upper", "Team.App1"), ("edge-dot", "team.app1.")] {
        let json = demo_with(|p| {
            p["identities"][0]["name"] = serde_json::json!(bad);
            for d in p["destinations"].as_array_mut().unwrap() {
                if let Some(list) = d.get_mut("identities") {
                    list[0] = serde_json::json!(bad);
                }
            }
        });
        let (code, stderr) = validate_text(&format!("identity-{name}"), &json);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(stderr.contains(&format!("identities[0].name: {bad:?} is not an identity name")), "{bad}: {stderr}");
    }
}

/// What the partner sees of the chosen identity (its declared certificate, `CN=<name>` by default), and
/// nothing of the gateway's for a tls passthrough.
#[test]
fn explain_says_what_the_partner_sees() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/policy.json");
    let app1 = "spiffe://cluster.local/ns/team/sa/app1";
    let out = cli(&["explain", policy, "--principal", app1, "--host", "api.partner.example"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("decision:     allow as team.app1 (cluster partner-api|team-app1)\n"), "{stdout}");
    assert!(stdout.contains("partner sees: CN=team.app1\n"), "{stdout}");
    let out = cli(&["explain", policy, "--principal", app1, "--sni", "tls.partner.example", "--port", "10444"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("allow as passthrough (cluster partner-tls|passthrough)"), "{stdout}");
    assert!(stdout.contains("partner sees: the caller's own certificate (tls passthrough)\n"), "{stdout}");
    // A declared certificate: its common name and every DNS SAN (lower case), as the partner reads them.
    let declared = demo_with(|p| {
        p["identities"][0]["certificate"] =
            serde_json::json!({"commonName": "partner-issued-17", "dnsNames": ["App1.Partner.Example"]});
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-explain");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("certificate.json");
    std::fs::write(&file, declared).unwrap();
    let out = cli(&["explain", file.to_str().unwrap(), "--principal", app1, "--host", "api.partner.example", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decision"]["presents"], "CN=partner-issued-17, DNS SANs [app1.partner.example]");
}

/// Rules keep Istio's meaning of an absent field (any), so an empty list, which reads as "none", is refused
/// with its path and the way out.
#[test]
fn validate_refuses_empty_lists_in_rules() {
    for (pointer, path) in [
        (
            "/gateway/policies/0/rules/0/from/0/source/namespaces",
            "gateway.policies[0].rules[0].from[0].source.namespaces",
        ),
        ("/destinations/0/policies/1/rules/0/from", "destinations[0].policies[1].rules[0].from"),
        (
            "/destinations/0/policies/1/rules/0/from/0/source/principals",
            "destinations[0].policies[1].rules[0].from[0].source.principals",
        ),
        (
            "/destinations/0/policies/0/rules/0/to/0/operation/paths",
            "destinations[0].policies[0].rules[0].to[0].operation.paths",
        ),
    ] {
        let json = demo_with(|p| *p.pointer_mut(pointer).unwrap() = serde_json::json!([]));
        let (code, stderr) = validate_text(&format!("empty{}", pointer.replace('/', "-")), &json);
        assert_eq!(code, Some(1), "{path}: {stderr}");
        let line = format!("{path}: an empty list");
        assert!(stderr.contains(&line) && stderr.contains("omit the field to match any"), "{line:?} in:\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// A policy of the previous format is refused with the way out, and `migrate` is that way: the new policy on
/// stdout (what changed on stderr), or every problem it cannot convert faithfully, with its path.
#[test]
fn the_previous_format_points_to_migrate_which_converts_it() {
    let fixture = |name: &str| format!("{}/tests/migrate/{name}", env!("CARGO_MANIFEST_DIR"));
    let old = fixture("istio-gateway.json");
    let out = cli(&["validate", &old]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("destinations[0].hosts: unknown field `hosts`"), "{stderr}");
    assert!(stderr.contains("`egress-identity migrate POLICY` rewrites it"), "{stderr}");

    let out = cli(&["migrate", &old]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let notes = text(&out.stderr);
    assert!(!notes.is_empty() && notes.lines().all(|l| l.starts_with("note: ")), "{notes}");
    assert!(notes.contains("note: principalSources: dropped"), "{notes}");
    let migrated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(migrated["identities"].is_array() && migrated.get("principalSources").is_none(), "{migrated}");
    // The converted policy is valid everywhere, and --out writes the same text.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-migrate");
    std::fs::create_dir_all(&dir).unwrap();
    let new = dir.join("istio-gateway.json");
    let out_file = cli(&["migrate", &old, "--out", new.to_str().unwrap()]);
    assert_eq!(out_file.status.code(), Some(0), "{}", text(&out_file.stderr));
    assert!(out_file.stdout.is_empty());
    assert!(text(&out_file.stderr).contains(&format!("wrote {}", new.display())), "{}", text(&out_file.stderr));
    assert_eq!(std::fs::read(&new).unwrap(), out.stdout);
    let out = cli(&["validate", new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("valid for envoy, istio-gateway, istio-waypoint, kuma"),
        "{}",
        text(&out.stdout)
    );

    // Kuma's old policies named Kuma's own host names: the partner's host is unknown, so nothing is written.
    let out = cli(&["migrate", &fixture("kuma.json")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    for path in ["destinations[0].hosts: ", "destinations[1].hosts: "] {
        assert!(stderr.contains(&format!("kuma.json: {path}")), "{path:?} in:\n{stderr}");
    }
    assert!(stderr.contains("write \"host\""), "{stderr}");
}

/// `explain --platform` decides as that platform receives the request: Kuma's zone egress sees the
/// MeshExternalService's hostname and SNI, and names Kuma's clusters; the partner's own name is not how it
/// arrives there.
#[test]
fn explain_decides_as_the_platform_receives_the_request() {
    let policy = egress_identity_harness::repo_root().join("examples/policy.json");
    let p = policy.to_str().unwrap();
    let app1 = "spiffe://default.zone-1.mesh.local/ns/team/sa/app1";
    let out =
        cli(&["explain", p, "--platform", "kuma", "--principal", app1, "--host", "partner-api.extsvc.mesh.local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(cluster kri_extsvc_default_zone-1_kuma-system_partner-api-team-app1_80)"));
    let sni = "sni.extsvc.default.zone-1.kuma-system.partner-db.5432";
    let out = cli(&["explain", p, "--platform", "kuma", "--principal", app1, "--sni", sni, "--port", "10002"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = cli(&["explain", p, "--platform", "kuma", "--principal", app1, "--host", "api.partner.example"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).contains("reason=unknown_destination"), "{}", text(&out.stdout));
}

#[test]
fn version_names_the_workspace_version() {
    let out = cli(&["--version"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), format!("egress-identity {}", env!("CARGO_PKG_VERSION")));
}
