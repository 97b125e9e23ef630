//! The bottom layer of every store: ordered bytes, written in atomic batches together with the
//! changelog offset those writes reach.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use super::rocks::RocksResources;
use crate::{Error, Result};

/// Entries of a batch: `None` deletes the key.
pub type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Ordered bytes with atomic batch writes that also record a changelog offset.
///
/// Implementations are shared (`Arc`) between the task that writes and the read-only views
/// handed to other threads, so they use interior locking.
pub trait BytesStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Entries with keys in the range, in key order.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.range_limited(from, to, usize::MAX)
    }
    /// The first `limit` entries with keys in the range, in key order (scans read in chunks
    /// of these, see [`Chunked`]).
    fn range_limited(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` atomically; when `offset` is given, it is stored in the same write as
    /// the changelog offset the store is now up to. `durable` false skips the write-ahead log
    /// (restoration), after which the caller must [`flush`](Self::flush).
    fn write(&self, batch: Batch, offset: Option<i64>, durable: bool) -> Result<()> {
        self.write_expiring(None, batch, offset, durable)
    }
    /// [`write`](Self::write), first deleting every key below `delete_below` (expired
    /// segments) in the same atomic write, so that an expiry lands with the commit it belongs
    /// to and never before.
    fn write_expiring(
        &self,
        delete_below: Option<&[u8]>,
        batch: Batch,
        offset: Option<i64>,
        durable: bool,
    ) -> Result<()>;
    /// The changelog offset stored with the last batch that had one.
    fn committed_offset(&self) -> Result<Option<i64>>;
    /// An estimate of the number of entries.
    fn approximate_len(&self) -> Result<u64>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// Whether the data survives the process (RocksDB) or not (memory).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    fn persistent(&self) -> bool;
    /// The smallest and the largest key, if any.
    fn key_span(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Deletes every entry and the stored offset (a store that must be rebuilt from scratch).
    fn wipe(&self) -> Result<()>;
}

/// Whether a range with these bounds can hold any key (and `BTreeMap::range` accepts it).
pub(crate) fn non_empty(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a < b,
        _ => true,
    }
}

fn state_error(store: &str, e: impl std::fmt::Display) -> Error {
    Error::State {
        store: store.to_string(),
        message: e.to_string(),
    }
}

/// A `BTreeMap` behind a lock.
#[derive(Default)]
pub struct MemoryBytes {
    name: String,
    data: RwLock<MemoryData>,
}

/// The entries and the stored changelog offset.
type MemoryData = (BTreeMap<Vec<u8>, Vec<u8>>, Option<i64>);

impl MemoryBytes {
    /// An empty store.
    pub fn new(name: &str) -> Self {
        MemoryBytes {
            name: name.to_string(),
            data: RwLock::default(),
        }
    }
}

/// Reads a key range of a bytes store in chunks, so that a scan of a large store never holds
/// more than a chunk of it: each chunk starts after the last key of the previous one.
pub(crate) struct Chunked<'a> {
    bytes: &'a dyn BytesStore,
    /// Where the next chunk starts; `None` when the range is read.
    next: Option<Bound<Vec<u8>>>,
    to: Bound<Vec<u8>>,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// Entries per chunk of a [`Chunked`] scan.
const CHUNK: usize = 1024;

impl<'a> Chunked<'a> {
    pub(crate) fn new(bytes: &'a dyn BytesStore, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Self {
        Chunked {
            bytes,
            next: Some(owned(from)),
            to: owned(to),
            buf: Default::default(),
        }
    }
}

fn borrowed(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Iterator for Chunked<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            let from = self.next.take()?;
            match self
                .bytes
                .range_limited(borrowed(&from), borrowed(&self.to), CHUNK)
            {
                Ok(chunk) => {
                    if chunk.len() == CHUNK {
                        self.next = chunk.last().map(|(k, _)| Bound::Excluded(k.clone()));
                    }
                    self.buf = chunk.into();
                }
                Err(e) => return Some(Err(e)),
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

fn owned(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl BytesStore for MemoryBytes {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let d = self.data.read().map_err(|e| state_error(&self.name, e))?;
        Ok(d.0.get(key).cloned())
    }
    fn range_limited(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if !non_empty(from, to) {
            return Ok(vec![]);
        }
        let d = self.data.read().map_err(|e| state_error(&self.name, e))?;
        Ok(d.0
            .range::<Vec<u8>, _>((owned(from), owned(to)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn write_expiring(
        &self,
        delete_below: Option<&[u8]>,
        batch: Batch,
        offset: Option<i64>,
        _durable: bool,
    ) -> Result<()> {
        let mut d = self.data.write().map_err(|e| state_error(&self.name, e))?;
        if let Some(bound) = delete_below {
            d.0 = d.0.split_off(bound);
        }
        for (k, v) in batch {
            match v {
                Some(v) => {
                    d.0.insert(k, v);
                }
                None => {
                    d.0.remove(&k);
                }
            }
        }
        if offset.is_some() {
            d.1 = offset;
        }
        Ok(())
    }
    fn committed_offset(&self) -> Result<Option<i64>> {
        Ok(self.data.read().map_err(|e| state_error(&self.name, e))?.1)
    }
    fn approximate_len(&self) -> Result<u64> {
        Ok(self
            .data
            .read()
            .map_err(|e| state_error(&self.name, e))?
            .0
            .len() as u64)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn persistent(&self) -> bool {
        false
    }
    fn wipe(&self) -> Result<()> {
        let mut d = self.data.write().map_err(|e| state_error(&self.name, e))?;
        d.0.clear();
        d.1 = None;
        Ok(())
    }
    fn key_span(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let d = self.data.read().map_err(|e| state_error(&self.name, e))?;
        Ok(d.0
            .keys()
            .next()
            .cloned()
            .zip(d.0.keys().next_back().cloned()))
    }
}

const META_CF: &str = "kstreams-meta";

/// The RocksDB databases open in this process, by directory, with the number of the newest
/// store instance opened on each.
type OpenDbs = std::collections::HashMap<std::path::PathBuf, (std::sync::Weak<DB>, Newest)>;

/// The number of the newest instance opened on a database. A write holds it from its check
/// to its end, and an open takes it to count itself: once an open returns, no write of an
/// older instance is under way or can start.
type Newest = Arc<std::sync::Mutex<u64>>;

fn newest_of(n: &Newest) -> std::sync::MutexGuard<'_, u64> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RocksDB databases open in this process (see [`OpenDbs`]).
static OPEN_DBS: std::sync::LazyLock<std::sync::Mutex<OpenDbs>> =
    std::sync::LazyLock::new(Default::default);
const OFFSET_KEY: &[u8] = b"changelog-offset";

/// Whether a RocksDB store under `dir` is open in this process (a task or a query view).
pub(crate) fn is_open_under(dir: &Path) -> bool {
    OPEN_DBS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(path, (db, _))| path.starts_with(dir) && db.strong_count() > 0)
}

/// A RocksDB database: data in the default column family, the changelog offset in its own.
///
/// Only the newest instance opened on a directory in this process may write: a task instance
/// that lost its task (and whose database a view kept open while the task's new instance
/// opened it) gets an error instead of writing into its successor's state.
pub struct RocksBytes {
    name: String,
    /// Dropped in `Drop`, under the registry's lock.
    db: std::mem::ManuallyDrop<Arc<DB>>,
    instance: u64,
    newest: Newest,
}

impl Drop for RocksBytes {
    fn drop(&mut self) {
        // RocksDB releases the directory's lock only at the end of closing (after flushing
        // what the write-ahead log does not hold): an open of the same directory waits for
        // the close to finish rather than find the database gone and its lock still held.
        let _open = OPEN_DBS.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `db` is not used after this; it is dropped exactly once, here.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.db) };
    }
}

impl RocksBytes {
    /// Opens (or creates) the database in `dir` with the shared resources' options.
    pub fn open(name: &str, dir: &Path, resources: &RocksResources) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            context: format!("create store directory {}", dir.display()),
            source: e,
        })?;
        let mut opts = resources.options(name);
        // The offset's column family and the data's flush together: a flush of the small
        // offset family alone could persist an offset ahead of data still in a memtable
        // (restoration writes without the write-ahead log).
        opts.set_atomic_flush(true);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = vec![
            ColumnFamilyDescriptor::new(
                rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
                resources.options(name),
            ),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        // A store reopened while a view of its previous instance is alive (a rebalance
        // closed and recreated the task) shares the open database: RocksDB allows one
        // handle per directory and process.
        let mut open = OPEN_DBS.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, (db, _)| db.strong_count() > 0);
        let key = dir.to_path_buf();
        if let Some((db, newest)) = open
            .get(&key)
            .and_then(|(db, newest)| Some((db.upgrade()?, newest.clone())))
        {
            let instance = {
                // Waits for a write of an older instance under way.
                let mut n = newest_of(&newest);
                *n += 1;
                *n
            };
            return Ok(RocksBytes {
                name: name.to_string(),
                db: std::mem::ManuallyDrop::new(db),
                instance,
                newest,
            });
        }
        let db = Arc::new(
            DB::open_cf_descriptors(&opts, dir, cfs)
                .map_err(|e| state_error(name, format!("open {}: {e}", dir.display())))?,
        );
        let newest: Newest = Arc::new(std::sync::Mutex::new(1));
        open.insert(key, (Arc::downgrade(&db), newest.clone()));
        Ok(RocksBytes {
            name: name.to_string(),
            db: std::mem::ManuallyDrop::new(db),
            instance: 1,
            newest,
        })
    }

    fn err(&self, e: rocksdb::Error) -> Error {
        state_error(&self.name, e)
    }

    /// Holds the right to write until the guard drops; an error when a newer instance opened
    /// the database.
    fn check_writer(&self) -> Result<std::sync::MutexGuard<'_, u64>> {
        let newest = newest_of(&self.newest);
        if self.instance == *newest {
            return Ok(newest);
        }
        Err(state_error(
            &self.name,
            "the store was opened again by a newer instance of its task (the task moved); \
             this instance may no longer write",
        ))
    }
}

impl BytesStore for RocksBytes {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }
    fn range_limited(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = match from {
            Bound::Included(k) | Bound::Excluded(k) => IteratorMode::From(k, Direction::Forward),
            Bound::Unbounded => IteratorMode::Start,
        };
        let mut out = vec![];
        for item in self.db.iterator(start) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Bound::Excluded(f) = from {
                if &*k == f {
                    continue;
                }
            }
            match to {
                Bound::Included(t) if &*k > t => break,
                Bound::Excluded(t) if &*k >= t => break,
                _ => {}
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
    fn write_expiring(
        &self,
        delete_below: Option<&[u8]>,
        batch: Batch,
        offset: Option<i64>,
        durable: bool,
    ) -> Result<()> {
        let _writing = self.check_writer()?;
        let mut wb = WriteBatch::default();
        if let Some(bound) = delete_below {
            // Before the puts: a later write below the bound (a late session) survives.
            wb.delete_range(&[][..], bound);
        }
        for (k, v) in batch {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        if let Some(o) = offset {
            let cf = self
                .db
                .cf_handle(META_CF)
                .ok_or_else(|| state_error(&self.name, "no meta column family"))?;
            wb.put_cf(cf, OFFSET_KEY, o.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(!durable);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))
    }
    fn committed_offset(&self) -> Result<Option<i64>> {
        let cf = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| state_error(&self.name, "no meta column family"))?;
        let v = self.db.get_cf(cf, OFFSET_KEY).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(i64::from_be_bytes))
    }
    fn approximate_len(&self) -> Result<u64> {
        Ok(self
            .db
            .property_int_value("rocksdb.estimate-num-keys")
            .map_err(|e| self.err(e))?
            .unwrap_or(0))
    }
    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        let cf = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| state_error(&self.name, "no meta column family"))?;
        self.db.flush_cf(cf).map_err(|e| self.err(e))
    }
    fn persistent(&self) -> bool {
        true
    }
    fn wipe(&self) -> Result<()> {
        let writing = self.check_writer()?;
        let mut wb = WriteBatch::default();
        if let Some((first, last)) = self.key_span()? {
            wb.delete_range(&first, &last);
            wb.delete(&last);
        }
        let cf = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| state_error(&self.name, "no meta column family"))?;
        wb.delete_cf(cf, OFFSET_KEY);
        self.db.write(wb).map_err(|e| self.err(e))?;
        drop(writing);
        self.flush()
    }
    fn key_span(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let first = self
            .db
            .iterator(IteratorMode::Start)
            .next()
            .transpose()
            .map_err(|e| self.err(e))?;
        let last = self
            .db
            .iterator(IteratorMode::End)
            .next()
            .transpose()
            .map_err(|e| self.err(e))?;
        Ok(first
            .zip(last)
            .map(|((a, _), (b, _))| (a.into_vec(), b.into_vec())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kstreams-bytes-{name}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn now_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn batch(n: usize, tag: u64) -> Batch {
        (0..n)
            .map(|i| {
                (
                    format!("k{i:05}").into_bytes(),
                    Some(tag.to_be_bytes().to_vec()),
                )
            })
            .collect()
    }

    /// Once a newer instance has opened the directory, no write of an older one lands: an
    /// older instance that was past its check when the newer one opened must not write after.
    #[test]
    fn no_write_of_an_older_instance_lands_after_a_newer_one_opened() {
        let resources = RocksResources::default();
        for round in 0..30 {
            let d = dir("newest");
            let old = RocksBytes::open("s", &d, &resources).unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut tag = 1;
                    while !stop.load(Ordering::SeqCst) {
                        if old
                            .write(batch(5_000, tag), Some(tag as i64), false)
                            .is_err()
                        {
                            break;
                        }
                        tag += 1;
                    }
                    old
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(2 + round % 5));
            let new = RocksBytes::open("s", &d, &resources).unwrap();
            new.write(batch(5_000, 1_000_000), Some(1_000_000), false)
                .unwrap();
            stop.store(true, Ordering::SeqCst);
            let old = writer.join().unwrap();
            assert_eq!(
                new.committed_offset().unwrap(),
                Some(1_000_000),
                "round {round}: an older instance's write landed after the newer one's"
            );
            assert_eq!(
                new.get(b"k04999").unwrap(),
                Some(1_000_000_u64.to_be_bytes().to_vec())
            );
            drop((old, new));
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    /// Closing the last instance of a database while another opens the directory never fails
    /// the open (RocksDB releases its lock only at the end of closing).
    #[test]
    fn opening_while_the_last_instance_closes_succeeds() {
        let resources = RocksResources::default();
        for round in 0..40 {
            let d = dir("close");
            let old = RocksBytes::open("s", &d, &resources).unwrap();
            // Unflushed data makes the close flush, which takes a while.
            old.write(batch(20_000, 1), Some(1), false).unwrap();
            let closer = std::thread::spawn(move || drop(old));
            let opened = RocksBytes::open("s", &d, &resources);
            closer.join().unwrap();
            let new = opened.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(new.committed_offset().unwrap(), Some(1), "round {round}");
            drop(new);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}
