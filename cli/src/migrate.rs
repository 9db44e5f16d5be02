//! `egress-identity migrate`: converts a policy of the previous format — Envoy cluster names, platform host
//! names and identities declared inside destinations — into the platform-neutral one, where a destination is
//! one host and one port, identities are declared once by name, and the platform derives every cluster name.
//! What cannot be converted faithfully is refused, each problem naming its JSON path; what changed that the
//! user must know comes back as notes.

use std::collections::BTreeSet;

use egress_identity_core::config::Config;
use egress_identity_core::config_document::Protocol;
use egress_identity_core::config_error::{destination_name, identity_name, k8s_form};
use egress_identity_core::platform::{Kuma, Platform};
use serde_json::{Map, Value};

/// What `migrate` produced: the new policy, and what the user must know about the conversion.
pub struct Migrated {
    pub policy: Value,
    pub notes: Vec<String>,
}

/// Converts a policy of the previous format. Err: every problem found, each "json.path: reason".
pub fn migrate(old: &Value) -> Result<Migrated, Vec<String>> {
    let mut migration = Migration::default();
    let policy = migration.policy(old);
    if !migration.errors.is_empty() {
        return Err(migration.errors);
    }
    if let Some(note) = migration.clusters_note() {
        migration.notes.push(note);
    }
    let text = to_text(&policy);
    Config::load(text.as_bytes())
        .map_err(|errors| errors.iter().map(|e| format!("after migration: {e}")).collect::<Vec<_>>())?;
    Ok(Migrated { policy, notes: migration.notes })
}

/// The new policy as pretty JSON text (2-space indent, trailing newline), fields in the new format's order.
pub fn to_text(policy: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, policy, Kind::Top, 0);
    out.push('\n');
    out
}

/// The new format's top-level fields, in its order.
const TOP: &[&str] = &[
    "localTrustDomain",
    "trustDomainAliases",
    "trustDomains",
    "acceptLegacyKumaSans",
    "headers",
    "defaultPort",
    "certificateCacheSize",
    "pathMatching",
    "auditRecord",
    "identities",
    "gateway",
    "destinations",
];

/// Top-level fields migrate builds itself; the others are copied unchanged.
const BUILT: &[&str] = &["identities", "gateway", "destinations"];

/// Fields of the new format that the previous one did not have: a document with them is already migrated.
const NEW_FIELDS: &[&str] = &["identities", "platform", "host", "port", "singleCluster"];

/// The port applications call an HTTP destination's mesh host on, in Kuma (and Istio).
const MESH_HTTP_PORT: u64 = 80;

/// One identity of the new policy, gathered from every destination that named it.
struct Declared {
    old: String,
    new: String,
    /// Its name could not be converted: already reported, so later uses are skipped.
    refused: bool,
    /// The principals it maps, as first written, with the destination that first mapped it.
    principals: Option<(Vec<String>, String)>,
    /// The SDS secret single-cluster destinations present it as (default: the old name), with the first one.
    secret: Option<(String, String)>,
}

/// One old cluster name the platform now derives differently.
struct RenamedCluster {
    path: String,
    old: String,
    derived: String,
}

/// The hosts of an old destination, sorted out.
#[derive(Default)]
struct Hosts<'h> {
    /// The partner's (neither Kuma's nor wildcards).
    real: Vec<&'h str>,
    /// Kuma's own: `<name>.extsvc.mesh.local` and SNIs `sni.extsvc.…`.
    kuma: Vec<&'h str>,
    /// The ports the SNIs name.
    sni_ports: BTreeSet<u16>,
    wildcard: bool,
}

/// What one old destination names, for the conversion of its identities.
struct DestinationContext<'a> {
    path: &'a str,
    name: &'a str,
    /// The new (first) host, when it could be determined.
    host: Option<&'a str>,
    protocol: Protocol,
    /// The new port, when it could be determined.
    port: Option<u16>,
    shared: bool,
}

