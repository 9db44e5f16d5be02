//! Configuration errors: the JSON path of the offending field and what is wrong with it, collected while a
//! document is compiled, and the checks several parts of the configuration share.
//!
//! Paths are built as compilation descends ([`JsonPath`]) and formatted only when an error is recorded, so a
//! valid document costs no string building.

use std::collections::HashSet;
use std::fmt;

/// One configuration error: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, e.g. `gateway.policies[0].action`; `.` for the document itself.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The JSON path of a field, built as compilation descends and formatted only when an error is recorded:
/// a valid document costs no string building. `Root("destinations")`, then `.index(0)`, `.field("ports")`
/// displays as `destinations[0].ports`.
#[derive(Clone, Copy, Debug)]
pub enum JsonPath<'a> {
    /// A top-level field, or a path given whole (`gateway.policies`).
    Root(&'a str),
    Field(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl<'a> JsonPath<'a> {
    pub fn field(&'a self, name: &'a str) -> Self {
        Self::Field(self, name)
    }

    pub fn index(&'a self, index: usize) -> Self {
        Self::Index(self, index)
    }
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root(name) => f.write_str(name),
            Self::Field(parent, name) => write!(f, "{parent}.{name}"),
            Self::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Collects errors while compiling.
#[derive(Debug, Default)]
pub struct Errors(Vec<ConfigError>);

impl Errors {
    /// Records an error; `path` is a [`JsonPath`] or a string, formatted only here.
    pub fn push(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(ConfigError::new(path.to_string(), message.to_string()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

/// Checks that a value will be a valid header value and Envoy cluster name (visible ASCII, no spaces).
pub fn validate_cluster_name(errors: &mut Errors, path: &JsonPath<'_>, name: &str) {
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME || !name.bytes().all(|c| c.is_ascii_graphic()) {
        errors.push(
            path,
            format!(
                "{} is not a cluster name (1 to {MAX_CLUSTER_NAME} visible ASCII characters, no spaces)",
                shown(name)
            ),
        );
    } else if name.contains('.') {
        // Envoy's stats name a cluster by what stands between `cluster.` and the next dot.
        errors.push(
            path,
            format!(
                "{} has a '.', and Envoy's stats take a cluster's name up to its first dot: this cluster's metrics would be filed under {:?} (use '-' or '_', e.g. {:?})",
                shown(name),
                name.split('.').next().unwrap_or_default(),
                name.replace('.', "-")
            ),
        );
    }
}

/// The longest name of a policy, destination or external identity: names go into every audit record and
/// metric name.
pub const MAX_NAME: usize = 128;
/// The longest cluster name.
pub const MAX_CLUSTER_NAME: usize = 256;

/// A name of a policy, destination or external identity: 1 to [`MAX_NAME`] letters, digits and `._-:/@`.
pub fn validate_name(errors: &mut Errors, path: &JsonPath<'_>, name: &str) {
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"._-:/@".contains(&c);
    if name.is_empty() {
        errors.push(path, "must not be empty");
    } else if name.len() > MAX_NAME || !name.bytes().all(ok) {
        errors.push(path, format!("{} is not a name: 1 to {MAX_NAME} letters, digits and \"._-:/@\"", shown(name)));
    }
}

/// A DNS-1123 label (a Kubernetes object name part): 1 to 63 lower-case letters, digits and `-`, starting
/// and ending with a letter or digit.
pub fn dns_label(value: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&value.len())
        && value.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a DNS label: 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit", shown(value)))
    }
}

/// Names that belong to the gateway itself (clusters `egress-identity-unrouted`, `-admin`, `-sds`, the
/// secret `egress-identity-no-identity`, Kubernetes objects `egress-identity-*`): no destination, identity or
/// secret of a policy may take one.
pub const RESERVED_PREFIX: &str = "egress-identity";

/// A destination's name: a DNS label (it names clusters, MeshExternalServices and Secrets), not one of the
/// gateway's own.
pub fn destination_name(value: &str) -> Result<(), String> {
    dns_label(value)?;
    if value.starts_with(RESERVED_PREFIX) {
        return Err(format!("{value:?}: names starting with {RESERVED_PREFIX:?} are the gateway's own (its unrouted, admin and SDS clusters)"));
    }
    Ok(())
}

/// An identity's name: 1 to 63 lower-case letters, digits, `.` and `-`, starting and ending with a letter or
/// digit (it names SDS files, Kubernetes Secrets and clusters, in its [`k8s_form`]).
pub fn identity_name(value: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&value.len())
        && value.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not an identity name: 1 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit (it names files, Secrets and clusters)", shown(value)))
    }
}

/// The form of an identity name in cluster and Kubernetes names: `.` becomes `-` (`team.app1` → `team-app1`).
pub fn k8s_form(name: &str) -> String {
    name.replace('.', "-")
}

/// A value as an error message shows it: quoted, and cut short when it is long.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}... ({} bytes)", value.get(..end).unwrap_or_default(), value.len()),
        None => format!("{value:?}"),
    }
}

/// Reports names used twice within the list at `path` (whatever else is wrong with them is reported apart).
pub fn report_duplicates<'a>(errors: &mut Errors, path: &JsonPath<'_>, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            errors.push(path.index(i).field("name"), format!("{name:?} is used twice"));
        }
    }
}

/// Reports names that are not names ([`validate_name`]) or are used twice within the list at `path`.
pub fn validate_unique_names<'a, I>(errors: &mut Errors, path: &JsonPath<'_>, names: I)
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: ExactSizeIterator,
{
    let names = names.into_iter();
    // One name cannot be repeated: no set for the usual destination with one policy and one identity.
    let mut seen = (names.len() > 1).then(|| HashSet::with_capacity(names.len()));
    for (i, name) in names.enumerate() {
        let mut invalid = Errors::default();
        validate_name(&mut invalid, &path.index(i).field("name"), name);
        if !invalid.is_empty() {
            errors.0.extend(invalid.0);
        } else if seen.as_mut().is_some_and(|seen| !seen.insert(name)) {
            errors.push(path.index(i).field("name"), format!("{name:?} is used twice"));
        }
    }
}
