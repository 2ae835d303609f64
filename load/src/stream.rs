//! A stream of batches a client built: what `serve --grpc` stores before it acks.

use model::RecordBatch;
use storage::Store;

use crate::Counts;

/// What storing a stream did.
#[derive(Debug, Default)]
pub struct StreamLoaded {
    pub counts: Counts,
    /// The first of the rejections (`batch N: reason`); `counts.rejected` counts them all.
    pub errors: Vec<String>,
}

/// A stream's next message: a batch (or nothing, when all of it was rejected) and the
/// reasons its bad events were left out.
pub struct Message {
    pub batch: Option<RecordBatch>,
    pub rejected: Vec<String>,
}

/// How a stream load stopped: the store refused, or the stream's source failed (`E`).
#[derive(Debug)]
pub enum StreamError<E> {
    Store(storage::StorageError),
    Source(E),
}

/// Stores the batches `next` yields until it yields `None`, naming at most `max_errors`
/// rejections. **When this returns `Ok`, every accepted event is durable.** Blocking: `next`
/// may wait for the network (an async caller runs this on a blocking thread).
pub fn load_stream<E>(
    store: &Store,
    max_errors: usize,
    next: &mut dyn FnMut() -> Result<Option<Message>, E>,
) -> Result<StreamLoaded, StreamError<E>> {
    let mut loaded = StreamLoaded::default();
    let mut durable = Counts::default();
    let mut on_durable = |(), out: storage::AppendOutcome| {
        durable.accepted += out.accepted as u64;
        durable.duplicates += out.duplicates as u64;
    };
    let mut pipeline = storage::AppendPipeline::new(store, &mut on_durable);
    let mut n = 0u64;
    while let Some(message) = next().map_err(StreamError::Source)? {
        n += 1;
        loaded.counts.rejected += message.rejected.len() as u64;
        for e in message.rejected {
            if loaded.errors.len() < max_errors {
                loaded.errors.push(format!("batch {n}: {e}"));
            }
        }
        if let Some(batch) = message.batch
            && pipeline.push((), batch).is_err()
        {
            break;
        }
    }
    pipeline.finish().map_err(StreamError::Store)?;
    loaded.counts.accepted = durable.accepted;
    loaded.counts.duplicates = durable.duplicates;
    Ok(loaded)
}
