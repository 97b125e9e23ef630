//! How the operators that join a table read its rows (Kafka Streams' `KTableValueGetter`):
//! the stores a view reads and how a row is computed from them. Every join reads the other
//! side through a view, so that a table made by any operator can be joined and the join sees
//! the table's current rows:
//!
//! - a source, a materialized table, `to_table` and a join's result keep their rows as they
//!   are in a key-value store;
//! - an aggregation keeps each row with the timestamp of its latest input ([`Stamped`]); it
//!   writes every update to its store at once (the store holds writes back until the commit
//!   and reads them back), so a join sees the latest aggregate even while the record cache
//!   holds the update back from the downstream;
//! - a windowed aggregation keeps a row per key and window;
//! - `map_values` and `filter` derive their rows from their parent's view, as Kafka's
//!   `KTableMapValues` and `KTableFilter` value getters do: no store of their own, and never
//!   staler than the parent.
//!
//! A table without a view (after `suppress`, a session or sliding-window aggregation) is
//! materialized by the join into a store of its own first.

use std::sync::Arc;

use streams_core::processor::ProcessorContext;
use streams_core::store::{KeyValueStore, StateStore, WindowStore};
use streams_core::{Error, Result};

use crate::stamped::Stamped;
use crate::windowing::Windowed;

/// The stores a processor is connected to, by name.
pub(crate) trait Stores {
    fn store(&mut self, name: &str) -> Result<&mut dyn StateStore>;
}

impl<K: 'static, V: 'static> Stores for ProcessorContext<'_, K, V> {
    fn store(&mut self, name: &str) -> Result<&mut dyn StateStore> {
        self.state_store_dyn(name)
    }
}

/// The store `name` of `stores` as an `S`.
fn typed<'a, S: StateStore>(stores: &'a mut dyn Stores, name: &str) -> Result<&'a mut S> {
    stores
        .store(name)?
        .as_any_mut()
        .downcast_mut::<S>()
        .ok_or_else(|| Error::State {
            store: name.to_string(),
            message: format!("the store is not a {}", std::any::type_name::<S>()),
        })
}

type Getter<K, V> = Arc<dyn Fn(&mut dyn Stores, &K) -> Result<Option<V>> + Send + Sync>;

/// A table's rows as a join reads them.
pub(crate) struct TableView<K, V> {
    /// The stores the view reads: a processor that reads it must be connected to them.
    pub(crate) stores: Vec<String>,
    get: Getter<K, V>,
}

impl<K, V> Clone for TableView<K, V> {
    fn clone(&self) -> Self {
        TableView {
            stores: self.stores.clone(),
            get: self.get.clone(),
        }
    }
}

impl<K: 'static, V: 'static> TableView<K, V> {
    /// The rows of the key-value store `name`, as stored.
    pub(crate) fn plain(name: &str) -> Self {
        let store = name.to_string();
        TableView {
            stores: vec![store.clone()],
            get: Arc::new(move |stores, key| {
                typed::<KeyValueStore<K, V>>(stores, &store)?.get(key)
            }),
        }
    }

    /// The rows of the key-value store `name` of an aggregation, without their timestamps.
    pub(crate) fn stamped(name: &str) -> Self {
        let store = name.to_string();
        TableView {
            stores: vec![store.clone()],
            get: Arc::new(move |stores, key| {
                Ok(typed::<KeyValueStore<K, Stamped<V>>>(stores, &store)?
                    .get(key)?
                    .map(|s| s.value))
            }),
        }
    }

    /// This view's rows passed through `f` (`None`: the key has no row).
    pub(crate) fn derive<V2: 'static>(
        &self,
        f: impl Fn(&K, V) -> Option<V2> + Send + Sync + 'static,
    ) -> TableView<K, V2> {
        let parent = self.get.clone();
        TableView {
            stores: self.stores.clone(),
            get: Arc::new(move |stores, key| Ok(parent(stores, key)?.and_then(|v| f(key, v)))),
        }
    }

    /// The row of `key`, read by a processor connected to the view's stores.
    pub(crate) fn get<KO: 'static, VO: 'static>(
        &self,
        ctx: &mut ProcessorContext<'_, KO, VO>,
        key: &K,
    ) -> Result<Option<V>> {
        (self.get)(ctx, key)
    }
}

impl<K: 'static, V: 'static> TableView<Windowed<K>, V> {
    /// The rows of the window store `name` of a windowed aggregation, by key and window start.
    pub(crate) fn windowed(name: &str) -> Self {
        let store = name.to_string();
        TableView {
            stores: vec![store.clone()],
            get: Arc::new(move |stores, key: &Windowed<K>| {
                Ok(typed::<WindowStore<K, Stamped<V>>>(stores, &store)?
                    .fetch_one(&key.key, key.start)?
                    .map(|s| s.value))
            }),
        }
    }
}
