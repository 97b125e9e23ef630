//! The Processor API: user code that sees one record at a time.
//!
//! A [`Processor`] receives records of one key/value type and forwards records of another to its
//! children through its [`ProcessorContext`]. The context also schedules punctuations (periodic
//! calls driven by stream time or by the wall clock), requests commits, and hands out the
//! task's state stores.
//!
//! ```
//! use streams_core::processor::{Processor, ProcessorContext};
//! use streams_core::{Record, Result};
//!
//! /// Upper-cases values and drops empty ones.
//! struct Shout;
//!
//! impl Processor for Shout {
//!     type KeyIn = String;
//!     type ValueIn = String;
//!     type KeyOut = String;
//!     type ValueOut = String;
//!
//!     fn process(
//!         &mut self,
//!         record: Record<String, String>,
//!         ctx: &mut ProcessorContext<'_, String, String>,
//!     ) -> Result<()> {
//!         if record.value().is_empty() {
//!             return Ok(());
//!         }
//!         let upper = record.value().to_uppercase();
//!         ctx.forward(record.with_value(upper))
//!     }
//! }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::node::{restore, DynRecord, Node, NodeCtx};
pub use crate::node::{PunctuationType, PunctuatorId};
use crate::record::FixedKeyRecord;
use crate::store::{GlobalStore, StateStore};
use crate::{Record, RecordMetadata, Result, TaskId};

/// User code at a node of a topology.
///
/// The types are associated so that a processor's input and output types are fixed, which lets
/// the topology check at build time that a parent's output is its child's input.
pub trait Processor: Send + 'static {
    /// Key type of the records this processor receives.
    type KeyIn: 'static;
    /// Value type of the records this processor receives.
    type ValueIn: 'static;
    /// Key type of the records it forwards.
    type KeyOut: 'static;
    /// Value type of the records it forwards.
    type ValueOut: 'static;

    /// Called once when the task is created, before any record; schedule punctuations here.
    fn init(&mut self, ctx: &mut ProcessorContext<'_, Self::KeyOut, Self::ValueOut>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Handles one record. An error fails the stream thread with that error (the record's
    /// offset is not committed, so it is processed again after a restart).
    fn process(
        &mut self,
        record: Record<Self::KeyIn, Self::ValueIn>,
        ctx: &mut ProcessorContext<'_, Self::KeyOut, Self::ValueOut>,
    ) -> Result<()>;

    /// Called when a punctuation scheduled with [`ProcessorContext::schedule`] is due;
    /// `timestamp` is the stream time or wall-clock time (milliseconds) that triggered it.
    fn punctuate(
        &mut self,
        id: PunctuatorId,
        timestamp: i64,
        ctx: &mut ProcessorContext<'_, Self::KeyOut, Self::ValueOut>,
    ) -> Result<()> {
        let _ = (id, timestamp, ctx);
        Ok(())
    }

    /// Called before every commit of the task, after the last record of the commit interval:
    /// forward what the processor held back (a record cache keeping only the latest update
    /// per key), so that it is part of the commit.
    fn flush(
        &mut self,
        ctx: &mut ProcessorContext<'_, Self::KeyOut, Self::ValueOut>,
    ) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Called once when the task is closed.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a processor can do besides receiving records: forward, schedule, commit, reach stores.
pub struct ProcessorContext<'a, K, V> {
    inner: NodeCtx<'a>,
    _types: PhantomData<fn(K, V)>,
}

