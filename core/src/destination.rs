//! External destinations: the partner's host and port, the protocol, their policy layer and identity
//! mapping, and the table that finds the destination of a request or connection by the names the
//! platform delivers it under ([`crate::platform::Platform::fronts`]) in one hash lookup.

use rustc_hash::FxHashMap;

use crate::config_document::{DestinationSpec, OneOrMany, OperationSpec, PolicySpec, Protocol};
use crate::config_error::{destination_name, k8s_form, report_duplicates, shown, Errors, JsonPath};
use crate::identity::Identities;
use crate::identity_mapping::{DestinationRef, ExternalIdentity, IdentityMapping};
use crate::platform::{passthrough_object, Platform};
use crate::policy::{LayerKind, PolicyLayer};
use crate::policy_value::ValueRules;

/// One external destination, compiled.
#[derive(Debug)]
pub struct Destination {
    pub name: Box<str>,
    /// The partner's host (lower case), as workloads call it; a dynamic destination's first.
    pub host: Box<str>,
    /// The partner's port; a dynamic destination's first.
    pub port: u16,
    /// Every host it declares (lower case): exact names and `*.suffix` patterns.
    pub hosts: Vec<Box<str>>,
    /// Every port it declares.
    pub ports: Vec<u16>,
    /// Reached where the caller asks (Envoy's dynamic forward proxy): a wildcard, or several hosts or
    /// ports. Its policies and upstream see the concrete host and port; otherwise, `host` and `port`.
    pub dynamic: bool,
    pub protocol: Protocol,
    /// Single-cluster mode: one cluster presents each identity's certificate per connection.
    pub single_cluster: bool,
    /// A `tls` destination that forwards an encrypted ClientHello (ECH) on its outer server name.
    pub allow_encrypted_client_hello: bool,
    pub policies: PolicyLayer,
    pub identities: IdentityMapping,
}

/// Finds the destination of a host and port as the gateway receives them.
#[derive(Debug, Default)]
pub struct DestinationTable {
    destinations: Vec<Destination>,
    /// Lower-case host → how the destination arrives under it.
    fronts: FxHashMap<Box<str>, Vec<Arrival>>,
    /// The same for `*.suffix` hosts, keyed by `suffix`: tried, longest suffix first, when no exact
    /// host and port matches.
    wildcards: FxHashMap<Box<str>, Vec<Arrival>>,
    /// Number of external identities, all destinations together ([`ExternalIdentity::index`]).
    identity_count: usize,
    dynamic_l4: bool,
}

/// A destination as it arrives under a host: the port the gateway sees (`None` for a request that names
/// none), the destination (index into `destinations`), and the partner's port this arrival stands for.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    port: Option<u16>,
    index: usize,
    partner_port: u16,
}

/// What compiling destinations needs besides them.
pub struct Context<'a> {
    pub declared: &'a Identities,
    pub platform: &'a Platform,
    pub default_port: u16,
    pub rules: &'a ValueRules<'a>,
}

