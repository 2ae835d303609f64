//! Archives: sealed segments moved to object storage (`file:///…`, `s3://bucket/prefix`).
//!
//! Layout below the archive's prefix (a contract other tools read):
//! `segments/dt=YYYY-MM-DD/hour=HH/<id>.parquet` and `.idx`, the same paths as in the store
//! directory, and `manifest/<id>.json`, the segment's manifest entry.
//!
//! A segment is archived in this order, so a crash anywhere loses nothing and never makes
//! two segments of one: both files are uploaded to keys named by the segment's id, read back
//! and their SHA-256 compared with the manifest's; the manifest entry is uploaded; the
//! manifest records the archive; the local files are deleted once no reader holds them. A
//! run after a crash uploads again to the same keys what the manifest does not list as
//! archived, and an open deletes the local leftovers of what it does.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::manifest::{Archived, Expired, SegmentMeta};
use crate::segment::Segment;

/// Directory of the store that keeps archived segments' indexes read back (a cache: bounded,
/// checked against the manifest on every load, fetched again when missing).
pub const INDEX_CACHE_DIR: &str = "archive-cache";

/// One archive location and the client that reaches it.
pub struct Archive {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// `scheme://host`: where a DataFusion runtime finds [`Archive::object_store`].
    store_url: String,
    /// `file://` archives: object_store's local store writes without fsync, so an upload is
    /// synced here before the local copy may go.
    local_root: Option<PathBuf>,
    /// The archive's own I/O runtime: its clients' connections live on it, whoever calls.
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("url", &self.url).finish()
    }
}

