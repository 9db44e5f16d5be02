//! The decision for one request: request → principal → trust domain → gateway layer → destination →
//! destination layer → external identity. Every denial names the layer, the policy (if one decided) and a
//! reason code.

use std::fmt;

use crate::config::Config;
use crate::config_document::Protocol;
use crate::identity_mapping::ExternalIdentity;
use crate::peer_certificate::CertificateError;
use crate::policy::{Attributes, Verdict};
use crate::principal::PrincipalError;
use crate::request::Request;
use crate::request::{matching_path, normalize_host, normalize_method, split_authority};
use crate::spiffe_id::SpiffeId;

/// The layer that decided a denial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The request itself cannot be evaluated (e.g. a header that is not UTF-8).
    Request,
    Principal,
    Gateway,
    Destination,
    Identity,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Principal => "principal",
            Self::Gateway => "gateway",
            Self::Destination => "destination",
            Self::Identity => "identity",
        }
    }
}

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `:authority` is not `host[:port]` with a port from 1 to 65535, or a header the decision reads is not
    /// UTF-8: fail closed rather than match a mangled value.
    MalformedRequest,
    /// A connection the network filter could not decide in time (no first bytes, or no whole ClientHello,
    /// before `connectionDecisionTimeoutMs`).
    DecisionTimeout,
    Principal(PrincipalError),
    /// The caller's SPIFFE ID has no path: it names a trust domain, not a workload (X509-SVID 5.2).
    TrustDomainId,
    UntrustedTrustDomain,
    UnknownDestination,
    /// The destination is declared for the other filter: an HTTP request to a `tcp`/`tls` destination, or a
    /// connection to an `http` one.
    ProtocolMismatch,
    /// A `tls` passthrough connection whose ClientHello names another host than the SNI the decision
    /// allowed (or none): tunnelling to another host under an allowed name.
    SniMismatch,
    /// A `tls` passthrough ClientHello whose server_name lists more than one name.
    MultipleServerNames,
    /// A `tls` passthrough ClientHello with more than one server_name extension.
    MultipleSniExtensions,
    /// A `tls` passthrough ClientHello whose server name is of another type than host_name.
    ServerNameNotHostName,
    /// A `tls` passthrough ClientHello that encrypts its server name (ECH, ESNI), to a destination that does
    /// not allow it.
    EncryptedClientHello,
    DeniedByPolicy,
    NoMatchingAllow,
    NoIdentityMapping,
}

/// A denial: which layer, which policy (if a DENY policy decided) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial<'c> {
    pub layer: Layer,
    pub policy: Option<&'c str>,
    pub reason: Reason,
}

impl Denial<'_> {
    /// The JSON body of the 403 response.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "decision": "deny",
            "layer": self.layer.as_str(),
            "policy": self.policy,
            "reason": self.reason_code(),
        })
        .to_string()
    }
}

impl fmt::Display for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deny layer={} policy={} reason={}",
            self.layer.as_str(),
            self.policy.unwrap_or("-"),
            self.reason_code()
        )
    }
}

impl Denial<'_> {
    /// The stable reason code of the deny response, logs and metrics.
    pub fn reason_code(&self) -> &'static str {
        self.kind().reason_code()
    }

    /// The (layer, reason) of this denial, one of [`DenialKind::ALL`].
    pub fn kind(&self) -> DenialKind {
        use DenialKind as K;
        let policy_layer = |gateway, destination| if self.layer == Layer::Gateway { gateway } else { destination };
        match self.reason {
            Reason::MalformedRequest => K::MalformedRequest,
            Reason::DecisionTimeout => K::DecisionTimeout,
            Reason::Principal(PrincipalError::Missing) => K::NoPrincipal,
            Reason::Principal(PrincipalError::Certificate(e)) => match e {
                CertificateError::Unparsable => K::UnparsableCertificate,
                CertificateError::NoUriSan => K::NoUriSan,
                CertificateError::MultipleUriSans => K::MultipleUriSans,
                CertificateError::InvalidSpiffeId(_) => K::InvalidSpiffeId,
                CertificateError::CaCertificate => K::CaCertificate,
                CertificateError::KeyUsage => K::InvalidKeyUsage,
            },
            Reason::Principal(PrincipalError::InvalidSpiffeId(_)) => K::InvalidSpiffeId,
            Reason::TrustDomainId => K::TrustDomainId,
            Reason::UntrustedTrustDomain => K::UntrustedTrustDomain,
            Reason::DeniedByPolicy => policy_layer(K::GatewayDeniedByPolicy, K::DestinationDeniedByPolicy),
            Reason::NoMatchingAllow => policy_layer(K::GatewayNoMatchingAllow, K::DestinationNoMatchingAllow),
            Reason::UnknownDestination => K::UnknownDestination,
            Reason::ProtocolMismatch => K::ProtocolMismatch,
            Reason::SniMismatch => K::SniMismatch,
            Reason::MultipleServerNames => K::MultipleServerNames,
            Reason::MultipleSniExtensions => K::MultipleSniExtensions,
            Reason::ServerNameNotHostName => K::ServerNameNotHostName,
            Reason::EncryptedClientHello => K::EncryptedClientHello,
            Reason::NoIdentityMapping => K::NoIdentityMapping,
        }
    }
}

