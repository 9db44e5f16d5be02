//! `render kuma`: the manifests of `examples/kuma/` (a mesh-scoped Kuma ZoneEgress running the filter) for
//! one policy file.

use std::collections::BTreeMap;

use super::envoy::{identity_clusters, HostPort, IdentityCluster};
use super::istio::{destinations, Dest};
use super::network_policy;
use super::{
    commented, documents, int, k8s_name, map, s, strs, to_yaml, PolicyFile, RenderError, Yaml, EARLY_DATA_BYTES,
    UNROUTED_CLUSTER,
};
use egress_identity_core::config_document::{PrincipalSource, Protocol};

/// Placeholder for the module's SHA-256 (Envoy refuses a module whose digest differs).
pub const SHA256_PLACEHOLDER: &str = "REPLACE_WITH_THE_SHA256_OF_egress_identity.wasm";

#[derive(Clone, Debug)]
pub struct KumaOptions {
    pub mesh: String,
    pub zone: String,
    pub namespace: String,
    /// Destination name → the partner endpoint (default: its first exact host outside `.mesh.local`, 443).
    pub upstreams: BTreeMap<String, HostPort>,
    /// SHA-256 (hex) of the module the zone egress fetches.
    pub wasm_sha256: String,
    /// The port of the zone egress listener: the destination port the network filter sees for tcp and tls
    /// destinations.
    pub egress_port: u16,
    /// Namespaces to keep off the external network besides those the policy names (NetworkPolicy).
    pub workload_namespaces: Vec<String>,
}

struct Front {
    name: String,
    port: u16,
    upstream: HostPort,
    protocol: Protocol,
}

impl KumaOptions {
    /// Kuma's name of a MeshExternalService cluster: kri_extsvc_<mesh>_<zone>_<namespace>_<name>_<port>.
    pub fn kri(&self, name: &str, port: u16) -> String {
        format!("kri_extsvc_{}_{}_{}_{name}_{port}", self.mesh, self.zone, self.namespace)
    }

    /// The SNI callers' sidecars send to the zone egress for a MeshExternalService (what the network filter
    /// reads as the destination's name).
    pub fn sni(&self, name: &str, port: u16) -> String {
        format!("{}{port}", self.sni_prefix(name))
    }

    /// The SNI of a MeshExternalService up to its port.
    fn sni_prefix(&self, name: &str) -> String {
        format!("sni.extsvc.{}.{}.{}.{name}.", self.mesh, self.zone, self.namespace)
    }
}

/// The MeshExternalService protocol of a front and its identities.
fn mes_protocol(f: &Front) -> &'static str {
    if f.protocol.is_l4() {
        "tcp"
    } else {
        "http"
    }
}

/// A tcp/tls destination at the zone egress: named by the SNI callers' sidecars send,
/// `sni.extsvc.<mesh>.<zone>.<namespace>.<name>.<port>`, which its hosts must list; `<port>` is its
/// MeshExternalService's port (the one applications connect to), which this returns.
fn l4_mes_port(
    opts: &KumaOptions,
    i: usize,
    d: &egress_identity_core::config_document::DestinationSpec,
) -> Result<u16, RenderError> {
    let prefix = opts.sni_prefix(&d.name);
    d.hosts
        .iter()
        .find_map(|h| h.strip_prefix(prefix.as_str())?.parse().ok().filter(|p: &u16| *p != 0))
        .ok_or_else(|| {
            RenderError(format!(
                "destinations[{i}] ({name}) is a {protocol} destination: at the zone egress its connections are named by the SNI callers' sidecars send, {prefix}<PORT> (PORT: the port applications connect to), which its hosts must list: every connection would be denied (unknown_destination)",
                name = d.name,
                protocol = d.protocol.as_str()
            ))
        })
}

fn meta(name: &str, opts: &KumaOptions, origin: bool) -> Yaml {
    let mut labels = vec![("kuma.io/mesh".to_string(), s(&opts.mesh))];
    if origin {
        labels.push(("kuma.io/origin".into(), s("zone")));
    }
    map([("name", s(name)), ("namespace", s(&opts.namespace)), ("labels", Yaml::Map(labels))])
}

