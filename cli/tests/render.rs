//! `egress-identity render`: the committed envoy/gateway.yaml and examples/ manifests are exactly the render
//! of their policy files, and a rendered bootstrap for a bigger policy passes `envoy --mode validate`.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_identity_harness::{repo_root, sds, topology};

/// The flags `make render` gives `render envoy` for the local demo (Makefile: DEMO_RENDER_FLAGS).
/// The Makefile's `DEMO_RENDER_FLAGS` (continuation lines joined), what `make render` renders the demo with.
fn demo_flags() -> Vec<String> {
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let joined = makefile.replace("\\\n", " ");
    let line = joined.lines().find_map(|l| l.strip_prefix("DEMO_RENDER_FLAGS := ")).expect("DEMO_RENDER_FLAGS");
    line.split_whitespace().map(str::to_owned).collect()
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-identity"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("running the CLI")
}

fn stdout_of(args: &[&str]) -> String {
    let out = cli(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("render").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first differing line, for a readable failure.
fn first_difference(a: &str, b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = al.iter().zip(&bl).take_while(|(x, y)| x == y).count();
    Some(format!("line {}: committed {:?}, rendered {:?}", i + 1, al.get(i), bl.get(i)))
}

#[test]
fn gateway_yaml_is_the_render_of_the_demo_policy() {
    let committed = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    let flags = demo_flags();
    assert!(flags.len() >= 6 && flags.iter().any(|f| f == "--listen-l4"), "{flags:?}");
    let mut args = vec!["render", "envoy", "envoy/policy.json"];
    args.extend(flags.iter().map(String::as_str));
    let rendered = stdout_of(&args);
    if let Some(d) = first_difference(&committed, &rendered) {
        panic!(
            "envoy/gateway.yaml is not `render envoy envoy/policy.json {}` (run `make render`): {d}",
            flags.join(" ")
        );
    }
    // The plugin configuration the harness runs is the policy file.
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("envoy/policy.json")).unwrap()).unwrap();
    let block: serde_json::Value = serde_json::from_str(&topology::plugin_config(&committed).unwrap()).unwrap();
    assert_eq!(block, policy);
    // Not vacuous: the production defaults give another file.
    assert_ne!(stdout_of(&["render", "envoy", "envoy/policy.json", "--identity-sds", "unix:/run/sds.sock"]), committed);
}

/// `(directory, render arguments)` of each example.
fn examples() -> Vec<(&'static str, Vec<String>)> {
    let image = |dir: &str| {
        let text = std::fs::read_to_string(repo_root().join(dir).join("wasm-plugin.yaml")).unwrap();
        text.lines().find_map(|l| l.trim().strip_prefix("url: ")).expect("url: line").to_string()
    };
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut gateway = owned(&["istio", "examples/istio/egress-gateway/policy.json", "--mode", "gateway", "--image"]);
    gateway.push(image("examples/istio/egress-gateway"));
    let mut waypoint = owned(&["istio", "examples/istio/egress-waypoint/policy.json", "--mode", "waypoint", "--image"]);
    waypoint.push(image("examples/istio/egress-waypoint"));
    let kuma = owned(&[
        "kuma",
        "examples/kuma/policy.json",
        "--upstream",
        "partner-api=api.partner.example:443",
        "--upstream",
        "partner-db=db.partner.example:5432",
    ]);
    vec![
        ("examples/istio/egress-gateway", gateway),
        ("examples/istio/egress-waypoint", waypoint),
        ("examples/kuma", kuma),
    ]
}

