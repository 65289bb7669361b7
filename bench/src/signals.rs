//! SIGINT and SIGTERM set a flag instead of killing the process, so a run stops at its next
//! wait and its guards remove what it built. The handler only stores to an atomic
//! (async-signal-safe). A second signal while stopping is handled the same way (cleanup is
//! short and must not be cut in half).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::BenchError;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// True once a stop signal arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps `d` in small steps; `Err(Interrupted)` as soon as a stop signal arrives.
pub fn sleep(d: Duration) -> Result<(), BenchError> {
    let end = Instant::now() + d;
    loop {
        if stopping() {
            return Err(BenchError::Interrupted);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
