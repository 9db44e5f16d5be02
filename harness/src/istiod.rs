//! What istiod pushes to a proxy, made into a bootstrap that upstream Envoy runs.
//!
//! `tests/istiod` runs istiod's own config generation (istio.io/istio, in-process) on the rendered Istio
//! manifests and dumps what it would push to the egress gateway: listeners, clusters, route
//! configurations, and the extension configurations (ECDS) its listeners name. [`bootstrap`] turns that
//! dump into a static Envoy bootstrap with as few changes as running it outside Kubernetes needs, and
//! reports each change ([`Changes`]):
//!
//! * the filters only istio-proxy has ([`ISTIO_ONLY_FILTERS`]) are dropped;
//! * what istiod serves over ADS is put in place: each ECDS filter becomes its extension configuration
//!   (the Wasm code from a local file instead of the OCI image), each RDS reference its route configuration,
//!   each SDS secret a static secret with the test PKI's material, each EDS cluster an empty static one
//!   (the gateway's own Service: no test traffic goes there);
//! * the listeners bind loopback ports, and the partners' names resolve to the local partner.
//!
//! Anything else still served by ADS, an SDS secret without material, or a listener without a port is an
//! error: nothing is silently left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::pki::{layout, EXTERNAL_IDENTITIES};
use crate::{err, repo_root, Result};

/// The Go toolchain: `$GO`, else `/usr/local/go/bin/go`, else `go` on `PATH`.
pub fn go() -> PathBuf {
    if let Some(go) = std::env::var_os("GO") {
        return go.into();
    }
    let local = Path::new("/usr/local/go/bin/go");
    if local.exists() {
        return local.into();
    }
    "go".into()
}

/// Runs the tests/istiod test `test` (which dumps what istiod generates for its proxy into `dir` as
/// `file`) with the CLI `cli`, and reads the dump.
pub fn generate(test: &str, file: &str, dir: &Path, cli: &Path) -> Result<Dump> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new(go())
        .current_dir(repo_root().join("tests/istiod"))
        .args(["test", "-count=1", "-run", &format!("^{test}$"), "."])
        .env("PILOT_ENABLE_AMBIENT", "true")
        .env("EGRESS_IDENTITY_CLI", cli)
        .env("ISTIOD_DUMP_DIR", dir)
        .output()
        .map_err(|e| err(format!("running {:?} (tests/istiod needs Go >= 1.26: make setup-test): {e}", go())))?;
    if !out.status.success() {
        return Err(err(format!(
            "istiod's generator ({test}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Dump::parse(&text)
}

/// What a test expects [`bootstrap`] to change.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The configuration types of the istio-only filters dropped ([`ISTIO_ONLY_FILTERS`]), sorted.
    pub dropped: &'a [&'a str],
    /// How many ECDS Wasm filters (the filter, served by istiod from the OCI image) are put in place.
    pub wasm_extensions: usize,
}

/// Which proxy tests/istiod generates, and what it writes for it.
#[derive(Debug, Clone, Copy)]
pub struct Proxy<'a> {
    /// The Go test that generates it.
    pub test: &'a str,
    /// The file it dumps istiod's output to.
    pub dump: &'a str,
    /// The file it writes istio-agent's bootstrap to, if it does (and `<stem>-override.json` beside it, the
    /// bootstrap override istio-agent passes to Envoy as `--config-yaml`).
    pub agent_bootstrap: Option<&'a str>,
}

/// Runs `proxy`'s tests/istiod test with the CLI `cli`, makes its output a bootstrap with `subs` (on
/// istio-agent's bootstrap when the test writes one), checks that exactly the `expected` changes were made,
/// writes it to `dir/bootstrap.json`, and starts it beside the test partner (a [`Topology`] in `dir/run`,
/// with istio-agent's `--config-yaml`). Prints what changed.
///
/// [`Topology`]: crate::topology::Topology
pub fn start(
    proxy: Proxy<'_>,
    dir: &Path,
    cli: &Path,
    subs: Substitutions,
    expected: Expected<'_>,
) -> Result<crate::topology::Topology> {
    start_with(proxy, dir, cli, subs, expected, |_| {})
}

