//! Mapping of mesh principals to external identities, per destination: the destination names the declared
//! identities ([`crate::identity`]) it may present, in order, and the first whose principals match the
//! caller wins; else its `defaultIdentity`.
//!
//! Each chosen identity is an upstream cluster the platform names ([`crate::platform::Platform`]) whose TLS
//! context presents that identity's client certificate (e.g. `spiffe://cluster.local/ns/team/sa/app1` →
//! cluster `partner-api|team-app1`, certificate `CN=team.app1`), or, in single-cluster mode, one SDS secret
//! that the destination's one cluster presents on the connections the filter names it for
//! ([`SECRET_FILTER_STATE_KEY`]). A `tls` passthrough destination presents no certificate of the gateway's:
//! its one route is its passthrough cluster.

use crate::config_document::Protocol;
use crate::config_error::{k8s_form, Errors, JsonPath};
use crate::first_match_index::FirstMatchIndex;
use crate::identity::Identities;
use crate::platform::Platform;

/// The filter-state key (a Wasm property, `wasm.egress_identity.secret` in Envoy) in which the filter names
/// the SDS secret of the identity it chose, in single-cluster mode. The gateway's `set_filter_state` filter
/// copies it into `envoy.tls.certificate_mappers.on_demand_secret`, hashable and shared with the upstream
/// connection, where the cluster's certificate mapper reads it.
pub const SECRET_FILTER_STATE_KEY: &str = "egress_identity.secret";

/// The name of a `tls` destination's one route in records and metrics: the caller's own TLS passes through.
pub const PASSTHROUGH_IDENTITY: &str = "passthrough";

/// An external identity of one destination: its name and the cluster that presents it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub name: Box<str>,
    pub cluster: Box<str>,
    /// Single-cluster mode: the SDS secret the (shared) cluster presents for this identity.
    pub secret: Option<Box<str>>,
    /// The declared identity ([`Identities::get`]'s position); `None` for a passthrough.
    pub declared: Option<usize>,
    /// Dense and unique across the configuration (destination by destination, mappings then the
    /// default), so per-identity state is an array slot: two identities never share it, even when they
    /// share a cluster.
    pub index: usize,
}

/// The ordered mappings of one destination.
#[derive(Debug, Default)]
pub struct IdentityMapping {
    /// The mappings' identities, in order; their principal patterns are kept only in `index`.
    entries: Vec<ExternalIdentity>,
    /// Finds the first matching entry without scanning them all.
    index: FirstMatchIndex,
    default: Option<ExternalIdentity>,
}

/// What the mapping of one destination needs to know of it.
#[derive(Clone, Copy, Debug)]
pub struct DestinationRef<'a> {
    pub name: &'a str,
    /// Its (first) host.
    pub host: &'a str,
    pub protocol: Protocol,
    pub port: u16,
    pub single_cluster: bool,
}

impl IdentityMapping {
    /// Compiles `identities` and `defaultIdentity` of the destination at `path` (e.g. `destinations[0]`):
    /// each must name a declared identity. `next_index` is the [`ExternalIdentity::index`] of the first one,
    /// and is advanced past the last; `used` marks the declared identities named.
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        refs: Option<Vec<String>>,
        default: Option<String>,
        destination: DestinationRef<'_>,
        declared: &Identities,
        platform: &Platform,
        path: &JsonPath<'_>,
        next_index: &mut usize,
        used: &mut [bool],
        errors: &mut Errors,
    ) -> Self {
        let refs_path = path.field("identities");
        let mut this = Self::default();
        let d = destination;
        if d.protocol == Protocol::Tls {
            for (field, given) in [("identities", refs.is_some()), ("defaultIdentity", default.is_some())] {
                if given {
                    errors.push(
                        path.field(field),
                        "a tls (passthrough) destination presents the caller's own certificate, never an identity of the gateway's: omit it",
                    );
                }
            }
            this.default = Some(ExternalIdentity {
                name: PASSTHROUGH_IDENTITY.into(),
                cluster: platform.destination_cluster(d.name, d.host, d.protocol, d.port).into_boxed_str(),
                secret: None,
                declared: None,
                index: take(next_index),
            });
            return this;
        }
        let mut external = |name: &str, at: &JsonPath<'_>, errors: &mut Errors| {
            let Some((position, identity)) = declared.get(name) else {
                errors.push(at, format!("{name:?} is not a declared identity (identities[].name)"));
                return None;
            };
            if let Some(u) = used.get_mut(position) {
                *u = true;
            }
            let (cluster, secret) = if d.single_cluster {
                let secret = identity.certificate.secret.clone().unwrap_or_else(|| identity.name.clone());
                (platform.destination_cluster(d.name, d.host, d.protocol, d.port), Some(secret))
            } else {
                (platform.identity_cluster(d.name, &k8s_form(name), d.protocol, d.port), None)
            };
            Some((
                identity,
                ExternalIdentity {
                    name: identity.name.clone(),
                    cluster: cluster.into_boxed_str(),
                    secret,
                    declared: Some(position),
                    index: 0,
                },
            ))
        };
        if let Some(refs) = &refs {
            if refs.is_empty() {
                errors.push(refs_path, "an empty list: omit identities when the defaultIdentity serves every caller");
            }
        }
        for (i, name) in refs.iter().flatten().enumerate() {
            let at = refs_path.index(i);
            if refs.iter().flatten().take(i).any(|earlier| earlier == name) {
                errors.push(at, format!("{name:?} is listed twice"));
                continue;
            }
            let Some((identity, mut entry)) = external(name, &at, errors) else { continue };
            let Some(principals) = &identity.principals else {
                errors.push(
                    at,
                    format!("identity {name:?} declares no principals, so it is never chosen here: make it the defaultIdentity, or give it principals"),
                );
                continue;
            };
            let ordinal = this.entries.len();
            for pattern in principals {
                this.index.insert(pattern.clone(), ordinal);
            }
            entry.index = take(next_index);
            this.entries.push(entry);
        }
        if let Some(name) = &default {
            if let Some((_, mut entry)) = external(name, &path.field("defaultIdentity"), errors) {
                entry.index = take(next_index);
                this.default = Some(entry);
            }
        }
        if refs.is_none() && default.is_none() {
            errors.push(
                refs_path,
                "no identities and no defaultIdentity: every request to this destination would be denied",
            );
        }
        this
    }

    /// The external identity for a principal (Istio form, `td/path`): first match, else the default.
    pub fn select(&self, principal: &str) -> Option<&ExternalIdentity> {
        self.index.first_match(Some(principal)).and_then(|i| self.entries.get(i)).or(self.default.as_ref())
    }

    /// Every external identity this mapping can select, default included.
    pub fn identities(&self) -> impl Iterator<Item = &ExternalIdentity> {
        self.entries.iter().chain(self.default.as_ref())
    }

    /// The mappings' identities, in order (the default left out).
    pub fn mapped(&self) -> impl Iterator<Item = &ExternalIdentity> {
        self.entries.iter()
    }

    /// The default identity, if any.
    pub fn default_identity(&self) -> Option<&ExternalIdentity> {
        self.default.as_ref()
    }
}

