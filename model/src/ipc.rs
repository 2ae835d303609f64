//! Decoding Arrow IPC streams whose bytes are not trusted: a client's gRPC batch, a WAL record
//! read back from disk.
//!
//! arrow-ipc's decoders are written for trusted input. Two of their failures on damaged bytes
//! are not errors, and both were found by ktrail's fuzz targets:
//! - `StreamReader` allocates a message's declared body length before reading it: a damaged
//!   length asks for petabytes and the allocation failure aborts the process.
//!   [`StreamDecoder`] only grows its buffer by the bytes it is given, so it is used here.
//! - Both panic on some damaged messages (a buffer offset past the body): caught here and
//!   refused like any other malformed stream.

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamDecoder;

use crate::RecordBatch;

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpcError {
    /// The decoder returned an error (truncated stream, bad flatbuffer, bad buffers).
    #[error("{0}")]
    Invalid(String),
    /// The decoder panicked on the bytes.
    #[error("malformed stream (the decoder could not read it)")]
    Malformed,
}

/// Decodes every message of one Arrow IPC stream: its schema (`None` for an empty input) and
/// its batches, in order. The batches' buffers are slices of `bytes` (a buffer not aligned
/// for its type is copied).
pub fn decode_stream(bytes: Buffer) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), IpcError> {
    let decoded = std::panic::catch_unwind(move || {
        let mut buffer = bytes;
        let mut decoder = StreamDecoder::new();
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            if let Some(batch) = decoder.decode(&mut buffer)? {
                batches.push(batch);
            }
        }
        decoder.finish()?;
        Ok::<_, ArrowError>((decoder.schema(), batches))
    });
    match decoded {
        Ok(result) => result.map_err(|e| IpcError::Invalid(e.to_string())),
        Err(_) => Err(IpcError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose record batch message declares a body of 1.6 PB (the WAL payload the
    /// `wal_payload` fuzz target found, without its codec byte): `StreamReader` aborted the
    /// process allocating it.
    #[test]
    fn a_body_length_past_the_bytes_is_an_error_not_an_allocation() {
        let bytes = include_bytes!("../tests/data/ipc_stream_huge_body_length.bin");
        let e = decode_stream(Buffer::from(&bytes[..])).unwrap_err();
        assert!(matches!(e, IpcError::Invalid(_)), "{e}");
    }

    #[test]
    fn a_stream_decodes_to_its_schema_and_batches() {
        use datafusion::arrow::ipc::writer::StreamWriter;
        let batch = crate::batch_of(&[crate::Event {
            ts: 1,
            kind: "other".into(),
            source: "x".into(),
            ..Default::default()
        }]);
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let (schema, batches) = decode_stream(Buffer::from_vec(out)).unwrap();
        assert_eq!(schema.unwrap(), batch.schema());
        assert_eq!(batches, [batch.clone(), batch]);
        assert_eq!(
            decode_stream(Buffer::from_vec(Vec::<u8>::new())).unwrap().1,
            []
        );
    }
}
