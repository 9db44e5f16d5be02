//! Mapping of mesh principals to external identities, per destination: an ordered list, first match wins.
//!
//! Each external identity is one Envoy cluster whose upstream TLS context presents that identity's
//! client certificate (e.g. `spiffe://cluster.local/ns/team/sa/app1` → cluster `partner-api|team-app1`,
//! certificate `CN=team.app1`).

use crate::config_document::{ExternalIdentitySpec, IdentitySpec};
use crate::config_error::{validate_cluster_name, validate_name, validate_unique_names, Errors, JsonPath};
use crate::first_match_index::FirstMatchIndex;
use crate::pattern::{normalizer, Case, Pattern};
use crate::policy_value::ValueRules;

/// An external identity: its name (as the partner knows it) and the cluster that presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub name: Box<str>,
    pub cluster: Box<str>,
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
        path: &JsonPath<'_>,
        rules: &ValueRules<'_>,
        next_index: &mut usize,
        errors: &mut Errors,
    ) -> Self {
        let mut identity = |name: String, cluster: String| {
            let index = *next_index;
            *next_index += 1;
            ExternalIdentity { name: name.into_boxed_str(), cluster: cluster.into_boxed_str(), index }
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
            validate_cluster_name(errors, &path.field("cluster"), &spec.cluster);
            let principals_path = path.field("principals");
            if spec.principals.is_empty() {
                errors.push(principals_path, "must list at least one principal pattern");
            }
            let ordinal = entries.len();
            match Pattern::parse_each(spec.principals, Case::Sensitive, &principal, |p| index.insert(p, ordinal)) {
                Ok(()) => entries.push(identity(spec.name, spec.cluster)),
                Err((bad, e)) => errors.push(principals_path.index(bad), e),
            }
        }
        let default = default.map(|spec| {
            let path = path.field("defaultIdentity");
            validate_name(errors, &path.field("name"), &spec.name);
            validate_cluster_name(errors, &path.field("cluster"), &spec.cluster);
            identity(spec.name, spec.cluster)
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
        let specs: Vec<IdentitySpec> = serde_json::from_value(identities).unwrap();
        let default: Option<ExternalIdentitySpec> = default.map(|d| serde_json::from_value(d).unwrap());
        let mut errors = Errors::default();
        let mut next = 10;
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[]).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let m = IdentityMapping::compile(specs, default, &JsonPath::Root("d"), &rules, &mut next, &mut errors);
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
                "d.identities[0].cluster",
                "d.identities[0].principals",
                "d.identities[1].principals[0]",
                "d.defaultIdentity.name",
                "d.defaultIdentity.cluster"
            ],
            "{e:?}"
        );
    }
}
