//! Window stores: values per key and window start, kept for a retention period in time
//! segments that expire whole.

use std::cell::Cell;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use super::{
    builder_options, key_bytes, StateStore, StoreBuilder, StoreContext, StoreCore, StoreOptions,
};
use crate::serde::Serde;
use crate::Result;

/// Orders timestamps as unsigned big-endian bytes.
pub(crate) fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn ts_from(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

/// Segment layout shared by window and session stores: `segment id (8 bytes) || rest`.
///
/// It also tracks, per store instance, the segments that hold data, the stream time observed
/// and the segments already expired, so that a fetch does not scan the store for its first
/// and last key and a flush issues a range delete only when a segment newly expired. What it
/// knows is valid for one generation of the store's data ([`StoreCore::generation`]); after
/// dropped writes or a restoration it is computed again from the store.
#[derive(Debug)]
pub(crate) struct Segments {
    pub(crate) retention: i64,
    pub(crate) interval: i64,
    known: Cell<Option<Known>>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    generation: u64,
    /// The first and last segment ids that may hold data (`None`: none does).
    span: Option<(i64, i64)>,
    /// The stream time seen (a lower bound after a reopen: the last segment's start).
    observed: i64,
    /// Segments below this id are expired (deleted, or deleted with the next commit).
    expired_below: i64,
}

impl Segments {
    pub(crate) fn new(retention: Duration) -> Self {
        let retention = retention.as_millis().min(i64::MAX as u128) as i64;
        // As Kafka Streams: half the retention, at least a minute.
        Segments {
            retention,
            interval: (retention / 2).max(60_000),
            known: Cell::new(None),
        }
    }
    pub(crate) fn id(&self, ts: i64) -> i64 {
        ts.div_euclid(self.interval)
    }

    fn known(&self, core: &StoreCore) -> Result<Known> {
        if let Some(k) = self.known.get() {
            if k.generation == core.generation() {
                return Ok(k);
            }
        }
        let span = core.key_span()?.map(|(a, b)| (ts_from(&a), ts_from(&b)));
        let k = Known {
            generation: core.generation(),
            span,
            observed: span.map_or(i64::MIN, |(_, hi)| hi.saturating_mul(self.interval)),
            expired_below: i64::MIN,
        };
        self.known.set(Some(k));
        Ok(k)
    }

    /// Records a write at `ts` (a window start, a session end) into segment `id(ts)`, and
    /// returns the stream time observed so far, `ts` included.
    pub(crate) fn observe(&self, core: &StoreCore, ts: i64) -> Result<i64> {
        let mut k = self.known(core)?;
        k.observed = k.observed.max(ts);
        self.known.set(Some(k));
        Ok(k.observed)
    }

    /// The first time not expired: the stream time seen minus the retention, plus one.
    pub(crate) fn live_from(&self, core: &StoreCore) -> Result<i64> {
        let observed = self.known(core)?.observed;
        if observed == i64::MIN {
            return Ok(i64::MIN);
        }
        Ok(observed.saturating_sub(self.retention).saturating_add(1))
    }

    /// Records that segment `id` now holds data.
    pub(crate) fn wrote(&self, core: &StoreCore, id: i64) -> Result<()> {
        let mut k = self.known(core)?;
        k.span = Some(k.span.map_or((id, id), |(lo, hi)| (lo.min(id), hi.max(id))));
        self.known.set(Some(k));
        Ok(())
    }

    /// Drops the segments that only hold data older than `stream time - retention`,
    /// committed or not (in the bytes store with the next commit).
    pub(crate) fn expire(&self, core: &mut StoreCore) -> Result<()> {
        let mut k = self.known(core)?;
        if k.observed == i64::MIN {
            return Ok(());
        }
        let oldest_live = self.id(k.observed.saturating_sub(self.retention));
        if oldest_live <= k.expired_below {
            return Ok(());
        }
        k.expired_below = oldest_live;
        if let Some((lo, hi)) = k.span {
            if lo < oldest_live {
                core.expire_below(&ts_bytes(oldest_live));
                k.span = (hi >= oldest_live).then_some((oldest_live, hi));
            }
        }
        self.known.set(Some(k));
        Ok(())
    }

    /// The ids of the segments that hold data for times `[from, to]`, in order (see
    /// [`segments_between`]), within the span of segments this instance knows hold data.
    pub(crate) fn visit(&self, core: &StoreCore, from: i64, to: i64) -> Result<Vec<i64>> {
        let Some((lo, hi)) = self.known(core)?.span else {
            return Ok(vec![]);
        };
        segments_between(
            self.id(from).max(lo),
            self.id(to).min(hi),
            |lower, upper| {
                core.iter(lower, upper)
                    .next()
                    .transpose()
                    .map(|e| e.map(|(k, _)| k))
            },
        )
    }
}

/// The ids of the segments from `first` to `last` that hold data, in order, over a store laid
/// out as `segment id || rest`: each found with one seek (`first_key`, the first key in a
/// range) past the previous, so the
/// cost follows the segments that exist, not the width of the range (windows at the epoch and
/// at today's time are millions of segment ids apart).
pub(crate) fn segments_between(
    first: i64,
    last: i64,
    mut first_key: impl FnMut(Bound<&[u8]>, Bound<&[u8]>) -> Result<Option<Vec<u8>>>,
) -> Result<Vec<i64>> {
    let upper = ts_bytes(last.saturating_add(1));
    let mut found = vec![];
    let mut next = first;
    while next <= last {
        let lower = ts_bytes(next);
        let Some(key) = first_key(Bound::Included(&lower[..]), Bound::Excluded(&upper[..]))? else {
            break;
        };
        let id = ts_from(&key[..8]);
        found.push(id);
        next = id.saturating_add(1);
    }
    Ok(found)
}

/// The windows of `key` (its bytes) starting in `[from, to]` in the given segments, by segment
/// and start, as `(start, value bytes)`, over a store laid out as `segment id || key || start`
/// (`range` reads it). The one scan behind [`WindowStore::fetch`] and the endpoint's window
/// queries over committed bytes.
pub(crate) fn key_windows(
    segments: &[i64],
    key: &[u8],
    from: i64,
    to: i64,
    mut range: impl FnMut(Bound<&[u8]>, Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>>,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut out = vec![];
    for &segment in segments {
        let mut lo = ts_bytes(segment).to_vec();
        lo.extend_from_slice(key);
        let mut hi = lo.clone();
        lo.extend_from_slice(&ts_bytes(from));
        hi.extend_from_slice(&ts_bytes(to));
        for (k, v) in range(Bound::Included(&lo), Bound::Included(&hi))? {
            // Longer keys with this key as their prefix fall in the range too.
            if k.len() == 16 + key.len() {
                out.push((ts_from(&k[k.len() - 8..]), v));
            }
        }
    }
    Ok(out)
}

/// A typed window store: `(key, window start) -> value`.
pub struct WindowStore<K, V> {
    core: StoreCore,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    segments: Segments,
}

impl<K: 'static, V: 'static> WindowStore<K, V> {
    /// A builder for the topology: RocksDB, logged to a `compact,delete` changelog.
    pub fn builder(
        name: &str,
        retention: Duration,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> WindowStoreBuilder<K, V> {
        WindowStoreBuilder {
            name: name.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            retention,
            options: StoreOptions::default(),
        }
    }

    fn internal(&self, key: &[u8], start: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(16 + key.len());
        k.extend_from_slice(&ts_bytes(self.segments.id(start)));
        k.extend_from_slice(key);
        k.extend_from_slice(&ts_bytes(start));
        k
    }

    /// Stores `value` for `key` in the window starting at `window_start`; a window that is
    /// expired (at or before the largest start seen minus the retention, as Kafka Streams'
    /// window stores count it) is dropped and `false` returned.
    pub fn put(&mut self, key: &K, value: &V, window_start: i64) -> Result<bool> {
        let observed = self.segments.observe(&self.core, window_start)?;
        if window_start <= observed.saturating_sub(self.segments.retention) {
            tracing::debug!(store = %self.core.name, window_start, "dropping a write to an expired window");
            return Ok(false);
        }
        let k = self.internal(&key_bytes(&self.core.name, &*self.keys, key)?, window_start);
        let v = self.values.serialize(&self.core.name, value)?;
        self.core.put(k, v);
        self.segments
            .wrote(&self.core, self.segments.id(window_start))?;
        Ok(true)
    }

    /// The value of `key` in the window starting at `window_start`.
    pub fn fetch_one(&self, key: &K, window_start: i64) -> Result<Option<V>> {
        let k = self.internal(&key_bytes(&self.core.name, &*self.keys, key)?, window_start);
        match self.core.get(&k)? {
            Some(v) => Ok(Some(self.values.deserialize(&self.core.name, Some(&v))?)),
            None => Ok(None),
        }
    }

    /// The windows of `key` starting in `[from, to]`, by start time; expired windows (at or
    /// before the largest start seen minus the retention) are not returned even while their
    /// segment still exists, as Kafka Streams' window stores do. After a restart the largest
    /// start seen is known only to its segment's first time, so the bound is looser then.
    pub fn fetch(&self, key: &K, from: i64, to: i64) -> Result<Vec<(i64, V)>> {
        let from = from.max(self.segments.live_from(&self.core)?);
        if to < from {
            return Ok(vec![]);
        }
        let kb = key_bytes(&self.core.name, &*self.keys, key)?;
        let segments = self.segments.visit(&self.core, from, to)?;
        key_windows(&segments, &kb, from, to, |lo, hi| self.core.range(lo, hi))?
            .into_iter()
            .map(|(start, v)| Ok((start, self.values.deserialize(&self.core.name, Some(&v))?)))
            .collect()
    }

    /// Every window starting in `[from, to]`: `((key, start), value)`, by time segment, then
    /// by key bytes, then by start.
    pub fn fetch_all(&self, from: i64, to: i64) -> Result<Vec<((K, i64), V)>> {
        let mut out = vec![];
        for seg in self.segments.visit(&self.core, from, to)? {
            let lo = ts_bytes(seg);
            let hi = ts_bytes(seg + 1);
            let mut rows: Vec<(Vec<u8>, i64, Vec<u8>)> = self
                .core
                .range(Bound::Included(&lo), Bound::Excluded(&hi))?
                .into_iter()
                .map(|(k, v)| (k[8..k.len() - 8].to_vec(), ts_from(&k[k.len() - 8..]), v))
                .filter(|(_, start, _)| *start >= from && *start <= to)
                .collect();
            rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            for (key, start, v) in rows {
                let key = self.keys.deserialize(&self.core.name, Some(&key))?;
                out.push((
                    (key, start),
                    self.values.deserialize(&self.core.name, Some(&v))?,
                ));
            }
        }
        Ok(out)
    }
}

segmented_store!(WindowStore, WindowStoreBuilder, |b: &WindowStoreBuilder<
    K,
    V,
>| {
    Some(super::StoreQueries::new(
        super::QueryKind::Window {
            segment_interval: Segments::new(b.retention).interval,
        },
        b.keys.clone(),
        b.values.clone(),
    ))
});

/// The parts window and session stores share: `core_mut`, the `StateStore` impl (flush expires
/// old segments), and the builder (RocksDB or memory, a `compact,delete` changelog kept for the
/// retention plus a day, as Kafka Streams does).
macro_rules! segmented_store {
    ($store:ident, $builder:ident, $queries:expr) => {
        impl<K: 'static, V: 'static> $store<K, V> {
            /// The write path (commit, drop uncommitted writes: what the runtime does).
            #[cfg(feature = "internals")]
            pub fn core_mut(&mut self) -> &mut StoreCore {
                &mut self.core
            }
        }

        impl<K: 'static, V: 'static> StateStore for $store<K, V> {
            fn name(&self) -> &str {
                &self.core.name
            }
            fn flush(&mut self) -> Result<()> {
                self.segments.expire(&mut self.core)
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
                self
            }
            fn core_mut(&mut self) -> Option<&mut StoreCore> {
                Some(&mut self.core)
            }
            fn query_handle(&self) -> Option<super::QueryHandle> {
                // No serdes a typed key-value view could take for its own: the bytes are laid
                // out by time segment (the HTTP queries read them with the builder's codec).
                Some(super::QueryHandle {
                    bytes: self.core.bytes.clone(),
                    serdes: Arc::new(()),
                })
            }
        }

        #[doc = concat!("Declares a [`", stringify!($store), "`] in a topology.")]
        pub struct $builder<K, V> {
            name: String,
            keys: Arc<dyn Serde<K>>,
            values: Arc<dyn Serde<V>>,
            retention: Duration,
            options: StoreOptions,
        }

        impl<K, V> $builder<K, V> {
            builder_options!();
        }

        impl<K: 'static, V: 'static> StoreBuilder for $builder<K, V> {
            fn name(&self) -> &str {
                &self.name
            }
            fn changelog_configs(&self) -> Option<Vec<(String, String)>> {
                let retention = self.retention.as_millis() + 86_400_000;
                self.options.changelog_configs(&[
                    ("cleanup.policy", "compact,delete".to_string()),
                    ("retention.ms", retention.to_string()),
                ])
            }
            fn build(&self, ctx: &StoreContext<'_>) -> Result<Box<dyn StateStore>> {
                let core = self.options.open(&self.name, ctx)?;
                Ok(Box::new($store {
                    segments: Segments::new(self.retention),
                    core,
                    keys: self.keys.clone(),
                    values: self.values.clone(),
                }))
            }
            fn queries(&self) -> Option<super::StoreQueries> {
                let queries: fn(&Self) -> Option<super::StoreQueries> = $queries;
                queries(self)
            }
        }
    };
}
pub(crate) use segmented_store;