#[derive(Default)]
struct Migration {
    errors: Vec<String>,
    notes: Vec<String>,
    identities: Vec<Declared>,
    clusters: Vec<RenamedCluster>,
}

impl Migration {
    fn error(&mut self, path: impl std::fmt::Display, reason: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {reason}"));
    }

    fn note(&mut self, path: impl std::fmt::Display, what: impl std::fmt::Display) {
        self.notes.push(format!("{path}: {what}"));
    }

    fn policy(&mut self, old: &Value) -> Value {
        let Some(document) = old.as_object() else {
            self.error(".", "the policy is not a JSON object");
            return Value::Null;
        };
        let mut out = Map::new();
        for (key, value) in document {
            match key.as_str() {
                k if TOP.contains(&k) && !BUILT.contains(&k) => {
                    out.insert(key.clone(), value.clone());
                }
                "principalSources" => self.note(
                    key,
                    format!("dropped ({value}): the platform decides where the caller's principal comes from now (the peer certificate; an Istio waypoint's peer principal when rendered with `render istio --mode waypoint`)"),
                ),
                "gateway" => {
                    out.insert(key.clone(), self.gateway(value));
                }
                "destinations" => {}
                k if NEW_FIELDS.contains(&k) => {
                    self.error(key, "not a field of the previous format: is this policy already in the new one? (`validate` checks it)")
                }
                _ => self.error(key, "not a field of the previous format"),
            }
        }
        match document.get("destinations") {
            None => self.error("destinations", "required"),
            Some(Value::Array(destinations)) => {
                let converted: Vec<Value> = (destinations.iter().enumerate())
                    .filter_map(|(i, d)| self.destination(i, d).map(Value::Object))
                    .collect();
                let identities: Vec<Value> = self.identities.iter().map(declaration).collect();
                if !identities.is_empty() {
                    out.insert("identities".into(), Value::Array(identities));
                }
                out.insert("destinations".into(), Value::Array(converted));
            }
            Some(_) => self.error("destinations", "must be a list of destinations"),
        }
        Value::Object(out)
    }

    fn gateway(&mut self, gateway: &Value) -> Value {
        let mut out = gateway.clone();
        if let Some(policies) = out.get_mut("policies") {
            self.remove_empty_lists(policies, "gateway.policies");
        }
        out
    }

    /// Removes the empty lists of the rules of `policies` (the previous format read them as "any value", the
    /// new one refuses them), with a note each.
    fn remove_empty_lists(&mut self, policies: &mut Value, path: &str) {
        let Some(policies) = policies.as_array_mut() else { return };
        for (p, policy) in policies.iter_mut().enumerate() {
            let Some(rules) = policy.get_mut("rules").and_then(Value::as_array_mut) else { continue };
            for (r, rule) in rules.iter_mut().enumerate() {
                let Some(rule) = rule.as_object_mut() else { continue };
                let at = format!("{path}[{p}].rules[{r}]");
                for (list, inner) in [("from", "source"), ("to", "operation")] {
                    for (i, item) in rule.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten().enumerate()
                    {
                        let Some(fields) = item.get_mut(inner).and_then(Value::as_object_mut) else { continue };
                        let empty: Vec<String> = (fields.iter())
                            .filter(|(_, v)| v.as_array().is_some_and(Vec::is_empty))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for field in empty {
                            fields.remove(&field);
                            self.note_empty_list(format!("{at}.{list}[{i}].{inner}.{field}"));
                        }
                    }
                    if rule.get(list).and_then(Value::as_array).is_some_and(Vec::is_empty) {
                        rule.remove(list);
                        self.note_empty_list(format!("{at}.{list}"));
                    }
                }
            }
        }
    }

    fn note_empty_list(&mut self, path: String) {
        self.note(path, "an empty list meant any value; removed (omitting the field means the same)");
    }

