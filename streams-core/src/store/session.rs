//! Session stores: values per key and session `[start, end]`, kept for a retention period.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use super::window::{segmented_store, ts_bytes, ts_from, Segments};
use super::{
    builder_options, key_bytes, StateStore, StoreBuilder, StoreContext, StoreCore, StoreOptions,
};
use crate::serde::Serde;
use crate::Result;

/// A session of [`SessionStore::fetch_ended`]: `((key, start, end), value)`.
pub type EndedSession<K, V> = ((K, i64, i64), V);

/// A typed session store: `(key, start, end) -> value`, segmented by session end.
pub struct SessionStore<K, V> {
    core: StoreCore,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    segments: Segments,
}

impl<K: 'static, V: 'static> SessionStore<K, V> {
    /// A builder for the topology: RocksDB, logged to a `compact,delete` changelog.
    pub fn builder(
        name: &str,
        retention: Duration,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> SessionStoreBuilder<K, V> {
        SessionStoreBuilder {
            name: name.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            retention,
            options: StoreOptions::default(),
        }
    }

    fn internal(&self, key: &[u8], start: i64, end: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(24 + key.len());
        k.extend_from_slice(&ts_bytes(self.segments.id(end)));
        k.extend_from_slice(key);
        k.extend_from_slice(&ts_bytes(end));
        k.extend_from_slice(&ts_bytes(start));
        k
    }

    /// Stores `value` for the session `[start, end]` of `key`.
    pub fn put(&mut self, key: &K, start: i64, end: i64, value: &V) -> Result<()> {
        self.segments.observe(&self.core, end)?;
        let k = self.internal(&key_bytes(&self.core.name, &*self.keys, key)?, start, end);
        let v = self.values.serialize(&self.core.name, value)?;
        self.core.put(k, v);
        self.segments.wrote(&self.core, self.segments.id(end))
    }

    /// Removes the session `[start, end]` of `key`.
    pub fn remove(&mut self, key: &K, start: i64, end: i64) -> Result<()> {
        let k = self.internal(&key_bytes(&self.core.name, &*self.keys, key)?, start, end);
        self.core.put(k, None);
        Ok(())
    }

    /// The sessions of `key` that end at or after `earliest_end` and start at or before
    /// `latest_start` (the sessions a new event may merge with), by end time.
    pub fn find_sessions(
        &self,
        key: &K,
        earliest_end: i64,
        latest_start: i64,
    ) -> Result<Vec<((i64, i64), V)>> {
        let kb = key_bytes(&self.core.name, &*self.keys, key)?;
        let mut out = vec![];
        for seg in self.segments.visit(&self.core, earliest_end, i64::MAX)? {
            let mut lo = ts_bytes(seg).to_vec();
            lo.extend_from_slice(&kb);
            let mut hi = lo.clone();
            lo.extend_from_slice(&ts_bytes(earliest_end));
            hi.extend_from_slice(&ts_bytes(i64::MAX));
            for (k, v) in self
                .core
                .range(Bound::Included(&lo), Bound::Included(&hi))?
            {
                if k.len() != 24 + kb.len() {
                    continue;
                }
                let end = ts_from(&k[k.len() - 16..]);
                let start = ts_from(&k[k.len() - 8..]);
                if end >= earliest_end && start <= latest_start {
                    out.push((
                        (start, end),
                        self.values.deserialize(&self.core.name, Some(&v))?,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every session ending in `[from_end, to_end]`, of every key: `((key, start, end), value)`,
    /// by end time, then key bytes, then start.
    pub fn fetch_ended(&self, from_end: i64, to_end: i64) -> Result<Vec<EndedSession<K, V>>> {
        let mut rows: Vec<(i64, Vec<u8>, i64, Vec<u8>)> = vec![];
        for seg in self.segments.visit(&self.core, from_end, to_end)? {
            let lo = ts_bytes(seg);
            let hi = ts_bytes(seg + 1);
            for (k, v) in self
                .core
                .range(Bound::Included(&lo), Bound::Excluded(&hi))?
            {
                if k.len() < 24 {
                    continue;
                }
                let end = ts_from(&k[k.len() - 16..k.len() - 8]);
                let start = ts_from(&k[k.len() - 8..]);
                if end >= from_end && end <= to_end {
                    rows.push((end, k[8..k.len() - 16].to_vec(), start, v));
                }
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        let mut out = Vec::with_capacity(rows.len());
        for (end, key, start, v) in rows {
            out.push((
                (
                    self.keys.deserialize(&self.core.name, Some(&key))?,
                    start,
                    end,
                ),
                self.values.deserialize(&self.core.name, Some(&v))?,
            ));
        }
        Ok(out)
    }
}

segmented_store!(
    SessionStore,
    SessionStoreBuilder,
    |_: &SessionStoreBuilder<K, V>| None
);
