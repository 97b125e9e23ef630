//! The record cache of an aggregation: the latest aggregate of each key (or key and window)
//! updated since the last commit, held back and forwarded once, at the commit or when the
//! cache outgrows its budget. Consecutive updates of a key inside one commit interval then
//! reach the downstream once, as in Kafka Streams. The aggregation writes every update to its
//! store at once, so that readers of the store (joins) see the latest aggregate; the store,
//! built with caching, sends the changelog the last write of each key at the commit.

use std::collections::HashMap;

use streams_core::Record;

/// One held-back aggregate.
pub(crate) struct Entry<K, VA> {
    pub(crate) key: K,
    /// The window start (0 for key-value aggregations).
    pub(crate) start: i64,
    pub(crate) value: VA,
    /// The aggregate before the first update held back (what the downstream saw last).
    pub(crate) old: Option<VA>,
    pub(crate) timestamp: i64,
    /// Headers and origin of the latest record that updated it.
    pub(crate) rest: Record<(), ()>,
}

/// Held-back aggregates by their serialized key, in the order they were first updated.
pub(crate) struct Cache<K, VA> {
    index: HashMap<Vec<u8>, usize>,
    entries: Vec<Entry<K, VA>>,
    bytes: usize,
}

impl<K, VA> Default for Cache<K, VA> {
    fn default() -> Self {
        Cache {
            index: HashMap::new(),
            entries: vec![],
            bytes: 0,
        }
    }
}

impl<K, VA> Cache<K, VA> {
    /// Holds `entry` back under `id`, replacing an earlier one. Returns the approximate bytes
    /// held.
    pub(crate) fn put(&mut self, id: Vec<u8>, entry: Entry<K, VA>) -> usize {
        match self.index.get(&id) {
            Some(&i) => {
                let old = self.entries[i].old.take();
                self.entries[i] = entry;
                self.entries[i].old = old;
            }
            None => {
                // The key bytes twice (index and entry), the entry, and map overhead: an
                // estimate, as values are not serialized until they leave the cache.
                self.bytes += 2 * id.len() + std::mem::size_of::<Entry<K, VA>>() + 48;
                self.index.insert(id, self.entries.len());
                self.entries.push(entry);
            }
        }
        self.bytes
    }

    /// Everything held back, in first-update order; the cache is empty after.
    pub(crate) fn drain(&mut self) -> Vec<Entry<K, VA>> {
        self.index.clear();
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
