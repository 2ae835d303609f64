//! Writing a bundle from a store.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use storage::chain::{self, ChainState};
use storage::digest;
use storage::merkle::{self, Hash};
use storage::{Store, segment};

use crate::{
    BUNDLE_FORMAT, BundleInfo, EvidenceError, Proofs, Result, RowProof, SegmentProof, member,
};

/// What to put in a bundle: the events a query's `event_id` column names.
#[derive(Debug, Clone)]
pub struct Selection {
    /// How the responder said it (`--session 5f3c…`), for the bundle's description.
    pub description: String,
    /// SQL returning an `event_id` column.
    pub sql: String,
}

impl Selection {
    /// The events of one `kubectl exec`/`attach` session (`session_events`).
    pub fn session(id: &str) -> Self {
        Self {
            description: format!("--session {id}"),
            sql: format!(
                "SELECT event_id FROM session_events WHERE session_id = {}",
                quote(id)
            ),
        }
    }

    /// The events of one pod.
    pub fn pod(namespace: &str, pod: &str) -> Self {
        Self {
            description: format!("--pod {namespace}/{pod}"),
            sql: format!(
                "SELECT event_id FROM events WHERE namespace = {} AND pod = {}",
                quote(namespace),
                quote(pod)
            ),
        }
    }

    /// What a query selects (it must return `event_id`).
    pub fn sql(sql: &str) -> Self {
        Self {
            description: format!("--sql {sql:?}"),
            sql: sql.to_string(),
        }
    }

    /// The query that reads the selected events' ids and times, within `[from, to)` (RFC 3339
    /// or anything `CAST(… AS TIMESTAMP)` reads).
    pub fn query(&self, from: Option<&str>, to: Option<&str>) -> String {
        let mut sql = format!(
            "SELECT event_id, ts FROM events WHERE event_id IN (SELECT event_id FROM ({}) AS selection)",
            self.sql.trim().trim_end_matches(';')
        );
        if let Some(from) = from {
            sql.push_str(&format!(" AND ts >= CAST({} AS TIMESTAMP)", quote(from)));
        }
        if let Some(to) = to {
            sql.push_str(&format!(" AND ts < CAST({} AS TIMESTAMP)", quote(to)));
        }
        sql
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What [`export`] wrote.
#[derive(Debug)]
pub struct ExportReport {
    pub rows: u64,
    pub segments: u64,
    /// The digest the proofs end in: the chain entry it signs and when.
    pub chain_entry: u64,
    pub signed_at: String,
    /// Bytes of the bundle, and of its proofs (`proofs.json` and `chain.ndjson`).
    pub bytes: u64,
    pub proof_bytes: u64,
}

/// Writes the bundle of `selection` (within `[from, to)`) from `store` to `out`.
///
/// The memtable is flushed first and the chain's head signed (when the store has a key), so
/// that every selected row is in a segment a digest covers. Fails, writing nothing, when the
/// store's history does not verify or no signed digest covers the rows.
pub async fn export(
    store: &Store,
    ctx: &SessionContext,
    selection: &Selection,
    from: Option<&str>,
    to: Option<&str>,
    out: &Path,
) -> Result<ExportReport> {
    store.flush()?;
    store.write_digest()?;
    let manifest = store.manifest();
    let history = storage::check_history(store.dir(), &manifest, None, None)?;
    if !history.findings.is_empty() {
        return Err(EvidenceError::Unprovable(format!(
            "the store's history does not verify ({}); run `ktrail verify`",
            history.findings.join("; ")
        )));
    }

    check_selection(ctx, &selection.sql).await?;
    let query = selection.query(from, to);
    let selected = selected_rows(ctx, &query).await?;
    if selected.is_empty() {
        return Err(EvidenceError::Selection("it selects no events".into()));
    }
    let (min_ts, max_ts) = selected
        .values()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));

    // Which entry added each listed segment.
    // The committed entries only (a crash may leave one past the head).
    let committed = manifest.chain.as_ref().map_or(0, |h| h.len);
    let lines: Vec<_> = chain::read_lines(store.dir())?
        .into_iter()
        .filter(|l| l.offset < committed)
        .collect();
    let mut state = ChainState::default();
    for line in &lines {
        if let Ok(entry) = &line.entry {
            state.apply(entry);
        }
    }

