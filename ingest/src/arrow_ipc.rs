//! Event batches that arrive already in the `events` schema, as an Arrow IPC stream (the gRPC
//! `Ingest` fast path).

use model::RecordBatch;
use model::arrow::buffer::Buffer;
use model::arrow::compute::concat_batches;

/// Reads one Arrow IPC stream of the `events` schema into one batch (`None` when it has no
/// rows), refusing another schema and the events `model::validate_batch` refuses.
///
/// The batch's buffers are the stream's own bytes, not copies: the decoder slices the
/// message bodies out of `bytes` (copying only a buffer that is not aligned for its type).
pub fn read_stream(bytes: Vec<u8>) -> Result<Option<RecordBatch>, String> {
    let err = |e: &dyn std::fmt::Display| format!("arrow_ipc: {e}");
    let (schema, mut batches) =
        model::ipc::decode_stream(Buffer::from_vec(bytes)).map_err(|e| err(&e))?;
    let expected = model::events_schema();
    match schema {
        Some(schema) if schema.fields() == expected.fields() => {}
        Some(_) => {
            return Err(err(
                &"schema is not the events schema (see model::events_schema)",
            ));
        }
        None => return Err(err(&"empty stream (no schema message)")),
    }
    let batch = match batches.len() {
        0 => return Ok(None),
        1 => batches.pop().expect("one batch"),
        _ => concat_batches(&expected, &batches).map_err(|e| err(&e))?,
    };
    model::validate_batch(&batch).map_err(|e| err(&e))?;
    Ok((batch.num_rows() > 0).then_some(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_the_decoder_panics_on_is_refused() {
        let bytes = include_bytes!("../tests/data/arrow_ipc_bad_buffer_offset.bin");
        let e = read_stream(bytes.to_vec()).unwrap_err();
        assert!(e.contains("malformed stream"), "{e}");
    }
    use model::arrow::ipc::writer::StreamWriter;

    fn stream(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batches[0].schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    fn events(n: usize, kind: &str) -> RecordBatch {
        let evs: Vec<model::Event> = (0..n)
            .map(|i| model::Event {
                ts: i as i64,
                kind: kind.into(),
                source: "grpc".into(),
                exe: Some(format!("/bin/p{i}")),
                ..Default::default()
            })
            .collect();
        model::batch_of(&evs)
    }

    #[test]
    fn a_stream_of_batches_is_one_batch_of_its_rows() {
        let (a, b) = (events(3, "process_exec"), events(2, "other"));
        let got = read_stream(stream(&[a.clone(), b.clone()]))
            .unwrap()
            .unwrap();
        let want = concat_batches(&model::events_schema(), &[a.clone(), b]).unwrap();
        assert_eq!(got, want);
        assert_eq!(
            read_stream(stream(std::slice::from_ref(&a)))
                .unwrap()
                .unwrap(),
            a
        );
        assert_eq!(read_stream(stream(&[events(0, "other")])).unwrap(), None);
    }

    #[test]
    fn bad_streams_are_refused_with_a_reason() {
        let e = read_stream(stream(&[events(1, "nope")])).unwrap_err();
        assert!(e.contains("unknown kind"), "{e}");
        let other = RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(model::arrow::array::Int32Array::from(vec![1]))
                as model::arrow::array::ArrayRef,
        )])
        .unwrap();
        let e = read_stream(stream(&[other])).unwrap_err();
        assert!(e.contains("not the events schema"), "{e}");
        let mut cut = stream(&[events(3, "other")]);
        cut.truncate(cut.len() - 20);
        assert!(read_stream(cut).is_err());
        assert!(read_stream(b"not arrow".to_vec()).is_err());
    }
}