/// Every (layer, reason) a denial can have, numbered densely so that the adapter keeps one counter per
/// kind in a plain array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenialKind {
    MalformedRequest,
    DecisionTimeout,
    NoPrincipal,
    UnparsableCertificate,
    NoUriSan,
    MultipleUriSans,
    InvalidSpiffeId,
    CaCertificate,
    InvalidKeyUsage,
    TrustDomainId,
    UntrustedTrustDomain,
    GatewayDeniedByPolicy,
    GatewayNoMatchingAllow,
    UnknownDestination,
    ProtocolMismatch,
    SniMismatch,
    MultipleServerNames,
    MultipleSniExtensions,
    ServerNameNotHostName,
    EncryptedClientHello,
    DestinationDeniedByPolicy,
    DestinationNoMatchingAllow,
    NoIdentityMapping,
}

impl DenialKind {
    /// Every kind, in index order.
    pub const ALL: [Self; 23] = [
        Self::MalformedRequest,
        Self::DecisionTimeout,
        Self::NoPrincipal,
        Self::UnparsableCertificate,
        Self::NoUriSan,
        Self::MultipleUriSans,
        Self::InvalidSpiffeId,
        Self::CaCertificate,
        Self::InvalidKeyUsage,
        Self::TrustDomainId,
        Self::UntrustedTrustDomain,
        Self::GatewayDeniedByPolicy,
        Self::GatewayNoMatchingAllow,
        Self::UnknownDestination,
        Self::ProtocolMismatch,
        Self::SniMismatch,
        Self::MultipleServerNames,
        Self::MultipleSniExtensions,
        Self::ServerNameNotHostName,
        Self::EncryptedClientHello,
        Self::DestinationDeniedByPolicy,
        Self::DestinationNoMatchingAllow,
        Self::NoIdentityMapping,
    ];

    /// The position of this kind in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn layer(self) -> Layer {
        match self {
            Self::MalformedRequest | Self::DecisionTimeout => Layer::Request,
            Self::NoPrincipal
            | Self::UnparsableCertificate
            | Self::NoUriSan
            | Self::MultipleUriSans
            | Self::InvalidSpiffeId
            | Self::CaCertificate
            | Self::InvalidKeyUsage
            | Self::TrustDomainId
            | Self::UntrustedTrustDomain => Layer::Principal,
            Self::GatewayDeniedByPolicy | Self::GatewayNoMatchingAllow => Layer::Gateway,
            Self::UnknownDestination
            | Self::ProtocolMismatch
            | Self::SniMismatch
            | Self::MultipleServerNames
            | Self::MultipleSniExtensions
            | Self::ServerNameNotHostName
            | Self::EncryptedClientHello
            | Self::DestinationDeniedByPolicy
            | Self::DestinationNoMatchingAllow => Layer::Destination,
            Self::NoIdentityMapping => Layer::Identity,
        }
    }

    /// The reason code, as in the deny response.
    pub fn reason_code(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::DecisionTimeout => "decision_timeout",
            Self::NoPrincipal => "no_principal",
            Self::UnparsableCertificate => "unparsable_certificate",
            Self::NoUriSan => "no_uri_san",
            Self::MultipleUriSans => "multiple_uri_sans",
            Self::InvalidSpiffeId => "invalid_spiffe_id",
            Self::CaCertificate => "ca_certificate",
            Self::InvalidKeyUsage => "invalid_key_usage",
            Self::TrustDomainId => "trust_domain_id",
            Self::UntrustedTrustDomain => "untrusted_trust_domain",
            Self::GatewayDeniedByPolicy | Self::DestinationDeniedByPolicy => "denied_by_policy",
            Self::GatewayNoMatchingAllow | Self::DestinationNoMatchingAllow => "no_matching_allow",
            Self::UnknownDestination => "unknown_destination",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::SniMismatch => "sni_mismatch",
            Self::MultipleServerNames => "multiple_server_names",
            Self::MultipleSniExtensions => "multiple_sni_extensions",
            Self::ServerNameNotHostName => "server_name_not_host_name",
            Self::EncryptedClientHello => "encrypted_client_hello",
            Self::NoIdentityMapping => "no_identity_mapping",
        }
    }
}