impl Archive {
    /// The archive at `url`: `file:///absolute/dir` or `s3://bucket[/prefix]` (S3 settings from
    /// the standard AWS environment: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...). Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Arc<Archive>> {
        let bad = |reason: String| StorageError::Archive {
            url: url.to_string(),
            key: String::new(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        let url = url.trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ktrail-archive")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start its I/O thread: {e}")))?;
        let (store, prefix, store_url, local_root): (Arc<dyn ObjectStore>, _, _, _) =
            match parsed.scheme() {
                "file" => {
                    let root = parsed
                        .to_file_path()
                        .map_err(|()| bad("a file:// archive needs an absolute path".into()))?;
                    let prefix =
                        ObjectPath::from_absolute_path(&root).map_err(|e| bad(e.to_string()))?;
                    (
                        Arc::new(LocalFileSystem::new()),
                        prefix,
                        "file://".to_string(),
                        Some(root),
                    )
                }
                "s3" | "s3a" => {
                    let bucket = parsed
                        .host_str()
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| bad("an s3:// archive needs a bucket".into()))?;
                    let store = AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .build()
                        .map_err(|e| bad(e.to_string()))?;
                    let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
                    (Arc::new(store), prefix, format!("s3://{bucket}"), None)
                }
                other => {
                    return Err(bad(format!(
                        "archives are file:// or s3:// URLs, not {other}://"
                    )));
                }
            };
        Ok(Arc::new(Archive {
            url,
            store,
            prefix,
            store_url,
            local_root,
            runtime,
        }))
    }

    /// The URL the archive was opened with (no trailing slash), as the manifest records it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client of the archive's object store.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// `scheme://host` of [`Archive::object_store`], for a DataFusion `ObjectStoreUrl`.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The object key of `rel`, a path relative to the archive's prefix.
    pub fn key(&self, rel: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            key = key.join(part);
        }
        key
    }

    /// Runs `f` on the archive's I/O runtime and waits for it, from any thread (async callers
    /// included: the wait blocks the calling thread, never re-enters its runtime).
    pub(crate) fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.runtime.spawn(f);
        futures::executor::block_on(task).expect("archive I/O task")
    }

    /// Makes a `file://` archive's directory, durably, before the first upload (opening an
    /// archive to read creates nothing).
    fn create_root(&self) -> Result<()> {
        match &self.local_root {
            Some(root) => fsutil::create_dir_durable(root),
            None => Ok(()),
        }
    }

    fn error(&self, key: &ObjectPath, reason: impl std::fmt::Display) -> StorageError {
        StorageError::Archive {
            url: self.url.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Uploads a store file to `key`, then makes it durable where the archive is local.
    async fn upload(self: Arc<Self>, local: PathBuf, key: ObjectPath) -> Result<()> {
        let mut file = tokio::fs::File::open(&local).await.at(&local)?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), key.clone());
        tokio::io::copy(&mut file, &mut writer)
            .await
            .map_err(|e| self.error(&key, e))?;
        writer.shutdown().await.map_err(|e| self.error(&key, e))?;
        self.sync_local(&key)
    }

    /// Makes the object at `key` durable where the archive is local (object_store's local
    /// store never fsyncs).
    fn sync_local(&self, key: &ObjectPath) -> Result<()> {
        if self.local_root.is_some() {
            let path = PathBuf::from(format!("/{key}"));
            fs::File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
            // Every directory from the file up to the archive's root: any may be new.
            let mut dir = path.parent();
            while let Some(d) = dir {
                fsutil::sync_dir(d)?;
                if Some(d) == self.local_root.as_deref() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(())
    }

    /// Writes `bytes` as the object at `rel` (a path below the prefix), durably.
    pub fn put(self: &Arc<Self>, rel: &str, bytes: Vec<u8>) -> Result<()> {
        self.create_root()?;
        let key = self.key(rel);
        let this = self.clone();
        self.run(async move {
            this.store
                .put(&key, bytes.into())
                .await
                .map_err(|e| this.error(&key, e))?;
            this.sync_local(&key)
        })
    }

    /// Every object below `rel_dir`, with its bytes, in key order: names relative to
    /// `rel_dir`.
    pub fn get_all(self: &Arc<Self>, rel_dir: &str) -> Result<Vec<(String, bytes::Bytes)>> {
        let this = self.clone();
        let prefix = self.key(rel_dir);
        self.run(async move {
            let mut keys = Vec::new();
            let mut list = this.store.list(Some(&prefix));
            while let Some(meta) = list.next().await {
                keys.push(meta.map_err(|e| this.error(&prefix, e))?.location);
            }
            keys.sort();
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let got = this
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| this.error(&key, e))?;
                let bytes = got.bytes().await.map_err(|e| this.error(&key, e))?;
                let name = key
                    .prefix_match(&prefix)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| key.to_string());
                out.push((name, bytes));
            }
            Ok(out)
        })
    }

    /// Deletes `keys`; one already gone is not an error (a run that failed between retries).
    async fn delete_all(&self, keys: impl IntoIterator<Item = ObjectPath>) -> Result<()> {
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&key, e)),
            }
        }
        Ok(())
    }

    /// SHA-256 (hex) and length of the object at `key`, read back in full; `None` when the
    /// archive has no such object.
    async fn digest(self: Arc<Self>, key: ObjectPath) -> Result<Option<(String, u64)>> {
        let mut stream = match self.store.get(&key).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(&key, e)),
        };
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(&key, e))?;
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((hex::encode(hasher.finalize()), len)))
    }

    /// Copies a segment's files to the archive and reads them back: `Ok` only when both are
    /// there with the manifest's SHA-256 and size. Its manifest entry goes first, and only
    /// where the archive holds no other segment of that id (a store whose manifest was rebuilt
    /// without its archive would hand out archived ids again): nothing archived is ever
    /// overwritten by another segment.
    pub(crate) fn put_segment(self: &Arc<Self>, dir: &Path, meta: &SegmentMeta) -> Result<()> {
        let entry = entry_key(meta.id);
        let json = serde_json::to_vec_pretty(meta).expect("a manifest entry serialises");
        let this = self.clone();
        self.run(async move {
            let key = this.key(&entry);
            match this.store.get(&key).await {
                Ok(found) => {
                    let found = found.bytes().await.map_err(|e| this.error(&key, e))?;
                    if found.as_ref() != json.as_slice() {
                        return Err(this.error(
                            &key,
                            "the archive holds another segment of this id; nothing was uploaded, the local copy is kept",
                        ));
                    }
                    Ok(())
                }
                Err(object_store::Error::NotFound { .. }) => this
                    .store
                    .put(&key, json.into())
                    .await
                    .map_err(|e| this.error(&key, e))
                    .map(|_| ()),
                Err(e) => Err(this.error(&key, e)),
            }
        })?;
        let files = [
            (&meta.path, &meta.sha256, meta.bytes),
            (&meta.index_path, &meta.index_sha256, meta.index_bytes),
        ];
        for (rel, sha, bytes) in files {
            let key = self.key(rel);
            self.run(self.clone().upload(dir.join(rel), key.clone()))?;
            let Some((found, len)) = self.run(self.clone().digest(key.clone()))? else {
                return Err(self.error(
                    &key,
                    "not found right after its upload; the local copy is kept",
                ));
            };
            if &found != sha || len != bytes {
                return Err(self.error(
                    &key,
                    format!(
                        "read back {len} bytes with SHA-256 {found}, not the {bytes} bytes with {sha} uploaded; \
                         the local copy is kept"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The manifest entries the archive holds (`manifest/<id>.json`), each with its copies
    /// read back and checked: entries whose files are missing or differ are returned apart,
    /// with the finding (an upload a crash interrupted leaves an entry without files).
    pub fn entries(self: &Arc<Self>) -> Result<ArchiveEntries> {
        let this = self.clone();
        let listed: Vec<(ObjectPath, bytes::Bytes)> = self.run(async move {
            let prefix = this.key("manifest");
            let mut out = Vec::new();
            let mut list = this.store.list(Some(&prefix));
            while let Some(object) = list.next().await {
                let object = object.map_err(|e| this.error(&prefix, e))?;
                let bytes = this
                    .store
                    .get(&object.location)
                    .await
                    .map_err(|e| this.error(&object.location, e))?
                    .bytes()
                    .await
                    .map_err(|e| this.error(&object.location, e))?;
                out.push((object.location, bytes));
            }
            Ok::<_, StorageError>(out)
        })?;
        let (mut whole, mut findings) = (Vec::new(), Vec::new());
        for (key, bytes) in listed {
            let meta: SegmentMeta = match serde_json::from_slice(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    findings.push((key.to_string(), format!("not a manifest entry: {e}")));
                    continue;
                }
            };
            let mut problem = None;
            for (rel, sha) in [
                (&meta.path, &meta.sha256),
                (&meta.index_path, &meta.index_sha256),
            ] {
                match self.digest_of(rel)? {
                    None => problem = Some(format!("{} is missing", self.key(rel))),
                    Some((found, _)) if &found != sha => {
                        problem = Some(format!("{}: SHA-256 {found}, not {sha}", self.key(rel)))
                    }
                    Some(_) => {}
                }
            }
            match problem {
                Some(p) => findings.push((key.to_string(), p)),
                None => whole.push(meta),
            }
        }
        whole.sort_by_key(|m| m.id);
        Ok(ArchiveEntries { whole, findings })
    }

    /// Deletes what [`Archive::put_segment`] wrote for a segment the store no longer lists
    /// (compaction replaced it during the upload).
    pub(crate) fn delete_segment(self: &Arc<Self>, meta: &SegmentMeta) -> Result<()> {
        let keys = [
            self.key(&meta.path),
            self.key(&meta.index_path),
            self.key(&entry_key(meta.id)),
        ];
        let this = self.clone();
        self.run(async move { this.delete_all(keys).await })
    }

    /// Deletes an expired segment's objects, leaving `expired/<id>.json` (the manifest's
    /// record of it) in place of its entry, so the archive says what it no longer holds.
    pub(crate) fn delete_expired(self: &Arc<Self>, expired: &Expired) -> Result<()> {
        let record = self.key(&format!("expired/{}.json", expired.id));
        let json = serde_json::to_vec_pretty(expired).expect("an expiry record serialises");
        let keys = [
            self.key(&expired.path),
            self.key(&expired.index_path),
            self.key(&entry_key(expired.id)),
        ];
        let this = self.clone();
        self.run(async move {
            this.store
                .put(&record, json.into())
                .await
                .map_err(|e| this.error(&record, e))?;
            this.delete_all(keys).await
        })
    }

    /// The object at `rel` in full.
    pub(crate) fn get(self: &Arc<Self>, rel: &str) -> Result<bytes::Bytes> {
        let key = self.key(rel);
        let this = self.clone();
        self.run(async move {
            let got = this
                .store
                .get(&key)
                .await
                .map_err(|e| this.error(&key, e))?;
            got.bytes().await.map_err(|e| this.error(&key, e))
        })
    }

    /// SHA-256 and length of the object at `rel`, read in full (`None`: not there).
    pub(crate) fn digest_of(self: &Arc<Self>, rel: &str) -> Result<Option<(String, u64)>> {
        self.run(self.clone().digest(self.key(rel)))
    }

    /// The `event_id` column of an archived segment, by ranged reads of its chunks only.
    pub(crate) fn event_ids(self: &Arc<Self>, meta: &SegmentMeta) -> Result<Vec<i64>> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        use datafusion::datasource::listing::PartitionedFile;
        use datafusion::datasource::physical_plan::parquet::{
            DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
        };
        use datafusion::parquet::arrow::ParquetRecordBatchStreamBuilder;
        use datafusion::parquet::arrow::ProjectionMask;
        use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
        let key = self.key(&meta.path);
        let this = self.clone();
        let size = meta.bytes;
        self.run(async move {
            let fail = |e: datafusion::parquet::errors::ParquetError| this.error(&key, e);
            let reader = DefaultParquetFileReaderFactory::new(this.store.clone())
                .create_reader(
                    0,
                    PartitionedFile::new(key.to_string(), size),
                    None,
                    &ExecutionPlanMetricsSet::new(),
                )
                .map_err(|e| this.error(&key, e))?;
            let builder = ParquetRecordBatchStreamBuilder::new(SendReader(reader))
                .await
                .map_err(fail)?;
            let column = builder
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.name() == model::col::EVENT_ID)
                .ok_or_else(|| this.error(&key, "no event_id column"))?;
            let mask = ProjectionMask::leaves(builder.parquet_schema(), [column]);
            let mut stream = builder.with_projection(mask).build().map_err(fail)?;
            let mut ids = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(fail)?;
                ids.extend_from_slice(batch.column(0).as_primitive::<Int64Type>().values());
            }
            Ok(ids)
        })
    }
}

/// What [`Archive::entries`] found.
#[derive(Debug, Default)]
pub struct ArchiveEntries {
    /// Entries whose files are there with their SHA-256s, in id order.
    pub whole: Vec<SegmentMeta>,
    /// The key of each other entry, and what is wrong with it.
    pub findings: Vec<(String, String)>,
}

/// Where a segment's manifest entry lives below the archive's prefix.
fn entry_key(id: u64) -> String {
    format!("manifest/{id}.json")
}

/// The archives a store's segments live in, one client per URL.
#[derive(Default)]
pub(crate) struct Archives {
    open: Mutex<HashMap<String, Arc<Archive>>>,
}

impl Archives {
    pub(crate) fn get(&self, url: &str) -> Result<Arc<Archive>> {
        let mut open = self.open.lock();
        if let Some(a) = open.get(url.trim_end_matches('/')) {
            return Ok(a.clone());
        }
        let archive = Archive::open(url)?;
        open.insert(archive.url().to_string(), archive.clone());
        Ok(archive)
    }

    pub(crate) fn insert(&self, archive: Arc<Archive>) {
        self.open.lock().insert(archive.url().to_string(), archive);
    }
}

/// Where a store keeps archived segments' indexes, and how many bytes of them at most.
#[derive(Debug)]
pub struct IndexCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
    lock: Mutex<()>,
}

