//! End-to-end for the operator features, on the real gateway running `envoy/gateway.yaml` with the demo
//! policy plus two dry-run policies: `explain` gives the filter's own answer, metrics reach Envoy's admin
//! endpoint, the access log carries the audit record, and dry-run policies are counted, never enforced.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::topology::{self, Options, Topology};
use serde_json::{json, Value};

/// (workload certificate in the harness PKI, its SPIFFE ID)
const APP1: (&str, &str) = ("team-app1", "spiffe://cluster.local/ns/team/sa/app1");
const APP2: (&str, &str) = ("team-app2", "spiffe://cluster.local/ns/team/sa/app2");
const APP3: (&str, &str) = ("team-app3", "spiffe://cluster.local/ns/team/sa/app3");
const SANDBOX: (&str, &str) = ("sandbox-default", "spiffe://cluster.local/ns/sandbox/sa/default");
const QUARANTINE: (&str, &str) = ("quarantine-default", "spiffe://cluster.local/ns/quarantine/sa/default");

struct Setup {
    topology: Topology,
    policy_file: PathBuf,
}

/// The demo policy plus a dry-run DENY of app2 (gateway) and a dry-run ALLOW of app3 (destination).
fn policy_with_dry_run() -> String {
    let yaml = std::fs::read_to_string(egress_identity_harness::repo_root().join("envoy/gateway.yaml")).unwrap();
    let mut policy: Value = serde_json::from_str(&topology::plugin_config(&yaml).unwrap()).unwrap();
    policy["gateway"]["policies"].as_array_mut().unwrap().push(json!({
        "name": "dry-run-deny-app2", "action": "DENY", "dryRun": true,
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/team/sa/app2"]}}]}]
    }));
    policy["destinations"][0]["policies"].as_array_mut().unwrap().push(json!({
        "name": "dry-run-allow-app3", "action": "ALLOW", "dryRun": true,
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/team/sa/app3"]}}]}]
    }));
    serde_json::to_string_pretty(&policy).unwrap()
}

/// One topology for this binary; tests take the lock because they compare metric deltas.
fn setup() -> (MutexGuard<'static, ()>, &'static Setup) {
    static LOCK: Mutex<()> = Mutex::new(());
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let setup = SETUP.get_or_init(|| {
        let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operations");
        let policy = policy_with_dry_run();
        let topology =
            Topology::start(&Options::new(&run_dir).with_plugin_config(policy.clone())).map_err(|e| e.to_string())?;
        let policy_file = run_dir.join("policy.json");
        std::fs::write(&policy_file, policy).map_err(|e| e.to_string())?;
        Ok(Setup { topology, policy_file })
    });
    match setup {
        Ok(s) => (guard, s),
        Err(e) => panic!("could not start the operations topology: {e}"),
    }
}

fn send(s: &Setup, who: &str, host: &str, path: &str) -> Response {
    let call = Call::get(&s.topology.pki().workload(who), path).host(host);
    s.topology.client().send(&call).expect("running curl")
}

fn explain(s: &Setup, principal: &str, host: &str, path: &str) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress-identity"));
    cmd.arg("explain").arg(&s.policy_file).args(["--principal", principal, "--path", path, "--json"]);
    match host.split_once(':') {
        Some((h, port)) => cmd.args(["--host", h, "--port", port]),
        None => cmd.args(["--host", host]),
    };
    let out = cmd.output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 3)), "explain failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn explain_gives_the_same_answer_as_the_filter() {
    let (_lock, s) = setup();
    let cases = [
        (APP1, "api.partner.example", "/v1/orders"),
        (APP2, "api.partner.example", "/v1/invoices"),
        (APP3, "api.partner.example", "/v1/x"),
        (SANDBOX, "api.partner.example", "/v1/x"),
        (QUARANTINE, "api.partner.example", "/v1/x"),
        (APP1, "api.partner.example", "/admin/users"),
        (APP1, "unknown.example", "/v1/x"),
        (APP1, "api.partner.example:9443", "/v1/x"),
        // The single-cluster destination: the certificate chosen per connection, same answer.
        (APP2, "api.partner.example:8443", "/v1/shared"),
    ];
    let mut allowed = 0;
    for ((who, principal), host, path) in cases {
        let expected = explain(s, principal, host, path)["decision"].clone();
        let r = send(s, who, host, path);
        match expected["decision"].as_str() {
            Some("allow") => {
                allowed += 1;
                assert_eq!(
                    r.status,
                    200,
                    "{principal} {host}{path}: explain said {expected}, gateway: {}",
                    r.summary()
                );
                let identity = expected["identity"].as_str().unwrap();
                assert_eq!(
                    r.field("client_subject"),
                    Some(format!("CN={identity}").as_str()),
                    "{principal} {host}{path}"
                );
            }
            _ => {
                assert_eq!(
                    r.status,
                    403,
                    "{principal} {host}{path}: explain said {expected}, gateway: {}",
                    r.summary()
                );
                assert_eq!(r.json.as_ref(), Some(&expected), "{principal} {host}{path}: 403 body vs explain");
            }
        }
    }
    assert_eq!(allowed, 3, "app1 and app2 at partner-api, app2 at partner-shared are the allowed cases");
}

