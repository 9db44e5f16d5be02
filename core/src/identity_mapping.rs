//! Mapping of mesh principals to external identities, per destination: an ordered list, first match wins.
//!
//! Each external identity is one Envoy cluster whose upstream TLS context presents that identity's
//! client certificate (e.g. `spiffe://cluster.local/ns/team/sa/app1` → cluster `partner-api|team-app1`,
//! certificate `CN=team.app1`), or, in single-cluster mode (`sharedCluster`), one SDS secret that the
//! destination's one cluster presents on the connections the filter names it for
//! ([`SECRET_FILTER_STATE_KEY`]).

use crate::config_document::{ExternalIdentitySpec, IdentitySpec};
use crate::config_error::{validate_cluster_name, validate_name, validate_unique_names, Errors, JsonPath};
use crate::first_match_index::FirstMatchIndex;
use crate::pattern::{normalizer, Case, Pattern};
use crate::policy_value::ValueRules;

/// The filter-state key (a Wasm property, `wasm.egress_identity.secret` in Envoy) in which the filter names
/// the SDS secret of the identity it chose, in single-cluster mode. The gateway's `set_filter_state` filter
/// copies it into `envoy.tls.certificate_mappers.on_demand_secret`, hashable and shared with the upstream
/// connection, where the cluster's certificate mapper reads it.
pub const SECRET_FILTER_STATE_KEY: &str = "egress_identity.secret";

/// An external identity: its name (as the partner knows it) and the cluster that presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub name: Box<str>,
    pub cluster: Box<str>,
    /// Single-cluster mode: the SDS secret the (shared) cluster presents for this identity.
    pub secret: Option<Box<str>>,
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

impl IdentityMapping {
    /// Compiles `identities` and `defaultIdentity` of the destination at `path` (e.g. `destinations[0]`),
    /// taking over their strings; `next_index` is the [`ExternalIdentity::index`] of the first one, and is
    /// advanced past the last.
    pub fn compile(
        identities: Vec<IdentitySpec>,
        default: Option<ExternalIdentitySpec>,
        shared_cluster: Option<String>,
        path: &JsonPath<'_>,
        rules: &ValueRules<'_>,
        next_index: &mut usize,
        errors: &mut Errors,
    ) -> Self {
        let shared = shared_cluster.as_deref();
        if let Some(cluster) = shared {
            validate_cluster_name(errors, &path.field("sharedCluster"), cluster);
        }
        // The cluster and secret of the identity at `path`, validated against the destination's mode.
        let identity = |name: String,
                        cluster: Option<String>,
                        secret: Option<String>,
                        path: &JsonPath<'_>,
                        next_index: &mut usize,
                        errors: &mut Errors| {
            let (cluster, secret) = match (shared, cluster) {
                (Some(_), Some(_)) => {
                    errors.push(
                        path.field("cluster"),
                        "the destination has a sharedCluster, which carries every identity of it: name the identity's certificate with `secret` (default: its name), not a cluster",
                    );
                    return None;
                }
                (Some(shared), None) => {
                    let secret = secret.unwrap_or_else(|| name.clone());
                    validate_name(errors, &path.field("secret"), &secret);
                    (shared.to_string(), Some(secret.into_boxed_str()))
                }
                (None, None) => {
                    errors.push(
                        path.field("cluster"),
                        "required: the cluster that presents this identity (or give the destination a sharedCluster)",
                    );
                    return None;
                }
                (None, Some(cluster)) => {
                    if secret.is_some() {
                        errors.push(
                            path.field("secret"),
                            "only a destination with a sharedCluster picks a certificate by secret; this identity's certificate is its cluster's",
                        );
                    }
                    validate_cluster_name(errors, &path.field("cluster"), &cluster);
                    (cluster, None)
                }
            };
            let index = *next_index;
            *next_index += 1;
            Some(ExternalIdentity { name: name.into_boxed_str(), cluster: cluster.into_boxed_str(), secret, index })
        };
        let identities_path = path.field("identities");
        if identities.is_empty() && default.is_none() {
            errors.push(
                identities_path,
                "no identities and no defaultIdentity: every request to this destination would be denied",
            );
        }
        validate_unique_names(errors, &identities_path, identities.iter().map(|i| i.name.as_str()));
        let mut entries = Vec::with_capacity(identities.len());
        let mut index = FirstMatchIndex::default();
        let principal = normalizer(|v| rules.principal(v));
        for (i, spec) in identities.into_iter().enumerate() {
            let path = identities_path.index(i);
            let principals_path = path.field("principals");
            if spec.principals.is_empty() {
                errors.push(principals_path, "must list at least one principal pattern");
            }
            let ordinal = entries.len();
            match Pattern::parse_each(spec.principals, Case::Sensitive, &principal, |p| index.insert(p, ordinal)) {
                Ok(()) => {
                    if let Some(identity) = identity(spec.name, spec.cluster, spec.secret, &path, next_index, errors) {
                        entries.push(identity);
                    }
                }
                Err((bad, e)) => errors.push(principals_path.index(bad), e),
            }
        }
        let default = default.and_then(|spec| {
            let path = path.field("defaultIdentity");
            validate_name(errors, &path.field("name"), &spec.name);
            identity(spec.name, spec.cluster, spec.secret, &path, next_index, errors)
        });
        Self { entries, index, default }
    }

