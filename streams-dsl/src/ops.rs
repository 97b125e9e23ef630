//! The processors DSL operators compile to: a closure per operator and task.

use std::marker::PhantomData;

use streams_core::processor::{Processor, ProcessorContext};
use streams_core::{Record, Result};

/// What an operator does with one record.
pub(crate) type OpFn<K, V, K2, V2> =
    Box<dyn FnMut(Record<K, V>, &mut ProcessorContext<'_, K2, V2>) -> Result<()> + Send>;

/// A processor running one operator's closure.
pub(crate) struct Op<K, V, K2, V2> {
    f: OpFn<K, V, K2, V2>,
    _types: PhantomData<fn(K, V, K2, V2)>,
}

impl<K, V, K2, V2> Op<K, V, K2, V2> {
    pub(crate) fn new(f: OpFn<K, V, K2, V2>) -> Self {
        Op {
            f,
            _types: PhantomData,
        }
    }
}

impl<K: 'static, V: 'static, K2: 'static, V2: 'static> Processor for Op<K, V, K2, V2> {
    type KeyIn = K;
    type ValueIn = V;
    type KeyOut = K2;
    type ValueOut = V2;

    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K2, V2>,
    ) -> Result<()> {
        (self.f)(record, ctx)
    }
}

/// Whether `key` is null (its serde writes no bytes for it). Such a record is skipped by
/// `operator`, with a warning and the dropped-records metric, as Kafka Streams' aggregations
/// and `toTable` skip it: a null key has no partition and no row.
pub(crate) fn skip_null_key<K: 'static, KO: 'static, VO: 'static>(
    keys: &dyn streams_core::serde::Serde<K>,
    key: &K,
    ctx: &ProcessorContext<'_, KO, VO>,
    operator: &str,
) -> Result<bool> {
    if keys.serialize(operator, key)?.is_some() {
        return Ok(false);
    }
    tracing::warn!(task = %ctx.task_id(), operator, "skipping a record with a null key");
    ctx.record_dropped(streams_core::metrics::DropReason::NullKey);
    Ok(true)
}
