//! Reading one input: lines (or multi-line JSON documents) split into chunks, parsed on up
//! to four threads, batched by format and handed on in the input's order.

use std::io::{self, BufRead, Read};

use model::{Event, EventBatchBuilder, RecordBatch};

use crate::{Format, IngestError, Input, MAX_LINE_BYTES, Rejection, Summary, parse_record};

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
