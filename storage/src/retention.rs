//! Expiry: segments older than a retention policy allows are deleted, and each deletion is
//! recorded in the manifest first (`Manifest::expired`: the segment's summary, the policy,
//! when), so a gap in the history is always accounted for. The files go after the record;
//! a run that fails between leaves `files_deleted: false`, and the next run deletes them.

use std::sync::Arc;

use crate::error::Result;
use crate::manifest::Expired;
use crate::segment::{self, Segment};
use crate::{Inner, Store};

const HOUR_NS: i64 = 3_600_000_000_000;

impl Store {
    /// Deletes every segment (local or archived) whose hour ended before `before` (ns since
    /// the epoch), recording each under `policy`; returns what it recorded now. Damaged
    /// segments are kept (their files are evidence).
    pub fn expire(&self, before: i64, policy: &str) -> Result<Vec<Expired>> {
        let inner = &self.inner;
        let recorded = {
            let _m = inner.maintenance.lock();
            let mut manifest = inner.state.read().manifest.clone();
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let (gone, kept): (Vec<_>, Vec<_>) = manifest.segments.into_iter().partition(|m| {
                m.damaged.is_none() && (segment::hour_of(m.max_ts) + 1) * HOUR_NS <= before
            });
            manifest.segments = kept;
            let recorded: Vec<Expired> = gone
                .iter()
                .map(|m| Expired {
                    id: m.id,
                    path: m.path.clone(),
                    index_path: m.index_path.clone(),
                    rows: m.rows,
                    min_ts: m.min_ts,
                    max_ts: m.max_ts,
                    sha256: m.sha256.clone(),
                    index_sha256: m.index_sha256.clone(),
                    archive: m.archived.as_ref().map(|a| a.url.clone()),
                    policy: policy.to_string(),
                    at: at.clone(),
                    files_deleted: false,
                })
                .collect();
            if recorded.is_empty() {
                return self.delete_expired_files().map(|()| Vec::new());
            }
            manifest.expired.extend(recorded.iter().cloned());
            manifest.save(&inner.dir)?;
            let mut st = inner.state.write();
            let mut retired: Vec<Arc<Segment>> = Vec::new();
            st.segments.retain(|s| {
                let expired = recorded.iter().any(|e| e.id == s.meta.id);
                if expired {
                    retired.push(s.clone());
                }
                !expired
            });
            st.manifest = manifest;
            drop(st);
            // Local files go with the last reader of each handle.
            for s in retired.iter().filter(|s| s.archive().is_none()) {
                s.retire();
            }
            recorded
        };
        self.delete_expired_files()?;
        Ok(recorded)
    }

    /// Deletes the archived files of expired segments not deleted yet, then records that.
    fn delete_expired_files(&self) -> Result<()> {
        let inner: &Inner = &self.inner;
        let pending: Vec<Expired> = inner
            .state
            .read()
            .manifest
            .expired
            .iter()
            .filter(|e| !e.files_deleted)
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut done = Vec::new();
        for e in &pending {
            if let Some(url) = &e.archive {
                let archive = inner.archives.get(url)?;
                archive.delete_expired(e)?;
            }
            done.push(e.id);
        }
        let _m = inner.maintenance.lock();
        let mut manifest = inner.state.read().manifest.clone();
        for e in manifest.expired.iter_mut().filter(|e| done.contains(&e.id)) {
            e.files_deleted = true;
        }
        manifest.save(&inner.dir)?;
        inner.state.write().manifest = manifest;
        Ok(())
    }
}
