//! The protocols' decisions, with a fake producer and consumer that record every call and
//! fail on script: no broker. The same paths run against the broker in
//! `tests/broker_faults.rs`, `tests/txn_semantics.rs` and `tests/runtime_processing.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::handlers::{FailOnProductionError, LogAndFail, LogAndSkipOnProductionError};
use crate::node::RawRecord;
use crate::processor::{Processor, ProcessorContext};
use crate::serde::{BigEndian, Utf8};
use crate::store::{KeyValueStore, ReadOnlyKeyValueStore, RocksResources};
use crate::task::Task;
use crate::topology::{Sink, Source, TopologyBuilder};
use crate::{Headers, Record, TaskId};

const TASK: TaskId = TaskId {
    subtopology: 0,
    partition: 0,
};

/// What the fakes were asked to do, and the failures the test scripted for them.
#[derive(Default)]
struct Script {
    calls: Vec<String>,
    /// The errors the next calls of a method return, by method.
    fail: HashMap<&'static str, VecDeque<KafkaError>>,
    /// Topics whose records are not delivered (reported by the next flush).
    undeliverable: Vec<String>,
    producers_made: usize,
    next_offset: HashMap<(String, i32), i64>,
    delivered: HashMap<(String, i32), i64>,
    delivery_errors: Vec<(String, KafkaError)>,
}

type Shared = Arc<Mutex<Script>>;

fn call(script: &Shared, name: &'static str) -> KafkaResult<()> {
    let mut s = script.lock().unwrap();
    s.calls.push(name.to_string());
    match s.fail.get_mut(name).and_then(VecDeque::pop_front) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct FakeProducer(Shared);

impl ProducerClient for FakeProducer {
    fn begin_transaction(&self) -> KafkaResult<()> {
        call(&self.0, "begin")
    }
    fn send(&self, record: &OutRecord, _: Duration) -> KafkaResult<()> {
        let mut s = self.0.lock().unwrap();
        let topic = record.topic.to_string();
        s.calls.push(format!("send {topic}"));
        if s.undeliverable.contains(&topic) {
            let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
            s.delivery_errors.push((topic, e));
            return Ok(());
        }
        let tp = (topic, record.partition.unwrap_or(0));
        let offset = *s.next_offset.entry(tp.clone()).or_insert(0);
        s.next_offset.insert(tp.clone(), offset + 1);
        s.delivered.insert(tp, offset);
        Ok(())
    }
    fn poll(&self) {}
    fn flush(&self, _: Duration) -> KafkaResult<()> {
        call(&self.0, "flush")
    }
    fn send_offsets_to_transaction(
        &self,
        offsets: &[CommitOffset],
        _: &dyn GroupConsumer,
        _: Duration,
    ) -> Result<()> {
        call(&self.0, "send_offsets").map_err(|e| Error::kafka("send offsets", e))?;
        let list = format!("{offsets:?}");
        self.0.lock().unwrap().calls.push(list);
        Ok(())
    }
    fn commit_transaction(&self, _: Duration) -> KafkaResult<()> {
        call(&self.0, "commit")
    }
    fn abort_transaction(&self, _: Duration) -> KafkaResult<()> {
        call(&self.0, "abort")
    }
    fn purge(&self) {
        self.0.lock().unwrap().calls.push("purge".into());
    }
    fn take_delivery_errors(&self) -> Vec<(String, KafkaError)> {
        std::mem::take(&mut self.0.lock().unwrap().delivery_errors)
    }
    fn take_delivered(&self) -> HashMap<(String, i32), i64> {
        std::mem::take(&mut self.0.lock().unwrap().delivered)
    }
    fn partition_count(&self, _: &str, _: Duration) -> Result<i32> {
        Ok(1)
    }
}

struct FakeConsumer(Shared);

impl GroupConsumer for FakeConsumer {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        None
    }
    fn commit_offsets(&self, offsets: &[CommitOffset]) -> Result<()> {
        call(&self.0, "commit_offsets").map_err(|e| Error::kafka("commit offsets", e))?;
        let list = format!("{offsets:?}");
        self.0.lock().unwrap().calls.push(list);
        Ok(())
    }
}

