//! The per-segment sidecar index: for each indexed column, value → roaring bitmap of the row
//! numbers holding it. Row numbers are Parquet row numbers of the segment (the segment is
//! written in exactly the order the index was built from).
//!
//! File `<id>.idx`: magic `KTIDX\0\0\x01`, u32 column count, then per column: u16 name length,
//! name, u32 value count, per value: u32 length, bytes, u32 bitmap length, portable roaring
//! bitmap; then a CRC32C (u32) of everything before it. All little-endian.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use roaring::RoaringBitmap;

use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"KTIDX\0\0\x01";

/// The columns the sidecar indexes: equality lookups on these become row selections, and so
/// does any other deterministic test of one of them (`LIKE`, a regular expression, `lower(..)`),
/// evaluated over the segment's distinct values.
pub const INDEXED_COLUMNS: &[&str] = &[
    "namespace",
    "pod",
    "pod_uid",
    "container_id",
    "kind",
    "binary_name",
    "dst_ip",
    "src_ip",
    "exe",
    "args",
];

/// Free-text columns, indexed in a segment only while they repeat: with more distinct values
/// than 1 in [`FREE_TEXT_MIN_REPEAT`] rows the index would grow like the column itself and
/// narrow little, so that segment's index leaves the column out (its lookups then scan).
pub const FREE_TEXT_COLUMNS: &[&str] = &["exe", "args"];

/// See [`FREE_TEXT_COLUMNS`].
pub const FREE_TEXT_MIN_REPEAT: usize = 16;

/// Value → rows, per indexed column, of one segment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SegmentIndex {
    columns: BTreeMap<String, BTreeMap<String, RoaringBitmap>>,
}

/// Builds a [`SegmentIndex`] chunk by chunk, in the order the chunks are written, so a segment
/// streamed out of a merge is indexed without holding its rows.
#[derive(Debug)]
pub struct SegmentIndexBuilder {
    columns: BTreeMap<String, BTreeMap<String, RoaringBitmap>>,
    /// Free-text columns dropped for having too many distinct values.
    over_cap: Vec<&'static str>,
    max_free_text_values: usize,
    /// Segment row number of the next chunk's first row.
    offset: u32,
}

impl SegmentIndexBuilder {
    /// A builder for a segment of `rows` rows (the free-text cap is a share of them).
    pub fn new(rows: usize) -> Self {
        Self {
            columns: BTreeMap::new(),
            over_cap: Vec::new(),
            max_free_text_values: rows / FREE_TEXT_MIN_REPEAT,
            offset: 0,
        }
    }

    /// Indexes the segment's next rows.
    pub fn push(&mut self, batch: &RecordBatch) {
        let offset = self.offset;
        for &name in INDEXED_COLUMNS {
            // Free text over the cap is dropped after the first chunk that shows it (a flush's
            // chunks are bounded in bytes, a merge's in rows): a column of unique command
            // lines is copied here one chunk's worth at most, not whole.
            if self.over_cap.contains(&name) {
                continue;
            }
            let Some(col) = batch.column_by_name(name) else {
                continue;
            };
            let strings = col.as_string::<i32>();
            let values = self.columns.entry(name.to_string()).or_default();
            // Segments are sorted, so equal values come in runs: insert ranges, not rows.
            let mut run_start = 0usize;
            for i in 1..=strings.len() {
                let run_ends = i == strings.len()
                    || strings.is_null(i) != strings.is_null(run_start)
                    || (!strings.is_null(i) && strings.value(i) != strings.value(run_start));
                if run_ends {
                    if !strings.is_null(run_start) {
                        let v = strings.value(run_start);
                        let rows = offset + run_start as u32..offset + i as u32;
                        match values.get_mut(v) {
                            Some(b) => {
                                b.insert_range(rows);
                            }
                            None => {
                                let mut b = RoaringBitmap::new();
                                b.insert_range(rows);
                                values.insert(v.to_string(), b);
                            }
                        }
                    }
                    run_start = i;
                }
            }
            if FREE_TEXT_COLUMNS.contains(&name) && values.len() > self.max_free_text_values {
                self.columns.remove(name);
                self.over_cap.push(name);
            }
        }
        self.offset += batch.num_rows() as u32;
    }

