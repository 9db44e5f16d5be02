//! `make bench-attack`: the gateway under attack (BENCHMARKS.md, "Under attack").
//!
//! Allowed callers (team/app1: curl workers, keep-alive) run twice against the demo gateway: alone, then
//! while hostile callers hold connections and flood it --
//! * idle L4 connections: an allowed caller's mesh handshake to the tcp destination, then silence (the
//!   filter closes each at `connectionDecisionTimeoutMs`; each is reopened at once);
//! * stalled TLS handshakes: half a ClientHello to the HTTP and L4 listeners, then silence (reopened when the
//!   gateway closes them);
//! * a flood of denied requests (quarantine/default: curl workers, keep-alive, each answered 403).
//!
//! Reported side by side: the allowed callers' requests, success rate and latency (p50, p99, max), the denied
//! flood's rate, and the gateway's memory (RSS sampled every 250 ms). Attackers and callers share the
//! machine's cores with the gateway. Uses the test topology's ports: not while `make test` runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use egress_identity_harness::l4::{held, real_client_hello};
use egress_identity_harness::load::{Caller, LoadGenerator, LoadReport, LoadSpec};
use egress_identity_harness::pki::{EXTERNAL_HOST, GATEWAY_HOST};
use egress_identity_harness::topology::{Options, Topology, GATEWAY_L4_PORT, GATEWAY_PORT};

struct Args {
    duration: Duration,
    idle: usize,
    stalled: usize,
    flood_workers: usize,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(30),
        idle: 300,
        stalled: 200,
        flood_workers: 2,
        out: PathBuf::from("target/bench-attack"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let n = || value.parse::<u64>().unwrap_or_else(|_| fail(&format!("{flag}: not a number: {value}")));
        match flag.as_str() {
            "--duration" => a.duration = Duration::from_secs(n()),
            "--idle" => a.idle = n() as usize,
            "--stalled" => a.stalled = n() as usize,
            "--flood-workers" => a.flood_workers = n() as usize,
            "--out" => a.out = PathBuf::from(&value),
            _ => fail(&format!("unknown flag {flag} (--duration S --idle N --stalled N --flood-workers N --out DIR)")),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("under_attack: {msg}");
    std::process::exit(2)
}

/// The gateway's resident memory, MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Samples the gateway's RSS until `stop`; the largest sample.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<f64> {
    thread::spawn(move || {
        let mut max: f64 = 0.0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(rss_mib(pid));
            thread::sleep(Duration::from_millis(250));
        }
        max
    })
}