impl DestinationTable {
    /// Compiles `destinations`, taking over their strings. `used` marks the declared identities some
    /// destination names.
    pub fn compile(specs: Vec<DestinationSpec>, context: &Context<'_>, used: &mut [bool], errors: &mut Errors) -> Self {
        let path = JsonPath::Root("destinations");
        if specs.is_empty() {
            errors.push(path, "must declare at least one destination");
        }
        report_duplicates(errors, &path, specs.iter().map(|d| d.name.as_str()));
        let platform = context.platform;
        let mut table = Self {
            destinations: Vec::with_capacity(specs.len()),
            fronts: FxHashMap::with_capacity_and_hasher(specs.len(), Default::default()),
            wildcards: FxHashMap::default(),
            identity_count: 0,
            dynamic_l4: false,
        };
        // Kubernetes objects and clusters named after a destination and its identities: name → the destination.
        let mut objects: FxHashMap<String, usize> = FxHashMap::default();
        let names: Vec<String> = specs.iter().map(|d| d.name.clone()).collect();
        for (index, spec) in specs.into_iter().enumerate() {
            let path = path.index(index);
            if let Err(e) = destination_name(&spec.name) {
                errors.push(path.field("name"), e);
            }
            let hosts = compile_list(&spec.host, &path, "host", errors, |h, at, e| compile_host(h, at, e));
            let ports = compile_list(&spec.port, &path, "port", errors, compile_port);
            let dynamic = ports.len() > 1 || dynamic_host(&hosts);
            let host = hosts.first().cloned();
            let port = ports.first().copied().unwrap_or(0);
            if dynamic {
                if let Some(why) = platform.refuses_dynamic(spec.protocol) {
                    let field =
                        if ports.len() > 1 && hosts.len() == 1 && !dynamic_host(&hosts) { "port" } else { "host" };
                    errors.push(path.field(field), why);
                }
                if spec.single_cluster && spec.protocol == Protocol::Tcp {
                    errors.push(path.field("singleCluster"), "a dynamic tcp destination sets the upstream server name per connection through filter state; single-cluster mode for it is not supported: leave singleCluster out (one cluster per identity)");
                }
                check_dynamic_rules(&spec.policies, &hosts, &ports, &path.field("policies"), errors);
            }
            if spec.protocol.is_l4() {
                let why = format!(
                    "HTTP-only: a {} connection carries no method or path, so this rule would never apply to it",
                    spec.protocol.as_str()
                );
                refuse_http_only_fields(&spec.policies, &path.field("policies"), &why, errors);
            }
            if spec.single_cluster {
                if spec.protocol == Protocol::Tls {
                    errors.push(
                        path.field("singleCluster"),
                        "a tls (passthrough) destination presents no client certificate of the gateway's: there is none to choose per connection",
                    );
                } else if !platform.single_cluster() {
                    errors.push(
                        path.field("singleCluster"),
                        format!("{} cannot carry single-cluster mode: it needs Envoy's on-demand certificate selector on the cluster and set_filter_state in the filter chain, which its API does not express (an EnvoyFilter or MeshProxyPatch would be overwritten by the control plane's own cluster); render it for envoy, or leave singleCluster out (one cluster per identity)", platform.name()),
                    );
                }
            }
            if spec.allow_encrypted_client_hello && spec.protocol != Protocol::Tls {
                errors.push(
                    path.field("allowEncryptedClientHello"),
                    format!(
                        "only a tls (passthrough) destination reads the caller's ClientHello; this one is {}",
                        spec.protocol.as_str()
                    ),
                );
            }
            let destination = DestinationRef {
                name: &spec.name,
                host: host.as_deref().unwrap_or_default(),
                protocol: spec.protocol,
                port,
                single_cluster: spec.single_cluster,
            };
            let identities = IdentityMapping::compile(
                spec.identities,
                spec.default_identity,
                destination,
                context.declared,
                platform,
                &path,
                &mut table.identity_count,
                used,
                errors,
            );
            let mut objects_named = vec![spec.name.clone()];
            if spec.protocol == Protocol::Tls {
                objects_named.push(passthrough_object(&spec.name));
            } else if !spec.single_cluster {
                objects_named.extend(identities.identities().map(|i| format!("{}-{}", spec.name, k8s_form(&i.name))));
            }
            for name in objects_named {
                let other = objects.insert(name.clone(), index).filter(|other| *other != index);
                // The same destination name twice is reported as such.
                if let Some(other) = other.filter(|other| names.get(*other) != Some(&spec.name)) {
                    errors.push(
                        path.field("name"),
                        format!("{:?} and destinations[{other}] would both name objects {name:?} (a destination, or a destination and identity joined by '-'): rename one", spec.name),
                    );
                }
            }
            let mut clash = false;
            for (host, port) in hosts.iter().flat_map(|h| ports.iter().map(move |p| (h, *p))) {
                let only_port = ports.len() == 1;
                for front in platform.fronts(&spec.name, host, port, spec.protocol, context.default_port, only_port) {
                    let entries = match front.host.strip_prefix("*.") {
                        Some(suffix) => table.wildcards.entry(suffix.into()).or_default(),
                        None => table.fronts.entry(front.host.as_str().into()).or_default(),
                    };
                    match entries.iter().find(|a| a.port == front.port) {
                        // One error per destination: its other fronts clash with the same one.
                        Some(_) if clash => {}
                        Some(&Arrival { index: other, .. }) if other != index => {
                            clash = true;
                            errors.push(
                                path.field("host"),
                                format!(
                                    "{}: {}{} is already how destinations[{other}] arrives at the gateway ({})",
                                    platform.name(),
                                    front.host,
                                    front.port.map(|p| format!(":{p}")).unwrap_or_default(),
                                    platform.front_rule(spec.protocol)
                                ),
                            )
                        }
                        Some(_) => {}
                        None => entries.push(Arrival { port: front.port, index, partner_port: port }),
                    }
                }
            }
            table.dynamic_l4 |= dynamic && spec.protocol.is_l4();
            table.destinations.push(Destination {
                name: spec.name.into_boxed_str(),
                host: host.unwrap_or_default().into_boxed_str(),
                port,
                hosts: hosts.into_iter().map(String::into_boxed_str).collect(),
                ports,
                dynamic,
                protocol: spec.protocol,
                single_cluster: spec.single_cluster,
                allow_encrypted_client_hello: spec.allow_encrypted_client_hello,
                policies: PolicyLayer::compile(
                    spec.policies,
                    if dynamic { LayerKind::DynamicDestination } else { LayerKind::Destination },
                    &path.field("policies"),
                    context.rules,
                    errors,
                ),
                identities,
            });
        }
        table
    }