impl<'a, K: 'static, V: 'static> ProcessorContext<'a, K, V> {
    fn reborrow(&mut self) -> ProcessorContext<'_, K, V> {
        ProcessorContext {
            inner: self.inner.reborrow(),
            _types: PhantomData,
        }
    }

    /// Sends `record` to every child of this node (depth first: each child, and its own
    /// children, have handled it when this returns).
    pub fn forward(&mut self, record: Record<K, V>) -> Result<()>
    where
        K: Clone,
        V: Clone,
    {
        self.inner.forward(record)
    }

    /// Sends `record` to the child named `child` only.
    pub fn forward_to(&mut self, child: &str, record: Record<K, V>) -> Result<()> {
        self.inner.forward_to(child, record)
    }

    /// Schedules [`Processor::punctuate`] every `interval` of stream or wall-clock time.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) -> Result<PunctuatorId> {
        self.inner.schedule(interval, kind)
    }

    /// Cancels a punctuation.
    pub fn cancel(&mut self, id: PunctuatorId) {
        self.inner.cancel(id);
    }

    /// Asks the runtime to commit the task soon (after the current record).
    pub fn commit(&mut self) {
        self.inner.request_commit();
    }

    /// The state store `name`, which must be connected to this processor in the topology and be
    /// of type `S`.
    pub fn state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S> {
        self.inner.state_store(name)
    }

    /// The state store `name` as a trait object, for code that learns the store's type only
    /// at run time (downcast it with [`StateStore::as_any_mut`]).
    pub fn state_store_dyn(&mut self, name: &str) -> Result<&mut dyn StateStore> {
        self.inner.state_store_dyn(name)
    }

    /// The global store `name` (declared with `TopologyBuilder::add_global_store`): every
    /// partition of its topic, read-only, up to date as of the last records the instance read.
    pub fn global_store(&self, name: &str) -> Result<GlobalStore> {
        self.inner.global_store(name)
    }

    /// The task this processor instance runs in.
    pub fn task_id(&self) -> TaskId {
        self.inner.task_id()
    }

    /// Counts a record this processor dropped in the task's
    /// `kstreams_task_dropped_records_total` metric (see [`crate::metrics`]).
    pub fn record_dropped(&self, reason: crate::metrics::DropReason) {
        self.inner.record_dropped(reason);
    }

    /// The application id.
    pub fn application_id(&self) -> &str {
        self.inner.application_id()
    }

    /// Where the record being processed came from (absent in a punctuation).
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.inner.record_metadata()
    }

    /// The task's stream time: the largest record timestamp it has processed
    /// (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.inner.stream_time()
    }

    /// The runtime's wall-clock time in milliseconds (the test's clock in the driver).
    pub fn wall_clock_time(&self) -> i64 {
        self.inner.wall_clock()
    }

    /// How many bytes a record cache of this processor may hold (`StreamsConfig::cache_max_bytes`
    /// shared by the stream threads; 0: cache nothing, forward every update at once).
    pub fn cache_max_bytes(&self) -> usize {
        self.inner.cache_budget()
    }
}

/// A processor that cannot change the key: it receives and forwards [`FixedKeyRecord`]s.
/// Add it with [`TopologyBuilder::add_fixed_key_processor`](crate::topology::TopologyBuilder::add_fixed_key_processor).
///
/// ```
/// use streams_core::processor::{FixedKeyProcessor, FixedKeyProcessorContext};
/// use streams_core::record::FixedKeyRecord;
/// use streams_core::Result;
///
/// /// The length of each value, under the same key.
/// struct Length;
///
/// impl FixedKeyProcessor for Length {
///     type Key = String;
///     type ValueIn = String;
///     type ValueOut = u64;
///     fn process(
///         &mut self,
///         record: FixedKeyRecord<String, String>,
///         ctx: &mut FixedKeyProcessorContext<'_, String, u64>,
///     ) -> Result<()> {
///         let n = record.value().len() as u64;
///         ctx.forward(record.with_value(n))
///     }
/// }
/// ```
pub trait FixedKeyProcessor: Send + 'static {
    /// The key type, in and out.
    type Key: Clone + 'static;
    /// Value type of the records this processor receives.
    type ValueIn: 'static;
    /// Value type of the records it forwards.
    type ValueOut: Clone + 'static;

    /// Called once when the task is ready, before any record.
    fn init(
        &mut self,
        ctx: &mut FixedKeyProcessorContext<'_, Self::Key, Self::ValueOut>,
    ) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Handles one record.
    fn process(
        &mut self,
        record: FixedKeyRecord<Self::Key, Self::ValueIn>,
        ctx: &mut FixedKeyProcessorContext<'_, Self::Key, Self::ValueOut>,
    ) -> Result<()>;

    /// Called when a punctuation is due (see [`Processor::punctuate`]).
    fn punctuate(
        &mut self,
        id: PunctuatorId,
        timestamp: i64,
        ctx: &mut FixedKeyProcessorContext<'_, Self::Key, Self::ValueOut>,
    ) -> Result<()> {
        let _ = (id, timestamp, ctx);
        Ok(())
    }

    /// Called once when the task is closed.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a [`FixedKeyProcessor`] can do: as [`ProcessorContext`], but it forwards only
/// [`FixedKeyRecord`]s.
pub struct FixedKeyProcessorContext<'a, K, V>(ProcessorContext<'a, K, V>);

impl<'a, K: Clone + 'static, V: Clone + 'static> FixedKeyProcessorContext<'a, K, V> {
    /// Sends `record` to every child of this node.
    pub fn forward(&mut self, record: FixedKeyRecord<K, V>) -> Result<()> {
        self.0.forward(record.into_record())
    }