    /// The index of every row pushed.
    pub fn finish(self) -> SegmentIndex {
        SegmentIndex {
            columns: self.columns,
        }
    }
}

impl SegmentIndex {
    /// Indexes `batch`, whose row `i` is Parquet row `i` of the segment (tests: segments are
    /// written from chunks, see [`Self::build_chunks`]).
    #[cfg(test)]
    pub fn build(batch: &RecordBatch) -> Self {
        Self::build_chunks(std::slice::from_ref(batch))
    }

    /// Indexes a segment written from `chunks` in order: row `i` of chunk `k` is Parquet row
    /// (rows of the chunks before `k`) + `i`.
    pub fn build_chunks(chunks: &[RecordBatch]) -> Self {
        let mut builder = SegmentIndexBuilder::new(chunks.iter().map(|b| b.num_rows()).sum());
        for chunk in chunks {
            builder.push(chunk);
        }
        builder.finish()
    }

    /// True when `column` is in this index.
    pub fn has_column(&self, column: &str) -> bool {
        self.columns.contains_key(column)
    }

    /// Rows whose `column` equals one of `values`; `None` when the column is not indexed.
    pub fn lookup<'a>(
        &self,
        column: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Option<RoaringBitmap> {
        let col = self.columns.get(column)?;
        let mut rows = RoaringBitmap::new();
        for v in values {
            if let Some(b) = col.get(v) {
                rows |= b;
            }
        }
        Some(rows)
    }

    /// Each distinct value of `column` with its rows; `None` when the column is not indexed.
    pub fn entries(
        &self,
        column: &str,
    ) -> Option<impl ExactSizeIterator<Item = (&str, &RoaringBitmap)>> {
        let col = self.columns.get(column)?;
        Some(col.iter().map(|(v, rows)| (v.as_str(), rows)))
    }

    /// Distinct values of an indexed column.
    pub fn values(&self, column: &str) -> impl Iterator<Item = &str> {
        self.columns
            .get(column)
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
    }

    /// Serialises the index (see module docs for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.columns.len() as u32).to_le_bytes());
        for (name, values) in &self.columns {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(values.len() as u32).to_le_bytes());
            for (v, bitmap) in values {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
                bitmap
                    .serialize_into(&mut out)
                    .expect("writing to a Vec cannot fail");
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an index file's bytes; any damage is [`StorageError::Corruption`] naming `path`
    /// and the offset where parsing failed.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let corrupt = |offset: usize, reason: &str| StorageError::Corruption {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        if bytes.len() < MAGIC.len() + 8 || &bytes[..8] != MAGIC {
            return Err(corrupt(0, "not a ktrail index file"));
        }
        let body_len = bytes.len() - 4;
        let stored = u32::from_le_bytes(bytes[body_len..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..body_len]) != stored {
            return Err(corrupt(body_len, "index checksum mismatch"));
        }
        let mut r = Reader {
            bytes: &bytes[..body_len],
            pos: 8,
        };
        let parse = |r: &mut Reader| -> Option<BTreeMap<String, BTreeMap<String, RoaringBitmap>>> {
            let mut columns = BTreeMap::new();
            let ncols = r.u32()?;
            for _ in 0..ncols {
                let nlen = r.u16()? as usize;
                let name = String::from_utf8(r.take(nlen)?.to_vec()).ok()?;
                let nvalues = r.u32()?;
                let mut values = BTreeMap::new();
                for _ in 0..nvalues {
                    let vlen = r.u32()? as usize;
                    let v = String::from_utf8(r.take(vlen)?.to_vec()).ok()?;
                    let blen = r.u32()? as usize;
                    let bitmap = RoaringBitmap::deserialize_from(r.take(blen)?).ok()?;
                    values.insert(v, bitmap);
                }
                columns.insert(name, values);
            }
            (r.pos == r.bytes.len()).then_some(())?;
            Some(columns)
        };
        match parse(&mut r) {
            Some(columns) => Ok(Self { columns }),
            None => Err(corrupt(r.pos, "malformed index entry")),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Event, batch_of};
    use proptest::prelude::*;

