//! Reading producers' records into `events` batches.
//!
//! This crate knows formats, not storage: it turns inputs (files, directories, stdin, `.gz` /
//! `.zst`) into record batches and per-record rejections (`PATH:LINE: reason`). It reads
//! ktrail's native NDJSON (one `events`-shaped JSON object per line), Kubernetes audit events,
//! Falco alerts, Tetragon's and Tracee's JSON exports, Kubernetes object inventories
//! (`kubectl get -o json`), and clients' Arrow IPC streams and protobuf batches
//! ([`arrow_ipc`], [`proto_events`]).
//!
//! Where to look: [`input`] opens inputs, [`reader`] splits one into records and parses them
//! in parallel, [`detect`] recognises a record's producer, one module per producer parses it.

pub mod arrow_ipc;
mod detect;
mod falco_alerts;
mod input;
pub mod k8s_audit;
pub mod k8s_objects;
pub mod proto_events;
mod reader;
pub mod tetragon;
mod tracee;

pub use input::{Input, expand_inputs};
pub use reader::{MAX_DOCUMENT_BYTES, read_input};

use std::io;

use model::Event;

use detect::{detect, unrecognised};

/// Longest accepted line; longer ones are rejected, not buffered.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Failures of whole inputs (bad records are [`Rejection`]s, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The sink refused a batch (the store failed): reading stopped there. The sink's
    /// caller holds the cause; `reason` is its text.
    #[error("{path}: stopped: {reason}")]
    Stopped { path: String, reason: String },
}

/// Input formats of `ktrail ingest --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Recognise each record.
    Auto,
    /// ktrail's native NDJSON events.
    Native,
    K8sAudit,
    Falco,
    Tetragon,
    /// Tracee's JSON events (legacy `--output json` and `v1beta1`).
    Tracee,
    K8sObjects,
}

impl Format {
    /// Every format, in the order the command line lists them.
    pub const ALL: [Format; 7] = [
        Format::Auto,
        Format::Native,
        Format::K8sAudit,
        Format::Falco,
        Format::Tetragon,
        Format::Tracee,
        Format::K8sObjects,
    ];

    /// The format of a command-line name (`auto`, `k8s-audit`, ...).
    pub fn from_name(name: &str) -> Option<Format> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Native => "native",
            Format::K8sAudit => "k8s-audit",
            Format::Falco => "falco",
            Format::Tetragon => "tetragon",
            Format::Tracee => "tracee",
            Format::K8sObjects => "k8s-objects",
        }
    }

    /// Formats whose record is one event with the record itself as `raw`: their parsers
    /// leave `raw` empty and the batch takes it from the input without another copy.
    fn raw_is_record(self) -> bool {
        matches!(self, Format::Falco | Format::Tetragon | Format::Tracee)
    }
}

/// One rejected record: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub path: String,
    pub line: u64,
    pub reason: String,
    /// The rejected record as read (lossy UTF-8); `None` for a line too long to keep.
    pub record: Option<String>,
}

impl Rejection {
    /// One dead-letter line: `{"path", "line", "reason", "record"}` as JSON.
    pub fn to_dead_letter(&self) -> String {
        serde_json::json!({
            "path": self.path,
            "line": self.line,
            "reason": self.reason,
            "record": self.record,
        })
        .to_string()
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.reason)
    }
}

/// Counts of one format in one input (or of a whole run, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read (a webhook `EventList` is one record of many events).
    pub records: u64,
    /// Events produced from the records that parsed.
    pub events: u64,
    pub rejected: u64,
}

/// Counts per format name (`native`, `k8s-audit`, `falco`, ...; unrecognised records count
/// under the requested format).
pub type Summary = std::collections::BTreeMap<&'static str, Counts>;

/// Parses one record in `format` (recognising it under `Auto`) into `out`; returns the format
/// it was read as, and the record as text. On an error `out` may hold part of the record's
/// events: the caller drops them (a record is stored whole or not at all).
pub fn parse_record<'r>(
    format: Format,
    record: &'r [u8],
    observed_at: i64,
    out: &mut Vec<Event>,
) -> (Format, Result<&'r str, String>) {
    let format = match format {
        Format::Auto => match detect(record) {
            Some(f) => f,
            None => {
                return (Format::Auto, Err(unrecognised(record)));
            }
        },
        f => f,
    };
    // Checked once here; the parsers take text.
    let Ok(text) = std::str::from_utf8(record) else {
        return (format, Err("invalid UTF-8".into()));
    };
    let result = match format {
        Format::Native => Event::from_native_json(text)
            .map(|ev| out.push(ev))
            .map_err(|e| e.to_string()),
        Format::K8sAudit => k8s_audit::parse(text, out),
        Format::Falco => falco_alerts::parse(text, out),
        Format::Tetragon => tetragon::parse(text, out),
        Format::Tracee => tracee::parse(text, out),
        Format::K8sObjects => k8s_objects::parse(text, observed_at, out),
        Format::Auto => unreachable!("resolved above"),
    };
    (format, result.map(|()| text))
}

#[cfg(test)]
mod tests;
