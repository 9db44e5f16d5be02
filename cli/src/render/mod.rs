//! `egress-identity render`: the Envoy bootstrap and the Istio and Kuma manifests that go with one policy
//! file, so nobody writes per-identity YAML by hand. Native only (never part of the wasm build).
//!
//! Every renderer builds a [`Yaml`] tree (ordered maps, comments, literal blocks) and prints it with the
//! small deterministic emitter below: the same policy and options always give the same bytes, so the
//! committed outputs (`envoy/gateway.yaml`, `examples/`) can be compared with a fresh render in the tests.

pub mod chart;
pub mod envoy;
pub mod forward_proxy;
pub mod hardening;
pub mod istio;
pub mod kuma;
pub mod network_policy;

use std::fmt::Write as _;

use chart::Knob;

use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use egress_identity_core::config_error::ConfigError;

/// A YAML node. Maps keep their insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum Yaml {
    Bool(bool),
    Int(i64),
    Str(String),
    /// A string printed as a literal block scalar (`key: |`), e.g. an embedded JSON document.
    Literal(String),
    /// Text that is already YAML in flow style (e.g. pretty JSON), printed verbatim, re-indented.
    Flow(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
    /// A node preceded by comment lines (printed before its map entry or sequence item).
    Commented(String, Box<Yaml>),
    /// A deploy-time setting and its value: the value, or in a chart the chart's value ([`Knob`]).
    Knob(Knob, String),
    /// A YAML document carried as a string (a literal block), printed in the style of the document around it.
    Embedded(Box<Yaml>),
}

/// How a tree is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// YAML.
    Plain,
    /// A Helm template of that YAML (`render --chart`): every text escaped, knobs as the chart's values.
    Template,
}

impl Style {
    /// `text` as printed in this style.
    fn text(self, text: &str) -> String {
        match self {
            Self::Plain => text.to_string(),
            Self::Template => chart::escape(text),
        }
    }
}

/// A map from `(key, value)` pairs, in this order.
pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Yaml)>) -> Yaml {
    Yaml::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A string scalar.
pub fn s(value: impl Into<String>) -> Yaml {
    Yaml::Str(value.into())
}

/// What tcp_proxy buffers of a caller's first bytes before its upstream connection is up (a TLS ClientHello
/// fits; egress-identity itself holds at most one ClientHello, 16 KiB, core::tls_client_hello).
pub const EARLY_DATA_BYTES: i64 = 65536;

/// The cluster tcp_proxy is configured with where egress-identity decides: it does not exist, so a
/// connection the filter did not route (it did not run) goes nowhere.
pub const UNROUTED_CLUSTER: &str = "egress-identity-unrouted";

/// The bootstrap's `stats_config`: Envoy's tag extraction for egress-identity's metrics (`;tag=value` parts
/// become labels, egress_identity_core::metrics), besides Envoy's default tags.
pub fn stats_config() -> Yaml {
    commented(
        "egress-identity's metrics carry their labels in the name (`;decision=deny;layer=gateway...`): these\nregexes make them Prometheus labels (egress_identity_decisions_total{decision=\"deny\",...}).",
        map([(
            "stats_tags",
            Yaml::Seq(
                egress_identity_core::metrics::TAGS
                    .iter()
                    .map(|(name, regex)| map([("tag_name", s(*name)), ("regex", s(*regex))]))
                    .collect(),
            ),
        )]),
    )
}

/// A cluster's `load_assignment`: one endpoint, `host:port`.
pub fn load_assignment(cluster: &str, host: &str, port: u16) -> Yaml {
    let address = map([("socket_address", map([("address", s(host)), ("port_value", int(port))]))]);
    let endpoint = map([("endpoint", map([("address", address)]))]);
    map([
        ("cluster_name", s(cluster)),
        ("endpoints", Yaml::Seq(vec![map([("lb_endpoints", Yaml::Seq(vec![endpoint]))])])),
    ])
}

/// An integer scalar.
pub fn int(value: impl Into<i64>) -> Yaml {
    Yaml::Int(value.into())
}

/// A sequence of strings.
pub fn strs<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Yaml {
    Yaml::Seq(values.into_iter().map(|v| Yaml::Str(v.into())).collect())
}

/// `node` preceded by the comment `text` (one `# ` line per line of text).
pub fn commented(text: impl Into<String>, node: Yaml) -> Yaml {
    Yaml::Commented(text.into(), Box::new(node))
}

impl From<&serde_json::Value> for Yaml {
    fn from(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Yaml::Flow("null".into()),
            Value::Bool(b) => Yaml::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Int(i),
                None => Yaml::Flow(n.to_string()),
            },
            Value::String(text) => Yaml::Str(text.clone()),
            Value::Array(items) => Yaml::Seq(items.iter().map(Yaml::from).collect()),
            Value::Object(object) => Yaml::Map(object.iter().map(|(k, v)| (k.clone(), Yaml::from(v))).collect()),
        }
    }
}

