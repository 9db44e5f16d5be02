//! Trust domains: which ones the gateway accepts (the local one, its aliases, federated ones), and the
//! Istio alias semantics that let a mesh migrate (e.g. `example.com` → `example.org`) without breaking
//! policy matches or external identities.
//!
//! The local trust domain and its aliases form one family. Policies and mappings are compiled with every
//! member of the family — and the name `cluster.local` — rewritten to the local trust domain, and a
//! caller from an alias is matched as if it came from the local trust domain. A pattern naming the old
//! trust domain therefore still matches the workload after it moves to the new one, and vice versa.

use rustc_hash::FxHashSet;
use std::borrow::Cow;

use crate::spiffe_id::{validate_trust_domain, SpiffeId};

/// The name that stands for "the local trust domain and all its aliases" in policies and mappings.
pub const LOCAL_PLACEHOLDER: &str = "cluster.local";

#[derive(Debug, Clone, Default)]
pub struct TrustDomains {
    /// Every trust domain a caller may come from: local, aliases, federated.
    accepted: FxHashSet<Box<str>>,
    /// The local trust domain, if one is configured.
    local: Option<Box<str>>,
    /// The local trust domain's aliases (without the local one).
    aliases: FxHashSet<Box<str>>,
}

impl TrustDomains {
    /// `federated`: accepted trust domains outside the local family. `platform`: the trust domain the
    /// platform gives callers (Kuma's MeshIdentity), which joins the local family: the local trust domain
    /// when the policy names none, else an alias of it (a federated entry of the same name moves there).
    /// Returns `(path, message)` errors.
    pub fn new(
        federated: &[String],
        local: Option<&str>,
        aliases: &[String],
        platform: Option<&str>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut this = Self::default();
        let mut add = |path: String, td: &str, this: &mut Self| {
            if let Err(e) = validate_trust_domain(td) {
                errors.push((path, format!("{td:?}: {e}")));
            } else if !this.accepted.insert(td.into()) {
                errors.push((path, format!("{td:?} is listed twice (trustDomains, localTrustDomain and trustDomainAliases must not overlap)")));
            }
        };
        if let Some(local) = local {
            add("localTrustDomain".into(), local, &mut this);
            this.local = Some(local.into());
        }
        for (i, alias) in aliases.iter().enumerate() {
            add(format!("trustDomainAliases[{i}]"), alias, &mut this);
            this.aliases.insert(alias.as_str().into());
        }
        for (i, td) in federated.iter().enumerate() {
            add(format!("trustDomains[{i}]"), td, &mut this);
        }
        if local.is_none() && !aliases.is_empty() {
            errors.push(("trustDomainAliases".into(), "aliases need a localTrustDomain".into()));
        }
        if let Some(td) = platform.filter(|td| validate_trust_domain(td).is_ok()) {
            this.accepted.insert(td.into());
            match &this.local {
                None => this.local = Some(td.into()),
                Some(local) if **local == *td => {}
                Some(_) => {
                    this.aliases.insert(td.into());
                }
            }
        }
        if this.accepted.is_empty() {
            errors
                .push(("trustDomains".into(), "must list at least one trust domain (or set localTrustDomain)".into()));
        }
        if errors.is_empty() {
            Ok(this)
        } else {
            Err(errors)
        }
    }

    /// The trust domains a caller's canonical principal can have (aliases are matched as the local one):
    /// what a policy value must name to ever match.
    pub fn matchable(&self) -> impl Iterator<Item = &str> {
        self.accepted.iter().map(|td| &**td).filter(|td| !self.aliases.contains(*td))
    }

    /// The local trust domain, if there is one (the policy's, or the platform's).
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// Whether callers from `td` may use the gateway.
    pub fn accepts(&self, td: &str) -> bool {
        self.accepted.contains(td)
    }

    /// The trust domain a caller's `td` is matched as: the local one for an alias, else itself.
    pub fn canonical<'a>(&'a self, td: &'a str) -> &'a str {
        match &self.local {
            Some(local) if self.aliases.contains(td) => local,
            _ => td,
        }
    }

