//! `render envoy`: the Envoy v3 bootstrap of an egress gateway for one policy file — the mTLS listener,
//! `header_mutation` → egress-identity → router with `cluster_header`, and one upstream cluster per
//! external identity, every certificate from file-based SDS.

use std::collections::BTreeMap;

use egress_identity_core::config_document::{AuditRecord, Protocol};

use super::forward_proxy::{self, Dns};
pub use egress_identity_core::identity::NO_IDENTITY_SECRET;

use super::{
    check_file_safe, commented, dns_san_validation, hardening, int, load_assignment, map, s, strs, to_yaml, PolicyFile,
    RenderError, Yaml, UNROUTED_CLUSTER,
};

/// Where something listens or connects: a host name or IP address and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not ADDRESS:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{text:?}: bad port"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{text:?}: bad address"));
        }
        Ok(Self { host: host.to_string(), port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `NAME=VALUE` (e.g. `--upstream partner-api=127.0.0.1:18443`).
pub fn name_value<T>(text: &str) -> Result<(String, T), String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() || value.is_empty() {
        return Err(format!("{text:?} is not NAME=VALUE"));
    }
    Ok((name.to_string(), value.parse().map_err(|e: T::Err| e.to_string())?))
}

/// The options of `render envoy`; [`EnvoyOptions::default`] is the production layout.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub listen: HostPort,
    /// The address of the network (L4) filter's listener, for `tcp` / `tls` destinations (rendered only when
    /// the policy has some): it listens there on every port a tcp/tls destination declares, since the port a
    /// caller connects to is the destination port the filter decides on.
    pub l4_address: String,
    pub admin: HostPort,
    /// The listener that serves only `/stats/prometheus` (from the admin interface), for scraping the pod
    /// without exposing the admin interface.
    pub metrics: HostPort,
    pub wasm: String,
    /// Destination name → upstream endpoint (default: its first exact host and first port).
    pub upstreams: BTreeMap<String, HostPort>,
    /// Destination name → SDS secret of the CA that verifies the partner (default `<destination>-ca`).
    pub ca_secrets: BTreeMap<String, String>,
    /// Directory of the SDS resource files, relative to the run directory.
    pub sds_dir: String,
    pub access_log: String,
    /// Bound on the life of an upstream connection, in seconds (how long a rotated-out client
    /// certificate can stay in use).
    pub max_connection_duration: u32,
    /// The gRPC SDS server of the shared clusters' identities: `ADDR:PORT` or `unix:PATH`.
    pub identity_sds: Option<String>,
    /// The DNS servers of the dynamic destinations' DNS cache (c-ares `resolvers`); none: the system's.
    pub dns_resolvers: Vec<HostPort>,
    /// Address ranges (CIDR) a dynamic destination's name may resolve into after all, out of
    /// [`forward_proxy::BLOCKED_RANGES`].
    pub allow_resolved: Vec<String>,
    /// The SPIRE agent's SDS socket (`unix:PATH`): the listener's certificate is the gateway's X.509-SVID
    /// (the secret named by [`EnvoyOptions::gateway_id`]) and callers are verified against SPIRE's bundles
    /// (`ALL`: every trust domain's, by Envoy's SPIFFE validator), instead of the files gateway-cert and mesh-ca.
    pub spire_agent: Option<String>,
    /// The gateway's SPIFFE ID (with `spire_agent`).
    pub gateway_id: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            listen: HostPort { host: "0.0.0.0".into(), port: 10443 },
            l4_address: "0.0.0.0".into(),
            admin: HostPort { host: "127.0.0.1".into(), port: 9901 },
            metrics: HostPort { host: "0.0.0.0".into(), port: 15090 },
            wasm: "dist/egress_identity.wasm".into(),
            upstreams: BTreeMap::new(),
            ca_secrets: BTreeMap::new(),
            sds_dir: "sds".into(),
            access_log: "/dev/stdout".into(),
            max_connection_duration: 10,
            identity_sds: None,
            dns_resolvers: Vec::new(),
            allow_resolved: Vec::new(),
            spire_agent: None,
            gateway_id: None,
        }
    }
}

impl EnvoyOptions {
    /// The dynamic forward proxy's DNS settings.
    pub fn dns(&self) -> Dns<'_> {
        Dns { resolvers: &self.dns_resolvers, allow_resolved: &self.allow_resolved }
    }

    /// The command-line flags that reproduce these options (those that differ from the defaults).
    pub fn flags(&self) -> Vec<String> {
        let d = Self::default();
        let mut flags = Vec::new();
        if self.listen != d.listen {
            flags.push(format!("--listen {}", self.listen));
        }
        if self.l4_address != d.l4_address {
            flags.push(format!("--l4-address {}", self.l4_address));
        }
        if self.admin != d.admin {
            flags.push(format!("--admin {}", self.admin));
        }
        if self.metrics != d.metrics {
            flags.push(format!("--metrics {}", self.metrics));
        }
        if self.wasm != d.wasm {
            flags.push(format!("--wasm {}", self.wasm));
        }
        for (name, hp) in &self.upstreams {
            flags.push(format!("--upstream {name}={hp}"));
        }
        for (name, secret) in &self.ca_secrets {
            flags.push(format!("--ca-secret {name}={secret}"));
        }
        if self.sds_dir != d.sds_dir {
            flags.push(format!("--sds-dir {}", self.sds_dir));
        }
        if self.access_log != d.access_log {
            flags.push(format!("--access-log {}", self.access_log));
        }
        if self.max_connection_duration != d.max_connection_duration {
            flags.push(format!("--max-connection-duration {}", self.max_connection_duration));
        }
        if let Some(sds) = &self.identity_sds {
            flags.push(format!("--identity-sds {sds}"));
        }
        for resolver in &self.dns_resolvers {
            flags.push(format!("--dns-resolver {resolver}"));
        }
        for range in &self.allow_resolved {
            flags.push(format!("--allow-resolved {range}"));
        }
        if let Some(agent) = &self.spire_agent {
            flags.push(format!("--spire-agent {agent}"));
        }
        if let Some(id) = &self.gateway_id {
            flags.push(format!("--gateway-id {id}"));
        }
        flags
    }
}

/// Downstream server certificate secret.
pub const GATEWAY_CERT: &str = "gateway-cert";
/// Mesh CA bundle secret.
pub const MESH_CA: &str = "mesh-ca";

/// SDS secret of an external identity's client certificate.
pub fn identity_secret(identity: &str) -> String {
    format!("external-{identity}")
}

/// Default SDS secret of the CA that verifies a destination's servers.
pub fn default_ca_secret(destination: &str) -> String {
    format!("{destination}-ca")
}

/// One upstream cluster: an external identity of a destination (or a tls destination's passthrough).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityCluster {
    pub cluster: String,
    pub destination: String,
    pub identity: String,
    pub protocol: Protocol,
}

/// The identity clusters that originate TLS, i.e. present a client certificate and verify the partner
/// (`http` and `tcp` destinations; a `tls` passthrough presents none), in policy order.
pub fn originating_clusters(policy: &PolicyFile) -> Vec<IdentityCluster> {
    identity_clusters(policy).into_iter().filter(|c| c.protocol != Protocol::Tls).collect()
}

/// Every cluster of one identity, or of one tls destination's passthrough (destinations not in
/// single-cluster mode, and that the policy's platform carries), in policy order, named by the core for that
/// platform.
pub fn identity_clusters(policy: &PolicyFile) -> Vec<IdentityCluster> {
    let destinations = policy.config.destinations.iter().filter(|d| !d.single_cluster);
    destinations
        .flat_map(|d| {
            d.identities.identities().map(move |i| IdentityCluster {
                cluster: i.cluster.to_string(),
                destination: d.name.to_string(),
                identity: i.name.to_string(),
                protocol: d.protocol,
            })
        })
        .collect()
}

/// Identity clusters past which `render envoy` warns: each reads its certificate from its own SDS file,
/// and Envoy watches one directory per secret (an inotify instance each; Linux allows 128 per user by
/// default, and Envoy aborts when it runs out).
pub const FILE_SDS_CLUSTERS_WARNING: usize = 100;

/// A warning for a policy whose gateway would need more file-SDS secrets than a default Linux allows
/// watches for, pointing to single-cluster mode.
pub fn scale_warning(policy: &PolicyFile) -> Option<String> {
    let n = originating_clusters(policy).len();
    (n > FILE_SDS_CLUSTERS_WARNING).then(|| {
        format!(
            "{n} identity clusters, each watching its own SDS file: Envoy needs an inotify instance per secret and aborts at startup past fs.inotify.max_user_instances (128 by default); raise it, or make the destinations singleCluster (README.md, \"Identity scale\")"
        )
    })
}

