//! One request body: what `serve --http` stores before it answers.

use std::sync::Arc;

use ingest::{Format, Input, Rejection};
use parking_lot::Mutex;
use storage::Store;

use crate::{DeadLetter, LoadError};

/// What storing one body did.
#[derive(Debug, Default)]
pub struct BodyLoaded {
    /// Events stored now.
    pub accepted: u64,
    /// Events already stored.
    pub duplicates: u64,
    /// Records of the body (rejected ones included).
    pub records: u64,
    /// The records rejected, in order; each is in the dead-letter file too.
    pub rejections: Vec<Rejection>,
}

/// Parses `body` as `format` and stores its events; `name` is what rejections call the input
/// (`http:falco`). **When this returns `Ok`, every accepted event is durable** and every
/// rejection is synced to `dead_letter`.
pub fn load_body(
    store: &Store,
    name: String,
    format: Format,
    body: Arc<[u8]>,
    batch_rows: usize,
    dead_letter: &Mutex<DeadLetter>,
) -> Result<BodyLoaded, LoadError> {
    let input = Input::Memory { name, data: body };
    let mut loaded = BodyLoaded::default();
    let mut on_durable = |(), out: storage::AppendOutcome| {
        loaded.accepted += out.accepted as u64;
        loaded.duplicates += out.duplicates as u64;
    };
    let mut pipeline = storage::AppendPipeline::new(store, &mut on_durable);
    let mut sink = |_: Format, batch| pipeline.push((), batch).map_err(|e| e.to_string());
    let mut rejections = Vec::new();
    let mut reject = |r: Rejection| rejections.push(r);
    let summary = ingest::read_input(&input, format, batch_rows.max(1), &mut sink, &mut reject);
    // Answered only when every batch of the body is durable (or one failed).
    pipeline.finish()?;
    let summary = summary?;
    if !rejections.is_empty() {
        let mut dl = dead_letter.lock();
        for r in &rejections {
            tracing::warn!("{r}");
            dl.keep(r);
        }
        dl.finish()?;
    }
    loaded.records = summary.values().map(|c| c.records).sum();
    loaded.rejections = rejections;
    Ok(loaded)
}
