//! The platform a gateway runs on, and every name a platform-neutral policy leaves to it.
//!
//! A policy names destinations by the host and port workloads call and identities by name. Each platform
//! delivers requests and connections to the filter under its own names (Kuma's zone egress sees
//! `partner-api.extsvc.mesh.local`, or the SNI `sni.extsvc.<mesh>.<zone>.<namespace>.<name>.<port>` on its own
//! port), calls its upstream clusters its own way (`kri_extsvc_…`), and hands the filter the caller's
//! principal in its own way. This module is the one place those names are derived: the filter looks
//! destinations up and names clusters with them, and every renderer writes the same names into the
//! gateway's configuration, so what runs is what the policy says.

use crate::config_document::{PlatformSpec, PrincipalSource, Protocol};
use crate::config_error::{dns_label, Errors, JsonPath};

/// The port of the mesh-internal HTTP service applications call for an HTTP destination in Istio and Kuma
/// (`http://<host>/`): the mesh originates the partner's TLS, so applications speak plain HTTP on port 80.
pub const MESH_HTTP_PORT: u16 = 80;

/// The Istio egress gateway's port for connections to tcp and tls destinations (one TLS server per
/// destination, told apart by SNI).
pub const ISTIO_GATEWAY_L4_PORT: u16 = 8443;

/// The name of a destination-wide cluster (a tls destination's passthrough, a single-cluster destination's
/// one cluster) next to the identity clusters `<destination>|<identity>`.
const PASSTHROUGH: &str = "passthrough";
const SHARED: &str = "shared";

/// A platform, compiled from the document's `platform` (plain Envoy when there is none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Platform {
    #[default]
    Envoy,
    IstioGateway,
    IstioWaypoint,
    Kuma(Kuma),
}

/// A Kuma mesh-scoped ZoneEgress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kuma {
    pub mesh: Box<str>,
    pub zone: Box<str>,
    /// Kuma's system namespace, where the MeshExternalServices live.
    pub namespace: Box<str>,
    /// The zone egress listener's port: where every tcp/tls connection arrives.
    pub egress_port: u16,
}

/// What names the destination of an L4 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Front {
    /// The caller's SNI, on the port it connected to; decided on the first bytes (the caller's
    /// certificate is there by then).
    ServerName,
    /// The filter chain the connection landed on (`xds.filter_chain_name`): an Istio waypoint's
    /// `inbound-vip|<port>|tcp|<host>`, one per ServiceEntry host and port ([`waypoint_chain`]); the caller's
    /// principal is already in filter state, so the connection is decided at once, and Istio's stock
    /// tcp_proxy runs unchanged.
    FilterChainName,
}

/// The host and port of an Istio waypoint's per-service L4 chain name `inbound-vip|<port>|tcp|<host>`
/// (istiod's `model.BuildSubsetKey(TrafficDirectionInboundVIP, "tcp", host, port)`); `None` for anything else.
pub fn waypoint_chain(name: &str) -> Option<(&str, u16)> {
    let mut parts = name.split('|');
    let (Some("inbound-vip"), Some(port), Some("tcp"), Some(host), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let port = crate::request::parse_port(port)?;
    (!host.is_empty()).then_some((host, port))
}

/// The internal host an Istio waypoint reaches identity `identity` (Kubernetes form) of destination `name`
/// under: its own ServiceEntry and DestinationRule, so its own client certificate.
pub fn internal_host(name: &str, identity: &str) -> String {
    format!("{identity}.{name}.egress-identity.internal")
}

/// How the gateway names a destination when a request or connection arrives: a host (the `:authority`'s,
/// or the SNI) and the port (the `:authority`'s, `None` when it names none; a connection's local port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Front {
    pub host: String,
    pub port: Option<u16>,
}

impl Platform {
    /// The platform of a document (`None`: plain Envoy); errors name the `platform` fields.
    pub fn compile(spec: Option<&PlatformSpec>, errors: &mut Errors) -> Self {
        match spec {
            None | Some(PlatformSpec::Envoy) => Self::Envoy,
            Some(PlatformSpec::IstioGateway) => Self::IstioGateway,
            Some(PlatformSpec::IstioWaypoint) => Self::IstioWaypoint,
            Some(PlatformSpec::Kuma { mesh, zone, namespace, egress_port }) => {
                let path = JsonPath::Root("platform");
                for (field, value) in [("mesh", mesh), ("zone", zone), ("namespace", namespace)] {
                    if let Err(e) = dns_label(value) {
                        errors.push(path.field(field), e);
                    }
                }
                if *egress_port == 0 {
                    errors.push(path.field("egressPort"), "must be a port (1-65535)");
                }
                Self::Kuma(Kuma {
                    mesh: mesh.as_str().into(),
                    zone: zone.as_str().into(),
                    namespace: namespace.as_str().into(),
                    egress_port: *egress_port,
                })
            }
        }
    }