/// A destination in single-cluster mode: its one cluster, and the SDS secret of each of its identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedCluster {
    pub cluster: String,
    pub destination: String,
    /// `(identity, secret)`, in policy order; one secret may serve several identities.
    pub identities: Vec<(String, String)>,
}

/// The cluster of the gRPC SDS server that serves the shared clusters' identities (`--identity-sds`).
pub const IDENTITY_SDS_CLUSTER: &str = "egress-identity-sds";

/// Concurrent SDS streams the identities' SDS cluster allows: one per identity in use.
pub const MAX_IDENTITY_STREAMS: i64 = 1_000_000;

/// The cluster of the identities' SDS server: HTTP/2 (gRPC) to `ADDR:PORT` or a Unix socket `unix:PATH`.
/// The cluster of the SPIRE agent's SDS socket (`--spire-agent`).
pub const SPIRE_AGENT_CLUSTER: &str = "spire_agent";
/// The secret SPIRE's agent serves with every trust domain's bundle, as a SPIFFE validator configuration (its
/// `default_all_bundles_name`).
pub const SPIRE_ALL_BUNDLES: &str = "ALL";

/// A gRPC SDS server's cluster: `flag`'s value, `ADDR:PORT` or `unix:PATH`.
fn sds_server_cluster(name: &str, flag: &str, address: &str) -> Result<Yaml, RenderError> {
    let address = match address.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => map([("pipe", map([("path", s(path))]))]),
        Some(_) => {
            return Err(RenderError(format!(
                "{flag} unix: needs a socket path, e.g. unix:/run/spire/sockets/agent.sock"
            )))
        }
        None => {
            let hp: HostPort = address.parse().map_err(|e| RenderError(format!("{flag} {address:?}: {e}")))?;
            socket_address(&hp)
        }
    };
    Ok(map([
        ("name", s(name)),
        ("type", s("STATIC")),
        ("connect_timeout", s("1s")),
        (
            "circuit_breakers",
            commented(
                "Every identity in use is one SDS stream (one gRPC request) on this cluster: Envoy's defaults (1,024\nrequests, pending requests, connections) would leave identities past them without a certificate.",
                map([(
                    "thresholds",
                    Yaml::Seq(vec![map([
                        ("max_requests", int(MAX_IDENTITY_STREAMS)),
                        ("max_pending_requests", int(MAX_IDENTITY_STREAMS)),
                        ("max_connections", int(MAX_IDENTITY_STREAMS)),
                    ])]),
                )]),
            ),
        ),
        (
            "typed_extension_protocol_options",
            map([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                typed(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    vec![e("explicit_http_config", map([("http2_protocol_options", map::<&str>([]))]))],
                ),
            )]),
        ),
        (
            "load_assignment",
            map([
                ("cluster_name", s(name)),
                (
                    "endpoints",
                    Yaml::Seq(vec![map([(
                        "lb_endpoints",
                        Yaml::Seq(vec![map([("endpoint", map([("address", address)]))])]),
                    )])]),
                ),
            ]),
        ),
    ]))
}

/// The destinations in single-cluster mode, in policy order, each with its one cluster (named by the core).
pub fn shared_clusters(policy: &PolicyFile) -> Vec<SharedCluster> {
    let destinations = policy.config.destinations.iter().filter(|d| d.single_cluster);
    destinations
        .filter_map(|d| {
            let cluster = d.identities.identities().next()?.cluster.to_string();
            let identities = d
                .identities
                .identities()
                .map(|i| (i.name.to_string(), i.secret.as_deref().unwrap_or_default().to_string()))
                .collect();
            Some(SharedCluster { cluster, destination: d.name.to_string(), identities })
        })
        .collect()
}

/// `--spire-agent` and `--gateway-id`, checked: the gateway's SPIFFE ID, when its certificate comes from SPIRE.
fn spire(opts: &EnvoyOptions) -> Result<Option<String>, RenderError> {
    match (&opts.spire_agent, &opts.gateway_id) {
        (None, None) => Ok(None),
        (Some(agent), Some(id)) => {
            if agent.strip_prefix("unix:").is_none_or(|p| p.is_empty()) {
                return Err(RenderError(format!("--spire-agent {agent:?}: the agent's socket, unix:PATH")));
            }
            egress_identity_core::spiffe_id::SpiffeId::parse(id)
                .map_err(|e| RenderError(format!("--gateway-id {id:?}: {e}")))?;
            Ok(Some(id.clone()))
        }
        _ => Err(RenderError("--spire-agent and --gateway-id go together: the agent's socket and the SPIFFE ID the gateway is registered with".into())),
    }
}

/// SDS from the SPIRE agent; the listener waits for it (no listener without the gateway's certificate).
fn spire_sds_config() -> Yaml {
    map([
        ("resource_api_version", s("V3")),
        ("initial_fetch_timeout", s("0s")),
        (
            "api_config_source",
            map([
                ("api_type", s("GRPC")),
                ("transport_api_version", s("V3")),
                (
                    "grpc_services",
                    Yaml::Seq(vec![map([("envoy_grpc", map([("cluster_name", s(SPIRE_AGENT_CLUSTER))]))])]),
                ),
            ]),
        ),
    ])
}

fn sds(name: &str, dir: &str) -> Yaml {
    map([("name", s(name)), ("sds_config", sds_config(name, dir))])
}

/// The config source of file `<dir>/<file>.yaml` (the directory watched: a file moved in is reloaded).
fn sds_config(file: &str, dir: &str) -> Yaml {
    map([
        ("resource_api_version", s("V3")),
        (
            "path_config_source",
            map([("path", s(format!("{dir}/{file}.yaml"))), ("watched_directory", map([("path", s(dir))]))]),
        ),
    ])
}

pub(super) fn typed(ty: &str, mut entries: Vec<(String, Yaml)>) -> Yaml {
    entries.insert(0, ("@type".into(), s(format!("type.googleapis.com/{ty}"))));
    Yaml::Map(entries)
}

/// The JSON access log both listeners write (the audit record among its fields).
/// The access log: `fields`, without the audit-record forms the policy's `auditRecord` does not write.
fn file_access_log(path: &str, fields: &[(&str, &str)], forms: AuditRecord) -> Yaml {
    let written = |key: &str| match key {
        "audit" => forms.line(),
        "decision" => forms.object(),
        _ => true,
    };
    Yaml::Seq(vec![map([
        ("name", s("envoy.access_loggers.file")),
        (
            "typed_config",
            typed(
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                vec![
                    e("path", s(path)),
                    e(
                        "log_format",
                        map([(
                            "json_format",
                            map(fields.iter().filter(|(k, _)| written(k)).map(|(k, v)| (*k, s(*v)))),
                        )]),
                    ),
                ],
            ),
        ),
    ])])
}

/// `address` and, for more than one, `additional_addresses` (each port a destination port callers use).
fn l4_addresses(policy: &PolicyFile, opts: &EnvoyOptions) -> Vec<(&'static str, Yaml)> {
    let addresses: Vec<HostPort> =
        l4_ports(policy).into_iter().map(|port| HostPort { host: opts.l4_address.clone(), port }).collect();
    let mut out = Vec::new();
    if let Some((first, rest)) = addresses.split_first() {
        out.push(("address", socket_address(first)));
        if !rest.is_empty() {
            let more = rest.iter().map(|a| map([("address", socket_address(a))])).collect();
            out.push(("additional_addresses", Yaml::Seq(more)));
        }
    }
    out
}

