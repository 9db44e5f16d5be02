//! A bounded load generator for the gateway: proves that a change (certificate rotation, CA rotation,
//! trust-domain migration) happens without a single failed request.
//!
//! `W` worker threads each run, again and again, ONE `curl` process that sends `K` requests over one
//! kept-alive connection (`K` URLs in one invocation; a `-w` marker after every transfer splits the output
//! into per-request status and body). Each curl invocation presents the caller identity that is current
//! when it starts ([`LoadGenerator::switch_caller`] changes it for every later invocation). The load stops
//! at [`LoadSpec::max_duration`], at [`LoadSpec::max_requests`], or when [`LoadGenerator::stop`] is called;
//! a running curl always finishes its batch (bounded by `--max-time`).
//!
//! Every request becomes a [`Record`]: HTTP status (0 = no HTTP response), whether it opened a new
//! connection, and what the partner reported in its JSON body: the client certificate subject, serial
//! and issuer it saw.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pki::{normalize_serial, CertFiles, EXTERNAL_HOST, GATEWAY_HOST};
use crate::topology::GATEWAY_PORT;
use crate::{err, Result};

/// The identity a worker presents to the gateway, and the CA bundle it verifies the gateway with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// A name for reports and counts (e.g. `example.com` or `old-ca`).
    pub label: String,
    /// Client certificate and key.
    pub cert: CertFiles,
    /// CA certificates (PEM bundle) trusted for the gateway's server certificate.
    pub ca: PathBuf,
}

impl Caller {
    /// A caller named `label`.
    pub fn new(label: &str, cert: CertFiles, ca: PathBuf) -> Caller {
        Caller { label: label.into(), cert, ca }
    }
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Worker threads (`W`), each with one curl process at a time.
    pub workers: usize,
    /// Requests per curl process, i.e. per connection (`K`).
    pub requests_per_connection: usize,
    /// Hard bound on the load's duration (no new curl starts after it).
    pub max_duration: Duration,
    /// Hard bound on the number of requests.
    pub max_requests: usize,
    /// `Host` header (the external destination).
    pub host: String,
    /// Request paths are `<path_prefix>/<worker>/<batch>/<index>`.
    pub path_prefix: String,
    /// curl's `--max-time` for each transfer.
    pub transfer_timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            workers: 4,
            requests_per_connection: 20,
            max_duration: Duration::from_secs(40),
            max_requests: 200_000,
            host: EXTERNAL_HOST.into(),
            path_prefix: "/load".into(),
            transfer_timeout: Duration::from_secs(10),
        }
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Worker thread.
    pub worker: usize,
    /// Curl invocation of that worker (0, 1, ...).
    pub batch: u64,
    /// Position in the batch (0 = the request that opened the connection).
    pub index: usize,
    /// Caller generation ([`LoadGenerator::switch_caller`]) the batch used.
    pub generation: u64,
    /// [`Caller::label`] of the batch's caller.
    pub caller: String,
    /// When the batch's curl started, since the load started.
    pub batch_started: Duration,
    /// When the batch's curl ended, since the load started.
    pub batch_finished: Duration,
    /// HTTP status; 0 when there was no HTTP response.
    pub status: u16,
    /// The transfer opened a new connection (`%{num_connects}` > 0).
    pub new_connection: bool,
    /// How long the transfer took, as curl measured it (`%{time_total}`: connection, if it opened one,
    /// request and response).
    pub latency: Duration,
    /// `client_subject` of the partner's JSON answer (e.g. `CN=team.app1`).
    pub client_subject: Option<String>,
    /// `client_serial` of the partner's JSON answer, normalized ([`normalize_serial`]).
    pub client_serial: Option<String>,
    /// `client_issuer` of the partner's JSON answer.
    pub client_issuer: Option<String>,
    /// curl's error for this transfer, or a body that is not the partner's JSON.
    pub error: Option<String>,
}

