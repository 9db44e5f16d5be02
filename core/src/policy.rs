//! Authorization policies with Istio AuthorizationPolicy semantics, compiled for the data path.
//!
//! Per layer: any matching DENY policy denies; otherwise any matching ALLOW policy allows; otherwise the
//! request is denied. A policy without rules matches nothing; a rule `{}` matches everything. Within a
//! `source`/`operation` all present fields must match; within a field any value may; `notX` matches when
//! no value matches. A rule matches when any of its `from` and any of its `to` entries match.

use crate::config_document::{Action, OperationSpec, PolicySpec, PortSpec, RuleSpec, SourceSpec};
use crate::config_error::{validate_unique_names, Errors, JsonPath};
use crate::first_match_index::FirstMatchIndex;
use crate::pattern::{normalizer, Case, Normalize, Pattern, PatternSet};
use crate::policy_value::{self, ValueRules};

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

/// Which layer a set of policies belongs to (the gateway layer, and a dynamic destination's, may match
/// hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Gateway,
    Destination,
    /// A destination reached where the caller asks (a wildcard, several hosts or ports): its rules may pick
    /// concrete hosts ([`crate::destination::Destination::dynamic`]).
    DynamicDestination,
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
    dry_run_deny: Vec<DryRunPolicy>,
    dry_run_allow: Vec<DryRunPolicy>,
}

/// The enforced policies of one action, in order, indexed for first-match evaluation: rules whose only
/// constraint is `source.principals`, or only `operation.paths`, are kept in a [`FirstMatchIndex`] alone;
/// the other rules are scanned, but only those that come before the first indexed match.
#[derive(Debug, Default)]
struct RuleList {
    /// Each policy's name and the ordinal of its first rule (a rule's ordinal is its position in
    /// policy-then-rule order).
    policies: Vec<(Box<str>, usize)>,
    /// Number of rules, all policies together.
    rules: usize,
    by_principal: FirstMatchIndex,
    by_path: FirstMatchIndex,
    /// The rules no index holds, with their ordinals, ascending.
    scanned: Vec<(usize, Rule)>,
}

impl RuleList {
    /// Compiles and adds the policy at `path`: a rule with a single indexed field goes into that field's
    /// index as its patterns alone, any other rule is compiled whole for scanning.
    fn push(
        &mut self,
        spec: PolicySpec,
        path: &JsonPath<'_>,
        kind: LayerKind,
        rules: &ValueRules<'_>,
        errors: &mut Errors,
    ) {
        self.policies.push((spec.name.into_boxed_str(), self.rules));
        let rules_path = path.field("rules");
        let principal = normalizer(|v| rules.principal(v));
        let paths = normalizer(|v| rules.path(v));
        for (r, mut rule) in spec.rules.into_iter().enumerate() {
            let ordinal = self.rules;
            self.rules += 1;
            let path = rules_path.index(r);
            let Some(single) = take_single_field(&mut rule) else {
                self.scanned.push((ordinal, Rule::compile(rule, kind, &path, rules, errors)));
                continue;
            };
            let (index, values, normalize, field): (_, _, &Normalize<'_>, _) = match single {
                SingleField::Principals(values) => {
                    (&mut self.by_principal, values, &principal, "from[0].source.principals")
                }
                SingleField::Paths(values) => (&mut self.by_path, values, &paths, "to[0].operation.paths"),
            };
            let add = |pattern| index.insert(pattern, ordinal);
            if let Err((bad, e)) = Pattern::parse_each(values, Case::Sensitive, normalize, add) {
                errors.push(path.field(field).index(bad), e);
            }
        }
    }

    /// The first matching (policy name, rule index), in policy-then-rule order.
    fn first_match(&self, request: &Attributes<'_>) -> Option<(&str, usize)> {
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
            .take_while(|(ordinal, _)| indexed.is_none_or(|first| *ordinal < first))
            .find(|(_, rule)| rule.matches(request))
            .map(|(ordinal, _)| *ordinal);
        let ordinal = scanned.or(indexed)?;
        // The last policy starting at or before the ordinal (a policy without rules starts where the next does).
        let policy = self.policies.partition_point(|&(_, first)| first <= ordinal).checked_sub(1)?;
        let (name, first) = self.policies.get(policy)?;
        Some((name, ordinal - first))
    }

