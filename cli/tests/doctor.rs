//! `egress-identity doctor` against the real gateway: the demo gateway runs its policy (exit 0); a swapped
//! identity certificate and a moved L4 listener port are each reported as what they are (exit 1), naming
//! the cluster, the certificate it presents and the destination that cannot be reached.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use egress_identity_harness::repo_root;
use egress_identity_harness::sds::write_tls_certificate;
use egress_identity_harness::topology::{Options, Topology, ADMIN_PORT, GATEWAY_L4_PORT};

/// The topologies share fixed ports: one at a time.
static LOCK: Mutex<()> = Mutex::new(());

fn doctor(policy: &Path) -> (Option<i32>, String) {
    let admin = format!("http://127.0.0.1:{ADMIN_PORT}");
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity"))
        .args(["doctor", &admin, policy.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

fn policy() -> PathBuf {
    repo_root().join("envoy/policy.json")
}

fn drifts(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("drift:")).collect()
}

#[test]
fn doctor_reports_a_swapped_identity_certificate() {
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::start(&Options::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-swap"))).unwrap();
    let (code, report) = doctor(&policy());
    eprintln!("{report}");
    assert_eq!(code, Some(0), "the demo gateway runs its policy:\n{report}");
    assert!(report.contains("presents CN=team.app1"), "{report}");
    assert!(report.contains("listener egress-l4 takes port 10444"), "{report}");

    // team.app1's secret now holds team.app2's certificate: the partner would see team.app2 on app1's calls.
    write_tls_certificate(&t.sds_dir(), "external-team.app1", &t.pki().external_identity("team.app2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, report) = loop {
        let (code, report) = doctor(&policy());
        if code != Some(0) || Instant::now() > deadline {
            break (code, report);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("{report}");
    assert_eq!(code, Some(1), "{report}");
    let d = drifts(&report);
    // Both clusters that present team.app1 (its HTTP and its tcp destination) read that secret.
    for cluster in ["partner-api|team-app1", "partner-tcp|team-app1"] {
        assert!(
            d.iter().any(|l| l.contains(&format!("cluster {cluster:?}: its certificate does not carry"))
                && l.contains("the subject has CN=team.app2, not the declared CN=team.app1")),
            "{cluster}: {report}"
        );
    }
    assert_eq!(d.len(), 2, "nothing else drifted:\n{report}");
}

#[test]
fn doctor_reports_an_l4_listener_moved_off_the_destination_port() {
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let run = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-moved");
    std::fs::create_dir_all(&run).unwrap();
    // The gateway's L4 listener moved from 10444 to 10445, its plugin configuration unchanged: connections to
    // partner-tcp and partner-tls (port 10444) reach nothing.
    let original = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    let moved_from = format!("port_value: {GATEWAY_L4_PORT}\n");
    assert_eq!(original.matches(&moved_from).count(), 1, "one listener address on the L4 port");
    let moved = original.replace(&moved_from, "port_value: 10445\n");
    let config = run.join("gateway-moved.yaml");
    std::fs::write(&config, moved).unwrap();
    let mut opts = Options::new(run.join("run"));
    opts.gateway_config = config;
    let _t = Topology::start(&opts).unwrap();
    let (code, report) = doctor(&policy());
    assert_eq!(code, Some(1), "{report}");
    let d = drifts(&report);
    for destination in
        ["partner-tcp (tcp, api.partner.example on port 10444)", "partner-tls (tls, tls.partner.example on port 10444)"]
    {
        assert!(
            d.iter().any(|l| l.contains(destination) && l.contains("no listener of the gateway takes port 10444")),
            "{destination}: {report}"
        );
    }
    assert_eq!(d.len(), 2, "the plugin configuration is still the policy, the rest in place:\n{report}");
}
