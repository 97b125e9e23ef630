//! The layers above the bytes: uncommitted writes held back until their transaction commits
//! (which doubles as the cache), and the change-log records those writes produce.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::bytes::{Batch, BytesStore, Chunked};
use crate::Result;

/// The held-back writes in a key range (none when the range is empty).
type PendingRange<'a> = std::iter::Flatten<
    std::option::IntoIter<std::collections::btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>>>,
>;

/// The entries of a key range of a store, committed ones merged with the held-back writes
/// (which win, and hide deleted keys), in key order. See [`StoreCore::iter`].
pub struct RangeIter<'a> {
    committed: std::iter::Peekable<Chunked<'a>>,
    pending: std::iter::Peekable<PendingRange<'a>>,
}

impl Iterator for RangeIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.committed.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.committed.next(),
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((c, _))), Some((p, _))) => c.as_slice().cmp(p.as_slice()),
            };
            if order == std::cmp::Ordering::Less {
                return self.committed.next();
            }
            if order == std::cmp::Ordering::Equal {
                self.committed.next();
            }
            if let Some((k, Some(v))) = self.pending.next() {
                return Some(Ok((k.clone(), v.clone())));
            }
            // A held-back delete: the key is gone.
        }
    }
}

/// Where a store's changes go: its changelog topic, on the task's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogTarget {
    /// `<application id>-<store>-changelog`, or the source topic the store is built from.
    pub topic: Arc<str>,
    /// The task's partition.
    pub partition: i32,
    /// The topic is a source topic of the task (a table read from a topic): the store writes
    /// no changelog records, its offset is the source offset processed, and restoration stops
    /// at the group's committed offset.
    pub source: bool,
}

/// A store's write path. Writes go to `pending` and are read back from it; they reach the bytes
/// store only in [`commit`](Self::commit), after the task's transaction committed, in one atomic
/// batch with the changelog offset they reach. Without caching, every write is also queued for
/// the changelog at once; with caching, the last write per key is sent at commit.
pub struct StoreCore {
    pub(crate) name: String,
    pub(crate) bytes: Arc<dyn BytesStore>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys below this bound expired in this commit interval: hidden from reads now, deleted
    /// from the bytes store in the commit's write (never before the transaction commits).
    expired_below: Option<Vec<u8>>,
    outbox: Batch,
    /// Bumped whenever the data changes other than through this core's puts (dropped writes,
    /// restoration, a wipe), so that what a store derived from it is computed again.
    generation: u64,
    pub(crate) changelog: Option<ChangelogTarget>,
    caching: bool,
    metrics: Option<crate::metrics::StoreMetrics>,
}