fn object(kind: &str, metadata: Yaml, spec: Yaml) -> Yaml {
    map([("apiVersion", s("kuma.io/v1alpha1")), ("kind", s(kind)), ("metadata", metadata), ("spec", spec)])
}

fn zone_egress() -> Yaml {
    map([("kind", s("Dataplane")), ("labels", map([("kuma.io/listener-zoneegress", s("enabled"))]))])
}

/// A Kuma Secret as a MeshExternalService data source (Kuma 2.14: `{secret: NAME}`; the development
/// branch's `{type: Secret, secretRef}` is not accepted by the released CRD).
fn secret_ref(name: &str) -> Yaml {
    map([("secret", s(name))])
}

/// A principal pattern as a MeshTrafficPermission spiffeID match (Exact, or Prefix for `prefix*`).
fn spiffe_match(pattern: &str) -> Result<Yaml, RenderError> {
    let full = if pattern.starts_with("spiffe://") { pattern.to_string() } else { format!("spiffe://{pattern}") };
    let (kind, value) = match full.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') && prefix.len() > "spiffe://".len() => ("Prefix", prefix.to_string()),
        None if !full.contains('*') => ("Exact", full),
        _ => {
            return Err(RenderError(format!(
                "principal pattern {pattern:?} cannot be a MeshTrafficPermission spiffeID (Exact or Prefix only)"
            )))
        }
    };
    Ok(map([("type", s(kind)), ("value", s(value))]))
}

fn identity_service(c: &IdentityCluster) -> String {
    format!("{}-{}", k8s_name(&c.destination), k8s_name(&c.identity))
}

pub fn secret_base(identity: &str) -> String {
    format!("egress-identity-{}", k8s_name(identity))
}

fn generated() -> String {
    "# GENERATED by `egress-identity render kuma policy.json` (make render): edit the policy.\n".into()
}