const RESERVED: &[&str] = &["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"];

/// Whether `text` can be printed as a plain scalar and read back as the same string (YAML 1.1 and 1.2).
fn plain_ok(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else { return false };
    if RESERVED.iter().any(|r| text.eq_ignore_ascii_case(r)) {
        return false;
    }
    if first.is_ascii_digit() {
        // Only durations such as `10s`, `5m`: never a number, a time or a version in YAML 1.1.
        let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = text.get(digits.len()..).unwrap_or("");
        return !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && ["s", "ms", "m", "h"].contains(&unit);
    }
    if !(first.is_ascii_alphabetic() || first == b'/' || first == b'_') {
        return false;
    }
    let body_ok = |b: u8| b.is_ascii_alphanumeric() || b"_./-@*:".contains(&b);
    bytes.iter().all(|b| body_ok(*b)) && !text.ends_with(':') && !text.contains(": ")
}

/// A scalar string as YAML: plain when unambiguous, else double-quoted (JSON escaping is valid YAML).
pub fn scalar(text: &str) -> String {
    if plain_ok(text) {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

fn comment_lines(out: &mut String, pad: &str, text: &str, style: Style) {
    for line in text.lines() {
        if line.is_empty() {
            let _ = writeln!(out, "{pad}#");
        } else {
            let _ = writeln!(out, "{pad}# {}", style.text(line));
        }
    }
}

fn is_inline(node: &Yaml) -> bool {
    match node {
        Yaml::Seq(items) => items.is_empty(),
        Yaml::Map(entries) => entries.is_empty(),
        Yaml::Literal(text) => !literal_ok(text),
        Yaml::Flow(text) => !text.contains('\n'),
        Yaml::Commented(_, inner) => is_inline(inner),
        Yaml::Embedded(inner) => !literal_ok(&to_yaml(inner)),
        Yaml::Bool(_) | Yaml::Int(_) | Yaml::Str(_) | Yaml::Knob(..) => true,
    }
}

fn literal_ok(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with([' ', '\t', '\n'])
        && !text.contains(['\t', '\r'])
        && !text.lines().any(|l| l.ends_with(' '))
}

fn inline(node: &Yaml, style: Style) -> String {
    match node {
        Yaml::Bool(b) => b.to_string(),
        Yaml::Int(i) => i.to_string(),
        Yaml::Str(text) | Yaml::Literal(text) => style.text(&scalar(text)),
        Yaml::Flow(text) => style.text(text),
        Yaml::Seq(_) => "[]".into(),
        Yaml::Map(_) => "{}".into(),
        Yaml::Commented(_, inner) => inline(inner, style),
        Yaml::Knob(knob, value) => match style {
            Style::Plain => scalar(value),
            Style::Template => knob.expression(),
        },
        // Not a literal block: its plain text, quoted (no knob of ours lands here).
        Yaml::Embedded(inner) => style.text(&scalar(&to_yaml(inner))),
    }
}

/// The header of a literal block: `|` keeps one final newline, `|-` none, `|+` all of them.
fn literal_header(text: &str) -> &'static str {
    if text.ends_with("\n\n") {
        "|+"
    } else if text.ends_with('\n') {
        "|"
    } else {
        "|-"
    }
}

/// The lines of a block, each indented by `pad` (a text ending in empty lines ends in as many: `|+`).
fn block_lines(out: &mut String, pad: &str, text: &str, style: Style) {
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{}", style.text(line));
        }
    }
}