impl Record {
    /// A 200 from the partner.
    pub fn ok(&self) -> bool {
        self.status == 200
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "worker {} batch {} #{} caller {} (gen {}) t={:?}..{:?}: status {} subject {:?} serial {:?}{}",
            self.worker,
            self.batch,
            self.index,
            self.caller,
            self.generation,
            self.batch_started,
            self.batch_finished,
            self.status,
            self.client_subject,
            self.client_serial,
            self.error.as_deref().map(|e| format!(" error {e}")).unwrap_or_default()
        )
    }
}

struct Shared {
    spec: LoadSpec,
    caller: Mutex<(u64, Caller)>,
    stop: AtomicBool,
    issued: AtomicUsize,
    records: Mutex<Vec<Record>>,
    /// Per worker: generation of its current batch (u64::MAX before its first batch).
    worker_generation: Vec<AtomicU64>,
    running: AtomicUsize,
    start: Instant,
    /// Per worker: its running curl, so that a test that panics does not wait for whole batches.
    children: Vec<Mutex<Option<Child>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running load; stop it with [`LoadGenerator::stop`] (dropping it also stops and joins the workers).
pub struct LoadGenerator {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LoadGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadGenerator")
            .field("spec", &self.shared.spec)
            .field("recorded", &self.recorded())
            .finish_non_exhaustive()
    }
}

const MARK: &str = "\n@@egress-identity-load@@ ";

impl LoadGenerator {
    /// Start `spec.workers` workers calling the gateway (127.0.0.1:10443) as `caller`.
    pub fn start(spec: LoadSpec, caller: Caller) -> Result<LoadGenerator> {
        if spec.workers == 0 || spec.requests_per_connection == 0 {
            return Err(err("load: workers and requests_per_connection must be > 0"));
        }
        let shared = Arc::new(Shared {
            children: (0..spec.workers).map(|_| Mutex::new(None)).collect(),
            worker_generation: (0..spec.workers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            spec,
            caller: Mutex::new((0, caller)),
            stop: AtomicBool::new(false),
            issued: AtomicUsize::new(0),
            records: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            start: Instant::now(),
        });
        let mut handles = Vec::new();
        for worker in 0..shared.spec.workers {
            let s = Arc::clone(&shared);
            s.running.fetch_add(1, Ordering::SeqCst);
            let h = std::thread::Builder::new().name(format!("load-{worker}")).spawn(move || {
                run_worker(&s, worker);
                s.running.fetch_sub(1, Ordering::SeqCst);
            })?;
            handles.push(h);
        }
        Ok(LoadGenerator { shared, handles })
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Every later curl invocation presents `caller`. Returns the new caller generation.
    pub fn switch_caller(&self, caller: Caller) -> u64 {
        let mut c = lock(&self.shared.caller);
        c.0 += 1;
        c.1 = caller;
        c.0
    }

    /// The current caller generation.
    pub fn generation(&self) -> u64 {
        lock(&self.shared.caller).0
    }

    /// Whether every worker is still running.
    pub fn running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst) == self.shared.spec.workers
    }

