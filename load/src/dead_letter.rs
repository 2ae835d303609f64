//! The dead-letter file: rejected records, one JSON object per line, for a later look.

use crate::LoadError;

/// The dead-letter file, opened (for append) at the first rejection.
pub struct DeadLetter {
    path: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    /// Rejections written since it was created.
    pub kept: u64,
    error: Option<std::io::Error>,
}

impl DeadLetter {
    /// Nothing is created until the first rejection.
    pub fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            kept: 0,
            error: None,
        }
    }

    /// Appends `r`; a write error is kept for [`DeadLetter::finish`] (later ones are dropped).
    pub fn keep(&mut self, r: &ingest::Rejection) {
        use std::io::Write;
        if self.error.is_some() {
            return;
        }
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => self.file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        let file = self.file.as_mut().expect("opened above");
        match writeln!(file, "{}", r.to_dead_letter()) {
            Ok(()) => self.kept += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Writes out and syncs what was kept; the first write error since the last call, if any.
    pub fn finish(&mut self) -> Result<(), LoadError> {
        let mut result = match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        if let Some(mut f) = self.file.take() {
            use std::io::Write;
            result = result
                .and_then(|()| f.flush())
                .and_then(|()| f.get_ref().sync_data());
        }
        result.map_err(|source| LoadError::DeadLetter {
            path: self.path.clone(),
            source,
        })
    }
}