impl IndexCache {
    pub fn new(store_dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: store_dir.join(INDEX_CACHE_DIR),
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    /// The cached copy of segment `id`'s index.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.idx"))
    }

    /// The bytes of `meta`'s index: the cached copy when it has the manifest's SHA-256,
    /// otherwise fetched from the archive (checked, then cached).
    pub(crate) fn load(&self, archive: &Arc<Archive>, meta: &SegmentMeta) -> Result<Vec<u8>> {
        let path = self.path(meta.id);
        if let Ok(bytes) = fs::read(&path)
            && hex::encode(Sha256::digest(&bytes)) == meta.index_sha256
        {
            // Its time of use orders the eviction.
            let _ =
                fs::File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(bytes);
        }
        let bytes = archive.get(&meta.index_path)?.to_vec();
        let found = hex::encode(Sha256::digest(&bytes));
        if found != meta.index_sha256 {
            return Err(StorageError::Archive {
                url: archive.url().to_string(),
                key: archive.key(&meta.index_path).to_string(),
                reason: format!(
                    "the index read from the archive has SHA-256 {found}, not the manifest's {}",
                    meta.index_sha256
                ),
            });
        }
        let _guard = self.lock.lock();
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let tmp = fsutil::tmp_path(&path);
        fs::write(&tmp, &bytes).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        self.trim(&path)?;
        Ok(bytes)
    }

