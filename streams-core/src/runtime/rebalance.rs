//! The consumer's rebalance callbacks: librdkafka calls them from inside `poll`, with the
//! thread's state behind the consumer context's mutex.

use std::sync::{Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use super::thread::Inner;
use super::ThreadState;
use crate::Error;

/// The consumer's context: the thread's state, reached from the callbacks and the loop.
pub(crate) struct ThreadContext {
    inner: Mutex<Inner>,
    /// The last stable offset of each assigned partition, from librdkafka's statistics (only
    /// collected while metrics are recorded, for the consumer lag under read_committed).
    stable_ends: Mutex<std::collections::HashMap<(String, i32), i64>>,
}

impl ThreadContext {
    pub(crate) fn new(inner: Inner) -> Self {
        ThreadContext {
            inner: Mutex::new(inner),
            stable_ends: Mutex::new(Default::default()),
        }
    }

    /// The last stable offset of `topic`-`partition` in the consumer's latest statistics.
    pub(crate) fn stable_end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.stable_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .copied()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a callback; user code (processors' close) runs inside it, within a librdkafka
    /// callback, so a panic must not unwind into C: it fails the thread instead.
    fn guarded(&self, f: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let message = super::panic_message(&*panic);
            let mut inner = self.lock();
            inner.failed = true;
            let thread = inner.name.clone();
            inner.pending_error.get_or_insert(Error::ThreadDied {
                thread,
                message: format!("panicked in a rebalance callback: {message}"),
            });
        }
    }

    fn on_pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut inner = self.lock();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                inner.set_state(ThreadState::PartitionsRevoked);
                let lost = inner.failed || consumer.assignment_lost();
                if lost {
                    // Another member may own these partitions already: commit nothing.
                    tracing::warn!(thread = %inner.name, failed = inner.failed, "partitions lost; closing tasks without commit");
                } else {
                    tracing::info!(thread = %inner.name, partitions = tpl.count(), "partitions revoked; committing and closing tasks");
                }
                let clean = match inner.commit_on_revoke(consumer, lost) {
                    Ok(clean) => clean,
                    Err(e) => {
                        inner.pending_error.get_or_insert(e);
                        false
                    }
                };
                inner.release_paused(consumer, Some(tpl));
                inner.close_all_tasks(clean);
            }
            Rebalance::Assign(_) => inner.set_state(ThreadState::PartitionsAssigned),
            Rebalance::Error(e) => {
                // librdkafka unassigns the partitions: drop the tasks' uncommitted work.
                tracing::warn!(thread = %inner.name, error = %e, "rebalance error; closing tasks without commit");
                inner.protocol.abandon();
                inner.release_paused(consumer, None);
                inner.close_all_tasks(false);
            }
        }
    }

    fn on_post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut inner = self.lock();
        if inner.failed {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<(String, i32)> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            if let Err(e) = inner.create_tasks(&parts) {
                inner.pending_error.get_or_insert(e);
            }
            // Running once every new task is restored (the loop restores them).
            if inner.restoring.is_empty() {
                inner.set_state(ThreadState::Running);
            }
        }
    }
}

impl ClientContext for ThreadContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::clients::log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.stable_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.clear();
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1: librdkafka's internal unassigned partition; a negative offset: unknown.
                if partition >= 0 && p.ls_offset >= 0 {
                    ends.insert((topic.clone(), partition), p.ls_offset);
                }
            }
        }
    }
}

impl ConsumerContext for ThreadContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guarded(|| self.on_pre_rebalance(consumer, rebalance));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guarded(|| self.on_post_rebalance(consumer, rebalance));
    }
}
