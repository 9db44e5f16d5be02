//! The plugin configuration document as JSON: the `*Spec` types, with the field names of the README's
//! configuration reference. Unknown fields are rejected (`deny_unknown_fields`), so an Istio field this
//! filter does not implement (`when`, `ipBlocks`) is an error rather than silently ignored.
//!
//! Nothing here is validated beyond the JSON types; [`crate::config::Config::compile`] does that.

use serde::Deserialize;

/// The whole plugin configuration document.
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
    #[serde(default = "default_principal_sources")]
    pub principal_sources: Vec<PrincipalSource>,
    #[serde(default)]
    pub headers: HeaderNamesSpec,
    #[serde(default = "default_port")]
    pub default_port: u16,
    #[serde(default = "default_cache_size")]
    pub certificate_cache_size: usize,
    /// Accept Kuma's legacy certificates (one `spiffe://` plus `kuma://` URI SANs).
    #[serde(default)]
    pub accept_legacy_kuma_sans: bool,
    /// How request paths are compared with `paths` values, for partners that read paths loosely.
    #[serde(default)]
    pub path_matching: PathMatchingSpec,
    /// Which forms of the audit record go to filter state (README, "Audit record").
    #[serde(default)]
    pub audit_record: AuditRecord,
    #[serde(default)]
    pub gateway: GatewaySpec,
    pub destinations: Vec<DestinationSpec>,
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

fn default_principal_sources() -> Vec<PrincipalSource> {
    vec![PrincipalSource::PeerCertificate, PrincipalSource::IstioPeerPrincipal]
}

fn default_port() -> u16 {
    443
}

fn default_cache_size() -> usize {
    1024
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub name: String,
    /// `http` (the default): requests through the HTTP filter; `tcp` / `tls`: connections through the
    /// network (L4) filter, matched by SNI and port.
    #[serde(default)]
    pub protocol: Protocol,
    pub hosts: Vec<String>,
    pub ports: Vec<u32>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    #[serde(default)]
    pub identities: Vec<IdentitySpec>,
    #[serde(default)]
    pub default_identity: Option<ExternalIdentitySpec>,
    /// Single-cluster mode: every identity of this destination goes through this one cluster, which picks
    /// the identity's client certificate (SDS secret) per upstream connection. Identities then name a
    /// `secret` (default: their name), not a `cluster`.
    #[serde(default)]
    pub shared_cluster: Option<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    pub name: String,
    /// The cluster that presents this identity (one cluster per identity); absent in single-cluster mode.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Single-cluster mode only: the SDS secret of this identity's client certificate (default: `name`).
    #[serde(default)]
    pub secret: Option<String>,
    pub principals: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalIdentitySpec {
    pub name: String,
    #[serde(default)]
    pub cluster: Option<String>,
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
    #[serde(default)]
    pub from: Vec<FromSpec>,
    #[serde(default)]
    pub to: Vec<ToSpec>,
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
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub not_ports: Vec<PortSpec>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A port in an operation: a number, or a string as Istio writes it (`"443"`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a string holding one")]
pub enum PortSpec {
    Number(u64),
    Text(String),
}