/// Counts records per key in the logged store `counts` and forwards the count.
struct Count;

impl Processor for Count {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
        let n = store.get(record.key())?.unwrap_or(0) + 1;
        store.put(record.key(), &n)?;
        ctx.forward(record.with_value(n))
    }
}

/// One task of `in -> count (store counts) -> counts-out`, and its input offset.
struct Fixture {
    script: Shared,
    protocol: Box<dyn CommitProtocol>,
    tasks: Tasks,
    consumer: FakeConsumer,
    offset: i64,
}

fn fixture(exactly_once: bool, on_production_error: Arc<dyn ProductionErrorHandler>) -> Fixture {
    let topology = TopologyBuilder::new()
        .add_source("in", Source::new(["in"], Utf8, Utf8))
        .add_processor("count", || Count, ["in"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian).in_memory(),
            ["count"],
        )
        .add_sink(
            "out",
            Sink::<String, u64>::new("counts-out", Utf8, BigEndian),
            ["count"],
        )
        .build()
        .unwrap();
    let rocks = RocksResources::new(1 << 20, 1 << 20, None);
    let mut task = Task::new(&topology, TASK, &Arc::from("app"), None, 0, &rocks).unwrap();
    task.init().unwrap();
    let mut tasks = Tasks::default();
    tasks.insert(task);
    let script = Shared::default();
    let made = script.clone();
    let make_producer: ProducerFactory = Box::new(move || {
        made.lock().unwrap().producers_made += 1;
        Ok(Box::new(FakeProducer(made.clone())) as Box<dyn ProducerClient>)
    });
    let output = Output::new(
        "thread".into(),
        make_producer,
        on_production_error,
        Duration::from_secs(1),
    );
    let mut protocol = protocol(exactly_once, output);
    protocol.ensure_producer().unwrap();
    Fixture {
        consumer: FakeConsumer(script.clone()),
        script,
        protocol,
        tasks,
        offset: 0,
    }
}

fn eos() -> Fixture {
    fixture(true, Arc::new(FailOnProductionError))
}

fn alos(on_production_error: Arc<dyn ProductionErrorHandler>) -> Fixture {
    fixture(false, on_production_error)
}

impl Fixture {
    /// Processes one input record with key `key`.
    fn feed(&mut self, key: &str) {
        let raw = RawRecord {
            topic: Arc::from("in"),
            partition: 0,
            offset: self.offset,
            timestamp: 1,
            key: Some(key.as_bytes().to_vec()),
            value: Some(b"v".to_vec()),
            headers: Headers::new(),
        };
        self.offset += 1;
        self.tasks.add(TASK, raw).unwrap();
        let mut collector = self.protocol.collector().unwrap();
        self.tasks
            .process(&mut collector, &LogAndFail, 0, crate::task::TaskIdle::Never)
            .unwrap();
    }

    fn commit(&mut self) -> Result<()> {
        self.protocol.commit(&mut self.tasks, &self.consumer)
    }

    /// The count of `key` as committed to the store (what interactive queries read).
    fn committed_count(&self, key: &str) -> Option<u64> {
        let handles = self
            .tasks
            .query_handles()
            .into_iter()
            .map(|(_, p, h)| (p, h))
            .collect();
        ReadOnlyKeyValueStore::<String, u64>::from_handles(
            "counts",
            handles,
            std::sync::Arc::new(|_| true),
        )
        .unwrap()
        .get(&key.to_string())
        .unwrap()
    }

    fn calls(&self) -> Vec<String> {
        self.script.lock().unwrap().calls.clone()
    }

