//! Simulated power loss: the engine runs over an in-memory disk that tracks what was
//! made durable (file data by `sync_data`, directory entries by `sync_dir`). At a
//! seeded random operation the machine "loses power": the disk freezes, and the image
//! that survives keeps, per directory, either its synced or its latest entries, and per
//! file its synced bytes plus a torn part of what was not synced, sometimes followed by
//! zeros or garbage. The engine reopens on that image and must hold its promise:
//! `sync` loses no acknowledged record or commit; every mode reopens, returns only
//! records that were sent, with contiguous offsets and no duplicates. (`page_cache`
//! and `group_commit` promise nothing on power loss beyond that; their losses are
//! counted and printed; `memory` neither.) `group_commit` must lose nothing that was
//! acknowledged more than one sync interval (plus 100 ms of scheduling slack) before
//! the power failed. At every other point the power fails a second time, at a random
//! operation of the recovery itself, and the promise must survive both.
//!
//! Crash points: `TRIBUTARY_POWER_LOSS_POINTS` (default 1000); seed:
//! `TRIBUTARY_POWER_LOSS_SEED`.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_core::{Backend, ConsumerConfig, ConsumerExt, PartitionId, ProducerConfig, Record, StreamSpec};
use tributary_native::storage::{Storage, StorageFile};
use tributary_native::{Durability, NativeBackend, NativeConfig};

#[derive(Debug, Clone)]
enum Inode {
    Dir {
        current: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
    File {
        current: Vec<u8>,
        durable: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct Disk {
    inodes: HashMap<u64, Inode>,
    next: u64,
}

const ROOT: u64 = 0;
/// The unit a power loss loses out of order.
const SECTOR: usize = 512;

impl Disk {
    fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode::Dir {
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        Self { inodes, next: 1 }
    }

    fn names(path: &Path) -> Vec<String> {
        path.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    }

    fn entries(&self, dir: u64) -> Option<&BTreeMap<String, u64>> {
        match self.inodes.get(&dir)? {
            Inode::Dir { current, .. } => Some(current),
            Inode::File { .. } => None,
        }
    }

    fn entries_mut(&mut self, dir: u64) -> io::Result<&mut BTreeMap<String, u64>> {
        match self.inodes.get_mut(&dir) {
            Some(Inode::Dir { current, .. }) => Ok(current),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "not a directory")),
        }
    }

    fn resolve(&self, path: &Path) -> Option<u64> {
        let mut at = ROOT;
        for name in Self::names(path) {
            at = *self.entries(at)?.get(&name)?;
        }
        Some(at)
    }

    /// The parent directory's inode and the last name.
    fn parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut names = Self::names(path);
        let last = names.pop().ok_or_else(|| io::Error::other("empty path"))?;
        let mut at = ROOT;
        for name in names {
            at = *self
                .entries(at)
                .and_then(|e| e.get(&name))
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no parent"))?;
        }
        Ok((at, last))
    }

    fn alloc(&mut self, inode: Inode) -> u64 {
        let id = self.next;
        self.next += 1;
        self.inodes.insert(id, inode);
        id
    }

    /// What survives power loss.
    fn crash_image(&self, rng: &mut fastrand::Rng) -> Disk {
        let mut inodes = HashMap::new();
        for (id, inode) in &self.inodes {
            let survived = match inode {
                Inode::Dir { current, durable } => {
                    let entries = if rng.bool() {
                        current.clone()
                    } else {
                        durable.clone()
                    };
                    Inode::Dir {
                        current: entries.clone(),
                        durable: entries,
                    }
                }
                Inode::File { current, durable } => {
                    let unsynced = current.len().saturating_sub(durable.len());
                    let mut bytes = if current.starts_with(durable) && unsynced > SECTOR && rng.u8(..4) == 0 {
                        // Writeback has no order: an unsynced sector is lost (reads back as
                        // zeros) while later unsynced ones survive.
                        let mut b = current.clone();
                        let page =
                            durable.len().div_ceil(SECTOR) * SECTOR + rng.usize(..unsynced / SECTOR) * SECTOR;
                        let end = (page + SECTOR).min(b.len());
                        if page < end {
                            b[page..end].fill(0);
                        }
                        b
                    } else if current.starts_with(durable) {
                        let torn = rng.usize(..=current.len() - durable.len());
                        let mut b = current[..durable.len() + torn].to_vec();
                        if torn < current.len() - durable.len() && rng.u8(..4) == 0 {
                            let pad = rng.usize(1..4096);
                            if rng.bool() {
                                b.extend(std::iter::repeat_n(0u8, pad));
                            } else {
                                b.extend((0..pad).map(|_| rng.u8(..)));
                            }
                        }
                        b
                    } else if rng.bool() {
                        durable.clone()
                    } else {
                        current.clone()
                    };
                    bytes.shrink_to_fit();
                    Inode::File {
                        current: bytes.clone(),
                        durable: bytes,
                    }
                }
            };
            inodes.insert(*id, survived);
        }
        Disk {
            inodes,
            next: self.next,
        }
    }
}

