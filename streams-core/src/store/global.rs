//! Global stores: every partition of a topic, read into one store per instance that every
//! task can read (a global table). The runtime fills them before any task processes and keeps
//! them up to date while the application runs; the topic is their log.
//!
//! They are kept in memory, as key and value bytes, and read again from the topic at each
//! start (Kafka Streams keeps them in RocksDB with a checkpoint; see docs/adr/0007-joins.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::serde::Serde;
use crate::Result;

/// The contents of one global table, shared by every task of an instance and by interactive
/// queries. Cheap to clone.
#[derive(Clone, Default)]
pub struct GlobalStore {
    name: Arc<str>,
    rows: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl std::fmt::Debug for GlobalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GlobalStore({}, {} rows)", self.name, self.len())
    }
}

impl GlobalStore {
    fn new(name: &str) -> Self {
        GlobalStore {
            name: Arc::from(name),
            rows: Default::default(),
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value bytes stored under `key` (as the topic's records carry them).
    pub fn get_bytes(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.rows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The value of `key`, with the serdes the topic was written with. A key whose serde
    /// writes no bytes (null) has no value.
    pub fn get<K: 'static, V: 'static>(
        &self,
        keys: &dyn Serde<K>,
        values: &dyn Serde<V>,
        key: &K,
    ) -> Result<Option<V>> {
        let Some(k) = keys.serialize(&self.name, key)? else {
            return Ok(None);
        };
        match self.get_bytes(&k) {
            Some(v) => Ok(Some(values.deserialize(&self.name, Some(&v))?)),
            None => Ok(None),
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the store has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a record of the topic: a value updates its key, a null value deletes it, a
    /// record without a key is ignored.
    pub(crate) fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key else {
            return;
        };
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(v) => {
                rows.insert(key.to_vec(), v.to_vec());
            }
            None => {
                rows.remove(key);
            }
        }
    }
}

/// The global stores of one instance (or one test driver), by store name, with the topic
/// each is read from.
#[derive(Clone, Default)]
pub(crate) struct GlobalStores {
    by_name: Arc<HashMap<String, (String, GlobalStore)>>,
}

impl GlobalStores {
    /// Empty stores for `(store name, topic)` pairs.
    pub(crate) fn new(tables: &[(String, String)]) -> Self {
        GlobalStores {
            by_name: Arc::new(
                tables
                    .iter()
                    .map(|(name, topic)| (name.clone(), (topic.clone(), GlobalStore::new(name))))
                    .collect(),
            ),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<GlobalStore> {
        self.by_name.get(name).map(|(_, s)| s.clone())
    }

    /// The store read from `topic`, if any.
    pub(crate) fn of_topic(&self, topic: &str) -> Option<GlobalStore> {
        self.by_name
            .values()
            .find(|(t, _)| t == topic)
            .map(|(_, s)| s.clone())
    }

    /// The topics read.
    pub(crate) fn topics(&self) -> Vec<String> {
        self.by_name.values().map(|(t, _)| t.clone()).collect()
    }
}
