//! Reading producers' records into `events` batches.
//!
//! This crate knows formats, not storage: it turns inputs (files, directories, stdin, `.gz` /
//! `.zst`) into record batches and per-record rejections (`PATH:LINE: reason`). Today it reads
//! ktrail's native NDJSON (one `events`-shaped JSON object per line), Kubernetes audit events,
//! Falco alerts, Tetragon's JSON export and Kubernetes object inventories
//! (`kubectl get -o json`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

pub mod arrow_ipc;
mod falco;
pub mod k8s_audit;
pub mod k8s_objects;
pub mod proto_events;
pub mod tetragon;
mod tracee;
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
    /// The sink refused a batch (the store failed): reading stopped there. The sink's
    /// caller holds the cause; `reason` is its text.
    #[error("{path}: stopped: {reason}")]
    Stopped { path: String, reason: String },
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
    /// Tracee's JSON events (legacy `--output json` and `v1beta1`).
    Tracee,
    K8sObjects,
}

impl Format {
    /// Every format, in the order the command line lists them.
    pub const ALL: [Format; 7] = [
        Format::Auto,
        Format::Native,
        Format::K8sAudit,
        Format::Falco,
        Format::Tetragon,
        Format::Tracee,
        Format::K8sObjects,
    ];

    /// The format of a command-line name (`auto`, `k8s-audit`, ...).
    pub fn from_name(name: &str) -> Option<Format> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Native => "native",
            Format::K8sAudit => "k8s-audit",
            Format::Falco => "falco",
            Format::Tetragon => "tetragon",
            Format::Tracee => "tracee",
            Format::K8sObjects => "k8s-objects",
        }
    }

    /// Formats whose record is one event with the record itself as `raw`: their parsers
    /// leave `raw` empty and the batch takes it from the input without another copy.
    fn raw_is_record(self) -> bool {
        matches!(self, Format::Falco | Format::Tetragon | Format::Tracee)
    }
}

/// One rejected record: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub path: String,
    pub line: u64,
    pub reason: String,
    /// The rejected record as read (lossy UTF-8); `None` for a line too long to keep.
    pub record: Option<String>,
}

impl Rejection {
    /// One dead-letter line: `{"path", "line", "reason", "record"}` as JSON.
    pub fn to_dead_letter(&self) -> String {
        serde_json::json!({
            "path": self.path,
            "line": self.line,
            "reason": self.reason,
            "record": self.record,
        })
        .to_string()
    }
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

/// Counts of one format in one input (or of a whole run, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read (a webhook `EventList` is one record of many events).
    pub records: u64,
    /// Events produced from the records that parsed.
    pub events: u64,
    pub rejected: u64,
}

/// Counts per format name (`native`, `k8s-audit`, `falco`, ...; unrecognised records count
/// under the requested format).
pub type Summary = std::collections::BTreeMap<&'static str, Counts>;

