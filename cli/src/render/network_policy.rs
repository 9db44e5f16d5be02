//! The Kubernetes NetworkPolicy that leaves workloads no way around the egress gateway, waypoint or zone
//! egress: pods of the workload namespaces may reach pods of the cluster (the gateway among them, and DNS)
//! and nothing else, so the only way out is through the proxy that runs egress-identity.

use egress_identity_core::config::Config;

use super::{commented, map, s, strs, RenderError, Yaml};

/// The namespaces whose workloads the policy names as callers (the core's
/// [`egress_identity_core::caller_namespaces`]), with `extra` (`--workload-namespace`), sorted. Patterns name
/// no namespace a NetworkPolicy can live in; give those with `--workload-namespace`.
pub fn workload_namespaces(
    config: &Config,
    extra: &[String],
    exit_namespace: &str,
) -> Result<Vec<String>, RenderError> {
    let mut found: Vec<String> = extra.to_vec();
    found.extend(config.caller_namespaces.iter().map(|n| n.to_string()));
    found.sort();
    found.dedup();
    if found.iter().any(|n| n == exit_namespace) {
        return Err(RenderError(format!(
            "namespace {exit_namespace:?} holds the callers and the egress proxy: a NetworkPolicy keeping its pods in the cluster would cut the proxy off too; run the proxy in a namespace of its own (--namespace)"
        )));
    }
    if found.is_empty() {
        return Err(RenderError(
            "no caller namespace can be read from the policy (no exact namespace or principal): name the namespaces to keep off the external network with --workload-namespace".into(),
        ));
    }
    Ok(found)
}

/// One NetworkPolicy per namespace: every pod may open connections to pods of the cluster only.
pub fn lockdown(namespaces: &[String], exit: &str) -> Vec<Yaml> {
    namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let node = map([
                ("apiVersion", s("networking.k8s.io/v1")),
                ("kind", s("NetworkPolicy")),
                ("metadata", map([("name", s("egress-identity-no-way-around")), ("namespace", s(ns))])),
                (
                    "spec",
                    map([
                        ("podSelector", Yaml::Map(vec![])),
                        ("policyTypes", strs(["Egress"])),
                        (
                            "egress",
                            Yaml::Seq(vec![commented(
                                "Pods of any namespace: the egress proxy, the control plane, kube-dns, other workloads. No\nipBlock: no address outside the cluster.",
                                map([("to", Yaml::Seq(vec![map([("namespaceSelector", Yaml::Map(vec![]))])]))]),
                            )]),
                        ),
                    ]),
                ),
            ]);
            if i == 0 {
                commented(
                    format!("No way around {exit}: the pods of each caller namespace reach pods of the cluster and nothing\nelse, so what leaves the cluster leaves through the proxy that runs egress-identity. Namespaces: those\nthe policy names (exact namespaces and principals) and --workload-namespace. Caveats: NetworkPolicies\nadd up (another one with an ipBlock reopens the way); needs a CNI that enforces them; node-local DNS\ncaches and the API server are not pods (add their addresses if workloads use them)."),
                    node,
                )
            } else {
                node
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_identity_core::config_document::PlatformSpec;

    fn config(text: &str) -> Config {
        Config::load_for(text.as_bytes(), &PlatformSpec::IstioGateway).unwrap()
    }

    #[test]
    fn namespaces_come_from_exact_namespaces_and_principals_only() {
        let config = config(
            r#"{ "trustDomains": ["cluster.local"],
              "identities": [ { "name": "i", "principals": ["spiffe://cluster.local/ns/billing/sa/z"] } ],
              "gateway": { "policies": [ { "name": "a", "action": "ALLOW", "rules": [ { "from": [ { "source": {
                "namespaces": ["team", "batch-*"], "principals": ["cluster.local/ns/payments/sa/x", "cluster.local/ns/ops-*"] } } ] } ] } ] },
              "destinations": [ { "name": "d", "host": "d.example", "port": 443, "identities": ["i"] } ] }"#,
        );
        assert_eq!(workload_namespaces(&config, &[], "istio-egress").unwrap(), ["billing", "payments", "team"]);
        let with_extra = workload_namespaces(&config, &["batch-1".into()], "istio-egress").unwrap();
        assert_eq!(with_extra, ["batch-1", "billing", "payments", "team"]);
        let e = workload_namespaces(&config, &[], "team").unwrap_err();
        assert!(e.0.contains("\"team\" holds the callers and the egress proxy"), "{e}");
    }

    #[test]
    fn a_policy_naming_no_namespace_needs_the_flag() {
        let config = config(
            r#"{ "trustDomains": ["cluster.local"], "identities": [ { "name": "i" } ],
                "destinations": [ { "name": "d", "host": "d.example", "port": 443, "defaultIdentity": "i" } ] }"#,
        );
        let e = workload_namespaces(&config, &[], "istio-egress").unwrap_err();
        assert!(e.0.contains("--workload-namespace"), "{e}");
    }
}