/// An allowed request: the policies that allowed it and the external identity to present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed<'c> {
    pub destination: &'c str,
    /// The destination's (partner's) host: a `tls` passthrough's ClientHello must name it. A dynamic
    /// destination's first declared host: the concrete one is the request's ([`Evaluation::dynamic_port`]).
    pub host: &'c str,
    /// The partner's port the upstream connects to: the destination's, or the concrete one the caller asked
    /// for of a dynamic destination.
    pub port: u16,
    /// A dynamic destination (a wildcard, several hosts or ports): the upstream is the concrete host and
    /// port, which the adapter hands Envoy's dynamic forward proxy.
    pub dynamic: bool,
    /// How the destination is reached (for the network filter: `tcp` or `tls` passthrough).
    pub protocol: Protocol,
    /// A `tls` destination that forwards an encrypted ClientHello on its outer server name.
    pub allow_encrypted_client_hello: bool,
    pub gateway_policy: &'c str,
    pub destination_policy: &'c str,
    pub identity: &'c ExternalIdentity,
}

impl<'c> Allowed<'c> {
    /// The partner's host this request or connection is for: the destination's, or, for a dynamic destination,
    /// `concrete` (the request's host, or the connection's SNI, normalized). A `tls` passthrough's ClientHello
    /// must name it.
    pub fn partner_host<'a>(&self, concrete: &'a str) -> &'a str
    where
        'c: 'a,
    {
        if self.dynamic {
            concrete
        } else {
            self.host
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'c> {
    Allow(Allowed<'c>),
    Deny(Denial<'c>),
}

fn deny(layer: Layer, policy: Option<&str>, reason: Reason) -> Decision<'_> {
    Decision::Deny(Denial { layer, policy, reason })
}

/// The decision and what each layer said on the way: for `explain`, metrics and the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation<'c> {
    pub decision: Decision<'c>,
    /// The gateway layer's verdict, if it was reached.
    pub gateway: Option<Verdict<'c>>,
    /// The destination the request addressed, if one is declared for its host:port.
    pub destination: Option<&'c str>,
    /// The concrete port, when that destination is dynamic: its policies saw the request's own host and
    /// this port, and the audit record names both.
    pub dynamic_port: Option<u16>,
    /// The destination layer's verdict, if it was reached.
    pub destination_verdict: Option<Verdict<'c>>,
    /// Verdicts with dry-run policies enforced too, for layers that were reached and have any.
    pub gateway_shadow: Option<Verdict<'c>>,
    pub destination_shadow: Option<Verdict<'c>>,
}

impl Evaluation<'_> {
    /// An evaluation that reached no layer (decided before the policies, e.g. a malformed request).
    pub fn of(decision: Decision<'_>) -> Evaluation<'_> {
        Evaluation {
            decision,
            gateway: None,
            destination: None,
            dynamic_port: None,
            destination_verdict: None,
            gateway_shadow: None,
            destination_shadow: None,
        }
    }

    /// Whether dry-run policies would have denied (`Some(false)`) or allowed (`Some(true)`) the request
    /// at every layer they were evaluated in; `None` when no dry-run policy was evaluated.
    pub fn shadow_allowed(&self) -> Option<bool> {
        match (self.gateway_shadow, self.destination_shadow) {
            (None, None) => None,
            (g, d) => Some(g.is_none_or(|v| v.is_allow()) && d.is_none_or(|v| v.is_allow())),
        }
    }
}

impl Config {
    /// Decides one request from the caller's principal (or why there is none).
    pub fn decide<'c>(&'c self, principal: Result<&SpiffeId, PrincipalError>, request: &Request<'_>) -> Decision<'c> {
        self.evaluate(principal, request).decision
    }

    /// Decides one request and reports each layer's verdict, dry-run (shadow) verdicts included.
    pub fn evaluate<'c>(
        &'c self,
        principal: Result<&SpiffeId, PrincipalError>,
        request: &Request<'_>,
    ) -> Evaluation<'c> {
        // The documented order: the request, then the principal, then the layers.
        let (Some((host, port)), Some(path)) =
            (split_authority(request.authority), matching_path(request.path, self.path_matching))
        else {
            return Evaluation::of(deny(Layer::Request, None, Reason::MalformedRequest));
        };
        let method = normalize_method(request.method);
        self.evaluate_target(principal, Target { host, port, method: &method, path: &path, l4: false })
    }

    /// Decides one L4 connection (the network filter): its SNI and destination port stand for the request's
    /// host and port; it has no method and no path. Only `tcp` / `tls` destinations take connections.
    pub fn evaluate_connection<'c>(
        &'c self,
        principal: Result<&SpiffeId, PrincipalError>,
        sni: &str,
        port: u16,
    ) -> Evaluation<'c> {
        let Some(host) = normalize_host(sni) else {
            return Evaluation::of(deny(Layer::Request, None, Reason::MalformedRequest));
        };
        self.evaluate_target(principal, Target { host, port: Some(port), method: "", path: "", l4: true })
    }

    fn evaluate_target<'c>(
        &'c self,
        principal: Result<&SpiffeId, PrincipalError>,
        target: Target<'_>,
    ) -> Evaluation<'c> {
        let principal = match principal {
            Ok(p) => p,
            Err(e) => return Evaluation::of(deny(Layer::Principal, None, Reason::Principal(e))),
        };
        // X509-SVID 5.2: a caller's SPIFFE ID names a workload, never a whole trust domain.
        if principal.path().is_empty() {
            return Evaluation::of(deny(Layer::Principal, None, Reason::TrustDomainId));
        }
        if !self.trust_domains.accepts(principal.trust_domain()) {
            return Evaluation::of(deny(Layer::Principal, None, Reason::UntrustedTrustDomain));
        }
        let canonical_principal = self.trust_domains.canonical_principal(principal);
        // The destination as the platform delivered it; policies compare the partner's host and port, as
        // the policy names them, whatever the platform's own names for it.
        let found = self.destinations.lookup(&target.host, target.port);
        let (host, port) = match found {
            Some((d, _)) if !d.dynamic => (&*d.host, d.port),
            Some((_, partner_port)) => (&*target.host, partner_port),
            None => (&*target.host, target.port.unwrap_or(self.default_port)),
        };
        let attributes = Attributes {
            principal: &canonical_principal,
            trust_domain: self.trust_domains.canonical(principal.trust_domain()),
            namespace: principal.namespace(),
            host,
            port,
            method: target.method,
            path: target.path,
        };

        let mut evaluation = Evaluation::of(deny(Layer::Gateway, None, Reason::NoMatchingAllow));
        let gateway = self.gateway.evaluate(&attributes);
        evaluation.gateway = Some(gateway);
        evaluation.gateway_shadow = self.gateway.evaluate_shadow(&attributes);
        let Verdict::Allow { policy: gateway_policy, .. } = gateway else {
            evaluation.decision = denied_by(Layer::Gateway, gateway);
            return evaluation;
        };
        let Some((destination, _)) = found else {
            evaluation.decision = deny(Layer::Destination, None, Reason::UnknownDestination);
            return evaluation;
        };
        evaluation.destination = Some(&destination.name);
        evaluation.dynamic_port = destination.dynamic.then_some(port);
        // An HTTP request to a tcp/tls destination, or a connection to an HTTP one: the other filter's.
        if destination.protocol.is_l4() != target.l4 {
            evaluation.decision = deny(Layer::Destination, None, Reason::ProtocolMismatch);
            return evaluation;
        }
        let verdict = destination.policies.evaluate(&attributes);
        evaluation.destination_verdict = Some(verdict);
        evaluation.destination_shadow = destination.policies.evaluate_shadow(&attributes);
        let Verdict::Allow { policy: destination_policy, .. } = verdict else {
            evaluation.decision = denied_by(Layer::Destination, verdict);
            return evaluation;
        };
        evaluation.decision = match destination.identities.select(attributes.principal) {
            Some(identity) => Decision::Allow(Allowed {
                destination: &destination.name,
                host: &destination.host,
                port,
                dynamic: destination.dynamic,
                protocol: destination.protocol,
                allow_encrypted_client_hello: destination.allow_encrypted_client_hello,
                gateway_policy,
                destination_policy,
                identity,
            }),
            None => deny(Layer::Identity, None, Reason::NoIdentityMapping),
        };
        evaluation
    }
}

