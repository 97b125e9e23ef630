//! What the HTTP endpoint's interactive queries may ask of a store: its kind and its serdes,
//! erased to bytes and JSON (`Serde::text_to_bytes`, `Serde::bytes_to_json`), read from the
//! committed bytes of a store instance.

use std::sync::Arc;

use super::bytes::BytesStore;
use super::window::{key_windows, segments_between};
use crate::serde::{Serde, SerdeError};
use crate::Result;

/// The kind of a queryable store, as far as the endpoint's queries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryKind {
    /// Keys to values: get a key, scan a range of keys.
    KeyValue,
    /// `(key, window start)` to values, in time segments of this width (ms).
    Window {
        /// The width of a time segment.
        segment_interval: i64,
    },
}

/// A store's kind and its serdes erased to bytes and JSON (from its builder).
#[derive(Clone)]
pub struct StoreQueries {
    pub(crate) kind: QueryKind,
    pub(crate) codec: Arc<dyn Codec>,
}

impl std::fmt::Debug for StoreQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreQueries({:?})", self.kind)
    }
}

impl StoreQueries {
    pub(crate) fn new<K: 'static, V: 'static>(
        kind: QueryKind,
        keys: Arc<dyn Serde<K>>,
        values: Arc<dyn Serde<V>>,
    ) -> Self {
        StoreQueries {
            kind,
            codec: Arc::new(Typed { keys, values }),
        }
    }
}

/// The store's serdes, without their types.
pub(crate) trait Codec: Send + Sync {
    /// A key from its text (`None`: the key serde does not read text).
    fn key_from_text(&self, store: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>>;
    /// A stored key as JSON.
    fn key_to_json(
        &self,
        store: &str,
        bytes: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>>;
    /// A stored value as JSON.
    fn value_to_json(
        &self,
        store: &str,
        bytes: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>>;
}

struct Typed<K, V> {
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> Codec for Typed<K, V> {
    fn key_from_text(&self, store: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        self.keys.text_to_bytes(store, text)
    }
    fn key_to_json(
        &self,
        store: &str,
        bytes: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        self.keys.bytes_to_json(store, bytes)
    }
    fn value_to_json(
        &self,
        store: &str,
        bytes: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        self.values.bytes_to_json(store, bytes)
    }
}

/// The committed windows of `key` (its bytes) starting in `[from, to]`, by start time, from a
/// window store's bytes (`segment id || key || start`).
pub(crate) fn committed_windows(
    bytes: &dyn BytesStore,
    segment_interval: i64,
    key: &[u8],
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Vec<u8>)>> {
    if from > to {
        return Ok(vec![]);
    }
    let segments = segments_between(
        from.div_euclid(segment_interval),
        to.div_euclid(segment_interval),
        |lower, upper| Ok(bytes.range_limited(lower, upper, 1)?.pop().map(|(k, _)| k)),
    )?;
    key_windows(&segments, key, from, to, |lo, hi| bytes.range(lo, hi))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::serde::{BigEndian, Utf8};
    use crate::store::{
        KeyValueStore, ReadOnlyKeyValueStore, RocksResources, StoreBuilder, StoreContext,
        WindowStore,
    };
    use crate::TaskId;

    fn open(builder: &dyn StoreBuilder) -> Box<dyn crate::store::StateStore> {
        let rocks = RocksResources::default();
        let ctx = StoreContext {
            task: TaskId {
                subtopology: 0,
                partition: 0,
            },
            application_id: "app",
            dir: None,
            rocks: &rocks,
        };
        builder.build(&ctx).unwrap()
    }

    /// A window store's bytes are laid out by time segment: a typed key-value view of them
    /// would answer wrong, so the handle refuses to become one.
    #[test]
    fn a_window_store_never_opens_as_a_key_value_view() {
        let window = open(
            &WindowStore::<String, u64>::builder("w", Duration::from_secs(60), Utf8, BigEndian)
                .in_memory(),
        );
        let handle = window.query_handle().expect("window stores are queryable");
        assert!(ReadOnlyKeyValueStore::<String, u64>::from_handles(
            "w",
            vec![(0, handle)],
            std::sync::Arc::new(|_| true)
        )
        .is_err());
        let kv = open(&KeyValueStore::<String, u64>::builder("kv", Utf8, BigEndian).in_memory());
        let handle = kv.query_handle().unwrap();
        assert!(ReadOnlyKeyValueStore::<String, u64>::from_handles(
            "kv",
            vec![(0, handle)],
            std::sync::Arc::new(|_| true)
        )
        .is_ok());
    }
}