    fn len(&self) -> usize {
        self.policies.len()
    }
}

/// A dry-run policy, compiled whole and scanned: it only decides the shadow verdict.
#[derive(Debug)]
struct DryRunPolicy {
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
    /// Compiles the policies of one layer, taking over their strings; errors are reported under `path`
    /// (e.g. `gateway.policies`).
    pub fn compile(
        specs: Vec<PolicySpec>,
        kind: LayerKind,
        path: &JsonPath<'_>,
        rules: &ValueRules<'_>,
        errors: &mut Errors,
    ) -> Self {
        validate_unique_names(errors, path, specs.iter().map(|p| p.name.as_str()));
        let mut layer = Self::default();
        for (i, spec) in specs.into_iter().enumerate() {
            let path = path.index(i);
            match (spec.action, spec.dry_run) {
                (Action::Deny, false) => layer.deny.push(spec, &path, kind, rules, errors),
                (Action::Allow, false) => layer.allow.push(spec, &path, kind, rules, errors),
                // Dry-run policies are evaluated only for the shadow verdict, by a plain scan.
                (Action::Deny, true) => {
                    layer.dry_run_deny.push(DryRunPolicy::compile(spec, &path, kind, rules, errors))
                }
                (Action::Allow, true) => {
                    layer.dry_run_allow.push(DryRunPolicy::compile(spec, &path, kind, rules, errors))
                }
            }
        }
        layer
    }

    /// Evaluates the enforced policies: DENY first, then ALLOW, else deny.
    pub fn evaluate(&self, request: &Attributes<'_>) -> Verdict<'_> {
        verdict(self.deny.first_match(request), self.allow.first_match(request))
    }

    /// The verdict the layer would give if its dry-run policies were enforced too; `None` when the
    /// layer has no dry-run policy. Dry-run DENY policies come before the enforced ones, dry-run ALLOW
    /// policies after them.
    pub fn evaluate_shadow(&self, request: &Attributes<'_>) -> Option<Verdict<'_>> {
        if self.dry_run_deny.is_empty() && self.dry_run_allow.is_empty() {
            return None;
        }
        let deny = first_match(&self.dry_run_deny, request).or_else(|| self.deny.first_match(request));
        let allow = self.allow.first_match(request).or_else(|| first_match(&self.dry_run_allow, request));
        Some(verdict(deny, allow))
    }

    /// The names of the enforced DENY policies, in order (each may be the `policy` of a denial).
    pub fn deny_policy_names(&self) -> impl Iterator<Item = &str> {
        self.deny.policies.iter().map(|(name, _)| &**name)
    }

    /// Number of policies in the layer, dry-run ones included.
    pub fn len(&self) -> usize {
        self.deny.len() + self.allow.len() + self.dry_run_deny.len() + self.dry_run_allow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layer's verdict from its first matching DENY and ALLOW (policy name, rule index).
fn verdict<'c>(deny: Option<(&'c str, usize)>, allow: Option<(&'c str, usize)>) -> Verdict<'c> {
    match (deny, allow) {
        (Some((policy, rule)), _) => Verdict::DeniedByPolicy { policy, rule },
        (None, Some((policy, rule))) => Verdict::Allow { policy, rule },
        (None, None) => Verdict::NoMatchingAllow,
    }
}

impl DryRunPolicy {
    fn compile(
        spec: PolicySpec,
        path: &JsonPath<'_>,
        kind: LayerKind,
        rules: &ValueRules<'_>,
        errors: &mut Errors,
    ) -> Self {
        let rules_path = path.field("rules");
        let rules = (spec.rules.into_iter().enumerate())
            .map(|(r, rule)| Rule::compile(rule, kind, &rules_path.index(r), rules, errors))
            .collect();
        Self { name: spec.name.into_boxed_str(), rules }
    }
}

/// Plain first-match evaluation over policies in order (the dry-run policies' path).
fn first_match<'c>(policies: &'c [DryRunPolicy], request: &Attributes<'_>) -> Option<(&'c str, usize)> {
    policies.iter().find_map(|p| p.rules.iter().position(|rule| rule.matches(request)).map(|r| (&*p.name, r)))
}

impl Rule {
    fn compile(
        spec: RuleSpec,
        kind: LayerKind,
        path: &JsonPath<'_>,
        rules: &ValueRules<'_>,
        errors: &mut Errors,
    ) -> Self {
        let from_path = path.field("from");
        let to_path = path.field("to");
        let from = present(spec.from, &from_path, errors);
        let to = present(spec.to, &to_path, errors);
        Self {
            from: (from.into_iter().enumerate())
                .map(|(f, from)| Source::compile(from.source, &from_path.index(f).field("source"), rules, errors))
                .collect(),
            to: (to.into_iter().enumerate())
                .map(|(t, to)| {
                    Operation::compile(to.operation, kind, &to_path.index(t).field("operation"), rules, errors)
                })
                .collect(),
        }
    }

    fn matches(&self, request: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(request)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(request)))
    }
}

impl Source {
    fn compile(spec: SourceSpec, path: &JsonPath<'_>, rules: &ValueRules<'_>, errors: &mut Errors) -> Self {
        let principal = normalizer(|v| rules.principal(v));
        let trust_domain = normalizer(|v| rules.trust_domain(v));
        let field = |values: Option<Vec<String>>, name: &str, normalize: &Normalize<'_>, errors: &mut Errors| {
            compile_field(values, Case::Sensitive, normalize, &path.field(name), errors)
        };
        Self {
            principals: Constraint {
                any_of: field(spec.principals, "principals", &principal, errors),
                none_of: field(spec.not_principals, "notPrincipals", &principal, errors),
            },
            namespaces: Constraint {
                any_of: field(spec.namespaces, "namespaces", &policy_value::namespace, errors),
                none_of: field(spec.not_namespaces, "notNamespaces", &policy_value::namespace, errors),
            },
            trust_domains: Constraint {
                any_of: field(spec.trust_domains, "trustDomains", &trust_domain, errors),
                none_of: field(spec.not_trust_domains, "notTrustDomains", &trust_domain, errors),
            },
        }
    }

