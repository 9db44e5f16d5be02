//! `render istio`: the manifests of an Istio egress gateway (sidecar mode, `examples/istio/egress-gateway/`)
//! or an ambient egress waypoint (`examples/istio/egress-waypoint/`) for one policy file.

use super::chart::Knob;
use super::envoy::{identity_clusters, HostPort, IdentityCluster};
use super::forward_proxy::{self, Dns};
use super::network_policy;
use super::{
    commented, dns_san_validation, int, k8s_name, load_assignment, map, s, strs, Manifest, PolicyFile, RenderError,
    Yaml,
};
use egress_identity_core::config_document::{PlatformSpec, Protocol};

/// The OCI image of the filter used when none is given (a placeholder registry, pinned by digest).
pub const DEFAULT_IMAGE: &str =
    "oci://ghcr.io/egress-identity/egress-identity@sha256:2a1687c927a5535132f20243997ecc3f4269c34287994305a162c2577c78eeb0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IstioMode {
    /// An Istio egress gateway in sidecar mode (EnvoyFilter for clusters and route).
    Gateway,
    /// An ambient egress waypoint (ServiceEntry + DestinationRule per identity, HTTPRoute; no EnvoyFilter).
    Waypoint,
}

impl IstioMode {
    /// The platform the policy is compiled for.
    pub fn platform(self) -> PlatformSpec {
        match self {
            Self::Gateway => PlatformSpec::IstioGateway,
            Self::Waypoint => PlatformSpec::IstioWaypoint,
        }
    }

    pub fn default_namespace(self) -> &'static str {
        match self {
            Self::Gateway => "istio-egress",
            Self::Waypoint => "egress-waypoint",
        }
    }
}

#[derive(Clone, Debug)]
pub struct IstioOptions {
    pub mode: IstioMode,
    pub namespace: String,
    pub image: String,
    /// Namespaces to keep off the external network besides those the policy names (NetworkPolicy).
    pub workload_namespaces: Vec<String>,
    /// Gateway mode: the DNS servers of the dynamic destinations' forward-proxy cache; none: the pod's.
    pub dns_resolvers: Vec<HostPort>,
    /// Gateway mode: ranges of [`forward_proxy::BLOCKED_RANGES`] a dynamic destination may resolve into.
    pub allow_resolved: Vec<String>,
}

impl IstioOptions {
    /// The dynamic forward proxy's DNS settings.
    pub fn dns(&self) -> Dns<'_> {
        Dns { resolvers: &self.dns_resolvers, allow_resolved: &self.allow_resolved }
    }
}

/// The waypoint's Gateway name.
const WAYPOINT: &str = "egress-waypoint";
/// The egress gateway's Gateway name and server port name.
const GATEWAY: &str = "egress-identity";
const SERVER_PORT_NAME: &str = "https-egress-identity";

/// A destination as the manifests publish it.
pub(super) struct Dest {
    pub name: String,
    /// The partner's host; a dynamic destination's first.
    pub host: String,
    /// The partner's port; a dynamic destination's first.
    pub port: u16,
    /// Every host (exact names and `*.suffix` patterns) and port it declares.
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    /// Reached through the gateway's dynamic forward proxy (a wildcard, several hosts or ports).
    pub dynamic: bool,
    pub protocol: Protocol,
}

impl Dest {
    pub fn is_l4(&self) -> bool {
        self.protocol.is_l4()
    }

    /// The ports applications call an HTTP destination on: 80 (`http://<host>/`), or each of its ports
    /// when it declares several (`http://<host>:<port>/`), as the core's fronts take them.
    fn mesh_http_ports(&self) -> Vec<u16> {
        if self.ports.len() > 1 {
            self.ports.clone()
        } else {
            vec![80]
        }
    }

    /// The name of its ServiceEntry (and, with `-via-egress`, its VirtualService): its host's, or
    /// `dynamic-<destination>` for a dynamic destination (a pattern makes no name).
    fn object_name(&self) -> String {
        if self.dynamic {
            format!("dynamic-{}", k8s_name(&self.name))
        } else {
            k8s_name(&self.host)
        }
    }

    /// The server name sidecars send the gateway for this destination (the DestinationRule subset's
    /// `tls.sni`): a name the gateway server's hosts match; under a wildcard, the label `egress-identity`.
    fn mesh_sni(&self) -> String {
        match self.host.strip_prefix("*.") {
            Some(suffix) => format!("egress-identity.{suffix}"),
            None => self.host.clone(),
        }
    }
}

/// The destinations the platform carries (a waypoint carries no tcp/tls destination; the core warns of
/// those), with the partner's host and port. Applications call an HTTP destination as `http://<host>/`;
/// they connect to a tcp or tls destination at `<host>:<port>`.
pub(super) fn destinations(policy: &PolicyFile) -> Vec<Dest> {
    policy
        .config
        .destinations
        .iter()
        .map(|d| Dest {
            name: d.name.to_string(),
            host: d.host.to_string(),
            port: d.port,
            hosts: d.hosts.iter().map(ToString::to_string).collect(),
            ports: d.ports.clone(),
            dynamic: d.dynamic,
            protocol: d.protocol,
        })
        .collect()
}

fn meta(name: &str, namespace: &str) -> Yaml {
    map([("name", s(name)), ("namespace", s(namespace))])
}

fn object(api_version: &str, kind: &str, metadata: Yaml, spec: Yaml) -> Yaml {
    map([("apiVersion", s(api_version)), ("kind", s(kind)), ("metadata", metadata), ("spec", spec)])
}

/// `egress-identity-<identity>`: the Secret with tls.crt, tls.key and ca.crt of an external identity.
pub fn identity_secret(identity: &str) -> String {
    format!("egress-identity-{}", k8s_name(identity))
}

fn istio_principal(pattern: &str) -> String {
    pattern.strip_prefix("spiffe://").unwrap_or(pattern).to_string()
}

/// Which of the filter's two forms a plugin resource loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PluginForm {
    /// The HTTP filter (requests).
    Http,
    /// The network filter before tcp_proxy (connections to tcp and tls destinations), on this port only
    /// (the gateway's L4 port), or on every chain (a waypoint: its tcp chains are one per destination).
    Network(Option<u16>),
}

impl PluginForm {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "egress-identity",
            Self::Network(_) => "egress-identity-l4",
        }
    }
}

/// The module, its type and its configuration, as WasmPlugin and TrafficExtension (`spec.wasm`) both
/// spell them.
fn wasm_fields(policy: &PolicyFile, opts: &IstioOptions, form: PluginForm) -> Vec<(String, Yaml)> {
    let mut fields = vec![
        (
            "url".to_string(),
            commented(
                if opts.image == DEFAULT_IMAGE {
                    "PLACEHOLDER -- not a published image: the project's example registry. Push the module and pin it:\n`make publish REGISTRY=<registry>/<repository> TAG=<version> PIN=1` rewrites this line, or render\nwith --image oci://<registry>/<repository>@sha256:<digest>. Istio checks the pulled image against it."
                } else {
                    "The Wasm variant of the filter's OCI image, pinned by manifest digest (Istio checks the pulled\nimage against it). `make publish REGISTRY=<registry>/<repository> TAG=<version> PIN=1` pushes it and\nrewrites this line; render with --image to keep it."
                },
                Yaml::Knob(Knob::WasmUrl, opts.image.clone()),
            ),
        ),
        ("imagePullPolicy".to_string(), s("IfNotPresent")),
    ];
    let (kind, root) = match form {
        PluginForm::Http => ("HTTP", "The root id (the filter's name in Envoy's logs and stats)."),
        PluginForm::Network(_) => (
            "NETWORK",
            "The root id: one ending in -l4 makes the module the network filter (connections), not the HTTP one.",
        ),
    };
    fields.push(("type".to_string(), s(kind)));
    fields.push(("pluginName".to_string(), commented(root, s(form.name()))));
    fields.push((
        "failStrategy".to_string(),
        commented(
            "A VM that fails (a trap) fails its request and is reloaded: never forwarded, and no outage until a\nrestart (Envoy's FAIL_RELOAD).",
            s("FAIL_RELOAD"),
        ),
    ));
    fields.push((
        "pluginConfig".to_string(),
        commented(
            "The policy file, verbatim, and the platform it is rendered for (README.md, Configuration reference).",
            policy.flow(),
        ),
    ));
    fields
}

/// Where a plugin resource applies: the pods or Gateway, the phase, and for the network filter its port.
fn placement(attach: &(&str, Yaml), form: PluginForm) -> Vec<(String, Yaml)> {
    let mut fields = vec![(attach.0.to_string(), attach.1.clone()), ("phase".to_string(), s("AUTHZ"))];
    if let PluginForm::Network(Some(port)) = form {
        fields.push((
            "match".to_string(),
            commented(
                "Only the L4 listener: on the HTTPS one the network filter would see HTTP destinations' connections.",
                Yaml::Seq(vec![map([("ports", Yaml::Seq(vec![map([("number", int(port))])]))])]),
            ),
        ));
    }
    fields
}