    /// The destination of `host` (lower-case, no trailing dot) and `port` (`None`: a request whose
    /// `:authority` names no port), as the gateway receives them, and the partner's port they stand for
    /// (a dynamic destination's concrete port: on Istio, `http://<host>/` stands for its one port).
    /// An exact host wins; then the longest `*.suffix` that covers the host, if the host is a valid DNS
    /// name (a wildcard's concrete host goes to DNS and into the upstream's SNI).
    pub fn lookup(&self, host: &str, port: Option<u16>) -> Option<(&Destination, u16)> {
        let find = |entries: &Vec<Arrival>| {
            let a = entries.iter().find(|a| a.port == port)?;
            Some((self.destinations.get(a.index)?, a.partner_port))
        };
        if let Some(found) = self.fronts.get(host).and_then(find) {
            return Some(found);
        }
        if self.wildcards.is_empty() || !valid_host(host) {
            return None;
        }
        // "a.b.example": "b.example", then "example".
        host.match_indices('.')
            .find_map(|(dot, _)| host.get(dot + 1..).and_then(|s| self.wildcards.get(s)).and_then(find))
    }

    /// Every external identity, with its destination, in [`ExternalIdentity::index`] order.
    pub fn identities(&self) -> impl Iterator<Item = (&Destination, &ExternalIdentity)> {
        self.destinations.iter().flat_map(|d| d.identities.identities().map(move |i| (d, i)))
    }

    /// Number of external identities, all destinations together.
    pub fn identity_count(&self) -> usize {
        self.identity_count
    }

    /// Whether some tcp/tls destination is dynamic: the gateway's L4 chain then resolves every connection's
    /// host in its DNS cache unless the filter names none (README "Wildcard destinations").
    pub fn has_dynamic_l4(&self) -> bool {
        self.dynamic_l4
    }

    /// Whether some destination is reached by the network (L4) filter.
    pub fn has_l4(&self) -> bool {
        self.destinations.iter().any(|d| d.protocol.is_l4())
    }

    /// Every destination, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Destination> {
        self.destinations.iter()
    }

    /// The destination named `name`.
    pub fn named(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| &*d.name == name)
    }
}

/// Whether these hosts make a destination dynamic: several, or a wildcard.
fn dynamic_host(hosts: &[String]) -> bool {
    hosts.len() > 1 || hosts.iter().any(|h| h.starts_with("*."))
}

/// `field` of a destination: one value or a non-empty list, each compiled by `compile` (which reports its
/// own errors at the path it is given); duplicates refused.
fn compile_list<T, U: PartialEq + std::fmt::Debug>(
    value: &OneOrMany<T>,
    path: &JsonPath<'_>,
    field: &str,
    errors: &mut Errors,
    compile: impl Fn(&T, &JsonPath<'_>, &mut Errors) -> Option<U>,
) -> Vec<U> {
    let field_path = path.field(field);
    let (values, listed) = match value {
        OneOrMany::One(one) => (std::slice::from_ref(one), false),
        OneOrMany::Many(many) => (many.as_slice(), true),
    };
    if values.is_empty() {
        errors.push(field_path, format!("must list at least one {field}"));
    }
    let mut out: Vec<U> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let item = field_path.index(i);
        let at = if listed { item } else { field_path };
        match compile(value, &at, errors) {
            Some(v) if out.contains(&v) => errors.push(at, format!("{v:?} is listed twice")),
            Some(v) => out.push(v),
            None => {}
        }
    }
    out
}

