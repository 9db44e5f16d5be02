//! One judge of validity: every refusal `render` has ever made is made by the core's compile step, so
//! `validate --platform P` refuses exactly what `render P` refuses, with the same JSON path and reason. The
//! table walks each refusal the renderers made before they built from the compiled model (the `render envoy`,
//! `render istio` and `render kuma` checks of the previous release), as the policy a user would write today:
//! - refused by both, with the same lines;
//! - or no longer a refusal, because the platform now derives what the user had to get right (both accept);
//! - or a refusal of `render`'s options, not of the policy (render exits 2 naming the flag; validate accepts).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The platforms, as `validate --platform` names them, and the `render` arguments of each.
const PLATFORMS: [(&str, &[&str]); 4] = [
    ("envoy", &["render", "envoy"]),
    ("istio-gateway", &["render", "istio", "--mode", "gateway"]),
    ("istio-waypoint", &["render", "istio", "--mode", "waypoint"]),
    ("kuma", &["render", "kuma"]),
];

/// A policy valid on every platform, for the cases to break.
fn base() -> Value {
    json!({
        "localTrustDomain": "cluster.local",
        "identities": [
            { "name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"] },
            { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app2"] }
        ],
        "gateway": { "policies": [ { "name": "team", "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
        "destinations": [
            { "name": "partner-api", "host": "api.partner.example", "port": 443,
              "policies": [ { "name": "apps", "action": "ALLOW", "rules": [ {} ] } ],
              "identities": ["team.app1", "team.app2"] },
            { "name": "partner-db", "protocol": "tcp", "host": "db.partner.example", "port": 5432,
              "policies": [ { "name": "apps", "action": "ALLOW", "rules": [ {} ] } ],
              "identities": ["team.app1"] }
        ]
    })
}

fn write(dir: &Path, name: &str, policy: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(policy).unwrap()).unwrap();
    path
}

/// The error lines of a refusal, without the file name and validate's platform tag: what both must agree on.
fn lines(stderr: &str, file: &Path) -> Vec<String> {
    let prefix = format!("{}: ", file.display());
    let mut out: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !l.contains("warning:"))
        .map(|l| match l.strip_prefix('[') {
            Some(tagged) => tagged.split_once("] ").map_or(l, |(_, rest)| rest).to_string(),
            None => l.to_string(),
        })
        .collect();
    out.sort();
    out
}

/// `render` and `validate --platform` on one policy and platform: (render's exit, validate's exit, the lines
/// each refused with).
fn both(
    dir: &Path,
    case: &str,
    policy: &Value,
    platform: &str,
) -> (Option<i32>, Option<i32>, Vec<String>, Vec<String>) {
    let file = write(dir, &format!("{case}-{platform}"), policy);
    let f = file.to_str().unwrap();
    let render_args = PLATFORMS.iter().find(|(p, _)| *p == platform).unwrap().1;
    let out_dir = dir.join(format!("out-{case}-{platform}"));
    let mut args: Vec<&str> = render_args.to_vec();
    args.push(f);
    let o = out_dir.to_str().unwrap().to_string();
    if platform != "envoy" {
        args.extend(["--out-dir", &o, "--workload-namespace", "team"]);
    }
    // render envoy's own option for single-cluster destinations (tested apart, below).
    let single = policy["destinations"].as_array().is_some_and(|d| d.iter().any(|d| d["singleCluster"] == true));
    if platform == "envoy" && single {
        args.extend(["--identity-sds", "127.0.0.1:1"]);
    }
    let (render_code, render_err) = run(&args);
    let (validate_code, validate_err) = run(&["validate", f, "--platform", platform]);
    (render_code, validate_code, lines(&render_err, &file), lines(&validate_err, &file))
}

fn dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("one-judge").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Each refusal of the renderers, as a policy: (what the renderer refused, the policy, the platforms that
/// must refuse it, the JSON path of the error).
fn refusals() -> Vec<(&'static str, Value, Vec<&'static str>, &'static str)> {
    let all = vec!["envoy", "istio-gateway", "istio-waypoint", "kuma"];
    let mesh = vec!["istio-gateway", "istio-waypoint", "kuma"];
    // An HTTP destination reached through a dynamic forward proxy: envoy, and Istio's egress gateway.
    let no_dynamic_http = vec!["istio-waypoint", "kuma"];
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut p = base();
        f(&mut p);
        p
    };
    vec![
        (
            "a wildcard host (envoy and the Istio gateway reach it through a dynamic forward proxy; the waypoint not yet, Kuma never)",
            edit(&|p| p["destinations"][0]["host"] = json!("*.partner.example")),
            no_dynamic_http.clone(),
            "destinations[0].host",
        ),
        (
            "several hosts in one destination (the same)",
            edit(&|p| p["destinations"][0]["host"] = json!(["api.partner.example", "eu.partner.example"])),
            no_dynamic_http.clone(),
            "destinations[0].host",
        ),
        (
            "several ports in one destination (the same)",
            edit(&|p| p["destinations"][0]["port"] = json!([443, 8443])),
            no_dynamic_http,
            "destinations[0].port",
        ),
        (
            "a host under a wildcard that matches nothing in a destination policy",
            edit(&|p| {
                p["destinations"][0]["host"] = json!("*.partner.example");
                p["destinations"][0]["policies"] = json!([{"name": "x", "action": "DENY",
                    "rules": [{"to": [{"operation": {"hosts": ["api.other.example"]}}]}]}]);
            }),
            all.clone(),
            "destinations[0].policies[0].rules[0].to[0].operation.hosts[0]",
        ),
        (
            "one cluster for two identities or destinations (render envoy): clusters are no longer written",
            edit(&|p| p["destinations"][0]["cluster"] = json!("partner-api|team-app1")),
            all.clone(),
            "destinations[0].cluster",
        ),
        (
            "one sharedCluster on two destinations (render envoy): named clusters are gone",
            edit(&|p| p["destinations"][0]["sharedCluster"] = json!("shared")),
            all.clone(),
            "destinations[0].sharedCluster",
        ),
        (
            "the reserved no-identity secret (render envoy)",
            edit(&|p| {
                p["identities"][0]["certificate"] = json!({"secret": "egress-identity-no-identity"});
                p["destinations"][0]["singleCluster"] = json!(true);
            }),
            all.clone(),
            "identities[0].certificate.secret",
        ),
        (
            "an identity name that cannot name a file or Secret (render envoy: \"team/d\")",
            edit(&|p| {
                p["identities"][1]["name"] = json!("team/d");
                p["destinations"][0]["identities"] = json!(["team.app1", "team/d"]);
            }),
            all.clone(),
            "identities[1].name",
        ),
        (
            "two identities with the same Kubernetes name (render istio: \"x.one\" and \"x-one\")",
            edit(&|p| {
                p["identities"][1]["name"] = json!("team-app1");
                p["destinations"][0]["identities"] = json!(["team.app1", "team-app1"]);
            }),
            all.clone(),
            "identities[1].name",
        ),
        (
            "a destination name that is not a Kubernetes name (render kuma; render envoy's file names)",
            edit(&|p| p["destinations"][0]["name"] = json!("Partner_API")),
            all.clone(),
            "destinations[0].name",
        ),
        (
            "a destination taking one of the gateway's own names (tcp_proxy's fail-closed cluster)",
            edit(&|p| p["destinations"][1]["name"] = json!("egress-identity-unrouted")),
            all.clone(),
            "destinations[1].name",
        ),
        (
            "single-cluster mode where the mesh's API cannot express it (render istio, render kuma, secrets)",
            edit(&|p| p["destinations"][0]["singleCluster"] = json!(true)),
            mesh.clone(),
            "destinations[0].singleCluster",
        ),
        (
            "principalSources that the gateway cannot read (render istio, render kuma): the platform decides now",
            edit(&|p| p["principalSources"] = json!(["istio_peer_principal"])),
            all.clone(),
            "principalSources",
        ),
        (
            "two destinations the mesh delivers under one name (new: Istio sends every tcp destination to port 8443 by host)",
            edit(&|p| {
                let mut again = p["destinations"][1].clone();
                again["name"] = json!("partner-db-replica");
                again["port"] = json!(6432);
                p["destinations"].as_array_mut().unwrap().push(again);
            }),
            vec!["istio-gateway"],
            "destinations[2].host",
        ),
    ]
}

#[test]
fn validate_refuses_every_refusal_render_has_made_with_the_same_words() {
    let dir = dir("refused");
    for (i, (what, policy, refusing, path)) in refusals().into_iter().enumerate() {
        for (platform, _) in PLATFORMS {
            let (render, validate, render_lines, validate_lines) = both(&dir, &format!("case{i}"), &policy, platform);
            if refusing.contains(&platform) {
                assert_eq!(render, Some(1), "{what}: render {platform} must refuse the policy: {render_lines:?}");
                assert_eq!(validate, Some(1), "{what}: validate --platform {platform} must refuse it");
                assert_eq!(render_lines, validate_lines, "{what} ({platform}): both say the same");
                assert!(
                    render_lines.iter().any(|l| l.starts_with(&format!("{path}: "))),
                    "{what} ({platform}): the error names {path}: {render_lines:?}"
                );
            } else {
                assert_eq!((render, validate), (Some(0), Some(0)), "{what}: {platform} accepts it: {render_lines:?}");
            }
        }
    }
}

/// Refusals whose cause is gone: the renderer checked that the user wrote the platform's names right; the
/// platform derives them now, so both accept the plain policy on every platform.
#[test]
fn what_render_had_to_check_by_hand_is_derived_now() {
    let dir = dir("derived");
    let cases: Vec<(&str, Value)> = vec![
        // render istio: "applications call http://<host>/, which the filter reads as defaultPort: list it in
        // ports"; the Istio platform takes `host` and `host:80` as the destination, whatever defaultPort says.
        ("defaultPort not a destination port (render istio)", {
            let mut p = base();
            p["defaultPort"] = json!(8443);
            p
        }),
        // render kuma: the MeshIdentity's trust domain had to be listed, hosts had to be Kuma's
        // `<name>.extsvc.mesh.local` and `sni.extsvc.…` names on the zone egress port, clusters Kuma's
        // `kri_…` names. All derived from --mesh/--zone/--namespace/--egress-port now.
        ("Kuma's trust domain, hostnames, SNIs, ports and cluster names (render kuma)", base()),
        // render kuma: a principal pattern a MeshTrafficPermission cannot express ("*/ns/x").
        ("a pattern Kuma's MeshTrafficPermission cannot express (render kuma)", {
            let mut p = base();
            p["identities"][1]["principals"] = json!(["*/ns/team/sa/app2"]);
            p
        }),
    ];
    for (i, (what, policy)) in cases.into_iter().enumerate() {
        for (platform, _) in PLATFORMS {
            let (render, validate, render_lines, _) = both(&dir, &format!("case{i}"), &policy, platform);
            assert_eq!((render, validate), (Some(0), Some(0)), "{what} on {platform}: {render_lines:?}");
        }
    }
    // A tcp destination in an Istio waypoint was refused by render; the waypoint carries it now (its own
    // chain), so both render and validate accept the policy without a word about it.
    let file = write(&dir, "waypoint", &base());
    let f = file.to_str().unwrap();
    let out = dir.join("waypoint-out");
    let (code, render_err) = run(&["render", "istio", "--mode", "waypoint", f, "--out-dir", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{render_err}");
    let (code, validate_err) = run(&["validate", f, "--platform", "istio-waypoint"]);
    assert_eq!(code, Some(0), "{validate_err}");
    assert!(!render_err.contains("partner-db") && !validate_err.contains("partner-db"), "{render_err}\n{validate_err}");
}

/// What render refuses that is not the policy's fault: its own flags. The policy is valid (validate exits
/// 0); render exits 2 and names the flag to change.
#[test]
fn render_refuses_only_its_own_options_beyond_the_policy() {
    let dir = dir("options");
    let file = write(&dir, "policy", &base());
    let f = file.to_str().unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let mut single = base();
    single["destinations"][0]["singleCluster"] = json!(true);
    let single_file = write(&dir, "single", &single);
    let s = single_file.to_str().unwrap();
    let mut no_namespace = base();
    no_namespace["gateway"]["policies"][0]["rules"] = json!([{}]);
    no_namespace["identities"] = json!([{ "name": "team.app1", "principals": ["*"] }]);
    no_namespace["destinations"][0]["identities"] = json!(["team.app1"]);
    let nn_file = write(&dir, "no-namespace", &no_namespace);
    let nn = nn_file.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["render", "envoy", f, "--upstream", "nope=127.0.0.1:1"], "\"nope\" is not a destination"),
        (vec!["render", "envoy", f, "--ca-secret", "partner-api=../ca"], "can be rendered"),
        (vec!["render", "envoy", s], "--identity-sds"),
        (vec!["render", "envoy", f, "--identity-sds", "127.0.0.1:1"], "only for singleCluster destinations"),
        (vec!["render", "istio", nn, "--out-dir", o], "--workload-namespace"),
        (vec!["render", "istio", f, "--out-dir", o, "--namespace", "team"], "--namespace"),
        (vec!["render", "kuma", f, "--out-dir", o, "--upstream", "nope=h:1"], "\"nope\" is not a destination"),
    ];
    for (args, says) in cases {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    for (policy, platform) in [(f, "envoy"), (s, "envoy"), (nn, "istio-gateway"), (f, "kuma")] {
        let (code, stderr) = run(&["validate", policy, "--platform", platform]);
        assert_eq!(code, Some(0), "{policy} on {platform}: {stderr}");
    }
}