#[test]
fn decisions_are_counted_in_envoys_stats() {
    let (_lock, s) = setup();
    // As Prometheus scrapes them: one family, the decision's parts as labels.
    let series: [(&str, &[(&str, &str)]); 5] = [
        ("egress_identity_decisions_total", &[("protocol", "http"), ("decision", "allow")]),
        ("egress_identity_decisions_total", &[("decision", "deny")]),
        (
            "egress_identity_decisions_total",
            &[("decision", "allow"), ("destination", "partner-api"), ("identity", "team.app1")],
        ),
        ("egress_identity_decisions_total", &[("layer", "gateway"), ("reason", "no_matching_allow")]),
        (
            "egress_identity_decisions_total",
            &[
                ("layer", "destination"),
                ("reason", "denied_by_policy"),
                ("policy", "deny-admin-paths"),
                ("destination", "partner-api"),
            ],
        ),
    ];
    s.topology.settle_counters();
    let values = || series.iter().map(|(f, l)| s.topology.metric(f, l)).collect::<Vec<u64>>();
    let cache = || {
        s.topology.metric("egress_identity_certificate_cache_hits_total", &[])
            + s.topology.metric("egress_identity_certificate_cache_misses_total", &[])
    };
    let (before, cache_before) = (values(), cache());
    assert_eq!(send(s, APP1.0, "api.partner.example", "/v1/metrics").status, 200);
    assert_eq!(send(s, SANDBOX.0, "api.partner.example", "/v1/metrics").status, 403);
    assert_eq!(send(s, APP1.0, "api.partner.example", "/admin/metrics").status, 403);
    s.topology.settle_counters();
    let deltas: Vec<u64> = values().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(deltas, [1, 2, 1, 1, 1], "{series:?}");
    assert_eq!(cache() - cache_before, 3);
    assert_eq!(s.topology.metric("egress_identity_config_generation", &[]), 1);
    let samples = s.topology.prometheus();
    // The sandbox denial has no destination (the gateway layer decided first) and no policy.
    let sandbox: Vec<_> = samples
        .iter()
        .filter(|x| {
            x.family == "egress_identity_decisions_total"
                && x.labels.get("reason").map(String::as_str) == Some("no_matching_allow")
        })
        .filter(|x| x.labels.get("layer").map(String::as_str) == Some("gateway"))
        .collect();
    assert!(
        sandbox.iter().all(|x| !x.labels.contains_key("destination") && !x.labels.contains_key("policy")),
        "{sandbox:?}"
    );
    // Counters end in _total; no metric of ours escapes the labels into its name.
    assert!(samples.iter().filter(|x| x.family.starts_with("egress_identity_")).all(|x| {
        x.family.ends_with("_total")
            || x.family == "egress_identity_config_generation"
            || x.family == "egress_identity_build_info"
    }));
    // The per-identity clusters keep their names through Envoy's own tag extraction.
    for cluster in ["partner-api|team-app1", "partner-api|team-app2"] {
        let found = samples.iter().any(|x| {
            x.family == "envoy_cluster_upstream_cx_total"
                && x.labels.get("envoy_cluster_name").map(String::as_str) == Some(cluster)
        });
        assert!(found, "envoy_cluster_upstream_cx_total{{envoy_cluster_name={cluster:?}}} not in /stats/prometheus");
    }
}