/// `port`: 1-65535.
fn compile_port(port: &u32, path: &JsonPath<'_>, errors: &mut Errors) -> Option<u16> {
    let compiled = u16::try_from(*port).ok().filter(|p| *p != 0);
    if compiled.is_none() {
        errors.push(path, format!("{port} is not a port (1-65535)"));
    }
    compiled
}

/// The partner's host: an exact DNS name, or `*.` and one (any depth, as Istio's ServiceEntry), lower-cased,
/// without a trailing dot.
fn compile_host(host: &str, path: &JsonPath<'_>, errors: &mut Errors) -> Option<String> {
    let lower = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if lower == "*" {
        errors.push(
            path,
            "\"*\" is every host: the gateway would reach any name its DNS resolves for this destination's callers; name the partner's domain (\"*.partner.example\")",
        );
        return None;
    }
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.contains('*') {
        errors.push(
            path,
            format!("{} has a '*' that is not a leading \"*.\" label: a wildcard host is \"*.\" and a domain (\"*.partner.example\", any name under it), as in Istio's ServiceEntry", shown(host)),
        );
        return None;
    }
    if !valid_host(name) {
        errors.push(
            path,
            format!("{} is not a host name (letters, digits, '-' and '_' in dot-separated labels)", shown(host)),
        );
        return None;
    }
    Some(lower)
}

/// In a dynamic destination's policies, `hosts`/`notHosts` pick concrete hosts and `ports`/`notPorts`
/// declared ports: a value none of the destination's hosts or ports can take would never match.
fn check_dynamic_rules(
    policies: &[PolicySpec],
    hosts: &[String],
    ports: &[u16],
    path: &JsonPath<'_>,
    errors: &mut Errors,
) {
    for_each_operation(policies, path, |at, o| {
        for (name, values) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
            for (i, value) in values.iter().flatten().enumerate() {
                let v = value.strip_suffix('.').unwrap_or(value).to_ascii_lowercase();
                if !v.contains(':') && !hosts.iter().any(|h| may_match(&v, h)) {
                    errors.push(
                        at.field(name).index(i),
                        format!(
                            "{value:?} never matches: no host of this destination ({}) is one it matches",
                            hosts.join(", ")
                        ),
                    );
                }
            }
        }
        for (name, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
            for (i, value) in values.iter().flatten().enumerate() {
                if let Ok(port) = crate::policy::port(value) {
                    if !ports.contains(&port) {
                        errors.push(
                            at.field(name).index(i),
                            format!("{port} never matches: the destination's ports are {ports:?}"),
                        );
                    }
                }
            }
        }
    });
}

/// Whether the policy host value `value` (an Istio pattern: exact, `*suffix`, `prefix*` or `*`) matches some
/// host the destination host `declared` (exact, or `*.domain`) stands for.
fn may_match(value: &str, declared: &str) -> bool {
    let Some(domain) = declared.strip_prefix("*.") else {
        return match (value.strip_prefix('*'), value.strip_suffix('*')) {
            _ if value == "*" => true,
            (Some(suffix), _) => declared.ends_with(suffix),
            (_, Some(prefix)) => declared.starts_with(prefix),
            _ => value == declared,
        };
    };
    // ".domain": every host it stands for ends with it.
    let dotted = declared.get(1..).unwrap_or(domain);
    if value == "*" || value.ends_with('*') {
        // "api.*": "api.<domain>" is one (policy values are checked to be host characters).
        return true;
    }
    if let Some(suffix) = value.strip_prefix('*') {
        // Either every name under the domain ends with it, or some name under the domain is, or ends with, it.
        return dotted.ends_with(suffix) || suffix.ends_with(dotted);
    }
    value.strip_suffix(dotted).is_some_and(valid_host)
}

/// An L4 connection carries no method and no path: a rule that names them could never match it (Istio
/// silently drops such a rule for TCP; here it is an error).
pub fn refuse_http_only_fields(policies: &[PolicySpec], path: &JsonPath<'_>, why: &str, errors: &mut Errors) {
    for_each_operation(policies, path, |at, o| {
        for (name, values) in
            [("methods", &o.methods), ("notMethods", &o.not_methods), ("paths", &o.paths), ("notPaths", &o.not_paths)]
        {
            if values.is_some() {
                errors.push(at.field(name), why);
            }
        }
    });
}