    /// Converts `destinations[i]`; `None` when it is not an object.
    fn destination(&mut self, i: usize, old: &Value) -> Option<Map<String, Value>> {
        let path = format!("destinations[{i}]");
        let Some(fields) = old.as_object() else {
            self.error(&path, "must be an object");
            return None;
        };
        const KNOWN: &[&str] =
            &["name", "protocol", "hosts", "ports", "policies", "identities", "defaultIdentity", "sharedCluster"];
        for key in fields.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
            let hint = if NEW_FIELDS.contains(&key.as_str()) { ": is this policy already in the new one?" } else { "" };
            self.error(format!("{path}.{key}"), format!("not a field of a destination in the previous format{hint}"));
        }
        let mut out = Map::new();
        let name = match fields.get("name").map(Value::as_str) {
            Some(Some(name)) => name,
            Some(None) => {
                self.error(format!("{path}.name"), "must be a string");
                ""
            }
            None => {
                self.error(format!("{path}.name"), "required");
                ""
            }
        };
        if !name.is_empty() {
            if let Err(e) = destination_name(name) {
                self.error(
                    format!("{path}.name"),
                    format!("{e}; destinations are DNS labels now (they name clusters, Kubernetes objects and mesh hosts): rename it, e.g. {:?}", suggested_name(name)),
                );
            }
            out.insert("name".into(), Value::String(name.into()));
        }
        let protocol = match fields.get("protocol").map(Value::as_str) {
            None | Some(Some("http")) => Protocol::Http,
            Some(Some("tcp")) => Protocol::Tcp,
            Some(Some("tls")) => Protocol::Tls,
            Some(_) => {
                self.error(format!("{path}.protocol"), "must be \"http\", \"tcp\" or \"tls\"");
                Protocol::Http
            }
        };
        if protocol != Protocol::Http {
            out.insert("protocol".into(), Value::String(protocol.as_str().into()));
        }
        let hosts = self.strings(fields.get("hosts"), &format!("{path}.hosts"));
        let ports = self.ports(fields.get("ports"), &format!("{path}.ports"));
        let (host, port) = self.endpoint(&path, name, protocol, &hosts, &ports);
        if let Some(host) = &host {
            out.insert("host".into(), Value::String(host.clone()));
        }
        if let Some(port) = port {
            out.insert("port".into(), Value::from(port));
        }
        let shared = match fields.get("sharedCluster") {
            None => None,
            Some(Value::String(cluster)) => Some(cluster.as_str()),
            Some(_) => {
                self.error(format!("{path}.sharedCluster"), "must be a string");
                None
            }
        };
        if shared.is_some() {
            out.insert("singleCluster".into(), Value::Bool(true));
        }
        if let Some(policies) = fields.get("policies") {
            let mut policies = policies.clone();
            self.remove_empty_lists(&mut policies, &format!("{path}.policies"));
            out.insert("policies".into(), policies);
        }
        let context = DestinationContext {
            path: &path,
            name,
            host: host.as_deref(),
            protocol,
            port: port.and_then(|p| u16::try_from(p).ok()),
            shared: shared.is_some(),
        };
        if let Some(cluster) = shared {
            self.cluster(format!("{path}.sharedCluster"), cluster, &context, None);
        }
        let identities = fields.get("identities");
        let default = fields.get("defaultIdentity");
        if protocol == Protocol::Tls {
            self.drop_passthrough_identities(&context, identities, default);
            return Some(out);
        }
        let mut names = Vec::new();
        match identities {
            None => {}
            Some(Value::Array(list)) => {
                for (k, entry) in list.iter().enumerate() {
                    if let Some(name) = self.identity(&context, &format!("{path}.identities[{k}]"), entry, true) {
                        names.push(Value::String(name));
                    }
                }
            }
            Some(_) => self.error(format!("{path}.identities"), "must be a list of identities"),
        }
        if !names.is_empty() {
            out.insert("identities".into(), Value::Array(names));
        }
        if let Some(entry) = default {
            if let Some(name) = self.identity(&context, &format!("{path}.defaultIdentity"), entry, false) {
                out.insert("defaultIdentity".into(), Value::String(name));
            }
        }
        Some(out)
    }

    /// The destination's one host and one port: Kuma's platform hosts dropped (a tcp/tls one's SNI gives
    /// the partner's port), and anything else than one host and one port refused.
    fn endpoint(
        &mut self,
        path: &str,
        name: &str,
        protocol: Protocol,
        hosts: &[String],
        ports: &[u64],
    ) -> (Option<String>, Option<u64>) {
        let hosts = self.sort_hosts(path, name, hosts);
        let upstream = format!("the old `render kuma --upstream {name}=HOST:PORT`");
        let sni_port = hosts.sni_ports.iter().next().filter(|_| protocol.is_l4());
        let host = match hosts.real.as_slice() {
            [one] => Some((*one).to_string()),
            [] if !hosts.kuma.is_empty() => {
                let write = match sni_port {
                    Some(port) => {
                        format!("\"host\", the partner's, as given to {upstream} (the port, {port}, comes from the SNI)")
                    }
                    None => format!("\"host\" and \"port\", the partner's, as given to {upstream} (port 443 when it named none; its ports {ports:?} are the mesh's, not the partner's)"),
                };
                self.error(
                    format!("{path}.hosts"),
                    format!("{} only names Kuma's own host name for it, so the partner's real host is unknown: write {write}", list(&hosts.kuma)),
                );
                None
            }
            [] if hosts.wildcard => None,
            [] => {
                self.error(
                    format!("{path}.hosts"),
                    "no host: a destination is one host and one port now: write \"host\"",
                );
                None
            }
            many => {
                self.error(
                    format!("{path}.hosts"),
                    format!(
                        "{}: a destination is one host and one port now: split it into one destination per host:port",
                        list(many)
                    ),
                );
                None
            }
        };
        let port = if sni_port.is_some() {
            self.sni_port(path, &hosts.sni_ports, ports)
        } else if hosts.kuma.is_empty() {
            self.one_port(path, ports)
        } else if hosts.real.is_empty() {
            // Refused with the host: Kuma's mesh port says nothing of the partner's.
            None
        } else {
            match ports {
                [MESH_HTTP_PORT] => {
                    self.error(
                        format!("{path}.ports"),
                        format!("{MESH_HTTP_PORT} is the port applications call Kuma's mesh host on (http://{name}.extsvc.mesh.local/), not the partner's: write \"port\", the partner's port (as given to {upstream}; 443 when it named none)"),
                    );
                    None
                }
                _ => self.one_port(path, ports).inspect(|port| {
                    self.note(
                        format!("{path}.port"),
                        format!("on Kuma the port is now the partner's: check that {port} is it (the old `render kuma` reached the partner at --upstream's HOST:PORT, or at port 443)"),
                    );
                }),
            }
        };
        (host, port)
    }

    /// The old hosts of the destination at `path`, sorted out: Kuma's own (checked), wildcards (refused) and
    /// the partner's.
    fn sort_hosts<'h>(&mut self, path: &str, name: &str, hosts: &'h [String]) -> Hosts<'h> {
        let mut sorted = Hosts::default();
        for (k, host) in hosts.iter().enumerate() {
            let lower = host.to_ascii_lowercase();
            if lower.ends_with(".extsvc.mesh.local") {
                sorted.kuma.push(host);
            } else if lower.starts_with("sni.extsvc.") {
                sorted.kuma.push(host);
                match kuma_sni(&lower) {
                    Some((service, port)) => {
                        if service != name {
                            self.error(
                                format!("{path}.hosts[{k}]"),
                                format!("Kuma's SNI {host:?} names the MeshExternalService {service:?}, not this destination's name {name:?}: the platform derives it from the destination's name now; rename the destination {service:?}"),
                            );
                        }
                        sorted.sni_ports.insert(port);
                    }
                    None => self.error(
                        format!("{path}.hosts[{k}]"),
                        format!("{host:?} is not Kuma's SNI of a MeshExternalService (sni.extsvc.<mesh>.<zone>.<namespace>.<name>.<port>)"),
                    ),
                }
            } else if host.starts_with('*') {
                sorted.wildcard = true;
                self.error(
                    format!("{path}.hosts[{k}]"),
                    format!("{host:?}: wildcard destinations are not supported: a destination is one host and one port now; declare each host as a destination of its own"),
                );
            } else {
                sorted.real.push(host);
            }
        }
        sorted
    }

    /// A Kuma tcp/tls destination's port: its SNI's (its old ports were the zone egress port).
    fn sni_port(&mut self, path: &str, sni_ports: &BTreeSet<u16>, ports: &[u64]) -> Option<u64> {
        let named: Vec<u64> = sni_ports.iter().map(|p| u64::from(*p)).collect();
        let &[port] = named.as_slice() else {
            self.error(
                format!("{path}.hosts"),
                format!("Kuma SNIs of ports {sni_ports:?}: a destination is one host and one port now: split it into one destination per host:port"),
            );
            return None;
        };
        if !ports.is_empty() && ports != [port] {
            self.note(
                format!("{path}.ports"),
                format!("{ports:?}, the Kuma zone egress port, dropped: `render kuma --egress-port` sets it now; the port is the partner's, {port} (from the SNI)"),
            );
        }
        Some(port)
    }

    /// The one port of `ports`, else refused.
    fn one_port(&mut self, path: &str, ports: &[u64]) -> Option<u64> {
        match ports {
            [port] => Some(*port),
            [] => {
                self.error(
                    format!("{path}.ports"),
                    "no port: a destination is one host and one port now: write \"port\"",
                );
                None
            }
            many => {
                self.error(
                    format!("{path}.ports"),
                    format!("{many:?}: a destination is one host and one port now: split it into one destination per host:port"),
                );
                None
            }
        }
    }

    /// A tls destination presents no identity of the gateway's now: its identities are dropped.
    fn drop_passthrough_identities(
        &mut self,
        context: &DestinationContext<'_>,
        identities: Option<&Value>,
        default: Option<&Value>,
    ) {
        let mut dropped = Vec::new();
        let entries = identities.and_then(Value::as_array).into_iter().flatten().enumerate();
        let entries = entries.map(|(k, e)| (format!("{}.identities[{k}]", context.path), e));
        for (at, entry) in entries.chain(default.map(|d| (format!("{}.defaultIdentity", context.path), d))) {
            if let Some(name) = entry.get("name").and_then(Value::as_str) {
                dropped.push(name.to_string());
            }
            if let Some(cluster) = entry.get("cluster").and_then(Value::as_str) {
                self.cluster(format!("{at}.cluster"), cluster, context, None);
            }
        }
        let fields: Vec<&str> = [("identities", identities.is_some()), ("defaultIdentity", default.is_some())]
            .into_iter()
            .filter_map(|(field, given)| given.then_some(field))
            .collect();
        if !fields.is_empty() {
            self.note(
                context.path,
                format!("a tls destination presents no identity of the gateway's now (the caller's own TLS passes through to the partner): dropped its {} ({})", fields.join(" and "), list(&dropped)),
            );
        }
    }

    /// Converts one identity entry at `at` (`mapped`: of `identities`, with principals; else the
    /// `defaultIdentity`); returns its new name.
    fn identity(&mut self, context: &DestinationContext<'_>, at: &str, entry: &Value, mapped: bool) -> Option<String> {
        let Some(fields) = entry.as_object() else {
            self.error(at, "must be an object");
            return None;
        };
        let known: &[&str] =
            if mapped { &["name", "cluster", "secret", "principals"] } else { &["name", "cluster", "secret"] };
        for key in fields.keys().filter(|k| !known.contains(&k.as_str())) {
            self.error(format!("{at}.{key}"), "not a field of an identity in the previous format");
        }
        let Some(old) = fields.get("name").and_then(Value::as_str) else {
            self.error(format!("{at}.name"), "required, a string");
            return None;
        };
        let principals = if mapped {
            let principals = self.strings(fields.get("principals"), &format!("{at}.principals"));
            if principals.is_empty() {
                self.error(format!("{at}.principals"), "must list at least one principal pattern");
                return None;
            }
            Some(principals)
        } else {
            None
        };
        let secret = match fields.get("secret") {
            None => None,
            Some(Value::String(secret)) => Some(secret.clone()),
            Some(_) => {
                self.error(format!("{at}.secret"), "must be a string");
                return None;
            }
        };
        if secret.is_some() && !context.shared {
            self.error(
                format!("{at}.secret"),
                "only a destination with a sharedCluster picks a certificate by secret (the previous format refused it too): remove it",
            );
        }
        let secret = context.shared.then(|| secret.unwrap_or_else(|| old.to_string()));
        let new = self.declare(context.name, at, old, principals, secret)?;
        match fields.get("cluster") {
            Some(Value::String(cluster)) => self.cluster(format!("{at}.cluster"), cluster, context, Some(&new)),
            Some(_) => self.error(format!("{at}.cluster"), "must be a string"),
            None => {}
        }
        Some(new)
    }

    /// Records a use of identity `old` by `destination` and returns its new name; refuses a name that cannot
    /// be converted, and principals or secrets that differ between destinations.
    fn declare(
        &mut self,
        destination: &str,
        at: &str,
        old: &str,
        principals: Option<Vec<String>>,
        secret: Option<String>,
    ) -> Option<String> {
        if let Some(known) = self.identities.iter().position(|d| d.old == old) {
            let declared = self.identities.get_mut(known)?;
            if declared.refused {
                return None;
            }
            let mut conflicts = Vec::new();
            if let Some(principals) = principals {
                match &declared.principals {
                    Some((first, in_destination)) => {
                        let set = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
                        if set(first) != set(&principals) {
                            conflicts.push((format!("{at}.principals"), format!("identity {old:?} maps different principals in destinations {in_destination} and {destination}: give them different names")));
                        }
                    }
                    None => declared.principals = Some((principals, destination.to_string())),
                }
            }
            if let Some(secret) = secret {
                match &declared.secret {
                    Some((first, in_destination)) if *first != secret => {
                        conflicts.push((format!("{at}.secret"), format!("identity {old:?} has the secret {first:?} in destination {in_destination} and {secret:?} in {destination}: give them different names")));
                    }
                    Some(_) => {}
                    None => declared.secret = Some((secret, destination.to_string())),
                }
            }
            let new = declared.new.clone();
            for (path, reason) in conflicts {
                self.error(path, reason);
            }
            return Some(new);
        }
        let name_at = format!("{at}.name");
        let (new, refused) = match identity_name(old) {
            Ok(()) => (old.to_string(), false),
            Err(e) => {
                let new = suggested_name(old);
                if new.is_empty() || new.len() > 63 || old.len() > 64 {
                    self.error(
                        &name_at,
                        format!("{e}; no name can be made of it: name the identity and declare \"certificate\": {{\"commonName\": {old:?}}} (the old name was its certificate's CN{})", if old.len() > 64 { ", which is longer than a CN's 64 characters" } else { "" }),
                    );
                    (new, true)
                } else {
                    (new, false)
                }
            }
        };
        let collision = (!refused)
            .then(|| self.identities.iter().find(|d| !d.refused && k8s_form(&d.new) == k8s_form(&new)))
            .flatten();
        let refused = match collision {
            Some(other) => {
                let reason = format!(
                    "identity {old:?} (as {new:?}) and identity {:?} (as {:?}) would have the same name in clusters and Kubernetes objects, {:?}: rename one",
                    other.old,
                    other.new,
                    k8s_form(&new)
                );
                self.error(&name_at, reason);
                true
            }
            None => refused,
        };
        if !refused && new != old {
            self.note(
                &name_at,
                format!("identity {old:?} is now {new:?} (identity names are lower-case letters, digits, '.' and '-'); its certificate keeps the CN {old:?} (certificate.commonName)"),
            );
        }
        self.identities.push(Declared {
            old: old.to_string(),
            new: new.clone(),
            refused,
            principals: principals.map(|p| (p, destination.to_string())),
            secret: secret.map(|s| (s, destination.to_string())),
        });
        (!refused).then_some(new)
    }

    /// Records the old cluster name at `path` when the platform derives another name now (`identity`: the
    /// new identity name of an identity cluster; `None` for a passthrough or shared cluster).
    fn cluster(&mut self, path: String, old: &str, context: &DestinationContext<'_>, identity: Option<&str>) {
        let Some(port) = context.port else { return };
        let platform = match old.strip_prefix("kri_extsvc_").map(|rest| rest.splitn(4, '_').collect::<Vec<_>>()) {
            Some(parts) => match parts.as_slice() {
                [mesh, zone, namespace, _] => Platform::Kuma(Kuma {
                    mesh: (*mesh).into(),
                    zone: (*zone).into(),
                    namespace: (*namespace).into(),
                    egress_port: 0,
                }),
                _ => Platform::Envoy,
            },
            None => Platform::Envoy,
        };
        let derived = match identity {
            Some(identity) if context.protocol != Protocol::Tls && !context.shared => {
                platform.identity_cluster(context.name, &k8s_form(identity), context.protocol, port)
            }
            _ => platform.destination_cluster(context.name, context.host.unwrap_or_default(), context.protocol, port),
        };
        if derived != old {
            self.clusters.push(RenamedCluster { path, old: old.to_string(), derived });
        }
    }

    /// The one note listing the old cluster names the platform now derives differently.
    fn clusters_note(&self) -> Option<String> {
        if self.clusters.is_empty() {
            return None;
        }
        let renamed: Vec<String> =
            self.clusters.iter().map(|c| format!("{} {:?} is now {:?}", c.path, c.old, c.derived)).collect();
        Some(format!(
            "clusters: the platform derives cluster names now (<destination>|<identity with '.' as '-'>, <destination>|passthrough, <destination>|shared; Kuma's kri_extsvc_…), and these change; hand-written Envoy configuration that names them must follow: {}",
            renamed.join("; ")
        ))
    }

    /// A list of strings at `path` (absent: empty).
    fn strings(&mut self, value: Option<&Value>, path: &str) -> Vec<String> {
        let Some(value) = value else { return Vec::new() };
        let items: Option<Vec<String>> =
            value.as_array().and_then(|items| items.iter().map(|v| v.as_str().map(str::to_string)).collect());
        items.unwrap_or_else(|| {
            self.error(path, "must be a list of strings");
            Vec::new()
        })
    }

    /// A list of port numbers at `path` (absent: empty).
    fn ports(&mut self, value: Option<&Value>, path: &str) -> Vec<u64> {
        let Some(value) = value else { return Vec::new() };
        let items: Option<Vec<u64>> = value.as_array().and_then(|items| items.iter().map(Value::as_u64).collect());
        items.unwrap_or_else(|| {
            self.error(path, "must be a list of port numbers");
            Vec::new()
        })
    }
}

