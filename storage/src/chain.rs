//! The hash chain over the store's history: every manifest change that adds, replaces,
//! archives, expires or finds damage in segments appends an entry to `CHAIN` that commits to
//! the previous entry's hash and to what changed. The manifest records the head (the last
//! entry's number, hash and end offset), so neither can be edited alone without the other
//! disagreeing, and signed digests of the head ([`crate::digest`]) make rewriting both
//! detectable.
//!
//! File `CHAIN`: one JSON entry per line. An entry's hash is the SHA-256 of its line (without
//! the newline); the first entry's `prev` is 64 zeros. The entry is appended and fsynced
//! before the manifest naming it as head is saved, so a crash between leaves one entry past
//! the head, which the next change overwrites; anything else past the head is left in place
//! for `verify` to report.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::manifest::{Manifest, SegmentMeta};

/// The chain's file name in the store directory.
pub const CHAIN_FILE: &str = "CHAIN";
/// `prev` of the first entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The last entry of the chain, as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainHead {
    pub seq: u64,
    /// SHA-256 of the entry's line, hex.
    pub hash: String,
    /// Where the entry's line ends in `CHAIN` (after its newline).
    pub len: u64,
}

/// One change of the store's segments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainEntry {
    /// 1 for the first entry, then one more per entry.
    pub seq: u64,
    /// Hash of the previous entry's line.
    pub prev: String,
    /// When the change was made (RFC 3339, UTC).
    pub at: String,
    /// Segments listed from now on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<ChainSegment>,
    /// Segments no longer listed: replaced by the added ones (compaction: their rows are the
    /// added rows), or given up by a repair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<u64>,
    /// Segments whose files moved to an archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archived: Vec<ChainArchived>,
    /// Segments deleted by a retention policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<ChainExpired>,
    /// Segments found damaged (they stay listed, never read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<u64>,
    /// Damaged segments taken back by a repair (their files check out again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<u64>,
}

/// What the chain commits to of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainSegment {
    pub id: u64,
    pub path: String,
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub sha256: String,
    pub index_sha256: String,
    /// Root of the Merkle tree over its rows ([`crate::merkle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainArchived {
    pub id: u64,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainExpired {
    pub id: u64,
    pub policy: String,
}

impl ChainEntry {
    /// An entry that changes nothing, numbered and linked by [`record`].
    fn empty() -> Self {
        Self {
            seq: 0,
            prev: String::new(),
            at: String::new(),
            added: Vec::new(),
            removed: Vec::new(),
            archived: Vec::new(),
            expired: Vec::new(),
            damaged: Vec::new(),
            restored: Vec::new(),
        }
    }
}

impl ChainSegment {
    fn of(m: &SegmentMeta) -> Self {
        Self {
            id: m.id,
            path: m.path.clone(),
            rows: m.rows,
            min_ts: m.min_ts,
            max_ts: m.max_ts,
            sha256: m.sha256.clone(),
            index_sha256: m.index_sha256.clone(),
            merkle_root: m.merkle_root.clone(),
        }
    }
}

/// SHA-256 of an entry's line, hex.
pub fn entry_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// One line of `CHAIN` as read.
#[derive(Debug, Clone)]
pub struct ChainLine {
    /// Offset of the line in the file, and its length with the newline.
    pub offset: u64,
    pub len: u64,
    pub text: String,
    pub hash: String,
    /// `None` when the line is not an entry (the reason).
    pub entry: std::result::Result<ChainEntry, String>,
}

/// Every line of the store's `CHAIN` (empty when there is none).
pub fn read_lines(dir: &Path) -> Result<Vec<ChainLine>> {
    let path = dir.join(CHAIN_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&path),
    };
    Ok(parse_lines(&bytes))
}

