//! State stores as the Processor API sees them.
//!
//! A store is declared in the topology with a [`StoreBuilder`] and connected to the processors
//! that use it; every task then opens its own instance, and a processor reaches it with
//! [`ProcessorContext::state_store`](crate::processor::ProcessorContext::state_store).
//!
//! This module has the store contract and a typed in-memory key-value store. The RocksDB
//! stores, change-logging and restoration build on the same contract.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use crate::serde::Serde;
use crate::task::TaskId;
use crate::{Error, Result};

/// A store instance owned by one task.
pub trait StateStore: Any + Send {
    /// The store's name, as declared in the topology.
    fn name(&self) -> &str;
    /// Makes buffered writes durable; called on every commit of the task.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Releases the store's resources; called when the task closes.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// For downcasting to the concrete store.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the concrete store.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Declares a store in a topology and opens one instance per task.
pub trait StoreBuilder: Send + Sync + 'static {
    /// The store's name, unique in the topology.
    fn name(&self) -> &str;
    /// Opens the instance of `task`; `state_dir` is the task's own directory when the runtime
    /// has one.
    fn build(&self, task: TaskId, state_dir: Option<&Path>) -> Result<Box<dyn StateStore>>;
}

/// A typed key-value store held in memory, ordered by the serialized key bytes (as a
/// RocksDB-backed store orders them).
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
    name: String,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    _types: PhantomData<fn(K, V)>,
}

impl<K: 'static, V: 'static> KeyValueStore<K, V> {
    /// An empty in-memory store.
    pub fn in_memory(name: &str, keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        KeyValueStore {
            name: name.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            data: BTreeMap::new(),
            _types: PhantomData,
        }
    }

    /// A builder for the topology.
    pub fn builder(
        name: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> KeyValueStoreBuilder<K, V> {
        KeyValueStoreBuilder {
            name: name.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
        }
    }

    fn key_bytes(&self, key: &K) -> Result<Vec<u8>> {
        self.keys
            .serialize(&self.name, key)?
            .ok_or_else(|| Error::State {
                store: self.name.clone(),
                message: "a key serialized to null".into(),
            })
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.key_bytes(key)?;
        match self.data.get(&k) {
            Some(v) => Ok(Some(self.values.deserialize(&self.name, Some(v))?)),
            None => Ok(None),
        }
    }

    /// Sets the value of `key`.
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        let k = self.key_bytes(key)?;
        match self.values.serialize(&self.name, value)? {
            Some(v) => {
                self.data.insert(k, v);
            }
            None => {
                self.data.remove(&k);
            }
        }
        Ok(())
    }

    /// Removes `key`, returning its old value.
    pub fn delete(&mut self, key: &K) -> Result<Option<V>> {
        let k = self.key_bytes(key)?;
        match self.data.remove(&k) {
            Some(v) => Ok(Some(self.values.deserialize(&self.name, Some(&v))?)),
            None => Ok(None),
        }
    }

    /// Every entry, in key-byte order.
    pub fn all(&self) -> Result<Vec<(K, V)>> {
        self.data
            .iter()
            .map(|(k, v)| {
                Ok((
                    self.keys.deserialize(&self.name, Some(k))?,
                    self.values.deserialize(&self.name, Some(v))?,
                ))
            })
            .collect()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl<K: 'static, V: 'static> StateStore for KeyValueStore<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Declares a [`KeyValueStore`] in a topology.
pub struct KeyValueStoreBuilder<K, V> {
    name: String,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> StoreBuilder for KeyValueStoreBuilder<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn build(&self, _task: TaskId, _state_dir: Option<&Path>) -> Result<Box<dyn StateStore>> {
        Ok(Box::new(KeyValueStore {
            name: self.name.clone(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            data: BTreeMap::new(),
            _types: PhantomData,
        }))
    }
}
