//! The Istio waypoint platform, end to end on a real Envoy: in an ambient waypoint the caller's identity
//! arrives as filter state `io.istio.peer_principal` (set by the HBONE terminator), not as a TLS peer
//! certificate. Here `envoy.filters.http.set_filter_state` plays the terminator's part, in front of the real
//! filter running the plugin configuration `render istio --mode waypoint` writes (the policy plus
//! `"platform": {"kind": "istio-waypoint"}`, which sets the principal source and how requests arrive:
//! `http://<host>/`), and one upstream cluster per external identity, named as the platform names them (each
//! a local listener that answers with its identity's name).
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::platform::{plugin_configuration, Platform};
use egress_identity_harness::process::Supervised;
use egress_identity_harness::topology::{self, envoy_bin, wasm_path, WASM_IN_RUN_DIR};
use serde_json::{json, Value};

const ADMIN: u16 = 19901;
const LISTENER: u16 = 19080;
const IDENTITY_PORTS: [(&str, u16); 2] = [("team.app1", 19081), ("team.app2", 19082)];
/// The request header the stand-in terminator copies into `io.istio.peer_principal`.
const PEER_HEADER: &str = "x-test-waypoint-peer";

/// The policy: one destination, two identities; nothing in it names the platform.
const POLICY: &str = r#"{
  "trustDomains": ["cluster.local"],
  "identities": [
    { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] },
    { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app2"] }
  ],
  "gateway": { "policies": [ { "name": "team-only", "action": "ALLOW",
    "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
  "destinations": [ {
    "name": "partner-api", "host": "api.partner.example", "port": 443,
    "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ],
    "identities": ["team.app1", "team.app2"]
  } ]
}"#;

/// The policy's plugin configuration for an Istio waypoint, as `render istio --mode waypoint` writes it.
fn plugin_config() -> String {
    let text = plugin_configuration(POLICY, &PlatformSpec::IstioWaypoint).expect("the policy is a JSON object");
    let config = Config::load(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.platform, Platform::IstioWaypoint, "{text}");
    text
}

/// A plain-HTTP listener whose one route matches every path and then does `action` (route or response).
fn http_listener(name: &str, port: u16, http_filters: Value, action: Value) -> Value {
    let mut route = json!({ "match": { "prefix": "/" } });
    for (key, value) in action.as_object().unwrap() {
        route[key] = value.clone();
    }
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route] }] },
                "http_filters": http_filters
            }
        }] }]
    })
}

fn bootstrap() -> Value {
    let router = json!({ "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } });
    let waypoint_filters = json!([
        { "name": "envoy.filters.http.set_filter_state", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [{
                "object_key": "io.istio.peer_principal",
                "factory_key": "envoy.string",
                "format_string": { "text_format_source": { "inline_string": format!("%REQ({PEER_HEADER})%") } }
            }]
        } },
        { "name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "egress-identity", "root_id": "egress-identity", "fail_open": false,
                "vm_config": { "vm_id": "egress-identity", "runtime": "envoy.wasm.runtime.v8",
                               "code": { "local": { "filename": WASM_IN_RUN_DIR } } },
                "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config() }
            }
        } },
        router.clone()
    ]);
    let mut listeners = vec![http_listener(
        "waypoint",
        LISTENER,
        waypoint_filters,
        json!({ "route": { "cluster_header": "x-egress-identity-cluster" } }),
    )];
    let mut clusters = vec![];
    for (identity, port) in IDENTITY_PORTS {
        listeners.push(http_listener(
            identity,
            port,
            json!([router.clone()]),
            json!({ "direct_response": { "status": 200, "body": { "inline_string": identity } } }),
        ));
        let name = format!("partner-api|{}", identity.replace('.', "-"));
        clusters.push(json!({
            "name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] }
        }));
    }
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": ADMIN } } },
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

/// (status, body) of a request whose caller the waypoint identified as `peer`, calling http://api.partner.example/.
fn call(peer: &str) -> (u16, String) {
    call_host(peer, "api.partner.example")
}

/// (status, body) of a request for `host` (the `Host` header) whose caller the waypoint identified as `peer`.
fn call_host(peer: &str, host: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Host: {host}"))
        .arg("-H")
        .arg(format!("{PEER_HEADER}: {peer}"))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{LISTENER}/v1/orders"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_waypoint_peer_principal_selects_the_external_identity() {
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("istio-waypoint");
    topology::prepare_run_dir(&run_dir, &wasm_path()).unwrap();
    let config = run_dir.join("bootstrap.json");
    std::fs::write(&config, serde_json::to_string_pretty(&bootstrap()).unwrap()).unwrap();
    let args: Vec<String> = ["-c", config.to_str().unwrap(), "--disable-hot-restart", "--concurrency", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut envoy =
        Supervised::spawn("waypoint envoy", &envoy_bin(), &args, &run_dir, &run_dir.join("logs/envoy.log")).unwrap();
    envoy
        .wait_ready(Duration::from_secs(60), || topology::http_get(ADMIN, "/ready").is_some_and(|(s, _)| s == 200))
        .unwrap_or_else(|e| panic!("envoy did not start: {e}\n{}", envoy.log()));

    // Both the SPIFFE form and Istio's td/path form are accepted.
    assert_eq!(call("spiffe://cluster.local/ns/team/sa/app1"), (200, "team.app1".to_string()));
    assert_eq!(call("cluster.local/ns/team/sa/app2"), (200, "team.app2".to_string()));

    let denied = |peer: &str| {
        let (status, body) = call(peer);
        assert_eq!(status, 403, "{peer}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(denied("spiffe://cluster.local/ns/sandbox/sa/x")["layer"], "gateway");
    assert_eq!(denied("spiffe://evil.example/ns/team/sa/app1")["reason"], "untrusted_trust_domain");
    assert_eq!(denied("spiffe://cluster.local/ns/team/sa/../app1")["reason"], "invalid_spiffe_id");

    // Applications call the destination as http://<host>/ (the ServiceEntry's port 80), with or without the
    // port; the partner's own port is not how a waypoint receives it.
    assert_eq!(call_host("cluster.local/ns/team/sa/app1", "api.partner.example:80"), (200, "team.app1".to_string()));
    let (status, body) = call_host("cluster.local/ns/team/sa/app1", "api.partner.example:443");
    assert_eq!(status, 403, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "unknown_destination", "{body}");
    envoy.stop();
}
