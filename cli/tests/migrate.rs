//! `egress-identity migrate`: the previous format's policies (the repository's own, copied into
//! tests/migrate/ as they were) become policies of the new format that the core accepts, with the same
//! identities chosen; what cannot be converted faithfully is refused, naming its JSON path.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

#[path = "../src/migrate.rs"]
#[allow(dead_code)]
mod migrate;

use egress_identity_core::config::Config;
use egress_identity_core::config_document::PlatformSpec;
use serde_json::{json, Value};

use migrate::{migrate, to_text, Migrated};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/migrate/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Migrates `old`, which must succeed, and checks the text compiles and reads back as the policy.
fn migrated(old: &Value) -> (Migrated, Config) {
    let m = match migrate(old) {
        Ok(m) => m,
        Err(errors) => panic!("migration refused: {errors:#?}"),
    };
    let text = to_text(&m.policy);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), m.policy);
    let config = Config::load(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    (m, config)
}

fn refused(old: &Value) -> Vec<String> {
    match migrate(old) {
        Ok(m) => panic!("expected a refusal, got {}", to_text(&m.policy)),
        Err(errors) => errors,
    }
}

/// Asserts that some error starts with `path: ` and contains every one of `words`.
fn assert_refused(errors: &[String], path: &str, words: &[&str]) {
    let found = errors.iter().any(|e| e.starts_with(&format!("{path}: ")) && words.iter().all(|w| e.contains(w)));
    assert!(found, "no error at {path} with {words:?} in {errors:#?}");
}

fn notes_at<'a>(m: &'a Migrated, path: &str) -> Vec<&'a str> {
    m.notes.iter().map(String::as_str).filter(|n| n.starts_with(&format!("{path}: "))).collect()
}

/// A minimal old-format policy of one http destination, patched by `patch`.
fn old_with(patch: impl FnOnce(&mut Value)) -> Value {
    let mut old = json!({
        "trustDomains": ["cluster.local"],
        "destinations": [{
            "name": "partner-api", "hosts": ["api.partner.example"], "ports": [443],
            "identities": [{"name": "team.app1", "cluster": "partner-api|team-app1",
                            "principals": ["cluster.local/ns/team/sa/app1"]}]
        }]
    });
    patch(&mut old);
    old
}

