//! The WAL's payload codec for the store's records: one Arrow IPC stream of one batch of
//! `events`, zstd-compressed or not. Decoding is the only reader of these bytes from disk, so
//! it refuses (never panics on, never over-allocates for) a damaged payload.

use std::io::{Read, Write};
use std::path::PathBuf;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::error::{Result, StorageError};

/// WAL payload: one codec byte, then an Arrow IPC stream of one batch: as it is (0), or as
/// one zstd frame after its length as a little-endian `u64` (1).
///
/// The compressed form is compressed while the IPC stream is written, through zstd's small
/// window: building the whole stream first and compressing it after put a batch-sized buffer
/// (14 MB for 8 192 Tetragon events) through regrowth and fresh page faults for every batch,
/// 10 % of durable Tetragon ingest (perf, `ingest_durable/tetragon_generated`).
pub fn encode_batch(batch: &RecordBatch, zstd_level: i32) -> Result<Vec<u8>> {
    let io = |source| StorageError::Io {
        path: PathBuf::from("<wal payload>"),
        source,
    };
    if zstd_level == 0 {
        let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2 + 1024);
        out.push(0);
        return ipc_into(out, batch);
    }
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 32 + 1024);
    out.push(1);
    out.extend_from_slice(&[0; 8]);
    let encoder = zstd::stream::write::Encoder::new(&mut out, zstd_level).map_err(io)?;
    let counted = ipc_into(CountingWriter::new(encoder), batch)?;
    let ipc_len = counted.written;
    counted.inner.finish().map_err(io)?;
    out[1..9].copy_from_slice(&ipc_len.to_le_bytes());
    Ok(out)
}

/// `batch` as an Arrow IPC stream written into `w`.
fn ipc_into<W: Write>(w: W, batch: &RecordBatch) -> Result<W> {
    let mut w = StreamWriter::try_new(w, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?)
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, written: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn decode_batch(payload: &[u8]) -> std::result::Result<RecordBatch, String> {
    let bytes = match payload.first() {
        Some(0) => Buffer::from(&payload[1..]),
        Some(1) if payload.len() >= 9 => {
            let n = u64::from_le_bytes(payload[1..9].try_into().expect("8"));
            // The length is read from disk: it bounds the output, but only data that really
            // decompresses is allocated (a damaged length must not ask for exabytes).
            let compressed = &payload[9..];
            let guess = (compressed.len() as u64).saturating_mul(32).min(n);
            let mut out = Vec::with_capacity(guess as usize);
            zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| e.to_string())?
                .take(n.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            if out.len() as u64 != n {
                return Err(format!(
                    "WAL record decompresses to {} bytes, its header says {n}",
                    out.len()
                ));
            }
            Buffer::from_vec(out)
        }
        _ => return Err("unknown WAL payload codec".into()),
    };
    let (_, mut batches) = model::ipc::decode_stream(bytes).map_err(|e| e.to_string())?;
    let batch = match batches.len() {
        1 => batches.pop().expect("one batch"),
        n => return Err(format!("WAL record holds {n} batches, not one")),
    };
    let expected = model::events_schema();
    if batch.schema().fields() != expected.fields() {
        return Err("WAL record has a different schema version".into());
    }
    RecordBatch::try_new(expected, batch.columns().to_vec()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_to_the_batch_in_every_codec() {
        let events: Vec<model::Event> = (0..3000)
            .map(|i| model::Event {
                ts: i,
                kind: "process_exec".into(),
                source: "tetragon".into(),
                exe: (i % 3 == 0).then(|| format!("/usr/bin/tool-{i}")),
                raw: Some(format!("{{\"n\":{i}}}")),
                ..Default::default()
            })
            .collect();
        let batch = model::batch_of(&events);
        for level in [0, -3, 1, 3] {
            let payload = encode_batch(&batch, level).unwrap();
            assert_eq!(payload[0], u8::from(level != 0));
            assert_eq!(decode_batch(&payload).unwrap(), batch, "level {level}");
        }
        // WAL files written before compression was streamed: one frame from `bulk::compress`
        // (its content size in the frame header), same layout.
        let ipc = ipc_into(Vec::new(), &batch).unwrap();
        let mut old = vec![1u8];
        old.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        old.extend_from_slice(&zstd::bulk::compress(&ipc, -3).unwrap());
        assert_eq!(decode_batch(&old).unwrap(), batch);
        // A length that does not match the frame is an error, not a short batch.
        let mut wrong = encode_batch(&batch, -3).unwrap();
        wrong[1..9].copy_from_slice(&100u64.to_le_bytes());
        assert!(decode_batch(&wrong).is_err());
    }

    /// The WAL payload the `wal_payload` fuzz target found: a record batch message declaring
    /// a 1.6 PB body. Decoding it aborted the process (arrow-ipc's `StreamReader` allocated the
    /// declared length); now it is corruption to report.
    #[test]
    fn a_payload_declaring_a_huge_body_is_refused() {
        let mut payload = vec![0u8];
        payload.extend_from_slice(include_bytes!(
            "../../../model/tests/data/ipc_stream_huge_body_length.bin"
        ));
        assert!(decode_batch(&payload).is_err());
    }
}