/// Writes `node` as the value after `prefix` (`key:` or `-`, printed in `style`), at `indent` spaces.
fn node_after(out: &mut String, indent: usize, prefix: &str, node: &Yaml, in_seq: bool, style: Style) {
    let pad = " ".repeat(indent);
    match node {
        Yaml::Commented(text, inner) => {
            comment_lines(out, &pad, text, style);
            node_after(out, indent, prefix, inner, in_seq, style);
        }
        n if is_inline(n) => {
            let _ = writeln!(out, "{pad}{prefix} {}", inline(n, style));
        }
        Yaml::Literal(text) => {
            let _ = writeln!(out, "{pad}{prefix} {}", literal_header(text));
            block_lines(out, &" ".repeat(indent + 2), text, style);
        }
        Yaml::Embedded(inner) => {
            // Printed in this style already.
            let text = document(inner, style);
            let _ = writeln!(out, "{pad}{prefix} {}", literal_header(&text));
            block_lines(out, &" ".repeat(indent + 2), &text, Style::Plain);
        }
        Yaml::Flow(text) => {
            let _ = writeln!(out, "{pad}{prefix}");
            block_lines(out, &" ".repeat(indent + 2), text.trim_end(), style);
        }
        Yaml::Seq(items) => {
            let _ = writeln!(out, "{pad}{prefix}");
            // Sequences in maps are not indented (`key:\n- a`), as kubectl and Envoy's docs write them.
            let child = if in_seq { indent + 2 } else { indent };
            seq(out, child, items, style);
        }
        Yaml::Map(entries) => {
            if in_seq {
                // `- key: value` with the following keys aligned under the first.
                let mut first = String::new();
                map_entries(&mut first, indent + 2, entries, style);
                let inner_pad = " ".repeat(indent + 2);
                let mut lines = first.lines();
                // A leading comment stays above the `-`.
                let mut head = Vec::new();
                for line in lines.by_ref() {
                    if line.trim_start().starts_with('#') {
                        head.push(line.trim_start().to_string());
                        continue;
                    }
                    for h in &head {
                        let _ = writeln!(out, "{pad}{h}");
                    }
                    let _ = writeln!(out, "{pad}- {}", line.strip_prefix(&inner_pad).unwrap_or(line));
                    break;
                }
                for line in lines {
                    let _ = writeln!(out, "{line}");
                }
            } else {
                let _ = writeln!(out, "{pad}{prefix}");
                map_entries(out, indent + 2, entries, style);
            }
        }
        Yaml::Bool(_) | Yaml::Int(_) | Yaml::Str(_) | Yaml::Knob(..) => {}
    }
}

fn seq(out: &mut String, indent: usize, items: &[Yaml], style: Style) {
    for item in items {
        node_after(out, indent, "-", item, true, style);
    }
}

fn map_entries(out: &mut String, indent: usize, entries: &[(String, Yaml)], style: Style) {
    for (key, value) in entries {
        node_after(out, indent, &format!("{}:", style.text(&scalar(key))), value, false, style);
    }
}

/// One YAML document: `node` (a map or a sequence) in block style, ending with a newline.
pub fn to_yaml(node: &Yaml) -> String {
    document(node, Style::Plain)
}

/// [`to_yaml`] in `style`.
pub fn document(node: &Yaml, style: Style) -> String {
    let mut out = String::new();
    match node {
        Yaml::Commented(text, inner) => {
            comment_lines(&mut out, "", text, style);
            out.push_str(&document(inner, style));
        }
        Yaml::Map(entries) if !entries.is_empty() => map_entries(&mut out, 0, entries, style),
        Yaml::Seq(items) if !items.is_empty() => seq(&mut out, 0, items, style),
        other => {
            let _ = writeln!(out, "{}", inline(other, style));
        }
    }
    out
}

/// Several documents separated by `---`.
pub fn documents(nodes: &[Yaml]) -> String {
    nodes.iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

/// A rendered file: its documents, printed as YAML (`render`) or as a Helm template (`render --chart`).
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The file's path in the output directory.
    pub name: String,
    /// The comment at the top of the file.
    pub header: String,
    pub docs: Vec<Yaml>,
    /// Another form of a file of the same render (apply one of the two): a chart leaves it out.
    pub alternative: bool,
}

impl Manifest {
    /// A file of Kubernetes objects, each labelled with the version that rendered it ([`version_labels`]).
    pub fn new(name: &str, header: &str, docs: Vec<Yaml>) -> Self {
        let docs = docs.into_iter().map(version_labels).collect();
        Self { name: name.to_string(), header: header.to_string(), docs, alternative: false }
    }

    /// The file's text in `style`.
    pub fn text(&self, style: Style) -> String {
        let mut out = String::new();
        comment_lines(&mut out, "", &self.header, style);
        let docs: Vec<String> = self.docs.iter().map(|d| document(d, style)).collect();
        out.push_str(&docs.join("---\n"));
        out
    }

    /// `(file name, YAML)`: what `render` writes.
    pub fn file(&self) -> (String, String) {
        (self.name.clone(), self.text(Style::Plain))
    }
}

/// The labels every rendered object carries: `app.kubernetes.io/part-of: egress-identity` and
/// `app.kubernetes.io/version: <the CLI's version>` (`kubectl get … -l app.kubernetes.io/part-of=egress-identity`
/// lists what a release installed, and which version rendered it). Labels already there are kept.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

