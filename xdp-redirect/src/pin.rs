//! The program's life beyond one process: its BPF link and maps pinned in bpffs, so that a
//! dataplane restart (graceful or `kill -9`) leaves each interface with a program that drops
//! what the dataplane owns instead of handing it to the kernel unpoliced.
//!
//! Layout: `<root>/<ifname>/link` (the XDP link) and `<root>/<ifname>/<map name>` (one file per
//! map of the program). `<root>` must be on a bpffs mount.
//!
//! Contract:
//! - [`PinDir::new`] accepts only interface names that are one path component (no `/`, not `.`
//!   or `..`, at most `IFNAMSIZ - 1` bytes), so a name from a control request cannot reach
//!   outside `<root>`.
//! - A pinned map is reused by the next process's program only when the kernel finds it
//!   compatible (type, key and value size, entries, flags: libbpf's check); an incompatible one is
//!   removed and created afresh ([`MapsOrigin::Rebuilt`]), never misread.
//! - [`PinDir::remove`] detaches the link (the interface's frames then go to the kernel again)
//!   and removes every pin: the explicit uninstall.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libbpf_rs::libbpf_sys;

/// `statfs` type of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The file of the pinned link inside an interface's directory.
const LINK_FILE: &str = "link";

/// Longest interface name (`IFNAMSIZ` minus its terminating NUL).
const MAX_IFNAME: usize = 15;

/// Why pinning failed. Each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path} is not on a bpffs mount: mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose another pin directory (`bpf_pin_dir`, `--bpf-pin-dir`, or `off`)")]
    NotBpffs { path: PathBuf },
    #[error("`{name}` cannot name a pin directory: interface names are one path component of at most 15 bytes")]
    BadName { name: String },
    #[error("{operation} {path} failed: {source}; check the pin directory is on bpffs and the process has CAP_BPF (or remove stale pins with `flagella-dataplane --uninstall`)")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the maps of a pinned program came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapsOrigin {
    /// Nothing was pinned: fresh maps, now pinned.
    Created,
    /// The previous process's maps (counters, owned destinations, config) were taken over.
    Reused,
    /// Pinned maps were there but did not fit this program (another layout): they were removed
    /// and fresh ones pinned. The text is the kernel's / libbpf's reason.
    Rebuilt { reason: String },
}

/// How the link of a pinned program came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOrigin {
    /// A new link: the interface had no pinned program (or only a stale one, removed).
    Created,
    /// The pinned link of the previous process now runs this program (one atomic
    /// `BPF_LINK_UPDATE`: the interface was never without a program).
    Updated,
}