/// Reads `input` in `format`, handing batches of up to `batch_rows` events of one format to `sink` and each
/// bad record to `reject`, both in the input's order and on the calling thread. A read error
/// ends the input; what the chunks read whole before it gave is handed on first.
///
/// Inputs are JSON lines; an input whose first line is not a complete JSON value (a
/// pretty-printed document, a `kubectl get -o json` list) is read as a sequence of JSON
/// documents instead, each rejection naming the line its document starts on.
///
/// Lines are parsed on every core (up to four): the calling thread reads chunks of up
/// to `batch_rows` lines and hands them to parsing threads (started only when an input is
/// longer than one chunk), then passes each chunk's batches on in order. Parsing one line
/// after another bounded ingest of one large file to one core while the others waited.
pub fn read_input(
    input: &Input,
    format: Format,
    batch_rows: usize,
    sink: &mut dyn FnMut(Format, RecordBatch) -> Result<(), String>,
    reject: &mut dyn FnMut(Rejection),
) -> Result<Summary, IngestError> {
    let name = input.display();
    let io = |e: io::Error| IngestError::Io {
        path: name.clone(),
        source: e,
    };
    let mut lines = LineReader::new(input.open()?);
    let mut deliver = |out: Output| -> Result<(), IngestError> {
        match out {
            Output::Batch(fmt, batch) => sink(fmt, batch).map_err(|reason| IngestError::Stopped {
                path: name.clone(),
                reason,
            }),
            Output::Reject(r) => {
                reject(r);
                Ok(())
            }
        }
    };
    let mut batcher = Batcher::new(name.clone(), format, batch_rows, now_ns());
    let first = lines.next_chunk(batch_rows, None).map_err(io)?;
    if let Some((line, doc)) = lines.document.take() {
        read_documents(&doc, line, &mut batcher, &mut deliver)?;
        batcher.flush(&mut deliver)?;
        return Ok(batcher.summary);
    }
    let Some(first) = first else {
        return Ok(batcher.summary);
    };
    if lines.done {
        // One chunk is the whole input (an HTTP request, a small file): no threads.
        batcher.parse_chunk(&first, &mut deliver)?;
        return Ok(batcher.summary);
    }
    let parsers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_PARSERS);
    let max_in_flight = parsers + 2;
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<(u64, Chunk)>(max_in_flight);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Parsed, Chunk)>();
    std::thread::scope(|scope| {
        for i in 0..parsers {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            let mut batcher = Batcher::new(
                batcher.name.clone(),
                format,
                batch_rows,
                batcher.observed_at,
            );
            std::thread::Builder::new()
                .name(format!("ktrail-parse-{i}"))
                .spawn_scoped(scope, move || {
                    loop {
                        // A poisoned lock means another parser panicked: the scope re-raises it.
                        let Ok(Ok((seq, chunk))) = job_rx.lock().map(|rx| rx.recv()) else {
                            return;
                        };
                        // A panic is handed over in the chunk's place and raised again by the
                        // reading thread: the reader would otherwise wait for it forever.
                        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let mut out = Vec::new();
                            let collected = batcher.parse_chunk(&chunk, &mut |o| {
                                out.push(o);
                                Ok(())
                            });
                            debug_assert!(collected.is_ok(), "collecting outputs cannot fail");
                            (out, std::mem::take(&mut batcher.summary))
                        }));
                        let panicked = parsed.is_err();
                        if done_tx.send((seq, parsed, chunk)).is_err() || panicked {
                            return;
                        }
                    }
                })
                .expect("spawn a parsing thread");
        }
        drop(done_tx);
        let mut ordered = InOrder {
            done: done_rx,
            early: std::collections::BTreeMap::new(),
            next: 0,
            summary: batcher.summary,
            spare: Vec::new(),
        };
        let mut sent = 0u64;
        let mut chunk = Some(first);
        let mut read_error = None;
        while let Some(c) = chunk.take() {
            while sent - ordered.next >= max_in_flight as u64 {
                ordered.deliver_next(&mut deliver)?;
            }
            if job_tx.send((sent, c)).is_err() {
                // Every parser stopped, which only a panic does; delivering raises it.
                loop {
                    ordered.deliver_next(&mut deliver)?;
                }
            }
            sent += 1;
            ordered.deliver_ready(&mut deliver)?;
            match lines.next_chunk(batch_rows, ordered.spare.pop()) {
                Ok(next) => chunk = next,
                Err(e) => read_error = Some(io(e)),
            }
        }
        drop(job_tx);
        while ordered.next < sent {
            ordered.deliver_next(&mut deliver)?;
        }
        match read_error {
            Some(e) => Err(e),
            None => Ok(ordered.summary),
        }
    })
}

/// Parsing threads of one input at most: every chunk in flight holds up to [`CHUNK_BYTES`]
/// (plus a line) and its batches, and all of them are appended on the one calling thread.
const MAX_PARSERS: usize = 4;

/// Lines handed to a parsing thread at a time: at most `batch_rows` records and about this
/// many bytes, so that a chunk makes about one batch and a few in flight bound the memory.
const CHUNK_BYTES: usize = 32 << 20;

/// Consecutive records of one input, read ahead of the parsers.
struct Chunk {
    text: Vec<u8>,
    /// Each record's line number and place in `text`, or the length of a line too long to keep.
    records: Vec<(u64, Result<std::ops::Range<usize>, usize>)>,
}

/// What parsing gave, in the order of the records.
enum Output {
    Batch(Format, RecordBatch),
    Reject(Rejection),
}

/// A chunk's outputs and counts, or the panic its parser raised.
type Parsed = std::thread::Result<(Vec<Output>, Summary)>;

/// The parsers' chunks, passed on in the order they were read.
struct InOrder {
    done: std::sync::mpsc::Receiver<(u64, Parsed, Chunk)>,
    /// Chunks parsed ahead of one still being parsed.
    early: std::collections::BTreeMap<u64, (Vec<Output>, Summary)>,
    next: u64,
    summary: Summary,
    /// Parsed chunks, for the reader to fill again: fresh buffers were 2 % of native ingest
    /// in page faults alone (perf).
    spare: Vec<Chunk>,
}

impl InOrder {
    /// Waits for the next chunk in order and passes it on.
    fn deliver_next(
        &mut self,
        deliver: &mut dyn FnMut(Output) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        while !self.early.contains_key(&self.next) {
            let parsed = self.done.recv().expect("parsers outlive the reader's wait");
            self.keep(parsed);
        }
        self.deliver_ready(deliver)
    }

    /// Passes on the chunks parsed so far that are next in order.
    fn deliver_ready(
        &mut self,
        deliver: &mut dyn FnMut(Output) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        while let Ok(parsed) = self.done.try_recv() {
            self.keep(parsed);
        }
        while let Some((out, summary)) = self.early.remove(&self.next) {
            self.next += 1;
            for (name, c) in summary {
                let t = self.summary.entry(name).or_default();
                t.records += c.records;
                t.events += c.events;
                t.rejected += c.rejected;
            }
            out.into_iter().try_for_each(&mut *deliver)?;
        }
        Ok(())
    }

    /// Keeps a parsed chunk until its turn (a parser's panic is raised here) and its buffers
    /// for the reader.
    fn keep(&mut self, (seq, parsed, chunk): (u64, Parsed, Chunk)) {
        self.early
            .insert(seq, parsed.unwrap_or_else(|p| std::panic::resume_unwind(p)));
        self.spare.push(chunk);
    }
}

