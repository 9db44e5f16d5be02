//! The external identities a policy declares: each by name, with the mesh principals it is for and what
//! the partner sees of its client certificate. Destinations name the identities they may present
//! ([`crate::identity_mapping`]); what the partner sees is checked wherever certificate material meets the
//! policy — `sds`, `secrets`, `doctor` — by [`ExpectedCertificate::differences`].

use rustc_hash::FxHashMap;

use crate::config_document::{CertificateSpec, IdentitySpec};
use crate::config_error::{identity_name, k8s_form, shown, Errors, JsonPath, RESERVED_PREFIX};
use crate::pattern::{normalizer, Case, Pattern};
use crate::policy::EMPTY_LIST;
use crate::policy_value::ValueRules;

/// The secret a single-cluster destination's certificate mapper falls back to when a connection names no
/// identity: no SDS source may define it, so such a connection presents nothing.
pub const NO_IDENTITY_SECRET: &str = "egress-identity-no-identity";

/// A declared external identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: Box<str>,
    /// The principal patterns of the callers it is for, normalized as policies compare them (`td/path`,
    /// the local family's trust domain made the local one; `Display` writes them back); `None`: only a
    /// `defaultIdentity`.
    pub principals: Option<Vec<Pattern>>,
    pub certificate: ExpectedCertificate,
}

impl Identity {
    /// The name in clusters and Kubernetes objects ([`k8s_form`]).
    pub fn k8s_name(&self) -> String {
        k8s_form(&self.name)
    }
}

/// What an identity's client certificate carries, as declared (or defaulted: `CN=<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedCertificate {
    pub common_name: Option<Box<str>>,
    /// Every DNS SAN, lower case, sorted.
    pub dns_names: Option<Vec<Box<str>>>,
    /// Every URI SAN, sorted.
    pub uris: Option<Vec<Box<str>>>,
    /// The SDS secret a single-cluster gateway fetches it as, when not the identity's name.
    pub secret: Option<Box<str>>,
    /// Whether the common name is the default (nothing was declared).
    pub defaulted: bool,
}

/// What a certificate presents, as read from it (PEM, or Envoy's `/certs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// Every CN of the subject.
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

impl ExpectedCertificate {
    /// How `presented` differs from what is declared, one line per difference; empty when it matches.
    pub fn differences(&self, presented: &PresentedCertificate) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cn) = &self.common_name {
            if presented.common_names.len() != 1 || presented.common_names.first().map(String::as_str) != Some(cn) {
                let shown_cns = if presented.common_names.is_empty() {
                    "no CN".to_string()
                } else {
                    presented.common_names.iter().map(|c| format!("CN={c}")).collect::<Vec<_>>().join(", ")
                };
                out.push(format!("the subject has {shown_cns}, not the declared CN={cn}"));
            }
        }
        let compare =
            |what: &str, declared: &Option<Vec<Box<str>>>, actual: &[String], lower: bool, out: &mut Vec<String>| {
                let Some(declared) = declared else { return };
                let mut actual: Vec<String> =
                    actual.iter().map(|v| if lower { v.to_ascii_lowercase() } else { v.clone() }).collect();
                actual.sort();
                actual.dedup();
                let declared: Vec<&str> = declared.iter().map(|v| &**v).collect();
                if actual.iter().map(String::as_str).ne(declared.iter().copied()) {
                    out.push(format!(
                        "its {what} SANs are [{}], not the declared [{}]",
                        actual.join(", "),
                        declared.join(", ")
                    ));
                }
            };
        compare("DNS", &self.dns_names, &presented.dns_names, true, &mut out);
        compare("URI", &self.uris, &presented.uris, false, &mut out);
        out
    }

    /// What the partner sees, e.g. `CN=team.app1` or `CN=x, DNS SANs [a.example]`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cn) = &self.common_name {
            parts.push(format!("CN={cn}"));
        }
        if let Some(names) = &self.dns_names {
            parts.push(format!("DNS SANs [{}]", names.join(", ")));
        }
        if let Some(uris) = &self.uris {
            parts.push(format!("URI SANs [{}]", uris.join(", ")));
        }
        parts.join(", ")
    }
}