/// The next dense index.
fn take(next: &mut usize) -> usize {
    let index = *next;
    *next += 1;
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_document::IdentitySpec;
    use crate::policy_value::ValueRules;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn mapping(
        refs: Option<serde_json::Value>,
        default: Option<&str>,
        protocol: Protocol,
        single_cluster: bool,
    ) -> Result<IdentityMapping, Vec<String>> {
        let specs: Vec<IdentitySpec> = serde_json::from_value(json!([
            {"name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"]},
            {"name": "team.any", "principals": ["cluster.local/ns/team/*"], "certificate": {"secret": "kubernetes://team-any"}},
            {"name": "shared"}
        ]))
        .unwrap();
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[], None).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let mut errors = Errors::default();
        let declared = Identities::compile(specs, &rules, &mut errors);
        let refs: Option<Vec<String>> = refs.map(|r| serde_json::from_value(r).unwrap());
        let mut next = 10;
        let mut used = vec![false; 3];
        let d = DestinationRef { name: "d", host: "d.example", protocol, port: 443, single_cluster };
        let m = IdentityMapping::compile(
            refs,
            default.map(str::to_string),
            d,
            &declared,
            &Platform::Envoy,
            &JsonPath::Root("d"),
            &mut next,
            &mut used,
            &mut errors,
        );
        if errors.is_empty() {
            assert_eq!(next, 10 + m.identities().count(), "indexes are handed out one per identity");
            Ok(m)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn first_match_wins_then_default() {
        let m = mapping(Some(json!(["team.app1", "team.any"])), None, Protocol::Http, false).unwrap();
        assert_eq!(&*m.select("cluster.local/ns/team/sa/app1").unwrap().cluster, "d|team-app1");
        assert_eq!(&*m.select("cluster.local/ns/team/sa/app2").unwrap().name, "team.any");
        assert_eq!(m.select("cluster.local/ns/other/sa/x"), None);
        let indexes: Vec<usize> = m.identities().map(|i| i.index).collect();
        assert_eq!(indexes, [10, 11]);

        let m = mapping(None, Some("shared"), Protocol::Http, false).unwrap();
        assert_eq!(&*m.select("cluster.local/ns/other/sa/x").unwrap().name, "shared");
        assert_eq!(m.identities().count(), 1);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn single_cluster_mode_names_a_secret_per_identity() {
        let m = mapping(Some(json!(["team.app1", "team.any"])), Some("shared"), Protocol::Http, true).unwrap();
        let app1 = m.select("cluster.local/ns/team/sa/app1").unwrap();
        assert_eq!((&*app1.cluster, app1.secret.as_deref()), ("d|shared", Some("team.app1")));
        let any = m.select("cluster.local/ns/team/sa/app2").unwrap();
        assert_eq!(any.secret.as_deref(), Some("kubernetes://team-any"));
        let other = m.select("cluster.local/ns/other/sa/x").unwrap();
        assert_eq!(other.secret.as_deref(), Some("shared"));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn a_passthrough_destination_has_one_route_and_no_identities() {
        let m = mapping(None, None, Protocol::Tls, false).unwrap();
        let p = m.select("cluster.local/ns/x/sa/y").unwrap();
        assert_eq!((&*p.name, &*p.cluster, p.declared), ("passthrough", "d|passthrough", None));
        let e = mapping(Some(json!(["team.app1"])), Some("shared"), Protocol::Tls, false).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["d.identities", "d.defaultIdentity"], "{e:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn invalid_mappings_name_the_field() {
        let e = mapping(None, None, Protocol::Http, false).unwrap_err();
        assert!(e[0].starts_with("d.identities: no identities"), "{e:?}");
        let e =
            mapping(Some(json!(["team.app1", "nobody", "team.app1", "shared"])), Some("ghost"), Protocol::Tcp, false)
                .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["d.identities[1]", "d.identities[2]", "d.identities[3]", "d.defaultIdentity"], "{e:?}");
        assert!(e[2].contains("declares no principals"), "{e:?}");
        let e = mapping(Some(json!([])), Some("shared"), Protocol::Http, false).unwrap_err();
        assert!(e[0].starts_with("d.identities: an empty list"), "{e:?}");
    }
}