/// The manifests, as `(file name, multi-document YAML)` in apply order.
pub fn render(policy: &PolicyFile, opts: &KumaOptions) -> Result<Vec<(String, String)>, RenderError> {
    if !policy.spec.principal_sources.contains(&PrincipalSource::PeerCertificate) {
        return Err(RenderError("principalSources must include peer_certificate: callers present their MeshIdentity SVID to the zone egress".into()));
    }
    super::check_one_endpoint_per_destination(policy, false)?;
    super::refuse_shared_clusters(policy, "Kuma")?;
    let clusters = identity_clusters(policy)?;
    let dests = destinations(policy)?;
    for name in opts.upstreams.keys() {
        if !dests.iter().any(|d| d.name == *name) {
            return Err(RenderError(format!("--upstream name {name:?} is not a destination of the policy")));
        }
    }
    // What Kuma gives callers and applications must be what the policy expects, or every request is denied.
    let trust_domain = format!("{}.{}.mesh.local", opts.mesh, opts.zone);
    if !policy.config.trust_domains.accepts(&trust_domain) {
        return Err(RenderError(format!(
            "the MeshIdentity gives callers the trust domain {trust_domain:?}, which the policy does not accept (trustDomains / localTrustDomain): every caller would be denied (untrusted_trust_domain)"
        )));
    }
    for (i, d) in policy.spec.destinations.iter().enumerate() {
        if d.protocol.is_l4() {
            l4_mes_port(opts, i, d)?;
            if !d.ports.contains(&u32::from(opts.egress_port)) {
                return Err(RenderError(format!(
                    "destinations[{i}] ({}): callers' connections reach the zone egress on its port {} (--egress-port), the destination port the filter sees, which its ports do not list: every connection would be denied (unknown_destination)",
                    d.name, opts.egress_port
                )));
            }
            continue;
        }
        let called = format!("{}.extsvc.mesh.local", d.name);
        if !d.hosts.iter().any(|h| h.eq_ignore_ascii_case(&called)) {
            return Err(RenderError(format!(
                "destinations[{i}] ({}): applications call {called} (Kuma's hostname of the MeshExternalService), which its hosts do not list: every request would be denied (unknown_destination)",
                d.name
            )));
        }
    }
    let mut fronts = Vec::new();
    for (i, Dest { name, port, protocol, .. }) in dests.iter().enumerate() {
        if k8s_name(name) != *name {
            return Err(RenderError(format!(
                "destinations[{i}].name {name:?} must be a Kubernetes name (it names the MeshExternalService)"
            )));
        }
        let spec = policy.spec.destinations.get(i);
        let upstream = match opts.upstreams.get(name) {
            Some(hp) => hp.clone(),
            None => {
                let host = spec
                    .and_then(|d| {
                        d.hosts.iter().find(|h| {
                            !h.starts_with('*') && !h.ends_with(".mesh.local") && !h.starts_with("sni.extsvc.")
                        })
                    })
                    .ok_or_else(|| {
                        RenderError(format!(
                            "destinations[{i}] ({name}): give the partner's endpoint with --upstream {name}=HOST:PORT"
                        ))
                    })?;
                HostPort { host: host.clone(), port: 443 }
            }
        };
        // A tcp/tls destination's MeshExternalService port is the one in the SNI it lists (its ports hold the
        // zone egress port).
        let port = match spec.filter(|d| d.protocol.is_l4()) {
            Some(d) => l4_mes_port(opts, i, d)?,
            None => *port,
        };
        fronts.push(Front { name: name.clone(), port, upstream, protocol: *protocol });
    }
    for c in &clusters {
        let Some(front) = fronts.iter().find(|f| f.name == c.destination) else { continue };
        let expected = opts.kri(&identity_service(c), front.port);
        if c.cluster != expected {
            return Err(RenderError(format!(
                "identity {:?} of destination {:?}: its cluster must be Kuma's name of its MeshExternalService, {expected:?} (not {:?})",
                c.identity, c.destination, c.cluster
            )));
        }
    }

    let identity = commented(
        format!("egress-identity on a Kuma ZoneEgress -- the mesh-scoped zone proxy of Kuma 2.14+/3.x (a Dataplane with a\nZoneEgress listener). Mesh {mesh}, zone {zone}, system namespace {ns}; see README.md.\n\nMesh-scoped zone proxies only speak MeshIdentity mTLS: every dataplane gets an X.509-SVID\n  spiffe://{mesh}.{zone}.mesh.local/ns/<namespace>/sa/<service account>\nwhich the filter reads (principalSources peer_certificate; trustDomains names its trust domain).", mesh = opts.mesh, zone = opts.zone, ns = opts.namespace),
        object(
            "MeshIdentity",
            meta("identity", opts, false),
            map([
                ("selector", map([("dataplane", map([("matchLabels", Yaml::Map(vec![]))]))])),
                (
                    "spiffeID",
                    map([
                        ("trustDomain", s("{{ .Mesh }}.{{ .Zone }}.mesh.local")),
                        ("path", s("/ns/{{ .Namespace }}/sa/{{ .ServiceAccount }}")),
                    ]),
                ),
                (
                    "provider",
                    map([
                        ("type", s("Bundled")),
                        (
                            "bundled",
                            map([
                                ("meshTrustCreation", s("Enabled")),
                                (
                                    "autogenerate",
                                    commented(
                                        "A CA generated by the control plane, fine for trying this out; in production bring\nyour own CA (bundled.ca) or use SPIRE.",
                                        map([("enabled", Yaml::Bool(true))]),
                                    ),
                                ),
                                ("insecureAllowSelfSigned", Yaml::Bool(true)),
                                ("certificateParameters", map([("expiry", s("24h"))])),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    );

    let mut services = Vec::new();
    for f in &fronts {
        let front_comment = if f.protocol.is_l4() {
            format!("`{name}` ({protocol}) is what applications connect to ({name}.extsvc.mesh.local:{port}). It is only a\nfront: at the zone egress the network filter names the identity's cluster for tcp_proxy, whose own\ncluster the MeshProxyPatch replaces by one that does not exist; its endpoint is unresolvable (.invalid)\ntoo: a connection the filter did not route goes nowhere.", name = f.name, port = f.port, protocol = f.protocol.as_str())
        } else {
            format!("`{name}` is what applications call (http://{name}.extsvc.mesh.local/, port {port}). It is only a\nfront: the MeshProxyPatch makes its route pick the cluster named by the filter's header, so its own\nendpoint is deliberately unresolvable (.invalid): if the patch stops applying, requests get a 503.", name = f.name, port = f.port)
        };
        services.push(commented(
            front_comment,
            object(
                "MeshExternalService",
                meta(&f.name, opts, true),
                map([
                    (
                        "match",
                        map([
                            ("type", s("HostnameGenerator")),
                            ("port", int(f.port)),
                            ("protocol", s(mes_protocol(f))),
                        ]),
                    ),
                    (
                        "endpoints",
                        Yaml::Seq(vec![map([
                            ("address", s(format!("{}.egress-identity.invalid", f.name))),
                            ("port", int(f.upstream.port)),
                        ])]),
                    ),
                ]),
            ),
        ));
        for c in clusters.iter().filter(|c| c.destination == f.name) {
            let base = secret_base(&c.identity);
            let endpoints = Yaml::Seq(vec![map([("address", s(&f.upstream.host)), ("port", int(f.upstream.port))])]);
            let matcher =
                map([("type", s("HostnameGenerator")), ("port", int(f.port)), ("protocol", s(mes_protocol(f)))]);
            if f.protocol == Protocol::Tls {
                services.push(commented(
                    format!("External identity {} of {} (tls passthrough): plain TCP to the partner, the caller's own TLS\ninside. Kuma names its cluster {} -- the identity's cluster in the policy.", c.identity, f.name, c.cluster),
                    object(
                        "MeshExternalService",
                        meta(&identity_service(c), opts, true),
                        map([("match", matcher), ("endpoints", endpoints)]),
                    ),
                ));
                continue;
            }
            services.push(commented(
                format!("External identity {} of {}: TLS to the partner with its client certificate (Kuma Secrets\n{base}-cert and {base}-key, the partner's CA in {}-ca). Kuma names its cluster\n{} -- the identity's cluster in the policy.", c.identity, f.name, f.name, c.cluster),
                object(
                    "MeshExternalService",
                    meta(&identity_service(c), opts, true),
                    map([
                        ("match", matcher),
                        ("endpoints", endpoints),
                        (
                            "tls",
                            map([
                                ("enabled", Yaml::Bool(true)),
                                ("version", map([("min", s("TLS12"))])),
                                (
                                    "verification",
                                    map([
                                        ("mode", s("Secured")),
                                        ("serverName", s(&f.upstream.host)),
                                        (
                                            "subjectAltNames",
                                            Yaml::Seq(vec![map([("type", s("Exact")), ("value", s(&f.upstream.host))])]),
                                        ),
                                        ("caCert", secret_ref(&format!("{}-ca", f.name))),
                                        ("clientCert", secret_ref(&format!("{base}-cert"))),
                                        ("clientKey", secret_ref(&format!("{base}-key"))),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ));
        }
    }

    let mut permissions = Vec::new();
    for f in &fronts {
        let mut allow = Vec::new();
        let sni = || map([("type", s("Exact")), ("value", s(opts.sni(&f.name, f.port)))]);
        for d in policy.spec.destinations.iter().filter(|d| d.name == f.name) {
            if d.default_identity.is_some() {
                // Any caller of the mesh may end up on the default identity: Kuma lets them all through to
                // the front, and the filter's policies decide.
                let mesh = map([("type", s("Prefix")), ("value", s(format!("spiffe://{trust_domain}/")))]);
                allow.push(map([("spiffeID", mesh), ("sni", sni())]));
                continue;
            }
            let mut seen = Vec::new();
            for p in d.identities.iter().flat_map(|i| i.principals.iter()) {
                let canonical = policy.config.trust_domains.canonical_principal_pattern(p).into_owned();
                if !seen.contains(&canonical) {
                    allow.push(map([("spiffeID", spiffe_match(&canonical)?), ("sni", sni())]));
                    seen.push(canonical);
                }
            }
        }
        permissions.push(commented(
            format!("Who may use the zone egress for {name} (Kuma's layer, before the filter's): the principals of its\nidentities (every caller of the mesh when it has a defaultIdentity), only towards the front's SNI.\nNothing allows the per-identity services' SNIs: the zone egress denies connections made to them\ndirectly. The filter then applies the finer policy.", name = f.name),
            object(
                "MeshTrafficPermission",
                meta(&format!("{}-via-zone-egress", f.name), opts, false),
                map([("targetRef", zone_egress()), ("rules", Yaml::Seq(vec![map([("default", map([("allow", Yaml::Seq(allow))]))])]))]),
            ),
        ));
    }

    let fetch = format!("egress-identity-wasm.{}.svc.cluster.local", opts.namespace);
    let fetch_cluster = to_yaml(&map([
        ("name", s("egress-identity-wasm")),
        ("type", s("STRICT_DNS")),
        ("connectTimeout", s("5s")),
        (
            "loadAssignment",
            map([
                ("clusterName", s("egress-identity-wasm")),
                (
                    "endpoints",
                    Yaml::Seq(vec![map([(
                        "lbEndpoints",
                        Yaml::Seq(vec![map([(
                            "endpoint",
                            map([(
                                "address",
                                map([("socketAddress", map([("address", s(&fetch)), ("portValue", int(80))]))]),
                            )]),
                        )])]),
                    )])]),
                ),
            ]),
        ),
    ]));
    let wasm_filter = |network: bool| {
        let (filter, kind, root_id) = if network {
            ("envoy.filters.network.wasm", "network", "egress-identity-l4")
        } else {
            ("envoy.filters.http.wasm", "http", "egress-identity")
        };
        to_yaml(&map([
            ("name", s(filter)),
            (
                "typedConfig",
                map([
                    ("@type", s(format!("type.googleapis.com/envoy.extensions.filters.{kind}.wasm.v3.Wasm"))),
                    (
                        "config",
                        map([
                            ("name", s(root_id)),
                            ("rootId", s(root_id)),
                            ("failOpen", Yaml::Bool(false)),
                            (
                                "vmConfig",
                                map([
                                    ("vmId", s("egress-identity")),
                                    ("runtime", s("envoy.wasm.runtime.v8")),
                                    (
                                        "code",
                                        map([(
                                            "remote",
                                            map([
                                                (
                                                    "httpUri",
                                                    map([
                                                        ("uri", s(format!("http://{fetch}/egress_identity.wasm"))),
                                                        ("cluster", s("egress-identity-wasm")),
                                                        ("timeout", s("10s")),
                                                    ]),
                                                ),
                                                (
                                                    "sha256",
                                                    commented(
                                                        if opts.wasm_sha256 == SHA256_PLACEHOLDER {
                                                            "PLACEHOLDER -- Envoy refuses the module until this is its SHA-256: render with\n--wasm-sha256 \"$(sha256sum dist/egress_identity.wasm | cut -d' ' -f1)\"."
                                                        } else {
                                                            "`sha256sum dist/egress_identity.wasm` of the module served (render --wasm-sha256)."
                                                        },
                                                        s(&opts.wasm_sha256),
                                                    ),
                                                ),
                                                ("retryPolicy", map([("numRetries", int(5))])),
                                            ]),
                                        )]),
                                    ),
                                ]),
                            ),
                            (
                                "configuration",
                                commented(
                                    "The policy file, verbatim (README.md, Configuration reference).",
                                    map([
                                        ("@type", s("type.googleapis.com/google.protobuf.StringValue")),
                                        ("value", Yaml::Literal(policy.text.clone())),
                                    ]),
                                ),
                            ),
                        ]),
                    ),
                ]),
            ),
        ]))
    };
    let filter = wasm_filter(false);
    let mut mods = vec![
        commented(
            "1. Where the module comes from: an HTTP server reachable from the zone egress pods that serves\n   dist/egress_identity.wasm (README.md). The sha256 in (2) pins its content.",
            map([("cluster", map([("operation", s("Add")), ("value", Yaml::Literal(fetch_cluster))]))]),
        ),
        commented(
            "2. The filter, before the router of the zone egress HTTP connection managers (after Kuma's RBAC). It\n   sees every HTTP request through the zone egress: HTTP MeshExternalServices the policy does not declare\n   are denied (unknown_destination).",
            map([(
                "httpFilter",
                map([
                    ("operation", s("AddBefore")),
                    ("match", map([("origin", s("egress")), ("name", s("envoy.filters.http.router"))])),
                    ("value", Yaml::Literal(filter)),
                ]),
            )]),
        ),
    ];
    mods.push(commented(
        "Requests with underscores in header names are refused (400): a client's x_egress_identity_cluster\nwould reach the partner, and partners that fold '_' into '-' would read it as the gateway's header.",
        map([(
            "networkFilter",
            map([
                ("operation", s("Patch")),
                ("match", map([("origin", s("egress")), ("name", s("envoy.filters.network.http_connection_manager"))])),
                (
                    "value",
                    Yaml::Literal(
                        "name: envoy.filters.network.http_connection_manager\ntypedConfig:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n  commonHttpProtocolOptions:\n    headersWithUnderscoresAction: REJECT_REQUEST\n".into(),
                    ),
                ),
            ]),
        )]),
    ));
    for f in fronts.iter().filter(|f| !f.protocol.is_l4()) {
        let kri = opts.kri(&f.name, f.port);
        let op = |op: &str, path: &str| map([("op", s(op)), ("path", s(path))]);
        mods.push(commented(
            format!("3. The route of the front `{}`: its cluster becomes the filter's choice, and the internal headers\n   plus x-forwarded-client-cert are removed.", f.name),
            map([(
                "virtualHost",
                map([
                    ("operation", s("Patch")),
                    (
                        "match",
                        map([("origin", s("egress")), ("routeConfigurationName", s(&kri)), ("name", s(&kri))]),
                    ),
                    (
                        "jsonPatches",
                        Yaml::Seq(vec![
                            op("remove", "/routes/0/route/cluster"),
                            op("remove", "/routes/0/route/weightedClusters"),
                            map([
                                ("op", s("add")),
                                ("path", s("/routes/0/route/clusterHeader")),
                                ("value", s(policy.config.headers.cluster.to_string())),
                            ]),
                            map([
                                ("op", s("add")),
                                ("path", s("/routes/0/requestHeadersToRemove")),
                                (
                                    "value",
                                    strs([
                                        policy.config.headers.cluster.to_string(),
                                        policy.config.headers.principal.to_string(),
                                        "x-forwarded-client-cert".into(),
                                    ]),
                                ),
                            ]),
                        ]),
                    ),
                ]),
            )]),
        ));
    }
    if fronts.iter().any(|f| f.protocol.is_l4()) {
        let tcp_proxy = || map([("origin", s("egress")), ("name", s("envoy.filters.network.tcp_proxy"))]);
        mods.push(commented(
            "4. The same module as the network filter, before tcp_proxy in the zone egress chains of the tcp and tls\n   MeshExternalServices: it decides connections (SNI and port) and names the identity's cluster in filter\n   state envoy.tcp_proxy.cluster. It sees every tcp_proxy chain of the zone egress: TCP\n   MeshExternalServices the policy does not declare are denied (unknown_destination).",
            map([(
                "networkFilter",
                map([("operation", s("AddBefore")), ("match", tcp_proxy()), ("value", Yaml::Literal(wasm_filter(true)))]),
            )]),
        ));
        let tcp_proxy_value = to_yaml(&map([
            ("name", s("envoy.filters.network.tcp_proxy")),
            (
                "typedConfig",
                map([
                    ("@type", s("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")),
                    ("cluster", s(UNROUTED_CLUSTER)),
                    ("upstreamConnectMode", s("ON_DOWNSTREAM_DATA")),
                    ("maxEarlyDataBytes", int(EARLY_DATA_BYTES)),
                ]),
            ),
        ]));
        mods.push(commented(
            "5. tcp_proxy of those chains: its cluster becomes egress-identity-unrouted, which does not exist (a\n   connection the filter did not route goes nowhere), and it keeps reading the caller before it connects\n   (maxEarlyDataBytes, ON_DOWNSTREAM_DATA): the filter decides on the caller's first bytes. The caller\n   must speak first (README.md, \"L4 egress\").",
            map([(
                "networkFilter",
                map([("operation", s("Patch")), ("match", tcp_proxy()), ("value", Yaml::Literal(tcp_proxy_value))]),
            )]),
        ));
    }
    let patch = commented(
        "The filter and the per-identity routing on the zone egress. Values are Envoy xDS in YAML (camelCase);\nKuma does not check them against what the zone egress generates: check the result with\n`kumactl inspect dataplane <zone-egress-dataplane> --type=config` after every Kuma upgrade.",
        object(
            "MeshProxyPatch",
            meta("egress-identity", opts, false),
            map([("targetRef", zone_egress()), ("default", map([("appendModifications", Yaml::Seq(mods))]))]),
        ),
    );

    let namespaces = network_policy::workload_namespaces(&policy.spec, &opts.workload_namespaces, &opts.namespace)?;
    let network_policies = network_policy::lockdown(&namespaces, "the zone egress");
    let file = |name: &str, docs: Vec<Yaml>| (name.to_string(), format!("{}{}", generated(), documents(&docs)));
    Ok(vec![
        file("mesh-identity.yaml", vec![identity]),
        file("mesh-external-services.yaml", services),
        file("mesh-traffic-permission.yaml", permissions),
        file("mesh-proxy-patch.yaml", vec![patch]),
        file("network-policy.yaml", network_policies),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{ "trustDomains": ["default.zone-1.mesh.local"], "defaultPort": 80,
      "destinations": [ { "name": "api", "hosts": ["api.extsvc.mesh.local", "api.partner.example"], "ports": [80],
        "identities": [ { "name": "t.a", "cluster": "kri_extsvc_default_zone-1_kuma-system_api-t-a_80",
          "principals": ["default.zone-1.mesh.local/ns/t/sa/a", "spiffe://default.zone-1.mesh.local/ns/u/*"] } ] } ] }"#;

    fn opts() -> KumaOptions {
        KumaOptions {
            mesh: "default".into(),
            zone: "zone-1".into(),
            namespace: "kuma-system".into(),
            upstreams: BTreeMap::new(),
            wasm_sha256: SHA256_PLACEHOLDER.into(),
            egress_port: 10002,
            workload_namespaces: vec![],
        }
    }

    #[test]
    fn front_identity_services_permissions_and_patch() {
        let files = render(&PolicyFile::parse(POLICY).unwrap(), &opts()).unwrap();
        let out: String = files.iter().map(|(_, t)| t.as_str()).collect();
        assert!(out.contains("name: api-t-a\n"), "{out}");
        assert!(
            out.contains("address: api.partner.example\n"),
            "default upstream: first host outside .mesh.local: {out}"
        );
        assert!(out.contains("address: api.egress-identity.invalid\n"), "{out}");
        assert!(out.contains("secret: egress-identity-t-a-cert\n") && out.contains("secret: api-ca\n"), "{out}");
        assert!(out.contains("type: Exact\n          value: spiffe://default.zone-1.mesh.local/ns/t/sa/a\n"), "{out}");
        assert!(out.contains("type: Prefix\n          value: spiffe://default.zone-1.mesh.local/ns/u/\n"), "{out}");
        assert!(out.contains("routeConfigurationName: kri_extsvc_default_zone-1_kuma-system_api_80"), "{out}");
    }

    #[test]
    fn identity_clusters_must_be_kuma_names() {
        let mut o = opts();
        o.zone = "zone-2".into();
        let both = POLICY.replace(
            "[\"default.zone-1.mesh.local\"]",
            "[\"default.zone-1.mesh.local\", \"default.zone-2.mesh.local\"]",
        );
        let e = render(&PolicyFile::parse(&both).unwrap(), &o).unwrap_err();
        assert!(e.0.contains("\"kri_extsvc_default_zone-2_kuma-system_api-t-a_80\""), "{e}");
        assert!(spiffe_match("*/ns/a").is_err());
        assert!(spiffe_match("*").is_err());
    }

    #[test]
    fn manifests_that_would_deny_everything_are_refused() {
        // The MeshIdentity's trust domain is not one the policy accepts.
        let mut o = opts();
        o.mesh = "other".into();
        let e = render(&PolicyFile::parse(POLICY).unwrap(), &o).unwrap_err();
        assert!(e.0.contains("\"other.zone-1.mesh.local\", which the policy does not accept"), "{e}");
        // Applications call api.extsvc.mesh.local, which the destination must list.
        let e = render(&PolicyFile::parse(&POLICY.replace("\"api.extsvc.mesh.local\", ", "")).unwrap(), &opts())
            .unwrap_err();
        assert!(e.0.contains("applications call api.extsvc.mesh.local"), "{e}");
        // A destination served by its defaultIdentity lets every caller of the mesh through to the filter.
        let default = POLICY.replace(
            "\"identities\": [",
            "\"defaultIdentity\": { \"name\": \"t.d\", \"cluster\": \"kri_extsvc_default_zone-1_kuma-system_api-t-d_80\" }, \"identities\": [",
        );
        let files = render(&PolicyFile::parse(&default).unwrap(), &opts()).unwrap();
        let out: String = files.iter().map(|(_, t)| t.as_str()).collect();
        assert!(out.contains("type: Prefix\n          value: spiffe://default.zone-1.mesh.local/\n"), "{out}");
    }

    #[test]
    fn tcp_and_tls_destinations_are_named_by_their_zone_egress_sni_and_port() {
        let l4 = r#"{ "name": "db", "protocol": "tcp", "hosts": ["sni.extsvc.default.zone-1.kuma-system.db.5432"],
            "ports": [10002], "identities": [ { "name": "t.a", "cluster": "kri_extsvc_default_zone-1_kuma-system_db-t-a_5432",
            "principals": ["default.zone-1.mesh.local/ns/t/sa/a"] } ] },
          { "name": "files", "protocol": "tls", "hosts": ["sni.extsvc.default.zone-1.kuma-system.files.443", "files.example"],
            "ports": [10002], "defaultIdentity": { "name": "p", "cluster": "kri_extsvc_default_zone-1_kuma-system_files-p_443" } },"#;
        let policy = POLICY.replace("\"destinations\": [", &format!("\"destinations\": [{l4}"));
        let mut o = opts();
        o.upstreams.insert("db".into(), HostPort { host: "db.example".into(), port: 5432 });
        let out: String =
            render(&PolicyFile::parse(&policy).unwrap(), &o).unwrap().into_iter().map(|(_, t)| t).collect();
        assert!(out.contains("port: 5432\n    protocol: tcp\n"), "{out}");
        assert!(out.contains("operation: AddBefore\n        match:\n          origin: egress\n          name: envoy.filters.network.tcp_proxy"), "{out}");
        assert!(out.contains("rootId: egress-identity-l4") && out.contains("maxEarlyDataBytes: 65536"), "{out}");
        assert!(out.contains("value: sni.extsvc.default.zone-1.kuma-system.db.5432\n"), "{out}");
        // The passthrough identity has no TLS of its own.
        let files = out.split("name: files-p\n").nth(1).unwrap().split("---").next().unwrap();
        assert!(!files.contains("tls:") && files.contains("address: files.example"), "{files}");
        // Without the SNI, or the zone egress port, every connection would be denied: refused.
        let e =
            render(&PolicyFile::parse(&policy.replace("kuma-system.db.5432", "kuma-system.other.5432")).unwrap(), &o)
                .unwrap_err();
        assert!(e.0.contains("sni.extsvc.default.zone-1.kuma-system.db.<PORT>"), "{e}");
        o.egress_port = 10003;
        let e = render(&PolicyFile::parse(&policy).unwrap(), &o).unwrap_err();
        assert!(e.0.contains("port 10003 (--egress-port)"), "{e}");
    }
}
