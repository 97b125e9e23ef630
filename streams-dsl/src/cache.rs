//! The record cache of an aggregation: the latest aggregate of each key (or key and window)
//! updated since the last commit, held back and forwarded once, at the commit or when the
//! cache outgrows its budget. Consecutive updates of a key inside one commit interval then
//! reach the downstream once, as in Kafka Streams. The aggregation writes every update to its
//! store at once, so that readers of the store (joins) see the latest aggregate; the store,
//! built with caching, sends the changelog the last write of each key at the commit.

use std::collections::{BTreeMap, HashMap};

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

/// Held-back aggregates by their serialized key, in the order of each key's latest update
/// (Kafka Streams' `NamedCache`: a key updated again moves to the end), so that results of
/// in-order input leave in timestamp order.
pub(crate) struct Cache<K, VA> {
    /// The update number of each held-back key.
    index: HashMap<Vec<u8>, u64>,
    /// Held-back aggregates by update number.
    entries: BTreeMap<u64, Entry<K, VA>>,
    next: u64,
    bytes: usize,
}

impl<K, VA> Default for Cache<K, VA> {
    fn default() -> Self {
        Cache {
            index: HashMap::new(),
            entries: BTreeMap::new(),
            next: 0,
            bytes: 0,
        }
    }
}

impl<K, VA> Cache<K, VA> {
    /// The held-back aggregate of `id` and its timestamp: the latest, also in the store.
    pub(crate) fn get(&self, id: &[u8]) -> Option<(&VA, i64)> {
        let n = self.index.get(id)?;
        self.entries.get(n).map(|e| (&e.value, e.timestamp))
    }

    /// Holds `entry` back under `id`, replacing an earlier one. Returns the approximate bytes
    /// held.
    pub(crate) fn put(&mut self, id: Vec<u8>, mut entry: Entry<K, VA>) -> usize {
        let n = self.next;
        self.next += 1;
        match self.index.insert(id.clone(), n) {
            Some(earlier) => {
                // The downstream saw last what the first held-back update replaced.
                if let Some(first) = self.entries.remove(&earlier) {
                    entry.old = first.old;
                }
            }
            None => {
                // The key bytes twice (index and entry), the entry, and map overhead: an
                // estimate, as values are not serialized until they leave the cache.
                self.bytes += 2 * id.len() + std::mem::size_of::<Entry<K, VA>>() + 48;
            }
        }
        self.entries.insert(n, entry);
        self.bytes
    }

    /// Everything held back, in the order of each key's latest update; the cache is empty
    /// after.
    pub(crate) fn drain(&mut self) -> Vec<Entry<K, VA>> {
        self.index.clear();
        self.bytes = 0;
        std::mem::take(&mut self.entries).into_values().collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: u64, old: Option<u64>, timestamp: i64) -> Entry<String, u64> {
        Entry {
            key: key.to_string(),
            start: 0,
            value,
            old,
            timestamp,
            rest: Record::new((), (), timestamp),
        }
    }

    /// Kafka Streams' `NamedCache` flushes dirty keys in the order of their latest update (a
    /// key updated again moves to the end), so that a count's results for in-order input
    /// leave in timestamp order: `a@1, b@2, a@3` flushes `b=1@2, a=2@3`. The first held-back
    /// update's old value stays (what the downstream saw last).
    #[test]
    fn drains_in_the_order_of_each_keys_latest_update() {
        let mut cache = Cache::default();
        cache.put(b"a".to_vec(), entry("a", 1, None, 1));
        cache.put(b"b".to_vec(), entry("b", 1, None, 2));
        cache.put(b"a".to_vec(), entry("a", 2, Some(1), 3));
        let out: Vec<(String, u64, Option<u64>, i64)> = cache
            .drain()
            .into_iter()
            .map(|e| (e.key, e.value, e.old, e.timestamp))
            .collect();
        assert_eq!(
            out,
            vec![("b".to_string(), 1, None, 2), ("a".to_string(), 2, None, 3)]
        );
        assert!(cache.is_empty());
    }
}