    /// Wait until every worker runs a batch of caller generation `generation` or later, i.e. no request
    /// with an earlier caller is in flight or will be sent.
    pub fn wait_workers_on(&self, generation: u64, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, &format!("every worker on caller generation {generation}"), || {
            self.shared
                .worker_generation
                .iter()
                .all(|g| matches!(g.load(Ordering::SeqCst), x if x != u64::MAX && x >= generation))
        })
    }

    /// Wait until `pred` holds for the records so far.
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Record]) -> bool) -> Result<()> {
        self.wait_until(timeout, what, || pred(&lock(&self.shared.records)))
    }

    /// Wait until at least `n` requests have been recorded in total.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("{n} requests"), |r| r.len() >= n)
    }

    /// Wait until at least `n` more requests than now have been recorded.
    pub fn wait_more_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.recorded() + n;
        self.wait_requests(target, timeout)
    }

    fn wait_until(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if f() {
                return Ok(());
            }
            if !self.running() {
                return Err(err(format!(
                    "load: waiting for {what}: the load ended ({} requests recorded)",
                    self.recorded()
                )));
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "load: waiting for {what}: not after {timeout:?} ({} requests recorded)",
                    self.recorded()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests recorded so far.
    pub fn recorded(&self) -> usize {
        lock(&self.shared.records).len()
    }

    /// A copy of the records so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.records).clone()
    }

    /// Stop: no new curl starts, running ones finish their batch; returns everything recorded.
    pub fn stop(mut self) -> LoadReport {
        self.stop_and_join();
        LoadReport {
            records: std::mem::take(&mut *lock(&self.shared.records)),
            duration: self.elapsed(),
            spec: self.shared.spec.clone(),
        }
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for LoadGenerator {
    /// Stops the workers. When the thread is panicking (a failed assertion), running curl processes are
    /// killed instead of being waited for.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.stop.store(true, Ordering::SeqCst);
            for slot in &self.shared.children {
                if let Some(child) = lock(slot).as_mut() {
                    let _ = child.kill();
                }
            }
        }
        self.stop_and_join();
    }
}

fn run_worker(s: &Shared, worker: usize) {
    let k = s.spec.requests_per_connection;
    let mut batch = 0u64;
    loop {
        if s.stop.load(Ordering::SeqCst) || s.start.elapsed() >= s.spec.max_duration {
            return;
        }
        let before = s.issued.fetch_add(k, Ordering::SeqCst);
        if before >= s.spec.max_requests {
            return;
        }
        let n = k.min(s.spec.max_requests - before);
        let (generation, caller) = lock(&s.caller).clone();
        if let Some(g) = s.worker_generation.get(worker) {
            g.store(generation, Ordering::SeqCst);
        }
        let started = s.start.elapsed();
        let results = run_batch(s, worker, batch, n, &caller);
        let finished = s.start.elapsed();
        let records = results.into_iter().enumerate().map(|(index, t)| Record {
            worker,
            batch,
            index,
            generation,
            caller: caller.label.clone(),
            batch_started: started,
            batch_finished: finished,
            status: t.status,
            new_connection: t.new_connection,
            latency: t.latency,
            client_subject: t.field("client_subject"),
            client_serial: t.field("client_serial").map(|v| normalize_serial(&v)),
            client_issuer: t.field("client_issuer"),
            error: t.error(),
        });
        lock(&s.records).extend(records);
        batch += 1;
    }
}

/// The outcome of one transfer of a curl invocation.
#[derive(Debug, Clone, Default)]
struct Transfer {
    status: u16,
    new_connection: bool,
    latency: Duration,
    curl_error: Option<String>,
    body: String,
}

impl Transfer {
    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    fn field(&self, name: &str) -> Option<String> {
        self.json()?.get(name)?.as_str().map(str::to_string)
    }

    fn error(&self) -> Option<String> {
        if let Some(e) = &self.curl_error {
            return Some(e.clone());
        }
        if self.status == 200 && self.json().is_none() {
            return Some(format!("body is not JSON: {:?}", self.body));
        }
        if self.status != 200 {
            return Some(format!("HTTP {}: {}", self.status, self.body.trim()));
        }
        None
    }
}