/// The declared identities, by name.
#[derive(Debug, Default)]
pub struct Identities {
    list: Vec<Identity>,
    by_name: FxHashMap<Box<str>, usize>,
}

impl Identities {
    /// Compiles `identities`; errors name `identities[i]…`.
    pub fn compile(specs: Vec<IdentitySpec>, rules: &ValueRules<'_>, errors: &mut Errors) -> Self {
        let path = JsonPath::Root("identities");
        let mut this = Self::default();
        let mut k8s_names: FxHashMap<String, usize> = FxHashMap::default();
        for (i, spec) in specs.into_iter().enumerate() {
            let path = path.index(i);
            if let Err(e) = identity_name(&spec.name) {
                errors.push(path.field("name"), e);
            } else if let Some(other) = this.by_name.get(spec.name.as_str()) {
                errors.push(path.field("name"), format!("{:?} is declared twice (identities[{other}])", spec.name));
            } else if let Some(other) = k8s_names.insert(k8s_form(&spec.name), i) {
                errors.push(
                    path.field("name"),
                    format!(
                        "{:?} and identities[{other}] have the same name in clusters and Kubernetes objects, {:?}",
                        spec.name,
                        k8s_form(&spec.name)
                    ),
                );
            }
            let principals = compile_principals(spec.principals, &path.field("principals"), rules, errors);
            let certificate = compile_certificate(&spec.name, spec.certificate, &path.field("certificate"), errors);
            this.by_name.entry(spec.name.as_str().into()).or_insert(this.list.len());
            this.list.push(Identity { name: spec.name.into_boxed_str(), principals, certificate });
        }
        this
    }

    /// The identity named `name`, with its position in `identities`.
    pub fn get(&self, name: &str) -> Option<(usize, &Identity)> {
        let i = *self.by_name.get(name)?;
        Some((i, self.list.get(i)?))
    }

    /// Every identity, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn compile_principals(
    values: Option<Vec<String>>,
    path: &JsonPath<'_>,
    rules: &ValueRules<'_>,
    errors: &mut Errors,
) -> Option<Vec<Pattern>> {
    let values = values?;
    if values.is_empty() {
        errors.push(path, "an empty list: omit principals for an identity that is only a defaultIdentity");
        return None;
    }
    let mut out = Vec::with_capacity(values.len());
    let principal = normalizer(|v| rules.principal(v));
    if let Err((bad, e)) = Pattern::parse_each(values, Case::Sensitive, &principal, |p| out.push(p)) {
        errors.push(path.index(bad), e);
    }
    Some(out)
}

