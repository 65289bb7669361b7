//! The `flagella-dataplane` process as the root-only tests run it (`daemon.rs`,
//! `daemon_caps.rs`, `uplink_host.rs`): started through `ip netns exec` (and `setpriv`), both
//! of which exec in place, so the child's PID is the daemon's and signals reach it, not a
//! wrapper. Dropping a [`Daemon`] kills it if it still runs: no test leaves one behind.

#![allow(dead_code)] // Each test file uses a subset of these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running daemon, its control socket and its log (its stderr).
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` (which must end up exec'ing the daemon with `--socket socket`), stderr to
    /// `log`; does not wait.
    pub fn spawn(mut cmd: Command, socket: PathBuf, log: PathBuf) -> Daemon {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn flagella-dataplane");
        Daemon { child, socket, log }
    }

    /// [`Daemon::spawn`], then waits for the control socket.
    pub fn start(cmd: Command, socket: PathBuf, log: PathBuf) -> Daemon {
        let mut daemon = Daemon::spawn(cmd, socket, log);
        daemon.wait_ready();
        daemon
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until the control socket accepts a connection; panics if the daemon exits first, or
    /// if the child is not the daemon itself.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon's control socket did not appear:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap();
        assert!(comm.starts_with("flagella-datap"), "the child is `{comm}`");
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill takes plain integers; the PID is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits for the exit (at most `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop in {timeout:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (at most 10 s).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the daemon never logged `{text}`:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request line, one reply line, on a fresh connection to `socket`; the reply must say
/// `ok` (root may open the daemon's 0600 socket).
pub fn call(socket: &Path, request: Value) -> Value {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    stream.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    let reply: Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply `{reply}`: {e}"));
    assert_eq!(reply["ok"], true, "{request} -> {reply}");
    reply
}
