//! The layers above the bytes: uncommitted writes held back until their transaction commits
//! (which doubles as the cache), and the change-log records those writes produce.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::bytes::{Batch, BytesStore};
use crate::Result;

/// Where a store's changes go: its changelog topic, on the task's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogTarget {
    /// `<application id>-<store>-changelog`.
    pub topic: Arc<str>,
    /// The task's partition.
    pub partition: i32,
}

/// A store's write path. Writes go to `pending` and are read back from it; they reach the bytes
/// store only in [`commit`](Self::commit), after the task's transaction committed, in one atomic
/// batch with the changelog offset they reach. Without caching, every write is also queued for
/// the changelog at once; with caching, the last write per key is sent at commit.
pub struct StoreCore {
    pub(crate) name: String,
    pub(crate) bytes: Arc<dyn BytesStore>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    outbox: Batch,
    pub(crate) changelog: Option<ChangelogTarget>,
    caching: bool,
}

impl StoreCore {
    /// A core over `bytes`, logging to `changelog` when given.
    pub fn new(
        name: &str,
        bytes: Arc<dyn BytesStore>,
        changelog: Option<ChangelogTarget>,
        caching: bool,
    ) -> Self {
        StoreCore {
            name: name.to_string(),
            bytes,
            pending: BTreeMap::new(),
            outbox: vec![],
            changelog,
            caching,
        }
    }

    /// The value of `key`, uncommitted writes included.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.bytes.get(key),
        }
    }

    /// Writes (`Some`) or deletes (`None`) `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.changelog.is_some() && !self.caching {
            self.outbox.push((key.clone(), value.clone()));
        }
        self.pending.insert(key, value);
    }

    /// Entries in the range, uncommitted writes included, in key order.
    pub fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.bytes.range(from, to)?.into_iter().collect();
        if !self.pending.is_empty() {
            let lo = match from {
                Bound::Included(k) => Bound::Included(k.to_vec()),
                Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let hi = match to {
                Bound::Included(k) => Bound::Included(k.to_vec()),
                Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
                Bound::Unbounded => Bound::Unbounded,
            };
            if super::bytes::non_empty(from, to) {
                for (k, v) in self.pending.range((lo, hi)) {
                    match v {
                        Some(v) => merged.insert(k.clone(), v.clone()),
                        None => merged.remove(k),
                    };
                }
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Changelog records to send now (without caching: every write since the last call).
    pub fn take_outbox(&mut self) -> Batch {
        std::mem::take(&mut self.outbox)
    }

    /// Changelog records to send before a commit (with caching: the last write of each key).
    pub fn cache_flush(&mut self) -> Batch {
        let mut out = self.take_outbox();
        if self.caching && self.changelog.is_some() {
            out.extend(self.pending.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// The task's transaction committed: write the held-back batch and, when changelog records
    /// were sent, the offset of the last one, atomically.
    pub fn commit(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        self.commit_with(changelog_offset, true)
    }

    /// [`commit`](Self::commit), optionally without the write-ahead log (the test driver's
    /// throw-away state).
    pub fn commit_with(&mut self, changelog_offset: Option<i64>, durable: bool) -> Result<()> {
        if self.pending.is_empty() && changelog_offset.is_none() {
            return Ok(());
        }
        let batch: Batch = std::mem::take(&mut self.pending).into_iter().collect();
        self.bytes.write(batch, changelog_offset, durable)
    }

    /// Drops what was not committed (the transaction aborted or the task was taken over).
    pub fn drop_uncommitted(&mut self) {
        self.pending.clear();
        self.outbox.clear();
    }

    /// The smallest and largest key, uncommitted writes included.
    pub fn key_span(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut span = self.bytes.key_span()?;
        if let (Some(first), Some(last)) =
            (self.pending.keys().next(), self.pending.keys().next_back())
        {
            span = Some(match span {
                Some((a, b)) => (a.min(first.clone()), b.max(last.clone())),
                None => (first.clone(), last.clone()),
            });
        }
        Ok(span)
    }

    /// Drops every entry with a key below `bound`, committed or not (expired segments).
    pub fn expire_below(&mut self, bound: &[u8]) -> Result<()> {
        self.pending = self.pending.split_off(bound);
        self.bytes.delete_range(&[], bound)
    }

    /// Whether writes are waiting for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The bytes store underneath (committed state), for tests and tools.
    pub fn bytes(&self) -> &Arc<dyn BytesStore> {
        &self.bytes
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The changelog offset the committed state reaches.
    pub fn committed_offset(&self) -> Result<Option<i64>> {
        self.bytes.committed_offset()
    }
}
