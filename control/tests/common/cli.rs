//! Running the `flagella` CLI from a test and reading what it printed.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// A private temporary directory for a test's input files, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// A new directory named from `prefix` (made with mkdtemp: never a predictable path).
    pub fn new(prefix: &str) -> Dir {
        Dir(testkit::private_dir(prefix))
    }

    /// Writes `text` to `name` in the directory; returns the file's path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `flagella ARGS...`, run to completion.
pub fn flagella(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flagella"))
        .args(args)
        .output()
        .unwrap()
}

/// The standard output of a run that must have succeeded (exit 0); both outputs on failure.
pub fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The standard output of a successful run, parsed as JSON.
pub fn json(o: &Output) -> Value {
    let text = ok(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// The standard error of a run.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