    /// The calls, without the sends.
    fn protocol_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| !c.starts_with("send "))
            .collect()
    }

    fn fail(&self, method: &'static str, error: KafkaError) {
        let mut s = self.script.lock().unwrap();
        s.fail.entry(method).or_default().push_back(error);
    }

    fn producers_made(&self) -> usize {
        self.script.lock().unwrap().producers_made
    }
}

fn fenced() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced)
}

fn timed_out() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut)
}

#[test]
fn exactly_once_commits_output_and_offsets_in_one_transaction() {
    let mut f = eos();
    f.feed("a");
    f.feed("a");
    assert_eq!(f.committed_count("a"), None, "held back until the commit");
    f.commit().unwrap();
    let calls = f.calls();
    assert_eq!(
        calls[0], "begin",
        "the first send begins the transaction: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "send counts-out").count(),
        2,
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "send app-counts-changelog")
            .count(),
        2,
        "{calls:?}"
    );
    assert_eq!(
        f.protocol_calls(),
        vec![
            "begin",
            "flush",
            "send_offsets",
            "[(\"in\", 0, 2)]",
            "commit"
        ]
    );
    assert_eq!(f.committed_count("a"), Some(2));
    assert!(!f.tasks.needs_commit());
}

#[test]
fn exactly_once_with_nothing_to_commit_calls_nothing() {
    let mut f = eos();
    f.commit().unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());
}

#[test]
fn a_fenced_commit_drops_the_work_and_the_producer_without_an_abort() {
    let mut f = eos();
    f.feed("a");
    f.fail("commit", fenced());
    let e = f.commit().unwrap_err();
    assert!(e.is_fenced(), "{e}");
    assert_eq!(f.protocol.recover(e).unwrap(), Recovery::Rewind);
    let calls = f.protocol_calls();
    assert!(
        calls.ends_with(&["commit".into(), "purge".into()]),
        "{calls:?}"
    );
    assert!(
        !calls.contains(&"abort".to_string()),
        "a fenced producer cannot abort"
    );
    assert_eq!(
        f.producers_made(),
        2,
        "a new producer replaces the fenced one"
    );
    assert_eq!(f.committed_count("a"), None);
}

#[test]
fn a_failed_delivery_under_exactly_once_aborts_and_rewinds() {
    let mut f = eos();
    f.script.lock().unwrap().undeliverable = vec!["counts-out".into()];
    f.feed("a");
    let e = f.commit().unwrap_err();
    assert!(e.to_string().contains("send to counts-out"), "{e}");
    assert_eq!(f.protocol.recover(e).unwrap(), Recovery::Rewind);
    let calls = f.protocol_calls();
    assert_eq!(calls, vec!["begin", "flush", "flush", "abort", "purge"]);
    assert_eq!(f.producers_made(), 2);
    assert_eq!(f.committed_count("a"), None);
}

#[test]
fn a_commit_that_times_out_aborts_and_rewinds() {
    let mut f = eos();
    f.feed("a");
    f.fail("commit", timed_out());
    let e = f.commit().unwrap_err();
    assert_eq!(f.protocol.recover(e).unwrap(), Recovery::Rewind);
    assert!(f
        .protocol_calls()
        .ends_with(&["abort".into(), "purge".into()]));
    assert_eq!(f.committed_count("a"), None);
    // The new producer's next transaction starts clean: no stale delivery report fails it.
    f.feed("b");
    f.commit().unwrap();
    assert_eq!(f.committed_count("b"), Some(1));
}

#[test]
fn a_failed_abort_replaces_the_producer() {
    let mut f = eos();
    f.feed("a");
    f.fail("commit", timed_out());
    f.fail("abort", timed_out());
    let e = f.commit().unwrap_err();
    assert_eq!(f.protocol.recover(e).unwrap(), Recovery::Rewind);
    assert_eq!(f.producers_made(), 2);
    f.feed("b");
    f.commit().unwrap();
    assert_eq!(f.committed_count("b"), Some(1));
}

