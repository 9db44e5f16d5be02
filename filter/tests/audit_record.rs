//! `auditRecord` on the real gateway: the default writes the decision as a JSON object only, `none` writes
//! nothing, and neither changes what is decided. (`both`, the demo's setting, is checked line against object
//! in cli/tests/operations.rs.)
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;

use egress_identity_harness::client::Call;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Options, Topology};
use serde_json::Value;

fn policy(audit_record: Option<&str>) -> String {
    let mut policy: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("envoy/policy.json")).unwrap()).unwrap();
    let object = policy.as_object_mut().unwrap();
    object.remove("auditRecord");
    if let Some(forms) = audit_record {
        object.insert("auditRecord".into(), Value::from(forms));
    }
    serde_json::to_string(&policy).unwrap()
}

fn entry(t: &Topology, path: &str) -> Value {
    t.gateway_access_log_entry(path).unwrap_or_else(|| panic!("no access-log entry for {path}"))
}

/// The access log shows a missing filter state as null or "-".
fn absent(value: &Value) -> bool {
    value.is_null() || value == "-"
}

#[test]
fn the_default_writes_the_object_only_and_none_writes_nothing() {
    for (forms, name) in [(None, "default"), (Some("none"), "none")] {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("audit-record-{name}"));
        let t = Topology::start(&Options::new(dir).with_plugin_config(policy(forms))).unwrap();
        let pki = t.pki();
        let allowed = t.client().send(&Call::get(&pki.workload("team-app1"), "/audit/allow")).unwrap();
        assert_eq!(allowed.status, 200, "{name}: {}", allowed.summary());
        let denied = t.client().send(&Call::get(&pki.workload("quarantine-default"), "/audit/deny")).unwrap();
        assert_eq!(denied.status, 403, "{name}: {}", denied.summary());
        for (path, decision) in [("/audit/allow", "allow"), ("/audit/deny", "deny")] {
            let e = entry(&t, path);
            assert!(absent(&e["audit"]), "{name} {path}: the logfmt line was written: {e}");
            if forms.is_none() {
                assert_eq!(e["decision"]["value"]["decision"], decision, "{name} {path}: {e}");
            } else {
                assert!(absent(&e["decision"]), "{name} {path}: the object was written: {e}");
            }
        }
    }
}
