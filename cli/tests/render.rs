//! `egress-identity render`: the committed envoy/gateway.yaml and examples/ files are exactly what the
//! Makefile's `render` target writes (the demo policy, and the one example policy for every platform), the
//! rendered Envoy bootstraps pass `envoy --mode validate`, and so does the bootstrap of a bigger policy.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::platform::plugin_configuration;
use egress_identity_harness::{repo_root, sds, topology};

/// The Makefile with its continuation lines joined.
fn makefile() -> String {
    std::fs::read_to_string(repo_root().join("Makefile")).unwrap().replace("\\\n", " ")
}

/// The Makefile's `DEMO_RENDER_FLAGS`, what `make render` renders the demo with.
fn demo_flags() -> Vec<String> {
    make_variable("DEMO_RENDER_FLAGS")
}

/// The words of the Makefile's variable `name` (`NAME := ...`).
fn make_variable(name: &str) -> Vec<String> {
    let makefile = makefile();
    let line = makefile.lines().find_map(|l| l.strip_prefix(&format!("{name} := "))).expect(name);
    line.split_whitespace().map(str::to_owned).collect()
}

/// Where one `$(RENDER)` line of the `render` target writes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    /// Its stdout, redirected to this file.
    File(String),
    /// `--out-dir`: one file per kind in this directory.
    Dir(String),
    /// `--chart`: a Helm chart in this directory.
    Chart(String),
}

/// One `$(RENDER) ...` command of the Makefile's `render` target: its arguments after `render`, Make's
/// variables expanded, and where it writes.
#[derive(Debug)]
struct RenderCommand {
    args: Vec<String>,
    output: Written,
}

/// The `$(RENDER)` commands of the Makefile's `render` target, in order. A Make variable this does not know
/// fails the test, so a change of the target's shape is noticed rather than rendered differently.
fn render_target() -> Vec<RenderCommand> {
    let makefile = makefile();
    let mut lines = makefile.lines().skip_while(|l| *l != "render:").skip(1);
    let mut commands = Vec::new();
    while let Some(line) = lines.next().filter(|l| l.starts_with('\t')) {
        let Some(rest) = line.trim().strip_prefix("$(RENDER) ") else { continue };
        let mut args = Vec::new();
        let mut output = None;
        // `$(call F,ARGS)` as one token.
        let rest = rest.replace("$(call ", "$(call:");
        let mut tokens = rest.split_whitespace().map(|t| t.trim_matches('"'));
        while let Some(token) = tokens.next() {
            if token == ">" {
                let file = tokens.next().expect("a file after >");
                output = Some(Written::File(file.strip_suffix(".tmp").unwrap_or(file).to_string()));
            } else if token == "--out-dir" {
                output = Some(Written::Dir(tokens.next().expect("a directory after --out-dir").to_string()));
            } else if token == "--chart" {
                output = Some(Written::Chart(tokens.next().expect("a directory after --chart").to_string()));
            } else if token == "$(DEMO_RENDER_FLAGS)" {
                args.extend(demo_flags());
            } else if token == "$(SPIRE_RENDER_FLAGS)" {
                args.extend(make_variable("SPIRE_RENDER_FLAGS"));
            } else if let Some(dir) = token.strip_prefix("$(call:ISTIO_IMAGE,").and_then(|t| t.strip_suffix(')')) {
                args.push(istio_image(dir));
            } else {
                assert!(!token.contains('$'), "Makefile render: unknown Make variable in {token:?}: {line}");
                args.push(token.to_string());
            }
        }
        commands.push(RenderCommand { args, output: output.unwrap_or_else(|| panic!("no output in {line}")) });
    }
    commands
}

/// The image of the committed WasmPlugin of `dir` (the Makefile's `ISTIO_IMAGE`).
fn istio_image(dir: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(dir).join("wasm-plugin.yaml")).unwrap();
    text.lines().find_map(|l| l.trim().strip_prefix("url: ")).expect("url: line").to_string()
}

