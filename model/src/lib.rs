//! The one definition of ktrail's `events` schema, and a typed builder that fills it.
//!
//! Every other crate takes the schema from here: ingest fills [`EventBatchBuilder`], storage
//! writes its batches to the WAL and to Parquet segments, query exposes them as the `events`
//! table. The column names and types are part of the outside contract (`../shared/contract.md`);
//! columns may be added (bump [`SCHEMA_VERSION`]), never renamed or removed.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Int32Builder, Int64Builder, ListBuilder, PrimitiveBuilder, StringBuilder,
    TimestampNanosecondBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Deserializer};

/// DataFusion's arrow, for crates that need arrow but not DataFusion (one arrow in the build).
pub use datafusion::arrow;
/// The batch type of events (DataFusion's arrow), for crates that only build events.
pub use datafusion::arrow::array::RecordBatch;

pub mod ipc;

/// Version of the `events` schema; stored with every WAL file and segment so that older data can
/// be recognised after columns are added.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors of the event model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A timestamp that is neither RFC 3339 nor an integer count of nanoseconds.
    #[error("invalid timestamp {value:?}: {reason}")]
    InvalidTimestamp { value: String, reason: String },
    /// A record without one of the non-nullable fields (`ts`, `kind`, `source`).
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A `kind` outside the documented set.
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// A native record that is not a JSON object of the event shape.
    #[error("invalid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Arrow refused the built batch (a bug if it happens: the builder owns the schema).
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

/// The event kinds of the contract.
pub const KINDS: &[&str] = &[
    "process_exec",
    "process_exit",
    "network_connect",
    "network_accept",
    "network_listen",
    "network_close",
    "file_access",
    "k8s_audit",
    "falco_alert",
    "k8s_object",
    "other",
];

/// Names of the columns, in schema order. `event_id` and `binary_name` are ktrail's additions to
/// the contract: the deduplication key, and the base name of `exe` (indexed).
pub mod col {
    pub const TS: &str = "ts";
    pub const KIND: &str = "kind";
    pub const SOURCE: &str = "source";
    pub const EVENT_ID: &str = "event_id";
    pub const NAMESPACE: &str = "namespace";
    pub const POD: &str = "pod";
    pub const POD_UID: &str = "pod_uid";
    pub const CONTAINER_ID: &str = "container_id";
    pub const EXE: &str = "exe";
    pub const BINARY_NAME: &str = "binary_name";
    pub const EXEC_ID: &str = "exec_id";
    pub const DST_IP: &str = "dst_ip";
    pub const AUDIT_ID: &str = "audit_id";
    pub const RAW: &str = "raw";
}

macro_rules! event_columns {
    ($m:ident) => {
        $m! {
            utf8: [node, cluster, namespace, pod, pod_uid, container_id, container_name, image,
                   workload_kind, workload_name],
            int64: [pid, ppid, uid],
            utf8_2: [exe, binary_name, args, cwd, exec_id, parent_exec_id, parent_exe, protocol,
                     src_ip, dst_ip],
            int32: [src_port, dst_port],
            utf8_3: [k8s_user, impersonated_user],
            list: [k8s_groups, source_ips],
            utf8_4: [source_ip, verb, resource, subresource, object_namespace, object_name,
                     request_uri, user_agent, audit_id, stage],
            int32_2: [response_code],
            utf8_5: [rule, priority, output],
            list_2: [tags],
            utf8_6: [session_id, raw],
        }
    };
}