/// [`start`], with `configure` changing the topology's options last (another partner configuration).
pub fn start_with(
    proxy: Proxy<'_>,
    dir: &Path,
    cli: &Path,
    mut subs: Substitutions,
    expected: Expected<'_>,
    configure: impl FnOnce(&mut crate::topology::Options),
) -> Result<crate::topology::Topology> {
    let dump = generate(proxy.test, proxy.dump, dir, cli)?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| err(format!("{}: {e}", dir.join(name).display())))
    };
    let mut envoy_args = Vec::new();
    if let Some(agent) = proxy.agent_bootstrap {
        subs.agent_bootstrap = Some(serde_json::from_str(&read(agent)?)?);
        let overrides = read(&format!("{}-override.json", agent.trim_end_matches(".json")))?;
        envoy_args = vec!["--config-yaml".to_string(), overrides];
    }
    let (bootstrap, changes) = bootstrap(&dump, &subs)?;
    println!("istio.io/istio {}; what changed to run it on upstream Envoy:\n{}", dump.istio, changes.describe());
    let dropped: Vec<&str> = changes.dropped.keys().map(String::as_str).collect();
    let oci = changes.inlined_extensions.values().filter(|code| code.starts_with("oci://")).count();
    if dropped != expected.dropped || oci != expected.wasm_extensions || changes.inlined_extensions.len() != oci {
        return Err(err(format!(
            "unexpected changes (expected {expected:?}): dropped {dropped:?}, ECDS {:?}",
            changes.inlined_extensions
        )));
    }
    let config = dir.join("bootstrap.json");
    std::fs::write(&config, serde_json::to_string_pretty(&bootstrap)?)?;
    let run = dir.join("run");
    std::fs::create_dir_all(&run)?;
    std::fs::write(run.join(ABSENT_SECRETS_FILE), "resources: []\n")?;
    let mut opts = crate::topology::Options::new(run);
    opts.gateway_config = config;
    opts.envoy_args = envoy_args;
    configure(&mut opts);
    crate::topology::Topology::start(&opts)
}

/// What Prometheus scrapes from a proxy on istio-agent's bootstrap: its port 15090 (moved to
/// [`crate::topology::METRICS_PORT`]), `/stats/prometheus`, parsed; and the text, to show.
pub fn agent_metrics() -> Result<(Vec<crate::prometheus::Sample>, String)> {
    let port = crate::topology::METRICS_PORT;
    match crate::topology::http_get(port, "/stats/prometheus") {
        Some((200, text)) => Ok((crate::prometheus::parse(&text), text)),
        other => Err(err(format!("127.0.0.1:{port}/stats/prometheus: {other:?}"))),
    }
}

/// Checks that the proxy's `egress_identity_decisions_total` (scraped with [`agent_metrics`]) sums to each
/// expected value over the series carrying each set of labels; the filter's series when not.
pub fn check_decisions(expected: &[(&[(&str, &str)], f64)]) -> std::result::Result<(), String> {
    let (samples, text) = agent_metrics().map_err(|e| e.to_string())?;
    for (labels, want) in expected {
        let got = crate::prometheus::sum(&samples, "egress_identity_decisions_total", labels);
        if got != *want {
            let ours: Vec<&str> = text.lines().filter(|l| l.contains("egress_identity")).collect();
            return Err(format!("{labels:?}: {got}, not {want}, in\n{}", ours.join("\n")));
        }
    }
    Ok(())
}

/// The test PKI (in `pki/` of the run directory) as the secrets istiod names: the proxy's workload
/// certificate `default` and the mesh root `ROOTCA` (what istio-agent serves), and per external identity the
/// Kubernetes Secret `egress-identity-<identity>` and its `-cacert` (what `egress-identity secrets` writes).
pub fn test_pki_secrets() -> BTreeMap<String, Value> {
    let file = |path: &str| json!({ "filename": format!("pki/{path}") });
    let certificate =
        |crt: &str, key: &str| json!({ "tlsCertificate": { "certificateChain": file(crt), "privateKey": file(key) } });
    let mut secrets = BTreeMap::from([
        ("default".to_string(), certificate(layout::GATEWAY_CERT, layout::GATEWAY_KEY)),
        ("ROOTCA".to_string(), json!({ "validationContext": { "trustedCa": file(layout::MESH_CA_CERT) } })),
    ]);
    for identity in EXTERNAL_IDENTITIES {
        let secret = format!("kubernetes://egress-identity-{}", identity.replace('.', "-"));
        let stem = format!("{}/{identity}", layout::EXTERNAL_DIR);
        secrets.insert(secret.clone(), certificate(&format!("{stem}.crt"), &format!("{stem}.key")));
        secrets.insert(
            format!("{secret}-cacert"),
            json!({ "validationContext": { "trustedCa": file(layout::PARTNER_CA_CERT) } }),
        );
    }
    secrets
}

