//! `TopologyTestDriver`: run a topology with no broker, synchronously.
//!
//! Pipe records into input topics, read what the topology wrote from output topics, look into
//! its stores, and move the wall clock by hand. Every piped record is processed completely
//! (including through repartition topics and any other topic the topology both writes and
//! reads) and then committed before the call returns. All topics have one partition, so the
//! topology runs one task per sub-topology, on partition 0.
//!
//! ```
//! use std::time::Duration;
//! use streams_core::driver::TopologyTestDriver;
//! use streams_core::processor::{Processor, ProcessorContext};
//! use streams_core::serde::{BigEndian, Utf8};
//! use streams_core::topology::{Sink, Source, TopologyBuilder};
//! use streams_core::{Record, Result};
//!
//! /// Emits the length of each word.
//! struct Length;
//! impl Processor for Length {
//!     type KeyIn = String;
//!     type ValueIn = String;
//!     type KeyOut = String;
//!     type ValueOut = u64;
//!     fn process(&mut self, r: Record<String, String>, ctx: &mut ProcessorContext<'_, String, u64>) -> Result<()> {
//!         let len = r.value().len() as u64;
//!         ctx.forward(r.with_value(len))
//!     }
//! }
//!
//! let topology = TopologyBuilder::new()
//!     .add_source("words", Source::new(["words"], Utf8, Utf8))
//!     .add_processor("length", || Length, ["words"])
//!     .add_sink("lengths", Sink::<String, u64>::new("lengths", Utf8, BigEndian), ["length"])
//!     .build()?;
//! let driver = TopologyTestDriver::new(topology)?;
//! let input = driver.input_topic("words", Utf8, Utf8);
//! let output = driver.output_topic::<String, u64>("lengths", Utf8, BigEndian);
//! input.pipe("a".to_string(), "hello".to_string())?;
//! input.pipe_at("b".to_string(), "hi".to_string(), 5_000)?;
//! assert_eq!(output.read_key_values()?, vec![("a".to_string(), 5_u64), ("b".to_string(), 2)]);
//! driver.advance_wall_clock(Duration::from_secs(1))?;
//! # Ok::<(), streams_core::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::handlers::{DeserializationErrorHandler, LogAndFail};
use crate::node::{OutRecord, RawRecord, RecordCollector};
use crate::serde::Serde;
use crate::store::{GlobalStore, GlobalStores, RocksResources, StateStore};
use crate::task::{SourceTopics, Task, TaskIdle, Tasks};
use crate::topology::Topology;
use crate::{Error, Headers, Record, Result, SerdeError, TaskId};

struct Collector {
    pending: VecDeque<OutRecord>,
}

impl RecordCollector for Collector {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        self.pending.push_back(record);
        Ok(())
    }
    fn partition_count(&mut self, _topic: &str) -> Result<i32> {
        Ok(1)
    }
    fn serialization_error(&mut self, node: &str, _topic: &str, error: SerdeError) -> Result<()> {
        Err(Error::Config(format!("sink {node}: {error}")))
    }
}

struct State {
    tasks: Tasks,
    sources: SourceTopics,
    outputs: HashMap<Arc<str>, VecDeque<OutRecord>>,
    offsets: HashMap<Arc<str>, i64>,
    wall_clock: i64,
    on_poison: Box<dyn DeserializationErrorHandler>,
    /// The global stores, filled straight from what is piped to their topics.
    globals: GlobalStores,
}

impl State {
    fn offset(&mut self, topic: &Arc<str>) -> i64 {
        if let Some(next) = self.offsets.get_mut(&**topic) {
            *next += 1;
            return *next - 1;
        }
        self.offsets.insert(topic.clone(), 1);
        0
    }

    /// The task loop of the stream thread, committed after every step (no transaction: the
    /// stores write what they held back right away).
    fn process_and_commit(&mut self, collector: &mut Collector) -> Result<()> {
        self.tasks.process(
            collector,
            &*self.on_poison,
            self.wall_clock,
            TaskIdle::Never,
        )?;
        self.tasks.prepare_commit(collector)?;
        self.tasks.committed(&HashMap::new(), false)
    }

