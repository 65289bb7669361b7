//! A stand-in dataplane socket for scale runs and tests: it applies every request line to a
//! [`DataplaneMirror`], notes when the last one arrived, and answers `{"ok":true}` (the
//! dataplane itself is not what these runs measure; the agent's side of its protocol is).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use super::DataplaneMirror;

#[derive(Debug, Default)]
struct Shared {
    mirror: DataplaneMirror,
    requests: u64,
    last: Option<Instant>,
}

/// The socket's shared state; clones see the same mirror.
#[derive(Clone, Debug, Default)]
pub struct StandIn {
    shared: Arc<Mutex<Shared>>,
}

impl StandIn {
    /// Listens on `path` (which must not exist) and serves every client on its own thread.
    pub fn serve(path: &Path) -> std::io::Result<StandIn> {
        let s = StandIn::default();
        let listener = UnixListener::bind(path)?;
        let shared = Arc::clone(&s.shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_one(stream, &shared));
            }
        });
        Ok(s)
    }

    /// A copy of the mirror now.
    pub fn mirror(&self) -> DataplaneMirror {
        self.lock().mirror.clone()
    }

    /// Requests applied so far and when the last one arrived.
    pub fn progress(&self) -> (u64, Option<Instant>) {
        let s = self.lock();
        (s.requests, s.last)
    }

    /// Runs `f` on the mirror (without copying it).
    pub fn with_mirror<T>(&self, f: impl FnOnce(&DataplaneMirror) -> T) -> T {
        f(&self.lock().mirror)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panicking reader thread leaves the data as valid as before: keep going.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serve_one(stream: UnixStream, shared: &Mutex<Shared>) {
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            s.mirror.apply_json(&v);
            s.requests += 1;
            s.last = Some(Instant::now());
        }
        if writeln!(w, "{}", json!({"ok": true, "seq": v["seq"].clone()})).is_err() {
            return;
        }
    }
}