fn wasm_plugin(
    policy: &PolicyFile,
    opts: &IstioOptions,
    attach: &(&str, Yaml),
    form: PluginForm,
    comment: &str,
) -> Yaml {
    let mut spec = placement(attach, form);
    spec.extend(wasm_fields(policy, opts, form));
    commented(
        comment,
        object("extensions.istio.io/v1alpha1", "WasmPlugin", meta(form.name(), &opts.namespace), Yaml::Map(spec)),
    )
}

/// The same plugin as Istio 1.30's TrafficExtension, which supersedes WasmPlugin.
fn traffic_extension(policy: &PolicyFile, opts: &IstioOptions, attach: &(&str, Yaml), form: PluginForm) -> Yaml {
    let mut spec = placement(attach, form);
    spec.push(("wasm".to_string(), Yaml::Map(wasm_fields(policy, opts, form))));
    object("extensions.istio.io/v1alpha1", "TrafficExtension", meta(form.name(), &opts.namespace), Yaml::Map(spec))
}

/// The plugin resources: `wasm-plugin.yaml` (WasmPlugin, every Istio this supports) and
/// `traffic-extension/traffic-extension.yaml` (TrafficExtension, Istio 1.30+): apply one of the two.
fn plugin_files(
    policy: &PolicyFile,
    opts: &IstioOptions,
    mode: &str,
    attach: (&str, Yaml),
    comments: (&str, &str),
) -> [Manifest; 2] {
    let mut forms = vec![(PluginForm::Http, comments.0)];
    if policy.config.destinations.has_l4() {
        let port = (mode != "waypoint").then_some(L4_GATEWAY_PORT);
        forms.push((PluginForm::Network(port), comments.1));
    }
    let plugins = forms.iter().map(|(form, comment)| wasm_plugin(policy, opts, &attach, *form, comment)).collect();
    let mut extensions: Vec<Yaml> =
        forms.iter().map(|(form, _)| traffic_extension(policy, opts, &attach, *form)).collect();
    if let Some(first) = extensions.first_mut() {
        let node = std::mem::replace(first, Yaml::Map(vec![]));
        *first = commented(
            "Istio 1.30 and later: the same filter as ../wasm-plugin.yaml, as a TrafficExtension (which supersedes\nWasmPlugin). Apply this file or ../wasm-plugin.yaml, not both: each would insert the filter.",
            node,
        );
    }
    let mut extensions = file("traffic-extension/traffic-extension.yaml", mode, extensions);
    extensions.alternative = true;
    [file("wasm-plugin.yaml", mode, plugins), extensions]
}

/// `http_port`: the port the proxy receives the HTTP destinations' requests on. Every rule is limited to it:
/// on a TCP chain Istio drops a DENY rule's HTTP-only conditions (the header), which would leave "deny
/// every caller but this identity's" -- together, deny all -- on the tcp/tls destinations' connections.
fn guard(policy: &PolicyFile, namespace: &str, attach: (&str, Yaml), http_port: u16) -> Yaml {
    let header = policy.config.headers.cluster.to_string();
    let mut rules = Vec::new();
    // Requests only: tcp/tls destinations have no header to guard (their tcp_proxy's own cluster does not exist).
    for d in policy.config.destinations.iter().filter(|d| !d.protocol.is_l4()) {
        for i in d.identities.mapped() {
            let Some((_, declared)) = policy.config.identities.get(&i.name) else { continue };
            let principals = declared.principals.iter().flatten().map(|p| istio_principal(&p.to_string()));
            rules.push(map([
                ("from", Yaml::Seq(vec![map([("source", map([("notPrincipals", strs(principals))]))])])),
                ("to", Yaml::Seq(vec![map([("operation", map([("ports", strs([http_port.to_string()]))]))])])),
                (
                    "when",
                    Yaml::Seq(vec![map([
                        ("key", s(format!("request.headers[{header}]"))),
                        ("values", strs([i.cluster.to_string()])),
                    ])]),
                ),
            ]));
        }
    }
    commented(
        format!("Optional defense in depth, evaluated by Istio's RBAC filter after the egress-identity filter (phase\nAUTHZ). With the filter in place these rules never match; they matter if the WasmPlugin is missing or\nmisconfigured: a caller could then choose another identity by sending the cluster header itself. Each\nrule denies a request whose cluster header names an identity whose principals do not include the\ncaller (a defaultIdentity has none and is not guarded). Each rule is limited to port {http_port}, where the\nrequests arrive: on TCP connections Istio ignores the header condition, and the rule would deny every\ncaller but one."),
        object(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            meta("egress-identity-cluster-guard", namespace),
            map([attach, ("action", s("DENY")), ("rules", Yaml::Seq(rules))]),
        ),
    )
}

fn namespace_doc(namespace: &str, comment: &str, labels: &[(&str, &str)]) -> Yaml {
    let mut metadata = vec![("name".to_string(), s(namespace))];
    if !labels.is_empty() {
        metadata.push(("labels".into(), map(labels.iter().map(|(k, v)| (*k, s(*v))))));
    }
    commented(comment, map([("apiVersion", s("v1")), ("kind", s("Namespace")), ("metadata", Yaml::Map(metadata))]))
}

fn removed_headers(policy: &PolicyFile) -> Yaml {
    strs([
        policy.config.headers.cluster.to_string(),
        policy.config.headers.principal.to_string(),
        "x-forwarded-client-cert".to_string(),
    ])
}

fn generated(mode: &str) -> String {
    format!("GENERATED by `egress-identity render istio --mode {mode} policy.json` (make render): edit the policy.\n")
}

fn file(name: &str, mode: &str, docs: Vec<Yaml>) -> Manifest {
    Manifest::new(name, &generated(mode), docs)
}

/// The manifests, in apply order.
pub fn render(policy: &PolicyFile, opts: &IstioOptions) -> Result<Vec<Manifest>, RenderError> {
    let clusters = identity_clusters(policy);
    let dests = destinations(policy);
    let namespaces = network_policy::workload_namespaces(&policy.config, &opts.workload_namespaces, &opts.namespace)?;
    forward_proxy::check_allow_resolved(&opts.allow_resolved)?;
    let dns_flags = !opts.dns_resolvers.is_empty() || !opts.allow_resolved.is_empty();
    if dns_flags && !dests.iter().any(|d| d.dynamic) {
        return Err(RenderError(
            "--dns-resolver and --allow-resolved set the gateway's forward-proxy DNS cache, which only dynamic destinations (a wildcard, several hosts or ports) use; this policy has none".into(),
        ));
    }
    match opts.mode {
        IstioMode::Gateway => {
            let network_policies = network_policy::lockdown(&namespaces, "the egress gateway");
            Ok(gateway(policy, opts, &clusters, &dests, network_policies))
        }
        IstioMode::Waypoint => {
            let network_policies = network_policy::lockdown(&namespaces, "the egress waypoint (ambient: ztunnel\nsends from the pod's network namespace, so HBONE to the waypoint is a pod-to-pod connection)");
            Ok(waypoint(policy, opts, &clusters, &dests, network_policies))
        }
    }
}

/// What a chart of these manifests installs, what it leaves to you, and how to check it (NOTES.txt).
pub fn chart_notes(opts: &IstioOptions) -> String {
    let ns = &opts.namespace;
    let (what, proxy, objects, missing) = match opts.mode {
        IstioMode::Gateway => (
            "the Istio egress gateway (sidecar mode)",
            "deploy/istio-egressgateway",
            "ServiceEntries, Gateway, DestinationRule,\nVirtualServices, EnvoyFilter (the per-identity clusters)",
            format!("the egress gateway (helm install istio-egressgateway istio/gateway -n {ns},\nafter this chart, which creates the namespace; pod annotations: stats.yaml) and "),
        ),
        IstioMode::Waypoint => (
            "the Istio ambient egress waypoint",
            "deploy/egress-waypoint",
            "the waypoint, ServiceEntries, DestinationRules,\nHTTPRoutes (the per-identity routes)",
            String::new(),
        ),
    };
    let mode = if opts.mode == IstioMode::Gateway { "gateway" } else { "waypoint" };
    format!(
        "egress-identity on {what} in namespace {ns}, for the policy of values.policy.\n\nInstalled: namespace {ns}, {objects}, WasmPlugin (the filter and its policy),\nAuthorizationPolicy (the cluster guard), NetworkPolicies, the stats ConfigMap.\nNot installed: {missing}the identities' Secrets\n(egress-identity secrets istio POLICY --mode {mode} ...).\n\nCheck:\n  istioctl analyze -n {ns}\n  istioctl proxy-config cluster {proxy} -n {ns}\n  kubectl -n {ns} port-forward {proxy} 15000 &\n  egress-identity doctor http://127.0.0.1:15000 POLICY\n"
    )
}