struct Phase {
    name: &'static str,
    allowed: LoadReport,
    denied: Option<LoadReport>,
    rss_before: f64,
    rss_max: f64,
    attack_connections: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn run(t: &Topology, a: &Args, attack: bool) -> Phase {
    let pid = t.gateway_pid().unwrap_or_else(|| fail("no gateway pid"));
    let mesh_ca = t.pki().mesh_ca_cert();
    let rss_before = rss_mib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, Arc::clone(&stop));
    let opened = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + a.duration;
    let mut attackers = Vec::new();
    let mut flood = None;
    if attack {
        let app1 = t.pki().workload("team-app1");
        for _ in 0..a.idle {
            let (client, who, stop, opened) = (t.l4_client(), app1.clone(), Arc::clone(&stop), Arc::clone(&opened));
            attackers.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if client.held_open(&who, EXTERNAL_HOST, b"", left).is_err() {
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }));
        }
        let hello = real_client_hello(GATEWAY_HOST).unwrap_or_else(|e| fail(&e.to_string()));
        let half = hello.get(..hello.len() / 2).unwrap_or_default().to_vec();
        for i in 0..a.stalled {
            let (half, stop, opened) = (half.clone(), Arc::clone(&stop), Arc::clone(&opened));
            let port = if i % 2 == 0 { GATEWAY_PORT } else { GATEWAY_L4_PORT };
            attackers.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if held(port, &half, left).is_err() {
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }));
        }
        let spec = LoadSpec {
            workers: a.flood_workers,
            requests_per_connection: 50,
            max_duration: a.duration,
            path_prefix: "/attack/denied".into(),
            ..LoadSpec::default()
        };
        let quarantine = Caller::new("quarantine", t.pki().workload("quarantine-default"), mesh_ca.clone());
        flood = Some(LoadGenerator::start(spec, quarantine).unwrap_or_else(|e| fail(&e.to_string())));
        // Let the attack settle before the allowed callers start.
        thread::sleep(Duration::from_secs(2));
    }
    let spec = LoadSpec {
        workers: 2,
        requests_per_connection: 50,
        max_duration: deadline.saturating_duration_since(Instant::now()),
        path_prefix: "/attack/allowed".into(),
        ..LoadSpec::default()
    };
    let app1 = Caller::new("app1", t.pki().workload("team-app1"), mesh_ca);
    let allowed = LoadGenerator::start(spec, app1).unwrap_or_else(|e| fail(&e.to_string()));
    while allowed.running() {
        thread::sleep(Duration::from_millis(200));
    }
    let allowed = allowed.stop();
    let denied = flood.map(LoadGenerator::stop);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    let rss_max = rss.join().unwrap_or(0.0);
    Phase {
        name: if attack { "under attack" } else { "quiet" },
        allowed,
        denied,
        rss_before,
        rss_max,
        attack_connections: opened.load(Ordering::Relaxed),
    }
}

fn row(p: &Phase) -> String {
    let r = &p.allowed;
    let ok = r.count(|x| x.ok());
    let mut latencies: Vec<Duration> = r.records.iter().filter(|x| x.ok()).map(|x| x.latency).collect();
    latencies.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let denied = p.denied.as_ref().map_or("-".to_string(), |d| {
        let refused = d.count(|x| x.status == 403);
        format!(
            "{:.0}/s ({} of {} answered 403)",
            d.total() as f64 / d.duration.as_secs_f64().max(0.001),
            refused,
            d.total()
        )
    });
    format!(
        "| {} | {} | {:.3} % | {:.0}/s | {} | {} | {} | {} | {} | {:.0} → {:.0} |",
        p.name,
        r.total(),
        100.0 * ok as f64 / (r.total().max(1)) as f64,
        r.total() as f64 / r.duration.as_secs_f64().max(0.001),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        denied,
        p.attack_connections,
        p.rss_before,
        p.rss_max,
    )
}

fn main() {
    let a = args();
    let opts = Options::new(a.out.join("run"));
    let t = Topology::start(&opts).unwrap_or_else(|e| fail(&format!("starting the gateway: {e}")));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    eprintln!("under_attack: quiet run ({:?})", a.duration);
    let quiet = run(&t, &a, false);
    eprintln!(
        "under_attack: under attack ({:?}, {} idle L4, {} stalled handshakes, {} flood workers)",
        a.duration, a.idle, a.stalled, a.flood_workers
    );
    let attacked = run(&t, &a, true);
    let mut out = format!(
        "CPU: {cpu}, {} cores; {:?} per run; attack: {} idle L4 connections, {} stalled handshakes, {} denied-flood workers\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.duration,
        a.idle,
        a.stalled,
        a.flood_workers
    );
    out.push_str("| run | allowed requests | succeeded | rate | p50 ms | p99 ms | max ms | denied flood | attack connections opened | gateway RSS MiB (start → max) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---|\n");
    out.push_str(&row(&quiet));
    out.push('\n');
    out.push_str(&row(&attacked));
    out.push('\n');
    for p in [&quiet, &attacked] {
        for f in p.allowed.failures().iter().take(3) {
            out.push_str(&format!("\n{} failure: {}", p.name, f.describe()));
        }
    }
    println!("{out}");
    let _ = std::fs::create_dir_all(&a.out);
    let _ = std::fs::write(a.out.join("summary.md"), &out);
}