fn run_batch(s: &Shared, worker: usize, batch: u64, n: usize, caller: &Caller) -> Vec<Transfer> {
    let curl = std::env::var_os("CURL_BIN").unwrap_or_else(|| "curl".into());
    let mut cmd = Command::new(&curl);
    cmd.args(["-sS", "--http1.1", "--max-time"])
        .arg(s.spec.transfer_timeout.as_secs().max(1).to_string())
        .arg("--cacert")
        .arg(&caller.ca)
        .arg("--resolve")
        .arg(format!("{GATEWAY_HOST}:{GATEWAY_PORT}:127.0.0.1"))
        .arg("--cert")
        .arg(&caller.cert.cert)
        .arg("--key")
        .arg(&caller.cert.key)
        .arg("-H")
        .arg(format!("Host: {}", s.spec.host))
        .arg("-w")
        .arg(format!("{MARK}%{{http_code}} %{{num_connects}} %{{time_total}} %{{exitcode}} %{{errormsg}}\n"));
    for i in 0..n {
        cmd.arg(format!("https://{GATEWAY_HOST}:{GATEWAY_PORT}{}/{worker}/{batch}/{i}", s.spec.path_prefix));
    }
    match run_curl(s, worker, &mut cmd) {
        Ok((stdout, stderr, code)) => {
            parse_transfers(&stdout, n, &format!("curl exited with {code:?}: {}", stderr.trim()))
        }
        Err(e) => vec![Transfer { curl_error: Some(format!("running {curl:?}: {e}")), ..Transfer::default() }; n],
    }
}

/// Run curl, registered in the worker's slot while it runs; returns stdout, stderr and the exit code.
fn run_curl(s: &Shared, worker: usize, cmd: &mut Command) -> std::io::Result<(String, String, Option<i32>)> {
    let slot = s.children.get(worker).ok_or_else(|| std::io::Error::other("no such worker"))?;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    *lock(slot) = Some(child);
    // Until EOF, i.e. until curl exits (or is killed). Its error output is a line per failed transfer at
    // most, far below a pipe's capacity, so it is read afterwards.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let read = (|| {
        if let Some(o) = out.as_mut() {
            o.read_to_end(&mut stdout)?;
        }
        if let Some(e) = err.as_mut() {
            e.read_to_end(&mut stderr)?;
        }
        Ok::<(), std::io::Error>(())
    })();
    let child = lock(slot).take();
    let status = match child {
        Some(mut child) => {
            if read.is_err() {
                let _ = child.kill();
            }
            child.wait()?.code()
        }
        None => None,
    };
    read?;
    Ok((String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned(), status))
}

/// Split curl's output for `n` transfers. Transfers without a marker (curl died) are failures carrying
/// `missing`.
fn parse_transfers(stdout: &str, n: usize, missing: &str) -> Vec<Transfer> {
    let mut parts = stdout.split(MARK);
    let mut body = parts.next().unwrap_or_default().to_string();
    let mut out = Vec::with_capacity(n);
    for part in parts {
        let (line, rest) = part.split_once('\n').unwrap_or((part, ""));
        let mut fields = line.splitn(5, ' ');
        let status = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let connects: u32 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let seconds: f64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let exit: i32 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(-1);
        let msg = fields.next().unwrap_or_default().trim();
        out.push(Transfer {
            status,
            new_connection: connects > 0,
            latency: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
            curl_error: (exit != 0).then(|| format!("curl exit {exit}: {msg}")),
            body: std::mem::take(&mut body),
        });
        body = rest.to_string();
    }
    out.truncate(n);
    while out.len() < n {
        out.push(Transfer {
            curl_error: Some(format!("no result for this transfer; {missing}")),
            ..Transfer::default()
        });
    }
    out
}

/// Everything a load recorded.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Every request, in the order batches finished.
    pub records: Vec<Record>,
    /// How long the load ran.
    pub duration: Duration,
    /// The load's parameters.
    pub spec: LoadSpec,
}

impl LoadReport {
    /// Requests sent.
    pub fn total(&self) -> usize {
        self.records.len()
    }