/// One interface's directory of pins: `<root>/<ifname>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// The directory of `ifname` under `root` (not created yet).
    pub fn new(root: &Path, ifname: &str) -> Result<PinDir, PinError> {
        let one_component = !ifname.is_empty()
            && ifname.len() <= MAX_IFNAME
            && ifname != "."
            && ifname != ".."
            && !ifname.contains(['/', '\0']);
        if !one_component {
            return Err(PinError::BadName {
                name: ifname.chars().take(64).collect(),
            });
        }
        Ok(PinDir {
            path: root.join(ifname),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn link_path(&self) -> PathBuf {
        self.path.join(LINK_FILE)
    }

    /// Creates the directory (and `root`) when absent.
    pub(crate) fn create(&self) -> Result<(), PinError> {
        fs::create_dir_all(&self.path).map_err(|source| PinError::Io {
            operation: "creating",
            path: self.path.clone(),
            source,
        })
    }

    /// Removes the map pins only (the link stays): before a rebuild of incompatible maps.
    pub(crate) fn remove_map_pins(&self, names: &[&str]) -> Result<(), PinError> {
        for name in names {
            remove_file_if_present(&self.map_path(name))?;
        }
        Ok(())
    }

    /// Detaches the pinned program from its interface and removes every pin and the
    /// directory. Nothing pinned is not an error.
    pub fn remove(&self) -> Result<(), PinError> {
        if let Some(link) = open_pinned(&self.link_path())? {
            // A link whose interface is gone is already detached: ENOLINK is fine.
            // SAFETY: plain syscall wrapper on a link fd `link` keeps open during the call.
            let rc = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
            if rc < 0 && -rc != libc::ENOLINK {
                return Err(PinError::Io {
                    operation: "detaching the link pinned at",
                    path: self.link_path(),
                    source: io::Error::from_raw_os_error(-rc),
                });
            }
        }
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(PinError::Io {
                    operation: "listing",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            remove_file_if_present(&entry.path())?;
        }
        fs::remove_dir(&self.path).map_err(|source| PinError::Io {
            operation: "removing",
            path: self.path.clone(),
            source,
        })
    }
}

/// Checks that `root` (or, when it does not exist yet, its parent) is on bpffs: pinning
/// anywhere else fails with a less helpful error.
pub fn check_bpffs(root: &Path) -> Result<(), PinError> {
    let probe = if root.exists() {
        root
    } else {
        root.parent().unwrap_or(root)
    };
    let not_bpffs = || PinError::NotBpffs {
        path: root.to_path_buf(),
    };
    let c_path = CString::new(probe.as_os_str().as_bytes()).map_err(|_| not_bpffs())?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable statfs buffer, both
    // alive for the call; the result is only read when the call succeeded.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(not_bpffs());
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, other widths elsewhere.
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(not_bpffs());
    }
    Ok(())
}

/// The interfaces that have a directory of pins under `root` (none when `root` is absent).
pub fn pinned_interfaces(root: &Path) -> Result<Vec<String>, PinError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PinError::Io {
                operation: "listing",
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The object pinned at `path`, or `None` when nothing is.
pub(crate) fn open_pinned(path: &Path) -> Result<Option<OwnedFd>, PinError> {
    if !path.exists() {
        return Ok(None);
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::Io {
        operation: "opening",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c_path.as_ptr()) };
    if fd < 0 {
        return Err(PinError::Io {
            operation: "opening the pinned object",
            path: path.to_path_buf(),
            source: io::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: bpf_obj_get returned a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Pins `fd` (a link) at `path`.
pub(crate) fn pin_fd(fd: &OwnedFd, path: &Path) -> Result<(), PinError> {
    let err = |source| PinError::Io {
        operation: "pinning",
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: `fd` is open and `c_path` NUL-terminated for the duration of the call.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c_path.as_ptr()) };
    if rc < 0 {
        return Err(err(io::Error::from_raw_os_error(-rc)));
    }
    Ok(())
}

/// The interface an XDP link is attached to; 0 when its interface is gone (a defunct link).
pub(crate) fn link_ifindex(link: &OwnedFd) -> io::Result<u32> {
    // SAFETY: bpf_link_info is plain data for which all zeroes is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: `info` and `len` are writable and sized as the call expects; `link` is open.
    let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    if info.type_ != libbpf_sys::BPF_LINK_TYPE_XDP {
        return Ok(0);
    }
    // SAFETY: the kernel filled the `xdp` member of the union for an XDP link (checked above).
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

/// Makes `link` run `program_fd` (BPF_LINK_UPDATE): atomic, no frame sees no program.
pub(crate) fn update_link(link: &OwnedFd, program_fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall wrapper; both fds are open for the call, no options.
    let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), program_fd, std::ptr::null()) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

fn remove_file_if_present(path: &Path) -> Result<(), PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PinError::Io {
            operation: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_stay_one_component() {
        let root = Path::new("/sys/fs/bpf/flagella");
        assert_eq!(
            PinDir::new(root, "lxc0a1b2c3")
                .map(|d| d.path().to_path_buf())
                .ok(),
            Some(root.join("lxc0a1b2c3"))
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../../etc",
            "sixteen-chars-xx",
            "a\0b",
        ] {
            assert!(
                matches!(PinDir::new(root, bad), Err(PinError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_directory_that_is_not_bpffs_is_refused_with_advice() {
        let err = check_bpffs(Path::new("/proc/flagella-pins")).unwrap_err();
        assert!(matches!(err, PinError::NotBpffs { .. }));
        assert!(err.to_string().contains("mount -t bpf"), "{err}");
    }

    #[test]
    fn nothing_pinned_lists_nothing() {
        let names = pinned_interfaces(Path::new("/nonexistent/flagella-pins")).unwrap();
        assert!(names.is_empty());
    }
}