fn version_labels(doc: Yaml) -> Yaml {
    match doc {
        Yaml::Commented(comment, inner) => Yaml::Commented(comment, Box::new(version_labels(*inner))),
        Yaml::Map(mut entries) => {
            if let Some((_, Yaml::Map(metadata))) = entries.iter_mut().find(|(k, _)| k == "metadata") {
                let ours = [(PART_OF_LABEL, "egress-identity"), (VERSION_LABEL, env!("CARGO_PKG_VERSION"))];
                match metadata.iter_mut().find(|(k, _)| k == "labels") {
                    Some((_, Yaml::Map(labels))) => {
                        for (key, value) in ours {
                            if !labels.iter().any(|(k, _)| k == key) {
                                labels.push((key.to_string(), s(value)));
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        let at = metadata
                            .iter()
                            .position(|(k, _)| k != "name" && k != "namespace")
                            .unwrap_or(metadata.len());
                        let labels = Yaml::Map(ours.into_iter().map(|(k, v)| (k.to_string(), s(v))).collect());
                        metadata.insert(at, ("labels".to_string(), labels));
                    }
                }
            }
            Yaml::Map(entries)
        }
        other => other,
    }
}

/// A policy file compiled for one platform, ready to render.
pub struct PolicyFile {
    /// The plugin configuration the gateway loads: the policy's text, verbatim, plus the `platform` it is
    /// rendered for ([`egress_identity_core::platform::plugin_configuration`]).
    pub plugin_config: String,
    /// `plugin_config`, compiled by the core exactly as the filter compiles it: the one model every renderer
    /// builds from (clusters, hosts, identities, principals, namespaces).
    pub config: Config,
    /// The policy file's text, verbatim (a chart's `values.policy`).
    pub text: String,
}

impl PolicyFile {
    /// Compiles the policy for `platform` as the filter will (every error with its JSON path): what
    /// `validate --platform` and every `render` ask.
    pub fn for_platform(text: &str, platform: &PlatformSpec) -> Result<Self, Vec<ConfigError>> {
        let trimmed = format!("{}\n", text.trim());
        let config = Config::load_for(trimmed.as_bytes(), platform)?;
        let plugin_config = egress_identity_core::platform::plugin_configuration(&trimmed, platform)
            .ok_or_else(|| vec![ConfigError::new(".", "the policy is not a JSON object")])?;
        Ok(Self { plugin_config, config, text: text.to_string() })
    }

    /// The plugin configuration as a flow-style YAML node: the JSON text, verbatim but for its tabs and
    /// carriage returns (JSON whitespace, never inside a string), which YAML does not take as whitespace there.
    pub fn flow(&self) -> Yaml {
        Yaml::Flow(self.plugin_config.replace("\r\n", "\n").replace('\r', "\n").replace('\t', " "))
    }
}

/// An error that prevents rendering (the policy is valid, but cannot be rendered as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub String);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name usable in SDS file names, Kubernetes object names and secret names derived from it.
pub fn check_file_safe(what: &str, name: &str) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RenderError(format!("{what} {name:?}: only letters, digits, '-', '_' and '.' can be rendered")))
    }
}

/// An upstream `combined_validation_context`: the partner's certificate must carry `host` as a DNS SAN and
/// chain to the CA from `ca_secret` (an SDS secret config). Shared by the Envoy and Istio renderers.
pub fn dns_san_validation(host: &str, ca_secret: Yaml) -> Yaml {
    map([
        (
            "default_validation_context",
            map([(
                "match_typed_subject_alt_names",
                Yaml::Seq(vec![map([("san_type", s("DNS")), ("matcher", map([("exact", s(host))]))])]),
            )]),
        ),
        ("validation_context_sds_secret_config", ca_secret),
    ])
}