impl StoreCore {
    /// A core over `bytes`, logging to `changelog` when given.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn new(
        name: &str,
        bytes: Arc<dyn BytesStore>,
        changelog: Option<ChangelogTarget>,
        caching: bool,
    ) -> Self {
        StoreCore {
            name: name.to_string(),
            bytes,
            pending: BTreeMap::new(),
            expired_below: None,
            outbox: vec![],
            generation: 0,
            changelog,
            caching,
            metrics: None,
        }
    }

    /// The record-cache budget of the store's task: with none (Kafka Streams' cache of 0
    /// bytes), a store built with caching sends every write to the changelog at once.
    pub(crate) fn set_cache_budget(&mut self, bytes: usize) {
        if bytes > 0 || !self.caching {
            return;
        }
        if self.changelog.as_ref().is_some_and(|c| !c.source) {
            // Writes held for the commit's changelog records go out now instead.
            let held = self.pending.iter().map(|(k, v)| (k.clone(), v.clone()));
            self.outbox.extend(held);
        }
        self.caching = false;
    }

    /// Counts this store's calls in `metrics`.
    pub(crate) fn set_metrics(&mut self, metrics: crate::metrics::StoreMetrics) {
        self.metrics = Some(metrics);
    }

    /// The value of `key`, uncommitted writes included.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(m) = &self.metrics {
            m.gets.inc();
        }
        if self.is_expired(key) {
            return Ok(None);
        }
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.bytes.get(key),
        }
    }

    /// Writes (`Some`) or deletes (`None`) `key`.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(m) = &self.metrics {
            m.puts.inc();
        }
        if self
            .changelog
            .as_ref()
            .is_some_and(|c| !c.source && !self.caching)
        {
            self.outbox.push((key.clone(), value.clone()));
        }
        self.pending.insert(key, value);
    }

    /// Entries in the range, uncommitted writes included, in key order.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn range(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.iter(from, to).collect()
    }

    /// The entries in the range, uncommitted writes included, in key order, read lazily: the
    /// committed entries in chunks, merged with the held-back writes.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn iter(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> RangeIter<'_> {
        if let Some(m) = &self.metrics {
            m.ranges.inc();
        }
        let from = match (&self.expired_below, from) {
            (Some(bound), Bound::Unbounded) => Bound::Included(bound.as_slice()),
            (Some(bound), Bound::Included(k) | Bound::Excluded(k)) if k < bound.as_slice() => {
                Bound::Included(bound.as_slice())
            }
            (_, from) => from,
        };
        let pending = if super::bytes::non_empty(from, to) && !self.pending.is_empty() {
            Some(self.pending.range::<[u8], _>((from, to)))
        } else {
            None
        };
        RangeIter {
            committed: Chunked::new(&*self.bytes, from, to).peekable(),
            pending: pending.into_iter().flatten().peekable(),
        }
    }

    /// Whether changelog records wait to be sent.
    pub(crate) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Changelog records to send now (without caching: every write since the last call).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn take_outbox(&mut self) -> Batch {
        std::mem::take(&mut self.outbox)
    }

    /// Changelog records to send before a commit (with caching: the last write of each key).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn cache_flush(&mut self) -> Batch {
        let mut out = self.take_outbox();
        if self.caching && self.changelog.as_ref().is_some_and(|c| !c.source) {
            out.extend(self.pending.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// The task's transaction committed: write the held-back batch and, when changelog records
    /// were sent, the offset of the last one, atomically.
    #[cfg(feature = "internals")]
    pub fn commit(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        self.commit_with(changelog_offset, true)
    }

    /// [`commit`](Self::commit), optionally without the write-ahead log (the test driver's
    /// throw-away state).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn commit_with(
        &mut self,
        changelog_offset: Option<i64>,
        durable: bool,
    ) -> Result<()> {
        if self.pending.is_empty() && changelog_offset.is_none() && self.expired_below.is_none() {
            return Ok(());
        }
        let batch: Batch = std::mem::take(&mut self.pending).into_iter().collect();
        let expired = self.expired_below.take();
        self.bytes
            .write_expiring(expired.as_deref(), batch, changelog_offset, durable)
    }

    /// Drops what was not committed (the transaction aborted or the task was taken over),
    /// expiry included.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn drop_uncommitted(&mut self) {
        self.pending.clear();
        self.outbox.clear();
        self.expired_below = None;
        self.generation += 1;
    }

    /// Restoration: writes a batch of changelog records (`None` deletes) and the offset of
    /// the last one, without the write-ahead log; [`restored`](Self::restored) makes it
    /// durable.
    pub(crate) fn restore_batch(&mut self, batch: Batch, last_offset: i64) -> Result<()> {
        self.generation += 1;
        self.bytes.write(batch, Some(last_offset), false)
    }

    /// Restoration ended: what it wrote becomes durable before any logged write follows.
    pub(crate) fn restored(&mut self) -> Result<()> {
        self.generation += 1;
        self.bytes.flush()
    }

    /// Deletes every entry and the stored offset, before a restoration from the start.
    pub(crate) fn wipe(&mut self) -> Result<()> {
        self.drop_uncommitted();
        self.bytes.wipe()
    }

    /// Changes whenever the data changed other than through this core's writes.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn is_expired(&self, key: &[u8]) -> bool {
        self.expired_below
            .as_deref()
            .is_some_and(|bound| key < bound)
    }

    /// The smallest and largest key, uncommitted writes included (a smallest key that
    /// expired in this commit interval may still show).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn key_span(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
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

    /// Drops every entry with a key below `bound`, committed or not (expired segments): at
    /// once for reads, in the bytes store with the next [`commit`](Self::commit).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn expire_below(&mut self, bound: &[u8]) {
        self.pending = self.pending.split_off(bound);
        if !self.is_expired(bound) {
            self.expired_below = Some(bound.to_vec());
        }
    }

    /// Whether writes (or an expiry) are waiting for a commit.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.expired_below.is_some()
    }

    /// The bytes store underneath (committed state), for tests and tools.
    #[cfg(feature = "internals")]
    pub fn bytes(&self) -> &Arc<dyn BytesStore> {
        &self.bytes
    }

    /// The store's name.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The changelog offset the committed state reaches.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn committed_offset(&self) -> Result<Option<i64>> {
        self.bytes.committed_offset()
    }
}
