//! The type-erased boundary between typed user code and the runtime.
//!
//! Above this module, code is typed: a [`Processor`](crate::processor::Processor) sees
//! `Record<K, V>`, a `Source<K, V>` decodes bytes into one. Below it, the topology and the
//! tasks hold nodes of many types in one graph, so a record travels from a node to its child
//! in a typed slot on the parent's stack (`Option<Record<K, V>>`), passed as `&mut dyn Any`
//! ([`DynRecord`]); the child takes it out with the types it declared ([`restore`]). No
//! allocation per edge. The topology checks at build time that a parent's output type is its
//! child's input type ([`KvType`]), so a mismatch here is a bug reported as an error.
//!
//! What lives here: erased records, the [`Node`] trait and its factory, the wiring of a node
//! in the graph ([`NodeMeta`]), the context a node runs in ([`NodeCtx`], with the task state it
//! reaches, [`TaskEnv`]), punctuation scheduling, and the records at the edges of a task with
//! the [`RecordCollector`] that takes its output.

mod collector;
mod context;

use std::any::{Any, TypeId};
use std::sync::Arc;

pub(crate) use self::collector::{NoOutput, OutRecord, RawRecord, RecordCollector};
pub(crate) use self::context::{NodeCtx, TaskEnv};
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

/// Identifies a scheduled punctuation; passed to
/// [`Processor::punctuate`](crate::processor::Processor::punctuate) and used to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PunctuatorId(pub(crate) u64);

/// A record in flight to a child node: a `&mut Option<Record<K, V>>` on the parent's stack,
/// its types erased; the child takes the record out.
pub(crate) type DynRecord<'a> = &'a mut dyn Any;

/// Takes the record out of its slot with the types the node declared; a mismatch is a bug the
/// topology's type check should have caught, reported as an error rather than a panic.
pub(crate) fn restore<K: 'static, V: 'static>(
    record: DynRecord<'_>,
    node: &str,
) -> Result<Record<K, V>> {
    record
        .downcast_mut::<Option<Record<K, V>>>()
        .and_then(Option::take)
        .ok_or_else(|| {
            Error::Internal(format!(
                "node {node} received a record that is not a ({}, {}) record",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            ))
        })
}

/// The key and value types of a node's input or output, for the topology's type check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvType {
    key: TypeId,
    value: TypeId,
    key_name: &'static str,
    value_name: &'static str,
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
    fn init(&mut self, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    fn process(&mut self, record: DynRecord<'_>, ctx: &mut NodeCtx<'_>) -> Result<()>;
    fn punctuate(&mut self, id: PunctuatorId, timestamp: i64, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let _ = (id, timestamp, ctx);
        Ok(())
    }
    /// Before every commit: forward what the node held back (a record cache).
    fn flush(&mut self, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Builds a node instance per task.
pub(crate) type NodeFactory = Arc<dyn Fn() -> Box<dyn Node> + Send + Sync>;

/// Where a node sits in the graph, shared by all tasks: its name, its children and parents
/// (indices into the topology's nodes) and the stores it may use (indices into its stores).
pub(crate) struct NodeMeta {
    pub(crate) name: Arc<str>,
    pub(crate) children: Vec<usize>,
    pub(crate) parents: Vec<usize>,
    pub(crate) stores: Vec<usize>,
}