/// A Kubernetes DNS-1123 label made from `name` (lower case; other characters become `-`).
pub fn k8s_name(name: &str) -> String {
    let lowered: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    lowered.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object of a manifest file names the project and the version that rendered it; labels of its own
    /// are kept, and a label it already sets is not overwritten.
    #[test]
    fn rendered_objects_carry_the_version_labels() {
        let object = |metadata: Yaml| map([("kind", s("X")), ("metadata", metadata)]);
        let file = Manifest::new(
            "x.yaml",
            "header",
            vec![
                object(map([("name", s("a")), ("namespace", s("ns")), ("annotations", map([("k", s("v"))]))])),
                commented(
                    "c",
                    object(map([("name", s("b")), ("labels", map([(PART_OF_LABEL, s("mine")), ("x", s("z"))]))])),
                ),
            ],
        );
        let text = file.text(Style::Plain);
        let version = format!("{VERSION_LABEL}: \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            text.contains(&format!(
                "  namespace: ns\n  labels:\n    {PART_OF_LABEL}: egress-identity\n    {version}\n  annotations:"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("    {PART_OF_LABEL}: mine\n    x: z\n    {version}\n")), "{text}");
    }

    #[test]
    fn scalars_are_plain_only_when_unambiguous() {
        for plain in [
            "abc",
            "api.partner.example",
            "10s",
            "/v1/orders",
            "spiffe://td/ns/a",
            "type.googleapis.com/x.Y",
            "oci://r/x@sha256:ab",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        for quoted in [
            "",
            "yes",
            "No",
            "null",
            "443",
            "1.5",
            "127.0.0.1",
            "0x1f",
            "@type",
            "a: b",
            "a:",
            "partner-api|team-app1",
            "%START_TIME%",
            "*.x",
            "-a",
            "a #b",
            "{a}",
            "it's",
            "10",
            "1e3",
            "5d",
        ] {
            let out = scalar(quoted);
            assert!(out.starts_with('"'), "{quoted} -> {out}");
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), quoted);
        }
    }

    #[test]
    fn documents_are_block_style_with_comments_literals_and_flow() {
        let doc = commented(
            "head\n\nline",
            map([
                ("a", s("x")),
                ("n", int(5)),
                ("empty", Yaml::Map(vec![])),
                ("list", strs(["p", "q|r"])),
                (
                    "items",
                    Yaml::Seq(vec![
                        commented("first", map([("k", s("v")), ("l", Yaml::Bool(true))])),
                        map([("m", Yaml::Seq(vec![s("z")]))]),
                    ]),
                ),
                ("block", Yaml::Literal("{\n  \"a\": 1\n}\n".into())),
                ("flow", Yaml::Flow("{\n  \"b\": [1, 2]\n}".into())),
            ]),
        );
        let expected = "# head\n#\n# line\na: x\n\"n\": 5\nempty: {}\nlist:\n- p\n- \"q|r\"\nitems:\n# first\n- k: v\n  l: true\n- m:\n  - z\nblock: |\n  {\n    \"a\": 1\n  }\nflow:\n  {\n    \"b\": [1, 2]\n  }\n";
        assert_eq!(to_yaml(&doc), expected);
    }

    #[test]
    fn literal_headers_keep_the_final_newlines() {
        for (text, block) in [
            ("a\n", "|\n  a\n"),
            ("a", "|-\n  a\n"),
            ("a\n\n", "|+\n  a\n\n"),
            ("a\n\n\n", "|+\n  a\n\n\n"),
            ("a\n\n b\n", "|\n  a\n\n   b\n"),
        ] {
            let out = to_yaml(&map([("v", Yaml::Literal(text.into())), ("w", int(1))]));
            assert_eq!(out, format!("v: {block}w: 1\n"), "{text:?}");
        }
        // Not representable as a literal block: quoted instead.
        assert_eq!(to_yaml(&map([("v", Yaml::Literal(" lead\n".into()))])), "v: \" lead\\n\"\n");
    }

    #[test]
    fn a_policy_indented_with_tabs_is_flow_yaml_without_them() {
        let text = "{\r\n\t\"localTrustDomain\": \"td\",\r\t\"identities\": [{\"name\": \"i\"}],\r\n\t\"destinations\":\t[{\"name\": \"d\", \"host\": \"h.example\", \"port\": 443, \"defaultIdentity\": \"i\"}]\r\n}";
        let policy = PolicyFile::for_platform(text, &PlatformSpec::IstioGateway).unwrap();
        let out = to_yaml(&map([("pluginConfig", policy.flow())]));
        assert!(!out.contains(['\t', '\r']), "{out:?}");
        assert!(out.starts_with("pluginConfig:\n  {\n   \"localTrustDomain\": \"td\",\n   \"identities\""), "{out}");
        assert!(out.contains("\"destinations\": [{"), "{out}");
    }

    #[test]
    fn json_values_convert_in_their_order() {
        let v = serde_json::json!({"b": [1, "x"], "a": {"c": false}});
        assert_eq!(to_yaml(&Yaml::from(&v)), "a:\n  c: false\nb:\n- 1\n- x\n");
    }

    #[test]
    fn names_for_files_and_kubernetes() {
        assert!(check_file_safe("identity", "team.app1").is_ok());
        assert!(check_file_safe("identity", "CN=x y").is_err());
        assert!(check_file_safe("identity", ".hidden").is_err());
        assert_eq!(k8s_name("team.App_1"), "team-app-1");
    }
}
