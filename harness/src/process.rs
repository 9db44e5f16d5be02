//! Child processes that cannot outlive the harness.
//!
//! A supervised program is started through a small `sh` wrapper whose standard input is a pipe held by the
//! harness. The wrapper starts the program in the background and waits on that pipe: when the harness drops
//! the [`Supervised`] handle, or exits in any way (panic, `std::process::exit`, SIGKILL, a test binary whose
//! statics are never dropped), the kernel closes the pipe, `read` returns, and the wrapper sends SIGTERM to
//! the program (SIGKILL after 5 s). No signal-on-parent-death tricks, so threads don't matter.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{err, Result};

/// The wrapper: `$0 "$@"` is the program. It exits with the program's status.
const WRAPPER: &str = r#"exec 3<&0
"$0" "$@" </dev/null 3<&- &
p=$!
{ read _ <&3; kill "$p" 2>/dev/null; i=0
  while kill -0 "$p" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -9 "$p" 2>/dev/null; } <&3 &
k=$!
wait "$p"; rc=$?
kill "$k" 2>/dev/null
exit "$rc""#;

/// A running program tied to the harness's lifetime; stopped on drop.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Supervised {
    /// Start `program args...` in `cwd`, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], cwd: &Path, log: &Path) -> Result<Supervised> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err_out = out.try_clone()?;
        let wrapper = Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err_out))
            .spawn()
            .map_err(|e| err(format!("starting {name} ({}): {e}", program.display())))?;
        let mut s = Supervised { name: name.to_string(), wrapper, stdin: None, log: log.to_path_buf(), status: None };
        s.stdin = s.wrapper.stdin.take();
        Ok(s)
    }

    /// The process id of the program (not of its wrapper), once it runs.
    pub fn program_pid(&self) -> Option<u32> {
        let wrapper = self.wrapper.id();
        let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).ok()?;
        // The wrapper's first child is the program (started before its watcher subshell).
        children.split_whitespace().next()?.parse().ok()
    }

    /// Name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// `Some(status)` once the program has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.wrapper.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Poll `ready` every 100 ms until it returns true, the program exits, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Err(err(format!(
                    "{} exited during startup ({st}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log(), 60)
                )));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "{} not ready after {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log(), 60)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait up to `timeout` for the program to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.exited()
    }

    /// Stop the program (SIGTERM, then SIGKILL after 5 s) and reap the wrapper.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        if self.wait_exit(Duration::from_secs(8)).is_none() {
            let _ = self.wrapper.kill();
            let _ = self.wrapper.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read a file as (lossy) UTF-8; empty if missing.
pub fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Bytes of a file from `offset` on (lossy UTF-8); for reading what a log gained since a mark.
pub fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines.get(start..).unwrap_or(&[]).join("\n")
}