macro_rules! schema_fields {
    (utf8: [$($a:ident),*], int64: [$($b:ident),*], utf8_2: [$($c:ident),*], int32: [$($d:ident),*],
     utf8_3: [$($e:ident),*], list: [$($f:ident),*], utf8_4: [$($g:ident),*],
     int32_2: [$($h:ident),*], utf8_5: [$($i:ident),*], list_2: [$($j:ident),*],
     utf8_6: [$($k:ident),*],) => {{
        let mut fields = vec![
            Field::new(col::TS, DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
            Field::new(col::KIND, DataType::Utf8, false),
            Field::new(col::SOURCE, DataType::Utf8, false),
            Field::new(col::EVENT_ID, DataType::Int64, false),
        ];
        $(fields.push(Field::new(stringify!($a), DataType::Utf8, true));)*
        $(fields.push(Field::new(stringify!($b), DataType::Int64, true));)*
        $(fields.push(Field::new(stringify!($c), DataType::Utf8, true));)*
        $(fields.push(Field::new(stringify!($d), DataType::Int32, true));)*
        $(fields.push(Field::new(stringify!($e), DataType::Utf8, true));)*
        $(fields.push(Field::new(stringify!($f), list_type(), true));)*
        $(fields.push(Field::new(stringify!($g), DataType::Utf8, true));)*
        $(fields.push(Field::new(stringify!($h), DataType::Int32, true));)*
        $(fields.push(Field::new(stringify!($i), DataType::Utf8, true));)*
        $(fields.push(Field::new(stringify!($j), list_type(), true));)*
        $(fields.push(Field::new(stringify!($k), DataType::Utf8, true));)*
        fields
    }};
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = event_columns!(schema_fields);
    let metadata = [(
        "ktrail.schema_version".to_string(),
        SCHEMA_VERSION.to_string(),
    )]
    .into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
});

/// The Arrow schema of `events` (version [`SCHEMA_VERSION`]).
pub fn events_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Checks a batch that arrived already in the `events` schema (Arrow IPC from a client) for
/// the invariants the schema cannot express: every `kind` is a known kind, every `source` is
/// set.
pub fn validate_batch(batch: &RecordBatch) -> Result<(), ModelError> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    let strings = |name: &'static str| {
        let c = batch
            .column_by_name(name)
            .ok_or(ModelError::MissingField(name))?;
        Ok::<_, ModelError>(cast(c, &DataType::Utf8)?)
    };
    let kinds = strings(col::KIND)?;
    for k in kinds.as_string::<i32>().iter() {
        match k {
            Some(k) if KINDS.contains(&k) => {}
            Some(k) => return Err(ModelError::UnknownKind(k.to_string())),
            None => return Err(ModelError::MissingField("kind")),
        }
    }
    let sources = strings(col::SOURCE)?;
    if sources
        .as_string::<i32>()
        .iter()
        .any(|s| s.is_none_or(str::is_empty))
    {
        return Err(ModelError::MissingField("source"));
    }
    Ok(())
}

/// One event in the native shape: the `events` columns by name. Ingest parsers fill it; the
/// native NDJSON format deserialises straight into it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Nanoseconds since the Unix epoch, UTC. Native JSON takes RFC 3339 or an integer.
    #[serde(deserialize_with = "de_ts")]
    pub ts: i64,
    pub kind: String,
    pub source: String,
    /// Deduplication key; derived from the original record when absent (see [`event_id_of`]).
    #[serde(default)]
    pub event_id: Option<i64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub container_name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub workload_kind: Option<String>,
    #[serde(default)]
    pub workload_name: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub ppid: Option<i64>,
    #[serde(default)]
    pub uid: Option<i64>,
    #[serde(default)]
    pub exe: Option<String>,
    /// Derived from `exe` when absent.
    #[serde(default)]
    pub binary_name: Option<String>,
    #[serde(default)]
    pub args: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub exec_id: Option<String>,
    #[serde(default)]
    pub parent_exec_id: Option<String>,
    #[serde(default)]
    pub parent_exe: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub src_ip: Option<String>,
    #[serde(default)]
    pub dst_ip: Option<String>,
    #[serde(default)]
    pub src_port: Option<i32>,
    #[serde(default)]
    pub dst_port: Option<i32>,
    #[serde(default)]
    pub k8s_user: Option<String>,
    #[serde(default)]
    pub impersonated_user: Option<String>,
    #[serde(default)]
    pub k8s_groups: Option<Vec<String>>,
    #[serde(default)]
    pub source_ips: Option<Vec<String>>,
    /// Derived from the first of `source_ips` when absent.
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub verb: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub object_namespace: Option<String>,
    #[serde(default)]
    pub object_name: Option<String>,
    #[serde(default)]
    pub request_uri: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub audit_id: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub response_code: Option<i32>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub raw: Option<String>,
}