/// The declaration of a new identity: its principals unless it is only ever a default, and its certificate
/// when it is not the default one (CN = the name, secret = the name).
fn declaration(declared: &Declared) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), Value::String(declared.new.clone()));
    if let Some((principals, _)) = &declared.principals {
        out.insert("principals".into(), Value::Array(principals.iter().cloned().map(Value::String).collect()));
    }
    let mut certificate = Map::new();
    if declared.new != declared.old {
        certificate.insert("commonName".into(), Value::String(declared.old.clone()));
    }
    if let Some((secret, _)) = declared.secret.as_ref().filter(|(s, _)| *s != declared.new) {
        certificate.insert("secret".into(), Value::String(secret.clone()));
    }
    if !certificate.is_empty() {
        out.insert("certificate".into(), Value::Object(certificate));
    }
    Value::Object(out)
}

/// `name` made a name of the new format: lower case, other characters than letters, digits, '.' and '-'
/// as '-', without leading or trailing punctuation (empty when nothing is left).
fn suggested_name(name: &str) -> String {
    let lower: String = (name.chars())
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' { c } else { '-' })
        .collect();
    lower.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The MeshExternalService and port of Kuma's SNI `sni.extsvc.<mesh>.<zone>.<namespace>.<name>.<port>`.
fn kuma_sni(host: &str) -> Option<(&str, u16)> {
    match host.split('.').collect::<Vec<_>>().as_slice() {
        ["sni", "extsvc", mesh, zone, namespace, name, port]
            if [mesh, zone, namespace, name].iter().all(|part| !part.is_empty()) =>
        {
            Some((name, port.parse().ok().filter(|p| *p != 0)?))
        }
        _ => None,
    }
}

/// Strings as a message lists them: `"a", "b"`.
fn list(items: &[impl AsRef<str>]) -> String {
    items.iter().map(|i| format!("{:?}", i.as_ref())).collect::<Vec<_>>().join(", ")
}

/// The kind of a JSON object of the policy, which fixes the order of its fields in the text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Top,
    Headers,
    PathMatching,
    Identity,
    Certificate,
    Gateway,
    Destination,
    Policy,
    Rule,
    From,
    To,
    Source,
    Operation,
    Other,
}

