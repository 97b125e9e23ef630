//! Suppression of a table's updates for a time limit: only the latest update of each key in
//! that time goes downstream, from a buffer that survives restarts (a logged store).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use streams_core::processor::{Processor, ProcessorContext};
use streams_core::serde::{Nullable, Serde, SerdeError};
use streams_core::store::KeyValueStore;
use streams_core::{Error, Record, Result};

use crate::change::Change;
use crate::handles::KTable;
use crate::windowing::Windowed;

/// What a suppression buffer does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Emit the oldest buffered updates early, until the buffer fits again.
    EmitEarly,
    /// Stop the application with an error saying which buffer overflowed.
    ShutDown,
}

/// How long a table's updates are held back, and how much may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    time_limit: i64,
    max_records: usize,
    max_bytes: usize,
    when_full: WhenFull,
}

impl Suppressed {
    /// Holds each key's updates back until `limit` of stream time has passed since the first
    /// held-back one, then emits the latest. Unbounded until [`with_max_records`] or
    /// [`with_max_bytes`] bounds it.
    ///
    /// [`with_max_records`]: Self::with_max_records
    /// [`with_max_bytes`]: Self::with_max_bytes
    pub fn until_time_limit(limit: Duration) -> Self {
        Suppressed {
            time_limit: i64::try_from(limit.as_millis()).unwrap_or(i64::MAX),
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            when_full: WhenFull::EmitEarly,
        }
    }

    /// At most `n` keys held back; then `when_full`.
    pub fn with_max_records(mut self, n: usize, when_full: WhenFull) -> Self {
        self.max_records = n;
        self.when_full = when_full;
        self
    }

    /// At most `bytes` of serialized keys and values held back (each key's bytes, its latest
    /// value's and the value the downstream saw last, and 32 bytes of bookkeeping); then
    /// `when_full`.
    pub fn with_max_bytes(mut self, bytes: usize, when_full: WhenFull) -> Self {
        self.max_bytes = bytes;
        self.when_full = when_full;
        self
    }
}

/// A held-back update: when it entered the buffer (record time), its record time, its value,
/// and the value the downstream saw last (the old value of the key's first held-back change,
/// Kafka Streams' `priorValue`), which the emitted change carries as its old value.
#[derive(Clone)]
struct Held<V> {
    since: i64,
    timestamp: i64,
    value: Option<V>,
    prior: Option<V>,
}

/// 8 bytes buffer time, 8 bytes record time, then the format: 2, and the value and the prior
/// value, each as 4 bytes of length (`u32::MAX` when absent) and the bytes. Earlier versions
/// wrote 0 (a deletion) or 1 and the value to the end, without a prior value; they are read
/// still (a buffer restored from an older changelog).
struct HeldSerde<V>(Arc<dyn Serde<V>>);

const HELD_FORMAT: u8 = 2;

impl<V: 'static> HeldSerde<V> {
    fn put_part(
        &self,
        topic: &str,
        out: &mut Vec<u8>,
        v: &Option<V>,
    ) -> std::result::Result<(), SerdeError> {
        match Nullable(self.0.clone()).serialize(topic, v)? {
            Some(bytes) => {
                let len = u32::try_from(bytes.len())
                    .ok()
                    .filter(|l| *l != u32::MAX)
                    .ok_or_else(|| SerdeError::new("Held", topic, "a value of 4 GiB or more"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&bytes);
            }
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
        Ok(())
    }

    /// A value or prior value at the start of `data`, and the bytes after it.
    fn part<'a>(
        &self,
        topic: &str,
        data: &'a [u8],
    ) -> std::result::Result<(Option<V>, &'a [u8]), SerdeError> {
        let short = || SerdeError::new("Held", topic, "truncated");
        let (len, rest) = data.split_first_chunk::<4>().ok_or_else(short)?;
        let len = u32::from_be_bytes(*len);
        if len == u32::MAX {
            return Ok((None, rest));
        }
        let (bytes, rest) = rest.split_at_checked(len as usize).ok_or_else(short)?;
        Ok((Some(self.0.deserialize(topic, Some(bytes))?), rest))
    }
}

