//! The write-ahead log: append-only files on local disk, written by one thread with group
//! commit.
//!
//! File: `wal/<first_seq:020>.wal` = header (`KTWAL\0\0\x01`, first sequence number as u64 LE),
//! then frames `[len u32][crc32c u32][seq u64][payload; len]`, all little-endian, the CRC over
//! `seq ‖ payload`. Sequence numbers increase by one across files.
//!
//! Contract: [`Wal::append`] (and [`Pending::wait`] after [`Wal::submit`]) returns only after
//! the record's bytes and every earlier record are on stable storage (`fdatasync`), and after
//! the [`DurableSink`] has seen the record; a record whose append returned an error may or may
//! not be replayed after a crash, exactly like any write that was never acknowledged. All
//! appenders that queue while a sync is running share the next one (group commit).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;

mod codec;
pub use codec::{decode_batch, encode_batch};

const MAGIC: &[u8; 8] = b"KTWAL\0\0\x01";
const FILE_HEADER: u64 = 16;
const FRAME_HEADER: usize = 16;
/// Larger frames are taken as damage, not data (a batch is far smaller).
const MAX_FRAME: u32 = 1 << 30;

/// Receives every record once it is durable, in sequence order, before its append returns.
pub type DurableSink<T> = Arc<dyn Fn(u64, T) + Send + Sync>;
/// Receives every record that was not written (its append returns an error), before its
/// append returns; the store un-reserves its event ids there, so a retry stores them.
pub type FailedSink<T> = Arc<dyn Fn(T) + Send + Sync>;

/// Tuning of the WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Start a new file once the current one is this large.
    pub max_file_bytes: u64,
    /// How long the writer waits for more appenders before syncing a group (0: sync at once;
    /// appenders that arrive during a sync still share the next one).
    pub group_commit_window: Duration,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: 128 << 20,
            group_commit_window: Duration::ZERO,
        }
    }
}

/// What opening the WAL found.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    /// Records handed to the replay callback (newer than the flushed sequence number).
    pub replayed: u64,
    /// Highest sequence number found on disk.
    pub last_seq: u64,
    /// A torn tail that was cut off: the file, the offset it was cut at, the bytes dropped.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
}

enum Cmd<T> {
    Append {
        payload: Vec<u8>,
        item: T,
        guard: Option<u64>,
        done: SyncSender<Result<u64>>,
    },
    /// Answers once every record submitted before it is durable: `Ok` unless a write failed
    /// after [`Wal::failures`] read `guard`.
    Barrier {
        guard: u64,
        done: SyncSender<Result<u64>>,
    },
    Rotate {
        done: SyncSender<Result<()>>,
    },
}

/// A record or a barrier of a group, answered when the group's write is.
enum Waiter<T> {
    Record {
        seq: u64,
        item: T,
        done: SyncSender<Result<u64>>,
    },
    Barrier {
        guard: u64,
        done: SyncSender<Result<u64>>,
    },
}

struct WalFile {
    first_seq: u64,
    path: PathBuf,
}

/// A record handed to the writer thread whose durability is not known yet.
#[must_use = "a record is acknowledged only when wait() returns"]
pub struct Pending(Receiver<Result<u64>>);

impl Pending {
    /// Blocks until the record is durable and returns its sequence number, or the error that
    /// kept it from being written (then it may or may not be replayed after a crash).
    pub fn wait(self) -> Result<u64> {
        self.0.recv().map_err(|_| StorageError::Closed)?
    }
}

/// Handle to the WAL's writer thread.
pub struct Wal<T: Send + 'static> {
    dir: PathBuf,
    tx: Option<Sender<Cmd<T>>>,
    thread: Option<JoinHandle<()>>,
    files: Arc<Mutex<WalFiles>>,
    health: Arc<Health>,
}

