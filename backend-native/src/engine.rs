//! The engine: one data directory, held with an exclusive lock.
//!
//! ```text
//! <root>/LOCK                          exclusive lock while open
//! <root>/streams/<stream>/stream.json  partition count, retention
//! <root>/streams/<stream>/<p>/{base:020}.log, .idx
//! <root>/offsets/commits.log           group commits
//! <root>/staging/                      streams being created or deleted
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tributary_core::raw::group::{GroupState, MemberId};
use tributary_core::raw::validate_stream_name;
use tributary_core::{Error, ErrorKind, Result, Timestamp};

use crate::blocking::blocking;
use crate::coalesce::Coalescer;
use crate::config::{Durability, NativeConfig};
use crate::log::{LogConfig, PartitionLog, RecoveryReport};
use crate::offsets::OffsetStore;
use crate::storage::{Storage, create_dir_durable, read_all, write_atomic};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StreamMeta {
    partitions: u32,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
}

/// `stream.json` as stored: the settings as a JSON text and the CRC-32C of exactly
/// those bytes, so a changed digit (a partition count read smaller would hide
/// partitions) is found, not obeyed. Files without `v` are the first format (the
/// settings alone), read as they are.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMeta {
    v: u32,
    meta: String,
    crc32c: u32,
}

const META_VERSION: u32 = 2;

impl StreamMeta {
    fn to_json(&self) -> Result<Vec<u8>> {
        let backend = |e: serde_json::Error| Error::new(ErrorKind::Backend, e.to_string());
        let meta = serde_json::to_string(self).map_err(backend)?;
        serde_json::to_vec(&StoredMeta {
            v: META_VERSION,
            crc32c: crc32c::crc32c(meta.as_bytes()),
            meta,
        })
        .map_err(backend)
    }

    /// Reads `stream.json`; `Err` with the reason if it is damaged.
    fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if value.get("v").is_none() {
            return serde_json::from_value(value).map_err(|e| e.to_string());
        }
        let stored: StoredMeta = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if stored.v != META_VERSION {
            return Err(format!("unknown format version {}", stored.v));
        }
        let actual = crc32c::crc32c(stored.meta.as_bytes());
        if actual != stored.crc32c {
            return Err(format!(
                "checksum mismatch (stored {:#010x}, computed {actual:#010x})",
                stored.crc32c
            ));
        }
        serde_json::from_str(&stored.meta).map_err(|e| e.to_string())
    }
}

/// One partition of an open stream.
#[derive(Debug)]
pub(crate) struct Partition {
    /// Its id, made once (deliveries and records carry clones).
    pub id: tributary_core::PartitionId,
    pub log: Arc<PartitionLog>,
    /// Concurrent sends to it, appended together.
    pub appends: Arc<Coalescer>,
    /// When it was created or loaded: partitions newer than a consumer are read from
    /// their start.
    pub created: Instant,
}

#[derive(Debug)]
pub(crate) struct StreamHandle {
    pub name: Arc<str>,
    pub incarnation: u64,
    dir: PathBuf,
    pub partitions: RwLock<Vec<Partition>>,
    pub notify: Notify,
    pub next_unkeyed: AtomicU32,
    pub retention: Option<Duration>,
    /// Set by the delete, before it drops the stream's commits (see
    /// [`Engine::persist_commits`]).
    deleted: AtomicBool,
}

impl StreamHandle {
    pub(crate) fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions().len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn partitions(&self) -> std::sync::RwLockReadGuard<'_, Vec<Partition>> {
        self.partitions.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn log(&self, p: u32) -> Option<Arc<PartitionLog>> {
        self.partitions().get(p as usize).map(|part| part.log.clone())
    }

    /// The log, id and group append of partition `p`.
    pub(crate) fn partition(
        &self,
        p: u32,
    ) -> Option<(Arc<PartitionLog>, tributary_core::PartitionId, Arc<Coalescer>)> {
        self.partitions()
            .get(p as usize)
            .map(|part| (part.log.clone(), part.id.clone(), part.appends.clone()))
    }
}

#[derive(Debug)]
pub(crate) struct Groups {
    pub states: HashMap<(String, String), GroupState>,
    next_member: MemberId,
}

impl Groups {
    pub(crate) fn new_member(&mut self) -> MemberId {
        self.next_member += 1;
        self.next_member
    }
}