/// Splits an input into chunks of whole lines, noticing a multi-line document at its start.
struct LineReader {
    reader: Box<dyn BufRead>,
    line_no: u64,
    /// A line that runs past the reader's buffer, copied out whole.
    long: Vec<u8>,
    /// Whether a record (or a rejected line) was read: only the first may start a document.
    seen_record: bool,
    /// The input read whole, and its first line, when its first record is not a complete value.
    document: Option<(u64, Vec<u8>)>,
    /// The input is read to its end.
    done: bool,
    text_capacity: usize,
}

impl LineReader {
    fn new(reader: Box<dyn BufRead>) -> Self {
        Self {
            reader,
            line_no: 0,
            long: Vec::new(),
            seen_record: false,
            document: None,
            done: false,
            text_capacity: 4096,
        }
    }

    /// The next chunk of up to `max_records` non-empty lines, in `spare`'s buffers if given;
    /// `None` at the end.
    fn next_chunk(
        &mut self,
        max_records: usize,
        spare: Option<Chunk>,
    ) -> io::Result<Option<Chunk>> {
        let mut chunk = match spare {
            Some(mut c) => {
                c.text.clear();
                c.records.clear();
                c
            }
            None => Chunk {
                text: Vec::with_capacity(self.text_capacity),
                records: Vec::with_capacity(max_records.min(1 << 16)),
            },
        };
        while !self.done && chunk.records.len() < max_records && chunk.text.len() < CHUNK_BYTES {
            let buffered = self.reader.fill_buf()?;
            if buffered.is_empty() {
                self.done = true;
                break;
            }
            // A whole line inside the reader's buffer is copied from where it lies; only a
            // line that runs past the buffer's end is read out into `long` first.
            let in_buffer = memchr::memchr(b'\n', buffered);
            if in_buffer.is_none() {
                self.long.clear();
                (&mut self.reader)
                    .take(MAX_LINE_BYTES as u64 + 1)
                    .read_until(b'\n', &mut self.long)?;
            }
            self.line_no += 1;
            if in_buffer.is_none()
                && self.long.len() > MAX_LINE_BYTES
                && self.long.last() != Some(&b'\n')
            {
                let skipped = skip_line(&mut self.reader)?;
                chunk
                    .records
                    .push((self.line_no, Err(self.long.len() + skipped)));
                self.seen_record = true;
                continue;
            }
            let whole: &[u8] = match in_buffer {
                Some(end) => &self.reader.fill_buf()?[..=end],
                None => &self.long,
            };
            let line = trim(whole);
            if !line.is_empty() && !self.seen_record && is_incomplete_json(line) {
                // A multi-line document: read the rest; the caller splits it into JSON values.
                let mut doc = whole.to_vec();
                if let Some(end) = in_buffer {
                    self.reader.consume(end + 1);
                }
                (&mut self.reader)
                    .take(MAX_DOCUMENT_BYTES as u64)
                    .read_to_end(&mut doc)?;
                self.document = Some((self.line_no, doc));
                self.done = true;
                break;
            }
            if !line.is_empty() {
                self.seen_record = true;
                let start = chunk.text.len();
                chunk.text.extend_from_slice(line);
                chunk
                    .records
                    .push((self.line_no, Ok(start..chunk.text.len())));
            }
            if let Some(end) = in_buffer {
                self.reader.consume(end + 1);
            }
        }
        self.text_capacity = self.text_capacity.max(chunk.text.len());
        Ok((!chunk.records.is_empty()).then_some(chunk))
    }
}

/// Turns records into batches, for one input (or one parsing thread of it).
struct Batcher {
    name: String,
    format: Format,
    batch_rows: usize,
    builder: EventBatchBuilder,
    events: Vec<Event>,
    summary: Summary,
    /// Format of the rows in `builder` (a batch holds one format, so counts stay per format).
    batch_format: Format,
    /// When this input was read: the time of inventory snapshots, which carry none.
    observed_at: i64,
}

/// Where a [`Batcher`] puts its batches and rejections.
type Emit<'a> = dyn FnMut(Output) -> Result<(), IngestError> + 'a;

impl Batcher {
    fn new(name: String, format: Format, batch_rows: usize, observed_at: i64) -> Self {
        Self {
            name,
            format,
            batch_rows,
            builder: EventBatchBuilder::with_capacity(batch_rows),
            events: Vec::new(),
            summary: Summary::new(),
            batch_format: format,
            observed_at,
        }
    }

    /// Parses a chunk's records and emits what they made, its last batch included.
    fn parse_chunk(&mut self, chunk: &Chunk, emit: &mut Emit<'_>) -> Result<(), IngestError> {
        for (line, record) in &chunk.records {
            match record {
                Ok(range) => self.record(*line, &chunk.text[range.clone()], emit)?,
                Err(bytes) => self.rejected(
                    self.format,
                    *line,
                    format!("line longer than {MAX_LINE_BYTES} bytes ({bytes} bytes)"),
                    None,
                    emit,
                )?,
            }
        }
        self.flush(emit)
    }