/// The simulated disk. Mutations count down `ops_left`; at zero the power fails and
/// every later operation fails with EIO, changing nothing.
#[derive(Debug)]
struct Sim {
    disk: Mutex<Disk>,
    ops_left: AtomicI64,
    locks: Mutex<BTreeSet<std::path::PathBuf>>,
    /// When the power failed.
    failed_at: Mutex<Option<Instant>>,
}

impl Sim {
    fn new(disk: Disk, ops: i64) -> Arc<Self> {
        Arc::new(Self {
            disk: Mutex::new(disk),
            ops_left: AtomicI64::new(ops),
            locks: Mutex::default(),
            failed_at: Mutex::default(),
        })
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut Disk) -> io::Result<T>) -> io::Result<T> {
        if self.ops_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.failed_at.lock().unwrap().get_or_insert_with(Instant::now);
            return Err(io::Error::from_raw_os_error(5));
        }
        f(&mut self.disk.lock().unwrap())
    }

    fn crashed(&self) -> bool {
        self.ops_left.load(Ordering::SeqCst) <= 0
    }
}

#[derive(Debug)]
struct SimFile {
    sim: Arc<Sim>,
    inode: u64,
}

impl StorageFile for SimFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.sim.mutate(|d| match d.inodes.get_mut(&self.inode) {
            Some(Inode::File { current, .. }) => {
                let end = pos as usize + buf.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[pos as usize..end].copy_from_slice(buf);
                Ok(())
            }
            _ => Err(io::Error::other("not a file")),
        })
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let disk = self.sim.disk.lock().unwrap();
        match disk.inodes.get(&self.inode) {
            Some(Inode::File { current, .. }) => {
                let start = (pos as usize).min(current.len());
                let n = buf.len().min(current.len() - start);
                buf[..n].copy_from_slice(&current[start..start + n]);
                Ok(n)
            }
            _ => Err(io::Error::other("not a file")),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sim.mutate(|d| match d.inodes.get_mut(&self.inode) {
            Some(Inode::File { current, durable }) => {
                *durable = current.clone();
                Ok(())
            }
            _ => Err(io::Error::other("not a file")),
        })
    }
    fn size(&self) -> io::Result<u64> {
        match self.sim.disk.lock().unwrap().inodes.get(&self.inode) {
            Some(Inode::File { current, .. }) => Ok(current.len() as u64),
            _ => Err(io::Error::other("not a file")),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.sim.mutate(|d| match d.inodes.get_mut(&self.inode) {
            Some(Inode::File { current, .. }) => {
                current.resize(len as usize, 0);
                Ok(())
            }
            _ => Err(io::Error::other("not a file")),
        })
    }
}