#[test]
fn example_manifests_are_the_render_of_their_policies() {
    for (dir, args) in examples() {
        let out_dir = tmp(&dir.replace('/', "_"));
        let mut full = vec!["render".to_string()];
        full.extend(args.clone());
        full.extend(["--out-dir".to_string(), out_dir.display().to_string()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        stdout_of(&refs);
        let rendered = yaml_files(&out_dir);
        let committed = yaml_files(&repo_root().join(dir));
        assert_eq!(committed, rendered, "{dir}: the manifests are not those render writes");
        for name in &rendered {
            let a = std::fs::read_to_string(repo_root().join(dir).join(name)).unwrap();
            let b = std::fs::read_to_string(out_dir.join(name)).unwrap();
            if let Some(d) = first_difference(&a, &b) {
                panic!("{dir}/{name} is not the render of {dir}/policy.json (run `make render`): {d}");
            }
        }
        // On stdout: the same documents, in the same order.
        let stdout = stdout_of(&refs[..refs.len() - 2]);
        let joined: Vec<String> = rendered_in_order(&out_dir, &stdout).into_iter().collect();
        assert_eq!(stdout, joined.join("---\n"), "{dir}: stdout differs from the files");
    }
}

/// The YAML files under `dir` (subdirectories too), as sorted relative paths.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The files of `dir` in the order their first line appears on stdout (the apply order).
fn rendered_in_order(dir: &Path, stdout: &str) -> Vec<String> {
    let mut files: Vec<String> =
        yaml_files(dir).iter().map(|name| std::fs::read_to_string(dir.join(name)).unwrap()).collect();
    files.sort_by_key(|text| stdout.find(text.as_str()).unwrap_or(usize::MAX));
    files
}

const BIG_POLICY: &str = r#"{
  "localTrustDomain": "cluster.local",
  "trustDomains": ["partner-mesh.example"],
  "gateway": { "policies": [ { "name": "mesh", "action": "ALLOW",
    "rules": [ { "from": [ { "source": { "namespaces": ["team", "billing"] } } ] } ] } ] },
  "destinations": [
    { "name": "partner-api", "hosts": ["api.partner.example"], "ports": [443],
      "policies": [ { "name": "team", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
      "identities": [
        { "name": "team.app1", "cluster": "partner-api|team-app1", "principals": ["cluster.local/ns/team/sa/app1"] },
        { "name": "team.app2", "cluster": "partner-api|team-app2", "principals": ["cluster.local/ns/team/sa/app2"] } ],
      "defaultIdentity": { "name": "team.shared", "cluster": "partner-api|team-shared" } },
    { "name": "billing", "hosts": ["billing.example.net"], "ports": [443],
      "policies": [ { "name": "billing", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["billing"] } } ] } ] } ],
      "identities": [
        { "name": "billing.batch", "cluster": "billing|batch", "principals": ["cluster.local/ns/billing/sa/*"] },
        { "name": "team.app1", "cluster": "billing|team-app1", "principals": ["cluster.local/ns/team/sa/app1"] } ] },
    { "name": "reports", "hosts": ["reports.example.org"], "ports": [9443],
      "identities": [ { "name": "reports.reader", "cluster": "reports|reader", "principals": ["*"] } ] }
  ]
}"#;

/// A bigger policy (three destinations, six identity clusters, a default identity, an identity name shared
/// by two destinations, host-name and IP upstreams) renders into a bootstrap Envoy accepts, with the filter
/// loading the policy; the control run without one identity's SDS file fails on it.
#[test]
fn rendered_bootstrap_of_a_bigger_policy_validates() {
    let run_dir = tmp("validate");
    let pki = topology::populate_run_dir(
        &run_dir,
        &topology::wasm_path(),
        &repo_root().join("envoy/external-server/nginx.conf"),
    )
    .expect("preparing the run directory");
    let policy = run_dir.join("policy.json");
    std::fs::write(&policy, BIG_POLICY).unwrap();
    let yaml = stdout_of(&[
        "render",
        "envoy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:20443",
        "--admin",
        "127.0.0.1:29901",
        "--upstream",
        "reports=127.0.0.1:19443",
    ]);
    for cluster in [
        "partner-api|team-app1",
        "partner-api|team-app2",
        "partner-api|team-shared",
        "billing|batch",
        "billing|team-app1",
        "reports|reader",
    ] {
        assert_eq!(yaml.matches(&format!("- name: \"{cluster}\"")).count(), 1, "{cluster}");
    }
    let bootstrap = run_dir.join("big-gateway.yaml");
    std::fs::write(&bootstrap, &yaml).unwrap();
    let sds_dir = run_dir.join(sds::SDS_DIR_IN_RUN_DIR);
    let cert = pki.external_identity("team.app1");
    for identity in ["team.shared", "billing.batch", "reports.reader"] {
        sds::write_tls_certificate(&sds_dir, &format!("external-{identity}"), &cert).unwrap();
    }
    for destination in ["partner-api", "billing", "reports"] {
        sds::write_validation_context(&sds_dir, &format!("{destination}-ca"), &[&pki.partner_ca_cert()]).unwrap();
    }
    let v = topology::validate_bootstrap(&bootstrap, &run_dir).expect("running envoy");
    assert!(v.ok, "the rendered bootstrap does not validate:\n{}\n{yaml}", v.output);

    std::fs::remove_file(sds::resource_path(&sds_dir, "external-billing.batch")).unwrap();
    let v = topology::validate_bootstrap(&bootstrap, &run_dir).expect("running envoy");
    assert!(
        !v.ok && v.output.contains("external-billing.batch"),
        "validated without an identity's secret:\n{}",
        v.output
    );
}