    fn record(&mut self, line: u64, record: &[u8], emit: &mut Emit<'_>) -> Result<(), IngestError> {
        let (fmt, result) = parse_record(self.format, record, self.observed_at, &mut self.events);
        match result {
            Ok(text) => {
                let raw = fmt.raw_is_record().then_some(text);
                if fmt != self.batch_format {
                    self.flush(emit)?;
                    self.batch_format = fmt;
                }
                let c = self.summary.entry(fmt.name()).or_default();
                c.records += 1;
                c.events += self.events.len() as u64;
                let events = std::mem::take(&mut self.events);
                for ev in &events {
                    self.builder.push_with_raw(ev, ev.raw.as_deref().or(raw));
                    if self.builder.len() >= self.batch_rows {
                        self.flush(emit)?;
                    }
                }
                self.events = events;
                self.events.clear();
                Ok(())
            }
            Err(reason) => {
                self.events.clear();
                self.rejected(fmt, line, reason, Some(record), emit)
            }
        }
    }

    fn rejected(
        &mut self,
        format: Format,
        line: u64,
        reason: String,
        record: Option<&[u8]>,
        emit: &mut Emit<'_>,
    ) -> Result<(), IngestError> {
        let c = self.summary.entry(format.name()).or_default();
        c.records += 1;
        c.rejected += 1;
        emit(Output::Reject(Rejection {
            path: self.name.clone(),
            line,
            reason,
            record: record.map(|r| String::from_utf8_lossy(r).into_owned()),
        }))
    }

    fn flush(&mut self, emit: &mut Emit<'_>) -> Result<(), IngestError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        emit(Output::Batch(self.batch_format, self.builder.finish()))
    }
}

/// Largest multi-line JSON input read as documents.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 30;

fn is_incomplete_json(line: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde::de::IgnoredAny>(line),
        Err(e) if e.is_eof()
    )
}

/// Splits a buffer into consecutive JSON values, reporting each with the line it starts on
/// (`first_line` is the buffer's first line). Stops at the first value that does not parse:
/// after broken JSON there is no reliable place to resume.
fn read_documents(
    doc: &[u8],
    first_line: u64,
    batcher: &mut Batcher,
    emit: &mut Emit<'_>,
) -> Result<(), IngestError> {
    let mut stream = serde_json::Deserializer::from_slice(doc).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0usize;
    let mut line = first_line;
    loop {
        // Skip whitespace to find where the next value starts (for its line number).
        while start < doc.len() && doc[start].is_ascii_whitespace() {
            if doc[start] == b'\n' {
                line += 1;
            }
            start += 1;
        }
        match stream.next() {
            None => return Ok(()),
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                batcher.record(line, &doc[start..end], emit)?;
                line += doc[start..end].iter().filter(|&&b| b == b'\n').count() as u64;
                start = end;
            }
            // Broken JSON: reject it (the parse names the position) and stop this input.
            Some(Err(_)) => return batcher.record(line, &doc[start..], emit),
        }
    }
}

/// Skips the rest of an oversized line without buffering it; returns the bytes skipped.
fn skip_line(reader: &mut dyn BufRead) -> io::Result<usize> {
    let mut skipped = 0usize;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(skipped);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(skipped + i + 1);
            }
            None => {
                let l = chunk.len();
                reader.consume(l);
                skipped += l;
            }
        }
    }
}

/// Parses one record in `format` (recognising it under `Auto`) into `out`; returns the format
/// it was read as, and the record as text. On an error `out` may hold part of the record's
/// events: the caller drops them (a record is stored whole or not at all).
pub fn parse_record<'r>(
    format: Format,
    record: &'r [u8],
    observed_at: i64,
    out: &mut Vec<Event>,
) -> (Format, Result<&'r str, String>) {
    let format = match format {
        Format::Auto => match detect(record) {
            Some(f) => f,
            None => {
                return (Format::Auto, Err(unrecognised(record)));
            }
        },
        f => f,
    };
    // Checked once here; the parsers take text.
    let Ok(text) = std::str::from_utf8(record) else {
        return (format, Err("invalid UTF-8".into()));
    };
    let result = match format {
        Format::Native => Event::from_native_json(text)
            .map(|ev| out.push(ev))
            .map_err(|e| e.to_string()),
        Format::K8sAudit => k8s_audit::parse(text, out),
        Format::Falco => falco::parse(text, out),
        Format::Tetragon => tetragon::parse(text, out),
        Format::Tracee => tracee::parse(text, out),
        Format::K8sObjects => k8s_objects::parse(text, observed_at, out),
        Format::Auto => unreachable!("resolved above"),
    };
    (format, result.map(|()| text))
}

fn unrecognised(record: &[u8]) -> String {
    match serde_json::from_slice::<serde::de::IgnoredAny>(record) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(_) => "unrecognised record: not a Kubernetes audit event, Falco alert, Tetragon or Tracee event, Kubernetes object list or native ktrail event".into(),
    }
}