    fn matches(&self, request: &Attributes<'_>) -> bool {
        self.principals.matches(Some(request.principal))
            && self.namespaces.matches(request.namespace)
            && self.trust_domains.matches(Some(request.trust_domain))
    }
}

impl Operation {
    fn compile(
        spec: OperationSpec,
        kind: LayerKind,
        path: &JsonPath<'_>,
        rules: &ValueRules<'_>,
        errors: &mut Errors,
    ) -> Self {
        if kind == LayerKind::Destination {
            for (name, values) in [("hosts", &spec.hosts), ("notHosts", &spec.not_hosts)] {
                if values.is_some() {
                    errors.push(
                        path.field(name),
                        "not allowed in the policies of a destination with one exact host: the destination's host already applies (a destination with a wildcard or several hosts may pick among them)",
                    );
                }
            }
        }
        let field =
            |values: Option<Vec<String>>, name: &str, case: Case, normalize: &Normalize<'_>, errors: &mut Errors| {
                compile_field(values, case, normalize, &path.field(name), errors)
            };
        let paths = normalizer(|v| rules.path(v));
        Self {
            hosts: Constraint {
                any_of: field(spec.hosts, "hosts", Case::Insensitive, &policy_value::host, errors),
                none_of: field(spec.not_hosts, "notHosts", Case::Insensitive, &policy_value::host, errors),
            },
            ports: PortConstraint {
                any_of: compile_ports(spec.ports, &path.field("ports"), errors),
                none_of: compile_ports(spec.not_ports, &path.field("notPorts"), errors),
            },
            methods: Constraint {
                any_of: field(spec.methods, "methods", Case::Sensitive, &policy_value::method, errors),
                none_of: field(spec.not_methods, "notMethods", Case::Sensitive, &policy_value::method, errors),
            },
            paths: Constraint {
                any_of: field(spec.paths, "paths", Case::Sensitive, &paths, errors),
                none_of: field(spec.not_paths, "notPaths", Case::Sensitive, &paths, errors),
            },
        }
    }

    fn matches(&self, request: &Attributes<'_>) -> bool {
        self.hosts.matches(Some(request.host))
            && self.ports.matches(request.port)
            && self.methods.matches(Some(request.method))
            && self.paths.matches(Some(request.path))
    }
}