    /// Deletes the least recently used cached indexes past [`IndexCache::max_bytes`], never
    /// `keep` (a cache: no sync needed).
    fn trim(&self, keep: &Path) -> Result<()> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let meta = entry.metadata().at(entry.path())?;
            files.push((meta.modified().ok(), meta.len(), entry.path()));
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep {
                fs::remove_file(&path).at(&path)?;
                total -= len;
            }
        }
        Ok(())
    }
}

/// What one archive run did.
#[derive(Debug, Default, Clone)]
pub struct ArchiveReport {
    /// Segments archived now: id, rows, bytes of both files.
    pub archived: Vec<(u64, u64, u64)>,
    /// Segments old enough but recorded as damaged: never archived (their files are evidence
    /// in `quarantine/`).
    pub damaged_kept: Vec<u64>,
}

impl ArchiveReport {
    pub fn bytes(&self) -> u64 {
        self.archived.iter().map(|a| a.2).sum()
    }

    pub fn rows(&self) -> u64 {
        self.archived.iter().map(|a| a.1).sum()
    }
}

impl crate::Inner {
    /// A handle for a listed segment, archived or local as its entry says.
    pub(crate) fn handle(&self, meta: SegmentMeta) -> Result<Segment> {
        Ok(match &meta.archived {
            Some(a) => Segment::archived(
                &self.dir,
                meta.clone(),
                self.archives.get(&a.url)?,
                self.index_cache.clone(),
            ),
            None => Segment::new(&self.dir, meta),
        })
    }

