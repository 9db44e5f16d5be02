//! Authorization policies with Istio AuthorizationPolicy semantics, compiled for the data path.
//!
//! Per layer: any matching DENY policy denies; otherwise any matching ALLOW policy allows; otherwise the
//! request is denied. A policy without rules matches nothing; a rule `{}` matches everything. Within a
//! `source`/`operation` all present fields must match; within a field any value may; `notX` matches when
//! no value matches. A rule matches when any of its `from` and any of its `to` entries match.

use std::borrow::Cow;

use crate::config::{Action, Errors, OperationSpec, PolicySpec, PortSpec, SourceSpec};
use crate::first_match_index::FirstMatchIndex;
use crate::pattern::{normalizer, verbatim, Case, PatternSet};
use crate::trust_domain::TrustDomains;

/// What the policies of a layer see of a request. Hosts are lower-case, paths carry no query string.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The caller's principal in Istio form, `td/ns/x/sa/y`, with an alias trust domain made local.
    pub principal: &'a str,
    /// The caller's trust domain, an alias made local.
    pub trust_domain: &'a str,
    pub namespace: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
}

/// Which layer a set of policies belongs to (the gateway layer alone may match hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Gateway,
    Destination,
}

/// The verdict of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'c> {
    /// Allowed by the named ALLOW policy; `rule` is the index of its first matching rule.
    Allow { policy: &'c str, rule: usize },
    /// Denied by the named DENY policy; `rule` is the index of its first matching rule.
    DeniedByPolicy { policy: &'c str, rule: usize },
    /// No ALLOW policy matched (including: the layer has none).
    NoMatchingAllow,
}

impl Verdict<'_> {
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// The compiled policies of one layer. Dry-run policies (Istio's `istio.io/dry-run`) are kept apart:
/// they never change the enforced verdict, only the shadow one.
#[derive(Debug, Default)]
pub struct PolicyLayer {
    deny: RuleList,
    allow: RuleList,
    dry_run_deny: Vec<Policy>,
    dry_run_allow: Vec<Policy>,
}

/// The enforced policies of one action, in order, indexed for first-match evaluation: rules whose only
/// constraint is `source.principals`, or only `operation.paths`, are found through a [`FirstMatchIndex`];
/// the other rules are scanned, but only those that come before the first indexed match.
#[derive(Debug, Default)]
struct RuleList {
    policies: Vec<Policy>,
    /// Ordinal (a rule's position in policy-then-rule order) → (policy index, rule index).
    ordinals: Vec<(usize, usize)>,
    by_principal: FirstMatchIndex,
    by_path: FirstMatchIndex,
    /// Ordinals of the rules no index covers, ascending.
    scanned: Vec<usize>,
}

impl RuleList {
    fn push(&mut self, policy: Policy) {
        let policy_index = self.policies.len();
        for (rule_index, rule) in policy.rules.iter().enumerate() {
            let ordinal = self.ordinals.len();
            self.ordinals.push((policy_index, rule_index));
            let indexed = match (rule.from.as_slice(), rule.to.as_slice()) {
                ([source], []) => source.only_principals().map(|set| (&mut self.by_principal, set)),
                ([], [operation]) => operation.only_paths().map(|set| (&mut self.by_path, set)),
                _ => None,
            };
            match indexed {
                Some((index, set)) => index.insert(set, ordinal),
                None => self.scanned.push(ordinal),
            }
        }
        self.policies.push(policy);
    }

    /// The first matching (policy, rule index), in policy-then-rule order.
    fn first_match(&self, request: &Attributes<'_>) -> Option<(&Policy, usize)> {
        let indexed = match (
            self.by_principal.first_match(Some(request.principal)),
            self.by_path.first_match(Some(request.path)),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let scanned = self
            .scanned
            .iter()
            .take_while(|&&ordinal| indexed.is_none_or(|first| ordinal < first))
            .find(|&&ordinal| self.rule(ordinal).is_some_and(|rule| rule.matches(request)))
            .copied();
        let &(policy, rule) = self.ordinals.get(scanned.or(indexed)?)?;
        Some((self.policies.get(policy)?, rule))
    }

    fn rule(&self, ordinal: usize) -> Option<&Rule> {
        let &(policy, rule) = self.ordinals.get(ordinal)?;
        self.policies.get(policy)?.rules.get(rule)
    }
}

#[derive(Debug)]
struct Policy {
    name: Box<str>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// Empty: any source.
    from: Vec<Source>,
    /// Empty: any operation.
    to: Vec<Operation>,
}

/// A field and its negation; `None` means the field was not given and does not constrain.
#[derive(Debug, Default)]
struct Constraint {
    any_of: Option<PatternSet>,
    none_of: Option<PatternSet>,
}

impl Constraint {
    fn matches(&self, value: Option<&str>) -> bool {
        self.any_of.as_ref().is_none_or(|set| set.matches(value))
            && self.none_of.as_ref().is_none_or(|set| !set.matches(value))
    }
}

#[derive(Debug, Default)]
struct PortConstraint {
    any_of: Option<Vec<u16>>,
    none_of: Option<Vec<u16>>,
}

impl PortConstraint {
    fn matches(&self, port: u16) -> bool {
        self.any_of.as_ref().is_none_or(|ports| ports.contains(&port))
            && self.none_of.as_ref().is_none_or(|ports| !ports.contains(&port))
    }
}

#[derive(Debug)]
struct Source {
    principals: Constraint,
    namespaces: Constraint,
    trust_domains: Constraint,
}

#[derive(Debug)]
struct Operation {
    hosts: Constraint,
    ports: PortConstraint,
    methods: Constraint,
    paths: Constraint,
}

impl PolicyLayer {
    /// Compiles the policies of one layer; errors are reported under `path` (e.g. `gateway.policies`).
    pub fn compile(specs: &[PolicySpec], kind: LayerKind, path: &str, trust: &TrustDomains, errors: &mut Errors) -> Self {
        crate::config::validate_unique_names(errors, path, specs.iter().map(|p| p.name.as_str()));
        let mut layer = Self::default();
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("{path}[{i}]");
            let rules = spec
                .rules
                .iter()
                .enumerate()
                .map(|(r, rule)| {
                    let path = format!("{path}.rules[{r}]");
                    Rule {
                        from: rule
                            .from
                            .iter()
                            .enumerate()
                            .map(|(f, from)| {
                                Source::compile(&from.source, &format!("{path}.from[{f}].source"), trust, errors)
                            })
                            .collect(),
                        to: rule
                            .to
                            .iter()
                            .enumerate()
                            .map(|(t, to)| {
                                Operation::compile(&to.operation, kind, &format!("{path}.to[{t}].operation"), errors)
                            })
                            .collect(),
                    }
                })
                .collect();
            let policy = Policy { name: spec.name.as_str().into(), rules };
            match (spec.action, spec.dry_run) {
                (Action::Deny, false) => layer.deny.push(policy),
                (Action::Allow, false) => layer.allow.push(policy),
                // Dry-run policies are evaluated only for the shadow verdict, by a plain scan.
                (Action::Deny, true) => layer.dry_run_deny.push(policy),
                (Action::Allow, true) => layer.dry_run_allow.push(policy),
            }
        }
        layer
    }

    /// Evaluates the enforced policies: DENY first, then ALLOW, else deny.
    pub fn evaluate(&self, request: &Attributes<'_>) -> Verdict<'_> {
        if let Some((policy, rule)) = self.deny.first_match(request) {
            return Verdict::DeniedByPolicy { policy: &policy.name, rule };
        }
        match self.allow.first_match(request) {
            Some((policy, rule)) => Verdict::Allow { policy: &policy.name, rule },
            None => Verdict::NoMatchingAllow,
        }
    }

    /// The verdict the layer would give if its dry-run policies were enforced too; `None` when the
    /// layer has no dry-run policy.
    pub fn evaluate_shadow(&self, request: &Attributes<'_>) -> Option<Verdict<'_>> {
        if self.dry_run_deny.is_empty() && self.dry_run_allow.is_empty() {
            return None;
        }
        Some(evaluate(
            self.dry_run_deny.iter().chain(&self.deny.policies),
            self.allow.policies.iter().chain(&self.dry_run_allow),
            request,
        ))
    }

    /// Number of policies in the layer, dry-run ones included.
    pub fn len(&self) -> usize {
        self.deny.policies.len() + self.allow.policies.len() + self.dry_run_deny.len() + self.dry_run_allow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Plain first-match evaluation over policies in order (the shadow verdict's path).
fn evaluate<'c>(
    mut deny: impl Iterator<Item = &'c Policy>,
    mut allow: impl Iterator<Item = &'c Policy>,
    request: &Attributes<'_>,
) -> Verdict<'c> {
    if let Some((policy, rule)) = deny.find_map(|p| p.matching_rule(request).map(|r| (p, r))) {
        return Verdict::DeniedByPolicy { policy: &policy.name, rule };
    }
    match allow.find_map(|p| p.matching_rule(request).map(|r| (p, r))) {
        Some((policy, rule)) => Verdict::Allow { policy: &policy.name, rule },
        None => Verdict::NoMatchingAllow,
    }
}

impl Policy {
    /// Index of the first rule that matches.
    fn matching_rule(&self, request: &Attributes<'_>) -> Option<usize> {
        self.rules.iter().position(|rule| rule.matches(request))
    }
}

impl Rule {
    fn matches(&self, request: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(request)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(request)))
    }
}

impl Source {
    fn compile(spec: &SourceSpec, path: &str, trust: &TrustDomains, errors: &mut Errors) -> Self {
        let principal = normalizer(|v| trust.canonical_principal_pattern(v));
        let trust_domain = normalizer(|v| trust.canonical_trust_domain_pattern(v));
        let field = |values: &[String], name: &str, normalize: &dyn Fn(&str) -> Cow<'_, str>, errors: &mut Errors| {
            compile_field(values, Case::Sensitive, normalize, &format!("{path}.{name}"), errors)
        };
        Self {
            principals: Constraint {
                any_of: field(&spec.principals, "principals", &principal, errors),
                none_of: field(&spec.not_principals, "notPrincipals", &principal, errors),
            },
            namespaces: Constraint {
                any_of: field(&spec.namespaces, "namespaces", &verbatim, errors),
                none_of: field(&spec.not_namespaces, "notNamespaces", &verbatim, errors),
            },
            trust_domains: Constraint {
                any_of: field(&spec.trust_domains, "trustDomains", &trust_domain, errors),
                none_of: field(&spec.not_trust_domains, "notTrustDomains", &trust_domain, errors),
            },
        }
    }

    /// The principals' patterns, if they are this source's only constraint.
    fn only_principals(&self) -> Option<&PatternSet> {
        let others = [&self.namespaces, &self.trust_domains];
        let alone = self.principals.none_of.is_none() && others.iter().all(|c| c.any_of.is_none() && c.none_of.is_none());
        self.principals.any_of.as_ref().filter(|_| alone)
    }

    fn matches(&self, request: &Attributes<'_>) -> bool {
        self.principals.matches(Some(request.principal))
            && self.namespaces.matches(request.namespace)
            && self.trust_domains.matches(Some(request.trust_domain))
    }
}

impl Operation {
    fn compile(spec: &OperationSpec, kind: LayerKind, path: &str, errors: &mut Errors) -> Self {
        if kind == LayerKind::Destination {
            for (name, values) in [("hosts", &spec.hosts), ("notHosts", &spec.not_hosts)] {
                if !values.is_empty() {
                    errors.push(
                        format!("{path}.{name}"),
                        "not allowed in a destination's policies: the destination's hosts already apply",
                    );
                }
            }
        }
        let field = |values: &[String], name: &str, case: Case, errors: &mut Errors| {
            compile_field(values, case, &verbatim, &format!("{path}.{name}"), errors)
        };
        Self {
            hosts: Constraint {
                any_of: field(&spec.hosts, "hosts", Case::Insensitive, errors),
                none_of: field(&spec.not_hosts, "notHosts", Case::Insensitive, errors),
            },
            ports: PortConstraint {
                any_of: compile_ports(&spec.ports, &format!("{path}.ports"), errors),
                none_of: compile_ports(&spec.not_ports, &format!("{path}.notPorts"), errors),
            },
            methods: Constraint {
                any_of: field(&spec.methods, "methods", Case::Sensitive, errors),
                none_of: field(&spec.not_methods, "notMethods", Case::Sensitive, errors),
            },
            paths: Constraint {
                any_of: field(&spec.paths, "paths", Case::Sensitive, errors),
                none_of: field(&spec.not_paths, "notPaths", Case::Sensitive, errors),
            },
        }
    }

    /// The paths' patterns, if they are this operation's only constraint.
    fn only_paths(&self) -> Option<&PatternSet> {
        let others = [&self.hosts, &self.methods];
        let alone = self.paths.none_of.is_none()
            && self.ports.any_of.is_none()
            && self.ports.none_of.is_none()
            && others.iter().all(|c| c.any_of.is_none() && c.none_of.is_none());
        self.paths.any_of.as_ref().filter(|_| alone)
    }

    fn matches(&self, request: &Attributes<'_>) -> bool {
        self.hosts.matches(Some(request.host))
            && self.ports.matches(request.port)
            && self.methods.matches(Some(request.method))
            && self.paths.matches(Some(request.path))
    }
}

/// An empty list is treated as absent, as Istio does.
fn compile_field(
    values: &[String],
    case: Case,
    normalize: &dyn Fn(&str) -> Cow<'_, str>,
    path: &str,
    errors: &mut Errors,
) -> Option<PatternSet> {
    if values.is_empty() {
        return None;
    }
    match PatternSet::compile(values, case, normalize) {
        Ok(set) => Some(set),
        Err((index, e)) => {
            errors.push(format!("{path}[{index}]"), e);
            None
        }
    }
}

fn compile_ports(values: &[PortSpec], path: &str, errors: &mut Errors) -> Option<Vec<u16>> {
    if values.is_empty() {
        return None;
    }
    let mut ports = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        match value.to_port() {
            Ok(port) => ports.push(port),
            Err(e) => errors.push(format!("{path}[{i}]"), e),
        }
    }
    Some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn layer(kind: LayerKind, policies: serde_json::Value) -> Result<PolicyLayer, Vec<String>> {
        let specs: Vec<PolicySpec> = serde_json::from_value(policies).unwrap();
        let mut errors = Errors::default();
        let trust = TrustDomains::new(&["cluster.local".into(), "other.td".into(), "partner.local".into()], None, &[]).unwrap();
        let layer = PolicyLayer::compile(&specs, kind, "p", &trust, &mut errors);
        if errors.is_empty() {
            Ok(layer)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    fn gw(policies: serde_json::Value) -> PolicyLayer {
        layer(LayerKind::Gateway, policies).unwrap()
    }

    fn req(principal: &'static str) -> Attributes<'static> {
        let (td, path) = principal.split_once('/').unwrap_or((principal, ""));
        let namespace = path.strip_prefix("ns/").and_then(|p| p.split('/').next());
        Attributes {
            principal,
            trust_domain: td,
            namespace,
            host: "api.partner.example",
            port: 443,
            method: "GET",
            path: "/v1/items",
        }
    }

    const APP1: &str = "cluster.local/ns/team/sa/app1";

    #[wasm_bindgen_test(unsupported = test)]
    fn no_policies_deny() {
        assert_eq!(gw(json!([])).evaluate(&req(APP1)), Verdict::NoMatchingAllow);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn allow_policy_without_rules_allows_nothing_and_empty_rule_allows_all() {
        let l = gw(json!([{"name": "empty", "action": "ALLOW"}]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::NoMatchingAllow);
        let l = gw(json!([{"name": "all", "action": "ALLOW", "rules": [{}]}]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "all", rule: 0 });
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn deny_policy_without_rules_never_matches() {
        let l = gw(json!([
            {"name": "d", "action": "DENY"},
            {"name": "a", "action": "ALLOW", "rules": [{}]}
        ]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "a", rule: 0 });
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn deny_beats_allow_whatever_the_order() {
        let l = gw(json!([
            {"name": "a", "action": "ALLOW", "rules": [{}]},
            {"name": "d", "action": "DENY", "rules": [{"from": [{"source": {"principals": [APP1]}}]}]}
        ]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::DeniedByPolicy { policy: "d", rule: 0 });
        assert_eq!(l.evaluate(&req("cluster.local/ns/team/sa/app2")), Verdict::Allow { policy: "a", rule: 0 });
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn principals_match_with_or_without_scheme_and_wildcards() {
        for pattern in ["spiffe://cluster.local/ns/team/sa/app1", APP1, "cluster.local/ns/team/*", "*/sa/app1", "*"] {
            let l = gw(json!([{"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": [pattern]}}]}]}]));
            assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "a", rule: 0 }, "{pattern}");
            assert_eq!(l.evaluate(&req("other.td/ns/x/sa/y")) == Verdict::Allow { policy: "a", rule: 0 }, pattern == "*", "{pattern}");
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn not_fields_and_absent_namespace() {
        let l = gw(json!([{"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"notNamespaces": ["legacy"]}}]}]}]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "a", rule: 0 });
        assert_eq!(l.evaluate(&req("cluster.local/ns/legacy/sa/x")), Verdict::NoMatchingAllow);
        // A principal without /ns/ has no namespace: `namespaces` cannot match it, `notNamespaces` does.
        assert_eq!(l.evaluate(&req("cluster.local/billing")), Verdict::Allow { policy: "a", rule: 0 });
        let l = gw(json!([{"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["*"]}}]}]}]));
        assert_eq!(l.evaluate(&req("cluster.local/billing")), Verdict::NoMatchingAllow);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn fields_are_anded_values_ored_entries_ored() {
        let l = gw(json!([{"name": "a", "action": "ALLOW", "rules": [{
            "from": [
                {"source": {"namespaces": ["team"], "principals": ["*/sa/app1"]}},
                {"source": {"trustDomains": ["partner.local"]}}
            ],
            "to": [
                {"operation": {"methods": ["GET", "HEAD"], "paths": ["/v1/*"]}},
                {"operation": {"ports": ["8443"]}}
            ]
        }]}]));
        let allow = Verdict::Allow { policy: "a", rule: 0 };
        assert_eq!(l.evaluate(&req(APP1)), allow);
        assert_eq!(l.evaluate(&req("cluster.local/ns/team/sa/app2")), Verdict::NoMatchingAllow, "principal AND namespace");
        assert_eq!(l.evaluate(&req("partner.local/ns/x/sa/y")), allow, "second from entry");
        let mut post = req(APP1);
        post.method = "POST";
        assert_eq!(l.evaluate(&post), Verdict::NoMatchingAllow, "method AND path");
        post.port = 8443;
        assert_eq!(l.evaluate(&post), allow, "second to entry");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn operation_fields() {
        let l = gw(json!([{"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {
            "hosts": ["*.Partner.Example"], "notPorts": [80], "notMethods": ["DELETE"], "notPaths": ["/admin*"]
        }}]}]}]));
        let allow = Verdict::Allow { policy: "a", rule: 0 };
        assert_eq!(l.evaluate(&req(APP1)), allow);
        let mut r = req(APP1);
        r.host = "api.other.example";
        assert_eq!(l.evaluate(&r), Verdict::NoMatchingAllow);
        let mut r = req(APP1);
        r.port = 80;
        assert_eq!(l.evaluate(&r), Verdict::NoMatchingAllow);
        let mut r = req(APP1);
        r.method = "DELETE";
        assert_eq!(l.evaluate(&r), Verdict::NoMatchingAllow);
        let mut r = req(APP1);
        r.path = "/admin/users";
        assert_eq!(l.evaluate(&r), Verdict::NoMatchingAllow);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn destination_layer_rejects_hosts_and_errors_carry_paths() {
        let e = layer(LayerKind::Destination, json!([
            {"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"hosts": ["x"]}}]}]}
        ]))
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p[0].rules[0].to[0].operation.hosts: not allowed"), "{e:?}");
        let e = layer(LayerKind::Gateway, json!([
            {"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["ok", "a*b"]}}],
                                                        "to": [{"operation": {"ports": [0]}}]}]},
            {"name": "a", "action": "DENY"}
        ]))
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("p[1].name: \"a\" is used twice"), "{e:?}");
        assert!(e[1].starts_with("p[0].rules[0].from[0].source.principals[1]: '*'"), "{e:?}");
        assert!(e[2].starts_with("p[0].rules[0].to[0].operation.ports[0]: 0 is not a port"), "{e:?}");
    }
}