    fn ev(ns: &str, pod: Option<&str>, exe: &str) -> Event {
        Event {
            ts: 1,
            kind: "process_exec".into(),
            source: "test".into(),
            namespace: Some(ns.into()),
            pod: pod.map(Into::into),
            exe: Some(exe.into()),
            ..Default::default()
        }
    }

    #[test]
    fn lookup_returns_row_numbers_and_skips_nulls() {
        let b = batch_of(&[
            ev("a", Some("p1"), "/bin/sh"),
            ev("a", Some("p1"), "/usr/bin/curl"),
            ev("a", None, "/bin/sh"),
            ev("b", Some("p1"), "/bin/sh"),
        ]);
        let idx = SegmentIndex::build(&b);
        let rows = |c, v: &[&str]| {
            idx.lookup(c, v.iter().copied())
                .unwrap()
                .iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(rows("pod", &["p1"]), vec![0, 1, 3]);
        assert_eq!(rows("namespace", &["b", "a"]), vec![0, 1, 2, 3]);
        assert_eq!(rows("binary_name", &["sh"]), vec![0, 2, 3]);
        assert_eq!(rows("pod", &["zz"]), Vec::<u32>::new());
        assert!(idx.lookup("source", ["test"]).is_none());
    }

    #[test]
    fn free_text_is_indexed_only_while_it_repeats() {
        let with_args = |n: usize, distinct: usize| -> Vec<Event> {
            (0..n)
                .map(|i| Event {
                    args: Some(format!("-w /tmp/{}.pcap", i % distinct)),
                    ..ev("a", Some("p1"), "/usr/bin/tcpdump")
                })
                .collect()
        };
        let rows = 64 * FREE_TEXT_MIN_REPEAT;
        let repeating = SegmentIndex::build(&batch_of(&with_args(rows, 64)));
        assert_eq!(repeating.entries("args").unwrap().len(), 64);
        assert_eq!(
            repeating.lookup("args", ["-w /tmp/3.pcap"]).unwrap().len(),
            rows as u64 / 64
        );
        let unique = SegmentIndex::build(&batch_of(&with_args(rows, 65)));
        assert!(unique.lookup("args", ["-w /tmp/3.pcap"]).is_none());
        assert!(unique.entries("args").is_none());
        // The cap is the segment's, whatever chunks it is written from.
        for (events, expected) in [
            (with_args(rows, 64), &repeating),
            (with_args(rows, 65), &unique),
        ] {
            let (a, b) = events.split_at(rows / 3);
            let chunked = SegmentIndex::build_chunks(&[batch_of(a), batch_of(b)]);
            assert_eq!(&chunked, expected);
        }
        // Columns that are not free text are indexed whatever their cardinality.
        assert_eq!(unique.entries("exe").unwrap().len(), 1);
    }

    #[test]
    fn every_flipped_byte_is_reported_as_corruption() {
        let b = batch_of(&[
            ev("a", Some("p1"), "/bin/sh"),
            ev("b", Some("p2"), "/bin/ls"),
        ]);
        let bytes = SegmentIndex::build(&b).to_bytes();
        let path = Path::new("seg.idx");
        assert_eq!(
            SegmentIndex::from_bytes(path, &bytes).unwrap(),
            SegmentIndex::build(&b)
        );
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            let err = SegmentIndex::from_bytes(path, &damaged).unwrap_err();
            assert!(
                matches!(err, StorageError::Corruption { .. }),
                "byte {i}: {err}"
            );
        }
        let err = SegmentIndex::from_bytes(path, &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("seg.idx"));
    }

    proptest! {
        #[test]
        fn serialisation_round_trips(pods in prop::collection::vec(prop::option::of("[a-c]{1,3}"), 0..200)) {
            let events: Vec<Event> = pods.iter().map(|p| ev("ns", p.as_deref(), "/x")).collect();
            let idx = SegmentIndex::build(&batch_of(&events));
            let back = SegmentIndex::from_bytes(Path::new("x"), &idx.to_bytes()).unwrap();
            prop_assert_eq!(&back, &idx);
            for (i, p) in pods.iter().enumerate() {
                if let Some(p) = p {
                    prop_assert!(back.lookup("pod", [p.as_str()]).unwrap().contains(i as u32));
                }
            }
        }
    }
}
