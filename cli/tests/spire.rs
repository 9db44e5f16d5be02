//! SPIRE live: a SPIRE server and agent on loopback (join token, unix workload attestor), callers that fetch
//! their X.509-SVIDs from the agent's Workload API, and the gateway `render envoy --spire-agent` writes
//! (envoy/spire/gateway.yaml) taking its own SVID and the trust bundles from the agent's SDS.
//!
//! Each caller is a hard link to spire-agent in its own directory, registered by that path (`unix:path`); the
//! gateway is the Envoy binary, registered by its path, with the DNS name the callers check.
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_identity_harness::client::{Call, Client, Response};
use egress_identity_harness::pki::{CertFiles, Pki, WorkloadSpec, GATEWAY_HOST};
use egress_identity_harness::repo_root;
use egress_identity_harness::spire::{self, Entry, ServerOptions, SpireAgent, SpireServer};
use egress_identity_harness::topology::{envoy_bin, Options, Topology};

const TRUST_DOMAIN: &str = "cluster.local";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/egress/sa/egress-gateway";
const APP1: &str = "spiffe://cluster.local/ns/team/sa/app1";
const APP2: &str = "spiffe://cluster.local/ns/team/sa/app2";
/// A registered caller the policy denies (envoy/policy.json: the sandbox namespace has no gateway allow).
const SANDBOX: &str = "spiffe://cluster.local/ns/sandbox/sa/default";
/// The SPIRE server's agent API port.
const SERVER_PORT: u16 = 18081;

/// The tests share fixed ports (the gateway's, SPIRE's): one at a time.
static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Spire {
    server: SpireServer,
    agent: SpireAgent,
}

fn run_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(dir.join("spire"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SPIRE for the run directory's `spire/`, with the gateway and the callers registered.
fn spire(run: &Path, svid_ttl: Duration) -> Spire {
    let dir = run.join("spire");
    let server = SpireServer::start(
        &dir,
        ServerOptions {
            trust_domain: TRUST_DOMAIN.into(),
            port: SERVER_PORT,
            bundle_port: None,
            federates_with: vec![],
            svid_ttl,
            upstream_ca: None,
        },
    )
    .unwrap();
    let agent = SpireAgent::start(&dir, &server).unwrap();
    let envoy = envoy_bin().canonicalize().unwrap();
    let mut gateway = Entry::new(GATEWAY_ID, format!("unix:path:{}", envoy.display()), svid_ttl);
    gateway.dns_names = vec![GATEWAY_HOST.into()];
    server.register(&agent.id, &gateway).unwrap();
    for (name, id) in [("app1", APP1), ("app2", APP2), ("sandbox", SANDBOX)] {
        server.register(&agent.id, &Entry::new(id, agent.workload_selector(name).unwrap(), svid_ttl)).unwrap();
    }
    Spire { server, agent }
}

/// envoy/spire/gateway.yaml, with the agent's socket where the run directory has it.
fn gateway(run: &Path, agent: &SpireAgent) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("envoy/spire/gateway.yaml")).unwrap();
    let relative = agent.socket.strip_prefix(run).unwrap().display().to_string();
    assert!(text.contains(&format!("path: {relative}\n")), "envoy/spire/gateway.yaml does not use {relative}");
    let path = run.join("gateway-spire.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn call(_t: &Topology, bundle: &Path, who: &CertFiles, path: &str) -> Response {
    Client::new(bundle.to_path_buf()).send(&Call::get(who, path)).unwrap()
}

fn partner_subject(t: &Topology, path: &str) -> String {
    let entry = t.external_requests_for(path).into_iter().next().unwrap_or_default();
    entry.get("client_subject").and_then(|v| v.as_str()).unwrap_or("<none>").to_string()
}

#[test]
fn spire_issued_identities_cross_the_gateway_as_their_external_identities() {
    let _ports = exclusive();
    let run = run_dir("spire");
    let s = spire(&run, Duration::from_secs(3600));
    eprintln!("SPIRE: {}", spire::version().unwrap_or_default());
    let mut opts = Options::new(&run);
    opts.gateway_config = gateway(&run, &s.agent);
    let t = Topology::start(&opts).unwrap_or_else(|e| {
        panic!("{e}\n--- agent:\n{}\n--- server:\n{}", spire::tail(&s.agent.log()), spire::tail(&s.server.log()))
    });

    let app1 = s.agent.fetch_x509("app1", &run.join("svids/app1"), Duration::from_secs(30)).unwrap();
    let app2 = s.agent.fetch_x509("app2", &run.join("svids/app2"), Duration::from_secs(30)).unwrap();
    let sandbox = s.agent.fetch_x509("sandbox", &run.join("svids/sandbox"), Duration::from_secs(30)).unwrap();
    let bundle = run.join("svids/app1/bundle.0.pem");

    // The gateway serves SPIRE's SVID: the callers trust SPIRE's bundle only (not the test PKI's mesh CA),
    // and the certificate it serves names the gateway's SPIFFE ID and was issued by SPIRE's CA.
    let served = egress_identity_harness::l4::served_certificate(GATEWAY_HOST, &bundle, &app1).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&served).unwrap();
    let ca_der = spire::first_certificate_der(&bundle).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(leaf.issuer(), ca.subject(), "the gateway's certificate is not issued by SPIRE's CA");
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(uris, vec![GATEWAY_ID.to_string()]);

    for (who, files, cn) in [("app1", &app1, "team.app1"), ("app2", &app2, "team.app2")] {
        let path = egress_identity_harness::unique_path(&format!("/spire/{who}"));
        let r = call(&t, &bundle, files, &path);
        assert_eq!(r.status, 200, "{who}: {}", r.summary());
        assert_eq!(partner_subject(&t, &path), format!("CN={cn}"), "{who}");
    }
    let path = egress_identity_harness::unique_path("/spire/sandbox");
    let r = call(&t, &bundle, &sandbox, &path);
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!(r.field("layer"), Some("gateway"), "{}", r.summary());
    // A workload without an entry gets no SVID at all.
    assert!(s.agent.fetch_x509("unregistered", &run.join("svids/unregistered"), Duration::from_secs(6)).is_err());
}

