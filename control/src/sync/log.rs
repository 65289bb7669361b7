//! The agent's log: one timestamped line on stderr per event (seconds.milliseconds since the
//! epoch), so that a journal or a test's captured output orders them.

/// A timestamped line on stderr (the agent's log).
pub fn log(msg: impl std::fmt::Display) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("[{}.{:03}] {msg}", now.as_secs(), now.subsec_millis());
}