/// The filters of istiod's output that upstream Envoy does not have (istio-proxy's own extensions), by the
/// type of their configuration, and why dropping them leaves the egress path as it is.
pub const ISTIO_ONLY_FILTERS: &[(&str, &str)] = &[
    (
        "type.googleapis.com/io.istio.http.peer_metadata.Config",
        "istio-proxy's HTTP peer metadata exchange (istio.metadata_exchange, the waypoint's *_peer_metadata): telemetry labels only",
    ),
    (
        "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "istio-proxy's TCP metadata exchange (network and upstream filter): telemetry labels only",
    ),
    (
        "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "istio-proxy's ALPN override for upstreams that are Istio sidecars: none here",
    ),
    ("type.googleapis.com/stats.PluginConfig", "istio-proxy's telemetry filter (istio.stats)"),
    (
        "type.googleapis.com/istio.workload.BootstrapExtension",
        "istio-proxy's workload metadata discovery (a bootstrap extension over ADS): telemetry labels only",
    ),
];

/// The configuration type of filter `f`: its `@type`, or for a `TypedStruct` the type it carries.
fn filter_type(f: &Value) -> &str {
    // istiod's protojson is camelCase, istio-agent's template snake_case.
    let typed = f.get("typedConfig").or_else(|| f.get("typed_config"));
    let outer = typed.and_then(|t| t.get("@type")).and_then(Value::as_str).unwrap_or_default();
    if outer.ends_with("udpa.type.v1.TypedStruct") || outer.ends_with("xds.type.v3.TypedStruct") {
        let inner = typed.and_then(|t| t.get("typeUrl").or_else(|| t.get("type_url")));
        return inner.and_then(Value::as_str).unwrap_or_default();
    }
    outer
}

/// The dump `tests/istiod` writes (`target/istiod/<proxy>.json`).
#[derive(Debug, Clone)]
pub struct Dump {
    /// The istio.io/istio version that generated it.
    pub istio: String,
    pub listeners: Vec<Value>,
    pub clusters: Vec<Value>,
    pub routes: Vec<Value>,
    /// ECDS resources by name (`TypedExtensionConfig`).
    pub extensions: Map<String, Value>,
}

impl Dump {
    /// Parse a dump.
    pub fn parse(text: &str) -> Result<Dump> {
        let v: Value = serde_json::from_str(text)?;
        let list = |key: &str| v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(Dump {
            istio: v.get("istio").and_then(Value::as_str).unwrap_or_default().to_string(),
            listeners: list("listeners"),
            clusters: list("clusters"),
            routes: list("routes"),
            extensions: v.get("extensions").and_then(Value::as_object).cloned().unwrap_or_default(),
        })
    }
}

/// Where the generated configuration meets this machine.
#[derive(Debug, Clone, Default)]
pub struct Substitutions {
    /// Listener name → the loopback port it binds instead of its generated address (every listener with
    /// an address must have one).
    pub listener_ports: BTreeMap<String, u16>,
    /// Upstream endpoint (host, port) as generated → the loopback port of the partner serving it.
    pub upstreams: BTreeMap<(String, u16), u16>,
    /// SDS secret name → the static secret's material (`tls_certificate` or `validation_context`, as in
    /// Envoy's `Secret`, without the name).
    pub secrets: BTreeMap<String, Value>,
    /// SDS secrets that never exist (the Secret of a fail-closed DestinationRule): served from an SDS file
    /// with no resources ([`ABSENT_SECRETS_FILE`]), so Envoy never gets them, as a proxy whose Secret does
    /// not exist never does.
    pub absent_secrets: BTreeSet<String>,
    /// The Wasm module file every Wasm extension loads instead of its remote (OCI) code.
    pub wasm: String,
    /// The admin port.
    pub admin_port: u16,
    /// The bootstrap istio-agent writes for the proxy (tests/istiod renders it with Istio's template): the
    /// base of the result, istiod's resources added to its static ones. `None`: a minimal bootstrap.
    pub agent_bootstrap: Option<Value>,
    /// The DNS server of every dynamic forward proxy's DNS cache (c-ares `resolvers`), in place of the
    /// pod's resolver (the test's names resolve only there).
    pub dns_resolver: Option<std::net::SocketAddr>,
}

