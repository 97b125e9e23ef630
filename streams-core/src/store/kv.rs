//! Key-value stores.

use std::any::Any;
use std::ops::Bound;
use std::sync::Arc;

use super::{
    builder_options, key_bytes, MemoryBytes, QueryHandle, StateStore, StoreBuilder, StoreContext,
    StoreCore, StoreOptions,
};
use crate::serde::Serde;
use crate::{Error, Result};

type Serdes<K, V> = (Arc<dyn Serde<K>>, Arc<dyn Serde<V>>);

/// A typed key-value store, ordered by the serialized key bytes.
///
/// ```
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::store::KeyValueStore;
///
/// let mut store = KeyValueStore::<String, u64>::in_memory("counts", Utf8, BigEndian);
/// store.put(&"a".to_string(), &1).unwrap();
/// assert_eq!(store.get(&"a".to_string()).unwrap(), Some(1));
/// ```
pub struct KeyValueStore<K, V> {
    core: StoreCore,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> KeyValueStore<K, V> {
    /// A standalone in-memory store without changelog (for tests and tools).
    pub fn in_memory(name: &str, keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        KeyValueStore {
            core: StoreCore::new(name, Arc::new(MemoryBytes::new(name)), None, false),
            keys: Arc::new(keys),
            values: Arc::new(values),
        }
    }

    /// A builder for the topology: RocksDB with a compacted changelog unless changed.
    pub fn builder(
        name: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> KeyValueStoreBuilder<K, V> {
        KeyValueStoreBuilder {
            name: name.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            options: StoreOptions::default(),
        }
    }

    fn key(&self, key: &K) -> Result<Vec<u8>> {
        key_bytes(&self.core.name, &*self.keys, key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.core.get(&self.key(key)?)? {
            Some(v) => Ok(Some(self.values.deserialize(&self.core.name, Some(&v))?)),
            None => Ok(None),
        }
    }

    /// Sets the value of `key` (a value that serializes to null deletes it).
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        let k = self.key(key)?;
        let v = self.values.serialize(&self.core.name, value)?;
        self.core.put(k, v);
        Ok(())
    }

    /// Sets the value of `key` unless it has one; returns the existing value.
    pub fn put_if_absent(&mut self, key: &K, value: &V) -> Result<Option<V>> {
        match self.get(key)? {
            Some(v) => Ok(Some(v)),
            None => {
                self.put(key, value)?;
                Ok(None)
            }
        }
    }

    /// Removes `key`, returning its old value.
    pub fn delete(&mut self, key: &K) -> Result<Option<V>> {
        let old = self.get(key)?;
        if old.is_some() {
            self.core.put(self.key(key)?, None);
        }
        Ok(old)
    }

    fn scan(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> KeyValueIter<'_, K, V> {
        KeyValueIter {
            inner: Box::new(self.core.iter(from, to)),
            keys: &*self.keys,
            values: &*self.values,
            name: &self.core.name,
        }
    }

    /// Entries with keys from `from` to `to` (both included), in key-byte order, read lazily
    /// (a large range is never held in memory at once).
    pub fn range(&self, from: &K, to: &K) -> Result<KeyValueIter<'_, K, V>> {
        let (a, b) = (self.key(from)?, self.key(to)?);
        Ok(self.scan(Bound::Included(&a), Bound::Included(&b)))
    }

    /// Entries whose key bytes start with the bytes of `prefix` (serialized with `serde`),
    /// read lazily.
    pub fn prefix_scan<P: 'static>(
        &self,
        prefix: &P,
        serde: &dyn Serde<P>,
    ) -> Result<KeyValueIter<'_, K, V>> {
        let p = key_bytes(&self.core.name, serde, prefix)?;
        let upper = prefix_upper_bound(&p);
        let to = match &upper {
            Some(u) => Bound::Excluded(u.as_slice()),
            None => Bound::Unbounded,
        };
        Ok(self.scan(Bound::Included(&p), to))
    }

    /// Every entry, in key-byte order, read lazily.
    pub fn all(&self) -> Result<KeyValueIter<'_, K, V>> {
        Ok(self.scan(Bound::Unbounded, Bound::Unbounded))
    }

    /// The exact number of entries (a full scan, in chunks; see
    /// [`approximate_num_entries`](Self::approximate_num_entries) for a cheap estimate).
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        for entry in self.core.iter(Bound::Unbounded, Bound::Unbounded) {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self
            .core
            .iter(Bound::Unbounded, Bound::Unbounded)
            .next()
            .transpose()?
            .is_none())
    }

    /// An estimate of the number of entries (committed ones, from RocksDB's estimate).
    pub fn approximate_num_entries(&self) -> Result<u64> {
        self.core.bytes.approximate_len()
    }

    /// The write path (for the runtime and tests).
    #[cfg(feature = "internals")]
    pub fn core(&self) -> &StoreCore {
        &self.core
    }

    /// The write path, mutable (commit, drop uncommitted writes: what the runtime does).
    #[cfg(feature = "internals")]
    pub fn core_mut(&mut self) -> &mut StoreCore {
        &mut self.core
    }
}

/// A key and a value, as bytes.
type Entry = (Vec<u8>, Vec<u8>);

/// The entries of a scan of a [`KeyValueStore`] (or of a [`ReadOnlyKeyValueStore`]), decoded,
/// in key-byte order. It reads the store lazily, in chunks, so a scan of a large store holds
/// only a chunk at a time; collect it with `.collect::<Result<Vec<_>>>()`.
pub struct KeyValueIter<'a, K, V> {
    inner: Box<dyn Iterator<Item = Result<Entry>> + 'a>,
    keys: &'a dyn Serde<K>,
    values: &'a dyn Serde<V>,
    name: &'a str,
}