    let mut rows_out: Vec<RecordBatch> = Vec::new();
    let mut ndjson: Vec<u8> = Vec::new();
    let mut proofs = Proofs {
        segments: Vec::new(),
        rows: Vec::new(),
    };
    let mut found: HashSet<i64> = HashSet::new();
    let snapshot = store.snapshot();
    for seg in snapshot
        .segments
        .iter()
        .filter(|s| s.meta.damaged.is_none() && s.meta.max_ts >= min_ts && s.meta.min_ts <= max_ts)
    {
        let ids = segment::event_ids(seg)?;
        let hits: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| selected.contains_key(id) && !found.contains(id))
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            continue;
        }
        let Some(recorded_root) = seg.meta.merkle_root.clone() else {
            return Err(EvidenceError::Unprovable(format!(
                "segment {} was written before rows had proofs; `ktrail compact` rewrites it with them",
                seg.meta.id
            )));
        };
        let Some(live) = state.live.get(&seg.meta.id) else {
            return Err(EvidenceError::Unprovable(format!(
                "segment {} is in no chain entry",
                seg.meta.id
            )));
        };
        let batches = seg.rows_in_order()?;
        let mut leaves: Vec<Hash> = Vec::with_capacity(seg.meta.rows as usize);
        let mut lines_of_rows: Vec<Vec<u8>> = Vec::with_capacity(seg.meta.rows as usize);
        for b in &batches {
            for line in merkle::row_lines(b)? {
                leaves.push(merkle::leaf_hash(&line));
                lines_of_rows.push(line);
            }
        }
        let root = hex::encode(merkle::root(&leaves));
        if root != recorded_root || leaves.len() as u64 != seg.meta.rows {
            return Err(EvidenceError::Unprovable(format!(
                "segment {}: its rows hash to Merkle root {root}, not the recorded {recorded_root}; run `ktrail verify`",
                seg.meta.id
            )));
        }
        let all = datafusion::arrow::compute::concat_batches(&model::events_schema(), &batches)?;
        let indices = datafusion::arrow::array::UInt64Array::from(
            hits.iter().map(|&i| i as u64).collect::<Vec<_>>(),
        );
        let picked: Vec<_> = all
            .columns()
            .iter()
            .map(|c| datafusion::arrow::compute::take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        rows_out.push(RecordBatch::try_new(model::events_schema(), picked)?);
        for &i in &hits {
            ndjson.extend_from_slice(&lines_of_rows[i]);
            ndjson.push(b'\n');
            found.insert(ids[i]);
            proofs.rows.push(RowProof {
                event_id: ids[i],
                segment: seg.meta.id,
                index: i as u64,
                path: merkle::inclusion_proof(&leaves, i)
                    .iter()
                    .map(hex::encode)
                    .collect(),
            });
        }
        proofs.segments.push(SegmentProof {
            id: seg.meta.id,
            chain_entry: live.added_by,
            rows: seg.meta.rows,
            merkle_root: root,
        });
    }
    if found.len() != selected.len() {
        return Err(EvidenceError::Unprovable(format!(
            "{} of the {} selected events are in no readable segment",
            selected.len() - found.len(),
            selected.len()
        )));
    }

    // The chain from the first entry needed up to the digest that covers the last.
    let (first, last) = proofs.segments.iter().fold((u64::MAX, 0), |(lo, hi), s| {
        (lo.min(s.chain_entry), hi.max(s.chain_entry))
    });
    let digests = digest::local_digests(store.dir())?;
    let Some((_, signed)) = digest::covering(&digests, last) else {
        return Err(EvidenceError::Unprovable(format!(
            "no signed digest covers chain entry {last} yet: export with --signing-key to sign one"
        )));
    };
    let body = signed.body().ok_or_else(|| {
        EvidenceError::Unprovable("the covering digest has an unreadable body".into())
    })?;
    let mut chain_text = String::new();
    for line in &lines {
        if let Ok(e) = &line.entry
            && (first..=body.chain_seq).contains(&e.seq)
        {
            chain_text.push_str(&line.text);
            chain_text.push('\n');
        }
    }

    let parquet = {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, model::events_schema(), None)?;
        for b in &rows_out {
            w.write(b)?;
        }
        w.close()?;
        buf
    };
    let key = public_key(&body.public_key)?;
    let info = BundleInfo {
        format: BUNDLE_FORMAT.into(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        selection: selection.description.clone()
            + &from.map(|f| format!(" --from {f}")).unwrap_or_default()
            + &to.map(|t| format!(" --to {t}")).unwrap_or_default(),
        rows: found.len() as u64,
        segments: proofs.segments.len() as u64,
        chain_from: first,
        chain_to: body.chain_seq,
        public_key: body.public_key.clone(),
    };
    let proofs_json = serde_json::to_vec_pretty(&proofs).expect("proofs serialise");
    let proof_bytes = (proofs_json.len() + chain_text.len()) as u64;
    let members: Vec<(&str, Vec<u8>)> = vec![
        (
            member::INFO,
            serde_json::to_vec_pretty(&info).expect("info serialises"),
        ),
        (member::README, readme(&info, &body.at).into_bytes()),
        (member::QUERY, format!("{query};\n").into_bytes()),
        (member::ROWS, ndjson),
        (member::PARQUET, parquet),
        (member::PROOFS, proofs_json),
        (member::CHAIN, chain_text.into_bytes()),
        (member::DIGEST, signed.to_bytes()),
        (
            member::PUBLIC_KEY,
            digest::public_key_pem(&key).into_bytes(),
        ),
    ];
    let bytes = write_tar(out, &members)?;
    Ok(ExportReport {
        rows: info.rows,
        segments: info.segments,
        chain_entry: body.chain_seq,
        signed_at: body.at,
        bytes,
        proof_bytes,
    })
}

