//! What ktrail reads from: files (plain, `.gz`, `.zst`), directories walked in name order,
//! stdin, and bodies in memory; and each file's fingerprint.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::IngestError;

/// One input to read: a file or stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
    /// Bytes already in memory (an HTTP request body), named for rejections.
    Memory {
        name: String,
        data: std::sync::Arc<[u8]>,
    },
}

impl Input {
    /// The name used in rejections.
    pub fn display(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::File(p) => p.display().to_string(),
            Input::Memory { name, .. } => name.clone(),
        }
    }

    /// SHA-256 of the input's bytes as stored (compressed bytes for compressed files); `None`
    /// for stdin, which cannot be read twice.
    pub fn fingerprint(&self) -> Result<Option<String>, IngestError> {
        let p = match self {
            Input::Stdin => return Ok(None),
            Input::Memory { data, .. } => {
                return Ok(Some(format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(data))
                )));
            }
            Input::File(p) => p,
        };
        let mut f = File::open(p).map_err(|e| io_err(p, e))?;
        let mut h = Sha256::new();
        io::copy(&mut f, &mut h).map_err(|e| io_err(p, e))?;
        Ok(Some(format!("sha256:{}", hex::encode(h.finalize()))))
    }

    /// Opens the input, decompressing `.gz` / `.zst` by extension.
    pub fn open(&self) -> Result<Box<dyn BufRead>, IngestError> {
        let p = match self {
            Input::Stdin => return Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin()))),
            Input::Memory { data, .. } => return Ok(Box::new(io::Cursor::new(data.clone()))),
            Input::File(p) => p,
        };
        let f = File::open(p).map_err(|e| io_err(p, e))?;
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let reader: Box<dyn Read> = match ext {
            "gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
            "zst" => Box::new(zstd::Decoder::new(f).map_err(|e| io_err(p, e))?),
            _ => Box::new(f),
        };
        Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
    }
}

fn io_err(p: &Path, source: io::Error) -> IngestError {
    IngestError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// Expands command-line paths: `-` is stdin, directories are walked recursively (sorted, hidden
/// entries skipped), files are taken as they are.
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, IngestError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(Input::Stdin);
        } else if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            std::fs::metadata(p).map_err(|e| io_err(p, e))?;
            out.push(Input::File(p.clone()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<Input>) -> Result<(), IngestError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(Input::File(p));
        }
    }
    Ok(())
}