impl<V: 'static> Serde<Held<V>> for HeldSerde<V> {
    fn serialize(
        &self,
        topic: &str,
        h: &Held<V>,
    ) -> std::result::Result<Option<Vec<u8>>, SerdeError> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&h.since.to_be_bytes());
        out.extend_from_slice(&h.timestamp.to_be_bytes());
        out.push(HELD_FORMAT);
        self.put_part(topic, &mut out, &h.value)?;
        self.put_part(topic, &mut out, &h.prior)?;
        Ok(Some(out))
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> std::result::Result<Held<V>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Held", topic, "null value"))?;
        if data.len() < 17 {
            return Err(SerdeError::new("Held", topic, "shorter than 17 bytes"));
        }
        let since = i64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let timestamp = i64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
        let (value, prior) = match data[16] {
            0 => (None, None),
            1 => (Some(self.0.deserialize(topic, Some(&data[17..]))?), None),
            HELD_FORMAT => {
                let (value, rest) = self.part(topic, &data[17..])?;
                let (prior, rest) = self.part(topic, rest)?;
                if !rest.is_empty() {
                    return Err(SerdeError::new(
                        "Held",
                        topic,
                        "bytes after the prior value",
                    ));
                }
                (value, prior)
            }
            other => {
                return Err(SerdeError::new(
                    "Held",
                    topic,
                    format!("unknown format {other}"),
                ))
            }
        };
        Ok(Held {
            since,
            timestamp,
            value,
            prior,
        })
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KTable<K, V> {
    /// Holds each key's updates back for `suppressed`'s time limit of stream time and then
    /// emits only the latest (a deletion included), as Kafka Streams'
    /// `suppress(untilTimeLimit(...))`. The buffer is a logged store, so what it holds
    /// survives a crash and is emitted once. Windowed results that should appear once, final,
    /// use `emit_final()` on the windowed aggregation instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder, Suppressed};
    ///
    /// // A sensor's status, at most once per second of event time per sensor.
    /// let builder = StreamsBuilder::new();
    /// builder
    ///     .table::<String, String>("status", Materialized::with(Utf8))
    ///     .suppress(Suppressed::until_time_limit(Duration::from_secs(1)))
    ///     .to_stream()
    ///     .to("status-calm");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let input = driver.input_topic("status", Utf8, Utf8);
    /// input.pipe_at("s1".to_string(), "ok".to_string(), 100)?;
    /// input.pipe_at("s1".to_string(), "hot".to_string(), 400)?;
    /// input.pipe_at("s1".to_string(), "ok".to_string(), 900)?;
    /// input.pipe_at("s2".to_string(), "ok".to_string(), 1_200)?; // s1 held since 100: due
    /// let out = driver.output_topic::<String, String>("status-calm", Utf8, Utf8);
    /// assert_eq!(out.read_key_values()?, vec![("s1".to_string(), "ok".to_string())]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn suppress(&self, suppressed: Suppressed) -> KTable<K, V> {
        self.suppress_by(suppressed, Arc::new(|_, ts| ts), false)
    }

    /// A suppression whose held-back keys are due `suppressed`'s time limit after
    /// `buffer_time(key, record time)`; with `final_only`, deletions are not emitted.
    fn suppress_by(
        &self,
        suppressed: Suppressed,
        buffer_time: BufferTime<K>,
        final_only: bool,
    ) -> KTable<K, V> {
        let path = format!("{}/suppress", self.path);
        let mut g = self.graph.borrow_mut();
        let node = g.node_name("SUPPRESS", &path, None);
        let store = g.state_name(
            "SUPPRESS-STATE-STORE",
            &path,
            None,
            &format!("suppress ({node})"),
        );
        let (store_name, keys, values) = (store.clone(), self.keys.clone(), self.values.clone());
        let node_name = node.clone();
        g.topology.add_processor(
            &node,
            move || Suppress::<K, V> {
                store: store_name.clone(),
                node: node_name.clone(),
                keys: keys.clone(),
                config: suppressed,
                order: BTreeMap::new(),
                by_key: HashMap::new(),
                bytes: 0,
                values: values.clone(),
                observed: i64::MIN,
                buffer_time: buffer_time.clone(),
                final_only,
                _types: PhantomData,
            },
            [self.node.as_str()],
        );
        let builder = KeyValueStore::<K, Held<V>>::builder(
            &store,
            self.keys.clone(),
            HeldSerde(self.values.clone()),
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node,
            path,
            store: None,
            view: None,
            keys: self.keys.clone(),
            values: self.values.clone(),
        }
    }
}

struct Suppress<K, V> {
    store: String,
    node: String,
    keys: Arc<dyn Serde<K>>,
    config: Suppressed,
    /// Held-back keys by (buffer time, key bytes): the emission order.
    order: BTreeMap<(i64, Vec<u8>), K>,
    /// Buffer time and approximate size of each held-back key, by key bytes.
    by_key: HashMap<Vec<u8>, (i64, usize)>,
    bytes: usize,
    /// The serde of the values, to count their bytes.
    values: Arc<dyn Serde<V>>,
    /// The largest timestamp this suppression has processed.
    observed: i64,
    /// When a key starts being held: its first held-back update's record time, or its window's
    /// end.
    buffer_time: BufferTime<K>,
    /// Final results only: deletions (of windows merged away) are not emitted.
    final_only: bool,
    _types: PhantomData<fn(V)>,
}