    /// The document's `platform` for this platform.
    pub fn spec(&self) -> PlatformSpec {
        match self {
            Self::Envoy => PlatformSpec::Envoy,
            Self::IstioGateway => PlatformSpec::IstioGateway,
            Self::IstioWaypoint => PlatformSpec::IstioWaypoint,
            Self::Kuma(k) => PlatformSpec::Kuma {
                mesh: k.mesh.to_string(),
                zone: k.zone.to_string(),
                namespace: k.namespace.to_string(),
                egress_port: k.egress_port,
            },
        }
    }

    /// Its name in `validate --platform`, logs and `explain`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Envoy => "envoy",
            Self::IstioGateway => "istio-gateway",
            Self::IstioWaypoint => "istio-waypoint",
            Self::Kuma(_) => "kuma",
        }
    }

    /// Where the caller's principal comes from: the downstream TLS peer certificate wherever the gateway
    /// terminates the caller's mTLS; in an ambient waypoint, which receives HBONE from the caller's
    /// ztunnel, the filter state Istio sets from the verified peer.
    pub fn principal_sources(&self) -> &'static [PrincipalSource] {
        match self {
            Self::IstioWaypoint => &[PrincipalSource::IstioPeerPrincipal],
            Self::Envoy | Self::IstioGateway | Self::Kuma(_) => &[PrincipalSource::PeerCertificate],
        }
    }

    /// The trust domain the platform itself gives callers, which joins the policy's local family (Kuma's
    /// MeshIdentity: `<mesh>.<zone>.mesh.local`). Istio's is the mesh's own, which the policy declares.
    pub fn local_trust_domain(&self) -> Option<String> {
        match self {
            Self::Kuma(k) => Some(format!("{}.{}.mesh.local", k.mesh, k.zone)),
            Self::Envoy | Self::IstioGateway | Self::IstioWaypoint => None,
        }
    }

    /// How the network filter learns which destination a connection is for.
    pub fn l4_front(&self) -> L4Front {
        match self {
            Self::IstioWaypoint => L4Front::FilterChainName,
            Self::Envoy | Self::IstioGateway | Self::Kuma(_) => L4Front::ServerName,
        }
    }

    /// Why the platform cannot carry a dynamic destination (a wildcard host, several hosts or several ports)
    /// of this protocol; `None` when it can (plain Envoy: its dynamic forward proxy).
    pub fn refuses_dynamic(&self, protocol: Protocol) -> Option<&'static str> {
        match (self, protocol.is_l4()) {
            (Self::Envoy, _) => None,
            (Self::IstioGateway, false) => None,
            (Self::IstioWaypoint, false) => Some(
                "a wildcard, several hosts or several ports: not rendered for istio-waypoint: the waypoint resolves a wildcard ServiceEntry in a forward-proxy DNS cache of that host's own, which the per-identity ServiceEntries of this layout do not share, so every request would fail (docs/design/issue-26-wildcard-destinations.md, C): use --mode gateway, or declare one destination per host and port",
            ),
            (Self::IstioGateway, true) => Some(
                "a wildcard, several hosts or several ports: sidecars bring a tcp/tls destination to the gateway over Istio mTLS whose SNI is its DestinationRule's fixed tls.sni, so one destination cannot stand for several hosts or ports there: declare one destination per host and port",
            ),
            (Self::IstioWaypoint, true) => Some(
                "a wildcard, several hosts or several ports: a waypoint serves each ServiceEntry host and port on its own filter chain, and builds wildcard tls chains only when istiod runs with ENABLE_WILDCARD_HOST_SERVICE_ENTRIES_FOR_TLS (tcp never): declare one destination per host and port",
            ),
            (Self::Kuma(_), _) => Some(
                "a wildcard, several hosts or several ports: a Kuma MeshExternalService has one match (hostname and port) and no wildcard: declare one destination per host and port",
            ),
        }
    }

    /// Whether the platform can render single-cluster destinations (per-connection certificate selection
    /// and the `set_filter_state` copy; neither Istio's nor Kuma's API expresses them).
    pub fn single_cluster(&self) -> bool {
        matches!(self, Self::Envoy)
    }

    /// The names under which the gateway receives destination `name`'s traffic to `host`:`port` (empty when
    /// the platform does not carry it). `default_port`: the port of a request whose `:authority` names none.
    /// `only_port`: whether `port` is the destination's only port (else the caller names the port).
    pub fn fronts(
        &self,
        name: &str,
        host: &str,
        port: u16,
        protocol: Protocol,
        default_port: u16,
        only_port: bool,
    ) -> Vec<Front> {
        let front = |host: &str, port: Option<u16>| Front { host: host.to_string(), port };
        match (self, protocol.is_l4()) {
            (Self::Envoy, false) if port == default_port => vec![front(host, Some(port)), front(host, None)],
            (Self::Envoy, _) => vec![front(host, Some(port))],
            // Applications call http://<host>/ (the ServiceEntry's port 80): the authority names no port, or 80.
            (Self::IstioGateway | Self::IstioWaypoint, false) if only_port => {
                vec![front(host, None), front(host, Some(MESH_HTTP_PORT))]
            }
            // Several ports: applications call http://<host>:<port>/, each a ServiceEntry port of its own.
            (Self::IstioGateway | Self::IstioWaypoint, false) if port == MESH_HTTP_PORT => {
                vec![front(host, None), front(host, Some(port))]
            }
            (Self::IstioGateway | Self::IstioWaypoint, false) => vec![front(host, Some(port))],
            // Sidecars reach the gateway's L4 port with the host as SNI.
            (Self::IstioGateway, true) => vec![front(host, Some(ISTIO_GATEWAY_L4_PORT))],
            // Its own chain, named by the ServiceEntry's host and the partner's port.
            (Self::IstioWaypoint, true) => vec![front(host, Some(port))],
            (Self::Kuma(_), false) => {
                let called = Self::kuma_hostname(name);
                vec![front(&called, None), front(&called, Some(MESH_HTTP_PORT))]
            }
            (Self::Kuma(k), true) => vec![front(&k.sni(name, port), Some(k.egress_port))],
        }
    }

    /// Why two destinations cannot arrive under the same name on this platform.
    pub fn front_rule(&self, protocol: Protocol) -> &'static str {
        match (self, protocol.is_l4()) {
            (Self::Envoy, _) => "one destination per host and port",
            (Self::IstioGateway | Self::IstioWaypoint, false) => {
                "applications call an HTTP destination as http://<host>/ (the ServiceEntry's port 80), or as http://<host>:<port>/ when it declares several ports: one HTTP destination per host and port"
            }
            (Self::IstioGateway, true) => {
                "sidecars bring every tcp/tls destination to the gateway's port 8443, told apart by host: one tcp/tls destination per host"
            }
            (Self::IstioWaypoint, true) => {
                "the waypoint serves each ServiceEntry host and port on one filter chain: one destination per host and port"
            }
            (Self::Kuma(_), _) => "one destination per MeshExternalService name",
        }
    }

    /// The hostname Kuma gives applications for the MeshExternalService `name`.
    pub fn kuma_hostname(name: &str) -> String {
        format!("{name}.extsvc.mesh.local")
    }

    /// The cluster that presents identity `identity` (its Kubernetes form, [`crate::config_error::k8s_form`])
    /// to destination `name`.
    pub fn identity_cluster(&self, name: &str, identity: &str, protocol: Protocol, port: u16) -> String {
        match self {
            Self::Kuma(k) => k.kri(&format!("{name}-{identity}"), Self::kuma_port(protocol, port)),
            // Istio's cluster of the identity's internal ServiceEntry, bound to the waypoint: tcp_proxy's
            // filter state names a real cluster there (an HTTP identity is a routing key of the HTTPRoute).
            Self::IstioWaypoint if protocol.is_l4() => {
                format!("inbound-vip|{port}|tcp|{}", internal_host(name, identity))
            }
            Self::Envoy | Self::IstioGateway | Self::IstioWaypoint => format!("{name}|{identity}"),
        }
    }

    /// The one cluster of destination `name` (on `host`) that is not an identity's: a tls destination's
    /// passthrough, or a single-cluster destination's.
    pub fn destination_cluster(&self, name: &str, host: &str, protocol: Protocol, port: u16) -> String {
        let what = if protocol == Protocol::Tls { PASSTHROUGH } else { SHARED };
        match self {
            Self::Kuma(k) => k.kri(&format!("{name}-{what}"), Self::kuma_port(protocol, port)),
            // The waypoint's own cluster of the destination's chain: tcp_proxy's, which it connects to at once.
            Self::IstioWaypoint if protocol == Protocol::Tls => format!("inbound-vip|{port}|tcp|{host}"),
            Self::Envoy | Self::IstioGateway | Self::IstioWaypoint => format!("{name}|{what}"),
        }
    }

    /// The port of a destination's MeshExternalServices: applications call HTTP ones on port 80, L4 ones on
    /// the partner's port.
    pub fn kuma_port(protocol: Protocol, port: u16) -> u16 {
        if protocol.is_l4() {
            port
        } else {
            MESH_HTTP_PORT
        }
    }

    /// A one-line description for logs and `explain`.
    pub fn describe(&self) -> String {
        match self {
            Self::Kuma(k) => format!(
                "kuma (mesh {}, zone {}, namespace {}, zone egress port {})",
                k.mesh, k.zone, k.namespace, k.egress_port
            ),
            other => other.name().to_string(),
        }
    }
}