#[test]
fn dry_run_policies_are_counted_but_never_enforced() {
    let (_lock, s) = setup();
    s.topology.settle_counters();
    let stat = |s: &Setup, decision: &str| {
        s.topology.metric("egress_identity_dry_run_decisions_total", &[("decision", decision)])
    };
    let (allow0, deny0) = (stat(s, "allow"), stat(s, "deny"));
    // app2 matches a dry-run DENY at the gateway: still forwarded, counted as a shadow deny.
    let r = send(s, APP2.0, "api.partner.example", "/v1/dry-run");
    assert_eq!(r.status, 200, "{}", r.summary());
    s.topology.settle_counters();
    assert_eq!(stat(s, "deny") - deny0, 1);
    // app3 matches a dry-run ALLOW at the destination: still denied, counted as a shadow allow.
    let r = send(s, APP3.0, "api.partner.example", "/v1/dry-run");
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!(r.field("reason"), Some("no_matching_allow"));
    s.topology.settle_counters();
    assert_eq!(stat(s, "allow") - allow0, 1);
    assert_eq!(stat(s, "deny") - deny0, 1);
}

fn access_log_entry(s: &Setup, path: &str) -> Value {
    s.topology.gateway_access_log_entry(path).unwrap_or_else(|| panic!("no gateway access-log entry for {path}"))
}

