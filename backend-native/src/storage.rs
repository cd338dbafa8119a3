//! File access behind a trait, so tests can put a fault-injecting layer (power loss,
//! EIO, ENOSPC, short writes) between the engine and the disk.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// An open file: positional reads and writes, durable sync, truncation.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `pos`.
    ///
    /// # Errors
    /// The system's error; part of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at the end of the file.
    ///
    /// # Errors
    /// The system's error.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Makes everything written so far durable (fdatasync).
    ///
    /// # Errors
    /// The system's error: then the written data may be lost, whatever a retry says.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length.
    ///
    /// # Errors
    /// The system's error.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    ///
    /// # Errors
    /// The system's error.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A directory tree of files.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents, private to the owner (0700).
    ///
    /// # Errors
    /// The system's error.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    ///
    /// # Errors
    /// The system's error.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it (0600) if `create`.
    ///
    /// # Errors
    /// The system's error; `NotFound` if it does not exist and `create` is false.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file.
    ///
    /// # Errors
    /// The system's error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    ///
    /// # Errors
    /// The system's error.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames atomically.
    ///
    /// # Errors
    /// The system's error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creates, renames, removals) durable.
    ///
    /// # Errors
    /// The system's error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Takes an exclusive lock on `path` (created if missing), held until the returned
    /// guard is dropped.
    ///
    /// # Errors
    /// `WouldBlock` if another holder has it, or the system's error.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>>;
}

/// Reads a whole file.
///
/// # Errors
/// The system's error.
pub fn read_all(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path, false)?;
    let len = usize::try_from(file.size()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], done as u64)?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}

/// Creates `path` and any missing parents so that they survive power loss: every
/// directory that gained an entry is synced.
///
/// # Errors
/// The system's error.
pub fn create_dir_durable(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    let mut existing = path;
    while !storage.exists(existing) {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => break,
        }
    }
    storage.create_dir_all(path)?;
    let mut dir = path.to_path_buf();
    let mut to_sync = vec![dir.clone()];
    while dir.as_path() != existing {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                dir = parent.to_path_buf();
                to_sync.push(dir.clone());
            }
            _ => break,
        }
    }
    for d in to_sync {
        storage.sync_dir(&d)?;
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically and durably: write a temporary file,
/// sync it, rename it over `path`, sync the directory.
///
/// # Errors
/// The system's error; `path` then still holds its old contents.
pub fn write_atomic(storage: &dyn Storage, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!("{name}.tmp"));
    let file = storage.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_all_at(contents, 0)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&tmp, path)?;
    storage.sync_dir(dir)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStorage;

#[derive(Debug)]
struct DiskFile(File);

impl StorageFile for DiskFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for DiskStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(io::ErrorKind::WouldBlock, "locked")),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