#[test]
fn the_render_target_renders_the_demo_and_every_platform_from_the_example_policy() {
    let commands = render_target();
    let outputs: Vec<(&Written, &str, &str)> =
        commands.iter().map(|c| (&c.output, c.args[0].as_str(), c.args[1].as_str())).collect();
    let file = |f: &str| Written::File(f.into());
    let dir = |d: &str| Written::Dir(d.into());
    let chart = |d: &str| Written::Chart(d.into());
    assert_eq!(
        outputs,
        [
            (&file("envoy/gateway.yaml"), "envoy", "envoy/policy.json"),
            (&file("envoy/spire/gateway.yaml"), "envoy", "envoy/policy.json"),
            (&file("examples/envoy/gateway.yaml"), "envoy", "examples/policy.json"),
            (&dir("examples/istio/egress-gateway"), "istio", "examples/policy.json"),
            (&dir("examples/istio/egress-waypoint"), "istio", "examples/policy.json"),
            (&dir("examples/kuma"), "kuma", "examples/policy.json"),
            (&chart("examples/helm/istio-gateway"), "istio", "examples/policy.json"),
            (&chart("examples/helm/istio-waypoint"), "istio", "examples/policy.json"),
            (&chart("examples/helm/kuma"), "kuma", "examples/policy.json"),
        ],
        "{commands:#?}"
    );
    // Each chart is rendered with the flags of the plain render beside it.
    let args_of = |out: Written| commands.iter().find(|c| c.output == out).map(|c| c.args.clone()).unwrap();
    for (plain, helm) in [
        ("examples/istio/egress-gateway", "examples/helm/istio-gateway"),
        ("examples/istio/egress-waypoint", "examples/helm/istio-waypoint"),
        ("examples/kuma", "examples/helm/kuma"),
    ] {
        assert_eq!(args_of(dir(plain)), args_of(chart(helm)), "{helm}");
    }
    // The demo listens on the L4 ports its tcp/tls destinations declare, on loopback: no fixed L4 listener.
    let flags = demo_flags();
    assert!(flags.len() >= 6 && flags.windows(2).any(|w| w == ["--l4-address", "127.0.0.1"]), "{flags:?}");
    assert!(!flags.iter().any(|f| f == "--listen-l4"), "{flags:?}");
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

/// The text of a repository file.
fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn committed_renders_are_what_the_render_target_writes() {
    for command in render_target() {
        let args: Vec<&str> = std::iter::once("render").chain(command.args.iter().map(String::as_str)).collect();
        match &command.output {
            Written::File(file) => {
                let rendered = stdout_of(&args);
                if let Some(d) = first_difference(&read(file), &rendered) {
                    panic!("{file} is not `{}` (run `make render`): {d}", args.join(" "));
                }
            }
            Written::Dir(dir) => {
                let out_dir = written_by(&args, "--out-dir", dir);
                assert_same_files(dir, &out_dir, yaml_files, &args);
                // On stdout: the same documents, in the same order.
                let stdout = stdout_of(&args);
                let joined = rendered_in_order(&out_dir, &stdout);
                assert_eq!(stdout, joined.join("---\n"), "{dir}: stdout differs from the files");
            }
            // Every file of the chart: Chart.yaml, values.yaml and the templates.
            Written::Chart(dir) => {
                let out_dir = written_by(&args, "--chart", dir);
                assert_same_files(dir, &out_dir, files_under, &args);
            }
        }
    }
}

/// The directory `render ARGS FLAG DIR` writes, for the committed `dir`.
fn written_by(args: &[&str], flag: &str, dir: &str) -> PathBuf {
    let out_dir = tmp(&dir.replace('/', "_"));
    let out = out_dir.display().to_string();
    let mut with_dir = args.to_vec();
    with_dir.extend([flag, out.as_str()]);
    stdout_of(&with_dir);
    out_dir
}

/// The committed directory `dir` holds the files of `out_dir` that `list` lists, and no other such file, byte for byte.
fn assert_same_files(dir: &str, out_dir: &Path, list: fn(&Path) -> Vec<String>, args: &[&str]) {
    let names = list(out_dir);
    let committed = list(&repo_root().join(dir));
    assert_eq!(committed, names, "{dir}: the files are not those `{}` writes (run `make render`)", args.join(" "));
    for name in &names {
        let a = read(&format!("{dir}/{name}"));
        let b = std::fs::read_to_string(out_dir.join(name)).unwrap();
        if let Some(d) = first_difference(&a, &b) {
            panic!("{dir}/{name} is not the render of `{}` (run `make render`): {d}", args.join(" "));
        }
    }
}

#[test]
fn the_gateways_run_their_policy_verbatim_with_its_platform() {
    for (gateway, policy) in
        [("envoy/gateway.yaml", "envoy/policy.json"), ("examples/envoy/gateway.yaml", "examples/policy.json")]
    {
        let committed = read(gateway);
        let policy_text = read(policy);
        // The plugin configuration the gateway runs (every filter's, identical) is the policy file, byte for
        // byte, plus the platform.
        let block = topology::plugin_config(&committed).unwrap();
        let expected = plugin_configuration(&policy_text, &PlatformSpec::Envoy).unwrap();
        assert_eq!(format!("{block}\n"), expected, "{gateway}");
        let mut value: serde_json::Value = serde_json::from_str(&block).unwrap();
        assert_eq!(value["platform"], serde_json::json!({"kind": "envoy"}), "{gateway}");
        value.as_object_mut().unwrap().remove("platform");
        assert_eq!(value, serde_json::from_str::<serde_json::Value>(&policy_text).unwrap(), "{gateway}");
        // The L4 listener listens on every port a tcp/tls destination of the policy declares, and no other.
        let mut declared: Vec<String> = value["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d.get("protocol").is_some_and(|p| p != "http"))
            .map(|d| d["port"].to_string())
            .collect();
        declared.sort();
        declared.dedup();
        assert!(!declared.is_empty(), "{policy}: no tcp/tls destination");
        assert_eq!(l4_ports(&committed), declared, "{gateway}");
    }
    // Not vacuous: the production defaults give another file.
    let demo = read("envoy/gateway.yaml");
    assert_ne!(stdout_of(&["render", "envoy", "envoy/policy.json", "--identity-sds", "unix:/run/sds.sock"]), demo);
}

/// The ports of the `egress-l4` listener of a rendered bootstrap (its address and additional addresses),
/// sorted.
fn l4_ports(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines.iter().position(|l| l.trim() == "- name: egress-l4").expect("an egress-l4 listener");
    let mut ports: Vec<String> = lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with("filter_chains:") && !l.starts_with("  - name:"))
        .filter_map(|l| l.trim().strip_prefix("port_value: "))
        .map(str::to_owned)
        .collect();
    ports.sort();
    ports
}

/// Runs `envoy --mode validate` on a rendered bootstrap in a run directory with the filter, the test PKI's
/// gateway secrets and the given extra SDS secrets (identities, partner CAs).
fn validate_in_run_dir(name: &str, yaml: &str, identities: &[&str], cas: &[&str]) -> (PathBuf, topology::Validation) {
    let run_dir = tmp(name);
    let pki = topology::populate_run_dir(
        &run_dir,
        &topology::wasm_path(),
        &repo_root().join("envoy/external-server/nginx.conf"),
    )
    .expect("preparing the run directory");
    let sds_dir = run_dir.join(sds::SDS_DIR_IN_RUN_DIR);
    let cert = pki.external_identity("team.app1");
    for identity in identities {
        sds::write_tls_certificate(&sds_dir, &sds::external_identity(identity), &cert).unwrap();
    }
    for ca in cas {
        sds::write_validation_context(&sds_dir, ca, &[&pki.partner_ca_cert()]).unwrap();
    }
    let bootstrap = run_dir.join("gateway.yaml");
    std::fs::write(&bootstrap, yaml).unwrap();
    let v = topology::validate_bootstrap(&bootstrap, &run_dir).expect("running envoy");
    (sds_dir, v)
}

/// The committed Envoy bootstraps (the demo's and the plain Envoy example's) load in Envoy, the filter
/// accepting their plugin configuration; the example's fails without one of its partner CAs.
#[test]
fn committed_envoy_bootstraps_validate() {
    let demo = read("envoy/gateway.yaml");
    let (_, v) = validate_in_run_dir("validate-demo", &demo, &[], &[]);
    assert!(v.ok, "envoy/gateway.yaml does not validate:\n{}", v.output);

    let example = read("examples/envoy/gateway.yaml");
    // render envoy's defaults: external-<identity> and <destination>-ca (no CA for the tls passthrough).
    let cas = ["partner-api-ca", "partner-db-ca"];
    let (sds_dir, v) = validate_in_run_dir("validate-example", &example, &["team.app2"], &cas);
    assert!(v.ok, "examples/envoy/gateway.yaml does not validate:\n{}", v.output);
    std::fs::remove_file(sds::resource_path(&sds_dir, "partner-db-ca")).unwrap();
    let run_dir = sds_dir.parent().unwrap();
    let v = topology::validate_bootstrap(&run_dir.join("gateway.yaml"), run_dir).expect("running envoy");
    assert!(!v.ok && v.output.contains("partner-db-ca"), "validated without a partner CA:\n{}", v.output);
}

/// The files under `dir` (subdirectories too), as sorted relative paths.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The YAML files under `dir` (subdirectories too), as sorted relative paths.
fn yaml_files(dir: &Path) -> Vec<String> {
    files_under(dir).into_iter().filter(|f| f.ends_with(".yaml") || f.ends_with(".yml")).collect()
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
  "identities": [
    { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] },
    { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app2"] },
    { "name": "team.shared" },
    { "name": "billing.batch", "principals": ["cluster.local/ns/billing/sa/*"] },
    { "name": "reports.reader", "principals": ["*"] }
  ],
  "gateway": { "policies": [ { "name": "mesh", "action": "ALLOW",
    "rules": [ { "from": [ { "source": { "namespaces": ["team", "billing"] } } ] } ] } ] },
  "destinations": [
    { "name": "partner-api", "host": "api.partner.example", "port": 443,
      "policies": [ { "name": "team", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
      "identities": ["team.app1", "team.app2"], "defaultIdentity": "team.shared" },
    { "name": "billing", "host": "billing.example.net", "port": 443,
      "policies": [ { "name": "billing", "action": "ALLOW", "rules": [ { "from": [ { "source": { "namespaces": ["billing"] } } ] } ] } ],
      "identities": ["billing.batch", "team.app1"] },
    { "name": "reports", "host": "reports.example.org", "port": 9443,
      "identities": ["reports.reader"] }
  ]
}"#;

/// A bigger policy (three destinations, six identity clusters, a default identity, an identity shared by two
/// destinations, host-name and IP upstreams) renders into a bootstrap Envoy accepts, with the filter loading
/// the policy; the control run without one identity's SDS file fails on it.
#[test]
fn rendered_bootstrap_of_a_bigger_policy_validates() {
    let dir = tmp("big-policy");
    let policy = dir.join("policy.json");
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
    // Derived: <destination>|<identity, '.' -> '-'>.
    for cluster in [
        "partner-api|team-app1",
        "partner-api|team-app2",
        "partner-api|team-shared",
        "billing|billing-batch",
        "billing|team-app1",
        "reports|reports-reader",
    ] {
        assert_eq!(yaml.matches(&format!("- name: \"{cluster}\"")).count(), 1, "{cluster}");
    }
    // One secret per identity, whichever destinations present it.
    assert_eq!(yaml.matches("- name: external-team.app1\n").count(), 2, "{yaml}");
    let identities = ["team.shared", "billing.batch", "reports.reader"];
    let cas = ["partner-api-ca", "billing-ca", "reports-ca"];
    let (sds_dir, v) = validate_in_run_dir("validate", &yaml, &identities, &cas);
    assert!(v.ok, "the rendered bootstrap does not validate:\n{}\n{yaml}", v.output);

    std::fs::remove_file(sds::resource_path(&sds_dir, "external-billing.batch")).unwrap();
    let run_dir = sds_dir.parent().unwrap();
    let v = topology::validate_bootstrap(&run_dir.join("gateway.yaml"), run_dir).expect("running envoy");
    assert!(
        !v.ok && v.output.contains("external-billing.batch"),
        "validated without an identity's secret:\n{}",
        v.output
    );
}

/// `--chart` writes a chart or one file per kind, not both; it replaces a chart it wrote, never another directory.
#[test]
fn render_chart_writes_only_where_a_chart_belongs() {
    let dir = tmp("chart-dirs");
    let (chart, other) = (dir.join("chart"), dir.join("other"));
    let (c, o) = (chart.to_str().unwrap(), other.to_str().unwrap());
    let both = cli(&["render", "istio", "examples/policy.json", "--chart", c, "--out-dir", o]);
    assert_eq!(both.status.code(), Some(2), "{}", String::from_utf8_lossy(&both.stderr));
    assert!(!chart.exists() && !other.exists());
    stdout_of(&["render", "kuma", "examples/policy.json", "--chart", c]);
    stdout_of(&["render", "kuma", "examples/policy.json", "--chart", c]);
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let refused = cli(&["render", "kuma", "examples/policy.json", "--chart", o]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty and not a chart"), "{refused:?}");
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine");
    assert_eq!(files_under(&other), ["notes.txt"]);
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
    // `hosts` and `ports` lists are the previous format (migrate rewrites it); a wildcard or a list in `host`
    // and `port` is a dynamic destination (cli/tests/wildcard.rs), and a bare "*" is every host.
    for (name, from, to, why) in [
        ("wildcard", "\"billing.example.net\"", "\"*\"", "destinations[1].host: \"*\" is every host"),
        (
            "hosts",
            "\"host\": \"billing.example.net\"",
            "\"hosts\": [\"billing.example.net\", \"eu.billing.example.net\"]",
            "destinations[1].hosts: unknown field `hosts`",
        ),
        ("ports", "\"port\": 9443", "\"ports\": [9443, 443]", "destinations[2].ports: unknown field `ports`"),
    ] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, BIG_POLICY.replace(from, to)).unwrap();
        for target in ["envoy", "istio", "kuma"] {
            let out = cli(&["render", target, file.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "{name} {target}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(why), "{name} {target}: {stderr}");
            if name != "wildcard" {
                assert!(stderr.contains("egress-identity migrate"), "{name} {target}: {stderr}");
            }
            assert!(out.stdout.is_empty());
        }
    }
    // Single-cluster mode is Envoy's alone: the demo policy renders for Envoy, never for Istio or Kuma.
    for args in [
        &["istio", "envoy/policy.json"][..],
        &["istio", "envoy/policy.json", "--mode", "waypoint"],
        &["kuma", "envoy/policy.json"],
    ] {
        let mut full = vec!["render"];
        full.extend_from_slice(args);
        let out = cli(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("destinations[3].singleCluster: ") && stderr.contains("cannot carry single-cluster mode"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    // An ambient waypoint carries tcp and tls destinations, each on its own chain, without a warning; the tls
    // passthrough has its ServiceEntry and nothing else (its chain's own cluster is the path).
    let out = cli(&["render", "istio", "examples/policy.json", "--mode", "waypoint"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("destinations["));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<&str> = stdout.split("---\n").collect();
    assert!(docs.iter().any(|d| d.contains("api.partner.example")), "{stdout}");
    for host in ["db.partner.example", "files.partner.example"] {
        assert!(docs.iter().any(|d| d.contains("kind: ServiceEntry") && d.contains(&format!("- {host}"))), "{stdout}");
    }
    let files = docs.iter().filter(|d| d.contains("files.partner.example") && !d.contains("kind: WasmPlugin"));
    let files: Vec<&&str> = files.filter(|d| !d.contains("kind: TrafficExtension")).collect();
    assert_eq!(files.len(), 1, "{files:?}");
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
/// would allow, or the rendered manifests deny what `explain` allows. `explain` decides on the plugin
/// configuration the zone egress runs (the rendered MeshProxyPatch's), as Kuma delivers requests.
#[test]
fn the_rendered_kuma_permissions_let_through_whoever_explain_allows() {
    let dir = tmp("kuma-explain");
    let example = read("examples/policy.json");
    let mut with_default: serde_json::Value = serde_json::from_str(&example).unwrap();
    with_default["identities"].as_array_mut().unwrap().push(serde_json::json!({"name": "team.shared"}));
    with_default["destinations"][0]["defaultIdentity"] = serde_json::json!("team.shared");
    with_default["gateway"]["policies"][1]["rules"][0]["from"][0]["source"]["namespaces"] =
        serde_json::json!(["team", "ops"]);
    with_default["destinations"][0]["policies"][1]["rules"][0]["from"][0]["source"] =
        serde_json::json!({"namespaces": ["team", "ops"]});
    let callers = ["team/sa/app1", "team/sa/app2", "team/sa/app3", "ops/sa/x", "quarantine/sa/app1", "other/sa/x"];
    let kuma = PlatformSpec::Kuma {
        mesh: "default".into(),
        zone: "zone-1".into(),
        namespace: "kuma-system".into(),
        egress_port: 10002,
    };
    let mut allowed_somewhere = 0;
    for (name, policy) in [("example", example), ("default-identity", with_default.to_string())] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, &policy).unwrap();
        let manifests = stdout_of(&["render", "kuma", file.to_str().unwrap()]);
        let permitted = kuma_allowed_ids(&manifests);
        assert!(!permitted.is_empty(), "{name}: no MeshTrafficPermission spiffeIDs:\n{manifests}");
        // What the zone egress runs: the policy verbatim plus render kuma's platform.
        let configuration = format!("{}\n", topology::plugin_config(&manifests).unwrap());
        assert_eq!(Some(&configuration), plugin_configuration(&policy, &kuma).as_ref(), "{name}");
        let plugin_file = dir.join(format!("{name}-plugin-configuration.json"));
        std::fs::write(&plugin_file, &configuration).unwrap();
        for caller in callers {
            let id = format!("spiffe://default.zone-1.mesh.local/ns/{caller}");
            let out = cli(&[
                "explain",
                plugin_file.to_str().unwrap(),
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