    /// Sends `record` to the child named `child` only.
    pub fn forward_to(&mut self, child: &str, record: FixedKeyRecord<K, V>) -> Result<()> {
        self.0.forward_to(child, record.into_record())
    }

    /// See [`ProcessorContext::schedule`].
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) -> Result<PunctuatorId> {
        self.0.schedule(interval, kind)
    }

    /// See [`ProcessorContext::cancel`].
    pub fn cancel(&mut self, id: PunctuatorId) {
        self.0.cancel(id);
    }

    /// See [`ProcessorContext::commit`].
    pub fn commit(&mut self) {
        self.0.commit();
    }

    /// See [`ProcessorContext::state_store`].
    pub fn state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S> {
        self.0.state_store(name)
    }

    /// See [`ProcessorContext::global_store`].
    pub fn global_store(&self, name: &str) -> Result<GlobalStore> {
        self.0.global_store(name)
    }

    /// See [`ProcessorContext::task_id`].
    pub fn task_id(&self) -> TaskId {
        self.0.task_id()
    }

    /// See [`ProcessorContext::record_dropped`].
    pub fn record_dropped(&self, reason: crate::metrics::DropReason) {
        self.0.record_dropped(reason);
    }

    /// See [`ProcessorContext::application_id`].
    pub fn application_id(&self) -> &str {
        self.0.application_id()
    }

    /// See [`ProcessorContext::record_metadata`].
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.0.record_metadata()
    }

    /// See [`ProcessorContext::stream_time`].
    pub fn stream_time(&self) -> i64 {
        self.0.stream_time()
    }

    /// See [`ProcessorContext::wall_clock_time`].
    pub fn wall_clock_time(&self) -> i64 {
        self.0.wall_clock_time()
    }
}

/// Runs a [`FixedKeyProcessor`] as a [`Processor`].
pub(crate) struct FixedKey<P>(pub(crate) P);

impl<P: FixedKeyProcessor> Processor for FixedKey<P> {
    type KeyIn = P::Key;
    type ValueIn = P::ValueIn;
    type KeyOut = P::Key;
    type ValueOut = P::ValueOut;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, P::Key, P::ValueOut>) -> Result<()> {
        self.0.init(&mut FixedKeyProcessorContext(ctx.reborrow()))
    }
    fn process(
        &mut self,
        record: Record<P::Key, P::ValueIn>,
        ctx: &mut ProcessorContext<'_, P::Key, P::ValueOut>,
    ) -> Result<()> {
        self.0.process(
            FixedKeyRecord::new(record),
            &mut FixedKeyProcessorContext(ctx.reborrow()),
        )
    }
    fn punctuate(
        &mut self,
        id: PunctuatorId,
        timestamp: i64,
        ctx: &mut ProcessorContext<'_, P::Key, P::ValueOut>,
    ) -> Result<()> {
        self.0
            .punctuate(id, timestamp, &mut FixedKeyProcessorContext(ctx.reborrow()))
    }
    fn close(&mut self) -> Result<()> {
        self.0.close()
    }
}

/// Adapts a typed [`Processor`] to [`Node`].
pub(crate) struct ProcessorNode<P> {
    pub(crate) processor: P,
    pub(crate) name: Arc<str>,
}

fn typed<'a, K, V>(ctx: &'a mut NodeCtx<'_>) -> ProcessorContext<'a, K, V> {
    ProcessorContext {
        inner: ctx.reborrow(),
        _types: PhantomData,
    }
}

impl<P: Processor> Node for ProcessorNode<P> {
    fn init(&mut self, ctx: &mut NodeCtx<'_>) -> Result<()> {
        self.processor.init(&mut typed(ctx))
    }
    fn process(&mut self, record: DynRecord<'_>, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let record = restore::<P::KeyIn, P::ValueIn>(record, &self.name)?;
        self.processor.process(record, &mut typed(ctx))
    }
    fn punctuate(&mut self, id: PunctuatorId, timestamp: i64, ctx: &mut NodeCtx<'_>) -> Result<()> {
        self.processor.punctuate(id, timestamp, &mut typed(ctx))
    }
    fn flush(&mut self, ctx: &mut NodeCtx<'_>) -> Result<()> {
        self.processor.flush(&mut typed(ctx))
    }
    fn close(&mut self) -> Result<()> {
        self.processor.close()
    }
}
