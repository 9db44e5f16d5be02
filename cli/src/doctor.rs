//! `egress-identity doctor ADMIN_URL POLICY`: checks a running gateway against the policy, through Envoy's
//! admin API (`/config_dump`, `/stats/prometheus`), and lists what differs:
//! - the plugin configuration the gateway loaded is this policy (and which platform it was rendered for);
//! - every cluster an identity is presented by exists, and presents a certificate with the subject the policy
//!   declares, not expired and not expiring soon;
//! - every destination can be reached: HTTP ones through a route that takes the cluster the filter names,
//!   tcp/tls ones through a listener on the port they arrive on, with the network filter;
//! - the metrics are exported, with the tag regexes that make their labels.
//!
//! The expectations come from the core, for the platform the loaded configuration names: the same names the
//! filter and `render` use. [`check`] is pure (a config dump, the Prometheus text and the policy in, findings
//! out); [`run`] fetches them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use egress_identity_core::config::Config;
use egress_identity_core::config_document::{PlatformSpec, Protocol};
use egress_identity_core::identity::PresentedCertificate;
use egress_identity_core::platform::Platform;
use serde_json::Value;

/// What doctor found: a check that holds, a drift (the gateway differs from the policy), or a note (what it
/// could not check, and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Drift(String),
    Note(String),
}

/// When a certificate counts as expiring soon.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Seconds since the Unix epoch.
    pub now: i64,
    pub expiry_days: i64,
}