fn listen_list(policy: &PolicyFile, opts: &EnvoyOptions) -> String {
    let address = HostPort { host: opts.l4_address.clone(), port: 1 }.to_string();
    let host = address.strip_suffix(":1").unwrap_or(&address);
    l4_ports(policy).iter().map(|p| format!("{host}:{p}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn socket_address(hp: &HostPort) -> Yaml {
    map([("socket_address", map([("address", s(&hp.host)), ("port_value", int(hp.port))]))])
}

fn e<K: Into<String>>(k: K, v: Yaml) -> (String, Yaml) {
    (k.into(), v)
}

const AUDIT_FIELDS: &[(&str, &str)] = &[
    ("time", "%START_TIME%"),
    ("caller", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("method", "%REQ(:METHOD)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("details", "%RESPONSE_CODE_DETAILS%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("audit", "%FILTER_STATE(wasm.egress_identity.audit:PLAIN)%"),
    ("decision", "%FILTER_STATE(wasm.egress_identity.decision:TYPED)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("duration_ms", "%DURATION%"),
];

fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

struct Upstream {
    endpoint: HostPort,
    sni: String,
    ca_secret: String,
    protocol: Protocol,
    /// Reached through the dynamic forward proxy: the host and port each caller asks for.
    dynamic: bool,
}

fn upstreams(policy: &PolicyFile, opts: &EnvoyOptions) -> Result<BTreeMap<String, Upstream>, RenderError> {
    let names: Vec<&str> = policy.config.destinations.iter().map(|d| &*d.name).collect();
    for name in opts.upstreams.keys().chain(opts.ca_secrets.keys()) {
        if !names.contains(&name.as_str()) {
            return Err(RenderError(format!(
                "--upstream/--ca-secret name {name:?} is not a destination of the policy ({})",
                names.join(", ")
            )));
        }
    }
    if let Some(d) = policy.config.destinations.iter().find(|d| d.dynamic && opts.upstreams.contains_key(&*d.name)) {
        return Err(RenderError(format!(
            "--upstream {}: a destination with a wildcard, several hosts or several ports reaches the host and port each caller asks for (Envoy's dynamic forward proxy): there is no one endpoint to override; point its names elsewhere with --dns-resolver",
            d.name
        )));
    }
    let mut out = BTreeMap::new();
    for d in policy.config.destinations.iter() {
        let name = d.name.to_string();
        let endpoint =
            opts.upstreams.get(&name).cloned().unwrap_or_else(|| HostPort { host: d.host.to_string(), port: d.port });
        let ca_secret = opts.ca_secrets.get(&name).cloned().unwrap_or_else(|| default_ca_secret(&name));
        check_file_safe("CA secret", &ca_secret)?;
        out.insert(
            name,
            Upstream { endpoint, sni: d.host.to_string(), ca_secret, protocol: d.protocol, dynamic: d.dynamic },
        );
    }
    Ok(out)
}

/// The ports the L4 listener takes, in policy order: every port a tcp/tls destination declares (the port a
/// caller connects to is the destination port the filter decides on).
pub fn l4_ports(policy: &PolicyFile) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for d in policy.config.destinations.iter().filter(|d| d.protocol.is_l4()) {
        for port in &d.ports {
            if !ports.contains(port) {
                ports.push(*port);
            }
        }
    }
    ports
}

/// What an upstream cluster presents to the partner.
enum Presents<'a> {
    /// One external identity's certificate (one cluster per identity).
    Identity(&'a IdentityCluster),
    /// The certificate of whichever identity the connection names (single-cluster mode).
    Shared(&'a SharedCluster),
}

fn cluster(presents: Presents<'_>, up: &Upstream, opts: &EnvoyOptions) -> Yaml {
    let (name, destination) = match &presents {
        Presents::Identity(c) => (&c.cluster, &c.destination),
        Presents::Shared(c) => (&c.cluster, &c.destination),
    };
    let dns = !is_ip(&up.endpoint.host);
    let mut entries = vec![e("name", s(name))];
    if up.dynamic {
        entries.push(e("lb_policy", s("CLUSTER_PROVIDED")));
        entries.push(e("cluster_type", forward_proxy::cluster_type(opts.dns())));
    } else {
        entries.push(e("type", s(if dns { "LOGICAL_DNS" } else { "STATIC" })));
        if dns {
            entries.push(e("dns_lookup_family", s("V4_PREFERRED")));
        }
    }
    entries.push(e("connect_timeout", s("5s")));
    entries.push(e("per_connection_buffer_limit_bytes", int(hardening::BUFFER_LIMIT_BYTES)));
    if let Presents::Shared(c) = &presents {
        // Envoy's defaults per cluster, times the identities it stands for: what one cluster per identity gets.
        let identities = u32::try_from(c.identities.len()).unwrap_or(u32::MAX).max(1);
        let limit = ENVOY_DEFAULT_CIRCUIT_BREAKER.saturating_mul(identities).min(MAX_SHARED_LIMIT);
        entries.push(e(
            "circuit_breakers",
            commented(
                "One cluster for all the destination's identities (and, dynamic, all its hosts): Envoy's default\nlimits (1,024 connections, pending and concurrent requests) per identity, as one cluster per\nidentity would have (measured: BENCHMARKS.md, \"Dynamic destinations\").",
                map([(
                    "thresholds",
                    Yaml::Seq(vec![map([
                        ("max_connections", int(limit)),
                        ("max_pending_requests", int(limit)),
                        ("max_requests", int(limit)),
                    ])]),
                )]),
            ),
        ));
    }
    if up.dynamic {
        let mut options = vec![
            e("explicit_http_config", map([("http_protocol_options", map::<&str>([]))])),
            e("upstream_http_protocol_options", forward_proxy::upstream_http_protocol_options()),
        ];
        if up.protocol == Protocol::Http {
            options.push(e(
                "common_http_protocol_options",
                map([("max_connection_duration", s(format!("{}s", opts.max_connection_duration)))]),
            ));
        }
        entries.push(e(
            "typed_extension_protocol_options",
            map([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                typed("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", options),
            )]),
        ));
    } else if up.protocol == Protocol::Http {
        entries.push(e(
            "typed_extension_protocol_options",
            map([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                typed(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    vec![
                        e("explicit_http_config", map([("http_protocol_options", map::<&str>([]))])),
                        e(
                            "common_http_protocol_options",
                            map([(
                                "max_connection_duration",
                                commented(
                                    "A rotated client certificate (SDS) is used by every NEW upstream connection at once, but Envoy\nkeeps using established ones: this bounds how long the old certificate stays in use (the\nconnection is drained, no request fails). Raise it if handshakes with the partner are costly.",
                                    s(format!("{}s", opts.max_connection_duration)),
                                ),
                            )]),
                        ),
                    ],
                ),
            )]),
        ));
    }
    if !up.dynamic {
        entries.push(e("load_assignment", load_assignment(name, &up.endpoint.host, up.endpoint.port)));
    }
    let (certificates, comment) = match presents {
        Presents::Identity(c) if up.protocol == Protocol::Tls => {
            let what =
                format!("destination {}, mapping {}: the caller's own TLS goes through", c.destination, c.identity);
            return commented(format!("{what} (tls passthrough)"), Yaml::Map(entries));
        }
        Presents::Identity(c) => (
            e(
                "tls_certificate_sds_secret_configs",
                commented(
                    format!("The external identity {}; replaced through SDS when it is rotated.", c.identity),
                    Yaml::Seq(vec![sds(&identity_secret(&c.identity), &opts.sds_dir)]),
                ),
            ),
            format!("destination {destination}, external identity {}", c.identity),
        ),
        Presents::Shared(c) => (
            e("custom_tls_certificate_selector", on_demand_selector()),
            format!(
                "destination {destination}: ONE cluster for its {} external identities (single-cluster mode)",
                c.identities.len()
            ),
        ),
    };
    let mut tls = if up.dynamic { Vec::new() } else { vec![e("sni", s(&up.sni))] };
    if matches!(presents, Presents::Shared(_)) {
        tls.push(e(
            "max_session_keys",
            commented(
                "No TLS session resumption: all identities share this cluster's client context, and a resumed\nsession carries the identity of the handshake that created it -- one caller would reach the partner\nas another.",
                int(0),
            ),
        ));
    }
    tls.push(e(
        "common_tls_context",
        map([
            (certificates.0.as_str(), certificates.1),
            if up.dynamic {
                ("validation_context_sds_secret_config", sds(&up.ca_secret, &opts.sds_dir))
            } else {
                ("combined_validation_context", dns_san_validation(&up.sni, sds(&up.ca_secret, &opts.sds_dir)))
            },
        ]),
    ));
    entries.push(e(
        "transport_socket",
        map([
            ("name", s("envoy.transport_sockets.tls")),
            ("typed_config", typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", tls)),
        ]),
    ));
    commented(comment, Yaml::Map(entries))
}

/// Envoy's default circuit-breaker thresholds of a cluster (connections, pending and concurrent requests).
const ENVOY_DEFAULT_CIRCUIT_BREAKER: u32 = 1024;
/// The most a shared cluster's thresholds reach, whatever its identities.
const MAX_SHARED_LIMIT: u32 = 1_000_000;

/// The filter-state key the shared clusters' certificate mapper reads (Envoy's, not configurable).
pub const ON_DEMAND_SECRET_KEY: &str = "envoy.tls.certificate_mappers.on_demand_secret";

/// `set_filter_state` after the egress-identity filter: copies the secret the filter chose for a
/// single-cluster destination into [`ON_DEMAND_SECRET_KEY`], hashable (so the upstream connection pool is
/// keyed by it) and shared with the upstream connection (where the certificate mapper reads it).
fn identity_filter_state() -> Yaml {
    identity_filter_state_for(false)
}

/// The same for the network (L4) chain: its `on_new_connection` runs when the egress-identity filter, which
/// holds the filters after it until it has decided, lets the connection go on.
fn identity_filter_state_l4() -> Yaml {
    identity_filter_state_for(true)
}

fn identity_filter_state_for(l4: bool) -> Yaml {
    let (name, ty, on) = if l4 {
        (
            "envoy.filters.network.set_filter_state",
            "envoy.extensions.filters.network.set_filter_state.v3.Config",
            "on_new_connection",
        )
    } else {
        (
            "envoy.filters.http.set_filter_state",
            "envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers",
        )
    };
    commented(
        format!(
            "Single-cluster mode: the SDS secret the filter chose (property wasm.{key}) becomes the upstream\nconnection's {ON_DEMAND_SECRET_KEY}. envoy.hashable_string puts it in the connection\npool's key: a pooled connection is never reused by another identity (a plain envoy.string is not hashed\nand would be). Requests to other destinations name no secret and set nothing.",
            key = egress_identity_core::identity_mapping::SECRET_FILTER_STATE_KEY
        ),
        map([
            ("name", s(name)),
            (
                "typed_config",
                typed(
                    ty,
                    vec![e(
                        on,
                        Yaml::Seq(vec![map([
                            ("object_key", s(ON_DEMAND_SECRET_KEY)),
                            ("factory_key", s("envoy.hashable_string")),
                            (
                                "format_string",
                                map([
                                    (
                                        "text_format_source",
                                        map([(
                                            "inline_string",
                                            s(format!(
                                                "%FILTER_STATE(wasm.{}:PLAIN)%",
                                                egress_identity_core::identity_mapping::SECRET_FILTER_STATE_KEY
                                            )),
                                        )]),
                                    ),
                                    ("omit_empty_values", Yaml::Bool(true)),
                                ]),
                            ),
                            ("skip_if_empty", Yaml::Bool(true)),
                            ("shared_with_upstream", s("ONCE")),
                        ])]),
                    )],
                ),
            ),
        ]),
    )
}

/// The on-demand certificate selector of a shared cluster: the secret named by the connection's
/// `envoy.tls.certificate_mappers.on_demand_secret` (which the gateway's `set_filter_state` writes from
/// the filter's choice), fetched from the destination's SDS file on first use.
fn on_demand_selector() -> Yaml {
    let config_source = map([
        ("resource_api_version", s("V3")),
        (
            "api_config_source",
            map([
                ("api_type", s("GRPC")),
                ("transport_api_version", s("V3")),
                (
                    "grpc_services",
                    Yaml::Seq(vec![map([("envoy_grpc", map([("cluster_name", s(IDENTITY_SDS_CLUSTER))]))])]),
                ),
            ]),
        ),
    ]);
    commented(
        format!(
            "The client certificate of the identity the filter chose, by SDS secret name, fetched on the first\nconnection that needs it. Mapper default {NO_IDENTITY_SECRET:?}: no SDS source defines it, so a connection\nthat names no identity presents nothing and fails its handshake -- never a default identity."
        ),
        map([
            ("name", s("envoy.tls.certificate_selectors.on_demand_secret")),
            (
                "typed_config",
                typed(
                    "envoy.extensions.transport_sockets.tls.cert_selectors.on_demand_secret.v3.Config",
                    vec![
                        e("config_source", config_source),
                        e(
                            "certificate_mapper",
                            map([
                                ("name", s("envoy.tls.upstream_certificate_mappers.filter_state_override")),
                                (
                                    "typed_config",
                                    typed(
                                        "envoy.extensions.transport_sockets.tls.cert_mappers.filter_state_override.v3.Config",
                                        vec![e("default_value", s(NO_IDENTITY_SECRET))],
                                    ),
                                ),
                            ]),
                        ),
                    ],
                ),
            ),
        ]),
    )
}

fn header(
    policy: &PolicyFile,
    opts: &EnvoyOptions,
    clusters: &[IdentityCluster],
    shared: &[SharedCluster],
    ups: &BTreeMap<String, Upstream>,
) -> String {
    let flags = opts.flags();
    let flags = if flags.is_empty() { String::new() } else { format!(" {}", flags.join(" ")) };
    let mut h = format!(
        "egress-identity: the egress gateway (Envoy v3 bootstrap).
GENERATED by `egress-identity render envoy POLICY{flags}` -- edit the policy, not this file.

Callers (mesh workloads) connect with mTLS to {listen} and present a mesh-CA-signed certificate whose URI
SAN is their SPIFFE ID.{l4} The egress-identity wasm filter decides, per request, whether the caller may reach the
destination (Host) and, if so, which upstream cluster (= which external client certificate) to use; it tells
the router through the internal header {cluster_header} (route `cluster_header`).

Certificates, keys and CA bundles come from FILE-BASED SDS: one resource file per secret in {dir}/, each a
DiscoveryResponse holding one tls.v3.Secret (PEM inlined). Envoy watches the directory {dir}/ and reloads a
secret when its file is MOVED into it (write {dir}/.x.tmp, rename it to {dir}/x.yaml).
  {:<31} used for
{listener_secrets}",
        format!("secret (file {}/<name>.yaml)", opts.sds_dir),
        listener_secrets = match (&opts.spire_agent, &opts.gateway_id) {
            (Some(agent), Some(id)) => format!(
                "  (from the SPIRE agent, {agent}, not files:)\n  {id}\n  {:<31} listener: the gateway's X.509-SVID\n  {SPIRE_ALL_BUNDLES:<31} listener: every trust domain's bundle (own and federated), as Envoy's SPIFFE validator\n",
                ""
            ),
            _ => format!(
                "  {GATEWAY_CERT:<31} listener: the gateway's server certificate and key\n  {MESH_CA:<31} listener: CA bundle callers are verified against\n"
            ),
        },
        listen = opts.listen,
        l4 = if policy.config.destinations.has_l4() {
            format!(" tcp and tls destinations take connections on {} (their ports), decided by the same filter\nloaded as a network filter before tcp_proxy (SNI and port name the destination).", listen_list(policy, opts))
        } else {
            String::new()
        },
        cluster_header = policy.config.headers.cluster,
        dir = opts.sds_dir,
    );
    let passthrough = |destination: &str| ups.get(destination).is_some_and(|u| u.protocol == Protocol::Tls);
    for c in clusters.iter().filter(|c| !passthrough(&c.destination)) {
        h.push_str(&format!(
            "  {:<31} cluster {:?}: client certificate of external identity {}\n",
            identity_secret(&c.identity),
            c.cluster,
            c.identity
        ));
    }
    for c in shared {
        let mut secrets: Vec<&str> = c.identities.iter().take(4).map(|(_, secret)| secret.as_str()).collect();
        let more = format!("... ({} in all)", c.identities.len());
        if c.identities.len() > 4 {
            secrets.push(&more);
        }
        h.push_str(&format!(
            "  {:<31} cluster {:?} (single-cluster mode), from the gRPC SDS server {}:\n  {:<31} the client certificates of its identities, each fetched on first use\n",
            secrets.join(", "),
            c.cluster,
            opts.identity_sds.as_deref().unwrap_or("(--identity-sds)"),
            ""
        ));
    }
    for (name, up) in ups.iter().filter(|(name, _)| !passthrough(name)) {
        h.push_str(&format!(
            "  {:<31} clusters of destination {name}: CA that verifies {} (SNI and DNS SAN {})\n",
            up.ca_secret, up.endpoint, up.sni
        ));
    }
    h.push_str(&format!(
        "Conventions: external-<identity name> per identity (identities with the same name share a certificate),
<destination>-ca per destination unless --ca-secret, SNI = the destination's first exact host, upstream =
that host and the first port unless --upstream.

Every path is RELATIVE to Envoy's working directory (the \"run directory\"):
  {dir}/  SDS resource files   {wasm}  the filter   {log}  access log
Run: cd <run dir> && envoy -c <this file> --disable-hot-restart",
        dir = opts.sds_dir,
        wasm = opts.wasm,
        log = opts.access_log
    ));
    h
}

/// The root id of the HTTP filter, and of the network (L4) one (the filter takes the `-l4` suffix as its
/// cue to decide connections).
const ROOT_ID: &str = "egress-identity";
const ROOT_ID_L4: &str = "egress-identity-l4";

/// The Wasm plugin's `config`: the module, and the policy file verbatim as its configuration. Both filters
/// share one VM (`vm_id`).
fn plugin(policy: &PolicyFile, opts: &EnvoyOptions, root_id: &str) -> Yaml {
    map([
        ("name", s(root_id)),
        ("root_id", s(root_id)),
        (
            "failure_policy",
            commented(
                "A VM that fails (a trap) fails its request and is reloaded (after a back-off): never forwarded,\nand not an outage until a restart as with FAIL_CLOSED (README.md, \"Threat model\").",
                s("FAIL_RELOAD"),
            ),
        ),
        (
            "vm_config",
            map([
                ("vm_id", s("egress-identity")),
                ("runtime", s("envoy.wasm.runtime.v8")),
                ("code", map([("local", map([("filename", s(&opts.wasm))]))])),
            ]),
        ),
        (
            "configuration",
            commented(
                "The plugin configuration: the policy file, verbatim, and the platform it is rendered for (README.md,\n\"Configuration reference\").",
                typed("google.protobuf.StringValue", vec![e("value", Yaml::Literal(policy.plugin_config.clone()))]),
            ),
        ),
    ])
}

const AUDIT_FIELDS_L4: &[(&str, &str)] = &[
    ("time", "%START_TIME%"),
    ("protocol", "l4"),
    ("caller", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("sni", "%REQUESTED_SERVER_NAME%"),
    ("port", "%DOWNSTREAM_LOCAL_PORT%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("audit", "%FILTER_STATE(wasm.egress_identity.audit:PLAIN)%"),
    ("decision", "%FILTER_STATE(wasm.egress_identity.decision:TYPED)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration_ms", "%DURATION%"),
];

/// The listener of the network (L4) filter: the same mTLS, then egress-identity, then tcp_proxy to the
/// cluster the filter names in filter state `envoy.tcp_proxy.cluster`.
fn l4_listener(policy: &PolicyFile, opts: &EnvoyOptions, downstream_tls: Yaml) -> Yaml {
    let shared_l4 = policy.config.destinations.iter().any(|d| d.single_cluster && d.protocol.is_l4());
    let dynamic_l4 = policy.config.destinations.iter().any(|d| d.dynamic && d.protocol.is_l4());
    let wasm = map([
        ("name", s("envoy.filters.network.wasm")),
        (
            "typed_config",
            typed("envoy.extensions.filters.network.wasm.v3.Wasm", vec![e("config", plugin(policy, opts, ROOT_ID_L4))]),
        ),
    ]);
    let access_log = file_access_log(&opts.access_log, AUDIT_FIELDS_L4, policy.config.audit_record);
    let tcp_proxy = map([
        ("name", s("envoy.filters.network.tcp_proxy")),
        (
            "typed_config",
            typed(
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                vec![
                    e("stat_prefix", s("egress_l4")),
                    e(
                        "cluster",
                        commented(
                            "No such cluster: a connection the filter did not route (it did not run) goes nowhere. An allowed\none goes to the cluster the filter set in filter state envoy.tcp_proxy.cluster.",
                            s(UNROUTED_CLUSTER),
                        ),
                    ),
                    e(
                        "max_downstream_connection_duration",
                        commented(
                            "Bounds how long a connection keeps using a rotated-out client certificate (cf. the HTTP clusters'\nmax_connection_duration).",
                            s(format!("{}s", opts.max_connection_duration)),
                        ),
                    ),
                    e(
                        "upstream_connect_mode",
                        commented(
                            "Required by egress-identity, which holds the connection until the caller's first bytes (its\ncertificate is there by then), decides, and names the cluster before tcp_proxy picks it: in the\ndefault mode tcp_proxy stops reading until its upstream is up, and the connection would hang. The\ncaller must speak first: server-first protocols (SMTP, MySQL, ...) are not supported (README.md,\n\"L4 egress\").",
                            s("ON_DOWNSTREAM_DATA"),
                        ),
                    ),
                    e(
                        "max_early_data_bytes",
                        commented(
                            "What tcp_proxy buffers before it connects; with it, tcp_proxy keeps reading the caller (without it,\nthe connection hangs; Envoy refuses the mode above without it).",
                            int(super::EARLY_DATA_BYTES),
                        ),
                    ),
                    e("access_log", access_log),
                ],
            ),
        ),
    ]);
    commented(
        "tcp and tls (passthrough) destinations: connections, decided on their first bytes (README.md, \"L4 egress\").",
        map([
            ("name", s("egress-l4")),
        ]
        .into_iter()
        .chain(l4_addresses(policy, opts))
        .chain([
            (
                "listener_filters",
                commented(
                    "Reads the SNI of the caller's ClientHello: connection.requested_server_name, the destination's name.",
                    Yaml::Seq(vec![map([
                        ("name", s("envoy.filters.listener.tls_inspector")),
                        (
                            "typed_config",
                            typed("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", vec![]),
                        ),
                    ])]),
                ),
            ),
            ("per_connection_buffer_limit_bytes", buffer_limit()),
            (
                "filter_chains",
                Yaml::Seq(vec![map([
                    ("transport_socket_connect_timeout", handshake_timeout()),
                    ("transport_socket", downstream_tls),
                    (
                        "filters",
                        Yaml::Seq(
                            [Some(wasm), shared_l4.then(identity_filter_state_l4), dynamic_l4.then(|| forward_proxy::sni_filter(opts.dns())), Some(tcp_proxy)]
                                .into_iter()
                                .flatten()
                                .collect(),
                        ),
                    ),
                ])]),
            ),
        ])),
    )
}

/// A listener's per-connection buffer limit (edge-proxy hardening).
fn buffer_limit() -> Yaml {
    commented(
        "Bytes buffered per connection, each way (edge-proxy hardening: the edge guide's 32 KiB).",
        int(hardening::BUFFER_LIMIT_BYTES),
    )
}

/// A filter chain's handshake deadline (edge-proxy hardening).
fn handshake_timeout() -> Yaml {
    commented(
        "A caller that starts a TLS handshake and stalls is closed (edge-proxy hardening).",
        s(hardening::HANDSHAKE_TIMEOUT),
    )
}

/// The cluster of the admin interface, for the metrics listener.
const ADMIN_CLUSTER: &str = "egress-identity-admin";

/// A listener that answers `/stats/prometheus` from the admin interface and nothing else: what a
/// Prometheus scrapes (`prometheus.io/port`), without exposing the admin interface's other endpoints.
fn metrics_listener(opts: &EnvoyOptions) -> Yaml {
    let route = |prefix: &str, action: Yaml| map([("match", map([("path", s(prefix))])), ("route", action)]);
    commented(
        format!("Metrics for Prometheus: GET http://{}/stats/prometheus (the admin interface's, labels included),\nnothing else of the admin interface.", opts.metrics),
        map([
            ("name", s("metrics")),
            ("address", socket_address(&opts.metrics)),
            (
                "filter_chains",
                Yaml::Seq(vec![map([(
                    "filters",
                    Yaml::Seq(vec![map([
                        ("name", s("envoy.filters.network.http_connection_manager")),
                        (
                            "typed_config",
                            typed(
                                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                vec![
                                    e("stat_prefix", s("metrics")),
                                    e(
                                        "route_config",
                                        map([(
                                            "virtual_hosts",
                                            Yaml::Seq(vec![map([
                                                ("name", s("metrics")),
                                                ("domains", strs(["*"])),
                                                (
                                                    "routes",
                                                    Yaml::Seq(vec![
                                                        route("/stats/prometheus", map([("cluster", s(ADMIN_CLUSTER))])),
                                                    ]),
                                                ),
                                            ])]),
                                        )]),
                                    ),
                                    e(
                                        "http_filters",
                                        Yaml::Seq(vec![map([
                                            ("name", s("envoy.filters.http.router")),
                                            (
                                                "typed_config",
                                                typed("envoy.extensions.filters.http.router.v3.Router", vec![]),
                                            ),
                                        ])]),
                                    ),
                                ],
                            ),
                        ),
                    ])]),
                )])]),
            ),
        ]),
    )
}

/// The bootstrap for `policy`, as YAML text.
pub fn render(policy: &PolicyFile, opts: &EnvoyOptions) -> Result<String, RenderError> {
    let clusters = identity_clusters(policy);
    let shared = shared_clusters(policy);
    let shared_http = policy.config.destinations.iter().any(|d| d.single_cluster && !d.protocol.is_l4());
    let dynamic_http = policy.config.destinations.iter().any(|d| d.dynamic && !d.protocol.is_l4());
    let ups = upstreams(policy, opts)?;
    forward_proxy::check_allow_resolved(&opts.allow_resolved)?;
    let principal_header = policy.config.headers.principal.to_string();
    let cluster_header = policy.config.headers.cluster.to_string();
    let dir = opts.sds_dir.trim_end_matches('/');
    let opts = &EnvoyOptions { sds_dir: dir.to_string(), ..opts.clone() };
    let spire = spire(opts)?;

    let (gateway_cert, caller_validation) = match &spire {
        None => (
            sds(GATEWAY_CERT, dir),
            e(
                "validation_context_sds_secret_config",
                commented(
                    "The mesh CA bundle. During a CA rotation it holds the old and the new CA, then the new one only.",
                    sds(MESH_CA, dir),
                ),
            ),
        ),
        Some(gateway_id) => (
            commented(
                "The gateway's own X.509-SVID, from the SPIRE agent (rotated: a new secret is pushed on the stream).",
                map([("name", s(gateway_id)), ("sds_config", spire_sds_config())]),
            ),
            e(
                "combined_validation_context",
                map([
                    (
                        "default_validation_context",
                        commented(
                            "On top of SPIRE's validator: the caller must present a SPIFFE ID at all.",
                            map([(
                                "match_typed_subject_alt_names",
                                Yaml::Seq(vec![map([("san_type", s("URI")), ("matcher", map([("prefix", s("spiffe://"))]))])]),
                            )]),
                        ),
                    ),
                    (
                        "validation_context_sds_secret_config",
                        commented(
                            "SPIRE's `ALL`: Envoy's SPIFFE validator with one bundle per trust domain (own and federated), so a\nfederated CA vouches only for its own trust domain; a new one is pushed when a bundle changes.",
                            map([("name", s(SPIRE_ALL_BUNDLES)), ("sds_config", spire_sds_config())]),
                        ),
                    ),
                ]),
            ),
        ),
    };
    let downstream_tls = |alpn: bool| {
        map([
        ("name", s("envoy.transport_sockets.tls")),
        (
            "typed_config",
            typed(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                vec![
                    e(
                        "require_client_certificate",
                        commented("No client certificate, no connection: the TLS handshake fails before any HTTP request exists.", Yaml::Bool(true)),
                    ),
                    e(
                        "common_tls_context",
                        Yaml::Map(
                            [
                                alpn.then(|| e("alpn_protocols", strs(["h2", "http/1.1"]))),
                                Some(e("tls_certificate_sds_secret_configs", Yaml::Seq(vec![gateway_cert.clone()]))),
                                Some(caller_validation.clone()),
                            ]
                            .into_iter()
                            .flatten()
                            .collect(),
                        ),
                    ),
                ],
            ),
        ),
    ])
    };

    let access_log = file_access_log(&opts.access_log, AUDIT_FIELDS, policy.config.audit_record);

    let route_config = map([
        ("name", s("egress")),
        (
            "virtual_hosts",
            Yaml::Seq(vec![map([
                ("name", s("egress")),
                ("domains", strs(["*"])),
                (
                    "routes",
                    Yaml::Seq(vec![map([
                        ("match", map([("prefix", s("/"))])),
                        (
                            "route",
                            map([
                                (
                                    "cluster_header",
                                    commented(
                                        "Set by the egress-identity filter on allow; a denied request never gets here. A request\nwithout it (the filter did not run) names no cluster and fails.",
                                        s(&cluster_header),
                                    ),
                                ),
                                ("timeout", s("30s")),
                            ]),
                        ),
                        (
                            "request_headers_to_remove",
                            commented(
                                "Internal headers never leave the gateway.",
                                strs([principal_header.as_str(), cluster_header.as_str(), "x-forwarded-client-cert"]),
                            ),
                        ),
                    ])]),
                ),
            ])]),
        ),
    ]);

    let wasm = map([
        ("name", s("envoy.filters.http.wasm")),
        (
            "typed_config",
            typed("envoy.extensions.filters.http.wasm.v3.Wasm", vec![e("config", plugin(policy, opts, ROOT_ID))]),
        ),
    ]);

    let hcm = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        vec![
            e("stat_prefix", s("egress")),
            e("codec_type", s("AUTO")),
            e("use_remote_address", Yaml::Bool(true)),
            e(
                "normalize_path",
                commented(
                    "Path policies (e.g. DENY paths \"/admin*\") must see the path the partner will act on: normalize\n\".\" / \"..\" segments and \"//\", and refuse encoded slashes, before any filter runs.",
                    Yaml::Bool(true),
                ),
            ),
            e("merge_slashes", Yaml::Bool(true)),
            e("path_with_escaped_slashes_action", s("REJECT_REQUEST")),
            e(
                "proxy_100_continue",
                commented(
                    "`Expect: 100-continue` goes to the partner, which says 100 itself: the gateway does not invite the\nbody of a request the filter may deny (it answers 403 alone).",
                    Yaml::Bool(true),
                ),
            ),
            e(
                "common_http_protocol_options",
                commented(
                    "A client's x_egress_identity_cluster would reach the partner, and partners that fold '_' into '-'\n(CGI, WSGI, many frameworks) would read it as the gateway's header: refuse such requests (400).\nA connection without a request for idle_timeout is closed (Envoy's default: 1 h).",
                    map([("headers_with_underscores_action", s("REJECT_REQUEST")), hardening::connection_idle_timeout()]),
                ),
            ),
            e(
                "request_headers_timeout",
                commented(
                    "Edge-proxy hardening (README.md, \"Threat model\"): headers that never end are cut off (408), idle\nstreams end, and HTTP/2 callers get the edge guide's stream and window limits.",
                    s(hardening::REQUEST_HEADERS_TIMEOUT),
                ),
            ),
            e("stream_idle_timeout", s(hardening::STREAM_IDLE_TIMEOUT)),
            e("http2_protocol_options", hardening::http2_options()),
            e(
                "forward_client_cert_details",
                commented(
                    "Drop any client-supplied x-forwarded-client-cert; the route also removes it before forwarding.",
                    s("SANITIZE"),
                ),
            ),
            e(
                "access_log",
                commented(
                    "One JSON object per request, with the filter's audit record (README.md, \"Audit log\"); fields the\nfilter did not set (e.g. layer on allow) are null.",
                    access_log,
                ),
            ),
            e("route_config", route_config),
            e(
                "http_filters",
                Yaml::Seq(vec![
                    commented(
                        "Defense in depth: drop client-supplied copies of the internal headers before the filter runs\n(the filter removes them too).",
                        map([
                            ("name", s("envoy.filters.http.header_mutation")),
                            (
                                "typed_config",
                                typed(
                                    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                                    vec![e(
                                        "mutations",
                                        map([(
                                            "request_mutations",
                                            Yaml::Seq(vec![
                                                map([("remove", s(&principal_header))]),
                                                map([("remove", s(&cluster_header))]),
                                            ]),
                                        )]),
                                    )],
                                ),
                            ),
                        ]),
                    ),
                    wasm,
                ]
                .into_iter()
                .chain(shared_http.then(identity_filter_state))
                .chain(dynamic_http.then(|| forward_proxy::http_filter(opts.dns())))
                .chain([map([
                        ("name", s("envoy.filters.http.router")),
                        ("typed_config", typed("envoy.extensions.filters.http.router.v3.Router", vec![])),
                    ])])
                .collect()),
            ),
        ],
    );

    let listener = map([
        ("name", s("egress")),
        ("address", socket_address(&opts.listen)),
        ("per_connection_buffer_limit_bytes", buffer_limit()),
        (
            "filter_chains",
            Yaml::Seq(vec![map([
                ("transport_socket_connect_timeout", handshake_timeout()),
                ("transport_socket", downstream_tls(true)),
                (
                    "filters",
                    Yaml::Seq(vec![map([
                        ("name", s("envoy.filters.network.http_connection_manager")),
                        ("typed_config", hcm),
                    ])]),
                ),
            ])]),
        ),
    ]);

    let mut listeners = vec![listener, metrics_listener(opts)];
    if policy.config.destinations.has_l4() {
        listeners.push(l4_listener(policy, opts, downstream_tls(false)));
    }

    let mut cluster_nodes = vec![map([
        ("name", s(ADMIN_CLUSTER)),
        ("type", s("STATIC")),
        ("connect_timeout", s("1s")),
        ("load_assignment", load_assignment(ADMIN_CLUSTER, &opts.admin.host, opts.admin.port)),
    ])];
    for c in &clusters {
        let Some(up) = ups.get(&c.destination) else { continue };
        cluster_nodes.push(cluster(Presents::Identity(c), up, opts));
    }
    for c in &shared {
        let Some(up) = ups.get(&c.destination) else { continue };
        cluster_nodes.push(cluster(Presents::Shared(c), up, opts));
    }
    if let Some(agent) = &opts.spire_agent {
        cluster_nodes.push(commented(
            "The SPIRE agent's SDS (--spire-agent): the gateway's SVID and the trust bundles.",
            sds_server_cluster(SPIRE_AGENT_CLUSTER, "--spire-agent", agent)?,
        ));
    }
    match (&opts.identity_sds, shared.first()) {
        (Some(address), Some(_)) => cluster_nodes.push(commented(
            "The gRPC SDS server of the single-cluster destinations' identities (--identity-sds).",
            sds_server_cluster(IDENTITY_SDS_CLUSTER, "--identity-sds", address)?,
        )),
        (None, Some(c)) => {
            return Err(RenderError(format!(
                "destination {:?} is singleCluster: its identities' certificates come from a gRPC SDS server: give --identity-sds ADDR:PORT or unix:PATH (e.g. the SPIRE agent's socket). File SDS cannot serve them: Envoy reads one secret per file, and the cluster has one source for all its identities",
                c.destination
            )))
        }
        (Some(_), None) => {
            return Err(RenderError(
                "--identity-sds is only for singleCluster destinations, and this policy has none".into(),
            ))
        }
        (None, None) => {}
    }
    let bootstrap = commented(
        header(policy, opts, &clusters, &shared, &ups),
        map([
            ("node", map([("id", s("egress-gateway")), ("cluster", s("egress-gateway"))])),
            ("admin", map([("address", socket_address(&opts.admin))])),
            ("stats_config", super::stats_config()),
            (
                "overload_manager",
                commented(
                    "At most this many downstream connections, whatever the listener (edge-proxy hardening).",
                    hardening::overload_manager(),
                ),
            ),
            (
                "static_resources",
                map([
                    ("listeners", Yaml::Seq(listeners)),
                    (
                        "clusters",
                        commented(
                            if shared.is_empty() {
                                "One upstream cluster per external identity: same partner endpoint, different client certificate."
                            } else {
                                "One upstream cluster per external identity (same partner endpoint, different client certificate),\nor one per single-cluster destination (the certificate chosen per connection)."
                            },
                            Yaml::Seq(cluster_nodes),
                        ),
                    ),
                ]),
            ),
        ]),
    );
    Ok(to_yaml(&bootstrap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
      "trustDomains": ["cluster.local"],
      "identities": [ { "name": "x", "principals": ["*"] }, { "name": "d" } ],
      "gateway": { "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ] },
      "destinations": [
        { "name": "a", "host": "api.a.example", "port": 8443,
          "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ],
          "identities": ["x"], "defaultIdentity": "d" },
        { "name": "b", "host": "b.example", "port": 443, "identities": ["x"] }
      ]
    }"#;

    fn policy(text: &str) -> PolicyFile {
        PolicyFile::for_platform(text, &egress_identity_core::config_document::PlatformSpec::Envoy).unwrap()
    }

    #[test]
    fn one_cluster_per_identity_with_its_secret_sni_and_upstream() {
        let mut opts = EnvoyOptions::default();
        opts.upstreams.insert("b".into(), "10.0.0.7:9443".parse().unwrap());
        opts.ca_secrets.insert("a".into(), "shared-ca".into());
        let out = render(&policy(POLICY), &opts).unwrap();
        for cluster in ["- name: \"a|x\"", "- name: \"a|d\"", "- name: \"b|x\""] {
            assert_eq!(out.matches(cluster).count(), 1, "{cluster}\n{out}");
        }
        assert!(out.contains("path: sds/external-x.yaml"), "{out}");
        assert!(out.contains("path: sds/external-d.yaml"), "{out}");
        assert!(out.contains("path: sds/shared-ca.yaml"), "{out}");
        assert!(out.contains("path: sds/b-ca.yaml"), "{out}");
        assert!(out.contains("sni: api.a.example"), "{out}");
        assert!(out.contains("address: api.a.example\n") && out.contains("port_value: 8443"), "{out}");
        assert!(out.contains("type: LOGICAL_DNS") && out.contains("type: STATIC"), "{out}");
        assert!(out.contains("address: \"10.0.0.7\"\n") && out.contains("port_value: 9443"), "{out}");
        assert!(out.contains("address: \"0.0.0.0\"\n") && out.contains("port_value: 10443"), "{out}");
        assert!(out.contains("--upstream b=10.0.0.7:9443 --ca-secret a=shared-ca"), "{out}");
        // The policy, verbatim, in the one `value: |` block after the StringValue type.
        let block = format!(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n{pad}value: |\n{pad}  {{\n",
            pad = " ".repeat(18)
        );
        assert!(out.contains(&block), "{out}");
        assert!(out.contains("\"identities\": [\"x\"], \"defaultIdentity\": \"d\" },"), "{out}");
        assert!(out.contains("\"platform\": {\"kind\":\"envoy\"}"), "{out}");
        for must in [
            "failure_policy: FAIL_RELOAD",
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "headers_with_underscores_action: REJECT_REQUEST",
            "forward_client_cert_details: SANITIZE",
            "cluster_header: x-egress-identity-cluster",
            "max_connection_duration: 10s",
            "%FILTER_STATE(wasm.egress_identity.decision:TYPED)%",
        ] {
            assert!(out.contains(must), "{must}\n{out}");
        }
        let header_mutation = out.find("envoy.filters.http.header_mutation").unwrap();
        let filter = out.find("envoy.filters.http.wasm").unwrap();
        let router = out.find("envoy.filters.http.router").unwrap();
        assert!(header_mutation < filter && filter < router);
    }

    const SHARED: &str = r#"{
      "trustDomains": ["cluster.local"],
      "identities": [ { "name": "x", "principals": ["cluster.local/ns/a/*"] },
                      { "name": "y", "principals": ["*"], "certificate": { "secret": "spiffe://partner/y" } } ],
      "gateway": { "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ] },
      "destinations": [
        { "name": "s", "host": "api.s.example", "port": 443, "singleCluster": true,
          "policies": [ { "name": "all", "action": "ALLOW", "rules": [ {} ] } ],
          "identities": ["x", "y"] }
      ]
    }"#;

    #[test]
    fn a_shared_cluster_picks_the_certificate_per_connection_from_grpc_sds() {
        let opts =
            EnvoyOptions { identity_sds: Some("unix:/run/spire/sockets/agent.sock".into()), ..Default::default() };
        let out = render(&policy(SHARED), &opts).unwrap();
        for expected in [
            "name: \"s|shared\"",
            "name: envoy.tls.certificate_selectors.on_demand_secret",
            "name: envoy.tls.upstream_certificate_mappers.filter_state_override",
            "default_value: egress-identity-no-identity",
            "cluster_name: egress-identity-sds",
            "path: /run/spire/sockets/agent.sock",
            "max_session_keys: 0",
            "name: envoy.filters.http.set_filter_state",
            "object_key: envoy.tls.certificate_mappers.on_demand_secret",
            "factory_key: envoy.hashable_string",
            "inline_string: \"%FILTER_STATE(wasm.egress_identity.secret:PLAIN)%\"",
            "shared_with_upstream: ONCE",
            "# Generated by `egress-identity render envoy POLICY --identity-sds unix:/run/spire/sockets/agent.sock`",
        ] {
            assert!(out.to_lowercase().contains(&expected.to_lowercase()), "missing {expected:?}:\n{out}");
        }
        assert!(!out.contains("external-x"), "no per-identity secret file in single-cluster mode:\n{out}");
        // A policy without a shared cluster has no set_filter_state.
        assert!(!render(&policy(POLICY), &EnvoyOptions::default()).unwrap().contains("set_filter_state"));
    }

    #[test]
    fn a_shared_tcp_destination_gets_the_network_set_filter_state_between_the_filter_and_tcp_proxy() {
        let tcp = SHARED.replace(r#""name": "s", "host""#, r#""name": "s", "protocol": "tcp", "host""#);
        let opts = EnvoyOptions { identity_sds: Some("127.0.0.1:1".into()), ..Default::default() };
        let out = render(&policy(&tcp), &opts).unwrap();
        let at = |needle: &str| out.find(needle).unwrap_or_else(|| panic!("missing {needle:?}:\n{out}"));
        assert!(at("name: envoy.filters.network.wasm") < at("name: envoy.filters.network.set_filter_state"));
        assert!(at("name: envoy.filters.network.set_filter_state") < at("name: envoy.filters.network.tcp_proxy"));
        assert!(out.contains("on_new_connection:"), "{out}");
        assert!(!out.contains("envoy.filters.http.set_filter_state"), "no HTTP shared destination:\n{out}");
        assert!(out.contains("max_session_keys: 0"), "{out}");
    }

    #[test]
    fn a_shared_cluster_needs_an_sds_server() {
        let e = render(&policy(SHARED), &EnvoyOptions::default()).unwrap_err().0;
        assert!(e.contains("give --identity-sds") && e.contains("File SDS cannot serve them"), "{e}");
        let opts = EnvoyOptions { identity_sds: Some("127.0.0.1:1".into()), ..Default::default() };
        let e = render(&policy(POLICY), &opts).unwrap_err().0;
        assert!(e.contains("--identity-sds is only for singleCluster destinations"), "{e}");
        let opts = EnvoyOptions { identity_sds: Some("unix:".into()), ..Default::default() };
        assert!(render(&policy(SHARED), &opts).unwrap_err().0.contains("needs a socket path"));
    }

    #[test]
    fn many_file_sds_identity_clusters_are_warned_about() {
        assert_eq!(scale_warning(&policy(POLICY)), None);
        let names: Vec<String> = (0..=FILE_SDS_CLUSTERS_WARNING).map(|i| format!("\"i{i}\"")).collect();
        let declared: Vec<String> =
            (0..=FILE_SDS_CLUSTERS_WARNING).map(|i| format!(r#"{{ "name": "i{i}", "principals": ["*"] }}"#)).collect();
        let many = POLICY
            .replace(r#"{ "name": "x", "principals": ["*"] }, "#, &format!("{}, ", declared.join(", ")))
            .replace(
                r#""identities": ["x"], "defaultIdentity""#,
                &format!(r#""identities": [{}], "defaultIdentity""#, names.join(", ")),
            )
            .replace(
                r#""identities": ["x"] }
      ]"#,
                r#""identities": ["i0"] }
      ]"#,
            );
        let w = scale_warning(&policy(&many)).expect("a warning");
        assert!(w.contains("fs.inotify.max_user_instances") && w.contains("singleCluster"), "{w}");
    }

    #[test]
    fn options_that_name_no_destination_are_refused() {
        let mut opts = EnvoyOptions::default();
        opts.upstreams.insert("nope".into(), "1.2.3.4:1".parse().unwrap());
        let e = render(&policy(POLICY), &opts).unwrap_err();
        assert!(e.0.contains("\"nope\" is not a destination"), "{e}");
    }

    /// The L4 listener takes exactly the ports tcp/tls destinations declare: a destination no listener
    /// serves cannot be rendered.
    #[test]
    fn the_l4_listener_serves_every_tcp_and_tls_port() {
        let l4 = POLICY.replace(
            r#"{ "name": "b", "host": "b.example", "port": 443, "identities": ["x"] }"#,
            r#"{ "name": "b", "protocol": "tcp", "host": "b.example", "port": 5432, "identities": ["x"] },
               { "name": "c", "protocol": "tls", "host": "c.example", "port": 443 },
               { "name": "e", "protocol": "tcp", "host": "e.example", "port": 5432, "identities": ["x"] }"#,
        );
        let p = policy(&l4);
        assert_eq!(l4_ports(&p), [5432, 443]);
        let out = render(&p, &EnvoyOptions { l4_address: "10.0.0.1".into(), ..Default::default() }).unwrap();
        let listener = out.split("- name: egress-l4").nth(1).unwrap();
        let (first, additional) = listener.split_once("additional_addresses:").unwrap();
        assert!(first.contains("address: \"10.0.0.1\"") && first.contains("port_value: 5432"), "{listener}");
        assert!(additional.split("listener_filters").next().unwrap().contains("port_value: 443"), "{listener}");
        assert!(out.contains("- name: \"c|passthrough\""), "{out}");
    }

    /// A dynamic destination: a forward-proxy cluster per identity, without a fixed SNI or SAN, all sharing
    /// the one DNS cache with the HTTP filter and the L4 chain's sni_dynamic_forward_proxy.
    #[test]
    fn a_dynamic_destination_gets_forward_proxy_clusters_sharing_one_dns_cache() {
        let dynamic = POLICY.replace(
            r#"{ "name": "b", "host": "b.example", "port": 443, "identities": ["x"] }"#,
            r#"{ "name": "b", "host": "*.b.example", "port": [443, 8443], "identities": ["x"] },
               { "name": "t", "protocol": "tcp", "host": ["x.t.example", "y.t.example"], "port": 5432, "identities": ["x"] }"#,
        );
        let p = policy(&dynamic);
        assert_eq!(l4_ports(&p), [5432]);
        let opts = EnvoyOptions {
            dns_resolvers: vec!["127.0.0.1:5353".parse().unwrap()],
            allow_resolved: vec!["127.0.0.0/8".into()],
            ..Default::default()
        };
        let out = render(&p, &opts).unwrap();
        let cluster = |name: &str| {
            out.split(&format!("- name: \"{name}\"")).nth(1).unwrap().split("\n  - name").next().unwrap().to_string()
        };
        for name in ["b|x", "t|x"] {
            let c = cluster(name);
            assert!(
                c.contains("name: envoy.clusters.dynamic_forward_proxy") && c.contains("lb_policy: CLUSTER_PROVIDED"),
                "{c}"
            );
            assert!(c.contains("auto_sni: true") && c.contains("auto_san_validation: true"), "{c}");
            assert!(
                c.contains("path: sds/external-x.yaml") && !c.contains(" sni:") && !c.contains("load_assignment"),
                "{c}"
            );
            assert!(!c.contains("match_typed_subject_alt_names"), "{c}");
        }
        assert!(cluster("a|x").contains("sni: api.a.example"), "the exact destination is unchanged");
        // One cache, configured identically everywhere: two clusters, the HTTP filter and the L4 filter.
        let caches: Vec<&str> = out.split("dns_cache_config:\n").skip(1).collect();
        assert_eq!(caches.len(), 4, "{out}");
        assert!(caches.iter().all(|c| c.trim_start().starts_with("name: egress-identity\n")), "{out}");
        assert_eq!(out.matches("- address_prefix: \"10.0.0.0\"").count(), 4, "{out}");
        assert!(!out.contains("address_prefix: \"127.0.0.0\""), "--allow-resolved opens loopback: {out}");
        assert!(out.contains("port_value: 5353") && out.contains("envoy.network.dns_resolver.cares"), "{out}");
        let http_filters = out.split("http_filters:").nth(1).unwrap();
        let dfp = http_filters.find("envoy.filters.http.dynamic_forward_proxy").unwrap();
        assert!(
            dfp > http_filters.find("envoy.filters.http.wasm").unwrap()
                && dfp < http_filters.find("envoy.filters.http.router").unwrap()
        );
        assert!(http_filters.contains("allow_dynamic_host_from_filter_state: true"));
        let l4 = out.split("- name: egress-l4").nth(1).unwrap();
        let sni = l4.find("envoy.filters.network.sni_dynamic_forward_proxy").unwrap();
        assert!(
            sni > l4.find("envoy.filters.network.wasm").unwrap()
                && sni < l4.find("envoy.filters.network.tcp_proxy").unwrap()
        );
        assert!(out.contains("--dns-resolver 127.0.0.1:5353 --allow-resolved 127.0.0.0/8"), "{out}");

        // Without dynamic destinations, none of it.
        let plain = render(&policy(POLICY), &EnvoyOptions::default()).unwrap();
        assert!(!plain.contains("dynamic_forward_proxy") && !plain.contains("dns_cache"), "{plain}");

        // --upstream cannot pin a destination that goes where each caller asks; --allow-resolved names a range
        // that is refused by default.
        let mut pinned = EnvoyOptions::default();
        pinned.upstreams.insert("b".into(), "127.0.0.1:1".parse().unwrap());
        assert!(render(&p, &pinned).unwrap_err().0.contains("--upstream b: a destination with a wildcard"));
        let odd = EnvoyOptions { allow_resolved: vec!["10.1.0.0/16".into()], ..Default::default() };
        assert!(render(&p, &odd).unwrap_err().0.contains("--allow-resolved 10.1.0.0/16: not one of"));
    }

    #[test]
    fn host_ports_parse() {
        assert_eq!("127.0.0.1:10443".parse::<HostPort>().unwrap(), HostPort { host: "127.0.0.1".into(), port: 10443 });
        assert_eq!("[::1]:9901".parse::<HostPort>().unwrap().to_string(), "[::1]:9901");
        for bad in ["x", "x:0", "x:70000", ":80"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
        assert_eq!(name_value::<HostPort>("a=b:1").unwrap().0, "a");
        assert!(name_value::<HostPort>("a").is_err());
    }
}
