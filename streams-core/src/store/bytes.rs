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
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` atomically; when `offset` is given, it is stored in the same write as
    /// the changelog offset the store is now up to. `durable` false skips the write-ahead log
    /// (restoration), after which the caller must [`flush`](Self::flush).
    fn write(&self, batch: Batch, offset: Option<i64>, durable: bool) -> Result<()>;
    /// Deletes every key in `[from, to)` (dropping a whole expired segment).
    fn delete_range(&self, from: &[u8], to: &[u8]) -> Result<()>;
    /// The changelog offset stored with the last batch that had one.
    fn committed_offset(&self) -> Result<Option<i64>>;
    /// An estimate of the number of entries.
    fn approximate_len(&self) -> Result<u64>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;
    /// Whether the data survives the process (RocksDB) or not (memory).
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
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if !non_empty(from, to) {
            return Ok(vec![]);
        }
        let d = self.data.read().map_err(|e| state_error(&self.name, e))?;
        Ok(d.0
            .range::<Vec<u8>, _>((owned(from), owned(to)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn write(&self, batch: Batch, offset: Option<i64>, _durable: bool) -> Result<()> {
        let mut d = self.data.write().map_err(|e| state_error(&self.name, e))?;
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
    fn delete_range(&self, from: &[u8], to: &[u8]) -> Result<()> {
        let mut d = self.data.write().map_err(|e| state_error(&self.name, e))?;
        let doomed: Vec<Vec<u8>> =
            d.0.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                .map(|(k, _)| k.clone())
                .collect();
        for k in doomed {
            d.0.remove(&k);
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

/// The RocksDB databases open in this process, by directory.
static OPEN_DBS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Weak<DB>>>,
> = std::sync::LazyLock::new(Default::default);
const OFFSET_KEY: &[u8] = b"changelog-offset";

/// A RocksDB database: data in the default column family, the changelog offset in its own.
pub struct RocksBytes {
    name: String,
    db: Arc<DB>,
}

impl RocksBytes {
    /// Opens (or creates) the database in `dir` with the shared resources' options.
    pub fn open(name: &str, dir: &Path, resources: &RocksResources) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            context: format!("create store directory {}", dir.display()),
            source: e,
        })?;
        let mut opts = resources.options(name);
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
        open.retain(|_, db| db.strong_count() > 0);
        let key = dir.to_path_buf();
        if let Some(db) = open.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(RocksBytes {
                name: name.to_string(),
                db,
            });
        }
        let db = Arc::new(
            DB::open_cf_descriptors(&opts, dir, cfs)
                .map_err(|e| state_error(name, format!("open {}: {e}", dir.display())))?,
        );
        open.insert(key, Arc::downgrade(&db));
        Ok(RocksBytes {
            name: name.to_string(),
            db,
        })
    }

    fn err(&self, e: rocksdb::Error) -> Error {
        state_error(&self.name, e)
    }
}

impl BytesStore for RocksBytes {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = match from {
            Bound::Included(k) | Bound::Excluded(k) => IteratorMode::From(k, Direction::Forward),
            Bound::Unbounded => IteratorMode::Start,
        };
        let mut out = vec![];
        for item in self.db.iterator(start) {
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
    fn write(&self, batch: Batch, offset: Option<i64>, durable: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
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
    fn delete_range(&self, from: &[u8], to: &[u8]) -> Result<()> {
        let mut wb = WriteBatch::default();
        wb.delete_range(from, to);
        self.db.write(wb).map_err(|e| self.err(e))
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