/// `(key, record time) -> buffer time` of a held-back key.
type BufferTime<K> = Arc<dyn Fn(&K, i64) -> i64 + Send + Sync>;

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KTable<Windowed<K>, V> {
    /// Holds each window's updates back until the window closes, `close_after` after its
    /// end, then emits its final result once (Kafka Streams'
    /// `suppress(Suppressed.untilWindowCloses(unbounded()))`), on any windowed table: after a
    /// windowed aggregation, or operators between it and here. `close_after` is the
    /// aggregation's grace for time and sliding windows, its gap plus grace for sessions
    /// (Kafka reads it from the aggregation); updates for a window reaching the buffer after it
    /// closed would be emitted again. Stream time is the suppression's own. Deletions (sessions
    /// merged away) are not emitted. Unbounded: nothing is emitted early.
    pub fn suppress_until_window_closes(&self, close_after: Duration) -> KTable<Windowed<K>, V> {
        let mut suppressed = Suppressed::until_time_limit(close_after);
        suppressed.when_full = WhenFull::ShutDown;
        self.suppress_by(suppressed, Arc::new(|w: &Windowed<K>, _| w.end), true)
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> Suppress<K, V> {
    /// Emits and forgets the oldest held-back key.
    fn emit_oldest(&mut self, ctx: &mut ProcessorContext<'_, K, Change<V>>) -> Result<bool> {
        let Some(((_, kb), key)) = self.order.pop_first() else {
            return Ok(false);
        };
        if let Some((_, size)) = self.by_key.remove(&kb) {
            self.bytes = self.bytes.saturating_sub(size);
        }
        let s = ctx.state_store::<KeyValueStore<K, Held<V>>>(&self.store)?;
        let Some(held) = s.delete(&key)? else {
            return Ok(true);
        };
        if self.final_only && held.value.is_none() {
            return Ok(true);
        }
        let change = Change {
            new: held.value,
            old: held.prior,
        };
        ctx.forward(Record::new(key, change, held.timestamp))?;
        Ok(true)
    }

    /// The bytes a held-back update counts for against `with_max_bytes`: its serialized key
    /// and buffered values (new and prior), and 32 bytes for times and bookkeeping.
    fn size_of(&self, kb: &[u8], held: &Held<V>) -> Result<usize> {
        let values = if self.config.max_bytes == usize::MAX {
            0 // unbounded: no need to serialize
        } else {
            HeldSerde(self.values.clone())
                .serialize(&self.store, held)?
                .map_or(0, |b| b.len().saturating_sub(17))
        };
        Ok(kb.len() + values + 32)
    }

    fn full(&self) -> bool {
        self.by_key.len() > self.config.max_records || self.bytes > self.config.max_bytes
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> Processor for Suppress<K, V> {
    type KeyIn = K;
    type ValueIn = Change<V>;
    type KeyOut = K;
    type ValueOut = Change<V>;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, Change<V>>) -> Result<()> {
        // What the buffer held at the last commit (restored from its changelog).
        let s = ctx.state_store::<KeyValueStore<K, Held<V>>>(&self.store)?;
        let mut held_back = vec![];
        for entry in s.all()? {
            let (key, held) = entry?;
            let kb = self.keys.serialize(&self.store, &key)?.unwrap_or_default();
            held_back.push((key, kb, held));
        }
        for (key, kb, held) in held_back {
            let size = self.size_of(&kb, &held)?;
            self.bytes += size;
            self.by_key.insert(kb.clone(), (held.since, size));
            self.order.insert((held.since, kb), key);
        }
        Ok(())
    }

    fn process(
        &mut self,
        r: Record<K, Change<V>>,
        ctx: &mut ProcessorContext<'_, K, Change<V>>,
    ) -> Result<()> {
        let (key, change, rest) = r.into_parts();
        let ts = rest.timestamp();
        // The suppression's own stream time (Kafka Streams' KTableSuppressProcessor keeps
        // observedStreamTime): updates that never reach it do not make it emit.
        self.observed = self.observed.max(ts);
        let kb = self.keys.serialize(&self.store, &key)?.unwrap_or_default();
        let store = ctx.state_store::<KeyValueStore<K, Held<V>>>(&self.store)?;
        let (since, prior) = match self.by_key.get(&kb) {
            Some((since, _)) => (*since, store.get(&key)?.and_then(|h| h.prior)),
            None => ((self.buffer_time)(&key, ts), change.old),
        };
        let held = Held {
            since,
            timestamp: ts,
            value: change.new,
            prior,
        };
        let size = self.size_of(&kb, &held)?;
        let (_, old_size) = self
            .by_key
            .insert(kb.clone(), (since, size))
            .unwrap_or((since, 0));
        if old_size == 0 {
            self.order.insert((since, kb), key.clone());
        }
        self.bytes = self.bytes.saturating_sub(old_size) + size;
        store.put(&key, &held)?;
        while self.full() {
            match self.config.when_full {
                WhenFull::EmitEarly => {
                    self.emit_oldest(ctx)?;
                }
                WhenFull::ShutDown => {
                    return Err(Error::User(format!(
                        "suppression buffer of {} is full ({} keys, about {} bytes; limits {} keys, {} bytes); raise the limits or emit early",
                        self.node,
                        self.by_key.len(),
                        self.bytes,
                        self.config.max_records,
                        self.config.max_bytes
                    )));
                }
            }
        }
        // Emit what has been held for the time limit.
        let due = self.observed.saturating_sub(self.config.time_limit);
        while self
            .order
            .first_key_value()
            .is_some_and(|((since, _), _)| *since <= due)
        {
            self.emit_oldest(ctx)?;
        }
        Ok(())
    }
}