fn dest_of<'a>(dests: &'a [Dest], name: &str) -> Option<&'a Dest> {
    dests.iter().find(|d| d.name == name)
}

fn gateway(
    policy: &PolicyFile,
    opts: &IstioOptions,
    clusters: &[IdentityCluster],
    dests: &[Dest],
    network_policies: Vec<Yaml>,
) -> Vec<Manifest> {
    let ns = opts.namespace.as_str();
    let gateway_host = format!("istio-egressgateway.{ns}.svc.cluster.local");
    let selector = || map([("istio", s("egressgateway"))]);
    let cluster_header = policy.config.headers.cluster.to_string();

    let namespace = namespace_doc(
        ns,
        "egress-identity on an Istio (sidecar mode) egress gateway. Apply the files of this directory in order;\nsee README.md for the gateway installation and the per-identity Secrets. The gateway runs in its own\nnamespace so that its WasmPlugin, EnvoyFilter and Secrets (istiod only hands a Secret to proxies of its\nnamespace) touch nothing else.",
        &[],
    );

    let service_entries = dests
        .iter()
        .map(|d| {
            if d.is_l4() {
                return l4_service_entry(d, ns, None);
            }
            if d.dynamic {
                return dynamic_service_entry(d, ns);
            }
            commented(
                format!(
                    "Destination {}: applications call http://{}/ (port 80); their sidecar sends the request to the\negress gateway over Istio mTLS, where the filter picks the per-identity cluster that originates TLS\nto port {}. Port 80 is the only port: no TLS passthrough lets a workload skip the gateway.",
                    d.name, d.host, d.port
                ),
                object(
                    "networking.istio.io/v1",
                    "ServiceEntry",
                    meta(&k8s_name(&d.host), ns),
                    external_service_entry_spec(&d.host, d.port),
                ),
            )
        })
        .collect();

    let gateway_doc = commented(
        format!("The gateway server. ISTIO_MUTUAL: the gateway terminates the sidecar's Istio mTLS and requires its\nworkload certificate, which the filter reads (the istio-gateway platform). Istio names the route\nconfiguration of this server https.443.{SERVER_PORT_NAME}.{GATEWAY}.{ns}; the EnvoyFilter matches it by\ngateway and port name."),
        object(
            "networking.istio.io/v1",
            "Gateway",
            meta(GATEWAY, ns),
            map([
                ("selector", selector()),
                ("servers", Yaml::Seq(gateway_servers(dests))),
            ]),
        ),
    );

    let destination_rule = commented(
        "Sidecars reach the egress gateway with Istio mTLS and the destination's host as SNI (one subset per\ndestination): the SNI selects the gateway server; auto-mTLS alone would send the gateway Service's SNI.",
        object(
            "networking.istio.io/v1",
            "DestinationRule",
            meta("egress-identity-gateway", ns),
            map([
                ("host", s(&gateway_host)),
                (
                    "subsets",
                    Yaml::Seq(
                        dests
                            .iter()
                            .map(|d| {
                                map([
                                    ("name", s(k8s_name(&d.name))),
                                    (
                                        "trafficPolicy",
                                        map([(
                                            "portLevelSettings",
                                            Yaml::Seq(vec![map([
                                                ("port", map([("number", int(gateway_port(d)))])),
                                                ("tls", map([("mode", s("ISTIO_MUTUAL")), ("sni", s(d.mesh_sni()))])),
                                            ])]),
                                        )]),
                                    ),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]),
        ),
    );

    let virtual_services = dests
        .iter()
        .map(|d| {
            if d.is_l4() {
                return l4_virtual_service(d, ns, &gateway_host);
            }
            commented(
                format!("Two hops for {}: in every sidecar (gateway `mesh`) requests go to the egress gateway; in the\ngateway, route `{}` answers 503 until the EnvoyFilter turns it into `cluster_header`, so nothing\nleaves without an identity if the patch ever stops applying. The patch finds the route by its name.", d.hosts.join(", "), k8s_name(&d.name)),
                object(
                    "networking.istio.io/v1",
                    "VirtualService",
                    meta(&format!("{}-via-egress", d.object_name()), ns),
                    map([
                        ("hosts", strs(d.hosts.iter().map(String::as_str))),
                        ("gateways", strs(["mesh", GATEWAY])),
                        (
                            "http",
                            Yaml::Seq(vec![
                                map([
                                    ("name", s("mesh-to-egress-gateway")),
                                    (
                                        "match",
                                        Yaml::Seq(
                                            d.mesh_http_ports()
                                                .into_iter()
                                                .map(|port| map([("gateways", strs(["mesh"])), ("port", int(port))]))
                                                .collect(),
                                        ),
                                    ),
                                    (
                                        "route",
                                        Yaml::Seq(vec![map([(
                                            "destination",
                                            map([
                                                ("host", s(&gateway_host)),
                                                ("subset", s(k8s_name(&d.name))),
                                                ("port", map([("number", int(443))])),
                                            ]),
                                        )])]),
                                    ),
                                ]),
                                map([
                                    ("name", s(k8s_name(&d.name))),
                                    ("match", Yaml::Seq(vec![map([("gateways", strs([GATEWAY])), ("port", int(443))])])),
                                    (
                                        "directResponse",
                                        map([
                                            ("status", int(503)),
                                            ("body", map([("string", s("{\"error\":\"egress-identity route patch not applied\"}"))])),
                                        ]),
                                    ),
                                ]),
                            ]),
                        ),
                    ]),
                ),
            )
        })
        .collect();

    let mut patches = Vec::new();
    for c in clusters {
        let Some(d) = dest_of(dests, &c.destination) else { continue };
        patches.push(commented(
            identity_cluster_comment(c, d),
            gateway_patch("CLUSTER", None, "ADD", identity_cluster(c, d, opts.dns())),
        ));
    }
    for d in dests.iter().filter(|d| !d.is_l4()) {
        // istiod gives each host its own virtual host, and a virtual host of a host that a wildcard also
        // covers gets the wildcard's routes too (after or before its own, by the VirtualServices' age): the
        // route is patched by its name in every virtual host, so whichever comes first asks the filter.
        patches.push(commented(
            format!("the gateway route `{}` (every virtual host that has it): MERGE replaces the placeholder 503 by\n`cluster_header` and appends the internal headers to request_headers_to_remove.", k8s_name(&d.name)),
            gateway_patch(
                "HTTP_ROUTE",
                Some((
                    "routeConfiguration",
                    map([
                        ("gateway", s(format!("{ns}/{GATEWAY}"))),
                        ("portName", s(SERVER_PORT_NAME)),
                        ("vhost", map([("route", map([("name", s(k8s_name(&d.name)))]))])),
                    ]),
                )),
                "MERGE",
                map([
                    ("route", map([("cluster_header", s(&cluster_header)), ("timeout", s("30s"))])),
                    ("request_headers_to_remove", removed_headers(policy)),
                ]),
            ),
        ));
    }
    if dests.iter().any(|d| d.dynamic) {
        patches.push(commented(
            "The dynamic forward proxy before the router (istiod puts none on a gateway): it resolves the host and\nport the filter allowed for a dynamic destination (filter state envoy.upstream.dynamic_host/_port) in the\nDNS cache its clusters share; requests routed to other clusters pass untouched.",
            gateway_patch(
                "HTTP_FILTER",
                Some((
                    "listener",
                    map([
                        ("portNumber", int(443)),
                        (
                            "filterChain",
                            map([(
                                "filter",
                                map([
                                    ("name", s("envoy.filters.network.http_connection_manager")),
                                    ("subFilter", map([("name", s("envoy.filters.http.router"))])),
                                ]),
                            )]),
                        ),
                    ]),
                )),
                "INSERT_BEFORE",
                map([
                    ("name", s("envoy.filters.http.dynamic_forward_proxy")),
                    ("typed_config", forward_proxy::http_filter_config(opts.dns())),
                ]),
            ),
        ));
    }
    patches.push(commented(
        "Requests with underscores in header names are refused (400): a client's x_egress_identity_cluster\nwould reach the partner, and partners that fold '_' into '-' would read it as the gateway's header.\nPaths are compared as the partner reads them: slashes merged, encoded slashes refused (istiod's default\nfor a gateway only normalizes dot segments; the filter merges and refuses too, as defense in depth).\nEdge-proxy hardening (README.md, \"Threat model\"): request headers within 10s, idle streams and\nconnections closed (istiod sets no stream idle timeout on gateways), the edge guide's HTTP/2 limits.",
        gateway_patch(
            "NETWORK_FILTER",
            Some((
                "listener",
                map([(
                    "filterChain",
                    map([("filter", map([("name", s("envoy.filters.network.http_connection_manager"))]))]),
                )]),
            )),
            "MERGE",
            map([(
                "typed_config",
                map(
                    [
                    (
                        "@type",
                        s("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
                    ),
                    (
                        "common_http_protocol_options",
                        map([
                            ("headers_with_underscores_action", s("REJECT_REQUEST")),
                            super::hardening::connection_idle_timeout(),
                        ]),
                    ),
                    ("merge_slashes", Yaml::Bool(true)),
                    ("path_with_escaped_slashes_action", s("REJECT_REQUEST")),
                    // istiod sets it too (gateway and waypoint, observed in tests/istiod); the filter relies on it.
                    ("proxy_100_continue", Yaml::Bool(true)),
                ]
                    .into_iter()
                    .chain(super::hardening::hcm_fields()),
                ),
            )]),
        ),
    ));
    patches.push(commented(
        format!("Edge-proxy hardening of the gateway's listeners (README.md, \"Threat model\"): at most {} bytes buffered\nper connection each way. istiod already bounds the TLS handshake of each server's chain\n(transport_socket_connect_timeout 15s, observed in tests/istiod).", super::hardening::BUFFER_LIMIT_BYTES),
        gateway_patch(
            "LISTENER",
            None,
            "MERGE",
            map([("per_connection_buffer_limit_bytes", int(super::hardening::BUFFER_LIMIT_BYTES))]),
        ),
    ));
    if dests.iter().any(Dest::is_l4) {
        patches.push(tcp_proxy_patch());
    }
    let envoy_filter = commented(
        "What Istio's APIs cannot express: one upstream cluster per external identity, each presenting that\nidentity's client certificate, and a gateway route that picks the cluster named by the filter's header.\nCertificates come from istiod over SDS (`kubernetes://<secret>`, the mechanism behind credentialName):\nSecret egress-identity-<identity> in this namespace with tls.crt, tls.key and ca.crt (the partner's CA,\n`kubernetes://<secret>-cacert`). EnvoyFilter depends on what istiod generates: re-check it after every\nIstio upgrade (`istioctl proxy-config cluster|route`).",
        object(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            meta("egress-identity", ns),
            map([("workloadSelector", map([("labels", selector())])), ("configPatches", Yaml::Seq(patches))]),
        ),
    );

    let [plugins, extensions] = plugin_files(
        policy,
        opts,
        "gateway",
        ("selector", map([("matchLabels", selector())])),
        (
            "The egress-identity filter on the egress gateway pods. phase AUTHZ: before Istio's RBAC and stats\nfilters and the router, which reads the cluster header the filter sets. A module that cannot be fetched\nor refuses its configuration is replaced by a deny-all (istiod's behaviour for a fail-closed plugin). The plugin sees every HTTP request of\nthese pods (unknown hosts are denied): dedicate the deployment to identity-aware egress.",
            "The same module as the network filter of the L4 servers, before tcp_proxy: it decides connections to\nthe tcp and tls destinations (SNI and port) and names the identity's cluster for tcp_proxy.",
        ),
    );
    let auth = guard(policy, ns, ("selector", map([("matchLabels", selector())])), 443);

    let m = "gateway";
    let mut files = vec![
        file("00-namespace.yaml", m, vec![namespace]),
        file("service-entry.yaml", m, service_entries),
        file("gateway.yaml", m, vec![gateway_doc]),
        file("destination-rule.yaml", m, vec![destination_rule]),
        file("virtual-service.yaml", m, virtual_services),
        file("envoy-filter.yaml", m, vec![envoy_filter]),
        plugins,
        extensions,
        file("authorization-policy.yaml", m, vec![auth]),
    ];
    files.push(file("network-policy.yaml", m, network_policies));
    files.push(file(
        "stats.yaml",
        m,
        vec![stats_configmap(ns, "Annotate the egress gateway's pods (helm install istio/gateway ... --set-json\n'podAnnotations={...}', README.md) with:")],
    ));
    files
}

/// The ConfigMap of Envoy bootstrap additions for the gateway or waypoint pods.
const STATS_CONFIGMAP: &str = "egress-identity-stats";

/// The pod annotations of the gateway or waypoint: the bootstrap override that labels egress-identity's
/// metrics (Istio's bootstrap lacks their tag regexes; it keeps them without help: istio-agent always
/// includes stats starting with `wasm`, as tests/istiod sees), and a global limit of downstream connections
/// (edge-proxy hardening: istio-agent's bootstrap sets none, 2^31 - 1, unless the proxy's metadata names one).
fn pod_annotations() -> Vec<(&'static str, String)> {
    vec![
        (
            "proxy.istio.io/config",
            format!(
                "{{\"proxyMetadata\":{{\"ISTIO_META_GLOBAL_DOWNSTREAM_MAX_CONNECTIONS\":\"{}\"}}}}",
                super::hardening::MAX_DOWNSTREAM_CONNECTIONS
            ),
        ),
        ("sidecar.istio.io/bootstrapOverride", STATS_CONFIGMAP.to_string()),
    ]
}

/// `custom_bootstrap.json` for Istio's `sidecar.istio.io/bootstrapOverride`: the tag regexes of
/// egress-identity's metrics (Istio merges them into its own `stats_config`).
fn stats_configmap(ns: &str, how: &str) -> Yaml {
    let tags: Vec<serde_json::Value> = egress_identity_core::metrics::TAGS
        .iter()
        .map(|(name, regex)| serde_json::json!({"tag_name": name, "regex": regex}))
        .collect();
    let bootstrap = serde_json::json!({"stats_config": {"stats_tags": tags}});
    let annotations: String = pod_annotations().iter().map(|(k, v)| format!("\n  {k}: '{v}'")).collect();
    commented(
        format!("egress-identity's metrics as Istio shows them: their labels extracted (README.md, \"Metrics\"); Istio keeps\n`wasmcustom.*` stats (istio-agent's stats matcher always includes `wasm`). {how}{annotations}\n(proxy.istio.io/config: at most this many downstream connections, edge-proxy hardening.)\nScrape the pods' merged metrics as usual (Istio: port 15020 /stats/prometheus):\negress_identity_decisions_total{{decision=\"deny\",layer=\"gateway\",...}}."),
        map([
            ("apiVersion", s("v1")),
            ("kind", s("ConfigMap")),
            ("metadata", meta(STATS_CONFIGMAP, ns)),
            (
                "data",
                map([("custom_bootstrap.json", Yaml::Literal(serde_json::to_string_pretty(&bootstrap).unwrap_or_default() + "\n"))]),
            ),
        ]),
    )
}

/// The egress gateway's port for connections to tcp and tls destinations (one TLS server per destination,
/// told apart by SNI); HTTP destinations share port 443.
pub const L4_GATEWAY_PORT: u16 = 8443;

/// The gateway port sidecars use to reach `d` through the egress gateway.
fn gateway_port(d: &Dest) -> u16 {
    if d.is_l4() {
        L4_GATEWAY_PORT
    } else {
        443
    }
}

/// The gateway servers: one HTTPS server on 443 for the HTTP destinations, one TLS server on
/// [`L4_GATEWAY_PORT`] per tcp/tls destination. All ISTIO_MUTUAL: the gateway terminates the sidecar's
/// Istio mTLS, and the filter reads the caller's workload certificate.
fn gateway_servers(dests: &[Dest]) -> Vec<Yaml> {
    let mut servers = Vec::new();
    let http: Vec<&str> =
        dests.iter().filter(|d| !d.is_l4()).flat_map(|d| d.hosts.iter().map(String::as_str)).collect();
    if !http.is_empty() {
        servers.push(map([
            ("port", map([("number", int(443)), ("name", s(SERVER_PORT_NAME)), ("protocol", s("HTTPS"))])),
            ("hosts", strs(http)),
            ("tls", map([("mode", s("ISTIO_MUTUAL"))])),
        ]));
    }
    for d in dests.iter().filter(|d| d.is_l4()) {
        servers.push(commented(
            format!(
                "{} ({}): a TLS server whose connections end in tcp_proxy; the network filter decides them.",
                d.name,
                d.protocol.as_str()
            ),
            map([
                (
                    "port",
                    map([
                        ("number", int(L4_GATEWAY_PORT)),
                        ("name", s(format!("tls-{}", k8s_name(&d.name)))),
                        ("protocol", s("TLS")),
                    ]),
                ),
                ("hosts", strs([d.host.as_str()])),
                ("tls", map([("mode", s("ISTIO_MUTUAL"))])),
            ]),
        ));
    }
    servers
}

/// The ServiceEntry of a tcp or tls destination: `<host>:<port>` as applications connect to it. With
/// `waypoint`, bound to that waypoint.
fn l4_service_entry(d: &Dest, ns: &str, waypoint: Option<&str>) -> Yaml {
    let (port_name, protocol, how) = match d.protocol {
        Protocol::Tls if waypoint.is_some() => ("tls", "TLS", format!("open their own TLS to {}:{} (ztunnel matches the address Istio gives this host) and keep\nit end to end: the waypoint's chain names the destination, the filter decides and checks that the\nClientHello names {} before a byte goes on (passthrough)", d.host, d.port, d.host)),
        Protocol::Tls => ("tls", "TLS", format!("open their own TLS to {}:{} (the sidecar matches the ClientHello's SNI) and\nkeep it end to end: the gateway only decides and forwards (passthrough)", d.host, d.port)),
        _ => ("tcp", "TCP", format!("connect to {}:{} in plain TCP; the sidecar or ztunnel matches the connection by address, so\nIstio must give this host name an address (ISTIO_META_DNS_CAPTURE and ISTIO_META_DNS_AUTO_ALLOCATE,\nor ambient's automatic allocation); the egress originates mTLS as the caller's external identity", d.host, d.port)),
    };
    let mut metadata = vec![("name".to_string(), s(k8s_name(&d.host))), ("namespace".to_string(), s(ns))];
    if let Some(w) = waypoint {
        metadata.push(("labels".to_string(), map([("istio.io/use-waypoint", s(w))])));
    }
    commented(
        format!("Destination {} ({}): applications {how}.", d.name, d.protocol.as_str()),
        object(
            "networking.istio.io/v1",
            "ServiceEntry",
            Yaml::Map(metadata),
            map([
                ("hosts", strs([d.host.as_str()])),
                ("location", s("MESH_EXTERNAL")),
                ("resolution", s("DNS")),
                (
                    "ports",
                    Yaml::Seq(vec![map([
                        ("number", int(d.port)),
                        ("name", s(format!("{port_name}-{}", d.port))),
                        ("protocol", s(protocol)),
                    ])]),
                ),
            ]),
        ),
    )
}

/// Two hops for a tcp or tls destination: in every sidecar, connections to `<host>:<port>` go to the
/// egress gateway (Istio mTLS, SNI the host); in the gateway, tcp_proxy's route goes to the partner, but the
/// EnvoyFilter replaces that cluster by one that does not exist: only the filter's choice leaves.
fn l4_virtual_service(d: &Dest, ns: &str, gateway_host: &str) -> Yaml {
    let to_gateway = map([(
        "destination",
        map([
            ("host", s(gateway_host)),
            ("subset", s(k8s_name(&d.name))),
            ("port", map([("number", int(L4_GATEWAY_PORT))])),
        ]),
    )]);
    let mut mesh_match = vec![("gateways".to_string(), strs(["mesh"])), ("port".to_string(), int(d.port))];
    if d.protocol == Protocol::Tls {
        mesh_match.push(("sniHosts".to_string(), strs([d.host.as_str()])));
    }
    let mesh_leg = map([("match", Yaml::Seq(vec![Yaml::Map(mesh_match)])), ("route", Yaml::Seq(vec![to_gateway]))]);
    let gateway_leg = map([
        ("match", Yaml::Seq(vec![map([("gateways", strs([GATEWAY])), ("port", int(L4_GATEWAY_PORT))])])),
        (
            "route",
            Yaml::Seq(vec![map([(
                "destination",
                map([("host", s(&d.host)), ("port", map([("number", int(d.port))]))]),
            )])]),
        ),
    ]);
    let mut spec =
        vec![("hosts".to_string(), strs([d.host.as_str()])), ("gateways".to_string(), strs(["mesh", GATEWAY]))];
    if d.protocol == Protocol::Tls {
        spec.push(("tls".to_string(), Yaml::Seq(vec![mesh_leg])));
        spec.push(("tcp".to_string(), Yaml::Seq(vec![gateway_leg])));
    } else {
        spec.push(("tcp".to_string(), Yaml::Seq(vec![mesh_leg, gateway_leg])));
    }
    commented(
        format!("Two hops for {}:{} ({}): in every sidecar the connection goes to the egress gateway (port {L4_GATEWAY_PORT},\nIstio mTLS, SNI {}); in the gateway, tcp_proxy's route to the partner is only a placeholder: the\nEnvoyFilter replaces its cluster by egress-identity-unrouted (which does not exist), so only the cluster\nthe filter names leaves.", d.host, d.port, d.protocol.as_str(), d.host),
        object(
            "networking.istio.io/v1",
            "VirtualService",
            meta(&format!("{}-via-egress", k8s_name(&d.host)), ns),
            Yaml::Map(spec),
        ),
    )
}

/// The comment of an identity's cluster.
fn identity_cluster_comment(c: &IdentityCluster, d: &Dest) -> String {
    let secret = identity_secret(&c.identity);
    match d.protocol {
        Protocol::Tls => format!(
            "external identity {} of {} (tls passthrough): plain TCP to {}:{}, the caller's TLS inside",
            c.identity, c.destination, d.host, d.port
        ),
        Protocol::Tcp => format!(
            "external identity {} of {} (tcp): mTLS to the partner with the client certificate of Secret {secret}",
            c.identity, c.destination
        ),
        Protocol::Http => {
            format!("external identity {} of {}: client certificate from Secret {secret}", c.identity, c.destination)
        }
    }
}

/// An external identity's upstream cluster: TLS origination with its client certificate (http, tcp), or
/// a plain TCP cluster for a tls passthrough destination (the caller's own TLS runs inside).
fn identity_cluster(c: &IdentityCluster, d: &Dest, dns: Dns<'_>) -> Yaml {
    let secret = identity_secret(&c.identity);
    let ads = || map([("ads", Yaml::Map(vec![])), ("resource_api_version", s("V3"))]);
    let mut entries = vec![("name".to_string(), s(&c.cluster))];
    if d.dynamic {
        // The host and port come from the filter (dynamic forward proxy); SNI and the partner's name from
        // the request (auto_sni, auto_san_validation).
        entries.extend([
            ("lb_policy".to_string(), s("CLUSTER_PROVIDED")),
            ("cluster_type".to_string(), forward_proxy::cluster_type(dns)),
            ("connect_timeout".to_string(), s("5s")),
            (
                "typed_extension_protocol_options".to_string(),
                map([(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    map([
                        ("@type", s("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")),
                        ("explicit_http_config", map([("http_protocol_options", map::<&str>([]))])),
                        ("upstream_http_protocol_options", forward_proxy::upstream_http_protocol_options()),
                    ]),
                )]),
            ),
        ]);
    } else {
        entries.extend([
            ("type".to_string(), s("LOGICAL_DNS")),
            ("dns_lookup_family".to_string(), s("V4_PREFERRED")),
            ("connect_timeout".to_string(), s("5s")),
            ("load_assignment".to_string(), load_assignment(&c.cluster, &d.host, d.port)),
        ]);
    }
    if d.protocol == Protocol::Tls {
        return Yaml::Map(entries);
    }
    let mut common = vec![("tls_params".to_string(), map([("tls_minimum_protocol_version", s("TLSv1_2"))]))];
    if d.protocol == Protocol::Http {
        common.push(("alpn_protocols".to_string(), strs(["http/1.1"])));
    }
    common.push((
        "tls_certificate_sds_secret_configs".to_string(),
        Yaml::Seq(vec![map([("name", s(format!("kubernetes://{secret}"))), ("sds_config", ads())])]),
    ));
    let ca = map([("name", s(format!("kubernetes://{secret}-cacert"))), ("sds_config", ads())]);
    let mut tls = vec![(
        "@type".to_string(),
        s("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
    )];
    if d.dynamic {
        common.push(("validation_context_sds_secret_config".to_string(), ca));
    } else {
        common.push(("combined_validation_context".to_string(), dns_san_validation(&d.host, ca)));
        tls.push(("sni".to_string(), s(&d.host)));
    }
    tls.push(("common_tls_context".to_string(), Yaml::Map(common)));
    entries.push((
        "transport_socket".to_string(),
        map([("name", s("envoy.transport_sockets.tls")), ("typed_config", Yaml::Map(tls))]),
    ));
    Yaml::Map(entries)
}

/// One EnvoyFilter patch on the gateway: `apply_to` what `target` (besides context GATEWAY) matches.
fn gateway_patch(apply_to: &str, target: Option<(&str, Yaml)>, operation: &str, value: Yaml) -> Yaml {
    let mut matcher = vec![("context".to_string(), s("GATEWAY"))];
    matcher.extend(target.map(|(k, v)| (k.to_string(), v)));
    map([
        ("applyTo", s(apply_to)),
        ("match", Yaml::Map(matcher)),
        ("patch", map([("operation", s(operation)), ("value", value)])),
    ])
}

/// The gateway's tcp_proxy on [`L4_GATEWAY_PORT`], as the network filter needs it.
fn tcp_proxy_patch() -> Yaml {
    commented(
        format!("tcp_proxy of the L4 servers (port {L4_GATEWAY_PORT}): the cluster of the VirtualService becomes\negress-identity-unrouted, which does not exist (a connection the filter did not route goes nowhere), and\ntcp_proxy keeps reading the caller before it connects (max_early_data_bytes, ON_DOWNSTREAM_DATA): the\nfilter holds the connection until the caller's first bytes, decides, and names the identity's cluster in\nfilter state envoy.tcp_proxy.cluster. The caller must speak first (README.md, \"L4 egress\")."),
        gateway_patch(
            "NETWORK_FILTER",
            Some((
                "listener",
                map([
                    ("portNumber", int(L4_GATEWAY_PORT)),
                    ("filterChain", map([("filter", map([("name", s("envoy.filters.network.tcp_proxy"))]))])),
                ]),
            )),
            "MERGE",
            map([(
                "typed_config",
                map([
                    ("@type", s("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")),
                    ("cluster", s(super::UNROUTED_CLUSTER)),
                    ("upstream_connect_mode", s("ON_DOWNSTREAM_DATA")),
                    ("max_early_data_bytes", int(super::EARLY_DATA_BYTES)),
                ]),
            )]),
        ),
    )
}

fn internal_host(c: &IdentityCluster) -> String {
    egress_identity_core::platform::internal_host(&k8s_name(&c.destination), &k8s_name(&c.identity))
}

fn identity_object_name(c: &IdentityCluster) -> String {
    format!("{}-{}", k8s_name(&c.destination), k8s_name(&c.identity))
}

fn waypoint(
    policy: &PolicyFile,
    opts: &IstioOptions,
    clusters: &[IdentityCluster],
    dests: &[Dest],
    network_policies: Vec<Yaml>,
) -> Vec<Manifest> {
    let ns = opts.namespace.as_str();
    let target = || {
        Yaml::Seq(vec![map([("group", s("gateway.networking.k8s.io")), ("kind", s("Gateway")), ("name", s(WAYPOINT))])])
    };
    let namespace = namespace_doc(
        ns,
        "egress-identity on an Istio ambient egress waypoint -- an alternative to the egress gateway: apply one\nof the two. The waypoint, its ServiceEntries, DestinationRules and the per-identity Secrets (istiod only\nhands a Secret to proxies of its namespace) share this namespace. As Istio's ambient egress guide sets it\nup: in the ambient data plane, and enrolled to use the waypoint, so every ServiceEntry here goes through\nit. Enrolment does not stop a workload from going around it: see README.md, \"Bypass\".",
        &[("istio.io/dataplane-mode", "ambient"), ("istio.io/use-waypoint", WAYPOINT)],
    );
    let waypoint_doc = commented(
        "The egress waypoint: traffic to ServiceEntries labelled istio.io/use-waypoint reaches it over HBONE from\nthe caller's ztunnel, which carries the caller's identity; the waypoint exposes it to the filter as\nfilter state io.istio.peer_principal, which the istio-waypoint platform reads.",
        map([
            ("apiVersion", s("gateway.networking.k8s.io/v1")),
            ("kind", s("Gateway")),
            (
                "metadata",
                map([
                    ("name", s(WAYPOINT)),
                    ("namespace", s(ns)),
                    ("labels", map([("istio.io/waypoint-for", s("service"))])),
                ]),
            ),
            (
                "spec",
                map([
                    ("gatewayClassName", s("istio-waypoint")),
                    (
                        "infrastructure",
                        commented(
                            format!("Copied onto the waypoint's pods: egress-identity's metrics labelled (stats.yaml), and at most\n{} downstream connections (edge-proxy hardening).", super::hardening::MAX_DOWNSTREAM_CONNECTIONS),
                            map([(
                                "annotations",
                                Yaml::Map(pod_annotations().into_iter().map(|(k, v)| (k.to_string(), s(v))).collect()),
                            )]),
                        ),
                    ),
                    (
                        "listeners",
                        Yaml::Seq(vec![map([("name", s("mesh")), ("port", int(15008)), ("protocol", s("HBONE"))])]),
                    ),
                ]),
            ),
        ]),
    );

    let mut entries = Vec::new();
    let mut drs = Vec::new();
    for d in dests.iter().filter(|d| !d.is_l4()) {
        entries.push(commented(
            format!("Destination {}: what applications call (http://{}/, port 80), bound to the waypoint. The only\nport is 80: no TLS passthrough to the partner skips the waypoint.", d.name, d.host),
            map([
                ("apiVersion", s("networking.istio.io/v1")),
                ("kind", s("ServiceEntry")),
                (
                    "metadata",
                    map([
                        ("name", s(k8s_name(&d.host))),
                        ("namespace", s(ns)),
                        ("labels", map([("istio.io/use-waypoint", s(WAYPOINT))])),
                    ]),
                ),
                (
                    "spec",
                    external_service_entry_spec(&d.host, d.port),
                ),
            ]),
        ));
    }
    for d in dests.iter().filter(|d| d.is_l4()) {
        entries.push(l4_service_entry(d, ns, Some(WAYPOINT)));
        if d.protocol == Protocol::Tls {
            // Passthrough: the waypoint's own cluster is the path; the filter closes what it does not allow.
            continue;
        }
        drs.push(commented(
            format!(
                "Fail closed: the waypoint's own route for {}:{} (tcp_proxy's cluster when the filter names none)
would reach the partner without an identity; this Secret never exists, so that path never completes a
handshake. The filter names each allowed connection's identity cluster (the ServiceEntries below).",
                d.host, d.port
            ),
            object(
                "networking.istio.io/v1",
                "DestinationRule",
                meta(&format!("{}-{}", k8s_name(&d.host), d.port), ns),
                map([
                    ("host", s(&d.host)),
                    (
                        "trafficPolicy",
                        map([(
                            "tls",
                            map([("mode", s("MUTUAL")), ("credentialName", s(super::envoy::NO_IDENTITY_SECRET))]),
                        )]),
                    ),
                ]),
            ),
        ));
    }
    let mut rules_by_dest: Vec<(&Dest, Vec<Yaml>)> =
        dests.iter().filter(|d| !d.is_l4()).map(|d| (d, Vec::new())).collect();
    for c in clusters {
        let Some(d) = dest_of(dests, &c.destination) else { continue };
        let host = internal_host(c);
        if d.protocol == Protocol::Tls {
            continue;
        }
        if d.is_l4() {
            let (entry, dr) = waypoint_l4_identity(c, d, ns);
            entries.push(entry);
            drs.push(dr);
            continue;
        }
        entries.push(commented(
            format!("External identity {} of {}: an internal host with its own DestinationRule, so its own client\ncertificate. exportTo \".\": only the waypoint's routes can address it.", c.identity, c.destination),
            object(
                "networking.istio.io/v1",
                "ServiceEntry",
                meta(&identity_object_name(c), ns),
                internal_service_entry_spec(&host, d, (80, "http", "HTTP")),
            ),
        ));
        drs.push(identity_destination_rule(
            c,
            d,
            ns,
            format!("TLS origination as {}: Secret {} (tls.crt, tls.key, ca.crt), delivered over SDS;\nupdating the Secret rotates the certificate without a restart.", c.identity, identity_secret(&c.identity)),
        ));
        if let Some((_, rules)) = rules_by_dest.iter_mut().find(|(rd, _)| rd.name == d.name) {
            rules.push(map([
                ("name", s(k8s_name(&c.identity))),
                (
                    "matches",
                    Yaml::Seq(vec![map([
                        // The API server's default, written out: istiod reads a match without it as no path
                        // (its own generator, run without defaulting, crashes on it).
                        ("path", map([("type", s("PathPrefix")), ("value", s("/"))])),
                        (
                            "headers",
                            Yaml::Seq(vec![map([
                                ("type", s("Exact")),
                                ("name", s(policy.config.headers.cluster.to_string())),
                                ("value", s(&c.cluster)),
                            ])]),
                        ),
                    ])]),
                ),
                (
                    "filters",
                    Yaml::Seq(vec![map([
                        ("type", s("RequestHeaderModifier")),
                        ("requestHeaderModifier", map([("remove", removed_headers(policy))])),
                    ])]),
                ),
                (
                    "backendRefs",
                    Yaml::Seq(vec![map([
                        ("group", s("networking.istio.io")),
                        ("kind", s("Hostname")),
                        ("name", s(&host)),
                        ("port", int(80)),
                    ])]),
                ),
            ]));
        }
    }
    let routes = rules_by_dest
        .into_iter()
        .map(|(d, rules)| {
            commented(
                format!("Routing in the waypoint by the filter's decision (EnvoyFilter is not supported on waypoints): one\nrule per identity of {} matches the value the filter writes into the cluster header (the cluster name the\ncore derives, a routing key here) and sends the request to that identity's ServiceEntry. Without one of these values\n(the filter did not run) no rule matches: 404, nothing is forwarded.", d.name),
                object(
                    "gateway.networking.k8s.io/v1",
                    "HTTPRoute",
                    meta(&format!("{}-identities", k8s_name(&d.host)), ns),
                    map([
                        (
                            "parentRefs",
                            Yaml::Seq(vec![map([
                                ("group", s("networking.istio.io")),
                                ("kind", s("ServiceEntry")),
                                ("name", s(k8s_name(&d.host))),
                            ])]),
                        ),
                        ("rules", Yaml::Seq(rules)),
                    ]),
                ),
            )
        })
        .collect();
    let [plugins, extensions] = plugin_files(
        policy,
        opts,
        "waypoint",
        ("targetRefs", target()),
        (
            "The egress-identity filter on the egress waypoint (waypoints ignore `selector`: targetRefs). phase AUTHZ:\nbefore Istio's RBAC filter and the route, which matches the header the filter sets. A module that cannot be\nloaded or refuses its configuration is replaced by a deny-all.",
            "The same module as the network filter of the waypoint's tcp chains (root id ending in -l4), phase AUTHZ:\nbefore Istio's RBAC and tcp_proxy. The chain's name (inbound-vip|<port>|tcp|<host>) names the destination\nand the caller's principal is in filter state io.istio.peer_principal: each connection is decided at once,\nand an allowed one is sent to its identity's cluster (envoy.tcp_proxy.cluster), a denied one closed.",
        ),
    );
    let auth = guard(policy, ns, ("targetRefs", target()), egress_identity_core::platform::MESH_HTTP_PORT);
    let m = "waypoint";
    vec![
        file("00-namespace.yaml", m, vec![namespace]),
        file("waypoint.yaml", m, vec![waypoint_doc]),
        file("service-entries.yaml", m, entries),
        file("destination-rules.yaml", m, drs),
        file("http-route.yaml", m, routes),
        file("authorization-policy.yaml", m, vec![auth]),
        plugins,
        extensions,
        file("network-policy.yaml", m, network_policies),
        file(
            "stats.yaml",
            m,
            vec![stats_configmap(ns, "The waypoint (waypoint.yaml) carries these annotations in\nspec.infrastructure, which Istio copies onto its pods:")],
        ),
    ]
}

/// The DestinationRule of an identity's internal host in the waypoint: mTLS to the partner with the identity's
/// Secret, the partner's name as SNI and SAN. exportTo ".": only the waypoint uses it.
fn identity_destination_rule(c: &IdentityCluster, d: &Dest, ns: &str, comment: String) -> Yaml {
    commented(
        comment,
        object(
            "networking.istio.io/v1",
            "DestinationRule",
            meta(&identity_object_name(c), ns),
            map([
                ("host", s(internal_host(c))),
                ("exportTo", strs(["."])),
                (
                    "trafficPolicy",
                    map([(
                        "tls",
                        map([
                            ("mode", s("MUTUAL")),
                            ("credentialName", s(identity_secret(&c.identity))),
                            ("sni", s(&d.host)),
                            ("subjectAltNames", strs([d.host.as_str()])),
                        ]),
                    )]),
                ),
            ]),
        ),
    )
}

/// A tcp destination's identity in the waypoint: an internal host bound to the waypoint (so istiod gives it a
/// cluster there, `inbound-vip|<port>|tcp|<host>`, which the filter names in `envoy.tcp_proxy.cluster`), whose
/// DestinationRule originates mTLS with the identity's Secret.
fn waypoint_l4_identity(c: &IdentityCluster, d: &Dest, ns: &str) -> (Yaml, Yaml) {
    let host = internal_host(c);
    let port_name = format!("tcp-{}", d.port);
    let entry = commented(
        format!(
            "External identity {} of {} (tcp): an internal host with its own DestinationRule, bound to the
waypoint so that istiod builds its cluster there ({}), which the filter names for the connections it
allows as this identity. exportTo \".\": nothing outside this namespace addresses it.",
            c.identity, c.destination, c.cluster
        ),
        object(
            "networking.istio.io/v1",
            "ServiceEntry",
            map([
                ("name", s(identity_object_name(c))),
                ("namespace", s(ns)),
                ("labels", map([("istio.io/use-waypoint", s(WAYPOINT))])),
            ]),
            internal_service_entry_spec(&host, d, (d.port, &port_name, "TCP")),
        ),
    );
    let dr = identity_destination_rule(
        c,
        d,
        ns,
        format!(
            "mTLS as {} to {}:{}: Secret {} (tls.crt, tls.key, ca.crt), delivered over SDS.",
            c.identity,
            d.host,
            d.port,
            identity_secret(&c.identity)
        ),
    );
    (entry, dr)
}

/// The ServiceEntry of a dynamic HTTP destination in gateway mode: its hosts (patterns too) with resolution
/// NONE, since sidecars only route them to the gateway, which resolves each concrete host itself.
fn dynamic_service_entry(d: &Dest, ns: &str) -> Yaml {
    let ports = d.mesh_http_ports();
    let calls = if ports.len() > 1 {
        format!(
            "http://<host>:<port>/ for each of its ports ({})",
            ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    } else {
        format!("http://<host>/ (port 80) for its port {}", d.port)
    };
    let ports: Vec<Yaml> = ports
        .iter()
        .map(|p| {
            let name = if d.ports.len() > 1 { format!("http-{p}") } else { "http".to_string() };
            map([("number", int(*p)), ("name", s(name)), ("protocol", s("HTTP"))])
        })
        .collect();
    commented(
        format!(
            "Destination {} ({}): applications call {calls}; their sidecar sends the request to the egress\ngateway over Istio mTLS, where the filter checks the concrete host and port and the gateway's dynamic\nforward proxy resolves it. resolution NONE: only the gateway resolves these names.",
            d.name,
            d.hosts.join(", ")
        ),
        object(
            "networking.istio.io/v1",
            "ServiceEntry",
            meta(&d.object_name(), ns),
            map([
                ("hosts", strs(d.hosts.iter().map(String::as_str))),
                ("location", s("MESH_EXTERNAL")),
                ("resolution", s("NONE")),
                ("ports", Yaml::Seq(ports)),
            ]),
        ),
    )
}

/// The spec of an identity's internal ServiceEntry in the waypoint: `host`, addressed only in this namespace,
/// with the partner as its endpoint, on `port` (number, name, protocol), whose name maps to the partner's port.
fn internal_service_entry_spec(host: &str, d: &Dest, port: (u16, &str, &str)) -> Yaml {
    let (number, name, protocol) = port;
    map([
        ("hosts", strs([host])),
        ("exportTo", strs(["."])),
        ("location", s("MESH_EXTERNAL")),
        ("resolution", s("DNS")),
        ("endpoints", Yaml::Seq(vec![map([("address", s(&d.host)), ("ports", map([(name, int(d.port))]))])])),
        ("ports", Yaml::Seq(vec![map([("number", int(number)), ("name", s(name)), ("protocol", s(protocol))])])),
    ])
}

/// The spec of the ServiceEntry applications call: the external host on port 80 (plain HTTP inside the
/// mesh), forwarded to the partner's `target_port`; shared by the gateway and the waypoint layouts.
fn external_service_entry_spec(host: &str, target_port: u16) -> Yaml {
    map([
        ("hosts", strs([host])),
        ("location", s("MESH_EXTERNAL")),
        ("resolution", s("DNS")),
        (
            "ports",
            Yaml::Seq(vec![map([
                ("number", int(80)),
                ("name", s("http")),
                ("protocol", s("HTTP")),
                ("targetPort", int(target_port)),
            ])]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{ "trustDomains": ["cluster.local"],
      "identities": [ { "name": "x.one", "principals": ["spiffe://cluster.local/ns/t/sa/x"] },
                      { "name": "y", "principals": ["cluster.local/ns/t/*"] }, { "name": "z" } ],
      "destinations": [
        { "name": "a", "host": "a.example", "port": 443, "identities": ["x.one"] },
        { "name": "b", "host": "api.b.example", "port": 443, "identities": ["y"], "defaultIdentity": "z" } ] }"#;

    fn policy(text: &str, mode: IstioMode) -> PolicyFile {
        PolicyFile::for_platform(text, &mode.platform()).unwrap()
    }

    fn opts(mode: IstioMode) -> IstioOptions {
        IstioOptions {
            mode,
            namespace: mode.default_namespace().into(),
            image: DEFAULT_IMAGE.into(),
            workload_namespaces: vec!["t".into()],
            dns_resolvers: Vec::new(),
            allow_resolved: Vec::new(),
        }
    }

    /// The files as `render` writes them.
    fn render(policy: &PolicyFile, opts: &IstioOptions) -> Result<Vec<(String, String)>, RenderError> {
        super::render(policy, opts).map(|files| files.iter().map(Manifest::file).collect())
    }

    fn all(files: &[(String, String)]) -> String {
        files.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("---\n")
    }

    #[test]
    fn gateway_mode_has_a_cluster_per_identity_and_a_route_patch_per_destination() {
        let files = render(&policy(POLICY, IstioMode::Gateway), &opts(IstioMode::Gateway)).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "00-namespace.yaml");
        let out = all(&files);
        assert_eq!(out.matches("applyTo: CLUSTER").count(), 3, "{out}");
        assert_eq!(out.matches("applyTo: HTTP_ROUTE").count(), 2, "{out}");
        assert!(out.contains("name: kubernetes://egress-identity-x-one\n"), "{out}");
        // By the route's name, in whichever virtual host istiod puts it.
        assert!(out.contains("        vhost:\n          route:\n            name: b\n"), "{out}");
        assert!(out.contains("- cluster.local/ns/t/sa/x\n"), "guard principals without spiffe://: {out}");
        assert!(out.contains("pluginConfig:\n    # ") || out.contains("pluginConfig:\n    {"), "{out}");
        assert_eq!(out.matches("kind: VirtualService").count(), 2);
    }

    /// On a TCP chain Istio drops a DENY rule's header condition: every guard rule is limited to the port
    /// requests arrive on, or it would deny the tcp/tls destinations' callers (tests/istiod sees it).
    #[test]
    fn every_cluster_guard_rule_is_limited_to_the_requests_port() {
        for (mode, port) in [(IstioMode::Gateway, "443"), (IstioMode::Waypoint, "80")] {
            let files = render(&policy(POLICY, mode), &opts(mode)).unwrap();
            let (_, guard) = files.iter().find(|(n, _)| n == "authorization-policy.yaml").unwrap();
            let limited = format!("    to:\n    - operation:\n        ports:\n        - \"{port}\"\n    when:\n");
            assert_eq!(guard.matches("  - from:").count(), 2, "{guard}");
            assert_eq!(guard.matches(&limited).count(), 2, "{mode:?}: {guard}");
        }
    }

    #[test]
    fn waypoint_mode_routes_each_identity_to_its_own_service_entry() {
        let p = policy(POLICY, IstioMode::Waypoint);
        assert_eq!(
            p.config.principal_sources,
            [egress_identity_core::config_document::PrincipalSource::IstioPeerPrincipal]
        );
        let out = all(&render(&p, &opts(IstioMode::Waypoint)).unwrap());
        for host in ["x-one.a.egress-identity.internal", "y.b.egress-identity.internal", "z.b.egress-identity.internal"]
        {
            assert_eq!(out.matches(&format!("name: {host}\n")).count(), 1, "{host}: {out}");
        }
        assert_eq!(out.matches("kind: HTTPRoute").count(), 2);
        assert_eq!(out.matches("credentialName: egress-identity-").count(), 3);
        assert!(out.contains("\"platform\": {\"kind\":\"istio-waypoint\"}"), "{out}");
    }

    /// A waypoint carries tcp destinations (each on its own chain, decided by the network filter) but not tls
    /// passthrough ones: the core warns of those, and nothing of them is rendered.
    #[test]
    fn waypoint_mode_carries_tcp_and_tls() {
        let l4 = POLICY.replace(
            r#"{ "name": "a", "host": "a.example", "port": 443, "identities": ["x.one"] },"#,
            r#"{ "name": "a", "host": "a.example", "port": 443, "identities": ["x.one"] },
               { "name": "db", "protocol": "tcp", "host": "db.example", "port": 5432, "identities": ["x.one"] },
               { "name": "files", "protocol": "tls", "host": "files.example", "port": 443 },"#,
        );
        let p = policy(&l4, IstioMode::Waypoint);
        let out = all(&render(&p, &opts(IstioMode::Waypoint)).unwrap());
        // tls passthrough: the destination bound to the waypoint, and nothing else (its own cluster is the path).
        assert!(out.contains("name: files-example\n") && out.contains("    protocol: TLS\n"), "{out}");
        assert!(!out.contains("files-example-443") && !out.contains("passthrough.files"), "{out}");
        // The destination bound to the waypoint, its fail-closed DestinationRule, the identity's internal host
        // (bound too, so istiod builds the cluster the core names) with its Secret, and the network plugin on
        // every chain (no port match).
        for want in [
            "name: db-example\n",
            "name: db-example-5432\n",
            "credentialName: egress-identity-no-identity",
            "- x-one.db.egress-identity.internal",
            "inbound-vip|5432|tcp|x-one.db.egress-identity.internal",
            "type: NETWORK",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        let network = out.split("type: NETWORK").next().unwrap().rsplit("kind: WasmPlugin").next().unwrap();
        assert!(!network.contains("match:"), "{network}");
    }

    #[test]
    fn gateway_mode_carries_tcp_and_tls_destinations_on_the_l4_port() {
        let text = POLICY.replace(
            "\"destinations\": [",
            r#""destinations": [
            { "name": "db", "protocol": "tcp", "host": "db.example", "port": 5432, "identities": ["x.one"] },
            { "name": "files", "protocol": "tls", "host": "files.example", "port": 443 },"#,
        );
        let files = render(&policy(&text, IstioMode::Gateway), &opts(IstioMode::Gateway)).unwrap();
        let out = all(&files);
        // One TLS server per L4 destination, the tcp_proxy patch, the network plugin on that port only.
        assert_eq!(out.matches("number: 8443\n      name: tls-").count(), 2, "{out}");
        assert!(out.contains("portNumber: 8443\n        filterChain:\n          filter:\n            name: envoy.filters.network.tcp_proxy"), "{out}");
        assert!(
            out.contains("cluster: egress-identity-unrouted\n          upstream_connect_mode: ON_DOWNSTREAM_DATA"),
            "{out}"
        );
        let plugins = &files.iter().find(|(n, _)| n == "wasm-plugin.yaml").unwrap().1;
        assert!(plugins.contains("type: NETWORK") && plugins.contains("pluginName: egress-identity-l4"), "{plugins}");
        assert!(plugins.contains("match:\n  - ports:\n    - number: 8443"), "{plugins}");
        // The passthrough identity's cluster is plain TCP; the tcp one originates mTLS without ALPN.
        let cluster_of = |name: &str| {
            let after = out.split_once(&format!("\n        name: \"{name}\"")).unwrap().1;
            after.split("- applyTo").next().unwrap().to_string()
        };
        let passthrough = cluster_of("files|passthrough");
        assert!(!passthrough.contains("transport_socket"), "{passthrough}");
        let tcp = cluster_of("db|x-one");
        assert!(tcp.contains("kubernetes://egress-identity-x-one") && !tcp.contains("alpn"), "{tcp}");
        // Sidecars: the tls destination by SNI, the tcp one by port; no header guard for connections.
        assert!(out.contains("sniHosts:\n      - files.example"), "{out}");
        assert!(out.contains("- \"a|x-one\"\n") && !out.contains("- \"db|x-one\"\n"), "{out}");
        // A network policy per caller namespace.
        assert!(
            out.contains("kind: NetworkPolicy\nmetadata:\n  name: egress-identity-no-way-around\n  namespace: t\n"),
            "{out}"
        );
    }

    #[test]
    fn gateway_mode_reaches_a_dynamic_destination_through_a_forward_proxy_cluster_per_identity() {
        let text = POLICY.replace(
            "\"destinations\": [",
            r#""destinations": [
            { "name": "w", "host": "*.w.example", "port": [443, 8443], "identities": ["x.one", "y"] },"#,
        );
        let dynamic = policy(&text, IstioMode::Gateway);
        let mut o = opts(IstioMode::Gateway);
        o.allow_resolved = vec!["10.0.0.0/8".into()];
        let out = all(&render(&dynamic, &o).unwrap());
        // Sidecars: the pattern, unresolved, on each port; to the gateway with a name its server matches.
        assert!(out.contains("  hosts:\n  - \"*.w.example\"\n  location: MESH_EXTERNAL\n  resolution: NONE\n  ports:\n  - number: 443\n    name: http-443\n"), "{out}");
        assert!(out.contains("sni: egress-identity.w.example"), "{out}");
        // One forward-proxy cluster per identity, on one DNS cache with the filter before the router.
        for identity in ["x-one", "y"] {
            let cluster =
                out.split_once(&format!("name: \"w|{identity}\"")).unwrap().1.split("- applyTo").next().unwrap();
            assert!(
                cluster.contains("name: envoy.clusters.dynamic_forward_proxy")
                    && cluster.contains("auto_san_validation: true"),
                "{cluster}"
            );
            assert!(
                cluster.contains(&format!("kubernetes://egress-identity-{identity}")) && !cluster.contains(" sni: "),
                "{cluster}"
            );
        }
        assert!(
            out.contains(
                "operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.dynamic_forward_proxy"
            ),
            "{out}"
        );
        assert!(
            !out.contains("address_prefix: \"10.0.0.0\"") && out.contains("address_prefix: \"127.0.0.0\""),
            "{out}"
        );
        // Without a dynamic destination: no forward proxy, and the DNS flags are refused.
        let plain = all(&render(&policy(POLICY, IstioMode::Gateway), &opts(IstioMode::Gateway)).unwrap());
        assert!(!plain.contains("dynamic_forward_proxy"), "{plain}");
        let e = render(&policy(POLICY, IstioMode::Gateway), &o).unwrap_err();
        assert!(e.0.contains("only dynamic destinations"), "{e}");
        o.allow_resolved = vec!["10.1.0.0/16".into()];
        assert!(render(&dynamic, &o).unwrap_err().0.contains("--allow-resolved 10.1.0.0/16"));
    }
}
