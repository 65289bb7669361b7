//! The table kept in a file the next dataplane process maps: connection tracking (and the
//! masquerade ports, which live in its translated entries) survives a restart.
//!
//! The file (on tmpfs, `/run/flagella` by default, mapped `MAP_SHARED`): a 4 KiB [`Header`],
//! the tags array at 4 KiB, the buckets at the next 4 KiB boundary. Nothing in it is a pointer;
//! times are `CLOCK_MONOTONIC` nanoseconds, valid across processes of one boot.
//!
//! Contract:
//! - A file is taken over only when everything that decides how its bytes are read matches:
//!   the magic, [`LAYOUT_VERSION`], the header's and a slot's size, the ways, a fingerprint of
//!   the entry types' layout (sizes, alignments, every field's offset: [`layout_hash`]), the
//!   bucket count (the configured capacity) and the boot (monotonic time restarts with it).
//!   Anything else is rebuilt empty and the reason returned ([`Restored::Rebuilt`]) for the log:
//!   never misread.
//! - The hash seed of a kept table is the file's (its entries sit in buckets that seed chose).
//! - One process at a time: an exclusive `flock` held as long as the mapping lives; a second
//!   process gets [`CtError::StateFile`] instead of sharing the table.
//! - The header is written last when a table is (re)built, so a crash while building leaves a
//!   file the next process rebuilds.
//! - Bump [`LAYOUT_VERSION`] when the meaning of a stored field changes without its layout
//!   (a state's number, a flag's bit): the fingerprint only sees the layout.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::mem::{align_of, offset_of, size_of};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use super::entry::{CtEntry, RevNat};
use super::key::FlowKey;
use super::memory::{HugeArray, Mapping};
use super::slot::{Bucket, Slot, Tags};
use super::{CtError, WAYS};

/// The file's first bytes.
const MAGIC: [u8; 8] = *b"FLGLCT\0\0";

/// The version of what the stored fields mean. Bump it when a meaning changes without the
/// layout (see the module contract).
pub const LAYOUT_VERSION: u32 = 1;

/// Bytes reserved for the header: the tags start on the next page.
const HEADER_LEN: usize = 4096;
const PAGE: usize = 4096;

/// What the file says about the table in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    magic: [u8; 8],
    layout_version: u32,
    header_len: u32,
    slot_size: u32,
    ways: u32,
    layout_hash: u64,
    buckets: u64,
    hash_seed: u64,
    /// The boot the entries' monotonic times belong to (`/proc/sys/kernel/random/boot_id`).
    boot_id: [u8; 16],
}

/// How the table in a state file came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// No file (or an empty one): a new, empty table.
    Created,
    /// The previous process's table, with this many occupied slots.
    Kept { entries: usize },
    /// A file that could not be taken over (the reason): rebuilt empty.
    Rebuilt { reason: String },
}

/// The arrays of a table in a state file.
pub(super) struct Opened {
    pub(super) buckets: HugeArray<Bucket>,
    pub(super) tags: HugeArray<Tags>,
    pub(super) seed: u64,
    pub(super) restored: Restored,
}

