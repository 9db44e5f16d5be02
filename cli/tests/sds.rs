//! `egress-identity sds` on the real gateway: the resources it writes from plain PEM files are what a running
//! `render envoy` gateway reads (a re-issued client certificate reaches the partner without a restart), and
//! with `--policy` a missing secret is named, not silently left out.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use egress_identity_harness::client::Call;
use egress_identity_harness::pki::{certificate_serial, normalize_serial};
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Options, Topology};

fn sds(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity")).arg("sds").args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_gateway_reads_what_sds_writes_and_sds_names_what_is_missing() {
    let t = Topology::start(&Options::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-sds"))).unwrap();
    let pki = t.pki();
    let policy = repo_root().join("envoy/policy.json");
    let fresh = pki.reissue_external_identity("team.app1", "team.app1.sds").unwrap();
    let app2 = pki.external_identity("team.app2");
    let gateway = pki.gateway_cert();
    let out = t.sds_dir();
    let (p, o) = (policy.to_str().unwrap(), out.to_str().unwrap());
    let id1 = format!("team.app1={},{}", fresh.cert.display(), fresh.key.display());
    let id2 = format!("team.app2={},{}", app2.cert.display(), app2.key.display());
    let partner_ca = pki.partner_ca_cert();
    let ca = |dest: &str| format!("{dest}={}", partner_ca.display());
    let (mesh_ca, gw_cert, gw_key) = (pki.mesh_ca_cert(), gateway.cert.clone(), gateway.key.clone());
    let mut args = vec!["--out", o, "--policy", p];
    let owned = [
        ("--gateway-cert", gw_cert.display().to_string()),
        ("--gateway-key", gw_key.display().to_string()),
        ("--mesh-ca", mesh_ca.display().to_string()),
        ("--identity", id1.clone()),
        ("--ca", ca("partner-api")),
        ("--ca-secret", "partner-api=partner-ca".to_string()),
        ("--ca-secret", "partner-tcp=partner-ca".to_string()),
    ];
    for (flag, value) in &owned {
        args.extend([*flag, value.as_str()]);
    }

    // team.app2's client certificate is missing: refused, naming it, and nothing written.
    let before = std::fs::read_to_string(out.join("external-team.app1.yaml")).unwrap();
    let (code, stderr) = sds(&args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("external-team.app2 (the client certificate of identity team.app2)"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("external-team.app1.yaml")).unwrap(), before);
    // A key where a certificate belongs: refused.
    let (code, stderr) = sds(&["--out", o, "--mesh-ca", fresh.key.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no PEM certificate"), "{stderr}");

    // Complete: written, and the running gateway presents the re-issued certificate to the partner.
    args.extend(["--identity", id2.as_str()]);
    let (code, stderr) = sds(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let want = normalize_serial(&certificate_serial(&fresh.cert).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = t.client().send(&Call::get(&pki.workload("team-app1"), "/sds")).unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        if r.field("client_serial").map(normalize_serial) == Some(want.clone()) {
            assert_eq!(r.field("client_subject"), Some("CN=team.app1"));
            break;
        }
        // Pooled connections keep the old certificate until max_connection_duration (10 s here).
        assert!(Instant::now() < deadline, "the gateway still presents {:?}, not {want}", r.field("client_serial"));
        std::thread::sleep(Duration::from_millis(500));
    }
}
