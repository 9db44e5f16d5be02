//! Envoy's dynamic forward proxy (DFP) as the renderers use it for dynamic destinations (a wildcard, several
//! hosts or several ports): the one DNS cache, the DFP cluster type, the filters that fill the cache, and
//! the address ranges a partner's name may not resolve into. `render envoy` and `render istio` (gateway
//! mode, through its EnvoyFilter) write the same pieces.

use super::envoy::{socket_address, typed, HostPort};
use super::{commented, int, map, s, RenderError, Yaml};

/// The DNS cache every dynamic forward proxy of the gateway shares (its clusters, the HTTP filter and
/// `sni_dynamic_forward_proxy`): a cluster's load balancer finds only the hosts of its own cache, and the
/// filters fill one, so all name the same, identical configuration.
pub const DNS_CACHE: &str = "egress-identity";

/// Where a dynamic destination's name may not resolve (the gateway would reach into its own networks under
/// a partner's name: loopback, RFC 1918, link-local, shared CGNAT space, unique-local IPv6, "this network"),
/// unless `--allow-resolved` opens a range.
pub const BLOCKED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// The DNS settings of the gateway's cache: `--dns-resolver` and `--allow-resolved`.
#[derive(Clone, Copy, Debug)]
pub struct Dns<'a> {
    /// The DNS servers (c-ares `resolvers`); none: the system's.
    pub resolvers: &'a [HostPort],
    /// Ranges of [`BLOCKED_RANGES`] a name may resolve into after all.
    pub allow_resolved: &'a [String],
}

/// Checks `--allow-resolved`: each a range of [`BLOCKED_RANGES`].
pub fn check_allow_resolved(allow_resolved: &[String]) -> Result<(), RenderError> {
    for range in allow_resolved {
        if !BLOCKED_RANGES.contains(&range.as_str()) {
            return Err(RenderError(format!(
                "--allow-resolved {range}: not one of the ranges a dynamic destination may not resolve into ({}); name one of them exactly",
                BLOCKED_RANGES.join(", ")
            )));
        }
    }
    Ok(())
}

fn e(k: &str, v: Yaml) -> (String, Yaml) {
    (k.to_string(), v)
}

/// The one DNS cache's configuration (every user must write the same).
pub fn dns_cache_config(dns: Dns<'_>) -> Yaml {
    let ranges: Vec<Yaml> = BLOCKED_RANGES
        .iter()
        .filter(|r| !dns.allow_resolved.iter().any(|a| a == *r))
        .filter_map(|r| r.split_once('/'))
        .map(|(address, len)| {
            map([("address_prefix", s(address)), ("prefix_len", int(len.parse::<u16>().unwrap_or(128)))])
        })
        .collect();
    let mut entries = vec![
        e("name", s(DNS_CACHE)),
        e("dns_lookup_family", s("V4_PREFERRED")),
        e("max_hosts", int(1024)),
        e("host_ttl", s("300s")),
    ];
    if !dns.resolvers.is_empty() {
        entries.push(e(
            "typed_dns_resolver_config",
            map([
                ("name", s("envoy.network.dns_resolver.cares")),
                (
                    "typed_config",
                    typed(
                        "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                        vec![
                            e("resolvers", Yaml::Seq(dns.resolvers.iter().map(socket_address).collect())),
                            e("dns_resolver_options", map([("no_default_search_domain", Yaml::Bool(true))])),
                        ],
                    ),
                ),
            ]),
        ));
    }
    if !ranges.is_empty() {
        entries.push(e(
            "resolved_address_filter",
            commented(
                "A partner's name that resolves only into these ranges fails (503, DNS resolution failure).",
                map([("ranges", Yaml::Seq(ranges))]),
            ),
        ));
    }
    Yaml::Map(entries)
}

/// A cluster's `cluster_type`: Envoy's dynamic forward proxy on the one cache (`lb_policy` must be
/// `CLUSTER_PROVIDED`).
pub fn cluster_type(dns: Dns<'_>) -> Yaml {
    commented(
        "Envoy's dynamic forward proxy: the host and port the filter allowed (filter state\nenvoy.upstream.dynamic_host/_port), resolved in the gateway's one DNS cache.",
        map([
            ("name", s("envoy.clusters.dynamic_forward_proxy")),
            (
                "typed_config",
                typed(
                    "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                    vec![e("dns_cache_config", dns_cache_config(dns))],
                ),
            ),
        ]),
    )
}

/// A DFP cluster's `upstream_http_protocol_options`: SNI and the certificate's name from the requested host.
pub fn upstream_http_protocol_options() -> Yaml {
    commented(
        "The server name is the requested host, and the partner's certificate must carry it (HTTP: the\nrouter takes both from :authority, which the filter compared; tcp: the filter sets them in filter\nstate, since tcp_proxy applies neither).",
        map([("auto_sni", Yaml::Bool(true)), ("auto_san_validation", Yaml::Bool(true))]),
    )
}

/// The HTTP filter's `typed_config`.
pub fn http_filter_config(dns: Dns<'_>) -> Yaml {
    typed(
        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
        vec![e("dns_cache_config", dns_cache_config(dns)), e("allow_dynamic_host_from_filter_state", Yaml::Bool(true))],
    )
}

/// The HTTP dynamic forward proxy filter, before the router: it loads the allowed host into the DNS cache
/// (requests to other clusters pass untouched).
pub fn http_filter(dns: Dns<'_>) -> Yaml {
    commented(
        "Resolves the host the filter allowed for a dynamic destination (its filter state\nenvoy.upstream.dynamic_host/_port) before the router picks it.",
        map([("name", s("envoy.filters.http.dynamic_forward_proxy")), ("typed_config", http_filter_config(dns))]),
    )
}

/// The network filter that loads a dynamic tcp/tls destination's host into the DNS cache, before tcp_proxy.
pub fn sni_filter(dns: Dns<'_>) -> Yaml {
    commented(
        "Resolves the host the filter allowed for a dynamic tcp/tls destination (filter state\nenvoy.upstream.dynamic_host/_port) before tcp_proxy connects; for any other connection the filter\nsets an empty host, and nothing is resolved.",
        map([
            ("name", s("envoy.filters.network.sni_dynamic_forward_proxy")),
            (
                "typed_config",
                typed(
                    "envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
                    vec![e("dns_cache_config", dns_cache_config(dns)), e("port_value", int(443))],
                ),
            ),
        ]),
    )
}