impl Config {
    /// For a `tls` passthrough connection allowed to a destination whose partner is `host`: whether its
    /// ClientHello, as far as it has arrived, names that host (the gateway forwards the caller's own TLS, so
    /// a ClientHello naming another host would tunnel to it under an allowed name), and names it alone: two
    /// names, two server_name extensions or another name type leave the choice to the partner, and an
    /// encrypted ClientHello hides it (unless the destination allows ECH: then its outer name is checked).
    /// The connection's SNI named the destination as the platform delivers it (Kuma: `sni.extsvc…`); the
    /// ClientHello inside names the partner.
    pub fn passthrough_verdict(
        &self,
        host: &str,
        allow_encrypted: bool,
        hello: &crate::tls_client_hello::ClientHello,
    ) -> PassthroughVerdict {
        use crate::tls_client_hello::ClientHello;
        let deny = |reason| PassthroughVerdict::Deny(Denial { layer: Layer::Destination, policy: None, reason });
        let named = |name: Option<&str>| match name.and_then(normalize_host) {
            Some(named) if named == host => PassthroughVerdict::Allow,
            _ => deny(Reason::SniMismatch),
        };
        match hello {
            ClientHello::Incomplete => PassthroughVerdict::Wait,
            ClientHello::NotClientHello => PassthroughVerdict::Deny(Denial {
                layer: Layer::Request,
                policy: None,
                reason: Reason::MalformedRequest,
            }),
            ClientHello::ServerName(name) => named(Some(name)),
            ClientHello::NoServerName => named(None),
            ClientHello::MultipleServerNames => deny(Reason::MultipleServerNames),
            ClientHello::MultipleServerNameExtensions => deny(Reason::MultipleSniExtensions),
            ClientHello::NotHostName => deny(Reason::ServerNameNotHostName),
            ClientHello::Encrypted(name) if allow_encrypted => named(name.as_deref()),
            ClientHello::Encrypted(_) => deny(Reason::EncryptedClientHello),
        }
    }
}