/// The patterns of a rule whose only constraint is `source.principals`, or `operation.paths`: such a
/// rule lives in a [`FirstMatchIndex`] as these patterns alone.
enum SingleField {
    Principals(Vec<String>),
    Paths(Vec<String>),
}

fn take_single_field(rule: &mut RuleSpec) -> Option<SingleField> {
    match (rule.from.as_deref_mut(), rule.to.as_deref_mut()) {
        (Some([from]), None) if only_principals(&from.source) => {
            from.source.principals.take().map(SingleField::Principals)
        }
        (None, Some([to])) if only_paths(&to.operation) => to.operation.paths.take().map(SingleField::Paths),
        _ => None,
    }
}

/// Whether `principals` is the source's only field, with values. Destructured without `..` so that a new
/// field must be considered here.
fn only_principals(source: &SourceSpec) -> bool {
    let SourceSpec { principals, not_principals, namespaces, not_namespaces, trust_domains, not_trust_domains } =
        source;
    let others = [not_principals, namespaces, not_namespaces, trust_domains, not_trust_domains];
    principals.as_ref().is_some_and(|p| !p.is_empty()) && others.iter().all(|values| values.is_none())
}

/// Whether `paths` is the operation's only field, with values.
fn only_paths(operation: &OperationSpec) -> bool {
    let OperationSpec { hosts, not_hosts, ports, not_ports, methods, not_methods, paths, not_paths } = operation;
    let others = [hosts, not_hosts, methods, not_methods, not_paths];
    paths.as_ref().is_some_and(|p| !p.is_empty())
        && ports.is_none()
        && not_ports.is_none()
        && others.iter().all(|values| values.is_none())
}

/// The items of a list field: absent is no constraint; an empty list is refused, because it reads as "none"
/// while Istio's semantics (and ours) make it "any".
fn present<T>(values: Option<Vec<T>>, path: &JsonPath<'_>, errors: &mut Errors) -> Vec<T> {
    match values {
        Some(values) if values.is_empty() => {
            errors.push(path, EMPTY_LIST);
            values
        }
        Some(values) => values,
        None => Vec::new(),
    }
}

/// Why an empty list in a rule is refused.
pub const EMPTY_LIST: &str =
    "an empty list matches any value here, which is easily read as \"none\": omit the field to match any";

/// A field's patterns; `None` when the field is absent (or refused for being empty).
fn compile_field(
    values: Option<Vec<String>>,
    case: Case,
    normalize: &Normalize<'_>,
    path: &JsonPath<'_>,
    errors: &mut Errors,
) -> Option<PatternSet> {
    let values = present(values, path, errors);
    if values.is_empty() {
        return None;
    }
    match PatternSet::compile(values, case, normalize) {
        Ok(set) => Some(set),
        Err((index, e)) => {
            errors.push(path.index(index), e);
            None
        }
    }
}

/// A port of an operation; a string must be written as a request carries it (digits only, no sign or
/// leading zero), or it would never match.
pub(crate) fn port(value: &PortSpec) -> Result<u16, String> {
    match value {
        PortSpec::Number(n) => {
            u16::try_from(*n).ok().filter(|p| *p != 0).ok_or_else(|| format!("{n} is not a port (1-65535)"))
        }
        PortSpec::Text(s) => crate::request::parse_port(s)
            .ok_or_else(|| format!("{s:?} is not a port: 1-65535 in digits, without sign or leading zero")),
    }
}

