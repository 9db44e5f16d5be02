//! Dynamic destinations on the real gateway (issue 26): a `*.partner.example` destination on two ports and a
//! `*.db.example` tcp destination, rendered by `render envoy` with Envoy's dynamic forward proxy, names
//! resolved by a DNS server the test owns (harness `dns`, c-ares `resolvers`) to 127.0.0.2, where nginx
//! (`cli/tests/wildcard/partners.nginx.conf`) serves a.partner.example and b.partner.example each with a
//! certificate for its name alone and reports the server name, port and client certificate it saw.
#![cfg(test)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use egress_identity_harness::client::{Call, Response};
use egress_identity_harness::dns::DnsServer;
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Options, Topology, ADMIN_PORT, GATEWAY_L4_PORT};

const POLICY: &str = r#"{
  "trustDomains": ["cluster.local"],
  "identities": [
    { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] },
    { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app2"] }
  ],
  "gateway": { "policies": [ { "name": "mesh", "action": "ALLOW",
    "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
  "destinations": [
    { "name": "partner", "host": "*.partner.example", "port": [18443, 18446],
      "policies": [
        { "name": "not-b-for-app2", "action": "DENY", "rules": [ {
          "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app2"] } } ],
          "to": [ { "operation": { "hosts": ["b.partner.example"] } } ] } ] },
        { "name": "team", "action": "ALLOW", "rules": [ {} ] } ],
      "identities": ["team.app1", "team.app2"] },
    { "name": "db", "protocol": "tcp", "host": "*.db.example", "port": 10444,
      "policies": [ { "name": "team", "action": "ALLOW", "rules": [ {} ] } ],
      "identities": ["team.app1", "team.app2"] },
    { "name": "files", "protocol": "tls", "host": "*.db.example", "port": 10448,
      "policies": [ { "name": "app1", "action": "ALLOW",
        "rules": [ { "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app1"] } } ] } ] } ] },
    { "name": "db-exact", "protocol": "tcp", "host": "x.db.example", "port": 10447,
      "policies": [ { "name": "team", "action": "ALLOW", "rules": [ {} ] } ],
      "identities": ["team.app1"] }
  ]
}"#;