impl Kind {
    /// The fields in the format's order; others follow in alphabetical order.
    fn order(self) -> &'static [&'static str] {
        match self {
            Self::Top => TOP,
            Self::Headers => &["principal", "cluster"],
            Self::PathMatching => &["caseInsensitive", "ignoreParameters"],
            Self::Identity => &["name", "principals", "certificate"],
            Self::Certificate => &["commonName", "dnsNames", "uris", "secret"],
            Self::Gateway => &["policies"],
            Self::Destination => {
                &["name", "protocol", "host", "port", "singleCluster", "policies", "identities", "defaultIdentity"]
            }
            Self::Policy => &["name", "action", "dryRun", "rules"],
            Self::Rule => &["from", "to"],
            Self::From => &["source"],
            Self::To => &["operation"],
            Self::Source => {
                &["principals", "notPrincipals", "namespaces", "notNamespaces", "trustDomains", "notTrustDomains"]
            }
            Self::Operation => {
                &["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"]
            }
            Self::Other => &[],
        }
    }

    /// The kind of the value of `key` (of each element, for a list).
    fn child(self, key: &str) -> Self {
        match (self, key) {
            (Self::Top, "headers") => Self::Headers,
            (Self::Top, "pathMatching") => Self::PathMatching,
            (Self::Top, "identities") => Self::Identity,
            (Self::Top, "gateway") => Self::Gateway,
            (Self::Top, "destinations") => Self::Destination,
            (Self::Identity, "certificate") => Self::Certificate,
            (Self::Gateway | Self::Destination, "policies") => Self::Policy,
            (Self::Policy, "rules") => Self::Rule,
            (Self::Rule, "from") => Self::From,
            (Self::Rule, "to") => Self::To,
            (Self::From, "source") => Self::Source,
            (Self::To, "operation") => Self::Operation,
            _ => Self::Other,
        }
    }
}

fn write_value(out: &mut String, value: &Value, kind: Kind, indent: usize) {
    let pad = |out: &mut String, level: usize| out.push_str(&"  ".repeat(level));
    match value {
        Value::Object(map) if !map.is_empty() => {
            let order = kind.order();
            let keys = (order.iter().copied().filter(|k| map.contains_key(*k)))
                .chain(map.keys().map(String::as_str).filter(|k| !order.contains(k)));
            out.push_str("{\n");
            for (n, key) in keys.enumerate() {
                if n > 0 {
                    out.push_str(",\n");
                }
                pad(out, indent + 1);
                out.push_str(&Value::String(key.to_string()).to_string());
                out.push_str(": ");
                if let Some(v) = map.get(key) {
                    write_value(out, v, kind.child(key), indent + 1);
                }
            }
            out.push('\n');
            pad(out, indent);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(",\n");
                }
                pad(out, indent + 1);
                write_value(out, item, kind, indent + 1);
            }
            out.push('\n');
            pad(out, indent);
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