/// The federated trust domain of the partner mesh.
const PARTNER_DOMAIN: &str = "partner.mesh";
/// Its caller, which the policy variant lets reach partner-api as team.app1, and nothing else.
const REPORTER: &str = "spiffe://partner.mesh/ns/eu/sa/reporter";

/// envoy/policy.json, plus the federated trust domain and its one caller: the gateway lets it in, partner-api
/// maps it to team.app1; no other destination names it.
fn federated_policy() -> String {
    let mut policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("envoy/policy.json")).unwrap()).unwrap();
    policy["trustDomains"] = serde_json::json!([PARTNER_DOMAIN]);
    let reporter = format!("{PARTNER_DOMAIN}/ns/eu/sa/reporter");
    let allow = |policies: &mut serde_json::Value, name: &str| {
        let p = policies.as_array_mut().unwrap().iter_mut().find(|p| p["name"] == name).unwrap();
        p["rules"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "from": [ { "source": { "principals": [reporter] } } ] }));
    };
    allow(&mut policy["gateway"]["policies"], "allow-mesh-workloads");
    let api = policy["destinations"].as_array_mut().unwrap().iter_mut().find(|d| d["name"] == "partner-api").unwrap();
    allow(&mut api["policies"], "allow-team-apps");
    let app1 = policy["identities"].as_array_mut().unwrap().iter_mut().find(|i| i["name"] == "team.app1").unwrap();
    app1["principals"].as_array_mut().unwrap().push(serde_json::json!(REPORTER));
    serde_json::to_string_pretty(&policy).unwrap()
}