    /// Requests that did not get a 200 from the partner.
    pub fn failures(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| !r.ok()).collect()
    }

    /// Requests matching `pred`.
    pub fn count(&self, pred: impl Fn(&Record) -> bool) -> usize {
        self.records.iter().filter(|r| pred(r)).count()
    }

    /// Connections opened (transfers that connected).
    pub fn connections(&self) -> usize {
        self.count(|r| r.new_connection)
    }

    /// `(caller label, requests)` in order of first appearance.
    pub fn by_caller(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for r in &self.records {
            match out.iter_mut().find(|(l, _)| *l == r.caller) {
                Some((_, n)) => *n += 1,
                None => out.push((r.caller.clone(), 1)),
            }
        }
        out
    }

    /// `(partner-seen serial, requests)` in order of first appearance (None: no serial reported).
    pub fn by_serial(&self) -> Vec<(Option<String>, usize)> {
        let mut out: Vec<(Option<String>, usize)> = Vec::new();
        for r in &self.records {
            match out.iter_mut().find(|(s, _)| *s == r.client_serial) {
                Some((_, n)) => *n += 1,
                None => out.push((r.client_serial.clone(), 1)),
            }
        }
        out
    }

    /// One paragraph for test output.
    pub fn summary(&self) -> String {
        let failures = self.failures();
        let mut s = format!(
            "{} requests in {:.1?} ({:.0}/s) over {} connections by {} workers x {} per connection; {} failed; by caller {:?}; by partner-seen serial {:?}",
            self.total(),
            self.duration,
            self.total() as f64 / self.duration.as_secs_f64().max(0.001),
            self.connections(),
            self.spec.workers,
            self.spec.requests_per_connection,
            failures.len(),
            self.by_caller(),
            self.by_serial(),
        );
        for f in failures.iter().take(10) {
            s.push_str("\n  failed: ");
            s.push_str(&f.describe());
        }
        s
    }

    /// `Ok` when there were at least `min_requests` requests and every one got a 200 from the partner.
    pub fn check_no_failures(&self, min_requests: usize) -> std::result::Result<(), String> {
        if self.total() < min_requests {
            return Err(format!("only {} requests (wanted at least {min_requests}): {}", self.total(), self.summary()));
        }
        if !self.failures().is_empty() {
            return Err(format!("failed requests: {}", self.summary()));
        }
        Ok(())
    }

    /// [`Self::check_no_failures`], every answer saw the client certificate `subject`, and keep-alive did
    /// happen (at least 5 requests per connection).
    pub fn check_all_as(&self, subject: &str, min_requests: usize) -> std::result::Result<(), String> {
        eprintln!("load: {}", self.summary());
        self.check_no_failures(min_requests)?;
        let wrong: Vec<&Record> =
            self.records.iter().filter(|r| r.client_subject.as_deref() != Some(subject)).collect();
        if let Some(first) = wrong.first() {
            return Err(format!("{} responses did not see {subject}, e.g. {}", wrong.len(), first.describe()));
        }
        if self.connections() * 5 > self.total() {
            return Err(format!("{} connections for {} requests", self.connections(), self.total()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_transfers_and_flags_missing_ones() {
        let out = format!(
            "{{\"client_subject\":\"CN=a\",\"client_serial\":\"0A1B\"}}\n{MARK}200 1 0.012345 0 \n{{\"x\":1}}\n{MARK}403 0 0.001 0 \n{MARK}000 1 0.5 35 SSL connect error\n"
        );
        let t = parse_transfers(&out, 4, "curl died");
        assert_eq!(t.len(), 4);
        let first = t.first().map(|t| (t.status, t.new_connection, t.field("client_serial")));
        assert_eq!(first, Some((200, true, Some("0A1B".into()))));
        assert_eq!(t.first().map(|t| t.latency), Some(Duration::from_micros(12_345)));
        assert!(t.first().is_some_and(|t| t.error().is_none()));
        assert_eq!(t.get(1).map(|t| (t.status, t.new_connection)), Some((403, false)));
        assert!(t.get(1).and_then(Transfer::error).is_some());
        assert_eq!(t.get(2).and_then(|t| t.curl_error.clone()), Some("curl exit 35: SSL connect error".into()));
        assert!(t.get(3).and_then(|t| t.curl_error.clone()).is_some_and(|e| e.contains("curl died")));
        assert_eq!(normalize_serial("00:0a:1B"), "A1B");
    }
}
