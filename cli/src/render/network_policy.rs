//! The Kubernetes NetworkPolicy that leaves workloads no way around the egress gateway, waypoint or zone
//! egress: pods of the workload namespaces may reach pods of the cluster (the gateway among them, and DNS)
//! and nothing else, so the only way out is through the proxy that runs egress-identity.

use egress_identity_core::config_document::{PluginConfigSpec, PolicySpec};

use super::{commented, map, s, strs, RenderError, Yaml};

/// The namespaces whose workloads the policy names as callers (exact `namespaces` and the namespace of
/// exact principals, in every layer and identity mapping), with `extra` (`--workload-namespace`), sorted.
/// Patterns name no namespace a NetworkPolicy can live in; give those with `--workload-namespace`.
pub fn workload_namespaces(
    spec: &PluginConfigSpec,
    extra: &[String],
    exit_namespace: &str,
) -> Result<Vec<String>, RenderError> {
    let mut found: Vec<String> = extra.to_vec();
    let policies = spec.gateway.policies.iter().chain(spec.destinations.iter().flat_map(|d| d.policies.iter()));
    let add_principal = |p: &str, found: &mut Vec<String>| {
        if let Some(ns) = namespace_of_principal(p) {
            found.push(ns.to_string());
        }
    };
    for policy in policies {
        for source in sources(policy) {
            found.extend(source.namespaces.iter().filter(|n| !n.contains('*')).cloned());
            for p in &source.principals {
                add_principal(p, &mut found);
            }
        }
    }
    for p in spec.destinations.iter().flat_map(|d| d.identities.iter()).flat_map(|i| i.principals.iter()) {
        add_principal(p, &mut found);
    }
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

fn sources(policy: &PolicySpec) -> impl Iterator<Item = &egress_identity_core::config_document::SourceSpec> {
    policy.rules.iter().flat_map(|r| r.from.iter()).map(|f| &f.source)
}

/// `team` of `[spiffe://]<td>/ns/team/sa/app1` (no pattern in the namespace).
fn namespace_of_principal(principal: &str) -> Option<&str> {
    let rest = principal.split_once("/ns/")?.1;
    let ns = rest.split('/').next()?;
    (!ns.is_empty() && !ns.contains('*')).then_some(ns)
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
    use crate::render::PolicyFile;

    #[test]
    fn namespaces_come_from_exact_namespaces_and_principals_only() {
        let policy = PolicyFile::parse(
            r#"{ "trustDomains": ["cluster.local"],
              "gateway": { "policies": [ { "name": "a", "action": "ALLOW", "rules": [ { "from": [ { "source": {
                "namespaces": ["team", "batch-*"], "principals": ["cluster.local/ns/payments/sa/x", "cluster.local/ns/ops-*"] } } ] } ] } ] },
              "destinations": [ { "name": "d", "hosts": ["d.example"], "ports": [443],
                "identities": [ { "name": "i", "cluster": "d|i", "principals": ["spiffe://cluster.local/ns/billing/sa/z"] } ] } ] }"#,
        )
        .unwrap();
        assert_eq!(workload_namespaces(&policy.spec, &[], "istio-egress").unwrap(), ["billing", "payments", "team"]);
        let with_extra = workload_namespaces(&policy.spec, &["batch-1".into()], "istio-egress").unwrap();
        assert_eq!(with_extra, ["batch-1", "billing", "payments", "team"]);
        let e = workload_namespaces(&policy.spec, &[], "team").unwrap_err();
        assert!(e.0.contains("\"team\" holds the callers and the egress proxy"), "{e}");
    }

    #[test]
    fn a_policy_naming_no_namespace_needs_the_flag() {
        let policy = PolicyFile::parse(
            r#"{ "trustDomains": ["cluster.local"], "destinations": [ { "name": "d", "hosts": ["d.example"], "ports": [443],
                "defaultIdentity": { "name": "i", "cluster": "d|i" } } ] }"#,
        )
        .unwrap();
        let e = workload_namespaces(&policy.spec, &[], "istio-egress").unwrap_err();
        assert!(e.0.contains("--workload-namespace"), "{e}");
    }
}