/// Fetches the gateway's state from `admin` (`http://host:port`) and prints the findings; exit status 0 when
/// nothing drifted, 1 when something did, 2 when the gateway cannot be asked.
pub fn run(admin: &str, policy_path: &Path, policy_text: &str, expiry_days: u32) -> ExitCode {
    let fetched = http_get(admin, "/config_dump").and_then(|dump| {
        let dump: Value = serde_json::from_str(&dump).map_err(|e| format!("/config_dump is not JSON: {e}"))?;
        Ok((dump, http_get(admin, "/stats/prometheus")?))
    });
    let (dump, prometheus) = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            eprintln!("doctor: cannot ask the gateway at {admin}: {e}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let clock = Clock { now, expiry_days: i64::from(expiry_days) };
    let findings = match check(&dump, &prometheus, policy_text, clock) {
        Ok(findings) => findings,
        Err(errors) => {
            for e in errors {
                eprintln!("{}: {e}", policy_path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    println!("doctor: gateway {admin}, policy {}", policy_path.display());
    let mut drifts = 0;
    for f in &findings {
        match f {
            Finding::Ok(text) => println!("ok:    {text}"),
            Finding::Note(text) => println!("note:  {text}"),
            Finding::Drift(text) => {
                drifts += 1;
                println!("drift: {text}");
            }
        }
    }
    if drifts == 0 {
        println!("doctor: the gateway runs this policy");
        ExitCode::SUCCESS
    } else {
        println!(
            "doctor: {drifts} difference{} between the gateway and the policy",
            if drifts == 1 { "" } else { "s" }
        );
        ExitCode::FAILURE
    }
}

/// The findings for a gateway whose `/config_dump` is `dump` and `/stats/prometheus` is `prometheus`,
/// against the policy `policy_text`. `Err`: the policy itself does not compile (every error).
pub fn check(dump: &Value, prometheus: &str, policy_text: &str, clock: Clock) -> Result<Vec<Finding>, Vec<String>> {
    let gateway = Gateway::of(dump);
    let mut findings = Vec::new();
    let policy: Value = serde_json::from_str(policy_text).map_err(|e| vec![format!("not JSON: {e}")])?;

    // The plugin configuration: is it this policy, and for which platform?
    let mut platform: Option<PlatformSpec> = None;
    if gateway.plugins.is_empty() {
        findings.push(Finding::Drift(
            "no egress-identity plugin (root id egress-identity or egress-identity-l4) in the gateway's configuration"
                .into(),
        ));
    }
    for plugin in &gateway.plugins {
        let loaded: Value = match serde_json::from_str(&plugin.configuration) {
            Ok(v) => v,
            Err(e) => {
                findings.push(Finding::Drift(format!("{}: the plugin configuration is not JSON: {e}", plugin.place())));
                continue;
            }
        };
        let mut without_platform = loaded.clone();
        let spec = without_platform.as_object_mut().and_then(|o| o.remove("platform"));
        let spec: PlatformSpec = match spec.map(serde_json::from_value).transpose() {
            Ok(spec) => spec.unwrap_or(PlatformSpec::Envoy),
            Err(e) => {
                findings.push(Finding::Drift(format!("{}: its platform is not one doctor knows: {e}", plugin.place())));
                continue;
            }
        };
        let fingerprint = egress_identity_core::config_generation::fingerprint(plugin.configuration.as_bytes());
        match first_difference(&policy, &without_platform, "") {
            None => findings.push(Finding::Ok(format!(
                "{}: the plugin configuration is this policy, for platform {} (configuration {fingerprint:016x})",
                plugin.place(),
                platform_name(&spec)
            ))),
            Some(at) => findings.push(Finding::Drift(format!(
                "{}: the plugin configuration (configuration {fingerprint:016x}) is not this policy: {at}",
                plugin.place()
            ))),
        }
        match &platform {
            None => platform = Some(spec),
            Some(first) if *first != spec => findings.push(Finding::Drift(format!(
                "{}: rendered for platform {}, another plugin of the gateway for {}",
                plugin.place(),
                platform_name(&spec),
                platform_name(first)
            ))),
            Some(_) => {}
        }
    }
    let platform = platform.unwrap_or(PlatformSpec::Envoy);
    let config = Config::load_for(policy_text.as_bytes(), &platform).map_err(|errors| {
        errors.iter().map(|e| format!("{e} (for platform {})", platform_name(&platform))).collect::<Vec<_>>()
    })?;
    match prometheus_gauge(prometheus, "egress_identity_config_generation") {
        Some(generation) => findings.push(Finding::Ok(format!(
            "the plugin's metrics are exported (configuration generation {generation})"
        ))),
        None => findings.push(Finding::Drift(
            "the plugin's metrics are not exported: no egress_identity_config_generation in /stats/prometheus (is the filter loaded? a custom stats matcher?)".into(),
        )),
    }
    check_stats_tags(&gateway, &config, &mut findings);
    check_clusters(&gateway, &config, clock, &mut findings);
    check_reachability(&gateway, &config, &mut findings);
    check_forward_proxy(&gateway, &config, &mut findings);
    Ok(findings)
}

/// A dynamic destination (a wildcard, several hosts or ports) is reached through Envoy's dynamic forward
/// proxy: each of its identity clusters must be one, and a forward-proxy filter on the path (HTTP: before the
/// router; tcp/tls: `sni_dynamic_forward_proxy` before tcp_proxy) must fill the DNS cache the clusters read.
fn check_forward_proxy(gateway: &Gateway<'_>, config: &Config, findings: &mut Vec<Finding>) {
    let cluster = |name: &str| gateway.clusters.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
    for d in config.destinations.iter().filter(|d| d.dynamic) {
        let filter = if d.protocol.is_l4() { SNI_FORWARD_PROXY } else { HTTP_FORWARD_PROXY };
        let mut caches: Vec<&str> = Vec::new();
        for identity in d.identities.identities() {
            // A missing cluster is check_clusters' finding.
            let Some(c) = cluster(&identity.cluster) else { continue };
            let dynamic =
                c.pointer("/cluster_type/name").and_then(Value::as_str) == Some("envoy.clusters.dynamic_forward_proxy");
            match c.pointer("/cluster_type/typed_config/dns_cache_config/name").and_then(Value::as_str) {
                Some(cache) if dynamic => {
                    if !caches.contains(&cache) {
                        caches.push(cache);
                    }
                }
                _ => findings.push(Finding::Drift(format!(
                    "{} (a wildcard, several hosts or ports): cluster {:?} is not a dynamic forward proxy: it cannot reach the host and port each caller asks for",
                    d.name, &*identity.cluster
                ))),
            }
        }
        for cache in caches {
            let filled = gateway.listeners.iter().find(|l| l.forward_proxies.contains(&(filter, cache)));
            match filled {
                Some(l) => findings.push(Finding::Ok(format!(
                    "{}: listener {} runs {filter}, which fills its clusters' DNS cache {cache:?}",
                    d.name, l.name
                ))),
                None => findings.push(Finding::Drift(format!(
                    "{}: no listener runs {filter} on the DNS cache {cache:?} its clusters read: nothing resolves its hosts, every request or connection to it fails",
                    d.name
                ))),
            }
        }
    }
}

fn platform_name(spec: &PlatformSpec) -> &'static str {
    match spec {
        PlatformSpec::Envoy => "envoy",
        PlatformSpec::IstioGateway => "istio-gateway",
        PlatformSpec::IstioWaypoint => "istio-waypoint",
        PlatformSpec::Kuma { .. } => "kuma",
    }
}

/// The first place two JSON documents differ, as `path: the policy says X, the gateway Y`.
fn first_difference(policy: &Value, loaded: &Value, path: &str) -> Option<String> {
    let here = || if path.is_empty() { ".".to_string() } else { path.to_string() };
    match (policy, loaded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    None => return Some(format!("{at}: in the policy, not in the gateway")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &at) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys().find(|k| !a.contains_key(*k)).map(|k| {
                let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                format!("{at}: in the gateway, not in the policy")
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                if let Some(d) = first_difference(v, w, &format!("{path}[{i}]")) {
                    return Some(d);
                }
            }
            (a.len() != b.len())
                .then(|| format!("{}: {} entries in the policy, {} in the gateway", here(), a.len(), b.len()))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{}: the policy says {a}, the gateway {b}", here())),
    }
}

/// What doctor reads of a config dump.
#[derive(Debug, Default)]
struct Gateway<'d> {
    plugins: Vec<Plugin>,
    /// Cluster name → cluster.
    clusters: Vec<(&'d str, &'d Value)>,
    /// Secret name → (whether Envoy has it: active or static, the secret).
    secrets: Vec<(&'d str, bool, &'d Value)>,
    listeners: Vec<Listener<'d>>,
    bootstrap: Option<&'d Value>,
    /// Every `cluster_header` a route names.
    cluster_headers: Vec<&'d str>,
}

#[derive(Debug)]
struct Plugin {
    /// The listener it sits in (`None`: delivered apart, e.g. Istio's extension config discovery).
    listener: Option<String>,
    root_id: String,
    configuration: String,
}

impl Plugin {
    fn place(&self) -> String {
        match &self.listener {
            Some(l) => format!("listener {}, plugin {}", l, self.root_id),
            None => format!("plugin {}", self.root_id),
        }
    }
}

#[derive(Debug)]
struct Listener<'d> {
    name: &'d str,
    ports: Vec<u16>,
    /// Root ids of the egress-identity plugins in it.
    roots: Vec<String>,
    tcp_proxy: bool,
    /// The dynamic forward proxy filters in it: (filter name, the DNS cache it fills).
    forward_proxies: Vec<(&'d str, &'d str)>,
}

/// The filters that fill a dynamic forward proxy's DNS cache: HTTP, and tcp/tls.
const HTTP_FORWARD_PROXY: &str = "envoy.filters.http.dynamic_forward_proxy";
const SNI_FORWARD_PROXY: &str = "envoy.filters.network.sni_dynamic_forward_proxy";

impl<'d> Gateway<'d> {
    fn of(dump: &'d Value) -> Self {
        let mut g = Self::default();
        let configs = dump.get("configs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut in_listeners: Vec<String> = Vec::new();
        for c in configs {
            let kind = c.get("@type").and_then(Value::as_str).unwrap_or_default();
            if kind.ends_with("BootstrapConfigDump") {
                g.bootstrap = c.get("bootstrap");
            } else if kind.ends_with("ClustersConfigDump") {
                for key in ["static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters"] {
                    for entry in c.get(key).and_then(Value::as_array).into_iter().flatten() {
                        if let Some(cluster) = entry.get("cluster") {
                            if let Some(name) = cluster.get("name").and_then(Value::as_str) {
                                g.clusters.push((name, cluster));
                            }
                        }
                    }
                }
            } else if kind.ends_with("SecretsConfigDump") {
                for (key, present) in
                    [("static_secrets", true), ("dynamic_active_secrets", true), ("dynamic_warming_secrets", false)]
                {
                    for entry in c.get(key).and_then(Value::as_array).into_iter().flatten() {
                        let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
                        if let Some(secret) = entry.get("secret") {
                            g.secrets.push((name, present, secret));
                        }
                    }
                }
            } else if kind.ends_with("ListenersConfigDump") {
                let statics = c.get("static_listeners").and_then(Value::as_array).into_iter().flatten();
                let dynamics = c.get("dynamic_listeners").and_then(Value::as_array).into_iter().flatten();
                let listeners = statics
                    .filter_map(|l| l.get("listener"))
                    .chain(dynamics.filter_map(|l| l.pointer("/active_state/listener")));
                for listener in listeners {
                    let name = listener.get("name").and_then(Value::as_str).unwrap_or_default();
                    let mut ports: Vec<u16> = Vec::new();
                    let addresses = std::iter::once(listener.get("address")).chain(
                        listener
                            .get("additional_addresses")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .map(|a| a.get("address")),
                    );
                    for address in addresses.flatten() {
                        if let Some(port) = address.pointer("/socket_address/port_value").and_then(Value::as_u64) {
                            ports.extend(u16::try_from(port).ok());
                        }
                    }
                    let mut roots = Vec::new();
                    let mut tcp_proxy = false;
                    let mut forward_proxies = Vec::new();
                    walk(listener, &mut |v| {
                        if let Some(p) = plugin(v, Some(name)) {
                            roots.push(p.root_id.clone());
                            g.plugins.push(p);
                        }
                        match v.get("name").and_then(Value::as_str) {
                            Some("envoy.filters.network.tcp_proxy") => tcp_proxy = true,
                            Some(f @ (HTTP_FORWARD_PROXY | SNI_FORWARD_PROXY)) => {
                                let cache = v.pointer("/typed_config/dns_cache_config/name").and_then(Value::as_str);
                                forward_proxies.push((f, cache.unwrap_or_default()));
                            }
                            _ => {}
                        }
                    });
                    in_listeners.push(name.to_string());
                    g.listeners.push(Listener { name, ports, roots, tcp_proxy, forward_proxies });
                }
            } else {
                // Extension configs delivered apart (Istio's WasmPlugin through ECDS), routes (RDS).
                walk(c, &mut |v| {
                    if let Some(p) = plugin(v, None) {
                        g.plugins.push(p);
                    }
                });
            }
            walk(c, &mut |v| {
                if let Some(h) = v.get("cluster_header").and_then(Value::as_str) {
                    g.cluster_headers.push(h);
                }
            });
        }
        g
    }
}

/// An egress-identity plugin: a Wasm `config` with our root id and a configuration string.
fn plugin(v: &Value, listener: Option<&str>) -> Option<Plugin> {
    let root_id = v.get("root_id").and_then(Value::as_str)?;
    if !root_id.starts_with("egress-identity") {
        return None;
    }
    let configuration = v.pointer("/configuration/value").and_then(Value::as_str)?;
    Some(Plugin {
        listener: listener.map(str::to_string),
        root_id: root_id.to_string(),
        configuration: configuration.to_string(),
    })
}

/// Calls `f` on every value of `v`, depth first.
fn walk<'d>(v: &'d Value, f: &mut impl FnMut(&'d Value)) {
    f(v);
    match v {
        Value::Object(map) => map.values().for_each(|c| walk(c, f)),
        Value::Array(items) => items.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

fn check_stats_tags(gateway: &Gateway<'_>, config: &Config, findings: &mut Vec<Finding>) {
    if matches!(config.platform, Platform::Kuma(_)) {
        findings.push(Finding::Note(
            "metric labels not checked: Kuma offers no way to add tag regexes to a zone proxy's bootstrap (the labels stay in the metric names)".into(),
        ));
        return;
    }
    let tags = gateway
        .bootstrap
        .and_then(|b| b.pointer("/stats_config/stats_tags"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let missing: Vec<&str> = egress_identity_core::metrics::TAGS
        .iter()
        .filter(|(name, regex)| {
            !tags.iter().any(|t| {
                t.get("tag_name").and_then(Value::as_str) == Some(name)
                    && t.get("regex").and_then(Value::as_str) == Some(regex)
            })
        })
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        findings.push(Finding::Ok("the bootstrap extracts every metric label (stats_config.stats_tags)".into()));
    } else {
        findings.push(Finding::Drift(format!(
            "the bootstrap's stats_config.stats_tags lacks the regexes of the labels {}: those metrics carry them in their names",
            missing.join(", ")
        )));
    }
}

/// Every cluster the policy's identities are presented by, and the certificate each presents.
fn check_clusters(gateway: &Gateway<'_>, config: &Config, clock: Clock, findings: &mut Vec<Finding>) {
    if matches!(config.platform, Platform::IstioWaypoint) {
        findings.push(Finding::Note(
            "clusters and certificates not checked on an Istio waypoint: its identities are HTTPRoute keys, their clusters istiod's (istioctl proxy-config secret)".into(),
        ));
        return;
    }
    let cluster = |name: &str| gateway.clusters.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
    for d in config.destinations.iter() {
        let mut checked_shared = false;
        for identity in d.identities.identities() {
            let what = if d.protocol == Protocol::Tls {
                format!("the passthrough of {}", d.name)
            } else {
                format!("identity {} of {}", identity.name, d.name)
            };
            if d.single_cluster && checked_shared {
                continue;
            }
            checked_shared = d.single_cluster;
            let Some(c) = cluster(&identity.cluster) else {
                findings.push(Finding::Drift(format!(
                    "{what}: the gateway has no cluster {:?}: every request or connection the filter sends there fails",
                    &*identity.cluster
                )));
                continue;
            };
            if d.protocol == Protocol::Tls {
                findings.push(Finding::Ok(format!("{what}: cluster {:?}", &*identity.cluster)));
                continue;
            }
            if d.single_cluster {
                findings.push(Finding::Ok(format!(
                    "{}: cluster {:?} (single-cluster mode: each identity's certificate is fetched on first use; those loaded are checked below)",
                    d.name, &*identity.cluster
                )));
                for i in d.identities.identities() {
                    let secret = i.secret.as_deref().unwrap_or_default();
                    if gateway.secrets.iter().any(|(n, present, _)| *n == secret && *present) {
                        check_secret(
                            gateway,
                            config,
                            &i.name,
                            &format!("identity {} of {} (secret {secret:?})", i.name, d.name),
                            secret,
                            clock,
                            findings,
                        );
                    }
                }
                continue;
            }
            match client_certificate(c) {
                Some(CertificateSource::Sds(secret)) => {
                    let label = format!("{what}: cluster {:?}", &*identity.cluster);
                    check_secret(gateway, config, &identity.name, &label, secret, clock, findings);
                }
                Some(CertificateSource::Inline(pem)) => {
                    let label = format!("{what}: cluster {:?}", &*identity.cluster);
                    check_pem(config, &identity.name, &label, &pem, clock, findings);
                }
                None => findings.push(Finding::Drift(format!(
                    "{what}: cluster {:?} presents no client certificate (no upstream TLS context with one)",
                    &*identity.cluster
                ))),
            }
        }
    }
}

enum CertificateSource<'d> {
    Sds(&'d str),
    Inline(String),
}

/// The client certificate a cluster's upstream TLS context presents.
fn client_certificate(cluster: &Value) -> Option<CertificateSource<'_>> {
    let context = cluster.pointer("/transport_socket/typed_config/common_tls_context")?;
    if let Some(name) = context.pointer("/tls_certificate_sds_secret_configs/0/name").and_then(Value::as_str) {
        return Some(CertificateSource::Sds(name));
    }
    context.pointer("/tls_certificates/0/certificate_chain").and_then(data_source).map(CertificateSource::Inline)
}

/// The text of an Envoy DataSource (`inline_string`, `inline_bytes`, or a local `filename`).
fn data_source(v: &Value) -> Option<String> {
    if let Some(s) = v.get("inline_string").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    if let Some(b) = v.get("inline_bytes").and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
        return String::from_utf8(bytes).ok();
    }
    let file = v.get("filename").and_then(Value::as_str)?;
    std::fs::read_to_string(file).ok()
}

fn check_secret(
    gateway: &Gateway<'_>,
    config: &Config,
    identity: &str,
    label: &str,
    secret: &str,
    clock: Clock,
    findings: &mut Vec<Finding>,
) {
    match gateway.secrets.iter().find(|(n, _, _)| *n == secret) {
        None => findings.push(Finding::Drift(format!(
            "{label}: its certificate, secret {secret:?}, is not loaded: the handshake presents nothing and the request fails"
        ))),
        Some((_, false, _)) => findings.push(Finding::Drift(format!(
            "{label}: its certificate, secret {secret:?}, is still warming (SDS has not delivered it): requests through it fail"
        ))),
        Some((_, true, s)) => match s.pointer("/tls_certificate/certificate_chain").and_then(data_source) {
            Some(pem) => check_pem(config, identity, label, &pem, clock, findings),
            None => findings.push(Finding::Note(format!(
                "{label}: secret {secret:?} shows no certificate doctor can read (a file on the gateway's disk?)"
            ))),
        },
    }
}

/// The leaf of `pem` against what the policy declares for `identity`, and its validity.
fn check_pem(config: &Config, identity: &str, label: &str, pem: &str, clock: Clock, findings: &mut Vec<Finding>) {
    let Some((presented, not_before, not_after)) = leaf(pem) else {
        findings.push(Finding::Drift(format!("{label}: its certificate cannot be read as X.509")));
        return;
    };
    let Some((_, declared)) = config.identities.get(identity) else { return };
    let expected = &declared.certificate;
    let differences = expected.differences(&presented);
    let shown = presented.common_names.iter().map(|c| format!("CN={c}")).collect::<Vec<_>>().join(", ");
    if !differences.is_empty() {
        findings.push(Finding::Drift(format!(
            "{label}: its certificate does not carry what the policy declares: {}",
            differences.join("; ")
        )));
        return;
    }
    let days = (not_after - clock.now).div_euclid(86_400);
    if not_before > clock.now {
        findings.push(Finding::Drift(format!("{label} presents {shown}, not valid yet")));
    } else if not_after <= clock.now {
        findings.push(Finding::Drift(format!("{label} presents {shown}, expired")));
    } else if days < clock.expiry_days {
        findings.push(Finding::Drift(format!("{label} presents {shown}, which expires in {days} days")));
    } else {
        findings.push(Finding::Ok(format!("{label} presents {shown} (expires in {days} days)")));
    }
}

/// The leaf certificate of a PEM chain: what it presents, and its validity (Unix seconds).
fn leaf(pem: &str) -> Option<(PresentedCertificate, i64, i64)> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten().find(|p| p.label == "CERTIFICATE")?;
    let cert = block.parse_x509().ok()?;
    let presented = crate::certificate_material::presented(&cert).ok()?;
    let validity = cert.validity();
    Some((presented, validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// Every destination the platform carries can be reached: a route that takes the filter's cluster header
/// for HTTP ones, a listener on the port they arrive on, with the network filter, for tcp/tls ones.
fn check_reachability(gateway: &Gateway<'_>, config: &Config, findings: &mut Vec<Finding>) {
    let platform = &config.platform;
    let carried: Vec<_> = config.destinations.iter().collect();
    if carried.iter().any(|d| !d.protocol.is_l4()) {
        let http_listener = gateway.listeners.iter().find(|l| l.roots.iter().any(|r| !r.ends_with("-l4")));
        let ecds = gateway.plugins.iter().any(|p| p.listener.is_none() && !p.root_id.ends_with("-l4"));
        match http_listener {
            Some(l) => findings.push(Finding::Ok(format!("HTTP destinations: listener {} runs the filter", l.name))),
            None if ecds => findings
                .push(Finding::Ok("HTTP destinations: the filter is delivered by extension config discovery".into())),
            None => findings.push(Finding::Drift(
                "HTTP destinations: no listener runs the egress-identity HTTP filter: requests are not decided".into(),
            )),
        }
        let header = &*config.headers.cluster;
        if matches!(platform, Platform::IstioWaypoint) {
            findings.push(Finding::Note(
                "the waypoint's routes match the cluster header in HTTPRoutes: not checked".into(),
            ));
        } else if gateway.cluster_headers.contains(&header) {
            findings.push(Finding::Ok(format!("a route sends requests to the cluster the filter names ({header})")));
        } else {
            findings.push(Finding::Drift(format!(
                "no route takes its cluster from the filter's header {header} (cluster_header): allowed requests go nowhere"
            )));
        }
    }
    for d in carried.iter().filter(|d| d.protocol.is_l4()) {
        let fronts = d.ports.iter().flat_map(|port| {
            platform.fronts(&d.name, &d.host, *port, d.protocol, config.default_port, d.ports.len() == 1)
        });
        for front in fronts {
            let Some(port) = front.port else { continue };
            let listener = gateway
                .listeners
                .iter()
                .find(|l| l.ports.contains(&port) && l.roots.iter().any(|r| r.ends_with("-l4")) && l.tcp_proxy);
            match listener {
                Some(l) => findings.push(Finding::Ok(format!(
                    "{} ({}): listener {} takes port {port} with the network filter before tcp_proxy",
                    d.name,
                    d.protocol.as_str(),
                    l.name
                ))),
                None => findings.push(Finding::Drift(format!(
                    "{} ({}, {} on port {port}): no listener of the gateway takes port {port} with egress-identity's network filter and tcp_proxy: every connection to it fails",
                    d.name,
                    d.protocol.as_str(),
                    front.host
                ))),
            }
        }
    }
}

/// A gauge's value in Prometheus text (the first sample of that name).
fn prometheus_gauge(text: &str, name: &str) -> Option<String> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = rest.rsplit(' ').next()?;
        (rest.starts_with(' ') || rest.starts_with('{')).then(|| value.to_string())
    })
}

/// A plain HTTP/1.1 GET of `path` from the admin interface `admin` (`http://host:port`).
fn http_get(admin: &str, path: &str) -> Result<String, String> {
    let authority =
        admin.strip_prefix("http://").ok_or("the admin URL must be http://HOST:PORT")?.trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("{authority}: {e}"))?;
    let timeout = Some(Duration::from_secs(30));
    stream.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("{path}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{path}: not an HTTP response"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{path}: HTTP status {status}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked { dechunk(body) } else { body.to_string() })
}

/// The body of a chunked transfer encoding.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16) else { break };
        if size == 0 {
            break;
        }
        let Some(chunk) = rest.get(..size) else { break };
        out.push_str(chunk);
        body = rest.get(size..).unwrap_or_default().trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"{ "localTrustDomain": "cluster.local",
      "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] } ],
      "destinations": [
        { "name": "api", "host": "api.example", "port": 443, "identities": ["team.app1"] },
        { "name": "db", "protocol": "tcp", "host": "db.example", "port": 5432, "identities": ["team.app1"] } ] }"#;

    fn plugin(root: &str, text: &str) -> Value {
        json!({"name": "envoy.filters.http.wasm", "typed_config": {"config": {"root_id": root,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text}}}})
    }

    fn dump(text: &str, l4_port: u16) -> Value {
        let tags: Vec<Value> =
            egress_identity_core::metrics::TAGS.iter().map(|(n, r)| json!({"tag_name": n, "regex": r})).collect();
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
             "bootstrap": {"stats_config": {"stats_tags": tags}}},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "static_clusters": [
                {"cluster": {"name": "api|team-app1", "transport_socket": {"typed_config": {"common_tls_context":
                    {"tls_certificate_sds_secret_configs": [{"name": "external-team.app1"}]}}}}},
                {"cluster": {"name": "db|team-app1", "transport_socket": {"typed_config": {"common_tls_context":
                    {"tls_certificate_sds_secret_configs": [{"name": "external-team.app1"}]}}}}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": [
                {"listener": {"name": "egress", "address": {"socket_address": {"port_value": 10443}},
                    "filter_chains": [{"filters": [{"typed_config": {"route_config": {"virtual_hosts": [{"routes": [
                        {"route": {"cluster_header": "x-egress-identity-cluster"}}]}]},
                        "http_filters": [plugin("egress-identity", text)]}}]}]}},
                {"listener": {"name": "egress-l4", "address": {"socket_address": {"port_value": l4_port}},
                    "filter_chains": [{"filters": [plugin("egress-identity-l4", text),
                        {"name": "envoy.filters.network.tcp_proxy"}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": []}
        ]})
    }

    fn clock() -> Clock {
        Clock { now: 1_800_000_000, expiry_days: 30 }
    }

    fn drifts(findings: &[Finding]) -> Vec<&str> {
        findings.iter().filter_map(|f| if let Finding::Drift(t) = f { Some(t.as_str()) } else { None }).collect()
    }

    #[test]
    fn a_gateway_running_another_policy_or_missing_a_port_drifts() {
        let loaded = egress_identity_core::platform::plugin_configuration(POLICY, &PlatformSpec::Envoy).unwrap();
        let prom = "egress_identity_config_generation 1\n";
        let f = check(&dump(&loaded, 5432), prom, POLICY, clock()).unwrap();
        let d = drifts(&f);
        // The secret is not loaded in this dump: both identity clusters say so, nothing else drifts.
        assert_eq!(d.len(), 2, "{f:#?}");
        assert!(d.iter().all(|t| t.contains("secret \"external-team.app1\", is not loaded")), "{d:?}");

        let moved = check(&dump(&loaded, 5433), prom, POLICY, clock()).unwrap();
        let d = drifts(&moved);
        assert!(d.iter().any(|t| t.starts_with("db (tcp, db.example on port 5432): no listener")), "{d:?}");

        let other = POLICY.replace("\"port\": 5432", "\"port\": 5433");
        let loaded = egress_identity_core::platform::plugin_configuration(&other, &PlatformSpec::Envoy).unwrap();
        let f = check(&dump(&loaded, 5432), "", POLICY, clock()).unwrap();
        let d = drifts(&f);
        assert!(
            d.iter().any(|t| t.contains("is not this policy: destinations[1].port: the policy says 5432, the gateway 5433")),
            "{d:?}"
        );
        assert!(d.iter().any(|t| t.contains("metrics are not exported")), "{d:?}");
    }

    #[test]
    fn a_dynamic_destination_needs_forward_proxy_clusters_and_the_filter_that_fills_their_cache() {
        let policy = POLICY.replace("\"host\": \"api.example\"", "\"host\": \"*.api.example\"");
        let loaded = egress_identity_core::platform::plugin_configuration(&policy, &PlatformSpec::Envoy).unwrap();
        let prom = "egress_identity_config_generation 1\n";
        let forward_proxy = |d: &mut Value, cache: &str| {
            let c = d.pointer_mut("/configs/1/static_clusters/0/cluster").unwrap();
            c["cluster_type"] = json!({"name": "envoy.clusters.dynamic_forward_proxy",
                "typed_config": {"dns_cache_config": {"name": cache}}});
        };
        let filter = |d: &mut Value| {
            let filters = d
                .pointer_mut(
                    "/configs/2/static_listeners/0/listener/filter_chains/0/filters/0/typed_config/http_filters",
                )
                .unwrap();
            filters.as_array_mut().unwrap().push(json!({"name": HTTP_FORWARD_PROXY,
                "typed_config": {"dns_cache_config": {"name": "egress-identity"}}}));
        };
        let found = |d: &Value| {
            let f = check(d, prom, &policy, clock()).unwrap();
            drifts(&f).into_iter().filter(|t| t.starts_with("api")).map(String::from).collect::<Vec<_>>()
        };
        // A fixed cluster.
        let d = found(&dump(&loaded, 5432));
        assert!(d.len() == 1 && d[0].contains("is not a dynamic forward proxy"), "{d:?}");
        // A forward-proxy cluster, and nothing fills its cache.
        let mut dynamic = dump(&loaded, 5432);
        forward_proxy(&mut dynamic, "egress-identity");
        let d = found(&dynamic);
        assert!(d.len() == 1 && d[0].contains("no listener runs envoy.filters.http.dynamic_forward_proxy"), "{d:?}");
        // The filter, on the cluster's cache: nothing drifts; on another cache: it does.
        filter(&mut dynamic);
        assert_eq!(found(&dynamic), Vec::<String>::new());
        forward_proxy(&mut dynamic, "another");
        assert!(found(&dynamic)[0].contains("on the DNS cache \"another\""));
    }

    #[test]
    fn differences_name_the_path() {
        let a = json!({"x": [1, {"y": "a"}]});
        assert_eq!(
            first_difference(&a, &json!({"x": [1, {"y": "b"}]}), ""),
            Some("x[1].y: the policy says \"a\", the gateway \"b\"".into())
        );
        assert_eq!(
            first_difference(&a, &json!({"x": [1]}), ""),
            Some("x: 2 entries in the policy, 1 in the gateway".into())
        );
        assert_eq!(first_difference(&a, &a, ""), None);
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(
            prometheus_gauge("# x\negress_identity_config_generation 3\n", "egress_identity_config_generation"),
            Some("3".into())
        );
    }
}
