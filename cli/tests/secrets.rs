//! `egress-identity secrets`: what it refuses, by name. (That the Secrets it writes are valid and exactly
//! those the rendered manifests read is tests/manifests/test_secrets.py; what it refuses of the certificate
//! material itself is tests/certificate_checks.rs.)
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::Command;

use egress_identity_harness::pki::Pki;
use egress_identity_harness::repo_root;

fn secrets(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity")).arg("secrets").args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn secrets_refuses_what_the_manifests_would_not_read_as_given() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-secrets");
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::generate(dir.join("pki")).unwrap();
    let policy = repo_root().join("examples/policy.json");
    let p = policy.to_str().unwrap();
    let files = |name: &str| {
        let f = pki.external_identity(name);
        format!("{name}={},{}", f.cert.display(), f.key.display())
    };
    let (app1, app2) = (files("team.app1"), files("team.app2"));
    let partner_ca = pki.partner_ca_cert().display().to_string();
    let mesh_ca = pki.mesh_ca_cert().display().to_string();
    let (api_ca, db_ca) = (format!("partner-api={partner_ca}"), format!("partner-db={partner_ca}"));
    let complete = ["istio", p, "--identity", &app1, "--identity", &app2, "--ca", &api_ca, "--ca", &db_ca];

    // Complete: written to stdout.
    let (code, stdout, stderr) = secrets(&complete);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("kind: Secret\n").count(), 2, "{stdout}");

    // A missing identity and CA: named, with every destination that reads them; nothing on stdout.
    let (code, stdout, stderr) = secrets(&["istio", p, "--identity", &app1, "--ca", &api_ca]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("--identity team.app2=CERT,KEY (used by partner-api, partner-db)"), "{stderr}");
    assert!(stderr.contains("--ca partner-db=PEM"), "{stderr}");

    // Given but never read (a typo would leave the real one missing): refused.
    let typo = files("team.app2").replace("team.app2=", "team.appp2=");
    let (code, _, stderr) =
        secrets(&[&complete[..], &["--identity", &typo, "--ca", &format!("partner-x={partner_ca}")]].concat());
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--identity team.appp2: no destination of the policy originates TLS as it"), "{stderr}");
    assert!(stderr.contains("--ca partner-x: not a destination of the policy"), "{stderr}");

    // Istio reads one Secret per identity, CA included: two destinations with different CAs cannot share it.
    let other_db = format!("partner-db={mesh_ca}");
    let (code, _, stderr) =
        secrets(&["istio", p, "--identity", &app1, "--identity", &app2, "--ca", &api_ca, "--ca", &other_db]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("destinations partner-api and partner-db have different CAs"), "{stderr}");
    // Kuma keeps one CA Secret per destination: the same files are fine there.
    let (code, stdout, stderr) =
        secrets(&["kuma", p, "--identity", &app1, "--identity", &app2, "--ca", &api_ca, "--ca", &other_db]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("type: system.kuma.io/secret\n").count(), 6, "{stdout}");

    // A key where a certificate belongs: refused.
    let swapped = format!(
        "team.app2={},{}",
        pki.external_identity("team.app2").key.display(),
        pki.external_identity("team.app2").key.display()
    );
    let (code, _, stderr) =
        secrets(&["istio", p, "--identity", &app1, "--identity", &swapped, "--ca", &api_ca, "--ca", &db_ca]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no PEM certificate"), "{stderr}");

    // --out: private keys inside, so the file is the owner's only.
    let out = dir.join("secrets.yaml");
    let (code, _, stderr) = secrets(&[&complete[..], &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), secrets(&complete).1);
}

/// A waypoint carries no tcp/tls destination: the Secrets only its destinations would read are neither
/// required nor accepted there, while the gateway layout needs them.
#[test]
fn secrets_follow_what_the_platform_carries() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-secrets-carried");
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::generate(dir.join("pki")).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{ "localTrustDomain": "cluster.local",
          "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] },
                          { "name": "team.app2", "principals": ["cluster.local/ns/team/sa/app1"] } ],
          "destinations": [
            { "name": "api", "host": "api.partner.example", "port": 443, "identities": ["team.app1"] },
            { "name": "db", "protocol": "tcp", "host": "db.partner.example", "port": 5432, "identities": ["team.app2"] } ] }"#,
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let files = |name: &str| {
        let f = pki.external_identity(name);
        format!("{name}={},{}", f.cert.display(), f.key.display())
    };
    let ca = |d: &str| format!("{d}={}", pki.partner_ca_cert().display());
    let (app1, api_ca) = (files("team.app1"), ca("api"));
    // Both Istio layouts carry the tcp destination (the waypoint on its own chain): both read team.app2 and
    // db's CA.
    for mode in ["gateway", "waypoint"] {
        let (code, _, stderr) = secrets(&["istio", p, "--mode", mode, "--identity", &app1, "--ca", &api_ca]);
        assert_eq!(code, Some(1), "{mode}");
        assert!(stderr.contains("--identity team.app2=CERT,KEY (used by db)"), "{mode}: {stderr}");
        let with_db = ["--identity", &files("team.app2"), "--ca", &ca("db")];
        let all = [&["istio", p, "--mode", mode, "--identity", &app1, "--ca", &api_ca][..], &with_db].concat();
        let (code, stdout, stderr) = secrets(&all);
        assert_eq!(code, Some(0), "{mode}: {stderr}");
        assert_eq!(stdout.matches("kind: Secret\n").count(), 2, "{mode}: {stdout}");
    }
}
