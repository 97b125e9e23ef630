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
use crate::store::StateStore;
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

    /// The task this processor instance runs in.
    pub fn task_id(&self) -> TaskId {
        self.inner.task_id()
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
    fn process(&mut self, record: DynRecord, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let record = restore::<P::KeyIn, P::ValueIn>(record, &self.name)?;
        self.processor.process(record, &mut typed(ctx))
    }
    fn punctuate(&mut self, id: PunctuatorId, timestamp: i64, ctx: &mut NodeCtx<'_>) -> Result<()> {
        self.processor.punctuate(id, timestamp, &mut typed(ctx))
    }
    fn close(&mut self) -> Result<()> {
        self.processor.close()
    }
}
