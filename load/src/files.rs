//! Files, directories and stdin: what `ktrail ingest` and the demo load.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::thread::{Scope, ScopedJoinHandle};

use ingest::{Format, IngestError, Input, Rejection};
use model::RecordBatch;
use storage::Store;

use crate::{Counts, DeadLetter, LoadError};

/// What loading a set of inputs did.
#[derive(Debug, Default)]
pub struct FilesLoaded {
    /// Per format read (`falco`, `k8s-audit`, ...).
    pub counts: BTreeMap<&'static str, Counts>,
    /// Inputs skipped: their fingerprint says they were loaded completely before.
    pub skipped_inputs: u64,
    /// Inputs that could not be hashed, opened or read to their end, with why; the others
    /// were loaded (and so was what a failed input held before its failure).
    pub failed_inputs: Vec<IngestError>,
}

/// Hears of a load as it goes (the command line prints; the demo draws a progress bar).
pub trait Progress {
    /// A batch of `rows` events was handed to the store.
    fn batch(&mut self, _rows: usize) {}
    /// A record was rejected (it is in the dead-letter file too).
    fn rejected(&mut self, _rejection: &Rejection) {}
}

/// No one listening.
impl Progress for () {}

/// Loads every input in order. **When this returns `Ok`, every accepted event is durable**
/// and every rejection is in `dead_letter` (synced). Inputs loaded completely before (same
/// SHA-256, recorded in the store) are skipped; an input that fails is named in
/// [`FilesLoaded::failed_inputs`] and the next one is read. A store failure stops the load.
pub fn load_inputs(
    store: &Store,
    inputs: &[Input],
    format: Format,
    batch_rows: usize,
    dead_letter: &mut DeadLetter,
    progress: &mut dyn Progress,
) -> Result<FilesLoaded, LoadError> {
    let mut loaded = FilesLoaded::default();
    let stored = std::thread::scope(|scope| {
        let mut load = Load {
            store,
            format,
            batch_rows: batch_rows.max(1),
            dead_letter: &mut *dead_letter,
            progress,
            loaded: &mut loaded,
        };
        inputs.iter().try_for_each(|input| load.one(scope, input))
    });
    // The rejections read before a store failure are synced too.
    let kept = dead_letter.finish();
    stored?;
    kept?;
    Ok(loaded)
}

/// The SHA-256 of an input, hashed on a thread of its own while the input is parsed: the
/// hash is a pass over every byte, and it was 17 % of the ingest thread's time when it ran
/// before the parse (`perf`, a native ingest).
struct Fingerprint<'scope> {
    hashing: Option<ScopedJoinHandle<'scope, FingerprintResult>>,
    result: Option<FingerprintResult>,
}

type FingerprintResult = Result<Option<String>, IngestError>;

/// What the fingerprint says about an input, once it is known.
enum Seen {
    /// Not hashed yet.
    Unknown,
    /// Loaded completely before: skip it.
    Before,
    /// New (or unhashable: stdin).
    New,
    /// The input could not be hashed.
    Failed,
}

impl Fingerprint<'_> {
    /// The verdict, waiting for the hash when `wait`.
    fn seen(&mut self, store: &Store, wait: bool) -> Seen {
        if self.result.is_none()
            && let Some(h) = self.hashing.take_if(|h| wait || h.is_finished())
        {
            self.result = Some(h.join().expect("the hashing thread does not panic"));
        }
        match &self.result {
            None => Seen::Unknown,
            Some(Ok(Some(fp))) if store.has_fingerprint(fp) => Seen::Before,
            Some(Ok(_)) => Seen::New,
            Some(Err(_)) => Seen::Failed,
        }
    }
}

struct Load<'a> {
    store: &'a Store,
    format: Format,
    batch_rows: usize,
    dead_letter: &'a mut DeadLetter,
    progress: &'a mut dyn Progress,
    loaded: &'a mut FilesLoaded,
}

impl Load<'_> {
    /// Loads one input. Its rejections are held back until its fingerprint is known, so an
    /// input skipped as loaded before reports nothing twice.
    fn one<'scope>(
        &mut self,
        scope: &'scope Scope<'scope, '_>,
        input: &'scope Input,
    ) -> Result<(), LoadError> {
        let store = self.store;
        let fingerprint = RefCell::new(Fingerprint {
            hashing: Some(scope.spawn(|| input.fingerprint())),
            result: None,
        });
        let held: RefCell<Vec<Rejection>> = Default::default();
        let reporting = RefCell::new((&mut *self.dead_letter, &mut *self.progress));
        let report = |r: &Rejection| {
            let (dead_letter, progress) = &mut *reporting.borrow_mut();
            progress.rejected(r);
            dead_letter.keep(r);
        };
        let mut appended: Vec<(&'static str, storage::AppendOutcome)> = Vec::new();
        let mut on_durable =
            |name: &'static str, out: storage::AppendOutcome| appended.push((name, out));
        let mut pipeline = storage::AppendPipeline::new(store, &mut on_durable);
        let mut sink = |fmt: Format, batch: RecordBatch| {
            match fingerprint.borrow_mut().seen(store, false) {
                // Stop reading; the verdict is taken again below.
                Seen::Before | Seen::Failed => return Err("stopped by its fingerprint".into()),
                Seen::New => held.borrow_mut().drain(..).for_each(|r| report(&r)),
                Seen::Unknown => {}
            }
            let rows = batch.num_rows();
            pipeline
                .push(fmt.name(), batch)
                .map_err(|e| e.to_string())?;
            reporting.borrow_mut().1.batch(rows);
            Ok(())
        };
        let mut reject = |r: Rejection| match fingerprint.borrow_mut().seen(store, false) {
            Seen::New => report(&r),
            _ => held.borrow_mut().push(r),
        };
        let read = ingest::read_input(input, self.format, self.batch_rows, &mut sink, &mut reject);
        // The input counts as loaded only once every batch read from it is durable.
        pipeline.finish()?;
        let mut fingerprint = fingerprint.into_inner();
        match fingerprint.seen(store, true) {
            Seen::Before => {
                // What was read before the hash was known is duplicates of what is stored.
                self.loaded.skipped_inputs += 1;
                return Ok(());
            }
            Seen::Failed => {
                held.into_inner().iter().for_each(report);
                if let Some(Err(e)) = fingerprint.result {
                    self.loaded.failed_inputs.push(e);
                }
                return Ok(());
            }
            Seen::New | Seen::Unknown => held.into_inner().iter().for_each(report),
        }
        for (name, out) in appended {
            let counts = self.loaded.counts.entry(name).or_default();
            counts.accepted += out.accepted as u64;
            counts.duplicates += out.duplicates as u64;
        }
        match read {
            Ok(summary) => {
                for (name, c) in summary {
                    self.loaded.counts.entry(name).or_default().rejected += c.rejected;
                }
                if let Some(Ok(Some(fp))) = &fingerprint.result {
                    store.record_fingerprint(fp)?;
                }
            }
            Err(e) => self.loaded.failed_inputs.push(e),
        }
        Ok(())
    }
}