    /// The caller's principal (`td/path`) as policies see it: with an alias replaced by the local name.
    pub fn canonical_principal<'a>(&self, id: &'a SpiffeId) -> Cow<'a, str> {
        match &self.local {
            Some(local) if self.aliases.contains(id.trust_domain()) => Cow::Owned(format!("{local}{}", id.path())),
            _ => Cow::Borrowed(id.principal()),
        }
    }

    /// A trust-domain pattern (`trustDomains` of a rule) rewritten for matching canonical callers.
    pub fn canonical_trust_domain_pattern<'a>(&self, pattern: &'a str) -> Cow<'a, str> {
        match &self.local {
            Some(local) if pattern != &**local && self.in_local_family(pattern) => Cow::Owned(local.to_string()),
            _ => Cow::Borrowed(pattern),
        }
    }

    /// A principal pattern (`spiffe://td/path` or `td/path`, maybe with wildcards) rewritten to `td/path`
    /// with a local-family trust domain replaced by the local trust domain.
    pub fn canonical_principal_pattern<'a>(&self, pattern: &'a str) -> Cow<'a, str> {
        let pattern = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
        let (td, rest) = match pattern.find('/') {
            Some(i) => pattern.split_at(i),
            None => (pattern, ""),
        };
        match &self.local {
            Some(local) if td != &**local && self.in_local_family(td) => Cow::Owned(format!("{local}{rest}")),
            _ => Cow::Borrowed(pattern),
        }
    }

    fn in_local_family(&self, td: &str) -> bool {
        td == LOCAL_PLACEHOLDER || self.local.as_deref() == Some(td) || self.aliases.contains(td)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn migrating() -> TrustDomains {
        TrustDomains::new(&s(&["partner.example"]), Some("example.org"), &s(&["example.com"]), None).unwrap()
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn accepts_local_aliases_and_federated_only() {
        let t = migrating();
        for td in ["example.org", "example.com", "partner.example"] {
            assert!(t.accepts(td), "{td}");
        }
        assert!(!t.accepts("cluster.local"), "the placeholder is not itself a trusted trust domain");
        assert!(!t.accepts("evil.example"));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn aliases_and_placeholder_are_rewritten_to_local() {
        let t = migrating();
        let old = SpiffeId::parse("spiffe://example.com/ns/team/sa/app1").unwrap();
        let new = SpiffeId::parse("spiffe://example.org/ns/team/sa/app1").unwrap();
        let fed = SpiffeId::parse("spiffe://partner.example/ns/team/sa/app1").unwrap();
        assert_eq!(t.canonical_principal(&old), "example.org/ns/team/sa/app1");
        assert_eq!(t.canonical_principal(&new), "example.org/ns/team/sa/app1");
        assert_eq!(t.canonical_principal(&fed), "partner.example/ns/team/sa/app1");
        assert_eq!(t.canonical("example.com"), "example.org");
        assert_eq!(t.canonical("partner.example"), "partner.example");
        for p in
            ["spiffe://example.com/ns/team/sa/app1", "cluster.local/ns/team/sa/app1", "example.org/ns/team/sa/app1"]
        {
            assert_eq!(t.canonical_principal_pattern(p), "example.org/ns/team/sa/app1", "{p}");
        }
        assert_eq!(t.canonical_principal_pattern("example.com/ns/team/*"), "example.org/ns/team/*");
        assert_eq!(t.canonical_principal_pattern("*/sa/app1"), "*/sa/app1");
        assert_eq!(t.canonical_principal_pattern("partner.example/ns/x"), "partner.example/ns/x");
        assert_eq!(t.canonical_principal_pattern("cluster.local"), "example.org");
        assert_eq!(t.canonical_trust_domain_pattern("example.com"), "example.org");
        assert_eq!(t.canonical_trust_domain_pattern("cluster.local"), "example.org");
        assert_eq!(t.canonical_trust_domain_pattern("partner.example"), "partner.example");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn without_local_trust_domain_nothing_is_rewritten() {
        let t = TrustDomains::new(&s(&["cluster.local"]), None, &[], None).unwrap();
        assert_eq!(t.canonical_principal_pattern("spiffe://cluster.local/ns/a"), "cluster.local/ns/a");
        assert!(t.accepts("cluster.local"));
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn invalid_sets_name_the_field() {
        let e = TrustDomains::new(&s(&["example.org", "Bad"]), Some("example.org"), &s(&["x..y", "example.com"]), None)
            .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["trustDomains[0]", "trustDomains[1]"]);
        let e = TrustDomains::new(&[], None, &s(&["a"]), None).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["trustDomainAliases"]);
        let e = TrustDomains::new(&[], None, &[], None).unwrap_err();
        assert_eq!(e[0].0, "trustDomains");
    }

    /// Kuma's MeshIdentity trust domain joins the local family: "cluster.local/..." in a policy means the
    /// mesh's own callers on every platform.
    #[wasm_bindgen_test(unsupported = test)]
    fn the_platform_trust_domain_joins_the_local_family() {
        let kuma = "default.zone-1.mesh.local";
        let id = SpiffeId::parse("spiffe://default.zone-1.mesh.local/ns/team/sa/app1").unwrap();
        // The policy names a local trust domain: the platform's becomes an alias of it.
        let t = TrustDomains::new(&[], Some("cluster.local"), &[], Some(kuma)).unwrap();
        assert!(t.accepts(kuma));
        assert_eq!(t.canonical_principal(&id), "cluster.local/ns/team/sa/app1");
        // No local trust domain: the platform's is it, and "cluster.local" in patterns stands for it.
        let t = TrustDomains::new(&s(&["partner.example"]), None, &[], Some(kuma)).unwrap();
        assert_eq!(t.canonical_principal_pattern("cluster.local/ns/team/*"), "default.zone-1.mesh.local/ns/team/*");
        assert_eq!(t.canonical_principal(&id), "default.zone-1.mesh.local/ns/team/sa/app1");
        // Listed as federated: it moves into the local family.
        let t = TrustDomains::new(&s(&[kuma]), Some("cluster.local"), &[], Some(kuma)).unwrap();
        assert_eq!(t.canonical_principal(&id), "cluster.local/ns/team/sa/app1");
    }
}