    /// The external identity for a principal (Istio form, `td/path`): first match, else the default.
    pub fn select(&self, principal: &str) -> Option<&ExternalIdentity> {
        self.index.first_match(Some(principal)).and_then(|i| self.entries.get(i)).or(self.default.as_ref())
    }

    /// Every external identity this mapping can select, default included.
    pub fn identities(&self) -> impl Iterator<Item = &ExternalIdentity> {
        self.entries.iter().chain(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn mapping(
        identities: serde_json::Value,
        default: Option<serde_json::Value>,
    ) -> Result<IdentityMapping, Vec<String>> {
        mapping_in(identities, default, None)
    }

    fn mapping_in(
        identities: serde_json::Value,
        default: Option<serde_json::Value>,
        shared: Option<&str>,
    ) -> Result<IdentityMapping, Vec<String>> {
        let specs: Vec<IdentitySpec> = serde_json::from_value(identities).unwrap();
        let default: Option<ExternalIdentitySpec> = default.map(|d| serde_json::from_value(d).unwrap());
        let mut errors = Errors::default();
        let mut next = 10;
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[]).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let m = IdentityMapping::compile(
            specs,
            default,
            shared.map(str::to_string),
            &JsonPath::Root("d"),
            &rules,
            &mut next,
            &mut errors,
        );
        assert_eq!(next, 10 + m.identities().count(), "indexes are handed out one per identity");
        if errors.is_empty() {
            Ok(m)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn first_match_wins_then_default() {
        let m = mapping(
            json!([
                {"name": "team.app1", "cluster": "c1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"]},
                {"name": "team.any", "cluster": "c2", "principals": ["cluster.local/ns/team/*"]}
            ]),
            None,
        )
        .unwrap();
        assert_eq!(&*m.select("cluster.local/ns/team/sa/app1").unwrap().cluster, "c1");
        assert_eq!(&*m.select("cluster.local/ns/team/sa/app2").unwrap().name, "team.any");
        assert_eq!(m.select("cluster.local/ns/other/sa/x"), None);

        let indexes: Vec<usize> = m.identities().map(|i| i.index).collect();
        assert_eq!(indexes, [10, 11]);

        let m = mapping(json!([]), Some(json!({"name": "shared", "cluster": "c0"}))).unwrap();
        assert_eq!(&*m.select("cluster.local/ns/other/sa/x").unwrap().name, "shared");
        assert_eq!(m.identities().count(), 1);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn invalid_mappings_name_the_field() {
        let e = mapping(json!([]), None).unwrap_err();
        assert!(e[0].starts_with("d.identities: no identities"), "{e:?}");
        let e = mapping(
            json!([
                {"name": "a", "cluster": "has space", "principals": []},
                {"name": "a", "cluster": "c", "principals": ["x*y"]}
            ]),
            Some(json!({"name": "", "cluster": ""})),
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "d.identities[1].name",
                "d.identities[0].principals",
                "d.identities[0].cluster",
                "d.identities[1].principals[0]",
                "d.defaultIdentity.name",
                "d.defaultIdentity.cluster"
            ],
            "{e:?}"
        );
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn single_cluster_mode_names_a_secret_per_identity() {
        let m = mapping_in(
            json!([
                {"name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"]},
                {"name": "team.app2", "secret": "kubernetes://team-app2", "principals": ["cluster.local/ns/team/*"]}
            ]),
            Some(json!({"name": "shared"})),
            Some("partner|all"),
        )
        .unwrap();
        let app1 = m.select("cluster.local/ns/team/sa/app1").unwrap();
        assert_eq!((&*app1.cluster, app1.secret.as_deref()), ("partner|all", Some("team.app1")));
        let app2 = m.select("cluster.local/ns/team/sa/app2").unwrap();
        assert_eq!(app2.secret.as_deref(), Some("kubernetes://team-app2"));
        let other = m.select("cluster.local/ns/other/sa/x").unwrap();
        assert_eq!((&*other.cluster, other.secret.as_deref()), ("partner|all", Some("shared")));

        // One cluster per identity: no secret.
        let m = mapping(json!([{"name": "a", "cluster": "c", "principals": ["*"]}]), None).unwrap();
        assert_eq!(m.select("cluster.local/ns/x/sa/y").unwrap().secret, None);
    }

    /// A field the destination's mode ignores would be accepted and do nothing: each is refused by path.
    #[wasm_bindgen_test(unsupported = test)]
    fn a_field_of_the_other_mode_is_refused() {
        let e = mapping_in(
            json!([
                {"name": "a", "cluster": "c", "principals": ["*"]},
                {"name": "b", "secret": "bad secret", "principals": ["*"]}
            ]),
            Some(json!({"name": "d", "cluster": "c2"})),
            Some("has.dot"),
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            ["d.sharedCluster", "d.identities[0].cluster", "d.identities[1].secret", "d.defaultIdentity.cluster"],
            "{e:?}"
        );
        assert!(e[1].contains("sharedCluster, which carries every identity"), "{e:?}");

        let e = mapping(
            json!([
                {"name": "a", "principals": ["*"]},
                {"name": "b", "cluster": "c", "secret": "s", "principals": ["*"]}
            ]),
            Some(json!({"name": "d"})),
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["d.identities[0].cluster", "d.identities[1].secret", "d.defaultIdentity.cluster"], "{e:?}");
        assert!(e[0].contains("required"), "{e:?}");
        assert!(e[1].contains("only a destination with a sharedCluster"), "{e:?}");
    }
}