/// The lines of a `CHAIN` file's bytes; a line that is not an entry is kept, with the reason.
pub fn parse_lines(bytes: &[u8]) -> Vec<ChainLine> {
    let mut lines = Vec::new();
    let mut offset = 0u64;
    for raw in bytes.split_inclusive(|&b| b == b'\n') {
        let body = raw.strip_suffix(b"\n").unwrap_or(raw);
        let entry = std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<ChainEntry>(t).map_err(|e| e.to_string()))
            .and_then(|e| {
                if raw.ends_with(b"\n") {
                    Ok(e)
                } else {
                    Err("no newline: a write that did not finish".into())
                }
            });
        lines.push(ChainLine {
            offset,
            len: raw.len() as u64,
            text: String::from_utf8_lossy(body).into_owned(),
            hash: entry_hash(body),
            entry,
        });
        offset += raw.len() as u64;
    }
    lines
}

/// The segments a sequence of entries leaves, by id.
#[derive(Debug, Default, Clone)]
pub struct ChainState {
    /// Listed segments: what the chain committed to, and the entry that added each.
    pub live: BTreeMap<u64, LiveSegment>,
    /// Expired segments: the policy, the entry that recorded it.
    pub expired: BTreeMap<u64, (String, u64)>,
}

#[derive(Debug, Clone)]
pub struct LiveSegment {
    pub segment: ChainSegment,
    pub added_by: u64,
    pub archived: Option<String>,
    pub damaged: bool,
}

impl ChainState {
    /// The state a manifest is in (each segment as if added by entry 0).
    fn of_manifest(m: &Manifest) -> Self {
        let live = m
            .segments
            .iter()
            .map(|s| {
                let live = LiveSegment {
                    segment: ChainSegment::of(s),
                    added_by: 0,
                    archived: s.archived.as_ref().map(|a| a.url.clone()),
                    damaged: s.damaged.is_some(),
                };
                (s.id, live)
            })
            .collect();
        let expired = m
            .expired
            .iter()
            .map(|e| (e.id, (e.policy.clone(), 0)))
            .collect();
        Self { live, expired }
    }

    /// Applies `entry`; what does not fit (a removed segment that is not listed, …) is
    /// returned as findings.
    pub fn apply(&mut self, entry: &ChainEntry) -> Vec<String> {
        let mut findings = Vec::new();
        let seq = entry.seq;
        // Saturating: the counts come from a file anyone may have edited.
        let removed_rows: u64 = entry
            .removed
            .iter()
            .map(|id| match self.live.remove(id) {
                Some(l) => l.segment.rows,
                None => {
                    findings.push(format!(
                        "chain entry {seq}: removes segment {id}, which no earlier entry added"
                    ));
                    0
                }
            })
            .fold(0, u64::saturating_add);
        let added_rows: u64 = entry
            .added
            .iter()
            .map(|s| s.rows)
            .fold(0, u64::saturating_add);
        if !entry.removed.is_empty() && removed_rows != added_rows {
            findings.push(format!(
                "chain entry {seq}: segments {:?} removed with {removed_rows} rows, replaced by {added_rows}: {} rows not accounted for",
                entry.removed,
                removed_rows.abs_diff(added_rows)
            ));
        }
        for s in &entry.added {
            self.live.insert(
                s.id,
                LiveSegment {
                    segment: s.clone(),
                    added_by: seq,
                    archived: None,
                    damaged: false,
                },
            );
        }
        for a in &entry.archived {
            match self.live.get_mut(&a.id) {
                Some(l) => l.archived = Some(a.url.clone()),
                None => findings.push(format!(
                    "chain entry {seq}: archives segment {}, which is not listed",
                    a.id
                )),
            }
        }
        for id in &entry.damaged {
            match self.live.get_mut(id) {
                Some(l) => l.damaged = true,
                None => findings.push(format!(
                    "chain entry {seq}: records damage in segment {id}, which is not listed"
                )),
            }
        }
        for id in &entry.restored {
            match self.live.get_mut(id) {
                Some(l) => l.damaged = false,
                None => findings.push(format!(
                    "chain entry {seq}: takes back segment {id}, which is not listed"
                )),
            }
        }
        for e in &entry.expired {
            self.live.remove(&e.id);
            self.expired.insert(e.id, (e.policy.clone(), seq));
        }
        findings
    }