impl<K: 'static, V: 'static> Iterator for KeyValueIter<'_, K, V> {
    type Item = Result<(K, V)>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.inner.next()?;
        Some(entry.and_then(|(k, v)| {
            Ok((
                self.keys.deserialize(self.name, Some(&k))?,
                self.values.deserialize(self.name, Some(&v))?,
            ))
        }))
    }
}

/// The smallest byte string greater than every string starting with `p`.
pub(crate) fn prefix_upper_bound(p: &[u8]) -> Option<Vec<u8>> {
    let mut u = p.to_vec();
    while let Some(last) = u.pop() {
        if last < 0xff {
            u.push(last + 1);
            return Some(u);
        }
    }
    None
}

impl<K: 'static, V: 'static> StateStore for KeyValueStore<K, V> {
    fn name(&self) -> &str {
        &self.core.name
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn core_mut(&mut self) -> Option<&mut StoreCore> {
        Some(&mut self.core)
    }
    fn query_handle(&self) -> Option<QueryHandle> {
        let serdes: Serdes<K, V> = (self.keys.clone(), self.values.clone());
        Some(QueryHandle {
            bytes: self.core.bytes.clone(),
            serdes: Arc::new(serdes),
        })
    }
}

/// Declares a [`KeyValueStore`] in a topology.
pub struct KeyValueStoreBuilder<K, V> {
    name: String,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    options: StoreOptions,
}

impl<K, V> KeyValueStoreBuilder<K, V> {
    builder_options!();
}

impl<K: 'static, V: 'static> StoreBuilder for KeyValueStoreBuilder<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn changelog_configs(&self) -> Option<Vec<(String, String)>> {
        self.options
            .changelog_configs(&[("cleanup.policy", "compact".to_string())])
    }
    fn restored_from_a_topic(&self) -> bool {
        self.options.restored_from_a_topic()
    }
    fn build(&self, ctx: &StoreContext<'_>) -> Result<Box<dyn StateStore>> {
        Ok(Box::new(KeyValueStore {
            core: self.options.open(&self.name, ctx)?,
            keys: self.keys.clone(),
            values: self.values.clone(),
        }))
    }
    fn queries(&self) -> Option<super::StoreQueries> {
        Some(super::StoreQueries::new(
            super::QueryKind::KeyValue,
            self.keys.clone(),
            self.values.clone(),
        ))
    }
}

/// A read-only view of the committed state of a key-value store, over the instances of every
/// task this application instance runs; safe to use from any thread while it runs.
pub struct ReadOnlyKeyValueStore<K, V> {
    name: String,
    parts: Vec<(i32, Arc<dyn super::BytesStore>)>,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    /// Whether this instance still runs the task of a partition (the view reads nothing once
    /// one of its partitions moved away).
    runs: Arc<dyn Fn(i32) -> bool + Send + Sync>,
}

impl<K: 'static, V: 'static> ReadOnlyKeyValueStore<K, V> {
    pub(crate) fn from_handles(
        name: &str,
        handles: Vec<(i32, QueryHandle)>,
        runs: Arc<dyn Fn(i32) -> bool + Send + Sync>,
    ) -> Result<Self> {
        let mut parts = vec![];
        let mut serdes: Option<Serdes<K, V>> = None;
        for (p, h) in handles {
            let s = h
                .serdes
                .downcast_ref::<Serdes<K, V>>()
                .ok_or_else(|| Error::State {
                    store: name.to_string(),
                    message: format!(
                        "the store is not a key-value store of ({}, {})",
                        std::any::type_name::<K>(),
                        std::any::type_name::<V>()
                    ),
                })?;
            serdes.get_or_insert_with(|| s.clone());
            parts.push((p, h.bytes));
        }
        let (keys, values) = serdes.ok_or_else(|| Error::State {
            store: name.to_string(),
            message: "no local instance of this store (no task of it runs here now)".into(),
        })?;
        parts.sort_by_key(|(p, _)| *p);
        Ok(ReadOnlyKeyValueStore {
            name: name.to_string(),
            parts,
            keys,
            values,
            runs,
        })
    }

    /// An error once a partition of this view has moved to another instance (a rebalance).
    fn check(&self) -> Result<()> {
        match self.parts.iter().find(|(p, _)| !(self.runs)(*p)) {
            None => Ok(()),
            Some((p, _)) => Err(Error::State {
                store: self.name.clone(),
                message: format!(
                    "partition {p} of this view has moved away from this instance (a rebalance); ask KafkaStreams::key_value_store for a new view, or another instance"
                ),
            }),
        }
    }

    /// The partitions whose instances this view reads.
    pub fn partitions(&self) -> Vec<i32> {
        self.parts.iter().map(|(p, _)| *p).collect()
    }

    /// The committed value of `key`, from whichever local partition holds it; an error once a
    /// partition of this view has moved to another instance.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.check()?;
        let k = key_bytes(&self.name, &*self.keys, key)?;
        for (_, b) in &self.parts {
            if let Some(v) = b.get(&k)? {
                return Ok(Some(self.values.deserialize(&self.name, Some(&v))?));
            }
        }
        Ok(None)
    }

    /// Every committed entry of every local partition (partition by partition, key order
    /// within), read lazily.
    pub fn all(&self) -> Result<KeyValueIter<'_, K, V>> {
        self.check()?;
        let inner = self.parts.iter().flat_map(|(_, b)| {
            super::bytes::Chunked::new(&**b, Bound::Unbounded, Bound::Unbounded)
        });
        Ok(KeyValueIter {
            inner: Box::new(inner),
            keys: &*self.keys,
            values: &*self.values,
            name: &self.name,
        })
    }
}