/// Keys `detect` looks for, compiled once (building a searcher per record cost more than the
/// search).
struct Keys {
    ts: memchr::memmem::Finder<'static>,
    source: memchr::memmem::Finder<'static>,
    audit_id: memchr::memmem::Finder<'static>,
    event_list: memchr::memmem::Finder<'static>,
    output_fields: memchr::memmem::Finder<'static>,
    rule: memchr::memmem::Finder<'static>,
    priority: memchr::memmem::Finder<'static>,
    time: memchr::memmem::Finder<'static>,
    node_name: memchr::memmem::Finder<'static>,
    process: memchr::memmem::Finder<'static>,
    api_version: memchr::memmem::Finder<'static>,
    items: memchr::memmem::Finder<'static>,
    metadata: memchr::memmem::Finder<'static>,
    kind: memchr::memmem::Finder<'static>,
    event_name: memchr::memmem::Finder<'static>,
    process_id: memchr::memmem::Finder<'static>,
    workload: memchr::memmem::Finder<'static>,
    timestamp: memchr::memmem::Finder<'static>,
}

static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| {
    let f = memchr::memmem::Finder::new;
    Keys {
        ts: f("\"ts\":"),
        source: f("\"source\":"),
        audit_id: f("\"auditID\":"),
        event_list: f("\"kind\":\"EventList\""),
        output_fields: f("\"output_fields\":"),
        rule: f("\"rule\":"),
        priority: f("\"priority\":"),
        time: f("\"time\":"),
        node_name: f("\"node_name\":"),
        process: f("\"process\":"),
        api_version: f("\"apiVersion\""),
        items: f("\"items\""),
        metadata: f("\"metadata\""),
        kind: f("\"kind\":"),
        event_name: f("\"eventName\":"),
        process_id: f("\"processId\":"),
        workload: f("\"workload\":"),
        timestamp: f("\"timestamp\":"),
    }
});

/// Tetragon's event types as the first key of a line.
const TETRAGON_TYPES: [&str; 7] = [
    "process_exec",
    "process_exit",
    "process_kprobe",
    "process_tracepoint",
    "process_connect",
    "process_close",
    "process_listen",
];