/// `render envoy` of `policy` with `make render`'s flags for envoy/spire/gateway.yaml.
fn render_spire_gateway(run: &Path, policy: &str) -> PathBuf {
    let policy_path = run.join("policy-federated.json");
    std::fs::write(&policy_path, policy).unwrap();
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap().replace("\\\n", " ");
    let flags = |name: &str| -> Vec<String> {
        let line = makefile.lines().find_map(|l| l.strip_prefix(&format!("{name} := "))).unwrap();
        line.split_whitespace().map(str::to_owned).collect()
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egress-identity"))
        .args(["render", "envoy"])
        .arg(&policy_path)
        .args(flags("DEMO_RENDER_FLAGS"))
        .args(flags("SPIRE_RENDER_FLAGS"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = run.join("gateway-spire-federated.yaml");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

#[test]
fn a_federated_caller_is_verified_by_its_own_bundle_and_allowed_only_where_the_policy_says() {
    let _ports = exclusive();
    let run = run_dir("spire-federation");
    let _ = std::fs::remove_dir_all(run.join("spire-partner"));
    let ttl = Duration::from_secs(3600);
    let (own_port, partner_port) = (18091, 18092);
    let federation = |td: &str, port: u16| spire::Federation {
        trust_domain: td.into(),
        bundle_endpoint_url: format!("https://127.0.0.1:{port}"),
    };
    // The local trust domain's CA is one the test holds (SPIRE's UpstreamAuthority "disk"), so it can sign a
    // certificate claiming the partner's trust domain with a CA the gateway trusts -- for another trust domain.
    let local_ca = Pki::generate(run.join("spire-local-ca")).unwrap();
    let server = SpireServer::start(
        &run.join("spire"),
        ServerOptions {
            trust_domain: TRUST_DOMAIN.into(),
            port: SERVER_PORT,
            bundle_port: Some(own_port),
            federates_with: vec![federation(PARTNER_DOMAIN, partner_port)],
            svid_ttl: ttl,
            upstream_ca: Some(CertFiles {
                cert: local_ca.mesh_ca_cert(),
                key: run.join("spire-local-ca").join("mesh-ca.key"),
            }),
        },
    )
    .unwrap();
    let partner = SpireServer::start(
        &run.join("spire-partner"),
        ServerOptions {
            trust_domain: PARTNER_DOMAIN.into(),
            port: SERVER_PORT + 1,
            bundle_port: Some(partner_port),
            federates_with: vec![federation(TRUST_DOMAIN, own_port)],
            svid_ttl: ttl,
            upstream_ca: None,
        },
    )
    .unwrap();
    // The first bundle of each side, out of band (https_spiffe authenticates the endpoint with it); from then
    // on each server refreshes the other's bundle from its endpoint.
    server.set_federated_bundle(PARTNER_DOMAIN, &partner.bundle_spiffe().unwrap()).unwrap();
    partner.set_federated_bundle(TRUST_DOMAIN, &server.bundle_spiffe().unwrap()).unwrap();

    let agent = SpireAgent::start(&run.join("spire"), &server).unwrap();
    let partner_agent = SpireAgent::start(&run.join("spire-partner"), &partner).unwrap();
    let envoy = envoy_bin().canonicalize().unwrap();
    let mut gateway = Entry::new(GATEWAY_ID, format!("unix:path:{}", envoy.display()), ttl);
    gateway.dns_names = vec![GATEWAY_HOST.into()];
    gateway.federates_with = vec![format!("spiffe://{PARTNER_DOMAIN}")];
    server.register(&agent.id, &gateway).unwrap();
    server.register(&agent.id, &Entry::new(APP1, agent.workload_selector("app1").unwrap(), ttl)).unwrap();
    let mut reporter = Entry::new(REPORTER, partner_agent.workload_selector("reporter").unwrap(), ttl);
    reporter.federates_with = vec![format!("spiffe://{TRUST_DOMAIN}")];
    partner.register(&partner_agent.id, &reporter).unwrap();

    let mut opts = Options::new(&run);
    opts.gateway_config = render_spire_gateway(&run, &federated_policy());
    let t = Topology::start(&opts).unwrap_or_else(|e| panic!("{e}\n--- agent:\n{}", spire::tail(&agent.log())));

    // The partner's caller trusts the gateway through the federated bundle SPIRE gave it.
    let svids = run.join("svids/reporter");
    let reporter_files = partner_agent.fetch_x509("reporter", &svids, Duration::from_secs(30)).unwrap();
    let own_bundle = svids.join("federated_bundle.0.0.pem");
    spire::eventually("the federated bundle reaches the partner's caller", Duration::from_secs(60), || {
        partner_agent.fetch_x509("reporter", &svids, Duration::from_secs(10)).is_ok() && own_bundle.exists()
    })
    .unwrap();
    // The gateway's ALL carries the partner's bundle once the federation has refreshed it: retry until then.
    let path = egress_identity_harness::unique_path("/spire/reporter");
    let mut last = None;
    spire::eventually("the gateway accepts the federated caller", Duration::from_secs(90), || {
        let r = call(&t, &own_bundle, &reporter_files, &path);
        let ok = r.status == 200;
        last = Some(r.summary());
        ok
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}\n--- agent:\n{}", spire::tail(&agent.log())));
    assert_eq!(partner_subject(&t, &path), "CN=team.app1");
    // Only where the policy says: partner-shared (api.partner.example:8443) allows namespace team only.
    let r = Client::new(own_bundle.clone())
        .send(
            &Call::get(&reporter_files, &egress_identity_harness::unique_path("/spire/reporter-shared"))
                .host("api.partner.example:8443"),
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.summary());
    // The local caller is still served, verified by its own trust domain's bundle.
    let app1 = agent.fetch_x509("app1", &run.join("svids/app1"), Duration::from_secs(30)).unwrap();
    let path = egress_identity_harness::unique_path("/spire/app1-federation");
    let r = call(&t, &run.join("svids/app1/bundle.0.pem"), &app1, &path);
    assert_eq!(r.status, 200, "{}", r.summary());
    // The local CA (trusted by the gateway, for cluster.local) signs a certificate claiming the partner's
    // trust domain: the SPIFFE validator checks each trust domain against its own bundle, so the handshake
    // fails. (One CA bundle of every trust domain's CAs would let it in.) The same CA's cluster.local
    // certificate is accepted, so the refusal is about the trust domain.
    let spec = |id: &str| WorkloadSpec { uri_sans: vec![id.into()], ..Default::default() };
    let forged = local_ca.issue_workload("forged-reporter", &spec(REPORTER)).unwrap();
    let r = call(&t, &own_bundle, &forged, &egress_identity_harness::unique_path("/spire/forged"));
    assert_eq!(r.status, 0, "a partner.mesh certificate from the local CA got an HTTP answer: {}", r.summary());
    let local = local_ca.issue_workload("local-app1", &spec(APP1)).unwrap();
    let r = call(&t, &own_bundle, &local, &egress_identity_harness::unique_path("/spire/local-ca"));
    assert_eq!(r.status, 200, "the local CA's own cluster.local certificate: {}", r.summary());
}

/// How long the rotation run lasts, and when the agent is restarted in it.
const ROTATION_RUN: Duration = Duration::from_secs(150);
const AGENT_RESTART_AT: Duration = Duration::from_secs(70);

#[test]
fn svids_rotate_and_the_agent_restarts_without_a_failed_request() {
    let _ports = exclusive();
    let run = run_dir("spire-rotation");
    // 60 s SVIDs for the callers and the gateway: the agent renews each at about half its life.
    let ttl = Duration::from_secs(60);
    let mut s = spire(&run, ttl);
    let mut opts = Options::new(&run);
    opts.gateway_config = gateway(&run, &s.agent);
    let t = Topology::start(&opts).unwrap();

    // The caller keeps its SVID fresh as a workload does (fetched again every 5 s, each time into its own
    // directory, so a request never reads a certificate and a key of two different fetches).
    let fetch = |agent: &SpireAgent, n: usize| -> Option<(CertFiles, PathBuf)> {
        let dir = run.join(format!("svids/rotation-{n}"));
        let files = agent.fetch_x509("app1", &dir, Duration::from_secs(4)).ok()?;
        Some((files, dir.join("bundle.0.pem")))
    };
    let (mut files, mut bundle) = fetch(&s.agent, 0).unwrap();
    let serial = |der: &[u8]| x509_parser::parse_x509_certificate(der).map(|(_, c)| c.raw_serial_as_string()).unwrap();
    let mut gateway_serials = std::collections::BTreeSet::new();
    let mut caller_serials = std::collections::BTreeSet::new();
    let (mut sent, mut failed) = (0usize, Vec::new());
    let (mut fetches, mut restarted) = (0usize, false);
    let start = std::time::Instant::now();
    let mut last_fetch = start;
    while start.elapsed() < ROTATION_RUN {
        if !restarted && start.elapsed() >= AGENT_RESTART_AT {
            s.agent.restart().unwrap();
            restarted = true;
        }
        if last_fetch.elapsed() >= Duration::from_secs(5) {
            fetches += 1;
            // While the agent restarts a fetch fails: the caller keeps its current SVID, still valid.
            if let Some(fresh) = fetch(&s.agent, fetches) {
                (files, bundle) = fresh;
            }
            last_fetch = std::time::Instant::now();
        }
        caller_serials.insert(serial(&spire::first_certificate_der(&files.cert).unwrap()));
        if let Ok(der) = egress_identity_harness::l4::served_certificate(GATEWAY_HOST, &bundle, &files) {
            gateway_serials.insert(serial(&der));
        }
        let path = egress_identity_harness::unique_path("/spire/rotation");
        let r = call(&t, &bundle, &files, &path);
        sent += 1;
        if r.status != 200 {
            failed.push(format!("{:?}: {}", start.elapsed(), r.summary()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "rotation: {sent} requests, {} failed, {} caller SVIDs, {} gateway SVIDs, agent restarted at {AGENT_RESTART_AT:?}",
        failed.len(),
        caller_serials.len(),
        gateway_serials.len()
    );
    assert!(failed.is_empty(), "{} of {sent} requests failed: {failed:#?}", failed.len());
    assert!(gateway_serials.len() >= 4, "the gateway's SVID rotated only {} times", gateway_serials.len());
    assert!(caller_serials.len() >= 4, "the caller's SVID rotated only {} times", caller_serials.len());
}