/// The name of a destination-wide object next to the identity ones: `<destination>-passthrough`.
pub fn passthrough_object(name: &str) -> String {
    format!("{name}-{PASSTHROUGH}")
}

impl Kuma {
    /// Kuma's name of a MeshExternalService's cluster: `kri_extsvc_<mesh>_<zone>_<namespace>_<name>_<port>`.
    pub fn kri(&self, service: &str, port: u16) -> String {
        format!("kri_extsvc_{}_{}_{}_{service}_{port}", self.mesh, self.zone, self.namespace)
    }

    /// The SNI callers' sidecars send to the zone egress for the MeshExternalService `name` on `port`.
    pub fn sni(&self, name: &str, port: u16) -> String {
        format!("sni.extsvc.{}.{}.{}.{name}.{port}", self.mesh, self.zone, self.namespace)
    }
}

/// The plugin configuration for `platform`: the policy's text with `"platform"` added as its last field, so
/// that the policy part stays the user's file, byte for byte. `None` when the text is not a JSON object.
pub fn plugin_configuration(policy: &str, platform: &PlatformSpec) -> Option<String> {
    let body = policy.trim_end().strip_suffix('}')?.trim_end();
    let platform = platform_json(platform);
    Some(format!("{body},\n  \"platform\": {platform}\n}}\n"))
}