#[derive(Debug)]
pub(crate) struct Engine {
    pub root: PathBuf,
    pub config: NativeConfig,
    storage: Arc<dyn Storage>,
    log_config: LogConfig,
    streams: RwLock<BTreeMap<String, Arc<StreamHandle>>>,
    pub groups: Mutex<Groups>,
    /// The persisted group commits. Apart from `groups` so that writing (and in `sync`
    /// mode fsyncing) a commit never holds up the other members of any group.
    pub offsets: Mutex<OffsetStore>,
    closed: AtomicBool,
    lock: Mutex<Option<Box<dyn std::fmt::Debug + Send + Sync>>>,
    background: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    next_incarnation: AtomicU64,
    /// What recovery found per partition at open, by `stream/partition`, and for the
    /// group commits log as `offsets`.
    pub recovery: BTreeMap<String, RecoveryReport>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display())).with_source(e)
}

impl Engine {
    pub(crate) fn open(config: NativeConfig, storage: Arc<dyn Storage>) -> Result<Arc<Self>> {
        config.validate()?;
        let root = config.path.clone();
        create_dir_durable(&*storage, &root)
            .map_err(|e| io_error("creating the data directory", &root, e))?;
        let lock = storage.lock(&root.join("LOCK")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the data directory {} is in use by another open engine (in this or another process)",
                        root.display()
                    ),
                )
            } else {
                io_error("locking", &root, e)
            }
        })?;
        for dir in ["streams", "offsets", "staging"] {
            create_dir_durable(&*storage, &root.join(dir))
                .map_err(|e| io_error("creating", &root.join(dir), e))?;
        }
        let staging = root.join("staging");
        for leftover in storage
            .list(&staging)
            .map_err(|e| io_error("listing", &staging, e))?
        {
            let _ = storage.remove_dir_all(&staging.join(&leftover));
        }
        let log_config = LogConfig {
            segment_bytes: config.segment_bytes,
            segment_age: config.segment_age,
            max_batch_body: config.max_record_bytes.max(1024 * 1024) * 2,
            index_interval: 4096,
            cache_bytes: config.cache_bytes,
            retention_bytes: config.retention_bytes,
            retention: config.retention,
            buffered: config.durability == Durability::Memory,
            read_synced_only: config.durability == Durability::Sync,
        };
        let offsets = OffsetStore::open(
            root.join("offsets").join("commits.log"),
            storage.clone(),
            config.durability == Durability::Sync,
        )?;
        let mut recovery = BTreeMap::new();
        if offsets.dropped_at_open > 0 {
            recovery.insert(
                "offsets".to_string(),
                RecoveryReport {
                    truncated_bytes: offsets.dropped_at_open,
                    ..RecoveryReport::default()
                },
            );
        }
        let mut engine = Self {
            root: root.clone(),
            config,
            storage,
            log_config,
            streams: RwLock::new(BTreeMap::new()),
            groups: Mutex::new(Groups {
                states: HashMap::new(),
                next_member: 0,
            }),
            offsets: Mutex::new(offsets),
            closed: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
            background: Mutex::new(None),
            next_incarnation: AtomicU64::new(0),
            recovery,
        };
        let streams_dir = root.join("streams");
        for name in engine
            .storage
            .list(&streams_dir)
            .map_err(|e| io_error("listing", &streams_dir, e))?
        {
            if validate_stream_name(&name).is_err() {
                continue;
            }
            let handle = engine.load_stream(&name)?;
            engine
                .streams
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, handle);
        }
        engine.reconcile_commits()?;
        let engine = Arc::new(engine);
        engine.start_background();
        Ok(engine)
    }

    /// After a crash the offsets log may hold commits for records the partition log
    /// lost (modes that let readers see unsynced data), or for streams whose deletion
    /// completed: cap commits at each partition's end, so the group resumes where new
    /// records will go instead of skipping them, and drop the others.
    fn reconcile_commits(&mut self) -> Result<()> {
        let streams = self.streams.get_mut().unwrap_or_else(PoisonError::into_inner);
        let offsets = self.offsets.get_mut().unwrap_or_else(PoisonError::into_inner);
        let ends: BTreeMap<String, Vec<u64>> = streams
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.partitions().iter().map(|p| p.log.next_offset()).collect(),
                )
            })
            .collect();
        let changed = offsets.reconcile(&ends)?;
        for m in &changed {
            tracing::warn!(
                stream = m.stream,
                group = m.group,
                partition = m.partition,
                commit = m.was,
                end = m.now,
                "group commit past the end of the log after a crash: moved back to the end"
            );
        }
        Ok(())
    }

    fn log_config_for(&self, retention: Option<Duration>) -> LogConfig {
        LogConfig {
            retention: retention.or(self.log_config.retention),
            ..self.log_config.clone()
        }
    }

    fn load_stream(&mut self, name: &str) -> Result<Arc<StreamHandle>> {
        let dir = self.root.join("streams").join(name);
        let meta_path = dir.join("stream.json");
        let meta = StreamMeta::from_json(
            &read_all(&*self.storage, &meta_path).map_err(|e| io_error("reading", &meta_path, e))?,
        )
        .map_err(|e| {
            Error::new(
                ErrorKind::Corruption,
                format!("{} is damaged: {e}", meta_path.display()),
            )
        })?;
        let mut partitions = Vec::new();
        for p in 0..meta.partitions {
            let (log, report) = PartitionLog::open(
                dir.join(p.to_string()),
                self.storage.clone(),
                self.log_config_for(meta.retention),
            )?;
            if report != RecoveryReport::default() {
                self.recovery.insert(format!("{name}/{p}"), report);
            }
            partitions.push(Partition {
                id: tributary_core::PartitionId::from_index(p),
                log: Arc::new(log),
                appends: Arc::default(),
                created: Instant::now(),
            });
        }
        Ok(Arc::new(StreamHandle {
            name: name.into(),
            incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
            dir,
            partitions: RwLock::new(partitions),
            notify: Notify::new(),
            next_unkeyed: AtomicU32::new(0),
            retention: meta.retention,
            deleted: AtomicBool::new(false),
        }))
    }

    fn start_background(self: &Arc<Self>) {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak = Arc::downgrade(self);
        let tick = match self.config.durability {
            Durability::GroupCommit | Durability::Memory => self.config.group_commit_interval,
            Durability::PageCache | Durability::Sync => Duration::from_secs(1),
        };
        let spawned = std::thread::Builder::new()
            .name("tributary-native".into())
            .spawn(move || {
                let mut last_retention = Instant::now();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    let Some(engine) = weak.upgrade() else { return };
                    engine.background_tick(&mut last_retention);
                }
            });
        match spawned {
            Ok(handle) => {
                *self.background.lock().unwrap_or_else(PoisonError::into_inner) = Some((stop, handle))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the background thread: no group commit or retention")
            }
        }
    }

    fn background_tick(&self, last_retention: &mut Instant) {
        let streams: Vec<Arc<StreamHandle>> = self.streams().values().cloned().collect();
        let logs: Vec<Arc<PartitionLog>> = streams
            .iter()
            .flat_map(|s| s.partitions().iter().map(|p| p.log.clone()).collect::<Vec<_>>())
            .collect();
        if self.config.durability == Durability::Memory {
            for log in &logs {
                if let Err(e) = log.flush() {
                    tracing::error!(error = %e, "writing buffered batches failed; the partition refuses writes");
                }
            }
        }
        if self.config.durability == Durability::GroupCommit {
            for log in &logs {
                if log.is_dirty()
                    && let Err(e) = log.sync_to(log.next_offset())
                {
                    tracing::error!(error = %e, "group commit sync failed; the partition refuses writes");
                }
            }
        }
        if last_retention.elapsed() >= Duration::from_secs(1) {
            *last_retention = Instant::now();
            for log in &logs {
                if let Err(e) = log.enforce_retention(Timestamp::now()) {
                    tracing::warn!(error = %e, "retention");
                }
            }
        }
    }

    /// The largest batch body the log accepts; no single record may need more.
    pub(crate) fn max_batch_body(&self) -> usize {
        self.log_config.max_batch_body
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("native engine"));
        }
        Ok(())
    }

    pub(crate) fn streams(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StreamHandle>>> {
        self.streams.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn offsets(&self) -> MutexGuard<'_, OffsetStore> {
        self.offsets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Persists commits `(partition, next offset)` of `group` on `stream`, outside the
    /// groups lock; in `sync` mode, where each commit waits for an fsync, on a blocking
    /// thread. In the other modes the write is a `pwrite` into the page cache (and now
    /// and then a compaction), cheaper than handing it to another thread (see the
    /// commits row of docs/benchmarks.md). Commits of a stream deleted (and perhaps
    /// created again) since they were made are dropped with it; commits that arrive out
    /// of order are harmless (the store keeps only rises).
    ///
    /// # Errors
    ///
    /// `Io` if the offsets log cannot be written (or, in `sync` mode, synced).
    pub(crate) async fn persist_commits(
        self: &Arc<Self>,
        group: &str,
        stream: &Arc<StreamHandle>,
        commits: Vec<(u32, u64)>,
    ) -> Result<()> {
        if commits.is_empty() {
            return Ok(());
        }
        let engine = self.clone();
        let (group, stream) = (group.to_owned(), stream.clone());
        let persist = move || {
            // A delete marks the stream, then drops its commits under the offsets lock:
            // either this sees the mark, or the delete drops what this writes.
            let mut offsets = engine.offsets();
            if stream.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            offsets.commit(&group, &stream.name, &commits)
        };
        if self.config.durability == Durability::Sync {
            blocking(persist).await
        } else {
            persist()
        }
    }

    /// Runs `f` on the state of `group` on `stream` under the groups lock, loading the
    /// state from the persisted commits on first use. The commits are read before the
    /// groups lock is taken, so a `sync`-mode commit holding the offsets lock through
    /// its fsync never holds up the groups lock. (A state that does not exist yet has no
    /// commit in flight, so what was read is current; if another caller created the
    /// state meanwhile, its state is kept.)
    pub(crate) fn with_group<R>(&self, group: &str, stream: &str, f: impl FnOnce(&mut GroupState) -> R) -> R {
        let key = (group.to_owned(), stream.to_owned());
        if let Some(state) = self.groups().states.get_mut(&key) {
            return f(state);
        }
        let loaded = self.offsets().stream(stream).remove(group).unwrap_or_default();
        let mut groups = self.groups();
        let state = groups
            .states
            .entry(key)
            .or_insert_with(|| GroupState::with_commits(loaded));
        f(state)
    }

    pub(crate) fn groups(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stream(&self, name: &str) -> Result<Arc<StreamHandle>> {
        validate_stream_name(name)?;
        self.check_open()?;
        self.streams()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("stream {name:?} does not exist")))
    }

    pub(crate) fn create_stream(
        &self,
        name: &str,
        partitions: u32,
        retention: Option<Duration>,
    ) -> Result<()> {
        validate_stream_name(name)?;
        self.check_open()?;
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        if streams.contains_key(name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("stream {name:?} already exists"),
            ));
        }
        let staged = self
            .root
            .join("staging")
            .join(format!("new-{name}-{:x}", fastrand_u64()));
        let result = (|| {
            self.storage
                .create_dir_all(&staged)
                .map_err(|e| io_error("creating", &staged, e))?;
            for p in 0..partitions {
                PartitionLog::create(
                    staged.join(p.to_string()),
                    self.storage.clone(),
                    self.log_config.clone(),
                )?;
            }
            let meta = StreamMeta {
                partitions,
                retention,
            }
            .to_json()?;
            write_atomic(&*self.storage, &staged.join("stream.json"), &meta)
                .map_err(|e| io_error("writing", &staged, e))?;
            let dir = self.root.join("streams").join(name);
            self.storage
                .rename(&staged, &dir)
                .map_err(|e| io_error("creating", &dir, e))?;
            self.storage
                .sync_dir(&self.root.join("streams"))
                .map_err(|e| io_error("syncing", &self.root, e))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = self.storage.remove_dir_all(&staged);
            return Err(e);
        }
        let dir = self.root.join("streams").join(name);
        let mut opened = Vec::new();
        for p in 0..partitions {
            let (log, _) = PartitionLog::open(
                dir.join(p.to_string()),
                self.storage.clone(),
                self.log_config_for(retention),
            )?;
            opened.push(Partition {
                id: tributary_core::PartitionId::from_index(p),
                log: Arc::new(log),
                appends: Arc::default(),
                created: Instant::now(),
            });
        }
        streams.insert(
            name.to_owned(),
            Arc::new(StreamHandle {
                name: name.into(),
                incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
                dir,
                partitions: RwLock::new(opened),
                notify: Notify::new(),
                next_unkeyed: AtomicU32::new(0),
                retention,
                deleted: AtomicBool::new(false),
            }),
        );
        Ok(())
    }

    pub(crate) fn delete_stream(&self, name: &str) -> Result<()> {
        validate_stream_name(name)?;
        self.check_open()?;
        // Order matters for crashes: the directory leaves first (durably), then the
        // group commits are dropped with a synced tombstone. A crash in between leaves
        // commits of a stream that no longer exists, which the next open drops; a
        // stream created after this returns can never inherit old commits.
        let (handle, trash) = {
            let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
            let handle = streams
                .get(name)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("stream {name:?} does not exist")))?;
            let trash = self
                .root
                .join("staging")
                .join(format!("deleted-{name}-{:x}", fastrand_u64()));
            self.storage
                .rename(&handle.dir, &trash)
                .map_err(|e| io_error("deleting", &handle.dir, e))?;
            streams.remove(name);
            handle.deleted.store(true, Ordering::Release);
            self.storage
                .sync_dir(&self.root.join("streams"))
                .map_err(|e| io_error("syncing", &self.root, e))?;
            (handle, trash)
        };
        handle.notify.notify_waiters();
        {
            // Both under the groups lock (groups before offsets, as everywhere): a group
            // state created in between would load the deleted stream's commits.
            let mut groups = self.groups();
            groups.states.retain(|(_, s), _| s != name);
            self.offsets().drop_stream(name)?;
        }
        let _ = self.storage.remove_dir_all(&trash);
        Ok(())
    }

    pub(crate) fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        let handle = self.stream(name)?;
        let guard = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        // Deleted (or deleted and created again) since it was looked up: creating
        // partition directories now would resurrect a broken stream on disk.
        if !guard
            .get(name)
            .is_some_and(|current| Arc::ptr_eq(current, &handle))
        {
            return Err(Error::not_found(format!("stream {name:?} does not exist")));
        }
        let current = handle.partition_count();
        if count < current {
            return Err(Error::invalid_input(format!(
                "stream {name:?} has {current} partitions; the count can only grow (asked for {count})"
            )));
        }
        if count == current {
            return Ok(());
        }
        let mut added = Vec::new();
        for p in current..count {
            let dir = handle.dir.join(p.to_string());
            // Left by a crash between creating it and recording it: start afresh.
            if self.storage.exists(&dir) {
                self.storage
                    .remove_dir_all(&dir)
                    .map_err(|e| io_error("clearing", &dir, e))?;
            }
            added.push(PartitionLog::create(
                dir,
                self.storage.clone(),
                self.log_config_for(handle.retention),
            )?);
        }
        self.storage
            .sync_dir(&handle.dir)
            .map_err(|e| io_error("syncing", &handle.dir, e))?;
        let meta = StreamMeta {
            partitions: count,
            retention: handle.retention,
        }
        .to_json()?;
        write_atomic(&*self.storage, &handle.dir.join("stream.json"), &meta)
            .map_err(|e| io_error("writing", &handle.dir, e))?;
        let mut partitions = handle.partitions.write().unwrap_or_else(PoisonError::into_inner);
        for (p, log) in (current..count).zip(added) {
            partitions.push(Partition {
                id: tributary_core::PartitionId::from_index(p),
                log: Arc::new(log),
                appends: Arc::default(),
                created: Instant::now(),
            });
        }
        drop(partitions);
        handle.notify.notify_waiters();
        Ok(())
    }

    /// Syncs everything, saves indexes for a fast reopen, stops the background thread
    /// and releases the directory lock. Handles still open get `Closed`. Idempotent.
    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some((stop, handle)) = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            drop(stop);
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        let mut first_error = None;
        for stream in self.streams().values() {
            stream.notify.notify_waiters();
            for p in stream.partitions().iter() {
                if let Err(e) = p.log.close() {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.offsets().sync() {
            first_error.get_or_insert(e);
        }
        self.lock.lock().unwrap_or_else(PoisonError::into_inner).take();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the native engine");
        }
    }
}

/// A random suffix for staging names.
fn fastrand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_settings_are_checked_when_read() {
        let meta = StreamMeta {
            partitions: 12,
            retention: Some(Duration::from_secs(3600)),
        };
        let json = meta.to_json().unwrap();
        assert_eq!(StreamMeta::from_json(&json), Ok(meta.clone()));
        let changed = String::from_utf8(json.clone()).unwrap().replacen("12", "2", 1);
        assert!(
            StreamMeta::from_json(changed.as_bytes())
                .unwrap_err()
                .contains("checksum")
        );
        assert!(StreamMeta::from_json(&json[..json.len() / 2]).is_err());
        // A damaged checksum field is no older format: refused.
        let unchecked = String::from_utf8(json.clone())
            .unwrap()
            .replace("crc32c", "crc32x");
        assert!(StreamMeta::from_json(unchecked.as_bytes()).is_err());
        // Files written before the checksum are read as they are.
        assert_eq!(
            StreamMeta::from_json(br#"{"partitions":3,"retention":null}"#).map(|m| m.partitions),
            Ok(3)
        );
    }
}
