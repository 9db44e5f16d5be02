//! Mapping of mesh principals to external identities, per destination: an ordered list, first match wins.
//!
//! Each external identity is one Envoy cluster whose upstream TLS context presents that identity's
//! client certificate (e.g. `spiffe://cluster.local/ns/team/sa/app1` → cluster `partner-api|team.app1`,
//! certificate `CN=team.app1`).

use crate::config::{validate_cluster_name, Errors, ExternalIdentitySpec, IdentitySpec};
use crate::first_match_index::FirstMatchIndex;
use crate::pattern::{normalizer, Case, PatternSet};
use crate::trust_domain::TrustDomains;

/// An external identity: its name (as the partner knows it) and the cluster that presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub name: Box<str>,
    pub cluster: Box<str>,
}

/// The ordered mappings of one destination.
#[derive(Debug, Default)]
pub struct IdentityMapping {
    entries: Vec<(PatternSet, ExternalIdentity)>,
    /// Finds the first matching entry without scanning them all.
    index: FirstMatchIndex,
    default: Option<ExternalIdentity>,
}

impl IdentityMapping {
    /// Compiles `identities` and `defaultIdentity` of the destination at `path` (e.g. `destinations[0]`).
    pub fn compile(
        identities: &[IdentitySpec],
        default: Option<&ExternalIdentitySpec>,
        path: &str,
        trust: &TrustDomains,
        errors: &mut Errors,
    ) -> Self {
        if identities.is_empty() && default.is_none() {
            errors.push(
                format!("{path}.identities"),
                "no identities and no defaultIdentity: every request to this destination would be denied",
            );
        }
        crate::config::validate_unique_names(
            errors,
            &format!("{path}.identities"),
            identities.iter().map(|i| i.name.as_str()),
        );
        let mut entries = Vec::with_capacity(identities.len());
        for (i, spec) in identities.iter().enumerate() {
            let path = format!("{path}.identities[{i}]");
            validate_cluster_name(errors, &format!("{path}.cluster"), &spec.cluster);
            if spec.principals.is_empty() {
                errors.push(format!("{path}.principals"), "must list at least one principal pattern");
            }
            match PatternSet::compile(&spec.principals, Case::Sensitive, &normalizer(|v| trust.canonical_principal_pattern(v))) {
                Ok(set) => entries.push((set, identity(&spec.name, &spec.cluster))),
                Err((index, e)) => errors.push(format!("{path}.principals[{index}]"), e),
            }
        }
        let default = default.map(|spec| {
            if spec.name.is_empty() {
                errors.push(format!("{path}.defaultIdentity.name"), "must not be empty");
            }
            validate_cluster_name(errors, &format!("{path}.defaultIdentity.cluster"), &spec.cluster);
            identity(&spec.name, &spec.cluster)
        });
        let mut index = FirstMatchIndex::default();
        for (i, (patterns, _)) in entries.iter().enumerate() {
            index.insert(patterns, i);
        }
        Self { entries, index, default }
    }

    /// The external identity for a principal (Istio form, `td/path`): first match, else the default.
    pub fn select(&self, principal: &str) -> Option<&ExternalIdentity> {
        self.index
            .first_match(Some(principal))
            .and_then(|i| self.entries.get(i))
            .map(|(_, identity)| identity)
            .or(self.default.as_ref())
    }

    /// Every external identity this mapping can select, default included.
    pub fn identities(&self) -> impl Iterator<Item = &ExternalIdentity> {
        self.entries.iter().map(|(_, identity)| identity).chain(self.default.as_ref())
    }
}

fn identity(name: &str, cluster: &str) -> ExternalIdentity {
    ExternalIdentity { name: name.into(), cluster: cluster.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn mapping(identities: serde_json::Value, default: Option<serde_json::Value>) -> Result<IdentityMapping, Vec<String>> {
        let specs: Vec<IdentitySpec> = serde_json::from_value(identities).unwrap();
        let default: Option<ExternalIdentitySpec> = default.map(|d| serde_json::from_value(d).unwrap());
        let mut errors = Errors::default();
        let m = IdentityMapping::compile(&specs, default.as_ref(), "d", &TrustDomains::default(), &mut errors);
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
