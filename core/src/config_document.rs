//! The plugin configuration document as JSON: the `*Spec` types, with the field names of the README's
//! configuration reference. Unknown fields are rejected (`deny_unknown_fields`), so an Istio field this
//! filter does not implement (`when`, `ipBlocks`) is an error rather than silently ignored.
//!
//! Nothing here is validated beyond the JSON types; [`crate::config::Config::compile`] does that.

use serde::Deserialize;

/// The whole document: the policy a user writes and, in the plugin configuration `render` writes, the
/// `platform` it was rendered for. The policy itself is platform-neutral: destinations by the host and port
/// workloads call, identities by name; every Envoy cluster, mesh host name and listener port is derived from
/// the platform ([`crate::platform`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfigSpec {
    /// Accepted trust domains besides the local one and its aliases (federation).
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub local_trust_domain: Option<String>,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default)]
    pub headers: HeaderNamesSpec,
    /// The port of a request whose `:authority` names none (plain Envoy, where callers address the partner).
    #[serde(default = "default_port")]
    pub default_port: u16,
    #[serde(default = "default_cache_size")]
    pub certificate_cache_size: usize,
    /// How long the network filter waits for a connection's first bytes (and a `tls` passthrough's whole
    /// ClientHello) before it closes the connection undecided.
    #[serde(default = "default_decision_timeout_ms")]
    pub connection_decision_timeout_ms: u64,
    /// Accept Kuma's legacy certificates (one `spiffe://` plus `kuma://` URI SANs).
    #[serde(default)]
    pub accept_legacy_kuma_sans: bool,
    /// How request paths are compared with `paths` values, for partners that read paths loosely.
    #[serde(default)]
    pub path_matching: PathMatchingSpec,
    /// Which forms of the audit record go to filter state (README, "Audit record").
    #[serde(default)]
    pub audit_record: AuditRecord,
    /// The external identities: who they are for (principals) and what the partner sees of them.
    #[serde(default)]
    pub identities: Vec<IdentitySpec>,
    #[serde(default)]
    pub gateway: GatewaySpec,
    pub destinations: Vec<DestinationSpec>,
    /// Written by `render` into the plugin configuration, never by hand: the platform the gateway runs on.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
}

/// The platform a plugin configuration was rendered for: where the caller's principal comes from and how
/// that platform names destinations, clusters and ports ([`crate::platform::Platform`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PlatformSpec {
    /// Plain Envoy (`render envoy`): requests and connections name the partner's host and port.
    Envoy,
    /// An Istio egress gateway in sidecar mode (`render istio --mode gateway`).
    IstioGateway,
    /// An Istio ambient egress waypoint (`render istio --mode waypoint`).
    IstioWaypoint,
    /// A Kuma ZoneEgress (`render kuma`).
    #[serde(rename_all = "camelCase")]
    Kuma { mesh: String, zone: String, namespace: String, egress_port: u16 },
}

/// `auditRecord`: the forms of a decision's audit record the filter writes to filter state. Each costs a
/// host call per request or connection, and building it runs in the sandbox (BENCHMARKS.md, "The ladder").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditRecord {
    /// `wasm.egress_identity.decision`, a `google.protobuf.Struct`: `%FILTER_STATE(...:TYPED)%` renders it
    /// as a JSON object.
    #[default]
    Object,
    /// `wasm.egress_identity.audit`, one logfmt line (`%FILTER_STATE(...:PLAIN)%`).
    Line,
    /// Both.
    Both,
    /// Neither: the access log has no decision (the 403 body, the counters and the debug log still do).
    None,
}

impl AuditRecord {
    /// Whether the Struct is written.
    pub fn object(self) -> bool {
        matches!(self, Self::Object | Self::Both)
    }

    /// Whether the logfmt line is written.
    pub fn line(self) -> bool {
        matches!(self, Self::Line | Self::Both)
    }
}

/// Where the caller's principal comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalSource {
    /// The downstream TLS peer certificate (`connection.peer_certificate`).
    PeerCertificate,
    /// The filter state `io.istio.peer_principal` set by an Istio (ambient) waypoint.
    IstioPeerPrincipal,
}

fn default_port() -> u16 {
    443
}

fn default_cache_size() -> usize {
    1024
}

/// Ten seconds: a mesh client speaks within milliseconds of its handshake.
fn default_decision_timeout_ms() -> u64 {
    10_000
}

pub const DEFAULT_PRINCIPAL_HEADER: &str = "x-egress-identity-principal";
pub const DEFAULT_CLUSTER_HEADER: &str = "x-egress-identity-cluster";