#[derive(Debug)]
struct SimStorage(Arc<Sim>);

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.mutate(|d| {
            let mut at = ROOT;
            for name in Disk::names(path) {
                at = match d.entries(at).and_then(|e| e.get(&name)) {
                    Some(id) => *id,
                    None => {
                        let id = d.alloc(Inode::Dir {
                            current: BTreeMap::new(),
                            durable: BTreeMap::new(),
                        });
                        d.entries_mut(at)?.insert(name, id);
                        id
                    }
                };
            }
            Ok(())
        })
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let d = self.0.disk.lock().unwrap();
        let dir = d
            .resolve(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no dir"))?;
        Ok(d.entries(dir)
            .ok_or_else(|| io::Error::other("not a dir"))?
            .keys()
            .cloned()
            .collect())
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let existing = self.0.disk.lock().unwrap().resolve(path);
        let inode = match existing {
            Some(id) => id,
            None if create => self.0.mutate(|d| {
                let (parent, name) = d.parent(path)?;
                let id = d.alloc(Inode::File {
                    current: Vec::new(),
                    durable: Vec::new(),
                });
                d.entries_mut(parent)?.insert(name, id);
                Ok(id)
            })?,
            None => return Err(io::Error::new(io::ErrorKind::NotFound, "no file")),
        };
        Ok(Arc::new(SimFile {
            sim: self.0.clone(),
            inode,
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.mutate(|d| {
            let (parent, name) = d.parent(path)?;
            d.entries_mut(parent)?
                .remove(&name)
                .map(drop)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no file"))
        })
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.mutate(|d| {
            let (src, src_name) = d.parent(from)?;
            let (dst, dst_name) = d.parent(to)?;
            let id = d
                .entries_mut(src)?
                .remove(&src_name)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no source"))?;
            d.entries_mut(dst)?.insert(dst_name, id);
            Ok(())
        })
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.mutate(|d| {
            let id = d
                .resolve(path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no dir"))?;
            match d.inodes.get_mut(&id) {
                Some(Inode::Dir { current, durable }) => {
                    *durable = current.clone();
                    Ok(())
                }
                _ => Err(io::Error::other("not a dir")),
            }
        })
    }
    fn exists(&self, path: &Path) -> bool {
        self.0.disk.lock().unwrap().resolve(path).is_some()
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
        if !self.0.locks.lock().unwrap().insert(path.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"));
        }
        Ok(Box::new(()))
    }
}

fn config(durability: Durability) -> NativeConfig {
    let mut c = NativeConfig::at("/sim/data");
    c.durability = durability;
    c.segment_bytes = 4096; // small segments: rolls and index writes happen often
    c
}

#[derive(Default)]
struct Workload {
    attempted: BTreeSet<String>,
    acked: Vec<String>,
    /// When each acknowledged record was acknowledged.
    acked_at: BTreeMap<String, Instant>,
    /// Last acknowledged commit per partition: next offset to read.
    commits: BTreeMap<PartitionId, u64>,
    /// Largest commit asked for per partition, acknowledged or not.
    commits_asked: BTreeMap<PartitionId, u64>,
}

async fn workload(sim: Arc<Sim>, durability: Durability, point: u64, rng: &mut fastrand::Rng) -> Workload {
    let mut w = Workload::default();
    let Ok(engine) = NativeBackend::open_with_storage(config(durability), Arc::new(SimStorage(sim.clone())))
    else {
        return w;
    };
    let Ok(admin) = engine.admin().await else { return w };
    if admin
        .create_stream(&StreamSpec::new("s").with_partitions(2))
        .await
        .is_err()
    {
        return w;
    }
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.ok();
    let mut seq = 0;
    for _ in 0..200 {
        let n = rng.usize(1..20);
        let values: Vec<String> = (seq..seq + n).map(|i| format!("p{point}-{i}")).collect();
        seq += n;
        w.attempted.extend(values.iter().cloned());
        let records = values
            .iter()
            .map(|v| Record::new(v.clone()).with_key(format!("k{}", v.len() % 5)))
            .collect();
        match producer.send("s", records).await {
            Ok(_) => {
                let now = Instant::now();
                w.acked_at.extend(values.iter().map(|v| (v.clone(), now)));
                w.acked.extend(values);
            }
            Err(e) => {
                // Partially confirmed sends report what landed.
                let confirmed: Vec<usize> = e.delivered.iter().map(|(i, _)| *i).collect();
                w.acked.extend(confirmed.into_iter().map(|i| values[i].clone()));
                break;
            }
        }
        if let Some(m) = member.as_mut()
            && rng.u8(..3) == 0
            && let Ok(batch) = m.poll(rng.usize(1..30), Duration::ZERO).await
            && m.ack_all(&batch).is_ok()
            && {
                for r in &batch {
                    let asked = w.commits_asked.entry(r.partition.clone()).or_default();
                    *asked = (*asked).max(r.offset.as_u64().unwrap() + 1);
                }
                m.commit().await.is_ok()
            }
        {
            for r in &batch {
                w.commits
                    .insert(r.partition.clone(), r.offset.as_u64().unwrap() + 1);
            }
        }
        if sim.crashed() {
            break;
        }
        if durability == Durability::GroupCommit {
            // Spread over many sync intervals, so the bound below is tested.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(member);
    drop(engine);
    w
}

#[derive(Default, Debug)]
struct Totals {
    points: u64,
    /// Points where the power failed a second time, during recovery.
    recovery_crashes: u64,
    attempted: u64,
    acked: u64,
    lost: u64,
    lost_commits: u64,
    /// Groups resuming ahead of every commit asked for.
    commits_ahead: u64,
    lost_beyond_bound: u64,
    duplicated: u64,
    truncated_bytes: u64,
    damaged: u64,
}

/// `group_commit` syncs every interval; what was acknowledged longer ago than that
/// (plus this much scheduling slack for the background thread) must survive.
const GROUP_COMMIT_SLACK: Duration = Duration::from_millis(100);

async fn verify(
    image: Disk,
    failed_at: Option<Instant>,
    durability: Durability,
    w: &Workload,
    totals: &mut Totals,
    point: u64,
    seed: u64,
) {
    let sim = Sim::new(image, i64::MAX);
    let engine = match NativeBackend::open_with_storage(config(durability), Arc::new(SimStorage(sim))) {
        Ok(e) => e,
        Err(e) => panic!("point {point} (seed {seed}): reopen failed: {e}"),
    };
    totals.truncated_bytes += engine
        .recovery_report()
        .values()
        .map(|r| r.truncated_bytes)
        .sum::<u64>();
    totals.damaged += engine
        .recovery_report()
        .values()
        .filter(|r| r.damage.is_some())
        .count() as u64;
    let mut present: BTreeMap<String, u32> = BTreeMap::new();
    if engine.admin().await.unwrap().describe_stream("s").await.is_ok() {
        let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
        let mut next: BTreeMap<PartitionId, u64> = BTreeMap::new();
        loop {
            let batch = match reader.poll(10_000, Duration::ZERO).await {
                Ok(b) => b,
                Err(e) => panic!("point {point} (seed {seed}): read failed: {e}"),
            };
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let expected = next.entry(r.partition.clone()).or_insert(0);
                assert_eq!(
                    r.offset.as_u64(),
                    Some(*expected),
                    "point {point} (seed {seed}): contiguous offsets"
                );
                *expected += 1;
                let v = String::from_utf8(r.value.to_vec()).unwrap();
                assert!(
                    w.attempted.contains(&v),
                    "point {point} (seed {seed}): {v} was never sent"
                );
                *present.entry(v).or_default() += 1;
            }
        }
        let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
        let mut starts: BTreeMap<PartitionId, u64> = BTreeMap::new();
        loop {
            let batch = member.poll(10_000, Duration::from_millis(5)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                starts
                    .entry(r.partition.clone())
                    .or_insert(r.offset.as_u64().unwrap());
            }
        }
        // In every mode: the group never resumes ahead of every commit asked for (a
        // partition it is given nothing of resumes at its end).
        for (p, end) in &next {
            let start = starts.get(p).copied().unwrap_or(*end);
            let asked = w.commits_asked.get(p).copied().unwrap_or(0);
            if start > asked {
                totals.commits_ahead += 1;
                eprintln!(
                    "point {point} (seed {seed}): partition {p} resumed at {start}, ahead of every commit asked for ({asked})"
                );
            }
        }
        if durability == Durability::Sync {
            for (p, committed) in &w.commits {
                if let Some(start) = starts.get(p)
                    && start < committed
                {
                    totals.lost_commits += 1;
                    eprintln!(
                        "point {point} (seed {seed}): partition {p} resumed at {start}, commit was {committed}"
                    );
                }
            }
        }
    }
    totals.duplicated += present.values().filter(|n| **n > 1).count() as u64;
    let bound = failed_at
        .filter(|_| durability == Durability::GroupCommit)
        .and_then(|t| t.checked_sub(config(durability).group_commit_interval + GROUP_COMMIT_SLACK));
    for v in &w.acked {
        if !present.contains_key(v) {
            if bound.is_some_and(|b| w.acked_at.get(v).is_some_and(|at| *at < b)) {
                totals.lost_beyond_bound += 1;
                eprintln!(
                    "point {point} (seed {seed}): {v}, acknowledged before the last sync interval, was lost"
                );
            }
            totals.lost += 1;
            if durability == Durability::Sync && totals.lost <= 5 {
                eprintln!("point {point} (seed {seed}): acknowledged {v} lost");
            }
        }
    }
}

#[test]
fn power_loss_at_random_points() {
    let points: u64 = std::env::var("TRIBUTARY_POWER_LOSS_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("TRIBUTARY_POWER_LOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut totals: BTreeMap<&str, Totals> = BTreeMap::new();
    for point in 0..points {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(point));
        let durability = match point % 5 {
            0 | 1 => Durability::Sync,
            2 => Durability::GroupCommit,
            3 => Durability::PageCache,
            _ => Durability::Memory,
        };
        let name = match durability {
            Durability::Sync => "sync",
            Durability::GroupCommit => "group_commit",
            Durability::PageCache => "page_cache",
            Durability::Memory => "memory",
        };
        let sim = Sim::new(Disk::new(), rng.i64(10..400));
        let w = rt.block_on(workload(sim.clone(), durability, point, &mut rng));
        let image = sim.disk.lock().unwrap().crash_image(&mut rng);
        let t = totals.entry(name).or_default();
        t.points += 1;
        t.attempted += w.attempted.len() as u64;
        t.acked += w.acked.len() as u64;
        let failed_at = *sim.failed_at.lock().unwrap();
        // Every other point, the power fails again while recovery runs (truncating torn
        // tails, syncing, rewriting checkpoints and the commits log): the promise must
        // hold across both failures.
        let image = if rng.bool() {
            let again = Sim::new(image, rng.i64(0..40));
            drop(NativeBackend::open_with_storage(
                config(durability),
                Arc::new(SimStorage(again.clone())),
            ));
            t.recovery_crashes += u64::from(again.crashed());
            again.disk.lock().unwrap().crash_image(&mut rng)
        } else {
            image
        };
        rt.block_on(verify(image, failed_at, durability, &w, t, point, seed));
    }
    for (name, t) in &totals {
        println!(
            "power loss [{name}]: crash points {} ({} failing again in recovery), attempted {}, acked {}, lost {}, lost beyond the mode's bound {}, lost commits {}, commits ahead {}, duplicated {}, truncated bytes {}, damaged partitions {}, seed {seed}",
            t.points,
            t.recovery_crashes,
            t.attempted,
            t.acked,
            t.lost,
            t.lost_beyond_bound,
            t.lost_commits,
            t.commits_ahead,
            t.duplicated,
            t.truncated_bytes,
            t.damaged
        );
    }
    let sync = totals.get("sync").unwrap();
    assert!(sync.acked > 0, "the workloads acknowledged records");
    assert_eq!(sync.lost, 0, "sync mode lost acknowledged records (seed {seed})");
    assert_eq!(
        sync.lost_commits, 0,
        "sync mode lost acknowledged commits (seed {seed})"
    );
    for (name, t) in &totals {
        assert_eq!(t.duplicated, 0, "{name}: duplicates (seed {seed})");
        assert_eq!(
            t.commits_ahead, 0,
            "{name}: a group resumed ahead of its commits (seed {seed})"
        );
        assert_eq!(
            t.lost_beyond_bound, 0,
            "{name}: lost more than its documented bound (seed {seed})"
        );
        assert_eq!(
            t.damaged, 0,
            "{name}: a power loss left a partition reported damaged (seed {seed})"
        );
    }
}