    /// Processes `first` and the records already written (`pending`), feeding records the
    /// topology writes to its own sources back in, and commits each task after each record.
    fn run(&mut self, first: Option<RawRecord>, pending: VecDeque<OutRecord>) -> Result<()> {
        let mut collector = Collector { pending };
        let mut incoming: VecDeque<RawRecord> = first.into_iter().collect();
        loop {
            if let Some(raw) = incoming.pop_front() {
                if let Some(global) = self.globals.of_topic(&raw.topic) {
                    global.apply(raw.key.as_deref(), raw.value.as_deref());
                    continue;
                }
                let Some(id) = self.sources.task_of(&raw.topic, 0) else {
                    return Err(Error::Config(format!(
                        "no source of the topology reads topic {}",
                        raw.topic
                    )));
                };
                self.tasks.add(id, raw)?;
                self.process_and_commit(&mut collector)?;
            }
            let Some(out) = collector.pending.pop_front() else {
                if incoming.is_empty() {
                    return Ok(());
                }
                continue;
            };
            if self.sources.task_of(&out.topic, 0).is_some() {
                let offset = self.offset(&out.topic);
                incoming.push_back(RawRecord {
                    topic: out.topic.clone(),
                    partition: 0,
                    offset,
                    timestamp: out.timestamp,
                    key: out.key.clone(),
                    value: out.value.clone(),
                    headers: out.headers.clone(),
                });
            }
            self.outputs
                .entry(out.topic.clone())
                .or_default()
                .push_back(out);
        }
    }
}

/// Runs a topology in the calling thread, without a broker. See the [module docs](self).
pub struct TopologyTestDriver {
    state: Rc<RefCell<State>>,
    application_id: Arc<str>,
    topology: Topology,
    /// RocksDB stores live here; removed on drop.
    state_dir: std::path::PathBuf,
}

impl Drop for TopologyTestDriver {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            for mut task in state.tasks.take_all() {
                let _ = task.close(true);
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl TopologyTestDriver {
    /// A driver with application id `test-app`, wall clock at 0 and the default
    /// deserialization handler (fail).
    pub fn new(topology: Topology) -> Result<Self> {
        Self::with_options(topology, "test-app", 0, Box::new(LogAndFail))
    }

    /// A driver with the given application id (it names repartition topics), initial wall-clock
    /// time (milliseconds) and deserialization handler.
    pub fn with_options(
        topology: Topology,
        application_id: &str,
        wall_clock: i64,
        on_poison: Box<dyn DeserializationErrorHandler>,
    ) -> Result<Self> {
        let topology = topology.with_own_global_stores();
        let application_id: Arc<str> = Arc::from(application_id);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "kstreams-test-driver-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let rocks = RocksResources::new(8 << 20, 8 << 20, None);
        let mut tasks = Tasks::default();
        for st in topology.subtopologies() {
            let id = TaskId {
                subtopology: st.id,
                partition: 0,
            };
            let dir = state_dir.join(id.to_string());
            let mut task = Task::new(
                &topology,
                id,
                &application_id,
                Some(&dir),
                wall_clock,
                &rocks,
            )?;
            task.init()?;
            tasks.insert(task);
        }
        Ok(TopologyTestDriver {
            state: Rc::new(RefCell::new(State {
                tasks,
                sources: SourceTopics::of(&topology, &application_id),
                outputs: HashMap::new(),
                offsets: HashMap::new(),
                wall_clock,
                on_poison,
                globals: topology.global_stores().clone(),
            })),
            application_id,
            topology,
            state_dir,
        })
    }

    /// An input topic to pipe records into with the given serdes.
    pub fn input_topic<K: 'static, V: 'static>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> TestInputTopic<K, V> {
        TestInputTopic {
            topic: Arc::from(self.topology.resolve_topic(&self.application_id, topic)),
            keys: Box::new(keys),
            values: Box::new(values),
            state: self.state.clone(),
            next_timestamp: RefCell::new(0),
        }
    }

    /// An output topic to read records from with the given serdes.
    pub fn output_topic<K: 'static, V: 'static>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> TestOutputTopic<K, V> {
        TestOutputTopic {
            topic: Arc::from(self.topology.resolve_topic(&self.application_id, topic)),
            keys: Box::new(keys),
            values: Box::new(values),
            state: self.state.clone(),
        }
    }

    /// Moves the wall clock forward and runs the wall-clock punctuations that become due.
    pub fn advance_wall_clock(&self, by: Duration) -> Result<()> {
        let mut state = self.state.borrow_mut();
        state.wall_clock = state
            .wall_clock
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        let mut collector = Collector {
            pending: VecDeque::new(),
        };
        state.process_and_commit(&mut collector)?;
        state.run(None, collector.pending)
    }

    /// The global store `name`, filled from what was piped to its topic.
    pub fn global_store(&self, name: &str) -> Option<GlobalStore> {
        self.topology.global_store(name)
    }

    /// Runs `f` on the store `name` of type `S` (the instance of the task that owns it).
    pub fn with_store<S: StateStore, R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut S) -> R,
    ) -> Result<R> {
        let mut state = self.state.borrow_mut();
        for task in state.tasks.iter_mut() {
            if let Some(store) = task.store_mut(name) {
                let store = store
                    .as_any_mut()
                    .downcast_mut::<S>()
                    .ok_or_else(|| Error::State {
                        store: name.to_string(),
                        message: format!("the store is not a {}", std::any::type_name::<S>()),
                    })?;
                return Ok(f(store));
            }
        }
        Err(Error::Config(format!(
            "the topology has no store named {name}"
        )))
    }