/// A visitor, not an untagged enum: the enum buffered every value and built an "invalid type"
/// error for each RFC 3339 string before trying the text variant (2 % of native ingest, perf).
fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Ts;
    impl serde::de::Visitor<'_> for Ts {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp or an integer count of nanoseconds")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<i64, E> {
            Ok(n)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<i64, E> {
            i64::try_from(n)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<i64, E> {
            parse_ts(s).map_err(E::custom)
        }
    }
    d.deserialize_any(Ts)
}

/// Parses an RFC 3339 timestamp (any precision up to nanoseconds, any offset) into nanoseconds
/// since the epoch, UTC. Nothing is rounded.
pub fn parse_ts(s: &str) -> Result<i64, ModelError> {
    if let Some(ns) = parse_utc_z(s.as_bytes()) {
        return Ok(ns);
    }
    string_to_timestamp_nanos(s).map_err(|e| ModelError::InvalidTimestamp {
        value: s.to_string(),
        reason: e.to_string(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f]Z` with 1 to 9 fraction digits: the form Tetragon, Falco and the
/// apiserver write. Anything else (an offset, a space for `T`, a leap second, a value out of
/// `i64` nanoseconds) is `None` and left to arrow's general parser, which this agrees with
/// (`utc_z_agrees_with_arrow`). Arrow's parser was 2 % of Tetragon ingest (perf).
fn parse_utc_z(b: &[u8]) -> Option<i64> {
    fn digits(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    }
    let (&last, body) = b.split_last()?;
    if last != b'Z' || body.len() < 19 {
        return None;
    }
    let sep = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if sep.iter().any(|&(i, c)| body[i] != c) {
        return None;
    }
    let (year, month, day) = (
        digits(&body[0..4])?,
        digits(&body[5..7])?,
        digits(&body[8..10])?,
    );
    let (hour, minute, second) = (
        digits(&body[11..13])?,
        digits(&body[14..16])?,
        digits(&body[17..19])?,
    );
    let nanos = match &body[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)? * 10i64.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The deduplication key of a record: a 64-bit hash of its source and original bytes. The same
/// record ingested twice gets the same id; different records collide with probability ~2^-64
/// per pair.
pub fn event_id_of(source: &str, original: &[u8]) -> i64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(original);
    h.digest() as i64
}

/// The base name of an executable path (`/usr/bin/curl` → `curl`).
pub fn binary_name_of(exe: &str) -> &str {
    exe.rsplit('/').next().unwrap_or(exe)
}

impl Event {
    /// Parses one native NDJSON line. `event_id` defaults to the hash of the line.
    ///
    /// Takes text: the caller checked UTF-8 once for the whole line, which `from_slice` would
    /// check again string by string.
    pub fn from_native_json(line: &str) -> Result<Event, ModelError> {
        let mut ev: Event = serde_json::from_str(line)?;
        if ev.event_id.is_none() {
            ev.event_id = Some(event_id_of(&ev.source, line.as_bytes()));
        }
        ev.validate()?;
        Ok(ev)
    }

    /// Checks the invariants the schema cannot express.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.kind.is_empty() {
            return Err(ModelError::MissingField("kind"));
        }
        if self.source.is_empty() {
            return Err(ModelError::MissingField("source"));
        }
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(ModelError::UnknownKind(self.kind.clone()));
        }
        Ok(())
    }
}

macro_rules! builder_struct {
    (utf8: [$($a:ident),*], int64: [$($b:ident),*], utf8_2: [$($c:ident),*], int32: [$($d:ident),*],
     utf8_3: [$($e:ident),*], list: [$($f:ident),*], utf8_4: [$($g:ident),*],
     int32_2: [$($h:ident),*], utf8_5: [$($i:ident),*], list_2: [$($j:ident),*],
     utf8_6: [$($k:ident),*],) => {
        /// Builds `events` record batches row by row. The only way ktrail constructs event
        /// batches, so the column order always matches [`events_schema`].
        pub struct EventBatchBuilder {
            ts: TimestampNanosecondBuilder,
            kind: StringBuilder,
            source: StringBuilder,
            event_id: Int64Builder,
            $($a: Sparse<StringBuilder>,)*
            $($b: Sparse<Int64Builder>,)*
            $($c: Sparse<StringBuilder>,)*
            $($d: Sparse<Int32Builder>,)*
            $($e: Sparse<StringBuilder>,)*
            $($f: Sparse<ListBuilder<StringBuilder>>,)*
            $($g: Sparse<StringBuilder>,)*
            $($h: Sparse<Int32Builder>,)*
            $($i: Sparse<StringBuilder>,)*
            $($j: Sparse<ListBuilder<StringBuilder>>,)*
            $($k: Sparse<StringBuilder>,)*
            rows: usize,
        }

        impl EventBatchBuilder {
            /// A builder with room for `capacity` rows.
            pub fn with_capacity(capacity: usize) -> Self {
                Self {
                    ts: TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
                    kind: StringBuilder::with_capacity(capacity, capacity * 12),
                    source: StringBuilder::with_capacity(capacity, capacity * 8),
                    event_id: Int64Builder::with_capacity(capacity),
                    $($a: Sparse::new(StringBuilder::new()),)*
                    $($b: Sparse::new(Int64Builder::with_capacity(capacity)),)*
                    $($c: Sparse::new(StringBuilder::new()),)*
                    $($d: Sparse::new(Int32Builder::with_capacity(capacity)),)*
                    $($e: Sparse::new(StringBuilder::new()),)*
                    $($f: Sparse::new(ListBuilder::new(StringBuilder::new())),)*
                    $($g: Sparse::new(StringBuilder::new()),)*
                    $($h: Sparse::new(Int32Builder::with_capacity(capacity)),)*
                    $($i: Sparse::new(StringBuilder::new()),)*
                    $($j: Sparse::new(ListBuilder::new(StringBuilder::new())),)*
                    $($k: Sparse::new(StringBuilder::new()),)*
                    rows: 0,
                }
            }

            /// Appends one event. Derives `event_id` (from `raw` when present, else from the
            /// event's fields), `binary_name` and `source_ip` when the event leaves them empty.
            pub fn push(&mut self, ev: &Event) {
                self.push_with_raw(ev, ev.raw.as_deref());
            }

            /// [`push`](Self::push) with `raw` given apart from the event (which leaves its
            /// own `None`): a parser's input line goes into the batch without a copy of its own.
            pub fn push_with_raw(&mut self, ev: &Event, raw: Option<&str>) {
                self.ts.append_value(ev.ts);
                self.kind.append_value(&ev.kind);
                self.source.append_value(&ev.source);
                self.event_id.append_value(ev.event_id.unwrap_or_else(|| derived_event_id(ev)));
                $(self.$a.push_str(ev.$a.as_deref());)*
                $(self.$b.push_value(ev.$b);)*
                $(
                    if stringify!($c) == "binary_name" && ev.binary_name.is_none() {
                        self.$c.push_str(ev.exe.as_deref().map(binary_name_of));
                    } else {
                        self.$c.push_str(ev.$c.as_deref());
                    }
                )*
                $(self.$d.push_value(ev.$d);)*
                $(self.$e.push_str(ev.$e.as_deref());)*
                $(self.$f.push_list(ev.$f.as_deref());)*
                $(
                    if stringify!($g) == "source_ip" && ev.source_ip.is_none() {
                        self.$g.push_str(
                            ev.source_ips.as_ref().and_then(|v| v.first()).map(String::as_str),
                        );
                    } else {
                        self.$g.push_str(ev.$g.as_deref());
                    }
                )*
                $(self.$h.push_value(ev.$h);)*
                $(self.$i.push_str(ev.$i.as_deref());)*
                $(self.$j.push_list(ev.$j.as_deref());)*
                $(
                    if stringify!($k) == "raw" {
                        self.$k.push_str(raw);
                    } else {
                        self.$k.push_str(ev.$k.as_deref());
                    }
                )*
                self.rows += 1;
            }

            /// Rows pushed since the last [`finish`](Self::finish).
            pub fn len(&self) -> usize {
                self.rows
            }

            /// True when no row was pushed since the last finish.
            pub fn is_empty(&self) -> bool {
                self.rows == 0
            }

            /// The batch of the rows pushed so far; the builder is empty afterwards.
            pub fn finish(&mut self) -> RecordBatch {
                let rows = self.rows;
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(self.ts.finish()),
                    finish_sized(&mut self.kind, rows),
                    finish_sized(&mut self.source, rows),
                    Arc::new(self.event_id.finish()),
                    $(finish_sized(self.$a.filled(), rows),)*
                    $(Arc::new(self.$b.filled().finish()),)*
                    $(finish_sized(self.$c.filled(), rows),)*
                    $(Arc::new(self.$d.filled().finish()),)*
                    $(finish_sized(self.$e.filled(), rows),)*
                    $(Arc::new(self.$f.filled().finish()),)*
                    $(finish_sized(self.$g.filled(), rows),)*
                    $(Arc::new(self.$h.filled().finish()),)*
                    $(finish_sized(self.$i.filled(), rows),)*
                    $(Arc::new(self.$j.filled().finish()),)*
                    $(finish_sized(self.$k.filled(), rows),)*
                ];
                self.rows = 0;
                RecordBatch::try_new(events_schema(), columns)
                    .expect("EventBatchBuilder columns match events_schema")
            }
        }
    };
}

event_columns!(builder_struct);

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

/// Finishes a text column and leaves its builder with room for a batch like this one: Arrow's
/// `finish` leaves it empty, and regrowing it by doubling, batch after batch, copied every
/// value once more and faulted in fresh pages (perf, `ingest_parse/tetragon`: 5% in
/// `finish_grow`, whose `raw` column alone is ~14 MB a batch).
fn finish_sized(b: &mut StringBuilder, rows: usize) -> ArrayRef {
    let array = b.finish();
    *b = StringBuilder::with_capacity(rows, array.value_data().len());
    Arc::new(array)
}

/// A nullable column's builder that counts the nulls pushed since its last value and appends
/// them in one step when the next value (or `finish`) comes. Most columns are empty for most
/// events (a Tetragon exec fills about 15 of 45), and a null at a time was 3 % of
/// `ingest_parse/tetragon` (perf).
struct Sparse<B> {
    builder: B,
    nulls: usize,
}

impl<B: AppendNulls> Sparse<B> {
    fn new(builder: B) -> Self {
        Self { builder, nulls: 0 }
    }

    /// The builder with every pending null appended: the place to append a value.
    #[inline]
    fn filled(&mut self) -> &mut B {
        if self.nulls > 0 {
            self.builder.append_nulls(self.nulls);
            self.nulls = 0;
        }
        &mut self.builder
    }
}

impl Sparse<StringBuilder> {
    #[inline]
    fn push_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.filled().append_value(v),
            None => self.nulls += 1,
        }
    }
}

impl<T: datafusion::arrow::datatypes::ArrowPrimitiveType> Sparse<PrimitiveBuilder<T>> {
    #[inline]
    fn push_value(&mut self, v: Option<T::Native>) {
        match v {
            Some(v) => self.filled().append_value(v),
            None => self.nulls += 1,
        }
    }
}

impl Sparse<ListBuilder<StringBuilder>> {
    #[inline]
    fn push_list(&mut self, v: Option<&[String]>) {
        match v {
            Some(items) => {
                let b = self.filled();
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            None => self.nulls += 1,
        }
    }
}

/// Arrow's builders' bulk null append, under one name.
trait AppendNulls {
    fn append_nulls(&mut self, n: usize);
}

impl AppendNulls for StringBuilder {
    fn append_nulls(&mut self, n: usize) {
        StringBuilder::append_nulls(self, n);
    }
}

impl<T: datafusion::arrow::datatypes::ArrowPrimitiveType> AppendNulls for PrimitiveBuilder<T> {
    fn append_nulls(&mut self, n: usize) {
        PrimitiveBuilder::append_nulls(self, n);
    }
}

impl AppendNulls for ListBuilder<StringBuilder> {
    fn append_nulls(&mut self, n: usize) {
        ListBuilder::append_nulls(self, n);
    }
}

/// An id for an event that came without its original bytes: a hash of its debug form, which
/// covers every field. Ingest parsers set `event_id` from the original record instead.
fn derived_event_id(ev: &Event) -> i64 {
    let text = format!("{ev:?}");
    event_id_of(&ev.source, text.as_bytes())
}

/// Builds one batch from a slice of events.
pub fn batch_of(events: &[Event]) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(events.len());
    for ev in events {
        b.push(ev);
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn schema_has_contract_columns_in_order_and_types() {
        let s = events_schema();
        assert_eq!(s.field(0).name(), "ts");
        assert!(!s.field(0).is_nullable());
        for name in [
            "node",
            "cluster",
            "namespace",
            "pod",
            "pod_uid",
            "container_id",
            "image",
            "pid",
            "exe",
            "args",
            "exec_id",
            "dst_ip",
            "dst_port",
            "k8s_user",
            "k8s_groups",
            "source_ips",
            "source_ip",
            "verb",
            "audit_id",
            "response_code",
            "rule",
            "tags",
            "session_id",
            "raw",
        ] {
            let f = s
                .field_with_name(name)
                .unwrap_or_else(|_| panic!("{name} missing"));
            assert!(f.is_nullable(), "{name} must be nullable");
        }
        assert_eq!(
            s.field_with_name("dst_port").unwrap().data_type(),
            &DataType::Int32
        );
        assert_eq!(
            s.field_with_name("pid").unwrap().data_type(),
            &DataType::Int64
        );
        assert!(matches!(
            s.field_with_name("tags").unwrap().data_type(),
            DataType::List(_)
        ));
    }

    #[test]
    fn native_json_keeps_nanoseconds_and_derives_columns() {
        let line = r#"{"ts":"2026-11-26T10:00:00.123456789Z","kind":"process_exec","source":"grpc","exe":"/usr/bin/curl","source_ips":["10.0.0.1","10.0.0.2"]}"#;
        let ev = Event::from_native_json(line).unwrap();
        assert_eq!(ev.ts % 1_000_000_000, 123_456_789);
        let batch = batch_of(std::slice::from_ref(&ev));
        assert_eq!(batch.num_rows(), 1);
        let bn = batch
            .column_by_name("binary_name")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(bn.value(0), "curl");
        let sip = batch
            .column_by_name("source_ip")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(sip.value(0), "10.0.0.1");
        let id = batch
            .column_by_name("event_id")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(id.value(0), event_id_of("grpc", line.as_bytes()));
        let raw = batch.column_by_name("raw").unwrap();
        assert!(raw.is_null(0));
    }

    #[test]
    fn sparse_columns_keep_every_row_in_place() {
        // Runs of nulls of different lengths in each column, ending in nulls and in values,
        // across two batches from one builder.
        let mut b = EventBatchBuilder::with_capacity(4);
        for len in [7usize, 1, 13] {
            let events: Vec<Event> = (0..len)
                .map(|i| Event {
                    ts: i as i64,
                    kind: "other".into(),
                    source: "test".into(),
                    namespace: (i % 3 == 0).then(|| format!("ns{i}")),
                    pid: (i % 4 == 1).then_some(i as i64),
                    dst_port: (i % 5 == 4).then_some(i as i32),
                    k8s_groups: (i % 2 == 0).then(|| vec![format!("g{i}"), "x".into()]),
                    ..Default::default()
                })
                .collect();
            for ev in &events {
                b.push_with_raw(ev, (ev.ts % 6 == 5).then_some("{}"));
            }
            let batch = b.finish();
            assert_eq!(batch.num_rows(), len);
            let column = |name: &str| batch.column_by_name(name).unwrap().clone();
            let (ns, pid, port, groups, raw) = (
                column("namespace"),
                column("pid"),
                column("dst_port"),
                column("k8s_groups"),
                column("raw"),
            );
            for (i, ev) in events.iter().enumerate() {
                assert_eq!(
                    ns.as_string::<i32>()
                        .is_valid(i)
                        .then(|| ns.as_string::<i32>().value(i).to_string()),
                    ev.namespace
                );
                assert_eq!(
                    pid.as_primitive::<Int64Type>()
                        .is_valid(i)
                        .then(|| pid.as_primitive::<Int64Type>().value(i)),
                    ev.pid
                );
                let port = port.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
                assert_eq!(port.is_valid(i).then(|| port.value(i)), ev.dst_port);
                let groups = groups.as_list::<i32>();
                let got = groups.is_valid(i).then(|| {
                    let v = groups.value(i);
                    let v = v.as_string::<i32>();
                    v.iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>()
                });
                assert_eq!(got, ev.k8s_groups);
                assert_eq!(raw.is_valid(i), i % 6 == 5, "raw of row {i}");
                assert!(batch.column_by_name("verb").unwrap().is_null(i));
            }
        }
    }

    #[test]
    fn utc_z_agrees_with_arrow() {
        let arrow = |s: &str| string_to_timestamp_nanos(s).ok();
        for s in [
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.1Z",
            "2026-11-26T10:00:00.123456789Z",
            "2022-10-18T03:16:21.373327754Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999999Z",
            "2000-02-29T12:00:00Z",
            "1900-03-01T00:00:00Z",
            "2262-04-11T23:47:16.854775807Z",
        ] {
            assert_eq!(parse_utc_z(s.as_bytes()), arrow(s), "{s}");
            assert!(
                parse_utc_z(s.as_bytes()).is_some(),
                "{s} takes the fast path"
            );
        }
        // Not this form, or not a valid time: the fast path declines, arrow decides.
        for s in [
            "2026-11-26T10:00:00+01:00",
            "2026-11-26 10:00:00Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00.1234567890Z",
            "2026-02-29T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:00:60Z",
            "2262-04-11T23:47:16.854775808Z",
            "0001-01-01T00:00:00Z",
            "2026-11-26t10:00:00z",
            "2026-1a-26T10:00:00Z",
            "",
        ] {
            assert_eq!(parse_utc_z(s.as_bytes()), None, "{s}");
        }
        // Every day of four years (a leap year among them) at a few times of day.
        let mut days = 0;
        for year in [1999, 2000, 2024, 2100] {
            for month in 1..=12u32 {
                for day in 1..=31u32 {
                    for (time, frac) in [
                        ("00:00:00", ""),
                        ("13:07:59", ".5"),
                        ("23:59:59", ".000000001"),
                    ] {
                        let s = format!("{year:04}-{month:02}-{day:02}T{time}{frac}Z");
                        assert_eq!(parse_utc_z(s.as_bytes()), arrow(&s), "{s}");
                        days += usize::from(arrow(&s).is_some());
                    }
                }
            }
        }
        assert_eq!(days, (365 * 2 + 366 * 2) * 3);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let e = Event::from_native_json(r#"{"kind":0}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = Event::from_native_json(r#"{"ts":"yesterday","kind":"other","source":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("yesterday"), "{e}");
        let e = Event::from_native_json(r#"{"ts":1,"kind":"nope","source":"x"}"#).unwrap_err();
        assert!(matches!(e, ModelError::UnknownKind(_)));
        let e = Event::from_native_json(r#"{"ts":true,"kind":"other","source":"x"}"#).unwrap_err();
        assert!(
            e.to_string().contains("RFC 3339 timestamp or an integer"),
            "{e}"
        );
        let e =
            Event::from_native_json(r#"{"ts":9223372036854775808,"kind":"other","source":"x"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("9223372036854775808"), "{e}");
    }

    #[test]
    fn native_timestamps_are_text_or_integer_nanoseconds() {
        for (ts, ns) in [
            ("-5", -5),
            ("1764151200123456789", 1_764_151_200_123_456_789),
            (
                "\"2025-11-26T10:00:00.123456789Z\"",
                1_764_151_200_123_456_789,
            ),
            (
                "\"2025-11-26T11:00:00.123456789+01:00\"",
                1_764_151_200_123_456_789,
            ),
        ] {
            let line = format!(r#"{{"ts":{ts},"kind":"other","source":"x"}}"#);
            assert_eq!(Event::from_native_json(&line).unwrap().ts, ns, "{line}");
        }
    }
}
