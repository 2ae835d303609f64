//! Analysts' judgements of Falco alerts (`falco_labels.json`): a label applies to every
//! stored alert its selector matches (the falcosidekick `uuid`, or the rule, output-field
//! values and time window). Falco Tuning never suppresses an alert labelled a true positive.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Result;

/// File name of the labels inside the store directory.
pub const FILE: &str = "falco_labels.json";

/// One label and the alerts it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FalcoLabel {
    /// `true_positive`.
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Output fields the alert must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// RFC 3339 bounds of the alert's time, `from` inclusive, `to` exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default)]
    pub note: String,
    pub labelled_at: String,
}

/// The labels of the store at `dir`.
pub fn load(dir: &Path) -> Result<Vec<FalcoLabel>> {
    super::load(dir, FILE, "falco labels")
}

/// Replaces the labels of the store at `dir`, durably.
pub fn save(dir: &Path, labels: &[FalcoLabel]) -> Result<()> {
    super::save(dir, FILE, labels)
}
