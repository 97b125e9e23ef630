//! The window definitions (time, session, sliding), windowed keys and their serde, and the
//! count of late records: what the windowed handles and aggregations share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams_core::serde::{Serde, SerdeError};
use streams_core::TaskId;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Fixed-size windows: tumbling (advance = size, each record in one window) or hopping
/// (advance < size, each record in `size / advance` windows), aligned to the epoch. A record
/// whose window already closed (its end plus the grace period is at or before stream time)
/// is dropped, logged and counted ([`LateRecords`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    pub(crate) size: i64,
    pub(crate) advance: i64,
    pub(crate) grace: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size`, no grace: a record is late as soon as stream time passed
    /// its window's end.
    pub fn of_size_with_no_grace(size: Duration) -> Self {
        Self::of_size_and_grace(size, Duration::ZERO)
    }

    /// Tumbling windows of `size`; records up to `grace` behind stream time still count.
    pub fn of_size_and_grace(size: Duration, grace: Duration) -> Self {
        let size = millis(size).max(1);
        TimeWindows {
            size,
            advance: size,
            grace: millis(grace),
        }
    }

    /// Hopping windows: a new window every `advance` (at most the size).
    pub fn advance_by(mut self, advance: Duration) -> Self {
        self.advance = millis(advance).clamp(1, self.size);
        self
    }

    /// The window size in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size
    }

    /// The windows `[start, end)` that hold timestamp `ts`, oldest first.
    pub(crate) fn windows_for(&self, ts: i64) -> impl Iterator<Item = (i64, i64)> {
        let first = (ts - self.size + self.advance).max(0);
        let first = first - first.rem_euclid(self.advance);
        let (size, advance) = (self.size, self.advance);
        let first = if first + size <= ts {
            first + advance
        } else {
            first
        };
        (0..)
            .map(move |i| first + i * advance)
            .take_while(move |&start| start <= ts)
            .map(move |start| (start, start + size))
    }
}

/// A key and the window it was aggregated in: `[start, end)` for time windows; for sessions,
/// the first and last event times, both inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// The window's start, inclusive (epoch milliseconds).
    pub start: i64,
    /// The window's end: exclusive for time windows, the last event time for sessions.
    pub end: i64,
}

/// Kafka Streams' layout of a windowed key: the key's bytes, then the window start as 8
/// bytes big-endian. The end is the start plus the window size given here.
pub struct WindowedSerde<K> {
    keys: Arc<dyn Serde<K>>,
    size: i64,
}

impl<K: 'static> WindowedSerde<K> {
    /// Windowed keys of `keys`, for windows of `windows`' size.
    pub fn new(keys: impl Serde<K>, windows: TimeWindows) -> Self {
        Self::with_size(keys, windows.size)
    }

    pub(crate) fn with_size(keys: impl Serde<K>, size: i64) -> Self {
        WindowedSerde {
            keys: Arc::new(keys),
            size,
        }
    }
}

impl<K: 'static> Serde<Windowed<K>> for WindowedSerde<K> {
    fn serialize(&self, topic: &str, w: &Windowed<K>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = self.keys.serialize(topic, &w.key)?.unwrap_or_default();
        out.extend_from_slice(&w.start.to_be_bytes());
        Ok(Some(out))
    }

    /// Every window of a key in the key's partition (Kafka Streams'
    /// `WindowedStreamPartitioner`): partitioned by the inner key's bytes.
    fn partition_bytes(
        &self,
        topic: &str,
        w: &Windowed<K>,
    ) -> Option<Result<Option<Vec<u8>>, SerdeError>> {
        Some(self.keys.serialize(topic, &w.key))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Windowed<K>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Windowed", topic, "null key"))?;
        if data.len() < 8 {
            return Err(SerdeError::new(
                "Windowed",
                topic,
                format!("{} bytes, fewer than the 8 of the window start", data.len()),
            ));
        }
        let (key, start) = data.split_at(data.len() - 8);
        let start = i64::from_be_bytes(start.try_into().expect("8 bytes"));
        Ok(Windowed {
            key: self.keys.deserialize(topic, Some(key))?,
            start,
            end: start.saturating_add(self.size),
        })
    }
}

/// Records dropped because their window had closed, per task. Shared by every instance of
/// the topology's tasks in this process; read it with [`LateRecords::count`].
#[derive(Debug, Clone, Default)]
pub struct LateRecords(Arc<Mutex<BTreeMap<TaskId, u64>>>);

impl LateRecords {
    pub(crate) fn add(&self, task: TaskId) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task)
            .or_default() += 1;
    }

    /// The count per task.
    pub fn by_task(&self) -> BTreeMap<TaskId, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The count over all tasks.
    pub fn count(&self) -> u64 {
        self.by_task().values().sum()
    }
}

/// Sessions separated by at least `gap` of inactivity (event time), with a grace period for
/// out-of-order records. A session's `start` and `end` (in [`Windowed`]) are its first and last
/// event times, both inclusive.
///
/// Stream time here is the aggregation's own: the largest timestamp of the records it has
/// processed (records filtered away upstream or sent elsewhere do not move it). The close
/// time is stream time minus grace minus the gap. A record is late, dropped and counted, when
/// the session it would form, extend or merge into ends before the close time (Kafka Streams'
/// rule, `KStreamSessionWindowAggregate`); a session is final once its end is before it. With
/// emit-final, a record that would merge into a session already emitted is late too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    pub(crate) gap: i64,
    pub(crate) grace: i64,
}

impl SessionWindows {
    /// Sessions closed by `gap` of inactivity, no grace.
    pub fn with_inactivity_gap_and_no_grace(gap: Duration) -> Self {
        Self::with_inactivity_gap_and_grace(gap, Duration::ZERO)
    }

    /// Sessions closed by `gap` of inactivity; records up to `grace` late still count.
    pub fn with_inactivity_gap_and_grace(gap: Duration, grace: Duration) -> Self {
        SessionWindows {
            gap: millis(gap).max(0),
            grace: millis(grace).max(0),
        }
    }
}

/// Sliding windows of a fixed time difference `d` (Kafka Streams' `SlidingWindows`): windows
/// `[start, start + d]`, both ends inclusive, defined by the records: each record at `t` has
/// the window ending at `t` (`[t - d, t]`; a record earlier than `d` has the window `[0, d]`,
/// as in Kafka Streams, since windows do not start before the epoch), and the window starting
/// right after it (`[t + 1, t + 1 + d]`) once a record falls in it. Each record updates (or
/// creates) the windows that hold it, and each is forwarded with the aggregate it replaces;
/// aggregates fold a window's records in the order they arrived.
///
/// Stream time is the aggregation's own (the largest timestamp it has processed). A window is
/// closed once its end is before stream time minus grace; a record whose windows are all
/// closed (its timestamp plus `d` plus 1 is at or before that) is late, dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    pub(crate) diff: i64,
    pub(crate) grace: i64,
}

impl SlidingWindows {
    /// Windows of `difference`, records up to `grace` late still count.
    pub fn of_time_difference_and_grace(difference: Duration, grace: Duration) -> Self {
        SlidingWindows {
            diff: millis(difference).max(0),
            grace: millis(grace).max(0),
        }
    }

    /// Windows of `difference`, no grace.
    pub fn of_time_difference_with_no_grace(difference: Duration) -> Self {
        Self::of_time_difference_and_grace(difference, Duration::ZERO)
    }

    /// The serde of this aggregation's windowed keys (`end = start + difference`).
    pub fn key_serde<K: 'static>(&self, keys: impl Serde<K>) -> WindowedSerde<K> {
        WindowedSerde::with_size(keys, self.diff)
    }
}

/// The windows of a stream-stream join: a record of this stream at `t` joins the records of
/// the other stream with the same key and a timestamp in `[t - before, t + after]` (a record
/// of the other stream at `t` joins this stream's in `[t - after, t + before]`).
///
/// As in Kafka Streams 4.x (`KStreamKStreamJoin`): each side's records are kept in a window
/// store for `before + after + grace` behind the largest timestamp that side has seen. A
/// record of a left or outer join that found no partner goes out alone once the join's stream
/// time passes its timestamp plus `after` (plus `before` for the other stream) plus `grace`;
/// it stays in its window store, so a partner arriving later still joins it (one result alone,
/// then a joined one). No record is dropped for being late: a late record joins what the other
/// side's store still holds, and, without a partner, goes out alone at once on an outer side;
/// a record too old for its own store is not kept there, and is counted as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    pub(crate) before: i64,
    pub(crate) after: i64,
    pub(crate) grace: i64,
}

impl JoinWindows {
    /// Records at most `difference` apart join; records up to `grace` late still count.
    pub fn of_time_difference_and_grace(difference: Duration, grace: Duration) -> Self {
        let d = millis(difference).max(0);
        JoinWindows {
            before: d,
            after: d,
            grace: millis(grace).max(0),
        }
    }

    /// Records at most `difference` apart join; no grace.
    pub fn of_time_difference_with_no_grace(difference: Duration) -> Self {
        Self::of_time_difference_and_grace(difference, Duration::ZERO)
    }

    /// The same windows, reaching `before` back from this stream's records (instead of the
    /// time difference).
    pub fn before(mut self, before: Duration) -> Self {
        self.before = millis(before).max(0);
        self
    }

    /// The same windows, reaching `after` forward from this stream's records.
    pub fn after(mut self, after: Duration) -> Self {
        self.after = millis(after).max(0);
        self
    }

    /// How long each side's records are kept: the window size plus grace.
    pub(crate) fn retention(&self) -> i64 {
        self.before
            .saturating_add(self.after)
            .saturating_add(self.grace)
    }
}

/// Records an operator dropped (late records of a join, records with a null key), per task;
/// the same counter type as [`LateRecords`].
pub type DroppedRecords = LateRecords;
