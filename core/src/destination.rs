//! External destinations: the partner's host and port, the protocol, their policy layer and identity
//! mapping, and the table that finds the destination of a request or connection by the names the
//! platform delivers it under ([`crate::platform::Platform::fronts`]) in one hash lookup.

use rustc_hash::FxHashMap;

use crate::config_document::{DestinationSpec, PolicySpec, Protocol};
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
    /// The partner's host (lower case), as workloads call it.
    pub host: Box<str>,
    /// The partner's port.
    pub port: u16,
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
    /// Lower-case host → (port, or `None` for a request that names none; index into `destinations`).
    fronts: FxHashMap<Box<str>, Vec<(Option<u16>, usize)>>,
    /// Number of external identities, all destinations together ([`ExternalIdentity::index`]).
    identity_count: usize,
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
    /// destination names; `warnings` gets what the platform leaves out.
    pub fn compile(
        specs: Vec<DestinationSpec>,
        context: &Context<'_>,
        used: &mut [bool],
        errors: &mut Errors,
        warnings: &mut Errors,
    ) -> Self {
        let path = JsonPath::Root("destinations");
        if specs.is_empty() {
            errors.push(path, "must declare at least one destination");
        }
        report_duplicates(errors, &path, specs.iter().map(|d| d.name.as_str()));
        let platform = context.platform;
        let mut table = Self {
            destinations: Vec::with_capacity(specs.len()),
            fronts: FxHashMap::with_capacity_and_hasher(specs.len(), Default::default()),
            identity_count: 0,
        };
        // Kubernetes objects and clusters named after a destination and its identities: name → the destination.
        let mut objects: FxHashMap<String, usize> = FxHashMap::default();
        let names: Vec<String> = specs.iter().map(|d| d.name.clone()).collect();
        for (index, spec) in specs.into_iter().enumerate() {
            let path = path.index(index);
            if let Err(e) = destination_name(&spec.name) {
                errors.push(path.field("name"), e);
            }
            let host = compile_host(&spec.host, &path.field("host"), errors);
            let port = match u16::try_from(spec.port).ok().filter(|p| *p != 0) {
                Some(port) => port,
                None => {
                    errors.push(path.field("port"), format!("{} is not a port (1-65535)", spec.port));
                    0
                }
            };
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
            if !platform.carries(spec.protocol) {
                warnings.push(
                    path,
                    format!("{} ({}) is not carried by {}: its {} connections never reach the gateway there (nothing is forwarded); serve it with another platform (istio-gateway for Istio)", spec.name, spec.protocol.as_str(), platform.name(), spec.protocol.as_str()),
                );
            }
            let destination =
                DestinationRef { name: &spec.name, protocol: spec.protocol, port, single_cluster: spec.single_cluster };
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
            if let Some(host) = &host {
                let mut clash = false;
                for front in platform.fronts(&spec.name, host, port, spec.protocol, context.default_port) {
                    let entries = table.fronts.entry(front.host.as_str().into()).or_default();
                    match entries.iter().find(|(p, _)| *p == front.port) {
                        // One error per destination: its other fronts clash with the same one.
                        Some(_) if clash => {}
                        Some(&(_, other)) if other != index => {
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
                        None => entries.push((front.port, index)),
                    }
                }
            }
            table.destinations.push(Destination {
                name: spec.name.into_boxed_str(),
                host: host.unwrap_or_default().into_boxed_str(),
                port,
                protocol: spec.protocol,
                single_cluster: spec.single_cluster,
                allow_encrypted_client_hello: spec.allow_encrypted_client_hello,
                policies: PolicyLayer::compile(
                    spec.policies,
                    LayerKind::Destination,
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
    /// `:authority` names no port), as the gateway receives them.
    pub fn lookup(&self, host: &str, port: Option<u16>) -> Option<&Destination> {
        let entries = self.fronts.get(host)?;
        entries.iter().find(|(p, _)| *p == port).and_then(|(_, i)| self.destinations.get(*i))
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

    /// The destination named `name`.
    pub fn named(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| &*d.name == name)
    }
}

/// The partner's host: an exact DNS name, lower-cased, without a trailing dot.
fn compile_host(host: &str, path: &JsonPath<'_>, errors: &mut Errors) -> Option<String> {
    let lower = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if lower.starts_with('*') {
        errors.push(
            path,
            format!("{host:?} is a wildcard: a destination is one partner host, which its clusters reach and its certificate is checked against (wildcard destinations are not supported yet); declare each host"),
        );
        return None;
    }
    if !valid_host(&lower) {
        errors.push(
            path,
            format!("{} is not a host name (letters, digits, '-' and '_' in dot-separated labels)", shown(host)),
        );
        return None;
    }
    Some(lower)
}

/// An L4 connection carries no method and no path: a rule that names them could never match it (Istio
/// silently drops such a rule for TCP; here it is an error).
pub fn refuse_http_only_fields(policies: &[PolicySpec], path: &JsonPath<'_>, why: &str, errors: &mut Errors) {
    for (p, policy) in policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            for (t, to) in rule.to.iter().flatten().enumerate() {
                let o = &to.operation;
                for (name, values) in [
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ] {
                    if values.is_some() {
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
        let t = DestinationTable::compile(specs, &context, &mut used, &mut errors, &mut Errors::default());
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
        t.lookup(host, port).map(|d| d.name.to_string())
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
            dest("a", "*.example", 443),
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
        assert!(e[1].contains("is a wildcard"), "{e:?}");
        assert!(e[6].contains("the gateway's own"), "{e:?}");
        assert!(e[7].contains("c.example:443 is already how destinations[4] arrives"), "{e:?}");
        let e = table(json!([])).unwrap_err();
        assert!(e[0].starts_with("destinations: must declare"), "{e:?}");
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
