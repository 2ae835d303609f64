//! Reading producers' records into `events` batches.
//!
//! This crate knows formats, not storage: it turns inputs (files, directories, stdin, `.gz` /
//! `.zst`) into record batches and per-record rejections (`PATH:LINE: reason`). Today it reads
//! ktrail's native NDJSON (one `events`-shaped JSON object per line); the producers' formats
//! (Kubernetes audit, Falco, Tetragon, Kubernetes objects) plug in behind [`Format`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use model::{Event, EventBatchBuilder, RecordBatch};
use sha2::{Digest, Sha256};

/// Longest accepted line; longer ones are rejected, not buffered.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Failures of whole inputs (bad records are [`Rejection`]s, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The requested format has no reader in this build.
    #[error("format {0} is not supported yet")]
    UnsupportedFormat(String),
    /// A compressed input whose stream is damaged at a byte offset of the compressed file.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        path: String,
        offset: u64,
        reason: String,
    },
}

/// Input formats of `ktrail ingest --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Recognise each record.
    Auto,
    /// ktrail's native NDJSON events.
    Native,
    K8sAudit,
    Falco,
    Tetragon,
    K8sObjects,
}

impl Format {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Native => "native",
            Format::K8sAudit => "k8s-audit",
            Format::Falco => "falco",
            Format::Tetragon => "tetragon",
            Format::K8sObjects => "k8s-objects",
        }
    }
}

/// One rejected record: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub path: String,
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.reason)
    }
}

/// One input to read: a file or stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// The name used in rejections.
    pub fn display(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::File(p) => p.display().to_string(),
        }
    }

    /// SHA-256 of the input's bytes as stored (compressed bytes for compressed files); `None`
    /// for stdin, which cannot be read twice.
    pub fn fingerprint(&self) -> Result<Option<String>, IngestError> {
        let Input::File(p) = self else {
            return Ok(None);
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

/// Counts of one input (or of a whole run, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub parsed: u64,
    pub rejected: u64,
}

/// Reads `input` in `format`, handing batches of up to `batch_rows` events to `sink` and each
/// bad record to `reject`. A read error ends the input (the batches before it were handed on).
pub fn read_input(
    input: &Input,
    format: Format,
    batch_rows: usize,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), String>,
    reject: &mut dyn FnMut(Rejection),
) -> Result<Counts, IngestError> {
    match format {
        Format::Auto | Format::Native => {}
        other => return Err(IngestError::UnsupportedFormat(other.name().into())),
    }
    let name = input.display();
    let mut reader = input.open()?;
    let mut builder = EventBatchBuilder::with_capacity(batch_rows);
    let mut counts = Counts::default();
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(4096);
    let flush = |builder: &mut EventBatchBuilder,
                 sink: &mut dyn FnMut(RecordBatch) -> Result<(), String>| {
        if builder.is_empty() {
            return Ok(());
        }
        sink(builder.finish()).map_err(|reason| IngestError::Io {
            path: name.clone(),
            source: io::Error::other(reason),
        })
    };
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| IngestError::Io {
                path: name.clone(),
                source: e,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            // Skip the rest of the oversized line without buffering it.
            let mut skipped = 0usize;
            loop {
                let chunk = reader.fill_buf().map_err(|e| IngestError::Io {
                    path: name.clone(),
                    source: e,
                })?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        skipped += i + 1;
                        break;
                    }
                    None => {
                        let l = chunk.len();
                        reader.consume(l);
                        skipped += l;
                    }
                }
            }
            counts.records += 1;
            counts.rejected += 1;
            reject(Rejection {
                path: name.clone(),
                line: line_no,
                reason: format!(
                    "line longer than {MAX_LINE_BYTES} bytes ({} bytes)",
                    buf.len() + skipped
                ),
            });
            continue;
        }
        let line = trim(&buf);
        if line.is_empty() {
            continue;
        }
        counts.records += 1;
        match parse_native(line) {
            Ok(ev) => {
                builder.push(&ev);
                counts.parsed += 1;
                if builder.len() >= batch_rows {
                    flush(&mut builder, sink)?;
                }
            }
            Err(reason) => {
                counts.rejected += 1;
                reject(Rejection {
                    path: name.clone(),
                    line: line_no,
                    reason,
                });
            }
        }
    }
    flush(&mut builder, sink)?;
    Ok(counts)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

fn parse_native(line: &[u8]) -> Result<Event, String> {
    if std::str::from_utf8(line).is_err() {
        return Err("invalid UTF-8".into());
    }
    Event::from_native_json(line).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read(content: &[u8], name: &str) -> (Vec<RecordBatch>, Vec<Rejection>, Counts) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut batches = Vec::new();
        let mut rejections = Vec::new();
        let counts = read_input(
            &Input::File(path),
            Format::Auto,
            2,
            &mut |b| {
                batches.push(b);
                Ok(())
            },
            &mut |r| rejections.push(r),
        )
        .unwrap();
        (batches, rejections, counts)
    }

    #[test]
    fn good_lines_become_batches_and_bad_lines_are_named() {
        let mut content = Vec::new();
        for i in 0..5 {
            writeln!(
                content,
                r#"{{"ts":{i},"kind":"process_exec","source":"grpc","pod":"p"}}"#
            )
            .unwrap();
        }
        content.extend_from_slice(b"{broken\n\n{\"kind\": 0}\n\xff\xfe\n");
        let (batches, rejections, counts) = read(&content, "events.ndjson");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        assert_eq!(batches.len(), 3, "batches of at most 2 rows");
        assert_eq!(
            counts,
            Counts {
                records: 8,
                parsed: 5,
                rejected: 3
            }
        );
        let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![6, 8, 9]);
        assert!(
            rejections[0].to_string().contains("events.ndjson:6: "),
            "{}",
            rejections[0]
        );
        assert!(rejections[2].reason.contains("UTF-8"));
    }

    #[test]
    fn compressed_inputs_are_read_by_extension() {
        let line = b"{\"ts\":1,\"kind\":\"other\",\"source\":\"x\"}\n";
        let zst = zstd::encode_all(&line[..], 3).unwrap();
        let (b, r, _) = read(&zst, "a.ndjson.zst");
        assert_eq!((b.len(), r.len()), (1, 0));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(line).unwrap();
        let (b, r, _) = read(&gz.finish().unwrap(), "a.ndjson.gz");
        assert_eq!((b.len(), r.len()), (1, 0));
    }

    #[test]
    fn oversized_lines_are_rejected_without_stopping() {
        let mut content = vec![b'x'; MAX_LINE_BYTES + 10];
        content.push(b'\n');
        content.extend_from_slice(b"{\"ts\":1,\"kind\":\"other\",\"source\":\"x\"}\n");
        let (b, r, _) = read(&content, "big.ndjson");
        assert_eq!(b.len(), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].line, 1);
        assert!(r[0].reason.contains("longer than"));
    }
}
