//! `demo`: generate the test PKI into `target/demo/`, start the gateway and the partner server, make a few
//! requests and tell what happened. Exits 0 only if every outcome was the expected one.

use std::process::ExitCode;

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::pki::{EXTERNAL_HOST, EXTERNAL_TLS_HOST};
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{
    Options, Topology, ADMIN_PORT, EXTERNAL_PORT, GATEWAY_L4_PORT, GATEWAY_L4_SHARED_PORT, GATEWAY_PORT,
};

enum Expect {
    /// Forwarded through this cluster (named by the policy's destination and identity); the partner sees
    /// this client certificate subject.
    Allow(&'static str, &'static str),
    /// 403 with this layer, reason and policy.
    Deny(&'static str, &'static str, Option<&'static str>),
}

struct Step {
    /// The Host the caller asks for (the destination).
    host: &'static str,
    who: &'static str,
    workload: &'static str,
    path: &'static str,
    why: &'static str,
    expect: Expect,
}

const STEPS: &[Step] = &[
    Step {
        host: EXTERNAL_HOST,
        who: "spiffe://cluster.local/ns/team/sa/app1",
        workload: "team-app1",
        path: "/v1/orders",
        why: "team/app1 is allowed and mapped to the external identity team.app1",
        expect: Expect::Allow("CN=team.app1", "partner-api|team-app1"),
    },
    Step {
        host: EXTERNAL_HOST,
        who: "spiffe://cluster.local/ns/team/sa/app2",
        workload: "team-app2",
        path: "/v1/invoices",
        why: "same destination, another caller: the partner must see team.app2",
        expect: Expect::Allow("CN=team.app2", "partner-api|team-app2"),
    },
    Step {
        host: EXTERNAL_HOST,
        who: "spiffe://cluster.local/ns/sandbox/sa/default",
        workload: "sandbox-default",
        path: "/v1/reports",
        why: "the sandbox namespace may not use the egress gateway at all",
        expect: Expect::Deny("gateway", "no_matching_allow", None),
    },
    Step {
        host: EXTERNAL_HOST,
        who: "spiffe://cluster.local/ns/team/sa/app1",
        workload: "team-app1",
        path: "/admin/users",
        why: "nobody may reach the partner's admin paths",
        expect: Expect::Deny("destination", "denied_by_policy", Some("deny-admin-paths")),
    },
    Step {
        host: "api.partner.example:8443",
        who: "spiffe://cluster.local/ns/team/sa/app1",
        workload: "team-app1",
        path: "/v1/shared/orders",
        why: "partner-shared (singleCluster): ONE cluster for every identity, the certificate picked per connection (fetched over SDS)",
        expect: Expect::Allow("CN=team.app1", "partner-shared|shared"),
    },
    Step {
        host: "api.partner.example:8443",
        who: "spiffe://cluster.local/ns/team/sa/app2",
        workload: "team-app2",
        path: "/v1/shared/invoices",
        why: "the same shared cluster for another caller: the partner must see team.app2",
        expect: Expect::Allow("CN=team.app2", "partner-shared|shared"),
    },
];

fn describe(r: &Response) -> String {
    match (&r.json, r.status) {
        (_, 0) => format!("no HTTP response ({})", r.stderr.trim()),
        (Some(j), 403) => format!(
            "DENY (HTTP 403) layer={} reason={} policy={}",
            j.get("layer").and_then(|v| v.as_str()).unwrap_or("?"),
            j.get("reason").and_then(|v| v.as_str()).unwrap_or("?"),
            j.get("policy").and_then(|v| v.as_str()).unwrap_or("-"),
        ),
        (_, s) if (200..300).contains(&s) => format!("ALLOW (HTTP {s}, forwarded to the partner)"),
        (_, s) => format!("HTTP {s}: {}", r.body.trim()),
    }
}

fn run() -> Result<bool, egress_identity_harness::Error> {
    let run_dir = repo_root().join("target/demo");
    println!("egress-identity demo");
    println!("  run directory  {}", run_dir.display());
    println!("  gateway        Envoy on 127.0.0.1:{GATEWAY_PORT} (envoy/gateway.yaml, admin :{ADMIN_PORT}) + egress-identity filter");
    println!("  L4 gateway     the same Envoy on 127.0.0.1:{GATEWAY_L4_PORT} and :{GATEWAY_L4_SHARED_PORT}, the ports tcp/tls destinations declare");
    println!("                 (the filter as a network filter before tcp_proxy)");
    println!("  partner        nginx on 127.0.0.1:{EXTERNAL_PORT} as {EXTERNAL_HOST}, accepts only partner-CA client certificates");
    println!("starting (fresh test PKI in {}/pki) ...", run_dir.display());
    let topo = Topology::start(&Options::new(&run_dir))?;
    let client = topo.client();
    let mut ok = 0;
    for (i, step) in STEPS.iter().enumerate() {
        let call = Call::get(&topo.pki().workload(step.workload), step.path).host(step.host);
        let r = client.send(&call)?;
        println!();
        println!("{}. {} calls GET https://{}{}", i + 1, step.who, step.host, step.path);
        println!("   ({})", step.why);
        println!("   gateway decided: {}", describe(&r));
        // nginx writes its access log after it has sent the response: give it a moment to show up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut seen = topo.external_requests_for(step.path);
        while seen.is_empty() && r.status == 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            seen = topo.external_requests_for(step.path);
        }
        let subject = seen.first().and_then(|s| s.get("client_subject")).and_then(|v| v.as_str());
        match subject {
            Some(s) => println!("   partner saw client certificate subject: {s}"),
            None => println!("   partner: the request never arrived"),
        }
        // The gateway's access log carries the filter's audit record (the harness has Envoy flush it every 100 ms)
        // and the cluster the request went out through.
        let entry = topo.gateway_access_log_entry(step.path);
        let text = |field: &str| entry.as_ref().and_then(|e| e[field].as_str()).map(str::to_owned);
        if let Some(audit) = text("audit") {
            println!("   gateway audit record: {audit}");
        }
        let cluster = text("upstream_cluster").filter(|c| c != "-");
        if let Some(cluster) = &cluster {
            println!("   gateway cluster: {cluster}");
        }
        let good = match &step.expect {
            Expect::Allow(cn, want) => {
                r.status == 200
                    && r.field("client_subject") == Some(cn)
                    && subject == Some(cn)
                    && cluster.as_deref() == Some(want)
            }
            Expect::Deny(layer, reason, policy) => {
                r.status == 403
                    && r.field("layer") == Some(layer)
                    && r.field("reason") == Some(reason)
                    && r.field("policy") == *policy
                    && seen.is_empty()
            }
        };
        if good {
            ok += 1;
            println!("   as expected");
        } else {
            let want = match &step.expect {
                Expect::Allow(cn, cluster) => format!("200 through cluster {cluster} and the partner seeing {cn}"),
                Expect::Deny(l, r, p) => format!("403 {l}/{r}/{} and nothing at the partner", p.unwrap_or("-")),
            };
            println!("   NOT AS EXPECTED: wanted {want}; got {}", r.summary());
        }
    }
    let l4_ok = l4_steps(&topo)?;
    println!();
    let total = STEPS.len() + L4_STEPS;
    println!("{} of {total} outcomes as expected (logs in {}/logs)", ok + l4_ok, run_dir.display());
    Ok(ok + l4_ok == total)
}

