//! `dashboard OUT.png [SECONDS]`: the picture of the Grafana dashboard in the README. Starts the local
//! gateway and partner, a real Prometheus scraping the gateway's metrics listener, sends a mix of allowed and
//! denied requests and connections for SECONDS (default 90), then draws the dashboard's panels from that
//! Prometheus with `monitoring/preview.py` (matplotlib, in `.venv/`). `make dashboard-preview`.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use egress_identity_harness::client::Call;
use egress_identity_harness::pki::EXTERNAL_HOST;
use egress_identity_harness::prometheus::{Server, PROMETHEUS_PORT};
use egress_identity_harness::repo_root;
use egress_identity_harness::topology::{Options, Topology, METRICS_PORT};

fn run(out: &str, seconds: u64) -> Result<(), egress_identity_harness::Error> {
    let root = repo_root();
    let run_dir = root.join("target/dashboard");
    let topo = Topology::start(&Options::new(&run_dir))?;
    let _prometheus = Server::start(&run_dir, METRICS_PORT, &[root.join("monitoring/alerts.yaml")])?;
    let client = topo.client();
    let l4 = topo.l4_client();
    let pki = topo.pki();
    let started = Instant::now();
    let mut round = 0u64;
    eprintln!("dashboard: {seconds} s of traffic ...");
    while started.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        // Mostly allowed traffic of two identities, a steady trickle of denials of several kinds.
        for (who, host, path) in [
            ("team-app1", EXTERNAL_HOST, "/v1/orders"),
            ("team-app1", EXTERNAL_HOST, "/v1/orders"),
            ("team-app2", EXTERNAL_HOST, "/v1/invoices"),
        ] {
            client.send(&Call::get(&pki.workload(who), path).host(host))?;
        }
        if round.is_multiple_of(2) {
            client.send(&Call::get(&pki.workload("sandbox-default"), "/v1/reports"))?;
        }
        if round.is_multiple_of(3) {
            client.send(&Call::get(&pki.workload("team-app1"), "/admin/users"))?;
            l4.call(&pki.workload("team-app1"), EXTERNAL_HOST, b"hello\n")?;
        }
        if round.is_multiple_of(5) {
            client.send(&Call::get(&pki.workload("quarantine-default"), "/v1/orders"))?;
            client.send(&Call::get(&pki.workload("team-app1"), "/v1").host("unknown.partner.example"))?;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // The last counts reach Envoy within a second, Prometheus within another.
    std::thread::sleep(Duration::from_secs(3));
    let python = root.join(".venv/bin/python");
    let status = Command::new(python)
        .arg(root.join("monitoring/preview.py"))
        .arg(format!("http://127.0.0.1:{PROMETHEUS_PORT}"))
        .arg(out)
        .arg(seconds.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("monitoring/preview.py failed: {status}").into())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: dashboard OUT.png [SECONDS]");
        return ExitCode::FAILURE;
    };
    let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(90);
    match run(out, seconds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dashboard: {e}");
            ExitCode::FAILURE
        }
    }
}
