//! A task reading two partitions: records are processed in event-time order across them,
//! and the task waits for a partition with no record queued until it is caught up and then
//! for `max_task_idle` (Kafka Streams' `max.task.idle.ms`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Task, TaskIdle};
use crate::handlers::LogAndFail;
use crate::node::{NoOutput, RawRecord};
use crate::processor::{Processor, ProcessorContext};
use crate::serde::Utf8;
use crate::store::RocksResources;
use crate::topology::{Source, TopologyBuilder};
use crate::{Headers, Record, Result, TaskId};

/// Records what it processes: `topic-key@event time`.
struct Log(Arc<Mutex<Vec<String>>>);

impl Processor for Log {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;
    fn process(
        &mut self,
        r: Record<String, String>,
        _ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}@{}", r.key(), r.timestamp()));
        Ok(())
    }
}

/// A task of a topology reading `table` and `stream` into one processor; event time is the
/// number in the value (the records' own timestamps are deliberately out of order).
fn task() -> (Task, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(vec![]));
    let seen = log.clone();
    let from_value = |r: &Record<String, String>, _| r.value().parse::<i64>().unwrap();
    let topology = TopologyBuilder::new()
        .add_source(
            "t",
            Source::new(["table"], Utf8, Utf8).with_timestamp_extractor(from_value),
        )
        .add_source(
            "s",
            Source::new(["stream"], Utf8, Utf8).with_timestamp_extractor(from_value),
        )
        .add_processor("log", move || Log(seen.clone()), ["t", "s"])
        .build()
        .unwrap();
    let rocks = RocksResources::new(1 << 20, 1 << 20, None);
    let id = TaskId {
        subtopology: 0,
        partition: 0,
    };
    let mut task = Task::new(&topology, id, &Arc::from("app"), None, 0, &rocks).unwrap();
    task.init().unwrap();
    (task, log)
}

fn raw(topic: &str, offset: i64, key: &str, event_time: i64) -> RawRecord {
    RawRecord {
        topic: Arc::from(topic),
        partition: 0,
        offset,
        timestamp: 1_000 - event_time,
        key: Some(key.as_bytes().to_vec()),
        value: Some(event_time.to_string().into_bytes()),
        headers: Headers::new(),
    }
}

/// Processes while the task is ready at `now`.
fn run(task: &mut Task, now: Instant, idle: TaskIdle) {
    while task.ready(now, idle) && task.process_one(&mut NoOutput, &LogAndFail).unwrap() {}
}

#[test]
fn records_of_several_partitions_are_processed_in_event_time_order() {
    let (mut task, log) = task();
    for (i, t) in [5, 20, 30].into_iter().enumerate() {
        task.add(raw("stream", i as i64, "s", t)).unwrap();
    }
    for (i, t) in [1, 10, 25].into_iter().enumerate() {
        task.add(raw("table", i as i64, "t", t)).unwrap();
    }
    run(&mut task, Instant::now(), TaskIdle::Never);
    assert_eq!(
        *log.lock().unwrap(),
        ["t@1", "s@5", "t@10", "s@20", "t@25", "s@30"]
    );
}

#[test]
fn a_task_waits_for_a_partition_that_is_not_caught_up() {
    let (mut task, log) = task();
    let now = Instant::now();
    task.add(raw("stream", 0, "s", 100)).unwrap();
    run(&mut task, now, TaskIdle::Wait(Duration::ZERO));
    assert!(
        log.lock().unwrap().is_empty(),
        "the table partition may hold older records"
    );
    // The runtime asks about the empty partition, once per interval.
    assert_eq!(
        task.waiting_for(now, Duration::from_millis(20)),
        vec![(Arc::from("table"), 0)]
    );
    assert!(task.waiting_for(now, Duration::from_millis(20)).is_empty());
    // The table's record older than the stream's arrives: it goes first.
    task.add(raw("table", 0, "t", 50)).unwrap();
    run(&mut task, now, TaskIdle::Wait(Duration::ZERO));
    assert_eq!(
        *log.lock().unwrap(),
        ["t@50"],
        "then the table is empty again"
    );
    task.caught_up("table", 0);
    run(&mut task, now, TaskIdle::Wait(Duration::ZERO));
    assert_eq!(*log.lock().unwrap(), ["t@50", "s@100"]);
}

#[test]
fn after_catching_up_a_task_waits_max_task_idle_for_new_data() {
    let (mut task, log) = task();
    let t0 = Instant::now();
    let idle = TaskIdle::Wait(Duration::from_millis(50));
    task.add(raw("stream", 0, "s", 100)).unwrap();
    task.caught_up("table", 0);
    run(&mut task, t0, idle);
    assert!(log.lock().unwrap().is_empty());
    run(&mut task, t0 + Duration::from_millis(49), idle);
    assert!(log.lock().unwrap().is_empty());
    run(&mut task, t0 + Duration::from_millis(50), idle);
    assert_eq!(*log.lock().unwrap(), ["s@100"]);
}

#[test]
fn a_new_record_makes_a_partition_not_caught_up_again() {
    let (mut task, log) = task();
    let now = Instant::now();
    let idle = TaskIdle::Wait(Duration::ZERO);
    task.caught_up("table", 0);
    task.add(raw("table", 0, "t", 1)).unwrap();
    task.add(raw("stream", 0, "s", 2)).unwrap();
    task.add(raw("stream", 1, "s", 3)).unwrap();
    run(&mut task, now, idle);
    // t@1 goes; then the table queue is empty, and no longer known to be caught up: the
    // table may hold a record between 1 and 2.
    assert_eq!(*log.lock().unwrap(), ["t@1"]);
    task.caught_up("table", 0);
    run(&mut task, now, idle);
    assert_eq!(*log.lock().unwrap(), ["t@1", "s@2", "s@3"]);
}