/// See [`Config::passthrough_verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassthroughVerdict {
    /// The ClientHello has not fully arrived.
    Wait,
    Allow,
    Deny(Denial<'static>),
}

/// What the layers compare: a request's host, port, method and path, or a connection's SNI and port.
struct Target<'r> {
    host: std::borrow::Cow<'r, str>,
    /// `None`: a request whose `:authority` names no port.
    port: Option<u16>,
    method: &'r str,
    path: &'r str,
    l4: bool,
}

fn denied_by(layer: Layer, verdict: Verdict<'_>) -> Decision<'_> {
    match verdict {
        Verdict::DeniedByPolicy { policy, .. } => deny(layer, Some(policy), Reason::DeniedByPolicy),
        Verdict::NoMatchingAllow | Verdict::Allow { .. } => deny(layer, None, Reason::NoMatchingAllow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::EXAMPLE;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn config() -> Config {
        Config::load(EXAMPLE.as_bytes()).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn get(authority: &str, path: &str) -> Request<'static> {
        Request { authority: Box::leak(authority.into()), method: "GET", path: Box::leak(path.into()) }
    }

    fn denial(d: Decision<'_>) -> (Layer, Option<String>, &'static str) {
        match d {
            Decision::Deny(d) => (d.layer, d.policy.map(String::from), d.reason_code()),
            Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn app1_and_app2_get_their_own_external_identity() {
        let c = config();
        for (who, cluster) in [("app1", "partner-api|team-app1"), ("app2", "partner-api|team-app2")] {
            let p = id(&format!("spiffe://cluster.local/ns/team/sa/{who}"));
            match c.decide(Ok(&p), &get("api.partner.example", "/v1/items?x=1")) {
                Decision::Allow(a) => {
                    assert_eq!(&*a.identity.cluster, cluster);
                    assert_eq!(a.gateway_policy, "allow-mesh-workloads");
                    assert_eq!(a.destination_policy, "allow-team-apps");
                    assert_eq!(a.destination, "partner-api");
                }
                d => panic!("{who}: {d:?}"),
            }
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn each_layer_denies_with_its_reason() {
        let c = config();
        let app1 = id("spiffe://cluster.local/ns/team/sa/app1");
        let ok = get("api.partner.example", "/v1");
        assert_eq!(denial(c.decide(Err(PrincipalError::Missing), &ok)), (Layer::Principal, None, "no_principal"));
        assert_eq!(
            denial(c.decide(Err(PrincipalError::Certificate(CertificateError::MultipleUriSans)), &ok)),
            (Layer::Principal, None, "multiple_uri_sans")
        );
        let foreign = id("spiffe://evil.example/ns/team/sa/app1");
        assert_eq!(denial(c.decide(Ok(&foreign), &ok)), (Layer::Principal, None, "untrusted_trust_domain"));
        let sandbox = id("spiffe://cluster.local/ns/sandbox/sa/intruder");
        assert_eq!(denial(c.decide(Ok(&sandbox), &ok)), (Layer::Gateway, None, "no_matching_allow"));
        let quarantined = id("spiffe://cluster.local/ns/quarantine/sa/app1");
        assert_eq!(
            denial(c.decide(Ok(&quarantined), &ok)),
            (Layer::Gateway, Some("deny-quarantine".into()), "denied_by_policy")
        );
        assert_eq!(
            denial(c.decide(Ok(&app1), &get("unknown.example", "/"))),
            (Layer::Destination, None, "unknown_destination")
        );
        assert_eq!(
            denial(c.decide(Ok(&app1), &get("api.partner.example:8443", "/"))),
            (Layer::Destination, None, "unknown_destination")
        );
        let app3 = id("spiffe://cluster.local/ns/team/sa/app3");
        assert_eq!(denial(c.decide(Ok(&app3), &ok)), (Layer::Destination, None, "no_matching_allow"));
        assert_eq!(
            denial(c.decide(Ok(&app1), &get("api.partner.example", "/admin/users"))),
            (Layer::Destination, Some("deny-admin-paths".into()), "denied_by_policy")
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_malformed_authority_is_decided_before_the_principal_and_the_layers() {
        let c = config();
        let sandbox = id("spiffe://cluster.local/ns/sandbox/sa/intruder");
        for authority in ["api.partner.example:abc", "api.partner.example:0", ":443", ""] {
            let request = get(authority, "/");
            for principal in [Ok(&sandbox), Err(PrincipalError::Missing)] {
                let e = c.evaluate(principal, &request);
                assert_eq!(denial(e.decision), (Layer::Request, None, "malformed_request"), "{authority:?}");
                assert_eq!(e.gateway, None, "no layer ran for {authority:?}");
            }
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn allowed_caller_without_mapping_is_denied_at_identity_layer() {
        let json = EXAMPLE.replace("\"cluster.local/ns/team/sa/app2\"] }", "\"cluster.local/ns/team/sa/other\"] }");
        let c = Config::load(json.as_bytes()).unwrap();
        let app2 = id("spiffe://cluster.local/ns/team/sa/app2");
        assert_eq!(
            denial(c.decide(Ok(&app2), &get("api.partner.example", "/"))),
            (Layer::Identity, None, "no_identity_mapping")
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn workload_keeps_policy_matches_and_identity_across_a_trust_domain_migration() {
        // Policies name the placeholder (cluster.local), the old and the new trust domain.
        let json = EXAMPLE
            .replace(r#""trustDomains": ["cluster.local"]"#,
                     r#""localTrustDomain": "example.org", "trustDomainAliases": ["example.com"], "trustDomains": ["partner.example"]"#)
            .replace(r#""spiffe://cluster.local/ns/team/sa/app2"]"#, r#""spiffe://example.com/ns/team/sa/app2"]"#)
            .replace(r#""cluster.local/ns/team/sa/app2"]"#, r#""example.org/ns/team/sa/app2"]"#);
        let c = Config::load(json.as_bytes()).unwrap();
        for td in ["example.com", "example.org"] {
            for (who, cluster) in [("app1", "partner-api|team-app1"), ("app2", "partner-api|team-app2")] {
                let p = id(&format!("spiffe://{td}/ns/team/sa/{who}"));
                match c.decide(Ok(&p), &get("api.partner.example", "/v1")) {
                    Decision::Allow(a) => assert_eq!(&*a.identity.cluster, cluster, "{td} {who}"),
                    d => panic!("{td} {who}: {d:?}"),
                }
            }
        }
        // A federated trust domain is accepted but is not the local family: its app1 matches nothing.
        let fed = id("spiffe://partner.example/ns/team/sa/app1");
        assert_eq!(denial(c.decide(Ok(&fed), &get("api.partner.example", "/v1"))).2, "no_matching_allow");
        // cluster.local itself is only a placeholder, not a trusted trust domain here.
        let literal = id("spiffe://cluster.local/ns/team/sa/app1");
        assert_eq!(denial(c.decide(Ok(&literal), &get("api.partner.example", "/v1"))).2, "untrusted_trust_domain");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn dry_run_policies_are_evaluated_but_never_enforced() {
        // A dry-run DENY for app1 at the gateway, a dry-run ALLOW for app3 at the destination.
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        doc["gateway"]["policies"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "shadow-deny-app1", "action": "DENY", "dryRun": true,
             "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/team/sa/app1"]}}]}]}));
        doc["destinations"][0]["policies"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "shadow-allow-app3", "action": "ALLOW", "dryRun": true,
             "rules": [{}, {"from": [{"source": {"principals": ["cluster.local/ns/team/sa/app3"]}}]}]}));
        let c = Config::load(doc.to_string().as_bytes()).unwrap();
        let req = get("api.partner.example", "/v1");

        let app1 = id("spiffe://cluster.local/ns/team/sa/app1");
        let e = c.evaluate(Ok(&app1), &req);
        assert!(matches!(e.decision, Decision::Allow(_)), "dry-run DENY is not enforced: {e:?}");
        assert_eq!(e.gateway_shadow, Some(Verdict::DeniedByPolicy { policy: "shadow-deny-app1", rule: 0 }));
        assert_eq!(e.shadow_allowed(), Some(false));

        let app3 = id("spiffe://cluster.local/ns/team/sa/app3");
        let e = c.evaluate(Ok(&app3), &req);
        assert_eq!(
            denial(e.decision),
            (Layer::Destination, None, "no_matching_allow"),
            "dry-run ALLOW is not enforced"
        );
        assert_eq!(e.destination_shadow, Some(Verdict::Allow { policy: "shadow-allow-app3", rule: 0 }));
        assert_eq!(e.gateway_shadow, Some(Verdict::Allow { policy: "allow-mesh-workloads", rule: 0 }));
        assert_eq!(e.shadow_allowed(), Some(true));

        let app2 = id("spiffe://cluster.local/ns/team/sa/app2");
        let e = c.evaluate(Ok(&app2), &req);
        assert_eq!(e.shadow_allowed(), Some(true));
        assert_eq!(e.destination, Some("partner-api"));
        assert_eq!(e.gateway, Some(Verdict::Allow { policy: "allow-mesh-workloads", rule: 0 }));
        assert_eq!(config().evaluate(Ok(&app2), &req).shadow_allowed(), None, "no dry-run policies");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_wildcard_destination_decides_on_the_concrete_host_and_port() {
        let c = Config::load(
            br#"{ "trustDomains": ["cluster.local"],
              "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] } ],
              "gateway": { "policies": [ { "name": "mesh", "action": "ALLOW", "rules": [ {} ] } ] },
              "destinations": [ { "name": "partner", "host": "*.partner.example", "port": [443, 8443],
                "policies": [
                  { "name": "not-b", "action": "DENY", "rules": [ { "to": [ { "operation": { "hosts": ["b.partner.example"] } } ] } ] },
                  { "name": "no-8443-for-c", "action": "DENY", "rules": [ { "to": [ { "operation": { "hosts": ["c.partner.example"], "ports": [8443] } } ] } ] },
                  { "name": "team", "action": "ALLOW", "rules": [ {} ] } ],
                "identities": ["team.app1"] } ] }"#,
        )
        .unwrap();
        let app1 = id("spiffe://cluster.local/ns/team/sa/app1");
        let allowed = |authority: &str| match c.decide(Ok(&app1), &get(authority, "/")) {
            Decision::Allow(a) => Some((a.destination, a.port, a.dynamic)),
            Decision::Deny(_) => None,
        };
        assert_eq!(allowed("A.partner.example"), Some(("partner", 443, true)));
        assert_eq!(allowed("a.partner.example:8443"), Some(("partner", 8443, true)));
        assert_eq!(allowed("c.partner.example:443"), Some(("partner", 443, true)));
        let e = c.evaluate(Ok(&app1), &get("B.partner.example:8443", "/"));
        assert_eq!(denial(e.decision), (Layer::Destination, Some("not-b".into()), "denied_by_policy"));
        assert_eq!((e.destination, e.dynamic_port), (Some("partner"), Some(8443)));
        let e = c.evaluate(Ok(&app1), &get("c.partner.example:8443", "/"));
        assert_eq!(denial(e.decision), (Layer::Destination, Some("no-8443-for-c".into()), "denied_by_policy"));
        assert_eq!(denial(c.decide(Ok(&app1), &get("c.partner.example:9443", "/"))).2, "unknown_destination");
        let line = crate::audit::record(&e, app1.as_str(), "c.partner.example");
        assert!(
            line.contains(
                " destination=partner host=c.partner.example port=8443 layer=destination policy=no-8443-for-c"
            ),
            "{line}"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn denial_json_names_layer_policy_and_reason() {
        let d = Denial { layer: Layer::Gateway, policy: Some("deny \"x\""), reason: Reason::DeniedByPolicy };
        let v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"decision": "deny", "layer": "gateway", "policy": "deny \"x\"", "reason": "denied_by_policy"})
        );
        let d = Denial { layer: Layer::Principal, policy: None, reason: Reason::Principal(PrincipalError::Missing) };
        assert_eq!(d.to_string(), "deny layer=principal policy=- reason=no_principal");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_passthrough_client_hello_must_name_the_allowed_partner() {
        use crate::tls_client_hello::ClientHello;
        let config = Config::load(
            br#"{ "trustDomains": ["cluster.local"], "destinations": [
              { "name": "files", "protocol": "tls", "host": "files.partner.example", "port": 443 },
              { "name": "db", "protocol": "tls", "host": "db.partner.example", "port": 443 } ] }"#,
        )
        .unwrap();
        let files = "files.partner.example";
        let verdict = |name: &str| config.passthrough_verdict(files, false, &ClientHello::ServerName(name.into()));
        assert_eq!(verdict("files.partner.example"), PassthroughVerdict::Allow);
        assert_eq!(verdict("FILES.partner.example."), PassthroughVerdict::Allow);
        let mismatch =
            PassthroughVerdict::Deny(Denial { layer: Layer::Destination, policy: None, reason: Reason::SniMismatch });
        // Another destination's host, an unknown one: tunnelling under the allowed name.
        assert_eq!(verdict("db.partner.example"), mismatch);
        assert_eq!(verdict("evil.example"), mismatch);
        assert_eq!(config.passthrough_verdict(files, false, &ClientHello::NoServerName), mismatch);
        assert_eq!(config.passthrough_verdict(files, false, &ClientHello::Incomplete), PassthroughVerdict::Wait);
        // A name the partner would have to choose from, or that is hidden.
        let denied = |reason| PassthroughVerdict::Deny(Denial { layer: Layer::Destination, policy: None, reason });
        for (hello, reason) in [
            (ClientHello::MultipleServerNames, Reason::MultipleServerNames),
            (ClientHello::MultipleServerNameExtensions, Reason::MultipleSniExtensions),
            (ClientHello::NotHostName, Reason::ServerNameNotHostName),
            (ClientHello::Encrypted(Some(files.into())), Reason::EncryptedClientHello),
        ] {
            assert_eq!(config.passthrough_verdict(files, false, &hello), denied(reason), "{hello:?}");
        }
        // A destination that allows ECH checks the outer name; ambiguity is refused all the same.
        let ech = |name: Option<&str>| ClientHello::Encrypted(name.map(str::to_string));
        assert_eq!(config.passthrough_verdict(files, true, &ech(Some(files))), PassthroughVerdict::Allow);
        assert_eq!(config.passthrough_verdict(files, true, &ech(Some("db.partner.example"))), mismatch);
        assert_eq!(config.passthrough_verdict(files, true, &ech(None)), mismatch);
        let two = ClientHello::MultipleServerNames;
        assert_eq!(config.passthrough_verdict(files, true, &two), denied(Reason::MultipleServerNames));
    }

    /// Behind a mesh the gateway receives a destination under the mesh's names (Kuma: the MeshExternalService's
    /// hostname on port 80, the zone egress SNI on its port); the policies still compare the partner's host
    /// and port, as the policy names them.
    #[wasm_bindgen_test(unsupported = test)]
    fn policies_see_the_partners_host_and_port_whatever_the_platform_calls_them() {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        doc["gateway"]["policies"] = serde_json::json!([{"name": "partner-only", "action": "ALLOW",
            "rules": [{"to": [{"operation": {"hosts": ["api.partner.example"], "ports": [443]}}]}]}]);
        doc["destinations"].as_array_mut().unwrap().push(serde_json::json!({"name": "partner-db", "protocol": "tcp",
            "host": "db.partner.example", "port": 5432, "identities": ["team.app1"],
            "policies": [{"name": "db-port", "action": "ALLOW", "rules": [{"to": [{"operation": {"ports": [5432]}}]}]}]}));
        doc["gateway"]["policies"][0]["rules"][0]["to"][0]["operation"]["hosts"] =
            serde_json::json!(["api.partner.example", "db.partner.example"]);
        doc["gateway"]["policies"][0]["rules"][0]["to"][0]["operation"]["ports"] = serde_json::json!([443, 5432]);
        let kuma = crate::config_document::PlatformSpec::Kuma {
            mesh: "default".into(),
            zone: "zone-1".into(),
            namespace: "kuma-system".into(),
            egress_port: 10002,
        };
        let c = Config::load_for(doc.to_string().as_bytes(), &kuma).unwrap();
        let app1 = id("spiffe://default.zone-1.mesh.local/ns/team/sa/app1");
        for authority in ["partner-api.extsvc.mesh.local", "partner-api.extsvc.mesh.local:80"] {
            match c.decide(Ok(&app1), &get(authority, "/v1")) {
                Decision::Allow(a) => {
                    assert_eq!(&*a.identity.cluster, "kri_extsvc_default_zone-1_kuma-system_partner-api-team-app1_80");
                    assert_eq!(a.host, "api.partner.example");
                }
                d => panic!("{authority}: {d:?}"),
            }
        }
        // The partner's own name is not how the zone egress receives it.
        assert_eq!(denial(c.decide(Ok(&app1), &get("api.partner.example", "/"))).2, "unknown_destination");
        let sni = "sni.extsvc.default.zone-1.kuma-system.partner-db.5432";
        match c.evaluate_connection(Ok(&app1), sni, 10002).decision {
            Decision::Allow(a) => assert_eq!(a.destination, "partner-db"),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            denial(c.evaluate_connection(Ok(&app1), sni, 5432).decision).2,
            "no_matching_allow",
            "not a port the policy allows"
        );
    }
}