/// `pathMatching`: see [`crate::request::PathMatching`].
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatchingSpec {
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub ignore_parameters: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderNamesSpec {
    #[serde(default = "default_principal_header")]
    pub principal: String,
    #[serde(default = "default_cluster_header")]
    pub cluster: String,
}

impl Default for HeaderNamesSpec {
    fn default() -> Self {
        Self { principal: default_principal_header(), cluster: default_cluster_header() }
    }
}

fn default_principal_header() -> String {
    DEFAULT_PRINCIPAL_HEADER.into()
}

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// An external destination: the partner's host and port as workloads call it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub name: String,
    /// `http` (the default): requests through the HTTP filter; `tcp` / `tls`: connections through the
    /// network (L4) filter.
    #[serde(default)]
    pub protocol: Protocol,
    /// The partner's host name, as workloads call it: an exact name, or `*.suffix` (any name under
    /// `suffix`, at any depth, as Istio's ServiceEntry hosts); or a list of them, which share the
    /// destination's policies and identities. (Not `hosts`: that was the previous format's list of platform
    /// names, which `egress-identity migrate` rewrites.)
    pub host: OneOrMany<String>,
    /// The partner's port, as workloads call it; or a list of ports, each reached as the caller asks.
    pub port: OneOrMany<u32>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// The names of the identities this destination may present, in order: the first whose principals
    /// match the caller wins.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// The identity of allowed callers no entry of `identities` matches.
    #[serde(default)]
    pub default_identity: Option<String>,
    /// Single-cluster mode: one cluster for every identity of this destination, which picks the identity's
    /// client certificate (its SDS secret) per upstream connection.
    #[serde(default)]
    pub single_cluster: bool,
    /// `tls` destinations: forward a ClientHello whose server name is encrypted (ECH, or the ESNI drafts'),
    /// checking its outer server name, which must then be `host` (the client-facing server's public name).
    /// Refused by default: the gateway cannot see which host the caller's TLS is for.
    #[serde(default)]
    pub allow_encrypted_client_hello: bool,
}

/// A value, or a list of them.
#[derive(Clone, Debug)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{value::SeqAccessDeserializer, Error, IntoDeserializer, SeqAccess, Visitor};
        struct Either<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Either<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
        }
        deserializer.deserialize_any(Either(std::marker::PhantomData))
    }
}

/// How a destination is reached, and by which of the filter's two forms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP requests, decided per request by the HTTP filter.
    #[default]
    Http,
    /// TCP connections, decided per connection by the network filter; the gateway originates mTLS to the
    /// partner with the external identity's client certificate.
    Tcp,
    /// TLS connections passed through to the partner (the caller's own TLS, end to end): the network filter
    /// decides, and checks that the ClientHello's SNI names the destination it allowed.
    Tls,
}

impl Protocol {
    /// Whether connections, not requests, are decided (the network filter's destinations).
    pub fn is_l4(self) -> bool {
        !matches!(self, Self::Http)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// An external identity: the mesh principals it is for, and the client certificate the gateway presents
/// as it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    pub name: String,
    /// Principal patterns of the callers it is for; absent for an identity only used as a
    /// `defaultIdentity`.
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    /// What the partner sees; default: the subject `CN=<name>`.
    #[serde(default)]
    pub certificate: Option<CertificateSpec>,
}

/// What an identity's client certificate carries (checked wherever certificate material meets the policy:
/// `sds`, `secrets`, `doctor`), and where a single-cluster gateway fetches it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The subject's common name.
    #[serde(default)]
    pub common_name: Option<String>,
    /// The DNS subject alternative names, all of them.
    #[serde(default)]
    pub dns_names: Option<Vec<String>>,
    /// The URI subject alternative names, all of them.
    #[serde(default)]
    pub uris: Option<Vec<String>>,
    /// Single-cluster mode: the SDS secret that holds it (default: the identity's name).
    #[serde(default)]
    pub secret: Option<String>,
}

/// An Istio-style authorization policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    pub name: String,
    pub action: Action,
    /// Evaluated, logged and counted, never enforced (Istio's `istio.io/dry-run`).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Absent: any source. An empty list is refused (it would read as "none" but mean "any").
    #[serde(default)]
    pub from: Option<Vec<FromSpec>>,
    /// Absent: any operation.
    #[serde(default)]
    pub to: Option<Vec<ToSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromSpec {
    #[serde(default)]
    pub source: SourceSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToSpec {
    #[serde(default)]
    pub operation: OperationSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub trust_domains: Option<Vec<String>>,
    #[serde(default)]
    pub not_trust_domains: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    #[serde(default)]
    pub not_ports: Option<Vec<PortSpec>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub not_paths: Option<Vec<String>>,
}

/// A port in an operation: a number, or a string as Istio writes it (`"443"`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a string holding one")]
pub enum PortSpec {
    Number(u64),
    Text(String),
}