#[test]
fn an_error_no_rewind_cures_stops_the_thread() {
    let mut f = eos();
    f.feed("a");
    f.fail(
        "commit",
        KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed),
    );
    let e = f.commit().unwrap_err();
    let e = f.protocol.recover(e).unwrap_err();
    assert!(e.to_string().contains("commit transaction"), "{e}");
    assert_eq!(f.producers_made(), 1);
}

#[test]
fn a_revocation_mid_transaction_commits_before_the_tasks_close() {
    let mut f = eos();
    f.feed("a");
    assert!(f
        .protocol
        .on_revoke(&mut f.tasks, &f.consumer, false)
        .unwrap());
    assert_eq!(
        f.protocol_calls().last().map(String::as_str),
        Some("commit")
    );
    assert_eq!(f.committed_count("a"), Some(1));
}

#[test]
fn a_lost_assignment_commits_nothing() {
    let mut f = eos();
    f.feed("a");
    assert!(!f
        .protocol
        .on_revoke(&mut f.tasks, &f.consumer, true)
        .unwrap());
    assert_eq!(f.protocol_calls(), vec!["begin", "flush", "abort"]);
    assert_eq!(f.committed_count("a"), None);
}

#[test]
fn a_revocation_whose_commit_fails_closes_the_tasks_dirty() {
    let mut f = eos();
    f.feed("a");
    f.fail("commit", fenced());
    assert!(!f
        .protocol
        .on_revoke(&mut f.tasks, &f.consumer, false)
        .unwrap());
    assert_eq!(f.committed_count("a"), None);
}

#[test]
fn at_least_once_commits_offsets_after_the_output_without_a_transaction() {
    let mut f = alos(Arc::new(FailOnProductionError));
    f.feed("a");
    f.commit().unwrap();
    assert_eq!(
        f.protocol_calls(),
        vec!["flush", "commit_offsets", "[(\"in\", 0, 1)]"]
    );
    assert_eq!(f.committed_count("a"), Some(1));
}

#[test]
fn at_least_once_keeps_the_work_after_a_retriable_commit_failure() {
    let mut f = alos(Arc::new(FailOnProductionError));
    f.feed("a");
    f.fail(
        "commit_offsets",
        KafkaError::ConsumerCommit(RDKafkaErrorCode::RequestTimedOut),
    );
    let e = f.commit().unwrap_err();
    assert_eq!(f.protocol.recover(e).unwrap(), Recovery::RetryLater);
    assert_eq!(f.committed_count("a"), None);
    assert!(
        f.tasks.needs_commit(),
        "the consumed offsets wait for the next commit"
    );
    f.feed("a");
    f.commit().unwrap();
    assert_eq!(
        f.protocol_calls().last().map(String::as_str),
        Some("[(\"in\", 0, 2)]")
    );
    assert_eq!(f.committed_count("a"), Some(2));
    assert_eq!(f.producers_made(), 1);
}

#[test]
fn at_least_once_hands_failed_deliveries_to_the_production_handler() {
    let mut skip = alos(Arc::new(LogAndSkipOnProductionError));
    skip.script.lock().unwrap().undeliverable = vec!["counts-out".into()];
    skip.feed("a");
    skip.commit().unwrap();
    assert_eq!(skip.committed_count("a"), Some(1));

    let mut fail = alos(Arc::new(FailOnProductionError));
    fail.script.lock().unwrap().undeliverable = vec!["counts-out".into()];
    fail.feed("a");
    let e = fail.commit().unwrap_err();
    assert!(
        matches!(e, Error::Production { ref topic, .. } if topic == "counts-out"),
        "{e}"
    );
    assert!(
        fail.protocol.recover(e).is_err(),
        "a handler's Fail stops the thread"
    );
    assert_eq!(fail.committed_count("a"), None);
}