    /// Closes every task (processors' and stores' `close`).
    pub fn close(self) -> Result<()> {
        let mut state = self.state.borrow_mut();
        let mut first_error = None;
        for mut task in state.tasks.take_all() {
            if let Err(e) = task.close(true) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Pipes records into a topic of a [`TopologyTestDriver`].
pub struct TestInputTopic<K, V> {
    topic: Arc<str>,
    keys: Box<dyn Serde<K>>,
    values: Box<dyn Serde<V>>,
    state: Rc<RefCell<State>>,
    next_timestamp: RefCell<i64>,
}

impl<K: 'static, V: 'static> TestInputTopic<K, V> {
    /// Pipes a record with the timestamp of the previous one (0 at first) and processes it.
    pub fn pipe(&self, key: K, value: V) -> Result<()> {
        let ts = *self.next_timestamp.borrow();
        self.pipe_at(key, value, ts)
    }

    /// Pipes a record with timestamp `timestamp` (milliseconds) and processes it.
    pub fn pipe_at(&self, key: K, value: V, timestamp: i64) -> Result<()> {
        self.pipe_record(Record::new(key, value, timestamp))
    }

    /// Pipes a whole record (its timestamp and headers are kept) and processes it.
    pub fn pipe_record(&self, record: Record<K, V>) -> Result<()> {
        let key = self.keys.serialize(&self.topic, record.key())?;
        let value = self.values.serialize(&self.topic, record.value())?;
        self.pipe_raw(key, value, record.timestamp(), record.headers().clone())
    }

    /// Pipes raw bytes, as a producer with other serdes (or a broken one) would write them.
    pub fn pipe_raw(
        &self,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: i64,
        headers: Headers,
    ) -> Result<()> {
        *self.next_timestamp.borrow_mut() = timestamp;
        let mut state = self.state.borrow_mut();
        let offset = state.offset(&self.topic);
        state.run(
            Some(RawRecord {
                topic: self.topic.clone(),
                partition: 0,
                offset,
                timestamp,
                key,
                value,
                headers,
            }),
            VecDeque::new(),
        )
    }
}

/// Reads what a topology wrote to a topic of a [`TopologyTestDriver`].
pub struct TestOutputTopic<K, V> {
    topic: Arc<str>,
    keys: Box<dyn Serde<K>>,
    values: Box<dyn Serde<V>>,
    state: Rc<RefCell<State>>,
}

/// A record as written to an output topic, with its serialized headers.
pub type OutputRecord<K, V> = Record<K, V>;

impl<K: 'static, V: 'static> TestOutputTopic<K, V> {
    /// The next record, if any.
    pub fn read_record(&self) -> Result<Option<OutputRecord<K, V>>> {
        let out = self
            .state
            .borrow_mut()
            .outputs
            .get_mut(&*self.topic)
            .and_then(VecDeque::pop_front);
        let Some(out) = out else {
            return Ok(None);
        };
        let key = self.keys.deserialize(&self.topic, out.key.as_deref())?;
        let value = self.values.deserialize(&self.topic, out.value.as_deref())?;
        Ok(Some(
            Record::new(key, value, out.timestamp).with_headers(out.headers),
        ))
    }

    /// Every record not read yet.
    pub fn read_records(&self) -> Result<Vec<OutputRecord<K, V>>> {
        let mut all = vec![];
        while let Some(r) = self.read_record()? {
            all.push(r);
        }
        Ok(all)
    }

    /// Every key and value not read yet.
    pub fn read_key_values(&self) -> Result<Vec<(K, V)>> {
        Ok(self
            .read_records()?
            .into_iter()
            .map(Record::into_key_value)
            .collect())
    }

    /// Every value not read yet.
    pub fn read_values(&self) -> Result<Vec<V>> {
        Ok(self
            .read_key_values()?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Whether everything written has been read.
    pub fn is_empty(&self) -> bool {
        self.state
            .borrow()
            .outputs
            .get(&*self.topic)
            .is_none_or(VecDeque::is_empty)
    }
}
