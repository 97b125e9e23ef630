//! State stores.
//!
//! A store is declared in the topology with a builder ([`KeyValueStore::builder`],
//! [`WindowStore::builder`], [`SessionStore::builder`], or your own [`StoreBuilder`]) and
//! connected to the processors that use it; every task opens its own instance under
//! `<state dir>/<application id>/<task id>/<store>/`, and a processor reaches it with
//! [`ProcessorContext::state_store`](crate::processor::ProcessorContext::state_store).
//!
//! Layers, top to bottom (`docs/ARCHITECTURE.md`): the typed store (serdes over bytes); the
//! [`StoreCore`], which holds a commit interval's writes back until the task's transaction
//! commits (deduplicating them per key when caching is on) and queues their changelog records;
//! the [`BytesStore`] (RocksDB by default, or memory), written in one atomic batch with the
//! changelog offset it reaches. So after a crash under exactly-once a RocksDB store holds
//! exactly the committed state and its offset, and restoration replays only the changelog's
//! tail (Kafka Streams wipes the store and replays everything).

mod bytes;
mod core;
mod global;
mod kv;
mod query;
mod rocks;
mod session;
mod window;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

pub(crate) use self::bytes::is_open_under;
// The write path below the typed stores is internal: a processor must not commit a store
// before the task's transaction commits. The `internals` feature opens it to the store
// conformance tests and benchmarks; it is not a stable API.
#[cfg(not(feature = "internals"))]
pub(crate) use self::bytes::{Batch, BytesStore, MemoryBytes, RocksBytes};
#[cfg(feature = "internals")]
pub use self::bytes::{Batch, BytesStore, MemoryBytes, RocksBytes};
#[cfg(feature = "internals")]
pub use self::core::{ChangelogTarget, RangeIter, StoreCore};
#[cfg(not(feature = "internals"))]
pub(crate) use self::core::{ChangelogTarget, StoreCore};
pub use self::global::GlobalStore;
pub(crate) use self::global::GlobalStores;
pub use self::kv::{KeyValueIter, KeyValueStore, KeyValueStoreBuilder, ReadOnlyKeyValueStore};
pub use self::query::StoreQueries;
pub(crate) use self::query::{committed_windows, Codec, QueryKind};
pub use self::rocks::{RocksConfigSetter, RocksResources, RocksUsage};
pub use self::session::{EndedSession, SessionStore, SessionStoreBuilder};
pub use self::window::{WindowStore, WindowStoreBuilder};
use crate::TaskId;
use crate::{Error, Result};

/// A store instance owned by one task.
pub trait StateStore: Any + Send {
    /// The store's name, as declared in the topology.
    fn name(&self) -> &str;
    /// Called on every commit of the task, before the commit.
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
    /// The change-logging, transactional write path of the built-in stores (internal to the
    /// runtime); custom stores have none and are neither logged nor restored.
    #[doc(hidden)]
    fn core_mut(&mut self) -> Option<&mut StoreCore> {
        None
    }
    /// What interactive queries need to read the committed state from other threads.
    fn query_handle(&self) -> Option<QueryHandle> {
        None
    }
}

/// The committed bytes of one store instance and its serdes, for read-only views.
#[derive(Clone)]
pub struct QueryHandle {
    pub(crate) bytes: Arc<dyn BytesStore>,
    pub(crate) serdes: Arc<dyn Any + Send + Sync>,
}

/// What a builder gets to open a store for a task.
pub struct StoreContext<'a> {
    /// The task.
    pub task: TaskId,
    /// The application id (it names the changelog topic).
    pub application_id: &'a str,
    /// The task's directory, when the runtime keeps state on disk.
    pub dir: Option<&'a Path>,
    /// The RocksDB resources shared by the instance.
    pub rocks: &'a RocksResources,
}

/// Declares a store in a topology and opens one instance per task.
pub trait StoreBuilder: Send + Sync + 'static {
    /// The store's name, unique in the topology.
    fn name(&self) -> &str;
    /// The changelog topic's configs when the store is logged, else `None`.
    fn changelog_configs(&self) -> Option<Vec<(String, String)>> {
        None
    }
    /// Whether another instance rebuilds the store from a topic (its changelog, or the
    /// source topic it is built from): standby replicas follow such stores. Default: when it
    /// has a changelog.
    fn restored_from_a_topic(&self) -> bool {
        self.changelog_configs().is_some()
    }
    /// Opens the instance of a task.
    fn build(&self, ctx: &StoreContext<'_>) -> Result<Box<dyn StateStore>>;
    /// What the HTTP endpoint's interactive queries may ask of the store (the built-in
    /// key-value and window stores answer; other stores are not queryable over HTTP).
    #[doc(hidden)]
    fn queries(&self) -> Option<StoreQueries> {
        None
    }
}

