//! External destinations: host patterns and ports, their policy layer and identity mapping, and the
//! table that finds the destination of a request's host:port in one or two hash lookups.

use rustc_hash::FxHashMap;

use crate::config_document::{DestinationSpec, PolicySpec, Protocol};
use crate::config_error::{validate_unique_names, Errors, JsonPath};
use crate::identity_mapping::{ExternalIdentity, IdentityMapping};
use crate::policy::{LayerKind, PolicyLayer};
use crate::policy_value::ValueRules;

/// One external destination, compiled.
#[derive(Debug)]
pub struct Destination {
    pub name: Box<str>,
    pub protocol: Protocol,
    pub policies: PolicyLayer,
    pub identities: IdentityMapping,
}

/// Finds the destination of a host:port. Exact hosts win over wildcards, longer wildcards over shorter.
#[derive(Debug, Default)]
pub struct DestinationTable {
    destinations: Vec<Destination>,
    /// Lower-case host → (port, index into `destinations`).
    exact: FxHashMap<Box<str>, Vec<(u16, usize)>>,
    /// For `*.partner.example`, the key `.partner.example`.
    wildcard: FxHashMap<Box<str>, Vec<(u16, usize)>>,
    /// Number of external identities, all destinations together ([`crate::identity_mapping::ExternalIdentity::index`]).
    identity_count: usize,
}

impl DestinationTable {
    /// Compiles `destinations`, taking over their strings; a host:port declared twice is an error.
    pub fn compile(specs: Vec<DestinationSpec>, rules: &ValueRules<'_>, errors: &mut Errors) -> Self {
        let path = JsonPath::Root("destinations");
        if specs.is_empty() {
            errors.push(path, "must declare at least one destination");
        }
        validate_unique_names(errors, &path, specs.iter().map(|d| d.name.as_str()));
        let mut table = Self {
            destinations: Vec::with_capacity(specs.len()),
            exact: FxHashMap::with_capacity_and_hasher(specs.iter().map(|d| d.hosts.len()).sum(), Default::default()),
            wildcard: FxHashMap::default(),
            identity_count: 0,
        };
        for (index, spec) in specs.into_iter().enumerate() {
            let path = path.index(index);
            let ports = compile_ports(&spec, &path, errors);
            let hosts_path = path.field("hosts");
            if spec.hosts.is_empty() {
                errors.push(hosts_path, "must list at least one host");
            }
            for (h, host) in spec.hosts.iter().enumerate() {
                let lower = host.to_ascii_lowercase();
                let (map, key) = match lower.strip_prefix('*') {
                    Some(suffix) if suffix.strip_prefix('.').is_some_and(valid_host) => {
                        (&mut table.wildcard, suffix.to_string())
                    }
                    None if valid_host(&lower) => (&mut table.exact, lower),
                    _ => {
                        errors.push(
                            hosts_path.index(h),
                            format!("{host:?} is not a host name or a leading wildcard like \"*.example.com\""),
                        );
                        continue;
                    }
                };
                let entries = map.entry(key.into()).or_default();
                for &port in &ports {
                    if let Some((_, other)) = entries.iter().find(|(p, _)| *p == port) {
                        errors.push(
                            hosts_path.index(h),
                            format!("{host}:{port} is already declared by destinations[{other}]"),
                        );
                    } else {
                        entries.push((port, index));
                    }
                }
            }
            if spec.protocol.is_l4() {
                let why = format!(
                    "HTTP-only: a {} connection carries no method or path, so this rule would never apply to it",
                    spec.protocol.as_str()
                );
                refuse_http_only_fields(&spec.policies, &path.field("policies"), &why, errors);
                if spec.shared_cluster.is_some() && spec.protocol == Protocol::Tls {
                    errors.push(
                        path.field("sharedCluster"),
                        "a tls (passthrough) destination presents no client certificate of the gateway's: there is none to choose per connection",
                    );
                }
            }
            table.destinations.push(Destination {
                name: spec.name.into_boxed_str(),
                protocol: spec.protocol,
                policies: PolicyLayer::compile(
                    spec.policies,
                    LayerKind::Destination,
                    &path.field("policies"),
                    rules,
                    errors,
                ),
                identities: IdentityMapping::compile(
                    spec.identities,
                    spec.default_identity,
                    spec.shared_cluster,
                    &path,
                    rules,
                    &mut table.identity_count,
                    errors,
                ),
            });
        }
        table
    }

    /// The destination of `host` (lower-case, no port, no trailing dot) and `port`.
    pub fn lookup(&self, host: &str, port: u16) -> Option<&Destination> {
        let find = |entries: Option<&Vec<(u16, usize)>>| {
            entries?.iter().find(|(p, _)| *p == port).and_then(|(_, i)| self.destinations.get(*i))
        };
        if let Some(found) = find(self.exact.get(host)) {
            return Some(found);
        }
        // Try every proper suffix starting at a dot, longest first: a.b.partner.example → .b.partner.example, ...
        host.match_indices('.')
            .filter(|(i, _)| *i > 0)
            .find_map(|(i, _)| find(host.get(i..).and_then(|suffix| self.wildcard.get(suffix))))
    }

    /// Every external identity, with its destination, in [`ExternalIdentity::index`] order.
    pub fn identities(&self) -> impl Iterator<Item = (&Destination, &ExternalIdentity)> {
        self.destinations.iter().flat_map(|d| d.identities.identities().map(move |i| (d, i)))
    }

    /// Number of external identities, all destinations together.
    pub fn identity_count(&self) -> usize {
        self.identity_count
    }