/// The `platform` field's JSON, `kind` first.
pub fn platform_json(platform: &PlatformSpec) -> String {
    let text = |v: &str| serde_json::Value::from(v).to_string();
    match platform {
        PlatformSpec::Envoy => r#"{"kind":"envoy"}"#.into(),
        PlatformSpec::IstioGateway => r#"{"kind":"istio-gateway"}"#.into(),
        PlatformSpec::IstioWaypoint => r#"{"kind":"istio-waypoint"}"#.into(),
        PlatformSpec::Kuma { mesh, zone, namespace, egress_port } => format!(
            r#"{{"kind":"kuma","mesh":{},"zone":{},"namespace":{},"egressPort":{egress_port}}}"#,
            text(mesh),
            text(zone),
            text(namespace)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn a_waypoint_tcp_chain_names_its_host_and_port() {
        assert_eq!(waypoint_chain("inbound-vip|5432|tcp|db.partner.example"), Some(("db.partner.example", 5432)));
        for other in [
            "inbound-vip|80|http|api.partner.example",
            "inbound-vip|5432|tcp|",
            "inbound-vip|0|tcp|db.example",
            "inbound-vip|05432|tcp|db.example",
            "inbound-vip|5432|tcp|db.example|x",
            "inbound|5432|tcp|db.example",
            "direct-tcp",
            "",
        ] {
            assert_eq!(waypoint_chain(other), None, "{other}");
        }
        let w = Platform::IstioWaypoint;
        assert_eq!(w.l4_front(), L4Front::FilterChainName);
        assert_eq!(Platform::Envoy.l4_front(), L4Front::ServerName);
        assert_eq!(
            w.destination_cluster("files", "files.example", Protocol::Tls, 443),
            "inbound-vip|443|tcp|files.example"
        );
        assert_eq!(
            w.identity_cluster("db", "team-app1", Protocol::Tcp, 5432),
            "inbound-vip|5432|tcp|team-app1.db.egress-identity.internal"
        );
        assert_eq!(w.identity_cluster("api", "team-app1", Protocol::Http, 443), "api|team-app1");
        assert_eq!(
            w.fronts("db", "db.example", 5432, Protocol::Tcp, 443, true),
            [Front { host: "db.example".into(), port: Some(5432) }]
        );
    }

    fn kuma() -> Platform {
        Platform::Kuma(Kuma {
            mesh: "default".into(),
            zone: "zone-1".into(),
            namespace: "kuma-system".into(),
            egress_port: 10002,
        })
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn each_platform_names_the_same_destination_its_own_way() {
        let fronts = |p: &Platform, protocol| p.fronts("partner-db", "db.partner.example", 5432, protocol, 443, true);
        let f = |host: &str, port: Option<u16>| Front { host: host.into(), port };
        assert_eq!(fronts(&Platform::Envoy, Protocol::Tcp), [f("db.partner.example", Some(5432))]);
        assert_eq!(fronts(&Platform::IstioGateway, Protocol::Tcp), [f("db.partner.example", Some(8443))]);
        assert_eq!(fronts(&Platform::IstioWaypoint, Protocol::Tcp), [f("db.partner.example", Some(5432))]);
        assert_eq!(
            fronts(&kuma(), Protocol::Tcp),
            [f("sni.extsvc.default.zone-1.kuma-system.partner-db.5432", Some(10002))]
        );
        assert_eq!(
            fronts(&kuma(), Protocol::Http),
            [f("partner-db.extsvc.mesh.local", None), f("partner-db.extsvc.mesh.local", Some(80))]
        );
        let api = Platform::Envoy.fronts("a", "api.example", 443, Protocol::Http, 443, true);
        assert_eq!(api, [f("api.example", Some(443)), f("api.example", None)]);
        assert_eq!(
            Platform::Envoy.fronts("a", "api.example", 8443, Protocol::Http, 443, true),
            [f("api.example", Some(8443))]
        );

        assert_eq!(
            Platform::Envoy.identity_cluster("partner-api", "team-app1", Protocol::Http, 443),
            "partner-api|team-app1"
        );
        assert_eq!(
            kuma().identity_cluster("partner-api", "team-app1", Protocol::Http, 443),
            "kri_extsvc_default_zone-1_kuma-system_partner-api-team-app1_80"
        );
        assert_eq!(
            kuma().destination_cluster("partner-files", "files.partner.example", Protocol::Tls, 443),
            "kri_extsvc_default_zone-1_kuma-system_partner-files-passthrough_443"
        );
        assert_eq!(Platform::IstioGateway.destination_cluster("s", "s.example", Protocol::Http, 443), "s|shared");
        assert_eq!(kuma().local_trust_domain().as_deref(), Some("default.zone-1.mesh.local"));
        assert_eq!(Platform::IstioWaypoint.principal_sources(), [PrincipalSource::IstioPeerPrincipal]);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn the_plugin_configuration_is_the_policy_verbatim_plus_its_platform() {
        let policy = "{\n  \"destinations\": []\n}\n";
        let text = plugin_configuration(policy, &kuma().spec()).unwrap();
        assert!(text.starts_with("{\n  \"destinations\": [],\n  \"platform\": {"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["platform"]["egressPort"], 10002);
        let back: PlatformSpec = serde_json::from_value(value["platform"].clone()).unwrap();
        assert_eq!(back, kuma().spec());
        assert_eq!(plugin_configuration("[1]", &PlatformSpec::Envoy), None);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn kuma_names_are_dns_labels() {
        let mut errors = Errors::default();
        let spec =
            PlatformSpec::Kuma { mesh: "Default".into(), zone: "z".into(), namespace: "a.b".into(), egress_port: 0 };
        Platform::compile(Some(&spec), &mut errors);
        let paths: Vec<String> = errors.into_vec().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["platform.mesh", "platform.namespace", "platform.egressPort"]);
    }
}
