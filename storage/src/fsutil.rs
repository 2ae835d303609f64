//! Durable file-system steps: every publish in the store goes write temp → fsync → rename →
//! fsync directory, so that a crash leaves either the old or the new file, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
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
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    publish(&tmp, path)
}

/// Renames a synced temp file into place and fsyncs the directory.
pub fn publish(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).at(path)?;
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