    /// Whether some destination is reached by the network (L4) filter.
    pub fn has_l4(&self) -> bool {
        self.destinations.iter().any(|d| d.protocol.is_l4())
    }

    /// Every destination, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Destination> {
        self.destinations.iter()
    }
}

/// An L4 connection carries no method and no path: a rule that names them could never match it (Istio
/// silently drops such a rule for TCP; here it is an error).
pub fn refuse_http_only_fields(policies: &[PolicySpec], path: &JsonPath<'_>, why: &str, errors: &mut Errors) {
    for (p, policy) in policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            for (t, to) in rule.to.iter().enumerate() {
                let o = &to.operation;
                for (name, values) in [
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ] {
                    if !values.is_empty() {
                        let at = path.index(p);
                        let at = at.field("rules");
                        let at = at.index(r);
                        let at = at.field("to");
                        let at = at.index(t);
                        let at = at.field("operation");
                        errors.push(at.field(name), why);
                    }
                }
            }
        }
    }
}

fn compile_ports(spec: &DestinationSpec, path: &JsonPath<'_>, errors: &mut Errors) -> Vec<u16> {
    let path = path.field("ports");
    if spec.ports.is_empty() {
        errors.push(path, "must list at least one port");
    }
    let mut ports = Vec::with_capacity(spec.ports.len());
    for (i, &port) in spec.ports.iter().enumerate() {
        match u16::try_from(port).ok().filter(|p| *p != 0) {
            Some(p) if ports.contains(&p) => errors.push(path.index(i), format!("{p} is listed twice")),
            Some(p) => ports.push(p),
            None => errors.push(path.index(i), format!("{port} is not a port (1-65535)")),
        }
    }
    ports
}

/// DNS-style host name: labels of letters, digits, '-' and '_', separated by single dots.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn dest(name: &str, hosts: &[&str], ports: &[u32]) -> serde_json::Value {
        json!({"name": name, "hosts": hosts, "ports": ports,
               "identities": [{"name": "i", "cluster": "c", "principals": ["*"]}]})
    }

    fn table(specs: serde_json::Value) -> Result<DestinationTable, Vec<String>> {
        let specs: Vec<DestinationSpec> = serde_json::from_value(specs).unwrap();
        let mut errors = Errors::default();
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[]).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let t = DestinationTable::compile(specs, &rules, &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    fn name(t: &DestinationTable, host: &str, port: u16) -> Option<String> {
        t.lookup(host, port).map(|d| d.name.to_string())
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn exact_then_longest_wildcard() {
        let t = table(json!([
            dest("exact", &["API.partner.example"], &[443]),
            dest("wild", &["*.partner.example"], &[443, 8443]),
            dest("deep", &["*.eu.partner.example"], &[443])
        ]))
        .unwrap();
        assert_eq!(name(&t, "api.partner.example", 443).as_deref(), Some("exact"));
        assert_eq!(name(&t, "api.partner.example", 8443).as_deref(), Some("wild"));
        assert_eq!(name(&t, "x.partner.example", 443).as_deref(), Some("wild"));
        assert_eq!(name(&t, "a.b.partner.example", 443).as_deref(), Some("wild"));
        assert_eq!(name(&t, "x.eu.partner.example", 443).as_deref(), Some("deep"));
        assert_eq!(name(&t, "partner.example", 443), None, "a wildcard needs a label before it");
        assert_eq!(name(&t, "x.partner.example", 80), None);
        assert_eq!(name(&t, "unknown.example", 443), None);
        assert_eq!(name(&t, ".partner.example", 443), None);
        assert_eq!(t.iter().count(), 3);
        let indexes: Vec<(String, usize)> = t.identities().map(|(d, i)| (d.name.to_string(), i.index)).collect();
        assert_eq!(indexes, [("exact".into(), 0), ("wild".into(), 1), ("deep".into(), 2)]);
        assert_eq!(t.identity_count(), 3);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn invalid_destinations_name_the_field() {
        let e = table(json!([
            dest("a", &["api.example", "*", "a*.example", "bad host"], &[443, 0, 443]),
            dest("a", &["API.example"], &[443, 70000]),
            {"name": "b", "hosts": [], "ports": []}
        ]))
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "destinations[1].name",
                "destinations[0].ports[1]",
                "destinations[0].ports[2]",
                "destinations[0].hosts[1]",
                "destinations[0].hosts[2]",
                "destinations[0].hosts[3]",
                "destinations[1].ports[1]",
                "destinations[1].hosts[0]",
                "destinations[2].ports",
                "destinations[2].hosts",
                "destinations[2].identities",
            ],
            "{e:?}"
        );
        assert!(e[7].contains("already declared by destinations[0]"), "{e:?}");
        let e = table(json!([])).unwrap_err();
        assert!(e[0].starts_with("destinations: must declare"), "{e:?}");
    }

    /// A passthrough destination presents no certificate: a shared cluster there would be accepted and do nothing.
    #[wasm_bindgen_test(unsupported = test)]
    fn a_shared_cluster_on_a_passthrough_destination_is_refused() {
        let e = table(json!([
            {"name": "t", "protocol": "tls", "hosts": ["t.example"], "ports": [443], "sharedCluster": "t",
             "identities": [{"name": "i", "principals": ["*"]}]}
        ]))
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("destinations[0].sharedCluster: a tls (passthrough) destination"), "{e:?}");
        for protocol in ["http", "tcp"] {
            let ok = table(json!([
                {"name": "h", "protocol": protocol, "hosts": ["h.example"], "ports": [443], "sharedCluster": "h",
                 "identities": [{"name": "i", "principals": ["*"]}]}
            ]));
            assert!(ok.is_ok(), "{ok:?}");
        }
    }
}