    /// The entry taking this state to `next`, `None` when no segment changed.
    fn diff(&self, next: &Manifest) -> Option<ChainEntry> {
        let mut entry = ChainEntry::empty();
        for s in &next.segments {
            match self.live.get(&s.id) {
                Some(l) if l.segment == ChainSegment::of(s) => {
                    if let Some(a) = &s.archived
                        && l.archived.as_deref() != Some(a.url.as_str())
                    {
                        entry.archived.push(ChainArchived {
                            id: s.id,
                            url: a.url.clone(),
                        });
                    }
                    if s.damaged.is_some() && !l.damaged {
                        entry.damaged.push(s.id);
                    }
                    if s.damaged.is_none() && l.damaged {
                        entry.restored.push(s.id);
                    }
                }
                other => {
                    // A segment listed again with other files (a repair) is removed and added.
                    if other.is_some() {
                        entry.removed.push(s.id);
                    }
                    entry.added.push(ChainSegment::of(s));
                    if let Some(a) = &s.archived {
                        entry.archived.push(ChainArchived {
                            id: s.id,
                            url: a.url.clone(),
                        });
                    }
                    if s.damaged.is_some() {
                        entry.damaged.push(s.id);
                    }
                }
            }
        }
        for e in &next.expired {
            if !self.expired.contains_key(&e.id) {
                entry.expired.push(ChainExpired {
                    id: e.id,
                    policy: e.policy.clone(),
                });
            }
        }
        for id in self.live.keys() {
            let listed = next.segments.iter().any(|s| s.id == *id);
            let expired = entry.expired.iter().any(|e| e.id == *id);
            if !listed && !expired {
                entry.removed.push(*id);
            }
        }
        let changed = !(entry.added.is_empty()
            && entry.removed.is_empty()
            && entry.archived.is_empty()
            && entry.expired.is_empty()
            && entry.damaged.is_empty()
            && entry.restored.is_empty());
        changed.then_some(entry)
    }
}

/// Appends the entry for the change from the manifest on disk to `next` (or, when that
/// cannot be read, from what the chain's entries leave), and sets `next`'s head. Called by
/// [`Manifest::save`] before the manifest is written: when this returns, the entry is durable.
pub(crate) fn record(dir: &Path, next: &mut Manifest) -> Result<()> {
    let committed = Manifest::load(dir).ok().flatten();
    let lines = || read_lines(dir);
    let (state, head) = match committed {
        Some(m) if m.chain.is_some() => (ChainState::of_manifest(&m), m.chain.clone()),
        _ => {
            // A lost manifest (repair) or none yet: the chain's entries say what is listed.
            let mut state = ChainState::default();
            let mut head = None;
            for line in lines()? {
                let Ok(entry) = &line.entry else { break };
                state.apply(entry);
                head = Some(ChainHead {
                    seq: entry.seq,
                    hash: line.hash.clone(),
                    len: line.offset + line.len,
                });
            }
            (state, head)
        }
    };
    let entry = match (state.diff(next), &head) {
        (None, Some(h)) => {
            next.chain = Some(h.clone());
            return Ok(());
        }
        (Some(e), _) => e,
        // The first entry of a new chain, even with nothing in it.
        (None, None) => ChainEntry::empty(),
    };
    let entry = ChainEntry {
        seq: head.as_ref().map_or(1, |h| h.seq.saturating_add(1)),
        prev: head
            .as_ref()
            .map_or_else(|| GENESIS_PREV.to_string(), |h| h.hash.clone()),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ..entry
    };
    let line = serde_json::to_string(&entry).expect("a chain entry serialises");
    let path = dir.join(CHAIN_FILE);
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    let file_len = file.metadata().at(&path)?.len();
    let committed_len = head.as_ref().map_or(0, |h| h.len);
    let offset = if file_len > committed_len && only_uncommitted_entry(dir, &head, committed_len)? {
        tracing::warn!(path = %path.display(), "a chain entry no manifest named (a change a crash interrupted) is replaced");
        committed_len
    } else {
        file_len
    };
    file.set_len(offset).at(&path)?;
    file.seek(SeekFrom::Start(offset)).at(&path)?;
    let mut bytes = line.into_bytes();
    let hash = entry_hash(&bytes);
    bytes.push(b'\n');
    fsutil::fault_point("chain.write")
        .and_then(|()| file.write_all(&bytes))
        .at(&path)?;
    fsutil::fault_point("chain.fsync")
        .and_then(|()| file.sync_all())
        .at(&path)?;
    if !existed {
        fsutil::sync_dir(dir)?;
    }
    next.chain = Some(ChainHead {
        seq: entry.seq,
        hash,
        len: offset + bytes.len() as u64,
    });
    Ok(())
}