const L4_STEPS: usize = 4;

/// The L4 listener, which listens on exactly the ports tcp/tls destinations declare: a tcp connection
/// allowed (the gateway originates mTLS as the caller's external identity), a tls passthrough connection
/// refused by the destination layer, a declared host on a port it is not declared on, and a connection
/// through the single-cluster tcp destination.
fn l4_steps(topo: &Topology) -> Result<usize, egress_identity_harness::Error> {
    let l4 = topo.l4_client();
    let mut ok = 0;
    let mut step = STEPS.len();
    let mut report = |good: bool, want: &str, got: &dyn std::fmt::Debug| {
        if good {
            ok += 1;
            println!("   as expected");
        } else {
            println!("   NOT AS EXPECTED: wanted {want}; got {got:?}");
        }
    };

    step += 1;
    println!();
    println!(
        "{step}. spiffe://cluster.local/ns/team/sa/app1 opens a TCP connection to {EXTERNAL_HOST}:{GATEWAY_L4_PORT}"
    );
    println!("   (L4: the tcp destination partner-tcp; the gateway originates mTLS to the partner as team.app1)");
    let outcome = l4.call(&topo.pki().workload("team-app1"), EXTERNAL_HOST, b"hello\n")?;
    println!("   partner answered: {:?}", outcome.received.trim());
    let (_, cluster) = print_l4_audit(topo);
    report(
        outcome.received.trim() == "subject=CN=team.app1" && cluster == "partner-tcp|team-app1",
        "the partner to answer subject=CN=team.app1, through cluster partner-tcp|team-app1",
        &outcome,
    );

    step += 1;
    println!();
    println!(
        "{step}. spiffe://cluster.local/ns/team/sa/app2 opens a TLS passthrough connection to {EXTERNAL_TLS_HOST}:{GATEWAY_L4_PORT}"
    );
    println!("   (L4: the tls destination partner-tls allows only team/app1; the connection is closed, nothing reaches the partner)");
    let before = topo.external_connections().len();
    let outcome =
        l4.passthrough(&topo.pki().workload("team-app2"), EXTERNAL_TLS_HOST, EXTERNAL_TLS_HOST, b"hello\n")?;
    println!("   connection: {}", if outcome.received.is_empty() { "closed by the gateway" } else { "answered" });
    let (audit, _) = print_l4_audit(topo);
    let reached = topo.external_connections().len() != before;
    report(
        outcome.received.is_empty() && !reached && audit.contains("reason=no_matching_allow"),
        "a closed connection, nothing at the partner, reason=no_matching_allow",
        &outcome,
    );

    step += 1;
    println!();
    println!(
        "{step}. spiffe://cluster.local/ns/team/sa/app1 opens a TLS passthrough connection to {EXTERNAL_TLS_HOST}:{GATEWAY_L4_SHARED_PORT}"
    );
    println!("   (L4: partner-tls is declared on port {GATEWAY_L4_PORT} only; on another port its host names no destination)");
    let before = topo.external_connections().len();
    let outcome = topo.l4_client().on_port(GATEWAY_L4_SHARED_PORT).passthrough(
        &topo.pki().workload("team-app1"),
        EXTERNAL_TLS_HOST,
        EXTERNAL_TLS_HOST,
        b"hello\n",
    )?;
    println!("   connection: {}", if outcome.received.is_empty() { "closed by the gateway" } else { "answered" });
    let (audit, _) = print_l4_audit(topo);
    let reached = topo.external_connections().len() != before;
    report(
        outcome.received.is_empty() && !reached && audit.contains("reason=unknown_destination"),
        "a closed connection, nothing at the partner, reason=unknown_destination",
        &outcome,
    );

    step += 1;
    println!();
    println!("{step}. spiffe://cluster.local/ns/team/sa/app2 opens a TCP connection to {EXTERNAL_HOST}:{GATEWAY_L4_SHARED_PORT}");
    println!("   (L4: partner-shared-tcp (singleCluster), ONE cluster for every identity: the certificate picked per connection)");
    let outcome = topo.l4_client().on_port(GATEWAY_L4_SHARED_PORT).call(
        &topo.pki().workload("team-app2"),
        EXTERNAL_HOST,
        b"hello\n",
    )?;
    println!("   partner answered: {:?}", outcome.received.trim());
    let (_, cluster) = print_l4_audit(topo);
    report(
        outcome.received.trim() == "subject=CN=team.app2" && cluster == "partner-shared-tcp|shared",
        "the partner to answer subject=CN=team.app2, through cluster partner-shared-tcp|shared",
        &outcome,
    );
    Ok(ok)
}

/// Prints (and returns) the audit record and the upstream cluster of the newest L4 connection in the
/// gateway's access log.
fn print_l4_audit(topo: &Topology) -> (String, String) {
    std::thread::sleep(std::time::Duration::from_millis(300));
    let entry = topo
        .gateway_access_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|e| e["protocol"] == "l4")
        .unwrap_or_default();
    let text = |field: &str| entry[field].as_str().filter(|v| *v != "-").unwrap_or_default().to_owned();
    let (audit, cluster) = (text("audit"), text("upstream_cluster"));
    println!("   gateway audit record: {audit}");
    if !cluster.is_empty() {
        println!("   gateway cluster: {cluster}");
    }
    (audit, cluster)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