/// The changelog topic of `store`.
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// Options shared by the built-in store builders.
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    pub(crate) persistent: bool,
    pub(crate) logging: bool,
    pub(crate) caching: bool,
    pub(crate) extra_changelog_configs: Vec<(String, String)>,
    /// The source topic the store is built from, which serves as its changelog.
    pub(crate) source_changelog: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            persistent: true,
            logging: true,
            caching: false,
            extra_changelog_configs: vec![],
            source_changelog: None,
        }
    }
}

impl StoreOptions {
    pub(crate) fn open(&self, name: &str, ctx: &StoreContext<'_>) -> Result<StoreCore> {
        let bytes: Arc<dyn BytesStore> = if self.persistent {
            let dir = ctx.dir.ok_or_else(|| Error::State {
                store: name.to_string(),
                message: "a persistent store needs a state directory".into(),
            })?;
            Arc::new(RocksBytes::open(name, &dir.join(name), ctx.rocks)?)
        } else {
            Arc::new(MemoryBytes::new(name))
        };
        let changelog = match &self.source_changelog {
            Some(topic) => Some(ChangelogTarget {
                topic: Arc::from(topic.as_str()),
                partition: ctx.task.partition,
                source: true,
            }),
            None => self.logging.then(|| ChangelogTarget {
                topic: Arc::from(changelog_topic(ctx.application_id, name)),
                partition: ctx.task.partition,
                source: false,
            }),
        };
        Ok(StoreCore::new(name, bytes, changelog, self.caching))
    }

    /// Whether the store is rebuilt from a topic: its changelog or its source topic.
    pub(crate) fn restored_from_a_topic(&self) -> bool {
        self.source_changelog.is_some() || self.logging
    }

    pub(crate) fn changelog_configs(
        &self,
        base: &[(&str, String)],
    ) -> Option<Vec<(String, String)>> {
        if self.source_changelog.is_some() {
            return None; // the source topic is the log: no changelog topic of its own
        }
        self.logging.then(|| {
            let mut c: Vec<(String, String)> = base
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            c.extend(self.extra_changelog_configs.iter().cloned());
            c
        })
    }
}

macro_rules! builder_options {
    () => {
        /// Keeps the store in memory instead of RocksDB (it is rebuilt from the changelog
        /// after a restart).
        pub fn in_memory(mut self) -> Self {
            self.options.persistent = false;
            self
        }

        /// Turns the changelog on (default) or off. A store without changelog loses its
        /// uncommitted writes on a crash and is not restored elsewhere.
        pub fn with_logging(mut self, enabled: bool) -> Self {
            self.options.logging = enabled;
            self
        }

        /// Turns caching on or off (default off): with caching, only the last write of each
        /// key in a commit interval goes to the changelog.
        pub fn with_caching(mut self, enabled: bool) -> Self {
            self.options.caching = enabled;
            self
        }

        /// Builds the store from `topic`, a topic a source of the topology reads (a table read
        /// from a topic), instead of a changelog of its own: the store writes no changelog
        /// records, remembers the source offset it has applied, and is restored from the
        /// source topic up to the group's committed offset. The store's writes must be exactly
        /// the topic's records (key and value bytes).
        pub fn with_source_topic_as_changelog(mut self, topic: &str) -> Self {
            self.options.source_changelog = Some(topic.to_string());
            self
        }

        /// Adds a config to the changelog topic.
        pub fn with_changelog_config(mut self, key: &str, value: &str) -> Self {
            self.options
                .extra_changelog_configs
                .push((key.to_string(), value.to_string()));
            self
        }
    };
}
pub(crate) use builder_options;

/// Key bytes from a serde, where a null key is an error.
pub(crate) fn key_bytes<K: 'static>(
    store: &str,
    serde: &dyn crate::Serde<K>,
    key: &K,
) -> Result<Vec<u8>> {
    serde.serialize(store, key)?.ok_or_else(|| Error::State {
        store: store.to_string(),
        message: "a key serialized to null".into(),
    })
}
