//! Durable file-system steps: every publish in the store goes write temp → fsync → rename →
//! fsync directory, so that a crash leaves either the old or the new file, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{IoContext, Result};

/// The durable I/O steps a fault can be injected at (the fault-injection harness,
/// `storage/tests/faults.rs`). Each names one call: a WAL write or fdatasync, creating a WAL
/// file, deleting one in trim; the write, fsync or rename of an atomic replace (manifest,
/// index); the fsync of a segment's Parquet file; the rename that publishes a file; a
/// directory fsync.
pub const FAULT_POINTS: &[&str] = &[
    "wal.write",
    "wal.sync",
    "wal.create",
    "wal.trim",
    "atomic.write",
    "atomic.fsync",
    "segment.fsync",
    "publish.rename",
    "dir.fsync",
    "chain.write",
    "chain.fsync",
];

/// What an injected fault looks like to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `EIO`: the device failed.
    Io,
    /// `ENOSPC`: the file system is full.
    NoSpace,
}

static ARMED: AtomicBool = AtomicBool::new(false);
/// Armed faults: point, fault, passes to let through first; a fault fires once.
static FAULTS: Mutex<Vec<(&'static str, Fault, u32)>> = Mutex::new(Vec::new());

/// Makes the pass through `point` (one of [`FAULT_POINTS`]) after the next `skip` ones fail
/// with `fault`, once. For fault-injection tests only: nothing in ktrail arms a fault.
pub fn inject_fault(point: &'static str, fault: Fault, skip: u32) {
    assert!(FAULT_POINTS.contains(&point), "no fault point {point}");
    FAULTS.lock().push((point, fault, skip));
    ARMED.store(true, Ordering::SeqCst);
}

/// True while an injected fault has not fired yet.
pub fn fault_pending() -> bool {
    !FAULTS.lock().is_empty()
}

/// Disarms every injected fault.
pub fn clear_faults() {
    FAULTS.lock().clear();
    ARMED.store(false, Ordering::SeqCst);
}

/// Fails when a fault is armed at `point`; otherwise (always, outside the harness: one
/// relaxed load) `Ok`.
pub(crate) fn fault_point(point: &'static str) -> std::io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut faults = FAULTS.lock();
    let Some(i) = faults.iter().position(|(p, _, _)| *p == point) else {
        return Ok(());
    };
    if faults[i].2 > 0 {
        faults[i].2 -= 1;
        return Ok(());
    }
    let (_, fault, _) = faults.remove(i);
    Err(match fault {
        Fault::Io => std::io::Error::other(format!("injected I/O error at {point}")),
        Fault::NoSpace => std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("injected: no space left at {point}"),
        ),
    })
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fault_point("dir.fsync")
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .at(dir)
}

/// Creates `dir` (and parents) and fsyncs each directory whose entries changed.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    create_dir_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).at(dir),
    }
    sync_dir(parent)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        fault_point("atomic.write")
            .and_then(|()| f.write_all(bytes))
            .at(&tmp)?;
        fault_point("atomic.fsync")
            .and_then(|()| f.sync_all())
            .at(&tmp)?;
    }
    publish(&tmp, path)
}

/// Renames a synced temp file into place and fsyncs the directory.
pub fn publish(tmp: &Path, path: &Path) -> Result<()> {
    fault_point("publish.rename")
        .and_then(|()| fs::rename(tmp, path))
        .at(path)?;
    sync_dir(path.parent().expect("published files live in a directory"))
}

/// The temp name used while `path` is being written: hidden, in the same directory (so the
/// rename is atomic), and recognisable so that open can delete leftovers of a crash.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().expect("file path").to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// True for a leftover of [`tmp_path`].
pub fn is_tmp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}