fn compile_ports(values: Option<Vec<PortSpec>>, path: &JsonPath<'_>, errors: &mut Errors) -> Option<Vec<u16>> {
    let values = present(values, path, errors);
    if values.is_empty() {
        return None;
    }
    let mut ports = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        match port(value) {
            Ok(port) => ports.push(port),
            Err(e) => errors.push(path.index(i), e),
        }
    }
    Some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust_domain::TrustDomains;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn layer(kind: LayerKind, policies: serde_json::Value) -> Result<PolicyLayer, Vec<String>> {
        let specs: Vec<PolicySpec> = serde_json::from_value(policies).unwrap();
        let mut errors = Errors::default();
        let trust =
            TrustDomains::new(&["cluster.local".into(), "other.td".into(), "partner.local".into()], None, &[], None)
                .unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let layer = PolicyLayer::compile(specs, kind, &JsonPath::Root("p"), &rules, &mut errors);
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
    fn ports_accept_numbers_and_istio_strings() {
        assert_eq!(port(&PortSpec::Number(443)), Ok(443));
        assert_eq!(port(&PortSpec::Text("8443".into())), Ok(8443));
        assert!(port(&PortSpec::Number(0)).is_err());
        assert!(port(&PortSpec::Number(65536)).is_err());
        assert!(port(&PortSpec::Text("https".into())).is_err());
        for odd in ["+443", "0443", " 443", "443 ", ""] {
            assert!(port(&PortSpec::Text(odd.into())).is_err(), "{odd:?}");
        }
    }

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
            let l = gw(
                json!([{"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": [pattern]}}]}]}]),
            );
            assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "a", rule: 0 }, "{pattern}");
            assert_eq!(
                l.evaluate(&req("other.td/ns/x/sa/y")) == Verdict::Allow { policy: "a", rule: 0 },
                pattern == "*",
                "{pattern}"
            );
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn not_fields_and_absent_namespace() {
        let l = gw(
            json!([{"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"notNamespaces": ["legacy"]}}]}]}]),
        );
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
        assert_eq!(
            l.evaluate(&req("cluster.local/ns/team/sa/app2")),
            Verdict::NoMatchingAllow,
            "principal AND namespace"
        );
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
        let e = layer(
            LayerKind::Destination,
            json!([
                {"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"hosts": ["x"]}}]}]}
            ]),
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("p[0].rules[0].to[0].operation.hosts: not allowed"), "{e:?}");
        let e = layer(
            LayerKind::Gateway,
            json!([
                {"name": "a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/ok", "a*b"]}}],
                                                            "to": [{"operation": {"ports": [0]}}]}]},
                {"name": "a", "action": "DENY"}
            ]),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("p[1].name: \"a\" is used twice"), "{e:?}");
        assert!(e[1].starts_with("p[0].rules[0].from[0].source.principals[1]: '*'"), "{e:?}");
        assert!(e[2].starts_with("p[0].rules[0].to[0].operation.ports[0]: 0 is not a port"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn indexed_rules_report_errors_under_the_same_paths() {
        let e = layer(LayerKind::Gateway, json!([
            {"name": "a", "action": "ALLOW", "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/a/sa/ok", "a*b", ""]}}]},
                {"to": [{"operation": {"paths": [""]}}]}
            ]},
            {"name": "d", "action": "DENY", "dryRun": true, "rules": [{"from": [{"source": {"principals": ["*x*"]}}]}]}
        ]))
        .unwrap_err();
        let wildcard = "'*' is only allowed alone, as a prefix (\"*suffix\") or as a suffix (\"prefix*\")";
        assert_eq!(
            e,
            [
                format!("p[0].rules[0].from[0].source.principals[1]: {wildcard}"),
                "p[0].rules[1].to[0].operation.paths[0]: empty value".to_string(),
                format!("p[1].rules[0].from[0].source.principals[0]: {wildcard}"),
            ]
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn shadow_verdict_puts_dry_run_denies_first_and_dry_run_allows_last() {
        let l = gw(json!([
            {"name": "allow-app1", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": [APP1]}}]}]},
            {"name": "deny-paths", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
            {"name": "dry-deny", "action": "DENY", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/v1/*"]}}]}]},
            {"name": "dry-allow", "action": "ALLOW", "dryRun": true, "rules": [{}]}
        ]));
        assert_eq!(l.evaluate(&req(APP1)), Verdict::Allow { policy: "allow-app1", rule: 0 });
        assert_eq!(l.evaluate_shadow(&req(APP1)), Some(Verdict::DeniedByPolicy { policy: "dry-deny", rule: 0 }));
        let mut admin = req("cluster.local/ns/team/sa/app2");
        admin.path = "/admin/users";
        assert_eq!(l.evaluate_shadow(&admin), Some(Verdict::DeniedByPolicy { policy: "deny-paths", rule: 0 }));
        admin.path = "/other";
        assert_eq!(l.evaluate(&admin), Verdict::NoMatchingAllow);
        assert_eq!(l.evaluate_shadow(&admin), Some(Verdict::Allow { policy: "dry-allow", rule: 0 }));
        assert_eq!(l.len(), 4);
    }
}