/// A fingerprint of how the stored types lie in memory: any change of a size, an alignment or a
/// field's offset changes it.
pub fn layout_hash() -> u64 {
    let facts = [
        size_of::<Slot>(),
        align_of::<Slot>(),
        size_of::<Bucket>(),
        align_of::<Bucket>(),
        size_of::<Tags>(),
        align_of::<Tags>(),
        size_of::<FlowKey>(),
        size_of::<CtEntry>(),
        size_of::<RevNat>(),
        size_of::<Option<RevNat>>(),
        offset_of!(Slot, key),
        offset_of!(Slot, entry),
        offset_of!(CtEntry, expires),
        offset_of!(CtEntry, last_seen),
        offset_of!(CtEntry, state),
        offset_of!(CtEntry, flags),
        offset_of!(CtEntry, first_bytes),
        offset_of!(CtEntry, src_identity),
        offset_of!(CtEntry, created),
        offset_of!(CtEntry, packets),
        offset_of!(CtEntry, bytes),
        offset_of!(CtEntry, tcp),
        offset_of!(CtEntry, rev_nat),
        WAYS,
    ];
    // FNV-1a: stable across builds (unlike the std hashers' keys).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for fact in facts.iter().chain(FlowKey::FIELD_OFFSETS.iter()) {
        for byte in (*fact as u64).to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Opens (creating when absent) the state file at `path` for a table of `buckets` buckets;
/// keeps its table when it fits (see the module contract), else builds an empty one seeded
/// with `seed`.
pub(super) fn open(path: &Path, buckets: usize, seed: u64) -> Result<Opened, CtError> {
    let fail = |reason: String| CtError::StateFile {
        path: path.to_path_buf(),
        reason,
    };
    let (tags_at, buckets_at, len) = placement(buckets).ok_or_else(|| fail("too large".into()))?;
    let mut file = open_locked(path).map_err(fail)?;
    let expected = expected_header(buckets, seed);
    let verdict = check(&mut file, &expected, len);
    if verdict.is_err() {
        file.set_len(0)
            .and_then(|()| file.set_len(len as u64))
            .map_err(|e| fail(format!("sizing it to {len} bytes: {e}")))?;
    }
    let mapping = Arc::new(Mapping::map_shared(file, len).map_err(fail)?);
    let base = mapping.base();
    // SAFETY: both offsets lie inside the mapping of `len` bytes (`placement`), are page
    // aligned (so aligned for `Tags` and `Bucket`), and the two ranges do not overlap.
    let (tags_ptr, buckets_ptr) = unsafe {
        (
            NonNull::new_unchecked(base.add(tags_at).cast::<Tags>()),
            NonNull::new_unchecked(base.add(buckets_at).cast::<Bucket>()),
        )
    };
    let restored = match &verdict {
        Ok(()) => None,
        Err(reason) => Some(reason.clone()),
    };
    if restored.is_some() {
        // SAFETY: the ranges are inside the mapping, aligned, and written before any array
        // reads them; the header (written last) stays invalid until the table is whole.
        unsafe {
            for i in 0..buckets {
                tags_ptr.as_ptr().add(i).write(Tags::EMPTY);
                buckets_ptr.as_ptr().add(i).write(Bucket::EMPTY);
            }
            base.cast::<Header>().write(expected);
        }
    }
    // SAFETY: the header lies at the start of the mapping, aligned (page), and is a valid
    // `Header` (all its fields are plain integers).
    let stored = unsafe { base.cast::<Header>().read() };
    // SAFETY: the ranges are inside the mapping, aligned, hold valid values (just written, or
    // written by an earlier process with the same layout: the header says so), and each array
    // covers its own range only.
    let (tags, bucket_array) = unsafe {
        (
            HugeArray::in_mapping(tags_ptr, buckets, Arc::clone(&mapping)),
            HugeArray::in_mapping(buckets_ptr, buckets, mapping),
        )
    };
    let restored = match restored {
        None => Restored::Kept {
            entries: occupied(&tags),
        },
        Some(reason) if reason.is_empty() => Restored::Created,
        Some(reason) => Restored::Rebuilt { reason },
    };
    Ok(Opened {
        buckets: bucket_array,
        tags,
        seed: stored.hash_seed,
        restored,
    })
}

/// Occupied slots (non-zero tags) of a kept table.
fn occupied(tags: &[Tags]) -> usize {
    tags.iter()
        .map(|t| t.0.iter().filter(|tag| **tag != 0).count())
        .sum()
}

/// Offsets of the tags and the buckets, and the file's length, for `buckets` buckets.
fn placement(buckets: usize) -> Option<(usize, usize, usize)> {
    let tags_at = HEADER_LEN;
    let tags_len = buckets.checked_mul(size_of::<Tags>())?;
    let buckets_at = tags_at
        .checked_add(tags_len)?
        .checked_next_multiple_of(PAGE)?;
    let len = buckets_at.checked_add(buckets.checked_mul(size_of::<Bucket>())?)?;
    Some((tags_at, buckets_at, len))
}

fn expected_header(buckets: usize, seed: u64) -> Header {
    Header {
        magic: MAGIC,
        layout_version: LAYOUT_VERSION,
        header_len: HEADER_LEN as u32,
        slot_size: size_of::<Slot>() as u32,
        ways: WAYS as u32,
        layout_hash: layout_hash(),
        buckets: buckets as u64,
        hash_seed: seed,
        boot_id: boot_id(),
    }
}

/// `Ok` when the file holds a table this process can take over; else why not ("" for a new,
/// empty file).
fn check(file: &mut File, expected: &Header, len: usize) -> Result<(), String> {
    let actual_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if actual_len == 0 {
        return Err(String::new());
    }
    let mut bytes = [0u8; size_of::<Header>()];
    file.read_exact(&mut bytes)
        .map_err(|e| format!("its header cannot be read: {e}"))?;
    let found = header_from_bytes(&bytes);
    let mismatch = |what: &str, found: String, wanted: String| {
        Err(format!("{what} is {found}, this build needs {wanted}"))
    };
    if found.magic != expected.magic {
        return Err("it is not a Flagella conntrack file (or its writer died building it)".into());
    }
    if found.layout_version != expected.layout_version {
        return mismatch(
            "the layout version",
            found.layout_version.to_string(),
            expected.layout_version.to_string(),
        );
    }
    if (found.header_len, found.slot_size, found.ways)
        != (expected.header_len, expected.slot_size, expected.ways)
    {
        return mismatch(
            "the header/slot size/ways",
            format!("{}/{}/{}", found.header_len, found.slot_size, found.ways),
            format!(
                "{}/{}/{}",
                expected.header_len, expected.slot_size, expected.ways
            ),
        );
    }
    if found.layout_hash != expected.layout_hash {
        return mismatch(
            "the entry layout's fingerprint",
            format!("{:#x}", found.layout_hash),
            format!("{:#x}", expected.layout_hash),
        );
    }
    if found.buckets != expected.buckets || actual_len != len as u64 {
        return mismatch(
            "the capacity",
            format!("{} slots", found.buckets.saturating_mul(WAYS as u64)),
            format!(
                "{} (conntrack_entries changed)",
                expected.buckets * WAYS as u64
            ),
        );
    }
    if found.boot_id != expected.boot_id {
        return Err("it was written before the last reboot".into());
    }
    Ok(())
}

fn header_from_bytes(bytes: &[u8; size_of::<Header>()]) -> Header {
    let u32_at = |at: usize| {
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[at..at + 4]);
        u32::from_ne_bytes(word)
    };
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[..8]);
    let mut boot_id = [0u8; 16];
    let at = offset_of!(Header, boot_id);
    boot_id.copy_from_slice(&bytes[at..at + 16]);
    Header {
        magic,
        layout_version: u32_at(offset_of!(Header, layout_version)),
        header_len: u32_at(offset_of!(Header, header_len)),
        slot_size: u32_at(offset_of!(Header, slot_size)),
        ways: u32_at(offset_of!(Header, ways)),
        layout_hash: u64_at(offset_of!(Header, layout_hash)),
        buckets: u64_at(offset_of!(Header, buckets)),
        hash_seed: u64_at(offset_of!(Header, hash_seed)),
        boot_id,
    }
}