#[test]
fn render_refuses_invalid_and_unrenderable_policies() {
    let dir = tmp("refuse");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, BIG_POLICY.replace("\"ALLOW\"", "\"ALOW\"")).unwrap();
    for target in ["envoy", "istio", "kuma"] {
        let out = cli(&["render", target, bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{target}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("gateway.policies[0].action: unknown variant `ALOW`"), "{target}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    // A wildcard, a second host or a second port would be sent to the one endpoint a cluster reaches.
    for (name, from, to, why) in [
        (
            "wildcard",
            "\"billing.example.net\"",
            "\"*.example.net\"",
            "destinations[1] (billing): host \"*.example.net\" is a wildcard",
        ),
        (
            "hosts",
            "\"billing.example.net\"",
            "\"billing.example.net\", \"eu.billing.example.net\"",
            "would be sent to \"billing.example.net\"",
        ),
        ("ports", "\"ports\": [9443]", "\"ports\": [9443, 443]", "destinations[2] (reports): ports 9443 and 443"),
    ] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, BIG_POLICY.replace(from, to)).unwrap();
        for target in ["envoy", "istio"] {
            let out = cli(&["render", target, file.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(2), "{name} {target}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(why), "{name} {target}: {stderr}");
        }
    }
    // The waypoint reads the principal from filter state only: a policy without that source is refused.
    let out = cli(&["render", "istio", "examples/istio/egress-gateway/policy.json", "--mode", "waypoint"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("principalSources must include istio_peer_principal"));
    // Nor does it carry tcp/tls destinations (no SNI names them inside HBONE): refused, not rendered half.
    let mut waypoint: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/istio/egress-waypoint/policy.json")).unwrap(),
    )
    .unwrap();
    waypoint["destinations"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "db", "protocol": "tcp", "hosts": ["db.partner.example"], "ports": [5432],
        "defaultIdentity": {"name": "db", "cluster": "db|x"}
    }));
    let file = dir.join("waypoint-l4.json");
    std::fs::write(&file, waypoint.to_string()).unwrap();
    let out = cli(&["render", "istio", file.to_str().unwrap(), "--mode", "waypoint"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("destinations[1] (db) is a tcp destination") && stderr.contains("--mode gateway"),
        "{stderr}"
    );
}

/// The spiffeID matches (type, value) of the rendered MeshTrafficPermissions.
fn kuma_allowed_ids(manifests: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for doc in manifests.split("---\n").filter(|d| d.contains("kind: MeshTrafficPermission")) {
        let lines: Vec<&str> = doc.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if let (Some(kind), Some(value)) = (pair[0].strip_prefix("type: "), pair[1].strip_prefix("value: ")) {
                if value.starts_with("spiffe://") {
                    out.push((kind.to_string(), value.to_string()));
                }
            }
        }
    }
    out
}

/// Kuma's layer (MeshTrafficPermission) runs before the filter: it must let through every caller the filter
/// would allow, or the rendered manifests deny what `explain` allows.
#[test]
fn the_rendered_kuma_permissions_let_through_whoever_explain_allows() {
    let dir = tmp("kuma-explain");
    let example = std::fs::read_to_string(repo_root().join("examples/kuma/policy.json")).unwrap();
    let mut with_default: serde_json::Value = serde_json::from_str(&example).unwrap();
    with_default["destinations"][0]["defaultIdentity"] = serde_json::json!({"name": "team.shared", "cluster": "kri_extsvc_default_zone-1_kuma-system_partner-api-team-shared_80"});
    with_default["gateway"]["policies"][1]["rules"][0]["from"][0]["source"]["namespaces"] =
        serde_json::json!(["team", "ops"]);
    with_default["destinations"][0]["policies"][1]["rules"][0]["from"][0]["source"] =
        serde_json::json!({"namespaces": ["team", "ops"]});
    let callers = ["team/sa/app1", "team/sa/app2", "team/sa/app3", "ops/sa/x", "quarantine/sa/app1", "other/sa/x"];
    let mut allowed_somewhere = 0;
    for (name, policy) in [("example", example), ("default-identity", with_default.to_string())] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, &policy).unwrap();
        let manifests = stdout_of(&[
            "render",
            "kuma",
            file.to_str().unwrap(),
            "--upstream",
            "partner-api=api.partner.example:443",
            "--upstream",
            "partner-db=db.partner.example:5432",
        ]);
        let permitted = kuma_allowed_ids(&manifests);
        assert!(!permitted.is_empty(), "{name}: no MeshTrafficPermission spiffeIDs:\n{manifests}");
        for caller in callers {
            let id = format!("spiffe://default.zone-1.mesh.local/ns/{caller}");
            let out = cli(&[
                "explain",
                file.to_str().unwrap(),
                "--principal",
                &id,
                "--host",
                "partner-api.extsvc.mesh.local",
            ]);
            let kuma_allows = permitted.iter().any(|(kind, value)| match kind.as_str() {
                "Exact" => id == *value,
                "Prefix" => id.starts_with(value.as_str()),
                other => panic!("unexpected spiffeID match type {other}"),
            });
            match out.status.code() {
                Some(0) => {
                    allowed_somewhere += 1;
                    assert!(
                        kuma_allows,
                        "{name}: explain allows {id}, the MeshTrafficPermissions do not: {permitted:?}"
                    );
                }
                Some(3) => {}
                other => panic!("{name}: explain {id} exited {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
            }
        }
    }
    assert!(allowed_somewhere >= 4, "the check must see allowed callers (saw {allowed_somewhere})");
}