/// Whether what follows the committed head in `CHAIN` is one entry that follows it: what a
/// crash between appending an entry and saving the manifest leaves. Anything else past the
/// head is kept, for `verify` to report.
fn only_uncommitted_entry(
    dir: &Path,
    head: &Option<ChainHead>,
    committed_len: u64,
) -> Result<bool> {
    let lines = read_lines(dir)?;
    let after: Vec<&ChainLine> = lines.iter().filter(|l| l.offset >= committed_len).collect();
    if lines
        .iter()
        .any(|l| l.offset < committed_len && l.offset + l.len > committed_len)
    {
        // The head does not end on a line boundary: not what a crash leaves.
        return Ok(false);
    }
    Ok(match after[..] {
        [one] => match &one.entry {
            Ok(e) => {
                e.seq == head.as_ref().map_or(1, |h| h.seq.saturating_add(1))
                    && e.prev == head.as_ref().map_or(GENESIS_PREV, |h| h.hash.as_str())
            }
            // A torn line: the append itself was interrupted.
            Err(_) => true,
        },
        _ => false,
    })
}

/// What checking the chain against the manifest found.
#[derive(Debug, Default)]
pub struct ChainReport {
    /// Entries read up to the manifest's head.
    pub entries: u64,
    /// One line per finding, naming the entry or segment.
    pub findings: Vec<String>,
    /// The hash of each entry by number, for checking digests.
    pub hashes: BTreeMap<u64, String>,
}

/// Checks `CHAIN` against `manifest`: the entries link, each follows the one before, and what
/// they leave listed is what the manifest lists (same files, rows, times and Merkle roots),
/// what they expired the manifest records as expired.
pub fn check(dir: &Path, manifest: &Manifest) -> Result<ChainReport> {
    Ok(check_lines(&read_lines(dir)?, manifest))
}

/// [`check`] of a `CHAIN` file's lines.
pub fn check_lines(lines: &[ChainLine], manifest: &Manifest) -> ChainReport {
    let mut report = ChainReport::default();
    let Some(head) = &manifest.chain else {
        report
            .findings
            .push("the manifest names no chain head: the history is not chained".into());
        return report;
    };
    let mut state = ChainState::default();
    let mut prev = GENESIS_PREV.to_string();
    let mut expected_seq = 1u64;
    for line in lines.iter().filter(|l| l.offset < head.len) {
        let entry = match &line.entry {
            Ok(e) => e,
            Err(reason) => {
                report.findings.push(format!(
                    "chain entry at byte {} of {CHAIN_FILE} is unreadable: {reason}",
                    line.offset
                ));
                continue;
            }
        };
        if entry.seq != expected_seq {
            report.findings.push(if entry.seq > expected_seq {
                format!(
                    "chain entries {expected_seq}..{} are missing (entry {} follows entry {})",
                    entry.seq - 1,
                    entry.seq,
                    expected_seq - 1
                )
            } else {
                format!(
                    "chain entry {} is out of order (after entry {})",
                    entry.seq,
                    expected_seq - 1
                )
            });
        } else if entry.prev != prev {
            report.findings.push(format!(
                "chain entry {}: does not follow the entry before it (its prev is {}, that entry's hash {})",
                entry.seq,
                short(&entry.prev),
                short(&prev)
            ));
        }
        report.findings.extend(state.apply(entry));
        report.hashes.insert(entry.seq, line.hash.clone());
        prev = line.hash.clone();
        expected_seq = entry.seq.saturating_add(1);
        report.entries += 1;
    }
    match lines.iter().rev().find(|l| l.offset < head.len) {
        None => report.findings.push(format!(
            "the chain is empty, but the manifest's head is entry {}",
            head.seq
        )),
        Some(last) => {
            let last_seq = last.entry.as_ref().map(|e| e.seq).ok();
            if last_seq != Some(head.seq) || last.hash != head.hash {
                report.findings.push(match last_seq {
                    Some(s) if s < head.seq => format!(
                        "the chain is truncated: it ends at entry {s}, the manifest's head is entry {}",
                        head.seq
                    ),
                    _ => format!(
                        "chain entry {} is not the entry the manifest names as head (hash {})",
                        head.seq,
                        short(&head.hash)
                    ),
                });
            }
        }
    }
    let past_head = lines.iter().filter(|l| l.offset >= head.len).count();
    if past_head > 1 {
        report.findings.push(format!(
            "{past_head} chain entries follow the manifest's head (entry {}): written by no recorded change",
            head.seq
        ));
    }
    compare(&state, manifest, &mut report.findings);
    report
}