impl Substitutions {
    /// The substitutions of a test on the harness's topology: `listener_ports` and `upstreams` as given,
    /// the test PKI's secrets ([`test_pki_secrets`]), the filter built for the run directory, the harness's
    /// admin port; nothing else.
    pub fn on_topology(listener_ports: BTreeMap<String, u16>, upstreams: BTreeMap<(String, u16), u16>) -> Self {
        Self {
            listener_ports,
            upstreams,
            secrets: test_pki_secrets(),
            wasm: crate::topology::WASM_IN_RUN_DIR.to_string(),
            admin_port: crate::topology::ADMIN_PORT,
            ..Self::default()
        }
    }
}

/// What [`bootstrap`] changed.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Istio-only filters dropped, by configuration type, with how many there were and their names.
    pub dropped: BTreeMap<String, (usize, BTreeSet<String>)>,
    /// ECDS filters replaced by their extension configuration, with the remote code each named.
    pub inlined_extensions: BTreeMap<String, String>,
    /// Route configurations put in place of RDS.
    pub inlined_routes: BTreeSet<String>,
    /// SDS secrets made static.
    pub static_secrets: BTreeSet<String>,
    /// EDS clusters made static without endpoints.
    pub emptied_clusters: BTreeSet<String>,
    /// Listeners moved to loopback: name → new port.
    pub rebound: BTreeMap<String, u16>,
    /// Clusters whose endpoints now point at the local partner.
    pub readdressed: BTreeSet<String>,
    /// Top-level parts of istio-agent's bootstrap removed.
    pub agent_removed: BTreeSet<String>,
    /// DNS caches (by name) given the test's DNS server, and how many configurations of each.
    pub dns_caches: BTreeMap<String, usize>,
}

impl Changes {
    /// One line per change, for a test's output.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (kind, (n, names)) in &self.dropped {
            let why = ISTIO_ONLY_FILTERS.iter().find(|(f, _)| f == kind).map(|(_, w)| *w).unwrap_or_default();
            out.push(format!("dropped {n} x {names:?} ({kind}): {why}"));
        }
        for (name, code) in &self.inlined_extensions {
            out.push(format!("ECDS {name}: inline, code {code} -> the local filter"));
        }
        for name in &self.inlined_routes {
            out.push(format!("RDS {name}: inline"));
        }
        for name in &self.static_secrets {
            out.push(format!("SDS {name}: static, test PKI"));
        }
        for name in &self.emptied_clusters {
            out.push(format!("EDS {name}: static, no endpoints"));
        }
        for (name, port) in &self.rebound {
            out.push(format!("listener {name}: binds 127.0.0.1:{port}"));
        }
        for name in &self.readdressed {
            out.push(format!("cluster {name}: endpoint -> the local partner"));
        }
        for (name, n) in &self.dns_caches {
            out.push(format!("DNS cache {name} ({n} configurations): resolves through the test's DNS server"));
        }
        for key in &self.agent_removed {
            out.push(format!("istio-agent's bootstrap: {key} removed (istiod's resources are static here)"));
        }
        out.join("\n")
    }
}

/// The keys under which filters are listed.
const FILTER_LISTS: &[&str] =
    &["filters", "httpFilters", "listenerFilters", "http_filters", "listener_filters", "bootstrap_extensions"];