/// Refuses a selection that does not return the events' `event_id` (in the wrapping query,
/// the name would be the outer table's, and every event would be selected).
async fn check_selection(ctx: &SessionContext, sql: &str) -> Result<()> {
    let plan = ctx
        .sql(sql)
        .await
        .map_err(|e| EvidenceError::Selection(e.to_string()))?;
    let schema = plan.schema();
    match schema.field_with_unqualified_name("event_id") {
        Ok(f) if f.data_type() == &datafusion::arrow::datatypes::DataType::Int64 => Ok(()),
        Ok(f) => Err(EvidenceError::Selection(format!(
            "its event_id column is {}, not the events' Int64 id",
            f.data_type()
        ))),
        Err(_) => Err(EvidenceError::Selection(format!(
            "it must return the events' event_id column; it returns {}",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The selected events: id → time.
async fn selected_rows(ctx: &SessionContext, query: &str) -> Result<BTreeMap<i64, i64>> {
    let batches = ctx
        .sql(query)
        .await
        .map_err(|e| EvidenceError::Selection(format!("{e} (the query must return event_id)")))?
        .collect()
        .await?;
    let mut out = BTreeMap::new();
    for b in &batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let ts = b.column(1).as_primitive::<TimestampNanosecondType>();
        for i in 0..b.num_rows() {
            if !ids.is_null(i) {
                out.insert(ids.value(i), ts.value(i));
            }
        }
    }
    Ok(out)
}

/// The public key a digest names in hex.
fn public_key(hex_key: &str) -> Result<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            EvidenceError::Unprovable("the digest's public key is not 32 bytes".into())
        })?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|e| EvidenceError::Unprovable(format!("the digest's public key: {e}")))
}

fn write_tar(out: &Path, members: &[(&str, Vec<u8>)]) -> Result<u64> {
    let io = |source| EvidenceError::Io {
        path: out.to_path_buf(),
        source,
    };
    let tmp = out.with_extension("tar.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut tar = tar::Builder::new(file);
    let mtime = chrono::Utc::now().timestamp().max(0) as u64;
    for (name, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .map_err(io)?;
    }
    let file = tar.into_inner().map_err(io)?;
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    drop(file);
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(bytes)
}

fn readme(info: &BundleInfo, signed_at: &str) -> String {
    format!(
        "ktrail evidence bundle ({format})\n\
         \n\
         Selection: {selection}\n\
         Rows: {rows} from {segments} segment(s); chain entries {from}..{to}; digest signed {signed_at}\n\
         Signer's Ed25519 public key: {key}\n\
         \n\
         Check it offline: ktrail evidence verify BUNDLE.tar [--signing-key SIGNER.pub]\n\
         \n\
         What a valid bundle proves: each line of rows.ndjson was a row of a segment the store's\n\
         hash chain recorded, unchanged, when the digest in digest.json was signed (its time), by\n\
         the holder of the key above; rows.parquet holds the same rows.\n\
         What it does not prove: that these are all the rows the selection (query.sql) would\n\
         return, nor anything about rows outside the bundle, nor that the key is the one the\n\
         store's operator holds (compare it with theirs).\n\
         \n\
         Formats: a row's leaf is its NDJSON line; leaf hash SHA-256(0x00 || line), node hash\n\
         SHA-256(0x01 || left || right) (RFC 9162). A chain entry's hash is the SHA-256 of its\n\
         line in chain.ndjson; each entry's prev is the hash of the one before. digest.json's\n\
         signature is Ed25519 over the exact bytes of its body.\n",
        format = info.format,
        selection = info.selection,
        rows = info.rows,
        segments = info.segments,
        from = info.chain_from,
        to = info.chain_to,
        key = info.public_key,
    )
}