/// What the chain leaves listed against what the manifest lists.
fn compare(state: &ChainState, manifest: &Manifest, findings: &mut Vec<String>) {
    for s in &manifest.segments {
        let hour = hour_of_path(&s.path);
        match state.live.get(&s.id) {
            None => findings.push(format!(
                "segment {} ({hour}, {} events) is listed in the manifest but no chain entry added it: inserted",
                s.id, s.rows
            )),
            Some(l) => {
                let c = ChainSegment::of(s);
                if l.segment != c {
                    findings.push(format!(
                        "segment {} ({hour}): the manifest's entry differs from chain entry {} ({}): modified",
                        s.id,
                        l.added_by,
                        differences(&l.segment, &c)
                    ));
                }
                let archived = s.archived.as_ref().map(|a| a.url.as_str());
                if l.archived.as_deref() != archived {
                    findings.push(format!(
                        "segment {} ({hour}): the manifest says archived at {:?}, the chain {:?}",
                        s.id, archived, l.archived
                    ));
                }
            }
        }
    }
    for (id, l) in &state.live {
        if !manifest.segments.iter().any(|s| s.id == *id) {
            let how = if manifest.expired.iter().any(|e| e.id == *id) {
                "recorded as expired in the manifest but in no chain entry"
            } else {
                "missing from the manifest: deleted"
            };
            findings.push(format!(
                "segment {id} ({}, {} events, added by chain entry {}) is {how}",
                hour_of_path(&l.segment.path),
                l.segment.rows,
                l.added_by
            ));
        }
    }
    for e in &manifest.expired {
        if !state.expired.contains_key(&e.id) && !state.live.contains_key(&e.id) {
            findings.push(format!(
                "segment {} is recorded as expired ({}) but no chain entry expired it",
                e.id, e.policy
            ));
        }
    }
    for (id, (policy, seq)) in &state.expired {
        if !manifest.expired.iter().any(|e| e.id == *id) {
            findings.push(format!(
                "segment {id}, expired by chain entry {seq} ({policy}), is not recorded as expired in the manifest"
            ));
        }
    }
}

fn differences(chain: &ChainSegment, manifest: &ChainSegment) -> String {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} in the chain, {b} in the manifest"));
        }
    };
    field("path", chain.path.clone(), manifest.path.clone());
    field("rows", chain.rows.to_string(), manifest.rows.to_string());
    field(
        "min_ts",
        chain.min_ts.to_string(),
        manifest.min_ts.to_string(),
    );
    field(
        "max_ts",
        chain.max_ts.to_string(),
        manifest.max_ts.to_string(),
    );
    field("sha256", short(&chain.sha256), short(&manifest.sha256));
    field(
        "index sha256",
        short(&chain.index_sha256),
        short(&manifest.index_sha256),
    );
    field(
        "merkle root",
        chain.merkle_root.as_deref().map(short).unwrap_or_default(),
        manifest
            .merkle_root
            .as_deref()
            .map(short)
            .unwrap_or_default(),
    );
    out.join("; ")
}

/// The first 12 hex digits of a hash: enough to tell two apart in a message.
pub fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// `dt=2026-05-01 hour=13` of a segment path.
pub fn hour_of_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| p.starts_with("dt=") || p.starts_with("hour="))
        .collect();
    if parts.is_empty() {
        path.to_string()
    } else {
        parts.join(" ")
    }
}