/// The static bootstrap of `dump`, and what was changed to make it one.
pub fn bootstrap(dump: &Dump, subs: &Substitutions) -> Result<(Value, Changes)> {
    let mut changes = Changes::default();
    let routes: BTreeMap<&str, &Value> =
        dump.routes.iter().filter_map(|r| Some((r.get("name")?.as_str()?, r))).collect();

    let mut base = subs.agent_bootstrap.clone().unwrap_or_else(|| {
        json!({
            "node": {
                "id": "router~127.0.0.1~istio-egressgateway-0.istio-egress~istio-egress.svc.cluster.local",
                "cluster": "istio-egressgateway.istio-egress"
            },
            // istiod's connect_originate listener is an internal listener (HBONE origination).
            "bootstrapExtensions": [{
                "name": "envoy.bootstrap.internal_listener",
                "typedConfig": { "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener" }
            }]
        })
    });
    let base_obj = base.as_object_mut().ok_or_else(|| err("istio-agent's bootstrap is not an object"))?;
    // istio-agent's own static resources (its metrics and health listeners, the clusters of the agent).
    let agent = base_obj.remove("static_resources").unwrap_or_default();
    let agent_list = |key: &str| agent.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    if base_obj.remove("dynamic_resources").is_some() {
        changes.agent_removed.insert("dynamic_resources (LDS and CDS over ADS from istiod)".into());
    }
    base_obj.insert(
        "admin".into(),
        json!({ "address": { "socketAddress": { "address": "127.0.0.1", "portValue": subs.admin_port } } }),
    );
    drop_istio_only(&mut base, &mut changes);

    let mut listeners = agent_list("listeners");
    listeners.extend(dump.listeners.iter().cloned());
    for listener in &mut listeners {
        let name = str_at(listener, "name")?.to_string();
        if listener.get("address").is_some() {
            let port = *subs
                .listener_ports
                .get(&name)
                .ok_or_else(|| err(format!("listener {name}: no loopback port to bind (Substitutions)")))?;
            listener["address"] = json!({ "socketAddress": { "address": "127.0.0.1", "portValue": port } });
            changes.rebound.insert(name.clone(), port);
        }
        drop_istio_only(listener, &mut changes);
        inline_discovery(listener, dump, subs, &mut changes)?;
        inline_routes(listener, &routes, &mut changes)?;
    }

    let mut clusters = agent_list("clusters");
    clusters.extend(dump.clusters.iter().cloned());
    for cluster in &mut clusters {
        let name = str_at(cluster, "name")?.to_string();
        drop_istio_only(cluster, &mut changes);
        if let Some(obj) = cluster.as_object_mut() {
            if obj.remove("edsClusterConfig").is_some() {
                obj.insert("type".into(), json!("STATIC"));
                obj.insert("loadAssignment".into(), json!({ "clusterName": name, "endpoints": [] }));
                changes.emptied_clusters.insert(name.clone());
            }
        }
        let mut moved = false;
        for_each_object(cluster, &mut |o| {
            // istiod's protojson is camelCase, istio-agent's template snake_case.
            let (sa_key, port_key) = match o.contains_key("socketAddress") {
                true => ("socketAddress", "portValue"),
                false => ("socket_address", "port_value"),
            };
            let Some(sa) = o.get_mut(sa_key).and_then(Value::as_object_mut) else { return };
            let host = sa.get("address").and_then(Value::as_str).unwrap_or_default().to_string();
            let port = sa.get(port_key).and_then(Value::as_u64).unwrap_or_default();
            let Ok(port) = u16::try_from(port) else { return };
            if let Some(local) = subs.upstreams.get(&(host, port)) {
                sa.insert("address".into(), json!("127.0.0.1"));
                sa.insert(port_key.into(), json!(local));
                moved = true;
            }
        });
        if moved {
            changes.readdressed.insert(name);
        }
    }

    let mut resources = json!({ "listeners": listeners, "clusters": clusters });
    if let Some(resolver) = subs.dns_resolver {
        for_each_object(&mut resources, &mut |o| {
            let Some(cache) = o.get_mut("dnsCacheConfig").and_then(Value::as_object_mut) else { return };
            let name = cache.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            cache.insert(
                "typedDnsResolverConfig".into(),
                json!({
                    "name": "envoy.network.dns_resolver.cares",
                    "typedConfig": {
                        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                        "resolvers": [{ "socketAddress": { "address": resolver.ip().to_string(), "portValue": resolver.port() } }],
                        "dnsResolverOptions": { "noDefaultSearchDomain": true }
                    }
                }),
            );
            *changes.dns_caches.entry(name).or_default() += 1;
        });
    }
    let mut sds_names = BTreeSet::new();
    for_each_object(&mut resources, &mut |o| {
        let name = o.get("name").and_then(Value::as_str).map(str::to_string);
        if o.contains_key("sdsConfig") && name.as_ref().is_some_and(|n| subs.absent_secrets.contains(n)) {
            o.insert("sdsConfig".into(), absent_secret_source());
            return;
        }
        if o.remove("sdsConfig").is_some() || o.remove("sds_config").is_some() {
            if let Some(name) = name {
                sds_names.insert(name);
            }
        }
    });
    let mut secrets = Vec::new();
    for name in &sds_names {
        let material = subs
            .secrets
            .get(name)
            .ok_or_else(|| err(format!("SDS secret {name:?}: the test has no material for it (Substitutions)")))?;
        let mut secret = material.clone();
        secret["name"] = json!(name);
        secrets.push(secret);
        changes.static_secrets.insert(name.clone());
    }
    resources["secrets"] = Value::Array(secrets);
    base["staticResources"] = resources;
    if let Some(path) = find_key(&base, "ads", "") {
        return Err(err(format!("still served by ADS, which this bootstrap has not: {path}")));
    }
    let bootstrap = base;
    Ok((bootstrap, changes))
}

