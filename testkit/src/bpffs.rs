//! A private bpffs instance for a test: `mount -t bpf` on a new private directory (each mount
//! is its own instance, so pins never meet the node's `/sys/fs/bpf` or another test's), lazily
//! unmounted and removed when the guard drops, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bpffs mounted on a private directory for as long as this value lives.
#[derive(Debug)]
pub struct BpffsGuard {
    dir: PathBuf,
}

impl BpffsGuard {
    /// Mounts a new bpffs on `private_dir(prefix)`, or says why it cannot (the caller skips).
    pub fn mount(prefix: &str) -> Result<BpffsGuard, String> {
        let dir = crate::private_dir(prefix);
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run `mount`: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t bpf on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(BpffsGuard { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        // Lazy: a pinned object still open by a process cannot keep the mount busy.
        let unmounted = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted || std::fs::remove_dir(&self.dir).is_err() {
            eprintln!(
                "WARNING: could not remove the test bpffs at {0}: run `umount -l {0} && rmdir {0}`",
                self.dir.display()
            );
        }
    }
}