/// What the writer thread tells the other threads about failed writes.
#[derive(Default)]
struct Health {
    /// Records and barriers handed to the writer (their tickets are 1, 2, ...)…
    submitted: AtomicU64,
    /// …and how many of them it has answered (written or failed), in ticket order.
    processed: AtomicU64,
    /// Groups whose write or sync failed since the WAL was opened.
    failures: AtomicU64,
    /// Why the WAL refuses writes now (`None`: it takes them).
    refusing: Mutex<Option<StorageError>>,
}

/// The files on disk: closed ones oldest first, and where the active one starts.
struct WalFiles {
    closed: Vec<WalFile>,
    active_first_seq: u64,
}

impl<T: Send + 'static> Wal<T> {
    /// Opens (or creates) the WAL in `dir`: replays every record with a sequence number above
    /// `after_seq` through `replay`, cuts a torn tail off the last file, and fails with
    /// [`StorageError::Corruption`] on damage anywhere else.
    pub fn open(
        dir: &Path,
        after_seq: u64,
        options: WalOptions,
        sink: DurableSink<T>,
        failed: FailedSink<T>,
        mut replay: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<(Self, ReplayReport)> {
        fsutil::create_dir_durable(dir)?;
        let mut files = list_files(dir)?;
        // Trim deletes a file only once all its records are flushed, so the oldest file
        // starts at or before the first record not in a segment: a later start means records
        // the manifest does not hold are missing.
        if let Some(first) = files.first()
            && first.first_seq > after_seq + 1
        {
            return Err(StorageError::Corruption {
                path: first.path.clone(),
                offset: 8,
                reason: format!(
                    "the WAL starts at record {}, but the manifest holds records up to {after_seq} only: records {}..{} are missing",
                    first.first_seq,
                    after_seq + 1,
                    first.first_seq - 1
                ),
            });
        }
        let mut report = ReplayReport {
            last_seq: after_seq,
            ..Default::default()
        };
        let n = files.len();
        let mut expected: Option<u64> = None;
        let mut drop_last = false;
        for (i, f) in files.iter().enumerate() {
            let is_last = i + 1 == n;
            let outcome = replay_file(f, is_last, after_seq, &mut expected, &mut |s, p| {
                report.replayed += 1;
                replay(s, p)
            })?;
            match outcome {
                FileOutcome::Complete => {}
                FileOutcome::Torn { offset, dropped } => {
                    tracing::warn!(path = %f.path.display(), offset, dropped, "WAL torn tail cut off");
                    report.torn_tail = Some((f.path.clone(), offset, dropped));
                    if offset < FILE_HEADER {
                        drop_last = true;
                    } else {
                        let file = OpenOptions::new().write(true).open(&f.path).at(&f.path)?;
                        file.set_len(offset).at(&f.path)?;
                        file.sync_all().at(&f.path)?;
                    }
                }
            }
        }
        if drop_last {
            let f = files.pop().expect("torn file exists");
            fs::remove_file(&f.path).at(&f.path)?;
            fsutil::sync_dir(dir)?;
        }
        let next_seq = expected.unwrap_or(after_seq + 1).max(after_seq + 1);
        report.last_seq = next_seq - 1;
        // A file holding no records (header only) is replaced by the new active file.
        files.retain(|f| f.first_seq < next_seq);

        // Always start a fresh active file: simpler than appending after a possibly cut tail.
        let active = create_file(dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Mutex::new(WalFiles {
            closed: files,
            active_first_seq: next_seq,
        }));
        let health = Arc::new(Health::default());
        let writer = Writer {
            health: health.clone(),
            failed,
            dir: dir.to_path_buf(),
            file: active.0,
            file_len: FILE_HEADER,
            file_first_seq: next_seq,
            next_seq,
            options,
            sink,
            files: shared.clone(),
            poisoned: None,
        };
        let thread = std::thread::Builder::new()
            .name("ktrail-wal".into())
            .spawn(move || writer.run(rx))
            .at(dir)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                tx: Some(tx),
                thread: Some(thread),
                files: shared,
                health,
            },
            report,
        ))
    }

    /// Appends one record; returns its sequence number once it is durable (see module docs).
    pub fn append(&self, payload: Vec<u8>, item: T) -> Result<u64> {
        self.submit(payload, item)?.wait()
    }

    /// Hands one record to the writer and returns without waiting for it: the record is
    /// durable (and acknowledged) only when [`Pending::wait`] returns its sequence number.
    /// Records are written in the order they are submitted, so waiting for one also means
    /// every record submitted before it is durable.
    pub fn submit(&self, payload: Vec<u8>, item: T) -> Result<Pending> {
        self.submit_guarded(payload, item, None)
    }

    /// [`submit`](Self::submit), but the record is not written (its wait fails with
    /// [`StorageError::EarlierWriteFailed`]) when a write failed after [`failures`](Self::failures)
    /// returned `guard`: the caller counted on records submitted before it becoming durable.
    pub fn submit_guarded(&self, payload: Vec<u8>, item: T, guard: Option<u64>) -> Result<Pending> {
        let (done, rx) = mpsc::sync_channel(1);
        self.send(Cmd::Append {
            payload,
            item,
            guard,
            done,
        })?;
        Ok(Pending(rx))
    }

    /// Waits (through [`Pending::wait`]) until every record submitted so far is durable; it
    /// fails when a write failed after [`failures`](Self::failures) returned `guard`.
    pub fn barrier(&self, guard: u64) -> Result<Pending> {
        let (done, rx) = mpsc::sync_channel(1);
        self.send(Cmd::Barrier { guard, done })?;
        Ok(Pending(rx))
    }

    /// How many writes failed since the WAL was opened.
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::SeqCst)
    }

    /// Why the WAL refuses writes now: the last write failed for want of space (it takes
    /// writes again as soon as one succeeds) or it is poisoned (until reopened).
    pub fn refusing(&self) -> Option<String> {
        self.health.refusing.lock().as_ref().map(|e| e.to_string())
    }

    /// Closes the active file and starts a new one, so that everything appended so far lies in
    /// closed files that [`trim`](Self::trim) can delete once flushed.
    pub fn rotate(&self) -> Result<()> {
        let (done, rx) = mpsc::sync_channel(1);
        self.send(Cmd::Rotate { done })?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// Deletes closed files whose records all have sequence numbers ≤ `flushed_seq`.
    pub fn trim(&self, flushed_seq: u64) -> Result<usize> {
        let mut files = self.files.lock();
        let mut removed = 0;
        // A closed file's records end where the next file (closed or active) begins.
        while let Some(first) = files.closed.first() {
            let end = files
                .closed
                .get(1)
                .map_or(files.active_first_seq, |f| f.first_seq);
            if end - 1 > flushed_seq {
                break;
            }
            let path = first.path.clone();
            fsutil::fault_point("wal.trim")
                .and_then(|()| fs::remove_file(&path))
                .at(&path)?;
            files.closed.remove(0);
            removed += 1;
        }
        if removed > 0 {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Number of WAL files on disk (closed + active).
    pub fn file_count(&self) -> usize {
        self.files.lock().closed.len() + 1
    }

    fn send(&self, cmd: Cmd<T>) -> Result<()> {
        let counted = !matches!(cmd, Cmd::Rotate { .. });
        self.tx
            .as_ref()
            .ok_or(StorageError::Closed)?
            .send(cmd)
            .map_err(|_| StorageError::Closed)?;
        if counted {
            self.health.submitted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Records and barriers submitted so far. With submissions serialised by the caller,
    /// the next one gets ticket `submitted() + 1`.
    pub fn submitted(&self) -> u64 {
        self.health.submitted.load(Ordering::SeqCst)
    }

    /// Records and barriers answered so far (written or failed): every ticket up to this is
    /// settled.
    pub fn processed(&self) -> u64 {
        self.health.processed.load(Ordering::SeqCst)
    }
}

impl<T: Send + 'static> Drop for Wal<T> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer<T> {
    dir: PathBuf,
    file: File,
    file_len: u64,
    file_first_seq: u64,
    next_seq: u64,
    options: WalOptions,
    sink: DurableSink<T>,
    failed: FailedSink<T>,
    files: Arc<Mutex<WalFiles>>,
    health: Arc<Health>,
    /// Set after a failure that leaves the file's state unknown (fsyncgate): refuse every
    /// write until the WAL is reopened.
    poisoned: Option<String>,
}

impl<T> Writer<T> {
    fn run(mut self, rx: Receiver<Cmd<T>>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let deadline = Instant::now() + self.options.group_commit_window;
            loop {
                while let Ok(c) = rx.try_recv() {
                    group.push(c);
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            self.process(group);
        }
        let _ = self.file.sync_data();
    }

    /// Writes the appends of a group (up to each rotate) with one write and one fdatasync.
    fn process(&mut self, group: Vec<Cmd<T>>) {
        let mut waiters: Vec<Waiter<T>> = Vec::new();
        let mut records = 0u64;
        let mut buf = Vec::new();
        for cmd in group {
            match cmd {
                Cmd::Append {
                    payload,
                    item,
                    guard,
                    done,
                } => {
                    if let Err(e) = self.check_guard(guard) {
                        (self.failed)(item);
                        self.health.processed.fetch_add(1, Ordering::SeqCst);
                        let _ = done.send(Err(e));
                        continue;
                    }
                    let seq = self.next_seq + records;
                    records += 1;
                    frame(&mut buf, seq, &payload);
                    waiters.push(Waiter::Record { seq, item, done });
                }
                Cmd::Barrier { guard, done } => waiters.push(Waiter::Barrier { guard, done }),
                Cmd::Rotate { done } => {
                    self.commit(&mut buf, &mut waiters, records);
                    records = 0;
                    let r = self.check_poison().and_then(|()| self.rotate());
                    let _ = done.send(r);
                }
            }
        }
        self.commit(&mut buf, &mut waiters, records);
        if self.file_len >= self.options.max_file_bytes
            && self.poisoned.is_none()
            && let Err(e) = self.rotate()
        {
            // The active file grows on; the next group tries again.
            tracing::warn!(error = %e, "could not start a new WAL file");
        }
    }

    fn check_guard(&self, guard: Option<u64>) -> Result<()> {
        match guard {
            Some(g) if self.health.failures.load(Ordering::SeqCst) > g => {
                Err(StorageError::EarlierWriteFailed)
            }
            _ => Ok(()),
        }
    }

    fn commit(&mut self, buf: &mut Vec<u8>, waiters: &mut Vec<Waiter<T>>, records: u64) {
        if waiters.is_empty() {
            return;
        }
        let written = buf.len() as u64;
        let result = self.check_poison().and_then(|()| {
            if records == 0 {
                return Ok(());
            }
            let path = self.path();
            fsutil::fault_point("wal.write")
                .and_then(|()| self.file.write_all(buf))
                .at(&path)?;
            fsutil::fault_point("wal.sync")
                .and_then(|()| self.file.sync_data())
                .at(&path)
        });
        buf.clear();
        match result {
            Ok(()) => {
                self.file_len += written;
                self.next_seq += records;
                if records > 0 {
                    // A write fitted: space is back (a barrier alone proves nothing).
                    *self.health.refusing.lock() = None;
                }
                let failures = self.health.failures.load(Ordering::SeqCst);
                for w in waiters.drain(..) {
                    // Counted as processed only once the memtable holds the record.
                    match w {
                        Waiter::Record { seq, item, done } => {
                            (self.sink)(seq, item);
                            self.health.processed.fetch_add(1, Ordering::SeqCst);
                            let _ = done.send(Ok(seq));
                        }
                        Waiter::Barrier { guard, done } => {
                            self.health.processed.fetch_add(1, Ordering::SeqCst);
                            let r = if failures > guard {
                                Err(StorageError::EarlierWriteFailed)
                            } else {
                                Ok(self.next_seq - 1)
                            };
                            let _ = done.send(r);
                        }
                    }
                }
            }
            Err(e) => {
                let e = match e {
                    e @ StorageError::Poisoned(_) => e,
                    e => self.recover(e),
                };
                self.health.failures.fetch_add(1, Ordering::SeqCst);
                *self.health.refusing.lock() = Some(e.duplicate());
                for w in waiters.drain(..) {
                    let done = match w {
                        Waiter::Record { item, done, .. } => {
                            (self.failed)(item);
                            done
                        }
                        Waiter::Barrier { done, .. } => done,
                    };
                    self.health.processed.fetch_add(1, Ordering::SeqCst);
                    let _ = done.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// After a failed write or sync: cuts the active file back to its last durable length.
    /// For want of space ([`StorageError::NoSpace`]) the WAL then takes writes again (the
    /// failed group's bytes are gone, so nothing unacknowledged can be replayed in front of
    /// later records); any other failure, or a failed cut, poisons it: after a failed fsync
    /// the file's state is unknown (fsyncgate).
    fn recover(&mut self, e: StorageError) -> StorageError {
        let no_space = e.is_no_space();
        let path = self.path();
        let cut = self
            .file
            .set_len(self.file_len)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.file_len)).map(|_| ()))
            .and_then(|()| self.file.sync_all());
        match (no_space, cut) {
            (true, Ok(())) => {
                tracing::warn!(error = %e, "WAL write failed for want of space; writes resume when there is room");
                e.into_no_space()
            }
            (_, cut) => {
                let mut msg = e.to_string();
                if let Err(c) = cut {
                    msg = format!("{msg}; cutting {} back failed too: {c}", path.display());
                }
                tracing::error!(error = %msg, "WAL write failed; store is now read-only");
                self.poisoned = Some(msg.clone());
                StorageError::Poisoned(msg)
            }
        }
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(m) => Err(StorageError::Poisoned(m.clone())),
            None => Ok(()),
        }
    }

    fn path(&self) -> PathBuf {
        file_path(&self.dir, self.file_first_seq)
    }

    fn rotate(&mut self) -> Result<()> {
        if self.next_seq == self.file_first_seq {
            return Ok(()); // the active file is empty
        }
        let (file, _) = create_file(&self.dir, self.next_seq).inspect_err(|_| {
            // Half made (no room for its header, say): a file of this process's own that
            // holds no record; left, it would claim the sequence numbers still appended to
            // the active file.
            let _ = fs::remove_file(file_path(&self.dir, self.next_seq));
        })?;
        let mut files = self.files.lock();
        files.closed.push(WalFile {
            first_seq: self.file_first_seq,
            path: self.path(),
        });
        files.active_first_seq = self.next_seq;
        drop(files);
        self.file = file;
        self.file_len = FILE_HEADER;
        self.file_first_seq = self.next_seq;
        Ok(())
    }
}

fn frame(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("WAL payload below 4 GiB");
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

fn file_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn create_file(dir: &Path, first_seq: u64) -> Result<(File, PathBuf)> {
    let path = file_path(dir, first_seq);
    fsutil::fault_point("wal.create").at(&path)?;
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .at(&path)?;
    let mut header = Vec::with_capacity(FILE_HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&first_seq.to_le_bytes());
    f.write_all(&header).at(&path)?;
    f.sync_all().at(&path)?;
    fsutil::sync_dir(dir)?;
    Ok((f, path))
}

/// The first sequence number of the oldest WAL file in `dir` (`None`: no file, or no `dir`).
pub fn first_seq_on_disk(dir: &Path) -> Result<Option<u64>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(list_files(dir)?.first().map(|f| f.first_seq))
}

fn list_files(dir: &Path) -> Result<Vec<WalFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(first_seq) = stem.parse::<u64>()
        {
            files.push(WalFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    files.sort_by_key(|f| f.first_seq);
    Ok(files)
}

enum FileOutcome {
    Complete,
    Torn { offset: u64, dropped: u64 },
}

fn replay_file(
    f: &WalFile,
    is_last: bool,
    after_seq: u64,
    expected: &mut Option<u64>,
    replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<FileOutcome> {
    let mut file = File::open(&f.path).at(&f.path)?;
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(0)).at(&f.path)?;
    file.read_to_end(&mut data).at(&f.path)?;
    replay_data(f, &data, is_last, after_seq, expected, replay)
}

/// Reads one WAL file's bytes as [`Wal::open`] does (`first_seq` is what its name says),
/// handing each record after `after_seq` to `replay`; a torn tail is accepted when `is_last`.
/// The fuzz targets' door: they have bytes, not files.
pub fn replay_bytes(
    path: &Path,
    first_seq: u64,
    data: &[u8],
    is_last: bool,
    after_seq: u64,
    replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let f = WalFile {
        first_seq,
        path: path.to_path_buf(),
    };
    replay_data(&f, data, is_last, after_seq, &mut None, replay).map(|_| ())
}

fn replay_data(
    f: &WalFile,
    data: &[u8],
    is_last: bool,
    after_seq: u64,
    expected: &mut Option<u64>,
    replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<FileOutcome> {
    let len = data.len() as u64;
    let corrupt = |offset: u64, reason: String| StorageError::Corruption {
        path: f.path.clone(),
        offset,
        reason,
    };
    // A crash cuts the last write short: nothing whole follows a torn frame. A whole frame
    // after the damage was written by a later, synced write, so the damage is corruption,
    // whatever its length field claims.
    let torn_or_corrupt = |offset: u64, reason: String| {
        if is_last && whole_frame_after(data, offset + 1).is_none() {
            Ok(FileOutcome::Torn {
                offset,
                dropped: len - offset,
            })
        } else {
            Err(corrupt(offset, reason))
        }
    };
    if len < FILE_HEADER || data[..8] != MAGIC[..] {
        if len < FILE_HEADER && is_last {
            return Ok(FileOutcome::Torn {
                offset: 0,
                dropped: len,
            });
        }
        return Err(corrupt(0, "missing WAL file header".into()));
    }
    let header_seq = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if header_seq != f.first_seq {
        return Err(corrupt(
            8,
            format!(
                "header says first seq {header_seq}, name says {}",
                f.first_seq
            ),
        ));
    }
    if let Some(e) = *expected
        && f.first_seq != e
    {
        return Err(corrupt(
            8,
            format!("sequence gap: file starts at {}, expected {e}", f.first_seq),
        ));
    }
    let mut off = FILE_HEADER;
    let mut seq_expected = f.first_seq;
    while off < len {
        // Replay continues after this file at the first sequence number not read.
        *expected = Some(seq_expected);
        if len - off < FRAME_HEADER as u64 {
            return torn_or_corrupt(off, "truncated frame header".into());
        }
        let h = &data[off as usize..off as usize + FRAME_HEADER];
        let flen = u32::from_le_bytes(h[0..4].try_into().expect("4"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4"));
        let seq = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        let end = off + FRAME_HEADER as u64 + u64::from(flen);
        if flen > MAX_FRAME || end > len {
            return torn_or_corrupt(off, format!("frame length {flen} runs past the end"));
        }
        let payload = &data[off as usize + FRAME_HEADER..end as usize];
        let actual = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
        if actual != crc {
            return torn_or_corrupt(off, "frame checksum mismatch".into());
        }
        if seq != seq_expected {
            return Err(corrupt(
                off,
                format!("sequence {seq} where {seq_expected} was expected"),
            ));
        }
        if seq > after_seq {
            replay(seq, payload)?;
        }
        seq_expected += 1;
        off = end;
    }
    *expected = Some(seq_expected);
    Ok(FileOutcome::Complete)
}

/// The offset of the first whole frame (its checksum right) at or after `from`, if any.
fn whole_frame_after(data: &[u8], from: u64) -> Option<u64> {
    let header = FRAME_HEADER;
    let last = data.len().checked_sub(header)?;
    (from as usize..=last).find_map(|off| {
        let h = &data[off..off + header];
        let flen = u32::from_le_bytes(h[0..4].try_into().expect("4")) as usize;
        let end = off.checked_add(header)?.checked_add(flen)?;
        if flen as u64 > u64::from(MAX_FRAME) || end > data.len() {
            return None;
        }
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4"));
        let actual = crc32c::crc32c_append(crc32c::crc32c(&h[8..16]), &data[off + header..end]);
        (actual == crc).then_some(off as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Replayed = Vec<(u64, Vec<u8>)>;

    fn open(dir: &Path, after: u64) -> Result<(Wal<()>, ReplayReport, Replayed)> {
        let mut seen = Vec::new();
        let (wal, report) = Wal::open(
            dir,
            after,
            WalOptions::default(),
            Arc::new(|_, ()| {}),
            Arc::new(|()| {}),
            |s, p| {
                seen.push((s, p.to_vec()));
                Ok(())
            },
        )?;
        Ok((wal, report, seen))
    }

    /// A WAL of one file holding five records of 1 000 bytes, and that file.
    fn five_frames_of_1000_bytes() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(dir.path(), 0).unwrap();
            for i in 0..5u8 {
                wal.append(vec![i; 1000], ()).unwrap();
            }
        }
        let path = only_file(dir.path());
        (dir, path)
    }

    fn only_file(dir: &Path) -> PathBuf {
        let mut files = list_files(dir).unwrap();
        files.retain(|f| fs::metadata(&f.path).unwrap().len() > FILE_HEADER);
        assert_eq!(files.len(), 1);
        files.remove(0).path
    }

    #[test]
    fn appends_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, seen) = open(dir.path(), 0).unwrap();
            assert!(seen.is_empty());
            for i in 0..10u8 {
                assert_eq!(wal.append(vec![i; 100], ()).unwrap(), u64::from(i) + 1);
            }
        }
        let (wal, report, seen) = open(dir.path(), 3).unwrap();
        assert_eq!(report.replayed, 7);
        assert_eq!(seen.first().unwrap(), &(4, vec![3u8; 100]));
        assert_eq!(wal.append(vec![], ()).unwrap(), 11);
    }

    #[test]
    fn torn_tail_is_cut_and_reported() {
        let (dir, path) = five_frames_of_1000_bytes();
        let full = fs::metadata(&path).unwrap().len();
        // Cut in the middle of the last frame, as a crash during write leaves it.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - 300)
            .unwrap();
        let (wal, report, seen) = open(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 4);
        let (p, offset, dropped) = report.torn_tail.clone().unwrap();
        assert_eq!(p, path);
        assert_eq!(offset, full - (FRAME_HEADER as u64 + 1000));
        assert_eq!(dropped, 1000 + FRAME_HEADER as u64 - 300);
        assert_eq!(wal.append(vec![9], ()).unwrap(), 5);
        drop(wal);
        let (_, report, seen) = open(dir.path(), 0).unwrap();
        assert!(report.torn_tail.is_none());
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[4], (5, vec![9]));
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_offset() {
        let (dir, path) = five_frames_of_1000_bytes();
        let mut bytes = fs::read(&path).unwrap();
        let second_frame = FILE_HEADER as usize + FRAME_HEADER + 1000;
        bytes[second_frame + FRAME_HEADER + 10] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = open(dir.path(), 0)
            .err()
            .expect("corruption must fail the open");
        match err {
            StorageError::Corruption {
                path: p, offset, ..
            } => {
                assert_eq!(p, path);
                assert_eq!(offset, second_frame as u64);
            }
            other => panic!("expected corruption, got {other}"),
        }
        assert!(err_text(dir.path()).contains(&format!("offset {second_frame}")));
    }

    #[test]
    fn damage_to_a_length_field_with_frames_after_it_fails_the_open() {
        let (dir, path) = five_frames_of_1000_bytes();
        let mut bytes = fs::read(&path).unwrap();
        // The second frame's length now runs past the end of the file: the three synced
        // frames after it must not be taken for a torn tail.
        let second_frame = FILE_HEADER as usize + FRAME_HEADER + 1000;
        bytes[second_frame + 3] = 0x7f;
        fs::write(&path, &bytes).unwrap();
        match open(dir.path(), 0)
            .err()
            .expect("damage must fail the open")
        {
            StorageError::Corruption {
                path: p, offset, ..
            } => {
                assert_eq!(p, path);
                assert_eq!(offset, second_frame as u64);
            }
            other => panic!("expected corruption, got {other}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "the damaged file is kept as it is"
        );
    }

    #[test]
    fn a_wal_starting_after_the_flushed_sequence_is_missing_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = open(dir.path(), 0).unwrap();
            for _ in 0..3 {
                wal.append(vec![1; 10], ()).unwrap();
            }
            wal.rotate().unwrap();
            wal.append(vec![2; 10], ()).unwrap();
        }
        // The first file (records 1..=3) is gone, but only record 1 was flushed.
        let first = list_files(dir.path()).unwrap().remove(0).path;
        fs::remove_file(&first).unwrap();
        let err = open(dir.path(), 1)
            .err()
            .expect("missing records must fail the open");
        assert!(
            matches!(err, StorageError::Corruption { .. })
                && err.to_string().contains("records 2..3 are missing"),
            "{err}"
        );
        // Flushed up to 3, nothing is missing.
        let (_, _, seen) = open(dir.path(), 3).unwrap();
        assert_eq!(seen, vec![(4, vec![2; 10])]);
    }

    fn err_text(dir: &Path) -> String {
        open(dir, 0).err().unwrap().to_string()
    }

    #[test]
    fn reopening_with_an_empty_active_file_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..3u64 {
            let (wal, _, seen) = open(dir.path(), round).unwrap();
            assert!(seen.is_empty());
            assert_eq!(wal.append(vec![1], ()).unwrap(), round + 1);
            wal.rotate().unwrap();
            assert_eq!(wal.trim(round + 1).unwrap(), 1);
        }
        let (wal, _, _) = open(dir.path(), 3).unwrap();
        assert_eq!(wal.file_count(), 1);
        assert_eq!(wal.append(vec![1], ()).unwrap(), 4);
    }

    #[test]
    fn rotate_and_trim_delete_only_flushed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path(), 0).unwrap();
        for _ in 0..3 {
            wal.append(vec![1; 10], ()).unwrap();
        }
        wal.rotate().unwrap();
        for _ in 0..3 {
            wal.append(vec![2; 10], ()).unwrap();
        }
        wal.rotate().unwrap();
        assert_eq!(wal.file_count(), 3);
        assert_eq!(wal.trim(2).unwrap(), 0, "file 1..=3 is not fully flushed");
        assert_eq!(wal.trim(3).unwrap(), 1);
        assert_eq!(wal.trim(6).unwrap(), 1);
        drop(wal);
        let (_, report, seen) = open(dir.path(), 6).unwrap();
        assert!(seen.is_empty());
        assert_eq!(report.last_seq, 6);
    }

    #[test]
    fn concurrent_appenders_share_syncs_and_every_ack_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let sunk = Arc::new(AtomicU64::new(0));
        let s2 = sunk.clone();
        let (wal, _) = Wal::open(
            dir.path(),
            0,
            WalOptions::default(),
            Arc::new(move |_, ()| {
                s2.fetch_add(1, Ordering::SeqCst);
            }),
            Arc::new(|()| {}),
            |_, _| Ok(()),
        )
        .unwrap();
        let wal = Arc::new(wal);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| wal.append(vec![t, i], ()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        assert_eq!(sunk.load(Ordering::SeqCst), 400);
        drop(wal);
        let (_, _, seen) = open(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 400);
    }
}