#[test]
fn the_access_log_carries_the_audit_record_that_explain_predicts() {
    let (_lock, s) = setup();
    let cases = [
        (APP1, "/v1/audit-allow", 200),
        (QUARANTINE, "/v1/audit-deny", 403),
        (APP2, "/v1/audit-dry-run", 200),
        (SANDBOX, "/v1/audit-no-allow", 403),
    ];
    for ((who, principal), path, status) in cases {
        assert_eq!(send(s, who, "api.partner.example", path).status, status, "{principal} {path}");
        let logged = access_log_entry(s, path);
        let predicted = explain(s, principal, "api.partner.example", path);
        assert_eq!(logged["audit"], predicted["audit"], "{principal} {path}: access log vs explain");
        // The same fields as a JSON object (the Struct in filter state wasm.egress_identity.decision).
        let structured = &logged["decision"]["value"];
        let line: serde_json::Map<String, Value> = logged["audit"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        assert_eq!(structured, &Value::Object(line), "{principal} {path}: {logged}");
    }
    // The plugin says once per configuration which version loaded which configuration, whatever the
    // number of workers and of filters (HTTP and network) sharing the VM.
    let log = s.topology.gateway_log();
    let loaded: Vec<&str> = log.lines().filter(|l| l.contains(": configuration ") && l.contains(" loaded: ")).collect();
    assert_eq!(loaded.len(), 1, "{loaded:#?}");
    let version = format!("version {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(loaded[0].contains(&version) && loaded[0].contains("): configuration "), "{}", loaded[0]);
    let audit = |path| access_log_entry(s, path)["audit"].as_str().unwrap().to_owned();
    assert_eq!(
        audit("/v1/audit-allow"),
        format!(
            "decision=allow principal={} destination=partner-api gateway_policy=allow-mesh-workloads \
             destination_policy=allow-team-apps identity=team.app1 dry_run=allow",
            APP1.1
        )
    );
    assert_eq!(
        audit("/v1/audit-deny"),
        format!(
            "decision=deny principal={} layer=gateway policy=deny-quarantine reason=denied_by_policy dry_run=deny",
            QUARANTINE.1
        )
    );
    assert!(audit("/v1/audit-dry-run").ends_with(" identity=team.app2 dry_run=deny"), "{}", audit("/v1/audit-dry-run"));
    assert_eq!(
        audit("/v1/audit-no-allow"),
        format!("decision=deny principal={} layer=gateway reason=no_matching_allow dry_run=deny", SANDBOX.1)
    );
}

/// The shipped monitoring (monitoring/): a real Prometheus scrapes the gateway with the alert rules loaded;
/// labelled PromQL queries count what was sent, every dashboard query returns data, and the alerts that
/// this traffic should trip fire.
#[test]
fn a_real_prometheus_sees_labelled_decisions_the_dashboard_and_the_alerts() {
    use egress_identity_harness::prometheus::{Server, JOB};
    use std::time::{Duration, Instant};
    let (_lock, s) = setup();
    let monitoring = egress_identity_harness::repo_root().join("monitoring");
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operations");
    // Scraped as a pod is: the metrics listener, not the admin interface.
    let prometheus = Server::start(&run_dir, topology::METRICS_PORT, &[monitoring.join("alerts.yaml")]).unwrap();
    let job = format!("job=\"{JOB}\"");
    let value = |q: &str| prometheus.value(q).unwrap_or_else(|e| panic!("{e}\n{}", prometheus.log()));
    // Wait for the first scrape.
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(&format!("count(egress_identity_config_generation{{{job}}})")) < 1.0 {
        assert!(Instant::now() < deadline, "Prometheus never scraped the gateway:\n{}", prometheus.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    let counts = [
        format!("sum(egress_identity_decisions_total{{{job},decision=\"allow\",identity=\"team.app1\"}})"),
        format!("sum(egress_identity_decisions_total{{{job},decision=\"deny\",layer=\"gateway\",reason=\"no_matching_allow\"}})"),
        format!("sum(egress_identity_decisions_total{{{job},decision=\"deny\",policy=\"deny-admin-paths\",destination=\"partner-api\"}})"),
        format!("sum(egress_identity_decisions_total{{{job},reason=\"unknown_destination\"}})"),
        format!("sum(egress_identity_dry_run_decisions_total{{{job},decision=\"deny\"}})"),
    ];
    let before: Vec<f64> = counts.iter().map(|q| value(q)).collect();
    for (who, host, path, status) in [
        (APP1.0, "api.partner.example", "/v1/prom", 200),
        (APP1.0, "api.partner.example", "/v1/prom", 200),
        (APP2.0, "api.partner.example", "/v1/prom", 200), // a dry-run DENY
        (SANDBOX.0, "api.partner.example", "/v1/prom", 403),
        (APP1.0, "api.partner.example", "/admin/prom", 403),
        (APP1.0, "unknown.partner.example", "/v1/prom", 403),
    ] {
        assert_eq!(send(s, who, host, path).status, status, "{who} {host}{path}");
    }
    // Counters reach Envoy within a second, Prometheus scrapes every second.
    s.topology.settle_counters();
    std::thread::sleep(Duration::from_secs(3));
    let deltas: Vec<f64> = counts.iter().zip(&before).map(|(q, b)| value(q) - b).collect();
    // Dry-run: app2 (its dry-run DENY), and the sandbox and admin requests, which the dry-run layers deny too.
    assert_eq!(deltas, [2.0, 1.0, 1.0, 1.0, 3.0], "{counts:#?}");

    // Every query of the dashboard returns data (Grafana's variables as a user would leave them).
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$job", ".*");
            let results = prometheus.query(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
            assert!(results.iter().any(|(_, v)| *v > 0.0), "{title}: `{expr}` returned no data: {results:?}");
        }
    }
    let variable = &dashboard["templating"]["list"][1];
    assert_eq!(variable["name"], "job");
    let jobs = prometheus.query("count by (job) (egress_identity_config_generation)").unwrap();
    assert!(jobs.iter().any(|(l, _)| l.get("job").map(String::as_str) == Some(JOB)), "{jobs:?}");

    // The alerts this traffic trips (no `for:`): an unknown destination, a dry-run policy that would deny.
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = ["EgressIdentityUnknownDestination", "EgressIdentityDryRunWouldDeny"];
    loop {
        let alerts = prometheus.alerts().unwrap();
        let firing: Vec<&str> = alerts
            .iter()
            .filter(|a| a.state == "firing" && a.labels.get("job").map(String::as_str) == Some(JOB))
            .map(|a| a.name.as_str())
            .collect();
        if wanted.iter().all(|w| firing.contains(w)) {
            assert!(
                !firing.contains(&"EgressIdentityHostErrors") && !firing.contains(&"EgressIdentityNotConfigured"),
                "{firing:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "alerts firing: {firing:?}, wanted {wanted:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