    /// Records `meta` as archived in `archive` and swaps its handle; the local files go with
    /// the last reader of the old one. False when the segment is no longer listed as it was
    /// (compaction replaced it, or damage was found meanwhile).
    fn record_archived(&self, meta: &SegmentMeta, archive: &Arc<Archive>) -> Result<bool> {
        let _m = self.maintenance.lock();
        let mut manifest = self.state.read().manifest.clone();
        let Some(entry) = manifest
            .segments
            .iter_mut()
            .find(|m| m.id == meta.id && m.damaged.is_none() && m.archived.is_none())
        else {
            return Ok(false);
        };
        entry.archived = Some(Archived {
            url: archive.url().to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let archived = Segment::archived(
            &self.dir,
            entry.clone(),
            archive.clone(),
            self.index_cache.clone(),
        );
        manifest.save(&self.dir)?;
        let mut st = self.state.write();
        if let Some(s) = st.segments.iter_mut().find(|s| s.meta.id == meta.id) {
            s.retire_moved();
            *s = Arc::new(archived);
        }
        st.manifest = manifest;
        Ok(true)
    }
}

impl crate::Store {
    /// Moves every sealed segment whose hour ended before `before` (ns since the epoch) to
    /// `archive`: each is uploaded, read back and checked, recorded in the manifest, then its
    /// local files are deleted (see the module's documentation for why a crash anywhere loses
    /// nothing). `progress` is called with bytes done and bytes to do. An error stops the run:
    /// what was archived before it stays archived, nothing else changed locally.
    pub fn archive(
        &self,
        archive: &Arc<Archive>,
        before: i64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ArchiveReport> {
        let inner = &self.inner;
        inner.archives.insert(archive.clone());
        let hour_ns = 3_600_000_000_000i64;
        let mut report = ArchiveReport::default();
        let mut todo = Vec::new();
        // The handles keep the files of a segment compaction replaces meanwhile.
        for s in self.snapshot().segments {
            let sealed = (crate::segment::hour_of(s.meta.max_ts) + 1) * hour_ns <= before;
            if !sealed || s.archive().is_some() {
                continue;
            }
            if s.meta.damaged.is_some() {
                report.damaged_kept.push(s.meta.id);
                continue;
            }
            todo.push(s);
        }
        if !todo.is_empty() {
            archive.create_root()?;
        }
        let total: u64 = todo.iter().map(|s| s.meta.bytes + s.meta.index_bytes).sum();
        let mut done = 0;
        progress(done, total);
        for segment in todo {
            let meta = &segment.meta;
            archive.put_segment(&inner.dir, meta)?;
            if inner.record_archived(meta, archive)? {
                report
                    .archived
                    .push((meta.id, meta.rows, meta.bytes + meta.index_bytes));
            } else {
                archive.delete_segment(meta)?;
            }
            done += meta.bytes + meta.index_bytes;
            progress(done, total);
        }
        Ok(report)
    }
}

/// DataFusion's object-store reader, as the `Send` reader parquet's stream builder takes
/// (parquet implements its trait for boxed readers without `Send` only).
struct SendReader(Box<dyn datafusion::parquet::arrow::async_reader::AsyncFileReader + Send>);

impl datafusion::parquet::arrow::async_reader::AsyncFileReader for SendReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<bytes::Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<Vec<bytes::Bytes>>>
    {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        datafusion::parquet::errors::Result<
            Arc<datafusion::parquet::file::metadata::ParquetMetaData>,
        >,
    > {
        self.0.get_metadata(options)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use model::batch_of;

    use super::*;
    use crate::tests::event;
    use crate::{Store, StoreOptions};

    fn opts() -> StoreOptions {
        StoreOptions {
            background: false,
            ..Default::default()
        }
    }

    /// A store with two hours of events in segments (4 000 s from the tests' epoch).
    fn store_of_two_hours(dir: &Path) -> Store {
        let (store, _) = Store::open(dir, opts()).unwrap();
        let events: Vec<_> = (0..4000).map(|i| event(i, "billing", "api-1")).collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
        store
    }

    fn files_under(dir: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    fn ids(store: &Store) -> Vec<i64> {
        let mut ids = store.snapshot().event_ids().unwrap();
        ids.sort();
        ids
    }

    #[test]
    fn archived_segments_leave_the_disk_and_are_read_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let before = store.manifest();
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        let mut calls = Vec::new();
        let report = store
            .archive(&archive, i64::MAX, &mut |done, total| {
                calls.push((done, total))
            })
            .unwrap();
        assert_eq!(report.archived.len(), before.segments.len());
        assert_eq!(report.rows(), 4000);
        let total = report.bytes();
        assert_eq!(calls.first(), Some(&(0, total)));
        assert_eq!(calls.last(), Some(&(total, total)));
        // The layout other tools read: the store's paths below the prefix, and the entries.
        let mut expected = BTreeSet::new();
        for s in &before.segments {
            expected.insert(s.path.clone());
            expected.insert(s.index_path.clone());
            expected.insert(format!("manifest/{}.json", s.id));
        }
        assert_eq!(files_under(remote.path()), expected);
        assert!(
            files_under(&dir.path().join("segments")).is_empty(),
            "local copies are gone"
        );
        assert_eq!(ids(&store), (0..4000).collect::<Vec<_>>());
        store.verify().unwrap();
        drop(store);

        let (store, _) = Store::open(dir.path(), opts()).unwrap();
        let manifest = store.manifest();
        assert!(manifest.segments.iter().all(|s| s.archived.is_some()));
        assert_eq!(ids(&store), (0..4000).collect::<Vec<_>>());
        // Indexes come through the cache, fetched once and checked.
        for s in &store.snapshot().segments {
            assert!(s.index().unwrap().has_column("pod"));
        }
        assert_eq!(
            fs::read_dir(dir.path().join(INDEX_CACHE_DIR))
                .unwrap()
                .count(),
            manifest.segments.len()
        );
        // Deduplication reads the archived ids: events sent again are not stored again.
        let again: Vec<_> = (0..10).map(|i| event(i, "billing", "api-1")).collect();
        assert_eq!(store.append(batch_of(&again)).unwrap().duplicates, 10);
        // A second run has nothing to do.
        let report = store.archive(&archive, i64::MAX, &mut |_, _| {}).unwrap();
        assert!(report.archived.is_empty());
    }

    #[test]
    fn only_hours_ended_before_the_cutoff_are_archived() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        let first_hour = crate::segment::hour_of(store.manifest().segments[0].min_ts);
        let hour_ns = 3_600_000_000_000;
        // The first hour ends at the cutoff; the second does not.
        let report = store
            .archive(&archive, (first_hour + 1) * hour_ns, &mut |_, _| {})
            .unwrap();
        let manifest = store.manifest();
        let archived: Vec<i64> = manifest
            .segments
            .iter()
            .filter(|s| s.archived.is_some())
            .map(|s| crate::segment::hour_of(s.min_ts))
            .collect();
        assert!(!report.archived.is_empty());
        assert!(archived.iter().all(|h| *h == first_hour));
        assert!(manifest.segments.iter().any(|s| s.archived.is_none()));
        assert_eq!(ids(&store), (0..4000).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_before_or_after_the_manifest_records_an_upload_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        let metas = store.manifest().segments;
        // Before: uploaded, not recorded. The next run uploads it again to the same keys.
        archive.put_segment(dir.path(), &metas[0]).unwrap();
        drop(store);
        let (store, _) = Store::open(dir.path(), opts()).unwrap();
        assert!(
            store
                .manifest()
                .segments
                .iter()
                .all(|s| s.archived.is_none())
        );
        let local: Vec<(String, Vec<u8>)> = metas
            .iter()
            .flat_map(|m| [&m.path, &m.index_path])
            .map(|p| (p.clone(), fs::read(dir.path().join(p)).unwrap()))
            .collect();
        let report = store.archive(&archive, i64::MAX, &mut |_, _| {}).unwrap();
        assert_eq!(report.archived.len(), metas.len());
        assert_eq!(files_under(remote.path()).len(), 3 * metas.len());
        store.close().unwrap();
        // After: recorded, local files not deleted yet. The open deletes them as moved.
        for (p, bytes) in &local {
            fs::write(dir.path().join(p), bytes).unwrap();
        }
        let (store, report) = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(report.removed_orphans.len(), local.len());
        assert!(report.quarantined.is_empty());
        assert!(files_under(&dir.path().join("segments")).is_empty());
        assert_eq!(ids(&store), (0..4000).collect::<Vec<_>>());
    }

    #[test]
    fn an_archived_copy_changed_or_gone_is_damage_found_by_verify() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        store.archive(&archive, i64::MAX, &mut |_, _| {}).unwrap();
        let metas = store.manifest().segments;
        let changed = remote.path().join(&metas[0].path);
        let mut bytes = fs::read(&changed).unwrap();
        bytes[100] ^= 1;
        fs::write(&changed, bytes).unwrap();
        drop(store);
        let (store, _) = Store::open(dir.path(), opts()).unwrap();
        match store.verify() {
            Err(StorageError::Damaged { id, reason, .. }) => {
                assert_eq!(id, metas[0].id);
                assert!(reason.contains("differs from the manifest"), "{reason}");
            }
            other => panic!("expected damage, got {other:?}"),
        }
        assert_eq!(store.quarantine_damaged().unwrap(), 1);
        let damaged = store.damaged();
        assert_eq!(damaged.len(), 1);
        assert!(damaged[0].damaged.as_ref().unwrap().quarantined.is_empty());
        // The archive's copy is evidence: nothing there was moved or deleted.
        assert!(changed.exists());
    }

    #[test]
    fn a_lost_manifest_is_rebuilt_with_the_archived_segments_and_no_id_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        store.archive(&archive, i64::MAX, &mut |_, _| {}).unwrap();
        let archived = store.manifest().segments;
        drop(store);
        let manifest = dir.path().join(crate::manifest::MANIFEST_FILE);

        // Rebuilt without the archive: its segments are not known, and their ids would be
        // handed out again; the archive refuses another segment under an archived id.
        fs::remove_file(&manifest).unwrap();
        let report = crate::repair(dir.path(), opts(), &[]).unwrap();
        assert_eq!(report.segments, 0);
        let (store, _) = Store::open(dir.path(), opts()).unwrap();
        let late: Vec<_> = (0..5).map(|i| event(i, "billing", "api-1")).collect();
        store.append(batch_of(&late)).unwrap();
        store.flush().unwrap();
        let reused = store.manifest().segments[0].id;
        assert!(archived.iter().any(|m| m.id == reused));
        let err = store
            .archive(&archive, i64::MAX, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds another segment of this id"), "{err}");
        assert_eq!(
            files_under(remote.path()).len(),
            3 * archived.len(),
            "nothing overwritten"
        );
        drop(store);

        // Rebuilt with it: every archived segment is listed again, after its copies checked.
        fs::remove_file(&manifest).unwrap();
        for f in files_under(&dir.path().join("segments")) {
            fs::remove_file(dir.path().join("segments").join(f)).unwrap();
        }
        let report = crate::repair(dir.path(), opts(), std::slice::from_ref(&archive)).unwrap();
        assert_eq!(report.archived, archived.len());
        assert!(report.archive_findings.is_empty());
        let (store, _) = Store::open(dir.path(), opts()).unwrap();
        let listed = store.manifest();
        assert!(listed.segments.iter().all(|s| s.archived.is_some()));
        assert!(listed.next_segment_id > archived.iter().map(|m| m.id).max().unwrap());
        assert_eq!(ids(&store), (0..4000).collect::<Vec<_>>());
    }

    #[test]
    fn expiry_deletes_old_hours_and_records_each_segment_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let store = store_of_two_hours(dir.path());
        let archive = Archive::open(&format!("file://{}", remote.path().display())).unwrap();
        let first_hour = crate::segment::hour_of(store.manifest().segments[0].min_ts);
        let end_of_first = (first_hour + 1) * 3_600_000_000_000;
        // The first hour archived, the second local: expiry takes the first from the archive.
        store
            .archive(&archive, end_of_first, &mut |_, _| {})
            .unwrap();
        let first: Vec<SegmentMeta> = store
            .manifest()
            .segments
            .into_iter()
            .filter(|s| s.archived.is_some())
            .collect();
        let expired = store.expire(end_of_first, "retain_archive=1d").unwrap();
        assert_eq!(
            expired.iter().map(|e| e.id).collect::<Vec<_>>(),
            first.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        let manifest = store.manifest();
        assert!(
            manifest
                .expired
                .iter()
                .all(|e| e.files_deleted && e.policy == "retain_archive=1d")
        );
        assert_eq!(manifest.expired.iter().map(|e| e.rows).sum::<u64>(), 3600);
        let remaining = files_under(remote.path());
        for m in &first {
            assert!(remaining.contains(&format!("expired/{}.json", m.id)));
            assert!(
                !remaining.contains(&m.path)
                    && !remaining.contains(&format!("manifest/{}.json", m.id))
            );
        }
        assert_eq!(ids(&store), (3600..4000).collect::<Vec<_>>());

        // The second hour is local: its files go when the last handle does.
        let second = store.manifest().segments;
        let expired = store.expire(i64::MAX, "retain_local=0s").unwrap();
        assert_eq!(expired.len(), second.len());
        assert!(files_under(&dir.path().join("segments")).is_empty());
        drop(store);
        let (store, report) = Store::open(dir.path(), opts()).unwrap();
        assert!(report.quarantined.is_empty());
        assert_eq!(store.snapshot().rows(), 0);
        assert_eq!(store.manifest().expired.len(), first.len() + second.len());
    }

    #[test]
    fn an_unknown_scheme_is_refused_naming_it() {
        let err = Archive::open("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("file:// or s3://"), "{err}");
    }
}
