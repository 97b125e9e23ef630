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

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StateStore;
use crate::task::{NodeCtx, RecordMetadata, TaskId};
use crate::{Error, Record, Result};

/// What drives a punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// Stream time: the largest record timestamp the task has seen. Fires as records arrive,
    /// never on an idle task.
    StreamTime,
    /// Wall-clock time of the runtime (driven by the test in the `TopologyTestDriver`).
    WallClockTime,
}

/// Identifies a scheduled punctuation; passed to [`Processor::punctuate`] and used to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PunctuatorId(pub(crate) u64);

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
    pub(crate) inner: NodeCtx<'a>,
    pub(crate) _types: PhantomData<fn(K, V)>,
}

impl<'a, K: 'static, V: 'static> ProcessorContext<'a, K, V> {
    /// Sends `record` to every child of this node (depth first: each child, and its own
    /// children, have handled it when this returns).
    pub fn forward(&mut self, record: Record<K, V>) -> Result<()>
    where
        K: Clone,
        V: Clone,
    {
        crate::topology::forward_typed(&mut self.inner, record)
    }

    /// Sends `record` to the child named `child` only.
    pub fn forward_to(&mut self, child: &str, record: Record<K, V>) -> Result<()> {
        let position = self.inner.child_position(child)?;
        self.inner.forward_to_child(position, erase(record))
    }

    /// Schedules [`Processor::punctuate`] every `interval` of stream or wall-clock time.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) -> Result<PunctuatorId> {
        self.inner.schedule(interval, kind)
    }

    /// Cancels a punctuation.
    pub fn cancel(&mut self, id: PunctuatorId) {
        self.inner.env.cancel(id);
    }

    /// Asks the runtime to commit the task soon (after the current record).
    pub fn commit(&mut self) {
        self.inner.env.commit_requested = true;
    }

    /// The state store `name`, which must be connected to this processor in the topology and be
    /// of type `S`.
    pub fn state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S> {
        self.inner.state_store(name)
    }

    /// The task this processor instance runs in.
    pub fn task_id(&self) -> TaskId {
        self.inner.env.task_id
    }

    /// The application id.
    pub fn application_id(&self) -> &str {
        &self.inner.env.application_id
    }

    /// Where the record being processed came from (absent in a punctuation).
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.inner.env.current.as_ref()
    }

    /// The task's stream time: the largest record timestamp it has processed
    /// (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.inner.env.stream_time
    }

    /// The runtime's wall-clock time in milliseconds (the test's clock in the driver).
    pub fn wall_clock_time(&self) -> i64 {
        self.inner.env.wall_clock
    }
}

pub(crate) type AnyBox = Box<dyn Any>;
/// A record whose key and value types are erased, as it travels between nodes.
pub(crate) type DynRecord = Record<AnyBox, AnyBox>;

pub(crate) fn erase<K: 'static, V: 'static>(record: Record<K, V>) -> DynRecord {
    let (key, value, rest) = record.split();
    rest.with_key(Box::new(key) as AnyBox)
        .with_value(Box::new(value) as AnyBox)
}

/// Restores the types of an erased record; a mismatch is a bug the topology's type check
/// should have caught, reported as an error rather than a panic.
pub(crate) fn restore<K: 'static, V: 'static>(
    record: DynRecord,
    node: &str,
) -> Result<Record<K, V>> {
    let mismatch = |what: &str, expected: &str| {
        Error::Config(format!(
            "node {node} received a {what} that is not a {expected}"
        ))
    };
    let (key, value, rest) = record.split();
    let key = key
        .downcast::<K>()
        .map_err(|_| mismatch("key", std::any::type_name::<K>()))?;
    let value = value
        .downcast::<V>()
        .map_err(|_| mismatch("value", std::any::type_name::<V>()))?;
    Ok(rest.with_key(*key).with_value(*value))
}

/// The key and value types of a node's input or output, for the topology's type check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvType {
    key: TypeId,
    value: TypeId,
    pub(crate) key_name: &'static str,
    pub(crate) value_name: &'static str,
}

impl KvType {
    pub(crate) fn of<K: 'static, V: 'static>() -> Self {
        KvType {
            key: TypeId::of::<K>(),
            value: TypeId::of::<V>(),
            key_name: std::any::type_name::<K>(),
            value_name: std::any::type_name::<V>(),
        }
    }
    pub(crate) fn same(&self, other: &KvType) -> bool {
        self.key == other.key && self.value == other.value
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.key_name, self.value_name)
    }
}

/// A node instance inside a task, with its types erased.
pub(crate) trait Node: Send {
    fn init(&mut self, ctx: &mut NodeCtx<'_>) -> Result<()>;
    fn process(&mut self, record: DynRecord, ctx: &mut NodeCtx<'_>) -> Result<()>;
    fn punctuate(&mut self, id: PunctuatorId, timestamp: i64, ctx: &mut NodeCtx<'_>) -> Result<()>;
    fn close(&mut self) -> Result<()>;
}

/// Builds a node instance per task.
pub(crate) type NodeFactory = Arc<dyn Fn() -> Box<dyn Node> + Send + Sync>;

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