/// Recognises a record's producer by its top-level keys (cheap byte search; nested JSON in a
/// string value is escaped, so its keys do not match).
fn detect(record: &[u8]) -> Option<Format> {
    let k = &*KEYS;
    let has = |f: &memchr::memmem::Finder<'_>| f.find(record).is_some();
    let tetragon_first_key = || {
        let r = record.trim_ascii_start();
        r.strip_prefix(b"{\"").is_some_and(|rest| {
            TETRAGON_TYPES.iter().any(|t| {
                rest.strip_prefix(t.as_bytes())
                    .is_some_and(|r| r.starts_with(b"\":"))
            })
        })
    };
    // Tetragon first: its lines start with the event type, so this needs no scan of the line.
    if tetragon_first_key() {
        Some(Format::Tetragon)
    } else if has(&k.ts) && has(&k.source) {
        Some(Format::Native)
    } else if has(&k.audit_id) || has(&k.event_list) {
        Some(Format::K8sAudit)
    } else if has(&k.output_fields) || (has(&k.rule) && has(&k.priority) && has(&k.time)) {
        Some(Format::Falco)
    } else if has(&k.node_name) && has(&k.process) {
        Some(Format::Tetragon)
    } else if has(&k.api_version) && (has(&k.items) || has(&k.metadata)) && has(&k.kind) {
        // `kubectl get -o json` output is pretty-printed (`"kind": "List"`).
        Some(Format::K8sObjects)
    } else if has(&k.timestamp) && ((has(&k.event_name) && has(&k.process_id)) || has(&k.workload))
    {
        // Tracee: legacy `trace.Event` or `v1beta1.Event`.
        Some(Format::Tracee)
    } else {
        None
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::arrow::array::AsArray;
    use model::arrow::datatypes::TimestampNanosecondType;
    use std::io::Write;
    use std::path::Path;

    fn read(content: &[u8], name: &str) -> (Vec<RecordBatch>, Vec<Rejection>, Summary) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        read_path(&path, Format::Auto)
    }

    fn read_path(path: &Path, format: Format) -> (Vec<RecordBatch>, Vec<Rejection>, Summary) {
        let mut batches = Vec::new();
        let mut rejections = Vec::new();
        let summary = read_input(
            &Input::File(path.to_path_buf()),
            format,
            2,
            &mut |_, b| {
                batches.push(b);
                Ok(())
            },
            &mut |r| rejections.push(r),
        )
        .unwrap();
        (batches, rejections, summary)
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
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
        let (batches, rejections, summary) = read(&content, "events.ndjson");
        assert_eq!(rows(&batches), 5);
        assert_eq!(batches.len(), 3, "batches of at most 2 rows");
        assert_eq!(
            summary["native"],
            Counts {
                records: 5,
                events: 5,
                rejected: 0
            }
        );
        assert_eq!(summary["auto"].rejected, 3);
        let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![6, 8, 9]);
        assert!(
            rejections[0]
                .to_string()
                .contains("events.ndjson:6: invalid JSON"),
            "{}",
            rejections[0]
        );
        assert!(
            rejections[1].reason.contains("unrecognised record"),
            "{}",
            rejections[1]
        );
    }

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/samples");

    #[test]
    fn every_audit_sample_ingests_and_the_malformed_one_is_refused() {
        let dir = Path::new(SAMPLES).join("k8s-audit");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.extend(
            std::fs::read_dir(dir.join("psp-traces"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
        assert!(files.len() >= 70, "{} sample files", files.len());
        let mut events = 0;
        for f in &files {
            let (batches, rejections, summary) = read_path(f, Format::Auto);
            if f.ends_with("fal_01_003.json") {
                assert_eq!(rejections.len(), 1);
                assert!(
                    rejections[0].reason.contains("unrecognised record"),
                    "{}",
                    rejections[0]
                );
                let (_, rejections, _) = read_path(f, Format::K8sAudit);
                assert_eq!(
                    rejections[0].reason,
                    "`kind` is 0, expected \"Event\" or \"EventList\""
                );
                continue;
            }
            assert!(rejections.is_empty(), "{}: {rejections:?}", f.display());
            assert_eq!(summary["k8s-audit"].rejected, 0);
            events += rows(&batches);
        }
        assert!(events >= 70);
    }

    #[test]
    fn audit_exec_lands_in_its_columns() {
        let path = Path::new(SAMPLES).join("k8s-audit/exec_pod.json");
        let (batches, _, _) = read_path(&path, Format::Auto);
        let b = &batches[0];
        let col = |c: &str| datafusion_display(b, c);
        assert_eq!(col("kind"), "k8s_audit");
        assert_eq!(col("k8s_user"), "minikube-user");
        assert_eq!(col("k8s_groups"), "[system:masters, system:authenticated]");
        assert_eq!(col("source_ip"), "192.168.99.1");
        assert_eq!(col("verb"), "create");
        assert_eq!(col("resource"), "pods");
        assert_eq!(col("subresource"), "exec");
        assert_eq!(col("namespace"), "default");
        assert_eq!(col("pod"), "nginx-deployment-7998647bdf-phvq7");
        assert_eq!(col("response_code"), "101");
        assert_eq!(col("stage"), "ResponseStarted");
        assert_eq!(col("ts"), "2018-10-26T13:38:34.867116Z");
        let uri = col("request_uri");
        assert_eq!(k8s_audit::query_values(&uri, "command"), vec!["bash"]);
        assert_eq!(
            k8s_audit::query_values(&uri, "container"),
            vec!["nginx1", "nginx1"]
        );
    }

    fn datafusion_display(b: &RecordBatch, column: &str) -> String {
        model::arrow::util::display::array_value_to_string(b.column_by_name(column).unwrap(), 0)
            .unwrap()
    }

    #[test]
    fn webhook_event_lists_and_log_lines_are_the_same_events() {
        let line = std::fs::read(Path::new(SAMPLES).join("k8s-audit/exec_pod.json")).unwrap();
        let item = std::str::from_utf8(&line).unwrap().trim();
        let list = format!(
            "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{item},{item}]}}"
        );
        let (from_list, rejections, summary) = read(list.as_bytes(), "list.json");
        assert!(rejections.is_empty());
        assert_eq!(
            summary["k8s-audit"],
            Counts {
                records: 1,
                events: 2,
                rejected: 0
            }
        );
        let (from_line, _, _) = read(&line, "line.json");
        assert_eq!(
            datafusion_display(&from_list[0], "event_id"),
            datafusion_display(&from_line[0], "event_id")
        );
    }

    #[test]
    fn falco_alerts_map_output_fields_and_keep_nanoseconds() {
        let alert = r#"{"hostname":"node-1","output":"10:00:00.123456789: Notice Unexpected connection (command=curl -s http://198.51.100.23 container_id=3ad7b26ded6d)","priority":"Notice","rule":"Unexpected outbound connection destination","source":"syscall","tags":["network","mitre_exfiltration"],"time":"2026-11-26T10:00:00.123456789Z","output_fields":{"container.id":"3ad7b26ded6d","container.image.repository":"docker.io/library/alpine","container.image.tag":"3.20","evt.time":1795687200123456789,"fd.sip":"198.51.100.23","fd.sport":80,"fd.cip":"10.244.1.33","fd.cport":41822,"fd.l4proto":"tcp","k8s.ns.name":"billing","k8s.pod.name":"invoice-api-7d9f-abc12","proc.cmdline":"curl -s http://198.51.100.23","proc.exepath":"/usr/bin/curl","proc.pid":4250,"user.uid":0}}"#;
        let old = r#"{"output":"old","priority":"Warning","rule":"Terminal shell in container","time":"2019-01-01T00:00:00.000000001Z","output_fields":{"proc.cmdline":"bash","container.id":"host"}}"#;
        let (batches, rejections, summary) =
            read(format!("{alert}\n{old}\n").as_bytes(), "falco.jsonl");
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(summary["falco"].events, 2);
        let b = &batches[0];
        assert_eq!(
            datafusion_display(b, "ts"),
            "2026-11-26T10:00:00.123456789Z"
        );
        assert_eq!(datafusion_display(b, "exe"), "/usr/bin/curl");
        assert_eq!(datafusion_display(b, "binary_name"), "curl");
        assert_eq!(datafusion_display(b, "args"), "-s http://198.51.100.23");
        assert_eq!(datafusion_display(b, "dst_ip"), "198.51.100.23");
        assert_eq!(datafusion_display(b, "dst_port"), "80");
        assert_eq!(
            datafusion_display(b, "image"),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(datafusion_display(b, "namespace"), "billing");
        assert_eq!(
            datafusion_display(b, "tags"),
            "[network, mitre_exfiltration]"
        );
        assert_eq!(datafusion_display(&batches[0], "node"), "node-1");
        assert_eq!(datafusion_display(&batches[0], "uid"), "0");
        assert_eq!(
            datafusion_display(&batches[0], "rule"),
            "Unexpected outbound connection destination"
        );
        // Old envelope: no hostname/source/tags; a host event has no container id.
        assert_eq!(datafusion_display(&batches[0], "kind"), "falco_alert");
    }

    #[test]
    fn tetragon_samples_ingest_with_lineage_and_pod_identity() {
        let (batches, rejections, summary) = read_path(
            &Path::new(SAMPLES).join("tetragon/testdata_events.jsonl"),
            Format::Auto,
        );
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(summary["tetragon"].events, 3);
        let b = &batches[0];
        assert_eq!(datafusion_display(b, "kind"), "process_exec");
        assert_eq!(datafusion_display(b, "exe"), "/usr/bin/netserver");
        assert_eq!(datafusion_display(b, "args"), "-D");
        assert_eq!(datafusion_display(b, "namespace"), "default");
        assert_eq!(datafusion_display(b, "pod"), "tiefighter");
        assert_eq!(
            datafusion_display(b, "container_id"),
            "19a02291e106ce6227b684197be232ea57c4e1a5ab2604a12608c325d701c7f4"
        );
        assert_eq!(
            datafusion_display(b, "parent_exe"),
            "/usr/bin/containerd-shim-runc-v2"
        );
        // This line has no top-level `time`: the process start time stands in.
        assert_eq!(
            datafusion_display(b, "ts"),
            "2022-10-18T03:16:18.273546829Z"
        );
        assert!(!datafusion_display(b, "exec_id").is_empty());
        assert!(!datafusion_display(b, "parent_exec_id").is_empty());

        // The docs' kprobe sample is a pretty-printed document.
        let (batches, rejections, _) = read_path(
            &Path::new(SAMPLES).join("tetragon/docs_filename-access_process_kprobe.json"),
            Format::Auto,
        );
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(datafusion_display(&batches[0], "kind"), "file_access");
        assert_eq!(datafusion_display(&batches[0], "exe"), "/bin/vi");
        assert_eq!(
            datafusion_display(&batches[0], "workload_name"),
            "file-access"
        );
    }

    /// Both Tracee samples are recognised by `auto` (the v1beta1 one is a pretty-printed
    /// document) and keep their record as `raw`.
    #[test]
    fn tracee_samples_ingest_by_auto() {
        for (file, exe) in [
            (
                "tracee/docs_output-options_sched_process_exec.legacy.json",
                "/usr/bin/exa",
            ),
            (
                "tracee/docs_event-structure_sched_process_exec.v1beta1.json",
                "/usr/bin/ls",
            ),
        ] {
            let path = Path::new(SAMPLES).join(file);
            let (batches, rejections, summary) = read_path(&path, Format::Auto);
            assert!(rejections.is_empty(), "{file}: {rejections:?}");
            assert_eq!(summary["tracee"].events, 1, "{file}");
            assert_eq!(datafusion_display(&batches[0], "source"), "tracee");
            assert_eq!(datafusion_display(&batches[0], "kind"), "process_exec");
            assert_eq!(datafusion_display(&batches[0], "exe"), exe);
            let raw = datafusion_display(&batches[0], "raw");
            let record = std::fs::read_to_string(&path).unwrap();
            assert_eq!(raw, record.trim(), "{file}");
        }
    }

    #[test]
    fn tetragon_network_kprobes_and_unknown_events() {
        let lines = [
            r#"{"process_kprobe":{"process":{"exec_id":"a","pid":7,"binary":"/usr/bin/curl","pod":{"namespace":"billing","name":"api","container":{"id":"containerd://c1"}}},"parent":{"exec_id":"p","pid":6,"binary":"/bin/sh"},"function_name":"tcp_connect","args":[{"sock_arg":{"family":"AF_INET","type":"SOCK_STREAM","protocol":"IPPROTO_TCP","saddr":"10.244.1.33","daddr":"198.51.100.23","sport":41822,"dport":80}}],"action":"KPROBE_ACTION_POST"},"node_name":"node-a","time":"2026-11-26T10:00:00.000000001Z"}"#,
            r#"{"process_kprobe":{"process":{"exec_id":"b","pid":9,"binary":"/usr/sbin/nginx"},"function_name":"inet_csk_accept","args":[{"sock_arg":{"protocol":"IPPROTO_TCP","saddr":"10.244.1.5","daddr":"10.244.2.9","sport":80,"dport":51000}}]},"node_name":"node-a","time":"2026-11-26T10:00:01Z"}"#,
            r#"{"process_connect":{"process":{"exec_id":"c","binary":"/bin/nc"},"source_ip":"10.0.0.1","source_port":1234,"destination_ip":"10.0.0.2","destination_port":443},"node_name":"n","time":"2026-11-26T10:00:02Z"}"#,
            r#"{"process_loader":{"process":{"exec_id":"d"}},"node_name":"n","time":"2026-11-26T10:00:03Z"}"#,
        ];
        let (batches, rejections, _) = read(lines.join("\n").as_bytes(), "tetragon.jsonl");
        assert!(rejections.is_empty(), "{rejections:?}");
        let all = model::arrow::compute::concat_batches(&model::events_schema(), &batches).unwrap();
        let col = |c: &str, row: usize| {
            model::arrow::util::display::array_value_to_string(all.column_by_name(c).unwrap(), row)
                .unwrap()
        };
        assert_eq!(
            (col("kind", 0), col("dst_ip", 0), col("dst_port", 0)),
            (
                "network_connect".into(),
                "198.51.100.23".into(),
                "80".into()
            )
        );
        assert_eq!(
            (
                col("protocol", 0),
                col("container_id", 0),
                col("parent_exe", 0)
            ),
            ("TCP".into(), "c1".into(), "/bin/sh".into())
        );
        assert_eq!(
            (
                col("kind", 1),
                col("src_ip", 1),
                col("dst_ip", 1),
                col("dst_port", 1)
            ),
            (
                "network_accept".into(),
                "10.244.2.9".into(),
                "10.244.1.5".into(),
                "80".into()
            )
        );
        assert_eq!(
            (col("kind", 2), col("dst_ip", 2)),
            ("network_connect".into(), "10.0.0.2".into())
        );
        assert_eq!(col("kind", 3), "other");
        assert!(col("raw", 3).contains("process_loader"));
    }

    #[test]
    fn pretty_printed_documents_are_read_whole() {
        let doc = "{\n  \"ts\": 1,\n  \"kind\": \"other\",\n  \"source\": \"x\"\n}\n{\n  \"ts\": 2,\n  \"kind\": \"other\",\n  \"source\": \"x\"\n}\n{\n  \"ts\": 3,\n";
        let (batches, rejections, _) = read(doc.as_bytes(), "doc.json");
        assert_eq!(rows(&batches), 2);
        assert_eq!(rejections.len(), 1);
        assert_eq!(rejections[0].line, 11);
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

    /// Many chunks on several parsing threads: batches, rejections and counts come out in the
    /// input's order, as one thread would give them.
    #[test]
    fn chunks_parsed_on_threads_come_out_in_order() {
        let mut content = Vec::new();
        let mut bad_lines = Vec::new();
        for i in 0..20_000u64 {
            if i % 997 == 0 {
                content.extend_from_slice(b"{\"kind\": 0}\n");
                bad_lines.push(i + 1);
            } else {
                writeln!(content, r#"{{"ts":{i},"kind":"other","source":"x"}}"#).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.ndjson.zst");
        std::fs::write(&path, zstd::encode_all(&content[..], 1).unwrap()).unwrap();
        let (mut batches, mut rejections) = (Vec::new(), Vec::new());
        let summary = read_input(
            &Input::File(path.clone()),
            Format::Native,
            64,
            &mut |_, b| {
                batches.push(b);
                Ok(())
            },
            &mut |r| rejections.push(r),
        )
        .unwrap();
        let ts: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let c = b.column(0).as_primitive::<TimestampNanosecondType>();
                c.values().to_vec()
            })
            .collect();
        let expected: Vec<i64> = (0..20_000i64).filter(|i| i % 997 != 0).collect();
        assert_eq!(ts, expected);
        assert!(batches.iter().all(|b| b.num_rows() <= 64));
        let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, bad_lines);
        let n = bad_lines.len() as u64;
        assert_eq!(
            summary["native"],
            Counts {
                records: 20_000,
                events: 20_000 - n,
                rejected: n,
            }
        );

        // A sink that fails stops the input with its reason; the threads wind down.
        let mut handed = 0;
        let e = read_input(
            &Input::File(path),
            Format::Native,
            64,
            &mut |_, _| {
                handed += 1;
                if handed == 5 {
                    Err("store full".into())
                } else {
                    Ok(())
                }
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("store full"), "{e}");
        assert_eq!(handed, 5);
    }

    /// A compressed input damaged past its first chunks: what was read before is handed on,
    /// then the error.
    #[test]
    fn a_read_error_ends_the_input_after_what_was_read() {
        let mut content = Vec::new();
        for i in 0..50_000u64 {
            writeln!(
                content,
                r#"{{"ts":{i},"kind":"other","source":"x","raw":"{i:0>64}"}}"#
            )
            .unwrap();
        }
        let mut zst = zstd::encode_all(&content[..], 1).unwrap();
        let cut = zst.len() * 3 / 4;
        zst.truncate(cut);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.ndjson.zst");
        std::fs::write(&path, &zst).unwrap();
        let mut rows = 0;
        let e = read_input(
            &Input::File(path),
            Format::Native,
            64,
            &mut |_, b| {
                rows += b.num_rows();
                Ok(())
            },
            &mut |r| panic!("no record is bad: {r}"),
        )
        .unwrap_err();
        assert!(matches!(e, IngestError::Io { .. }), "{e}");
        assert!(rows > 1000 && rows < 50_000, "{rows} rows handed on");
    }
}