/// Where the test's DNS server sends the partners' names.
const PARTNERS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn run_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `render envoy` of [`POLICY`] on the harness's ports, resolving through `dns`, loopback allowed or not.
fn render(run: &Path, dns: &DnsServer, allow_loopback: bool) -> PathBuf {
    let policy = run.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egress-identity"))
        .args(["render", "envoy"])
        .arg(&policy)
        .args(["--listen", "127.0.0.1:10443", "--l4-address", "127.0.0.1", "--metrics", "127.0.0.1:15090"])
        .args(["--access-log", "logs/gateway-access.log"])
        .args([
            "--ca-secret",
            "partner=partner-ca",
            "--ca-secret",
            "db=partner-ca",
            "--ca-secret",
            "db-exact=partner-ca",
        ])
        // The exact destination's one endpoint: nginx's tcp server, as it is not in the system's DNS.
        .args(["--upstream", "db-exact=127.0.0.2:10444"])
        .args(["--dns-resolver", &dns.addr().to_string()])
        .args(if allow_loopback { &["--allow-resolved", "127.0.0.0/8"][..] } else { &[] })
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = run.join("gateway-wildcard.yaml");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

fn get(t: &Topology, who: &str, authority: &str, path: &str) -> Response {
    t.client().send(&Call::get(&t.pki().workload(who), path).host(authority)).expect("running curl")
}

fn denial(r: &Response) -> (Option<&str>, Option<&str>, Option<&str>) {
    (r.field("layer"), r.field("policy"), r.field("reason"))
}

#[test]
fn a_wildcard_destination_reaches_the_host_and_port_each_caller_asks_for_as_its_identity() {
    let run = run_dir("wildcard");
    let records = [
        ("a.partner.example", PARTNERS),
        ("b.partner.example", PARTNERS),
        ("c.partner.example", PARTNERS),
        ("x.db.example", PARTNERS),
        ("y.db.example", PARTNERS),
        // A partner's name that points into the gateway's own network.
        ("inner.partner.example", Ipv4Addr::new(192, 168, 7, 7)),
    ];
    let dns = DnsServer::start(&records).unwrap();
    let mut opts = Options::new(&run);
    opts.gateway_config = render(&run, &dns, true);
    opts.nginx_config = repo_root().join("cli/tests/wildcard/partners.nginx.conf");
    let t = Topology::start(&opts).unwrap();

    // Each concrete host on each declared port, as each caller: the partner saw the requested name as SNI,
    // on the requested port, and the caller's external identity; app2's DENY on b holds under the ALLOW.
    for (who, subject) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        for host in ["a.partner.example", "b.partner.example"] {
            for port in ["18443", "18446"] {
                let authority = format!("{host}:{port}");
                let path = format!("/wildcard/{who}/{host}/{port}");
                let r = get(&t, who, &authority, &path);
                if who == "team-app2" && host == "b.partner.example" {
                    assert_eq!(r.status, 403, "{authority} as {who}: {}", r.summary());
                    assert_eq!(
                        denial(&r),
                        (Some("destination"), Some("not-b-for-app2"), Some("denied_by_policy")),
                        "{}",
                        r.body
                    );
                    let entry = t.gateway_access_log_entry(&path).expect("an access-log entry for the denial");
                    let record = &entry["decision"]["value"];
                    assert_eq!(
                        (&record["destination"], &record["host"], &record["port"], &record["policy"]),
                        (&"partner".into(), &host.into(), &port.into(), &"not-b-for-app2".into()),
                        "{entry}"
                    );
                    continue;
                }
                assert_eq!(r.status, 200, "{authority} as {who}: {}", r.summary());
                assert_eq!(r.field("server_name"), Some(host), "{authority}: {}", r.body);
                assert_eq!(r.field("port"), Some(port), "{authority}: {}", r.body);
                assert_eq!(r.field("client_subject"), Some(subject), "{authority}: {}", r.body);
                // The audit record names the concrete host and port.
                let entry = t.gateway_access_log_entry(&path).expect("an access-log entry");
                let record = &entry["decision"]["value"];
                assert_eq!(
                    (&record["destination"], &record["host"], &record["port"], &record["identity"]),
                    (&"partner".into(), &host.into(), &port.into(), &subject.trim_start_matches("CN=").into()),
                    "{entry}"
                );
            }
        }
    }

    // The metrics name the destination only: one bounded label value for every host under the pattern.
    t.settle_counters();
    let samples = t.prometheus();
    let decisions: Vec<_> = samples.iter().filter(|s| s.family == "egress_identity_decisions_total").collect();
    assert!(decisions.iter().any(|s| s.labels.get("destination").map(String::as_str) == Some("partner")));
    for s in &decisions {
        assert!(
            s.labels.values().all(|v| !v.ends_with(".partner.example")) && !s.labels.contains_key("host"),
            "a concrete host in a metric label: {:?}",
            s.labels
        );
    }
    let denied = t.metric(
        "egress_identity_decisions_total",
        &[("destination", "partner"), ("policy", "not-b-for-app2"), ("reason", "denied_by_policy")],
    );
    assert_eq!(denied, 2, "app2 to b on both ports");

    // A partner server whose certificate is for another name: the gateway refuses it (auto_san_validation),
    // and the request never reaches it.
    let r = get(&t, "team-app1", "c.partner.example:18446", "/wildcard/mismatch");
    assert_eq!(r.status, 503, "{}", r.summary());
    // A port the destination does not declare, a name outside the pattern: unknown destinations.
    for authority in
        ["a.partner.example:18447", "a.partner.example", "partner.example:18443", "a.partner.example.evil:18443"]
    {
        let r = get(&t, "team-app1", authority, "/wildcard/unknown");
        assert_eq!(r.status, 403, "{authority}: {}", r.summary());
        assert_eq!(r.field("reason"), Some("unknown_destination"), "{authority}: {}", r.body);
    }
    // No such name, and a name that resolves into the gateway's own network: 503, nothing connected.
    for (authority, path) in
        [("nope.partner.example:18443", "/wildcard/dns/nope"), ("inner.partner.example:18443", "/wildcard/dns/inner")]
    {
        let r = get(&t, "team-app1", authority, path);
        assert_eq!(r.status, 503, "{authority}: {}", r.summary());
        let entry = t.gateway_access_log_entry(path).expect("an access-log entry");
        assert!(entry["details"].as_str().unwrap_or_default().starts_with("dns_resolution_failure"), "{entry}");
        assert_eq!(entry["decision"]["value"]["outcome"], "upstream_dns_failure", "{authority}: {entry}");
    }
    t.settle_counters();
    let failures = t.metric(
        "egress_identity_upstream_failures_total",
        &[("destination", "partner"), ("identity", "team.app1"), ("reason", "upstream_dns_failure")],
    );
    assert_eq!(failures, 2);
    let partner_log = std::fs::read_to_string(t.external_access_log()).unwrap_or_default();
    for never in ["/wildcard/mismatch", "/wildcard/unknown", "/wildcard/dns", "not-b"] {
        assert!(!partner_log.contains(never), "{never} reached a partner:\n{partner_log}");
    }
    assert!(!partner_log.contains("/wildcard/team-app2/b.partner.example"), "{partner_log}");

    // tcp: the gateway originates mTLS to the host the SNI names, with that server name and the caller's
    // identity, and checks the partner's certificate against that host (tcp_proxy would not on its own).
    let l4 = t.l4_client().on_port(GATEWAY_L4_PORT);
    for (who, subject) in [("team-app1", "CN=team.app1"), ("team-app2", "CN=team.app2")] {
        let out = l4.call(&t.pki().workload(who), "x.db.example", b"hello\n").unwrap();
        assert_eq!(out.received.trim(), format!("server_name=x.db.example subject={subject}"), "{who}: {out:?}");
    }
    let out = l4.call(&t.pki().workload("team-app1"), "y.db.example", b"hello\n").unwrap();
    assert!(out.received.is_empty(), "a server with x.db.example's certificate answered for y.db.example: {out:?}");
    let stream_log = std::fs::read_to_string(run.join("logs/external-stream.log")).unwrap_or_default();
    // nginx logs the aborted handshake with the name it was asked for, but no client certificate reached it.
    assert!(!stream_log.lines().any(|l| l.contains("y.db.example") && l.contains("team.app")), "{stream_log}");
    // tls passthrough under the same pattern: the caller's own TLS reaches the host its SNI names, and its
    // ClientHello must name that same host (not another one under the pattern); app2 is not allowed.
    let tls = t.l4_client().on_port(10448);
    let app1 = t.pki().workload("team-app1");
    let out = tls.passthrough(&app1, "x.db.example", "x.db.example", b"hello\n").unwrap();
    assert_eq!(out.received.trim(), "passthrough server_name=x.db.example", "{out:?}");
    let out = tls.passthrough(&app1, "x.db.example", "y.db.example", b"hello\n").unwrap();
    assert!(out.received.is_empty(), "a ClientHello for y.db.example went through under x.db.example: {out:?}");
    let out = tls.passthrough(&t.pki().workload("team-app2"), "x.db.example", "x.db.example", b"hello\n").unwrap();
    assert!(out.received.is_empty(), "app2 is not allowed: {out:?}");

    // An exact tcp destination beside the dynamic one: its own cluster, nothing resolved for it.
    let out = l4.clone().on_port(10447).call(&t.pki().workload("team-app1"), "x.db.example", b"hello\n").unwrap();
    assert_eq!(out.received.trim(), "server_name=x.db.example subject=CN=team.app1", "{out:?}");
    assert!(dns.queries() > 0);

    // doctor finds the forward proxies in place: each dynamic destination's clusters and the filter that
    // fills their DNS cache.
    let admin = format!("http://127.0.0.1:{ADMIN_PORT}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egress-identity"))
        .args(["doctor", &admin])
        .arg(run.join("policy.json"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    for (destination, filter) in [
        ("partner", "envoy.filters.http.dynamic_forward_proxy"),
        ("db", "envoy.filters.network.sni_dynamic_forward_proxy"),
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(&format!("ok:    {destination}: listener ")) && l.contains(filter)),
            "{report}"
        );
    }
    let forward_proxy_drifts: Vec<&str> =
        report.lines().filter(|l| l.starts_with("drift:") && l.contains("forward proxy")).collect();
    assert!(forward_proxy_drifts.is_empty(), "{report}");
    drop(t);

    // The same gateway without --allow-resolved: the partners' loopback addresses are the gateway's own
    // network, so no name resolves into them and nothing is connected.
    let mut opts = Options::new(run_dir("wildcard-guard"));
    opts.gateway_config = render(&run, &dns, false);
    opts.nginx_config = repo_root().join("cli/tests/wildcard/partners.nginx.conf");
    let t = Topology::start(&opts).unwrap();
    let r = get(&t, "team-app1", "a.partner.example:18443", "/wildcard/guard");
    assert_eq!(r.status, 503, "{}", r.summary());
    let entry = t.gateway_access_log_entry("/wildcard/guard").expect("an access-log entry");
    assert_eq!(entry["decision"]["value"]["outcome"], "upstream_dns_failure", "{entry}");
    let out = t
        .l4_client()
        .on_port(GATEWAY_L4_PORT)
        .call(&t.pki().workload("team-app1"), "x.db.example", b"hello\n")
        .unwrap();
    assert!(out.received.is_empty(), "{out:?}");
    let partner_log = std::fs::read_to_string(t.external_access_log()).unwrap_or_default();
    assert!(!partner_log.contains("/wildcard/guard"), "{partner_log}");
}