#[test]
fn the_envoy_policy_migrates_with_the_same_identities_and_clusters() {
    let old = fixture("envoy.json");
    let (m, config) = migrated(&old);
    let p = &m.policy;
    // Declared once each, though five destinations name them; the tls destination's "passthrough" is no
    // identity any more.
    assert_eq!(
        p["identities"],
        json!([
            {"name": "team.app1", "principals": ["spiffe://cluster.local/ns/team/sa/app1"]},
            {"name": "team.app2", "principals": ["spiffe://cluster.local/ns/team/sa/app2"]}
        ])
    );
    let d = |name: &str| p["destinations"].as_array().unwrap().iter().find(|d| d["name"] == name).unwrap().clone();
    assert_eq!(
        d("partner-api"),
        json!({"name": "partner-api", "host": "api.partner.example", "port": 443,
               "policies": old["destinations"][0]["policies"], "identities": ["team.app1", "team.app2"]})
    );
    assert_eq!((d("partner-tcp")["protocol"].clone(), d("partner-tcp")["port"].clone()), (json!("tcp"), json!(10444)));
    let tls = d("partner-tls");
    assert_eq!(
        (tls["host"].clone(), tls.get("identities"), tls.get("defaultIdentity")),
        (json!("tls.partner.example"), None, None)
    );
    assert_eq!(d("partner-shared")["singleCluster"], json!(true));
    assert_eq!(d("partner-shared-tcp")["singleCluster"], json!(true));
    assert_eq!(d("partner-api").get("singleCluster"), None);
    assert_eq!(p["gateway"], old["gateway"]);
    assert_eq!((p["localTrustDomain"].clone(), p["auditRecord"].clone()), (json!("cluster.local"), json!("both")));

    // The same identity is chosen, through the cluster the old policy named.
    for (i, old_d) in old["destinations"].as_array().unwrap().iter().enumerate() {
        let new_d = config.destinations.named(old_d["name"].as_str().unwrap()).unwrap();
        for entry in old_d["identities"].as_array().into_iter().flatten() {
            let principal = entry["principals"][0].as_str().unwrap().trim_start_matches("spiffe://");
            let chosen = new_d.identities.select(principal).unwrap();
            assert_eq!(*chosen.name, *entry["name"].as_str().unwrap(), "destinations[{i}]");
            match (old_d.get("sharedCluster"), entry.get("cluster")) {
                (Some(_), _) => assert_eq!(chosen.secret.as_deref(), entry["name"].as_str(), "destinations[{i}]"),
                (None, Some(cluster)) => assert_eq!(*chosen.cluster, *cluster.as_str().unwrap(), "destinations[{i}]"),
                (None, None) => unreachable!(),
            }
        }
    }
    assert_eq!(
        &*config
            .destinations
            .named("partner-tls")
            .unwrap()
            .identities
            .select("cluster.local/ns/team/sa/app1")
            .unwrap()
            .cluster,
        "partner-tls|passthrough"
    );

    // Only the shared clusters' names change; the tls destination's identity is dropped aloud.
    let clusters = notes_at(&m, "clusters");
    assert_eq!(clusters.len(), 1, "{:#?}", m.notes);
    assert!(
        clusters[0].contains(r#"destinations[3].sharedCluster "partner-shared" is now "partner-shared|shared""#),
        "{clusters:?}"
    );
    assert!(clusters[0].contains(r#""partner-shared-tcp" is now "partner-shared-tcp|shared""#), "{clusters:?}");
    assert!(!clusters[0].contains("team-app1"), "{clusters:?}");
    assert!(!clusters[0].contains("passthrough\" is now"), "{clusters:?}");
    assert!(
        notes_at(&m, "destinations[2]")[0].contains(r#"dropped its defaultIdentity ("passthrough")"#),
        "{:#?}",
        m.notes
    );
    assert_eq!(m.notes.len(), 2, "{:#?}", m.notes);
}

#[test]
fn the_istio_gateway_policy_migrates() {
    let old = fixture("istio-gateway.json");
    let (m, config) = migrated(&old);
    let p = &m.policy;
    assert_eq!(p.get("principalSources"), None);
    let note = notes_at(&m, "principalSources");
    assert!(
        note[0].contains("dropped ([\"peer_certificate\"])") && note[0].contains("the platform decides"),
        "{note:?}"
    );
    for key in ["trustDomains", "headers", "defaultPort", "gateway"] {
        assert_eq!(p[key], old[key], "{key}");
    }
    assert_eq!(p["identities"].as_array().unwrap().len(), 2);
    let files = &p["destinations"][2];
    assert_eq!(
        *files,
        json!({"name": "partner-files", "protocol": "tls", "host": "files.partner.example", "port": 443, "policies": old["destinations"][2]["policies"]})
    );
    let db = config.destinations.named("partner-db").unwrap();
    assert_eq!((&*db.host, db.port), ("db.partner.example", 5432));
    assert_eq!(&*db.identities.select("cluster.local/ns/team/sa/app2").unwrap().cluster, "partner-db|team-app2");
    assert_eq!(notes_at(&m, "clusters"), Vec::<&str>::new(), "every cluster keeps its name");
    // It still renders for its platform.
    let text = to_text(p);
    Config::load_for(text.as_bytes(), &PlatformSpec::IstioGateway).unwrap();
}

#[test]
fn the_istio_waypoint_policy_migrates_and_says_its_principal_source_is_the_platforms() {
    let (m, _) = migrated(&fixture("istio-waypoint.json"));
    let note = notes_at(&m, "principalSources");
    assert!(note[0].contains("istio_peer_principal") && note[0].contains("render istio --mode waypoint"), "{note:?}");
    assert_eq!(m.policy["destinations"][0]["identities"], json!(["team.app1", "team.app2"]));
    Config::load_for(to_text(&m.policy).as_bytes(), &PlatformSpec::IstioWaypoint).unwrap();
}

#[test]
fn the_demo_policy_migrates() {
    let (m, _) = migrated(&fixture("demo.json"));
    assert_eq!(m.policy["destinations"][0]["host"], json!("api.partner.example"));
    assert!(m.notes.is_empty(), "{:#?}", m.notes);
}

#[test]
fn the_kuma_policy_needs_the_partners_hosts() {
    let old = fixture("kuma.json");
    let e = refused(&old);
    assert_refused(
        &e,
        "destinations[0].hosts",
        &[
            "partner-api.extsvc.mesh.local",
            "write \"host\" and \"port\"",
            "--upstream partner-api=HOST:PORT",
            "[80] are the mesh's",
        ],
    );
    assert_refused(
        &e,
        "destinations[1].hosts",
        &[
            "sni.extsvc.default.zone-1.kuma-system.partner-db.5432",
            "write \"host\", the partner's",
            "--upstream partner-db=HOST:PORT",
            "5432, comes from the SNI",
        ],
    );
    assert_eq!(e.len(), 2, "{e:#?}");

    // With the partners' hosts written in, it migrates: Kuma's own host names go, an SNI's port is the port.
    let mut old = old;
    old["destinations"][0]["hosts"] = json!(["partner-api.extsvc.mesh.local", "api.partner.example"]);
    old["destinations"][0]["ports"] = json!([443]);
    old["destinations"][1]["hosts"] =
        json!(["sni.extsvc.default.zone-1.kuma-system.partner-db.5432", "db.partner.example"]);
    let (m, _) = migrated(&old);
    let endpoints: Vec<(Value, Value)> =
        m.policy["destinations"].as_array().unwrap().iter().map(|d| (d["host"].clone(), d["port"].clone())).collect();
    assert_eq!(
        endpoints,
        [
            (json!("api.partner.example"), json!(443)),
            (json!("db.partner.example"), json!(5432)),
            (json!("files.partner.example"), json!(443))
        ]
    );
    assert!(notes_at(&m, "destinations[0].port")[0].contains("check that 443 is it"), "{:#?}", m.notes);
    for i in [1, 2] {
        let note = notes_at(&m, &format!("destinations[{i}].ports"));
        assert!(
            note[0].contains("[10002], the Kuma zone egress port, dropped") && note[0].contains("--egress-port"),
            "{note:?}"
        );
    }
    assert!(notes_at(&m, "destinations[2]")[0].contains("passthrough"), "{:#?}", m.notes);
    // Kuma's cluster names are what the platform derives for them: no note, and the same clusters on Kuma.
    assert_eq!(notes_at(&m, "clusters"), Vec::<&str>::new(), "{:#?}", m.notes);
    let kuma = PlatformSpec::Kuma {
        mesh: "default".into(),
        zone: "zone-1".into(),
        namespace: "kuma-system".into(),
        egress_port: 10002,
    };
    let config = Config::load_for(to_text(&m.policy).as_bytes(), &kuma).unwrap();
    for (i, old_d) in old["destinations"].as_array().unwrap().iter().enumerate() {
        let new_d = config.destinations.named(old_d["name"].as_str().unwrap()).unwrap();
        let old_clusters: Vec<&str> = (old_d["identities"].as_array().into_iter().flatten())
            .chain(old_d.get("defaultIdentity"))
            .map(|e| e["cluster"].as_str().unwrap())
            .collect();
        let new_clusters: Vec<&str> = new_d.identities.identities().map(|e| &*e.cluster).collect();
        assert_eq!(old_clusters, new_clusters, "destinations[{i}]");
    }
    assert!(config.destinations.lookup("partner-api.extsvc.mesh.local", None).is_some());
    assert!(config.destinations.lookup("sni.extsvc.default.zone-1.kuma-system.partner-db.5432", Some(10002)).is_some());
}

#[test]
fn a_kuma_http_destinations_mesh_port_is_not_the_partners() {
    let old = old_with(|d| {
        d["destinations"][0]["hosts"] = json!(["partner-api.extsvc.mesh.local", "api.partner.example"]);
        d["destinations"][0]["ports"] = json!([80]);
    });
    assert_refused(
        &refused(&old),
        "destinations[0].ports",
        &["80 is the port applications call Kuma's mesh host on", "write \"port\""],
    );
}

#[test]
fn a_kuma_sni_must_name_the_destination() {
    let old = old_with(|d| {
        d["destinations"][0]["protocol"] = json!("tcp");
        d["destinations"][0]["hosts"] = json!(["sni.extsvc.m.z.ns.other.5432", "db.partner.example"]);
    });
    assert_refused(
        &refused(&old),
        "destinations[0].hosts[0]",
        &["MeshExternalService \"other\"", "rename the destination \"other\""],
    );
    let old = old_with(|d| {
        d["destinations"][0]["protocol"] = json!("tcp");
        d["destinations"][0]["hosts"] = json!(["sni.extsvc.m.partner-api.5432", "db.partner.example"]);
    });
    assert_refused(&refused(&old), "destinations[0].hosts[0]", &["is not Kuma's SNI"]);
}

#[test]
fn a_destination_is_one_host_and_one_port() {
    let split = "a destination is one host and one port now: split it into one destination per host:port";
    let e = refused(&old_with(|d| d["destinations"][0]["hosts"] = json!(["a.example", "b.example"])));
    assert_refused(&e, "destinations[0].hosts", &["\"a.example\", \"b.example\"", split]);
    let e = refused(&old_with(|d| d["destinations"][0]["ports"] = json!([443, 8443])));
    assert_refused(&e, "destinations[0].ports", &["[443, 8443]", split]);
    let e = refused(&old_with(|d| d["destinations"][0]["hosts"] = json!(["*.partner.example"])));
    assert_refused(
        &e,
        "destinations[0].hosts[0]",
        &["\"*.partner.example\"", "wildcard destinations are not supported"],
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    let e = refused(&old_with(|d| d["destinations"][0]["ports"] = json!([])));
    assert_refused(&e, "destinations[0].ports", &["no port", "write \"port\""]);
}

#[test]
fn destination_names_must_be_dns_labels() {
    let e = refused(&old_with(|d| d["destinations"][0]["name"] = json!("Partner_API")));
    assert_refused(&e, "destinations[0].name", &["not a DNS label", "e.g. \"partner-api\""]);
    let e = refused(&old_with(|d| d["destinations"][0]["name"] = json!("egress-identity-api")));
    assert_refused(&e, "destinations[0].name", &["the gateway's own"]);
}

#[test]
fn identity_names_are_made_valid_and_keep_their_certificates_cn() {
    let old = old_with(|d| {
        d["destinations"][0]["identities"][0]["name"] = json!("Team_App1@corp");
        d["destinations"][0]["identities"][0]["cluster"] = json!("partner-api|Team_App1");
    });
    let (m, config) = migrated(&old);
    assert_eq!(
        m.policy["identities"],
        json!([{"name": "team-app1-corp", "principals": ["cluster.local/ns/team/sa/app1"],
                "certificate": {"commonName": "Team_App1@corp"}}])
    );
    assert_eq!(m.policy["destinations"][0]["identities"], json!(["team-app1-corp"]));
    let note = notes_at(&m, "destinations[0].identities[0].name");
    assert!(
        note[0].contains(r#"identity "Team_App1@corp" is now "team-app1-corp""#) && note[0].contains("commonName"),
        "{note:?}"
    );
    let clusters = notes_at(&m, "clusters");
    assert!(clusters[0].contains(r#""partner-api|Team_App1" is now "partner-api|team-app1-corp""#), "{clusters:?}");
    let (_, identity) = config.identities.get("team-app1-corp").unwrap();
    assert_eq!(identity.certificate.common_name.as_deref(), Some("Team_App1@corp"));
}

#[test]
fn identity_names_that_cannot_be_made_valid_are_refused() {
    let e = refused(&old_with(|d| d["destinations"][0]["identities"][0]["name"] = json!("@@")));
    assert_refused(&e, "destinations[0].identities[0].name", &["no name can be made of it", "\"commonName\": \"@@\""]);
    let long = "a".repeat(70);
    let e = refused(&old_with(|d| d["destinations"][0]["identities"][0]["name"] = json!(long)));
    assert_refused(
        &e,
        "destinations[0].identities[0].name",
        &["no name can be made of it", "longer than a CN's 64 characters"],
    );
    // Two old names that become one, or one in clusters and Kubernetes objects.
    for (first, second) in [("Team.App1", "team.app1"), ("team.app1", "team-app1")] {
        let e = refused(&old_with(|d| {
            d["destinations"][0]["identities"] = json!([
                {"name": first, "cluster": "c1", "principals": ["cluster.local/ns/team/sa/app1"]},
                {"name": second, "cluster": "c2", "principals": ["cluster.local/ns/team/sa/app2"]}
            ]);
        }));
        assert_refused(
            &e,
            "destinations[0].identities[1].name",
            &[first, second, "the same name in clusters and Kubernetes objects", "rename one"],
        );
    }
}

/// Two destinations naming the same identity, the second's entry patched by `patch`.
fn two_destinations(shared: bool, patch: impl FnOnce(&mut Value)) -> Value {
    let mut old = old_with(|d| {
        let mut second = d["destinations"][0].clone();
        second["name"] = json!("partner-alt");
        second["ports"] = json!([8443]);
        second["identities"][0]["cluster"] = json!("partner-alt|team-app1");
        if shared {
            for dest in [&mut d["destinations"][0], &mut second] {
                dest["sharedCluster"] = json!("shared");
                dest["identities"][0].as_object_mut().unwrap().remove("cluster");
            }
        }
        d["destinations"].as_array_mut().unwrap().push(second);
    });
    patch(&mut old["destinations"][1]["identities"][0]);
    old
}

#[test]
fn an_identity_named_by_several_destinations_is_declared_once_with_the_same_principals() {
    let (m, _) = migrated(&two_destinations(false, |i| i["principals"] = json!(["cluster.local/ns/team/sa/app1"])));
    assert_eq!(m.policy["identities"].as_array().unwrap().len(), 1);
    let e = refused(&two_destinations(false, |i| i["principals"] = json!(["cluster.local/ns/team/sa/app2"])));
    assert_refused(
        &e,
        "destinations[1].identities[0].principals",
        &["identity \"team.app1\" maps different principals in destinations partner-api and partner-alt: give them different names"],
    );
}

#[test]
fn secrets_become_the_identitys_certificate_secret_and_must_agree() {
    let (m, config) = migrated(&two_destinations(true, |_| {}));
    assert_eq!(m.policy["identities"][0].get("certificate"), None, "the default secret is the name");
    assert_eq!(m.policy["destinations"][1]["singleCluster"], json!(true));
    assert!(config.destinations.iter().all(|d| d.single_cluster));
    let old = two_destinations(true, |i| i["secret"] = json!("team.app1"));
    assert_eq!(migrated(&old).0.policy["identities"][0].get("certificate"), None);

    let mut old = two_destinations(true, |i| i["secret"] = json!("kubernetes://team-app1"));
    old["destinations"][0]["identities"][0]["secret"] = json!("kubernetes://team-app1");
    let (m, config) = migrated(&old);
    assert_eq!(m.policy["identities"][0]["certificate"], json!({"secret": "kubernetes://team-app1"}));
    let chosen =
        config.destinations.named("partner-alt").unwrap().identities.select("cluster.local/ns/team/sa/app1").unwrap();
    assert_eq!(chosen.secret.as_deref(), Some("kubernetes://team-app1"));

    let e = refused(&two_destinations(true, |i| i["secret"] = json!("kubernetes://other")));
    assert_refused(
        &e,
        "destinations[1].identities[0].secret",
        &["\"team.app1\"", "\"kubernetes://other\"", "give them different names"],
    );
    // A secret outside single-cluster mode was never read.
    let e = refused(&old_with(|d| d["destinations"][0]["identities"][0]["secret"] = json!("s")));
    assert_refused(&e, "destinations[0].identities[0].secret", &["only a destination with a sharedCluster"]);
}

#[test]
fn a_renamed_identity_keeps_its_old_secret_in_single_cluster_mode() {
    let old = old_with(|d| {
        d["destinations"][0]["sharedCluster"] = json!("partner-api|shared");
        d["destinations"][0]["identities"][0] =
            json!({"name": "Team.App1", "principals": ["cluster.local/ns/team/sa/app1"]});
    });
    let (m, _) = migrated(&old);
    assert_eq!(m.policy["identities"][0]["certificate"], json!({"commonName": "Team.App1", "secret": "Team.App1"}));
    assert_eq!(notes_at(&m, "clusters"), Vec::<&str>::new(), "partner-api|shared is what the platform derives");
}

#[test]
fn a_default_identity_is_declared_without_principals_unless_mapped_elsewhere() {
    let old = old_with(|d| {
        d["destinations"][0]["defaultIdentity"] = json!({"name": "acme.fallback", "cluster": "fallback"});
        d["destinations"].as_array_mut().unwrap().push(json!({
            "name": "partner-b", "hosts": ["b.partner.example"], "ports": [443],
            "defaultIdentity": {"name": "team.app1", "cluster": "partner-b|team-app1"}
        }));
    });
    let (m, config) = migrated(&old);
    assert_eq!(
        m.policy["identities"],
        json!([
            {"name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"]},
            {"name": "acme.fallback"}
        ])
    );
    assert_eq!(m.policy["destinations"][0]["defaultIdentity"], json!("acme.fallback"));
    assert_eq!(m.policy["destinations"][1].get("identities"), None);
    let chosen =
        config.destinations.named("partner-api").unwrap().identities.select("cluster.local/ns/x/sa/y").unwrap();
    assert_eq!(&*chosen.cluster, "partner-api|acme-fallback");
    let clusters = notes_at(&m, "clusters");
    assert!(
        clusters[0]
            .contains(r#"destinations[0].defaultIdentity.cluster "fallback" is now "partner-api|acme-fallback""#),
        "{clusters:?}"
    );
    assert!(!clusters[0].contains("partner-b|team-app1"), "{clusters:?}");
}

#[test]
fn identities_of_tls_destinations_only_are_not_declared() {
    let old = old_with(|d| {
        d["destinations"].as_array_mut().unwrap().push(json!({
            "name": "partner-files", "protocol": "tls", "hosts": ["files.partner.example"], "ports": [443],
            "identities": [{"name": "files.only", "cluster": "partner-files|x", "principals": ["cluster.local/ns/team/sa/app1"]}],
            "defaultIdentity": {"name": "passthrough", "cluster": "partner-files|passthrough"}
        }));
    });
    let (m, _) = migrated(&old);
    let names: Vec<&Value> = m.policy["identities"].as_array().unwrap().iter().map(|i| &i["name"]).collect();
    assert_eq!(names, [&json!("team.app1")]);
    let note = notes_at(&m, "destinations[1]");
    assert!(
        note[0].contains(r#"dropped its identities and defaultIdentity ("files.only", "passthrough")"#),
        "{note:?}"
    );
    let clusters = notes_at(&m, "clusters");
    assert!(clusters[0].contains(r#""partner-files|x" is now "partner-files|passthrough""#), "{clusters:?}");
}

#[test]
fn empty_lists_in_rules_are_removed_aloud() {
    let old = old_with(|d| {
        d["gateway"] = json!({"policies": [{"name": "g", "action": "ALLOW", "rules": [
            {"from": [{"source": {"principals": [], "namespaces": ["team"], "notNamespaces": []}}], "to": []}
        ]}]});
        d["destinations"][0]["policies"] = json!([{"name": "p", "action": "DENY", "rules": [
            {"from": [], "to": [{"operation": {"hosts": [], "paths": ["/admin*"]}}]}
        ]}]);
    });
    let (m, _) = migrated(&old);
    assert_eq!(
        m.policy["gateway"],
        json!({"policies": [{"name": "g", "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["team"]}}]}]}]})
    );
    assert_eq!(
        m.policy["destinations"][0]["policies"],
        json!([{"name": "p", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}])
    );
    let removed: Vec<&str> = m.notes.iter().map(|n| n.split(": ").next().unwrap()).collect();
    assert_eq!(
        removed,
        [
            "gateway.policies[0].rules[0].from[0].source.notNamespaces",
            "gateway.policies[0].rules[0].from[0].source.principals",
            "gateway.policies[0].rules[0].to",
            "destinations[0].policies[0].rules[0].from",
            "destinations[0].policies[0].rules[0].to[0].operation.hosts",
        ]
    );
    assert!(m.notes[0].ends_with("an empty list meant any value; removed (omitting the field means the same)"));
}

#[test]
fn what_the_core_refuses_after_migration_is_returned_with_its_path() {
    let e = refused(&old_with(|d| d["headers"] = json!({"principal": "x-same", "cluster": "x-same"})));
    assert_eq!(e, ["after migration: headers.cluster: must differ from headers.principal"]);
}

#[test]
fn documents_that_are_not_of_the_previous_format_are_refused() {
    assert_eq!(refused(&json!([])), [".: the policy is not a JSON object"]);
    assert_refused(&refused(&json!({"trustDomains": []})), "destinations", &["required"]);
    let e = refused(&json!({"identities": [], "destinations": [{"name": "a", "host": "a.example", "port": 443}]}));
    assert_refused(&e, "identities", &["already in the new one"]);
    assert_refused(&e, "destinations[0].host", &["already in the new one"]);
    let e = refused(&old_with(|d| d["destinations"][0]["identities"][0]["principals"] = json!([])));
    assert_refused(&e, "destinations[0].identities[0].principals", &["at least one"]);
    assert_refused(&refused(&old_with(|d| d["when"] = json!(1))), "when", &["not a field of the previous format"]);
}

#[test]
fn the_text_has_the_new_formats_field_order() {
    let old = old_with(|d| {
        d["auditRecord"] = json!("line");
        d["localTrustDomain"] = json!("cluster.local");
        d["trustDomains"] = json!(["partner.example"]);
        d["gateway"] = json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/x"], "methods": ["GET"]}}],
            "from": [{"source": {"namespaces": ["team"]}}]}], "action": "ALLOW", "name": "g"}]});
        d["destinations"][0]["protocol"] = json!("http");
    });
    let (m, _) = migrated(&old);
    let expected = r#"{
  "localTrustDomain": "cluster.local",
  "trustDomains": [
    "partner.example"
  ],
  "auditRecord": "line",
  "identities": [
    {
      "name": "team.app1",
      "principals": [
        "cluster.local/ns/team/sa/app1"
      ]
    }
  ],
  "gateway": {
    "policies": [
      {
        "name": "g",
        "action": "ALLOW",
        "rules": [
          {
            "from": [
              {
                "source": {
                  "namespaces": [
                    "team"
                  ]
                }
              }
            ],
            "to": [
              {
                "operation": {
                  "methods": [
                    "GET"
                  ],
                  "paths": [
                    "/x"
                  ]
                }
              }
            ]
          }
        ]
      }
    ]
  },
  "destinations": [
    {
      "name": "partner-api",
      "host": "api.partner.example",
      "port": 443,
      "identities": [
        "team.app1"
      ]
    }
  ]
}
"#;
    assert_eq!(to_text(&m.policy), expected);
}