/// The SDS file of [`Substitutions::absent_secrets`], in Envoy's working directory: no resources.
pub const ABSENT_SECRETS_FILE: &str = "absent-secrets.yaml";

/// An SDS source that never delivers the secret: a file without it (Envoy waits a second at start, then
/// goes on without it; the cluster's TLS context stays without a certificate).
fn absent_secret_source() -> Value {
    json!({
        "pathConfigSource": { "path": format!("./{ABSENT_SECRETS_FILE}") },
        "resourceApiVersion": "V3",
        "initialFetchTimeout": "1s"
    })
}

fn str_at<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| err(format!("no {key:?} in {v}")))
}

/// Calls `f` on every object in `v`, outermost first.
fn for_each_object(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(o) => {
            f(o);
            for child in o.values_mut() {
                for_each_object(child, f);
            }
        }
        Value::Array(a) => {
            for child in a {
                for_each_object(child, f);
            }
        }
        _ => {}
    }
}

/// The JSON path of the first `key` in `v`.
fn find_key(v: &Value, key: &str, path: &str) -> Option<String> {
    match v {
        Value::Object(o) => o.iter().find_map(|(k, child)| {
            let here = format!("{path}.{k}");
            if k == key {
                Some(here)
            } else {
                find_key(child, key, &here)
            }
        }),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, child)| find_key(child, key, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn drop_istio_only(v: &mut Value, changes: &mut Changes) {
    for_each_object(v, &mut |o| {
        for key in FILTER_LISTS {
            let Some(list) = o.get_mut(*key).and_then(Value::as_array_mut) else { continue };
            list.retain(|f| {
                let kind = filter_type(f);
                let istio_only = ISTIO_ONLY_FILTERS.iter().any(|(t, _)| *t == kind);
                if istio_only {
                    let entry = changes.dropped.entry(kind.to_string()).or_default();
                    entry.0 += 1;
                    entry.1.insert(f.get("name").and_then(Value::as_str).unwrap_or_default().to_string());
                }
                !istio_only
            });
        }
    });
}

fn inline_discovery(v: &mut Value, dump: &Dump, subs: &Substitutions, changes: &mut Changes) -> Result<()> {
    let mut missing = None;
    for_each_object(v, &mut |o| {
        if o.remove("configDiscovery").is_none() {
            return;
        }
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some(mut typed) = dump.extensions.get(&name).and_then(|e| e.get("typedConfig")).cloned() else {
            missing = Some(name);
            return;
        };
        let code = &mut typed["config"]["vmConfig"]["code"];
        let remote = code.pointer("/remote/httpUri/uri").and_then(Value::as_str).unwrap_or("(local)").to_string();
        if code.is_object() {
            *code = json!({ "local": { "filename": subs.wasm } });
        }
        o.insert("typedConfig".into(), typed);
        changes.inlined_extensions.insert(name, remote);
    });
    match missing {
        Some(name) => Err(err(format!("ECDS filter {name:?}: istiod served no extension configuration by that name"))),
        None => Ok(()),
    }
}

fn inline_routes(v: &mut Value, routes: &BTreeMap<&str, &Value>, changes: &mut Changes) -> Result<()> {
    let mut missing = None;
    for_each_object(v, &mut |o| {
        let Some(rds) = o.get("rds") else { return };
        let name = rds.get("routeConfigName").and_then(Value::as_str).unwrap_or_default().to_string();
        match routes.get(name.as_str()) {
            Some(route) => {
                o.remove("rds");
                o.insert("routeConfig".into(), (*route).clone());
                changes.inlined_routes.insert(name);
            }
            None => missing = Some(name),
        }
    });
    match missing {
        Some(name) => Err(err(format!("RDS {name:?}: istiod served no route configuration by that name"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Dump {
        Dump::parse(
            &json!({
                "istio": "v0",
                "listeners": [{
                    "name": "0.0.0.0_443",
                    "address": { "socketAddress": { "address": "0.0.0.0", "portValue": 443 } },
                    "filterChains": [{ "filters": [
                        { "name": "istio.metadata_exchange", "typedConfig": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "typeUrl": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange" } },
                        { "name": "wasm", "configDiscovery": { "configSource": { "ads": {} } } },
                        { "name": "hcm", "typedConfig": { "rds": { "routeConfigName": "r" } } }
                    ], "transportSocket": { "tlsCertificateSdsSecretConfigs": [
                        { "name": "default", "sdsConfig": { "ads": {} } } ] } }]
                }],
                "clusters": [
                    { "name": "eds", "edsClusterConfig": { "edsConfig": { "ads": {} } } },
                    { "name": "id", "loadAssignment": { "endpoints": [{ "lbEndpoints": [{ "endpoint": {
                        "address": { "socketAddress": { "address": "api.example", "portValue": 443 } } } }] }] } },
                    { "name": "dfp", "clusterType": { "typedConfig": { "dnsCacheConfig": { "name": "c" } } } }
                ],
                "routes": [{ "name": "r", "virtualHosts": [] }],
                "extensions": { "wasm": { "name": "wasm", "typedConfig": { "config": { "vmConfig": {
                    "code": { "remote": { "httpUri": { "uri": "oci://x" } } } } } } } }
            })
            .to_string(),
        )
        .unwrap()
    }

    fn subs() -> Substitutions {
        Substitutions {
            listener_ports: [("0.0.0.0_443".to_string(), 10443)].into(),
            upstreams: [(("api.example".to_string(), 443), 18443)].into(),
            secrets: [("default".to_string(), json!({ "tlsCertificate": {} }))].into(),
            absent_secrets: BTreeSet::new(),
            wasm: "f.wasm".into(),
            admin_port: 9901,
            agent_bootstrap: None,
            dns_resolver: Some("127.0.0.1:5353".parse().unwrap()),
        }
    }

    #[test]
    fn every_substitution_is_made_and_reported() {
        let (b, changes) = bootstrap(&dump(), &subs()).unwrap();
        let text = b.to_string();
        assert!(!text.contains("istio.metadata_exchange") && !text.contains("\"ads\""), "{text}");
        assert!(text.contains("f.wasm") && text.contains("\"routeConfig\"") && text.contains("18443"), "{text}");
        assert_eq!(b["staticResources"]["secrets"][0]["name"], "default");
        let (n, names) = &changes.dropped["type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"];
        assert_eq!((*n, names.iter().map(String::as_str).collect::<Vec<_>>()), (1, vec!["istio.metadata_exchange"]));
        assert_eq!(changes.inlined_extensions["wasm"], "oci://x");
        assert!(changes.emptied_clusters.contains("eds") && changes.readdressed.contains("id"));
        assert_eq!(changes.rebound["0.0.0.0_443"], 10443);
        assert_eq!(changes.dns_caches["c"], 1);
        assert!(text.contains("\"portValue\":5353"), "{text}");
    }

    #[test]
    fn what_the_test_cannot_supply_is_an_error() {
        let mut s = subs();
        s.secrets.clear();
        assert!(bootstrap(&dump(), &s).unwrap_err().to_string().contains("\"default\""));
        let mut s = subs();
        s.listener_ports.clear();
        assert!(bootstrap(&dump(), &s).unwrap_err().to_string().contains("0.0.0.0_443"));
        let mut d = dump();
        d.extensions.clear();
        assert!(bootstrap(&d, &subs()).unwrap_err().to_string().contains("ECDS"));
        let mut d = dump();
        d.routes.clear();
        assert!(bootstrap(&d, &subs()).unwrap_err().to_string().contains("RDS"));
    }
}