/// This boot's identity (16 bytes of the kernel's boot id; zeros where it cannot be read,
/// which then only matches a file written as blindly).
fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: Vec<u8> = text.trim().bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    for (out, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).unwrap_or("00");
        *out = u8::from_str_radix(digits, 16).unwrap_or(0);
    }
    id
}

/// Opens (creating: mode 0600, its directory 0700) and locks the file.
fn open_locked(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating its directory: {e}"))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening it: {e}"))?;
    // SAFETY: plain syscall on an fd `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "another process holds it ({}): stop the other flagella-dataplane first, or give \
             this one another state_dir",
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// The state file of worker `index` in `dir`.
pub fn worker_state_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("conntrack-worker-{index}.state"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    fn config(capacity: usize, seed: u64) -> CtConfig {
        CtConfig {
            capacity,
            hash_seed: seed,
            ..CtConfig::default()
        }
    }

    /// Writes `value` at `offset` of the file's header, as an incompatible writer would have.
    fn patch_header(path: &Path, offset: usize, value: &[u8]) {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = OpenOptions::new().write(true).open(path).expect("open");
        file.seek(SeekFrom::Start(offset as u64)).expect("seek");
        file.write_all(value).expect("write");
    }

    #[test]
    fn the_next_process_finds_every_flow_with_the_same_seed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ct.state");
        let key = client_key(IPPROTO_TCP);
        let (mut first, restored) =
            Conntrack::with_state_file(config(64, 7), &path).expect("create");
        assert_eq!(restored, Restored::Created);
        let h = create(&mut first, &key, SEC);
        first.update(h, FlowDirection::Original, seg(SYN), 60, SEC);
        let before = *first.entry(h);
        drop(first);

        // Another seed asked for: the kept table's own seed wins, or no flow would be found.
        let (second, restored) = Conntrack::with_state_file(config(64, 99), &path).expect("reopen");
        assert_eq!(restored, Restored::Kept { entries: 1 });
        assert_eq!(second.len(), 1);
        let (h, dir) = look(&second, &key, 2 * SEC).expect("the flow survived");
        assert_eq!(dir, FlowDirection::Original);
        assert!(*second.entry(h) == before);
    }

    #[test]
    fn an_incompatible_layout_is_rebuilt_with_its_reason_never_misread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ct.state");
        let key = client_key(IPPROTO_UDP);
        let cases: [(&str, usize, Vec<u8>); 4] = [
            (
                "layout version",
                offset_of!(Header, layout_version),
                (LAYOUT_VERSION + 1).to_ne_bytes().to_vec(),
            ),
            (
                "slot size",
                offset_of!(Header, slot_size),
                64u32.to_ne_bytes().to_vec(),
            ),
            (
                "fingerprint",
                offset_of!(Header, layout_hash),
                (layout_hash() ^ 1).to_ne_bytes().to_vec(),
            ),
            ("not a Flagella", 0, b"garbage!".to_vec()),
        ];
        for (what, offset, value) in cases {
            let (mut ct, _) = Conntrack::with_state_file(config(64, 7), &path).expect("create");
            create(&mut ct, &key, SEC);
            drop(ct);
            patch_header(&path, offset, &value);
            let (ct, restored) = Conntrack::with_state_file(config(64, 7), &path).expect("rebuild");
            match &restored {
                Restored::Rebuilt { reason } => assert!(reason.contains(what), "{what}: {reason}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(ct.is_empty(), "{what}: nothing of the old table is read");
            assert_eq!(look(&ct, &key, SEC), None);
        }
        // A changed capacity is another layout too.
        let (_, restored) = Conntrack::with_state_file(config(1024, 7), &path).expect("resize");
        assert!(
            matches!(&restored, Restored::Rebuilt { reason } if reason.contains("capacity")),
            "{restored:?}"
        );
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ct.state");
        let (_held, _) = Conntrack::with_state_file(config(64, 7), &path).expect("create");
        let err = Conntrack::with_state_file(config(64, 7), &path).unwrap_err();
        assert!(
            matches!(&err, CtError::StateFile { reason, .. } if reason.contains("another process")),
            "{err:?}"
        );
    }

    #[test]
    fn the_fingerprint_is_stable_within_a_build() {
        assert_eq!(layout_hash(), layout_hash());
        assert_ne!(layout_hash(), 0);
    }
}
