//! The namespaces a policy names as callers: the exact `namespaces` of its rules' sources and the namespace
//! of every exact Istio-shaped principal (`…/ns/<namespace>/…`) in rules and identities. Renderers keep the
//! workloads of these namespaces off the external network (a NetworkPolicy each), so that the gateway is
//! their only way out.

use crate::config_document::{PluginConfigSpec, PolicySpec};

/// The caller namespaces of `spec`, sorted, each once.
pub fn of(spec: &PluginConfigSpec) -> Vec<Box<str>> {
    let mut found: Vec<&str> = Vec::new();
    let policies = spec.gateway.policies.iter().chain(spec.destinations.iter().flat_map(|d| d.policies.iter()));
    for policy in policies {
        for source in sources(policy) {
            found.extend(source.namespaces.iter().flatten().map(String::as_str).filter(|n| !n.contains('*')));
            found.extend(source.principals.iter().flatten().filter_map(|p| namespace_of_principal(p)));
        }
    }
    for identity in &spec.identities {
        found.extend(identity.principals.iter().flatten().filter_map(|p| namespace_of_principal(p)));
    }
    found.sort_unstable();
    found.dedup();
    found.into_iter().map(Into::into).collect()
}

fn sources(policy: &PolicySpec) -> impl Iterator<Item = &crate::config_document::SourceSpec> {
    policy.rules.iter().flat_map(|r| r.from.iter().flatten()).map(|f| &f.source)
}

/// `team` of `[spiffe://]<td>/ns/team/sa/app1` (no pattern in the namespace).
fn namespace_of_principal(principal: &str) -> Option<&str> {
    let rest = principal.split_once("/ns/")?.1;
    let ns = rest.split('/').next()?;
    (!ns.is_empty() && !ns.contains('*')).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn namespaces_come_from_sources_and_principals() {
        let spec: PluginConfigSpec = serde_json::from_value(serde_json::json!({
            "identities": [ { "name": "a", "principals": ["spiffe://td/ns/billing/sa/x", "td/ns/*"] } ],
            "gateway": { "policies": [ { "name": "p", "action": "ALLOW", "rules": [
                { "from": [ { "source": { "namespaces": ["team", "q*"], "principals": ["td/ns/ops/sa/y"] } } ] } ] } ] },
            "destinations": []
        }))
        .unwrap();
        let found = of(&spec);
        let ns: Vec<&str> = found.iter().map(|n| &**n).collect();
        assert_eq!(ns, ["billing", "ops", "team"]);
    }
}