fn compile_certificate(
    name: &str,
    spec: Option<CertificateSpec>,
    path: &JsonPath<'_>,
    errors: &mut Errors,
) -> ExpectedCertificate {
    let spec = spec.unwrap_or_default();
    let declared = spec.common_name.is_some() || spec.dns_names.is_some() || spec.uris.is_some();
    let common_name = match spec.common_name {
        Some(cn) if cn.is_empty() || cn.len() > 64 || cn.chars().any(char::is_control) => {
            errors.push(
                path.field("commonName"),
                format!("{} is not a common name (1 to 64 characters, no control characters)", shown(&cn)),
            );
            None
        }
        Some(cn) => Some(cn.into_boxed_str()),
        None if declared => None,
        None => Some(name.into()),
    };
    let list = |values: Option<Vec<String>>, field: &str, check: fn(&str) -> bool, errors: &mut Errors| {
        let values = values?;
        let path = path.field(field);
        if values.is_empty() {
            errors.push(path, format!("{EMPTY_LIST}: omit {field} to leave them unchecked"));
            return None;
        }
        let mut out: Vec<Box<str>> = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            if check(&v) {
                out.push(if field == "dnsNames" { v.to_ascii_lowercase().into() } else { v.into() });
            } else {
                errors.push(
                    path.index(i),
                    format!("{} is not a {}", shown(&v), if field == "dnsNames" { "DNS name" } else { "URI" }),
                );
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    };
    let dns_names = list(spec.dns_names, "dnsNames", dns_name, errors);
    let uris = list(spec.uris, "uris", uri, errors);
    let secret = spec.secret.and_then(|secret| {
        let ok = !secret.is_empty() && secret.len() <= 256 && secret.bytes().all(|c| c.is_ascii_graphic());
        if !ok {
            errors.push(path.field("secret"), format!("{} is not an SDS secret name (1 to 256 visible ASCII characters)", shown(&secret)));
            None
        } else if secret.starts_with(RESERVED_PREFIX) {
            errors.push(
                path.field("secret"),
                format!("{secret:?}: secrets starting with {RESERVED_PREFIX:?} are the gateway's own ({NO_IDENTITY_SECRET:?} is kept for connections that name no identity)"),
            );
            None
        } else {
            Some(secret.into_boxed_str())
        }
    });
    ExpectedCertificate { common_name, dns_names, uris, secret, defaulted: !declared }
}

fn dns_name(value: &str) -> bool {
    let v = value.strip_prefix("*.").unwrap_or(value);
    !v.is_empty()
        && v.len() <= 253
        && v.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
}

fn uri(value: &str) -> bool {
    value.split_once(':').is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
            && !rest.is_empty()
            && value.bytes().all(|c| c.is_ascii_graphic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn compile(specs: serde_json::Value) -> Result<Identities, Vec<String>> {
        let specs: Vec<IdentitySpec> = serde_json::from_value(specs).unwrap();
        let trust = crate::trust_domain::TrustDomains::new(&["cluster.local".into()], None, &[], None).unwrap();
        let rules = ValueRules { trust: &trust, paths: crate::request::PathMatching::default() };
        let mut errors = Errors::default();
        let ids = Identities::compile(specs, &rules, &mut errors);
        if errors.is_empty() {
            Ok(ids)
        } else {
            Err(errors.into_vec().iter().map(ToString::to_string).collect())
        }
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn identities_declare_what_the_partner_sees() {
        let ids = compile(json!([
            {"name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"]},
            {"name": "acme.invoicer", "certificate": {"commonName": "Invoicer", "dnsNames": ["B.example", "a.example"]}}
        ]))
        .unwrap();
        let (i, app1) = ids.get("team.app1").unwrap();
        assert_eq!(i, 0);
        let principals: Vec<String> = app1.principals.iter().flatten().map(ToString::to_string).collect();
        assert_eq!(principals, ["cluster.local/ns/team/sa/app1"]);
        assert_eq!(app1.certificate.common_name.as_deref(), Some("team.app1"));
        assert!(app1.certificate.defaulted);
        let invoicer = &ids.get("acme.invoicer").unwrap().1.certificate;
        assert_eq!(invoicer.describe(), "CN=Invoicer, DNS SANs [a.example, b.example]");
        let presented = |cn: &[&str], dns: &[&str]| PresentedCertificate {
            common_names: cn.iter().map(|s| s.to_string()).collect(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            uris: vec![],
        };
        assert!(invoicer.differences(&presented(&["Invoicer"], &["a.example", "b.EXAMPLE"])).is_empty());
        let d = invoicer.differences(&presented(&["acme.reconciler"], &["a.example"]));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("CN=acme.reconciler, not the declared CN=Invoicer"), "{d:?}");
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn bad_declarations_name_the_field() {
        let e = compile(json!([
            {"name": "Team.App1"},
            {"name": "a.b", "principals": []},
            {"name": "a-b", "certificate": {"dnsNames": [], "uris": ["nope"], "secret": "egress-identity-no-identity"}},
            {"name": "a.b"}
        ]))
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "identities[0].name",
                "identities[1].principals",
                "identities[2].name",
                "identities[2].certificate.dnsNames",
                "identities[2].certificate.uris[0]",
                "identities[2].certificate.secret",
                "identities[3].name"
            ],
            "{e:?}"
        );
    }
}