/// Calls `each` with every `to[].operation` of `policies` and its JSON path.
fn for_each_operation(
    policies: &[PolicySpec],
    path: &JsonPath<'_>,
    mut each: impl FnMut(&JsonPath<'_>, &OperationSpec),
) {
    for (p, policy) in policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            for (t, to) in rule.to.iter().flatten().enumerate() {
                let at = path.index(p);
                let at = at.field("rules");
                let at = at.index(r);
                let at = at.field("to");
                let at = at.index(t);
                each(&at.field("operation"), &to.operation);
            }
        }
    }
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
    use crate::config_document::IdentitySpec;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn dest(name: &str, host: &str, port: u32) -> serde_json::Value {
        json!({"name": name, "host": host, "port": port, "identities": ["i"]})
    }

    fn table_on(specs: serde_json::Value, platform: Platform) -> Result<DestinationTable, Vec<String>> {
        let specs: Vec<DestinationSpec> = serde_json::from_value(specs).unwrap();
        let mut errors = Errors::default();
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[], None).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let ids: Vec<IdentitySpec> = serde_json::from_value(json!([{"name": "i", "principals": ["*"]}])).unwrap();
        let declared = Identities::compile(ids, &rules, &mut errors);
        let context = Context { declared: &declared, platform: &platform, default_port: 443, rules: &rules };
        let mut used = vec![false];
        let t = DestinationTable::compile(specs, &context, &mut used, &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    fn table(specs: serde_json::Value) -> Result<DestinationTable, Vec<String>> {
        table_on(specs, Platform::Envoy)
    }

    fn name(t: &DestinationTable, host: &str, port: Option<u16>) -> Option<String> {
        t.lookup(host, port).map(|(d, _)| d.name.to_string())
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_destination_is_found_by_its_host_and_port_as_the_platform_delivers_it() {
        let t =
            table(json!([dest("api", "API.partner.example", 443), dest("alt", "api.partner.example", 8443)])).unwrap();
        assert_eq!(name(&t, "api.partner.example", Some(443)).as_deref(), Some("api"));
        assert_eq!(name(&t, "api.partner.example", None).as_deref(), Some("api"), "defaultPort 443");
        assert_eq!(name(&t, "api.partner.example", Some(8443)).as_deref(), Some("alt"));
        assert_eq!(name(&t, "x.partner.example", Some(443)), None);
        assert_eq!(&*t.named("api").unwrap().host, "api.partner.example");
        let indexes: Vec<(String, usize)> = t.identities().map(|(d, i)| (d.name.to_string(), i.index)).collect();
        assert_eq!(indexes, [("api".into(), 0), ("alt".into(), 1)]);

        let kuma = Platform::Kuma(crate::platform::Kuma {
            mesh: "m".into(),
            zone: "z".into(),
            namespace: "ns".into(),
            egress_port: 10002,
        });
        let t = table_on(json!([dest("api", "api.partner.example", 443)]), kuma).unwrap();
        assert_eq!(name(&t, "api.extsvc.mesh.local", None).as_deref(), Some("api"));
        assert_eq!(name(&t, "api.extsvc.mesh.local", Some(80)).as_deref(), Some("api"));
        assert_eq!(name(&t, "api.partner.example", Some(443)), None);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn invalid_destinations_name_the_field() {
        let e = table(json!([
            dest("a", "*", 443),
            dest("a", "bad host", 0),
            dest("Egress", "x.example", 70000),
            dest("egress-identity-unrouted", "y.example", 1),
            dest("c", "c.example", 443),
            dest("d", "c.example", 443),
            {"name": "e", "host": "e.example", "port": 1, "protocol": "tls", "singleCluster": true},
            {"name": "f", "host": "f.example", "port": 1, "protocol": "tcp", "allowEncryptedClientHello": true,
             "defaultIdentity": "i"}
        ]))
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "destinations[1].name",
                "destinations[0].host",
                "destinations[1].host",
                "destinations[1].port",
                "destinations[2].name",
                "destinations[2].port",
                "destinations[3].name",
                "destinations[5].host",
                "destinations[6].singleCluster",
                "destinations[7].allowEncryptedClientHello",
            ],
            "{e:?}"
        );
        assert!(e[9].contains("only a tls (passthrough) destination reads the caller's ClientHello"), "{e:?}");
        assert!(e[1].contains("\"*\" is every host"), "{e:?}");
        assert!(e[6].contains("the gateway's own"), "{e:?}");
        assert!(e[7].contains("c.example:443 is already how destinations[4] arrives"), "{e:?}");
        let e = table(json!([])).unwrap_err();
        assert!(e[0].starts_with("destinations: must declare"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn dynamic_destinations_are_found_by_the_concrete_host_exact_hosts_first() {
        let t = table(json!([
            dest("partner", "*.partner.example", 443),
            {"name": "multi", "host": ["a.example", "b.example"], "port": [443, 8443], "identities": ["i"]},
            dest("exact", "api.partner.example", 443),
            dest("deep", "*.eu.partner.example", 443),
        ]))
        .unwrap();
        assert_eq!(name(&t, "x.partner.example", Some(443)).as_deref(), Some("partner"));
        assert_eq!(name(&t, "x.partner.example", None).as_deref(), Some("partner"), "defaultPort 443");
        assert_eq!(name(&t, "x.y.partner.example", Some(443)).as_deref(), Some("partner"), "any depth");
        assert_eq!(name(&t, "api.partner.example", Some(443)).as_deref(), Some("exact"), "exact first");
        assert_eq!(name(&t, "x.eu.partner.example", Some(443)).as_deref(), Some("deep"), "longest suffix");
        assert_eq!(name(&t, "partner.example", Some(443)), None, "the domain itself is not under it");
        assert_eq!(name(&t, "x.partner.example", Some(8443)), None, "undeclared port");
        assert_eq!(name(&t, "bad host.partner.example", Some(443)), None, "not a DNS name");
        assert_eq!(name(&t, ".partner.example", Some(443)), None);
        assert_eq!(name(&t, "b.example", Some(8443)).as_deref(), Some("multi"));
        assert_eq!(name(&t, "a.example", None).as_deref(), Some("multi"));
        assert_eq!(name(&t, "c.example", Some(443)), None);
        let partner = t.named("partner").unwrap();
        assert!(partner.dynamic && t.named("multi").unwrap().dynamic && !t.named("exact").unwrap().dynamic);
        assert_eq!((&*partner.host, partner.port), ("*.partner.example", 443));

        let e = table(json!([
            {"name": "a", "host": ["x.example", "X.example."], "port": [1, 1, 0], "identities": ["i"]},
            {"name": "b", "host": [], "port": [], "identities": ["i"]},
            dest("c", "api*.example", 1),
            dest("d", "a.*.example", 1),
            dest("e", "*.partner.example", 443),
            dest("f", "*.Partner.example", 443),
        ]))
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "destinations[0].host[1]",
                "destinations[0].port[1]",
                "destinations[0].port[2]",
                "destinations[1].host",
                "destinations[1].port",
                "destinations[2].host",
                "destinations[3].host",
                "destinations[5].host"
            ],
            "{e:?}"
        );
        assert!(e[0].contains("listed twice") && e[3].contains("at least one host"), "{e:?}");
        assert!(e[5].contains("not a leading \"*.\" label"), "{e:?}");
        assert!(e[7].contains("*.partner.example:443 is already how destinations[4] arrives"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_dynamic_destinations_rules_must_name_its_hosts_and_ports() {
        let rules = |operation: serde_json::Value| {
            json!([{"name": "w", "host": ["*.partner.example", "api.other.example"], "port": [443, 8443],
                    "identities": ["i"],
                    "policies": [{"name": "p", "action": "DENY", "rules": [{"to": [{"operation": operation}]}]}]}])
        };
        let ok = json!({"hosts": ["b.partner.example", "API.other.example", "*.partner.example", "*.example", "*",
                                  "eu.*", "*.eu.partner.example", "*artner.example"],
                        "notHosts": ["x.y.partner.example"], "ports": [8443], "notPorts": ["443"]});
        table(rules(ok.clone())).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        let e = table(rules(json!({"hosts": ["partner.example", "x.other.example", "*.com", "b.partner.example"],
                                   "notHosts": ["*xpartner.example"], "ports": [80]})))
        .unwrap_err();
        let at = "destinations[0].policies[0].rules[0].to[0].operation";
        let want = [
            format!("{at}.hosts[0]"),
            format!("{at}.hosts[1]"),
            format!("{at}.hosts[2]"),
            format!("{at}.notHosts[0]"),
            format!("{at}.ports[0]"),
        ];
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, want, "{e:?}");
        assert!(e[0].contains("never matches"), "{e:?}");
        // One exact host: its host already applies, as before.
        let e = table(json!([{"name": "x", "host": "x.example", "port": 443, "identities": ["i"],
            "policies": [{"name": "p", "action": "DENY", "rules": [{"to": [{"operation": {"hosts": ["x.example"]}}]}]}]}]))
        .unwrap_err();
        assert!(e[0].contains("not allowed in the policies of a destination with one exact host"), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn platforms_that_cannot_reach_a_dynamic_destination_say_why() {
        let kuma = Platform::Kuma(crate::platform::Kuma {
            mesh: "m".into(),
            zone: "z".into(),
            namespace: "ns".into(),
            egress_port: 10002,
        });
        for (platform, protocol, field, why) in [
            (Platform::IstioWaypoint, "http", "host", "use --mode gateway"),
            (Platform::IstioGateway, "tcp", "host", "fixed tls.sni"),
            (Platform::IstioWaypoint, "tls", "host", "ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS"),
            (kuma, "http", "host", "one match"),
        ] {
            let e = table_on(
                json!([{"name": "w", "protocol": protocol, "host": "*.partner.example", "port": 443,
                        "defaultIdentity": "i"}]),
                platform.clone(),
            )
            .unwrap_err();
            assert!(e[0].starts_with(&format!("destinations[0].{field}: ")) && e[0].contains(why), "{e:?}");
        }
        let e = table_on(
            json!([{"name": "w", "host": "a.example", "port": [80, 81], "identities": ["i"]}]),
            Platform::IstioWaypoint,
        )
        .unwrap_err();
        assert!(e[0].starts_with("destinations[0].port: "), "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn on_an_istio_gateway_a_dynamic_destination_arrives_as_applications_call_it() {
        let found = |t: &DestinationTable, host, port| t.lookup(host, port).map(|(d, p)| (d.name.to_string(), p));
        // One port: applications call http://<host>/, which stands for the partner's port.
        let one = json!([{"name": "w", "host": "*.partner.example", "port": 443, "identities": ["i"]},
                         {"name": "x", "host": "x.partner.example", "port": 8443, "identities": ["i"]}]);
        let t = table_on(one, Platform::IstioGateway).unwrap();
        assert_eq!(found(&t, "a.partner.example", None), Some(("w".into(), 443)));
        assert_eq!(found(&t, "a.partner.example", Some(80)), Some(("w".into(), 443)));
        assert_eq!(found(&t, "a.partner.example", Some(443)), None);
        assert_eq!(found(&t, "x.partner.example", None), Some(("x".into(), 8443)), "the exact host first");
        // Several ports: http://<host>:<port>/ each, and http://<host>/ only for port 80.
        let several =
            json!([{"name": "w", "host": ["a.example", "b.example"], "port": [80, 8443], "identities": ["i"]}]);
        let t = table_on(several, Platform::IstioGateway).unwrap();
        assert_eq!(found(&t, "b.example", Some(8443)), Some(("w".into(), 8443)));
        assert_eq!(found(&t, "b.example", None), Some(("w".into(), 80)));
        assert_eq!(found(&t, "b.example", Some(443)), None);
        let t = table_on(
            json!([{"name": "w", "host": "a.example", "port": [443, 8443], "identities": ["i"]}]),
            Platform::IstioGateway,
        )
        .unwrap();
        assert_eq!(found(&t, "a.example", None), None, "no port is the default one");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn platforms_refuse_what_they_cannot_carry() {
        let shared =
            json!([{"name": "s", "host": "s.example", "port": 443, "singleCluster": true, "identities": ["i"]}]);
        assert!(table(shared.clone()).is_ok());
        let e = table_on(shared, Platform::IstioGateway).unwrap_err();
        assert!(e[0].starts_with("destinations[0].singleCluster: istio-gateway cannot carry"), "{e:?}");
        // Two HTTP destinations on one host are both http://host/ in Istio.
        let two = json!([dest("a", "api.example", 443), dest("b", "api.example", 8443)]);
        assert!(table(two.clone()).is_ok());
        let e = table_on(two, Platform::IstioWaypoint).unwrap_err();
        assert!(e[0].starts_with("destinations[1].host: istio-waypoint: api.example is already"), "{e:?}");
        // Object names joined by '-' must not collide.
        let e = table(json!([dest("a-i", "a.example", 443), dest("a", "b.example", 443)])).unwrap_err();
        assert!(e[0].contains("would both name objects \"a-i\""), "{e:?}");
    }
}
