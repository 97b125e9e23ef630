//! Stream-stream joins over [`JoinWindows`]: inner, left and outer.
//!
//! Both streams feed one join node, each record tagged with its side, so that the node owns
//! everything the join keeps: the two window stores (each side's records by key and
//! timestamp, duplicates kept), the stream time of the join, and, for left and outer joins,
//! the stores of records still without a partner. A record without a partner is emitted alone
//! once its window and grace have passed (see [`JoinWindows`]); a partner arriving before
//! that removes it from those stores, one arriving after joins it all the same.

use std::sync::Arc;
use streams_core::metrics::DropReason;

use streams_core::processor::ProcessorContext;
use streams_core::serde::{Serde, SerdeError};
use streams_core::store::{KeyValueStore, WindowStore};
use streams_core::{Record, Result};

use crate::handles::KStream;
use crate::ops::Op;
use crate::options::{configure_store, Named, Repartitioned, StreamJoined};
use crate::windowing::{JoinWindows, LateRecords};

/// A record of one side of a join.
#[derive(Clone)]
pub(crate) enum Side<V1, V2> {
    This(V1),
    Other(V2),
}

/// Values kept under one key and timestamp: a count, then each value's length and bytes.
pub(crate) struct ListSerde<V>(pub(crate) Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Vec<V>> for ListSerde<V> {
    fn serialize(&self, topic: &str, list: &Vec<V>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = (list.len() as u32).to_be_bytes().to_vec();
        for v in list {
            match self.0.serialize(topic, v)? {
                Some(b) => {
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(&b);
                }
                None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
            }
        }
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Vec<V>, SerdeError> {
        let bad = |m: &str| SerdeError::new("List", topic, m.to_string());
        let mut data = data.ok_or_else(|| bad("null data"))?;
        let take = |n: usize, data: &mut &[u8]| -> Result<Vec<u8>, SerdeError> {
            if data.len() < n {
                return Err(bad("truncated"));
            }
            let (head, rest) = data.split_at(n);
            *data = rest;
            Ok(head.to_vec())
        };
        let count = u32::from_be_bytes(take(4, &mut data)?.try_into().expect("4 bytes"));
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = u32::from_be_bytes(take(4, &mut data)?.try_into().expect("4 bytes"));
            if len == u32::MAX {
                out.push(self.0.deserialize(topic, None)?);
            } else {
                let bytes = take(len as usize, &mut data)?;
                out.push(self.0.deserialize(topic, Some(&bytes))?);
            }
        }
        Ok(out)
    }
}

/// A key with a timestamp in front, ordered by timestamp first.
#[derive(Clone)]
pub(crate) struct TsKey<K> {
    pub(crate) ts: i64,
    pub(crate) key: K,
}

/// The timestamp as 8 bytes that sort as the numbers do (sign bit flipped), then the key.
pub(crate) struct TsKeySerde<K>(pub(crate) Arc<dyn Serde<K>>);

impl<K: 'static> Serde<TsKey<K>> for TsKeySerde<K> {
    fn serialize(&self, topic: &str, k: &TsKey<K>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = ((k.ts as u64) ^ (1 << 63)).to_be_bytes().to_vec();
        out.extend_from_slice(&self.0.serialize(topic, &k.key)?.unwrap_or_default());
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<TsKey<K>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("TsKey", topic, "null data"))?;
        if data.len() < 8 {
            return Err(SerdeError::new("TsKey", topic, "fewer than 8 bytes"));
        }
        let (ts, key) = data.split_at(8);
        let ts = (u64::from_be_bytes(ts.try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
        Ok(TsKey {
            ts,
            key: self.0.deserialize(topic, Some(key))?,
        })
    }
}

/// Which results a join emits for a record without a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inner,
    Left,
    Outer,
}

impl Kind {
    fn alone(self, this_side: bool) -> bool {
        match self {
            Kind::Inner => false,
            Kind::Left => this_side,
            Kind::Outer => true,
        }
    }
}

type Joiner<K, V1, V2, VR> = Arc<dyn Fn(&K, Option<&V1>, Option<&V2>) -> VR + Send + Sync>;

/// The names of a join's stores.
#[derive(Clone)]
struct Stores {
    this: String,
    other: String,
    /// Records without a partner yet, of this side and of the other (left and outer joins).
    alone_this: Option<String>,
    alone_other: Option<String>,
}

/// Everything one task's join node keeps in memory.
struct JoinState<K, V1, V2, VR> {
    kind: Kind,
    windows: JoinWindows,
    stores: Stores,
    joiner: Joiner<K, V1, V2, VR>,
    keys: Arc<dyn Serde<K>>,
    dropped: LateRecords,
    /// The largest timestamp the join has seen.
    stream_time: i64,
    /// No record waiting alone has a timestamp below this (`i64::MIN`: not known).
    alone_from: i64,
}

impl<K, V1, V2, VR> JoinState<K, V1, V2, VR>
where
    K: Clone + 'static,
    V1: Clone + 'static,
    V2: Clone + 'static,
    VR: Clone + 'static,
{
    fn process(
        &mut self,
        r: Record<K, Side<V1, V2>>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<()> {
        let ts = r.timestamp();
        let this_side = matches!(r.value(), Side::This(_));
        self.stream_time = self.stream_time.max(ts);
        if self.keys.serialize("join", r.key())?.is_none() {
            if self.kind.alone(this_side) {
                // KIP-962: a record of an outer side with a null key cannot join; it goes out
                // alone at once.
                let (key, side, rest) = r.into_parts();
                let out = match &side {
                    Side::This(v) => (self.joiner)(&key, Some(v), None),
                    Side::Other(o) => (self.joiner)(&key, None, Some(o)),
                };
                return ctx.forward(rest.with_key(key).with_value(out));
            }
            self.dropped.add(ctx.task_id());
            ctx.record_dropped(DropReason::NullKey);
            tracing::debug!(task = %ctx.task_id(), "join: dropping a record with a null key");
            return Ok(());
        }
        if ts == self.stream_time {
            self.emit_alone(ctx)?;
        }
        let w = self.windows;
        let (key, side, rest) = r.into_parts();
        let rest = rest.with_key(key.clone());
        match side {
            Side::This(v) => {
                let (from, to) = (ts.saturating_sub(w.before), ts.saturating_add(w.after));
                let joiner = self.joiner.clone();
                self.join_one::<V1, V2>(
                    ctx,
                    true,
                    (&key, v, ts),
                    (from, to),
                    rest,
                    |v, o| joiner(&key, Some(v), Some(o)),
                    |v| joiner(&key, Some(v), None),
                )
            }
            Side::Other(o) => {
                let (from, to) = (ts.saturating_sub(w.after), ts.saturating_add(w.before));
                let joiner = self.joiner.clone();
                self.join_one::<V2, V1>(
                    ctx,
                    false,
                    (&key, o, ts),
                    (from, to),
                    rest,
                    |o, v| joiner(&key, Some(v), Some(o)),
                    |o| joiner(&key, None, Some(o)),
                )
            }
        }
    }

    /// Joins one record of one side (`own`, values `VA`) with the other side's records
    /// (`VB`) of its key in `[from, to]`: stores it (unless its own store has expired its
    /// time: then it is counted as dropped, and still joined), emits a result per partner
    /// (removing partners that waited alone), or, when it has none and its side is outer,
    /// emits it alone at once if its window (`to`) is already behind stream time, or keeps
    /// it alone until the window closes.
    #[allow(clippy::too_many_arguments)]
    fn join_one<VA: Clone + 'static, VB: Clone + 'static>(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, VR>,
        this_side: bool,
        (key, value, ts): (&K, VA, i64),
        (from, to): (i64, i64),
        rest: Record<K, ()>,
        join: impl Fn(&VA, &VB) -> VR,
        alone: impl Fn(&VA) -> VR,
    ) -> Result<()> {
        let s = &self.stores;
        let (own, other, other_alone) = if this_side {
            (&s.this, &s.other, &s.alone_other)
        } else {
            (&s.other, &s.this, &s.alone_this)
        };
        if !append::<K, VA, VR>(ctx, own, key, value.clone(), ts)? {
            self.dropped.add(ctx.task_id());
            ctx.record_dropped(DropReason::Late);
            tracing::debug!(task = %ctx.task_id(), ts, "join: a record too old for its window store is joined but not kept");
        }
        let partners = ctx.state_store::<WindowStore<K, Vec<VB>>>(other)?.fetch(
            key,
            from.max(0),
            to.max(0),
        )?;
        if partners.is_empty() {
            if !self.kind.alone(this_side) {
                return Ok(());
            }
            if to.max(0) < self.stream_time {
                return ctx.forward(rest.with_value(alone(&value)));
            }
            return self.wait_alone::<VA>(ctx, this_side, key, value, ts);
        }
        for (pts, values) in partners {
            if let Some(store) = other_alone {
                let alone = ctx.state_store::<KeyValueStore<TsKey<K>, Vec<VB>>>(store)?;
                alone.delete(&TsKey {
                    ts: pts,
                    key: key.clone(),
                })?;
            }
            for partner in values {
                let out = rest.clone().with_value(join(&value, &partner));
                ctx.forward(out.with_timestamp(ts.max(pts)))?;
            }
        }
        Ok(())
    }

    /// Keeps a record without a partner until its partners can no longer arrive.
    fn wait_alone<V: Clone + 'static>(
        &mut self,
        ctx: &mut ProcessorContext<'_, K, VR>,
        this_side: bool,
        key: &K,
        value: V,
        ts: i64,
    ) -> Result<()> {
        let store = if this_side {
            &self.stores.alone_this
        } else {
            &self.stores.alone_other
        };
        let store = store.as_ref().expect("left and outer joins have the store");
        let s = ctx.state_store::<KeyValueStore<TsKey<K>, Vec<V>>>(store)?;
        let k = TsKey {
            ts,
            key: key.clone(),
        };
        let mut list = s.get(&k)?.unwrap_or_default();
        list.push(value);
        s.put(&k, &list)?;
        if self.alone_from != i64::MIN {
            self.alone_from = self.alone_from.min(ts);
        }
        Ok(())
    }

    /// Emits the records waiting alone whose window has closed: a record of this side at `t`
    /// once `t + after + grace` is before stream time, one of the other side once
    /// `t + before + grace` is (Kafka Streams' `KStreamKStreamJoin`). They go out in the
    /// order of Kafka's store of lone records: by timestamp, the other (right) side before
    /// this side at equal timestamps, then by key bytes.
    fn emit_alone(&mut self, ctx: &mut ProcessorContext<'_, K, VR>) -> Result<()> {
        if self.kind == Kind::Inner {
            return Ok(());
        }
        let w = self.windows;
        let closed_before = |reach: i64| {
            self.stream_time
                .saturating_sub(reach)
                .saturating_sub(w.grace)
        };
        let (limit_this, limit_other) = (closed_before(w.after), closed_before(w.before));
        if limit_this.max(limit_other) <= self.alone_from {
            return Ok(());
        }
        let (this, next_this) =
            take_before::<K, V1, VR>(ctx, self.stores.alone_this.as_deref(), limit_this)?;
        let (other, next_other) =
            take_before::<K, V2, VR>(ctx, self.stores.alone_other.as_deref(), limit_other)?;
        self.alone_from = next_this.min(next_other);
        let (mut a, mut b) = (this.into_iter().peekable(), other.into_iter().peekable());
        loop {
            let this_first = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(x), Some(y)) => x.0.ts < y.0.ts,
            };
            if this_first {
                let (k, values) = a.next().expect("peeked");
                for v in values {
                    let out = (self.joiner)(&k.key, Some(&v), None);
                    ctx.forward(Record::new(k.key.clone(), out, k.ts))?;
                }
            } else {
                let (k, values) = b.next().expect("peeked");
                for o in values {
                    let out = (self.joiner)(&k.key, None, Some(&o));
                    ctx.forward(Record::new(k.key.clone(), out, k.ts))?;
                }
            }
        }
        Ok(())
    }
}

/// Adds `value` to the values of `key` at `ts` in a join's window store; `false` when the
/// store refused it as expired.
fn append<K: 'static, V: 'static, VR: 'static>(
    ctx: &mut ProcessorContext<'_, K, VR>,
    store: &str,
    key: &K,
    value: V,
    ts: i64,
) -> Result<bool> {
    let s = ctx.state_store::<WindowStore<K, Vec<V>>>(store)?;
    let mut list = s.fetch_one(key, ts)?.unwrap_or_default();
    list.push(value);
    s.put(key, &list, ts)
}

/// Removes and returns the entries of a store of lone records with a timestamp before
/// `limit`, and the timestamp of the first one left (`i64::MAX`: none).
#[allow(clippy::type_complexity)]
fn take_before<K: 'static, V: 'static, VR: 'static>(
    ctx: &mut ProcessorContext<'_, K, VR>,
    store: Option<&str>,
    limit: i64,
) -> Result<(Vec<(TsKey<K>, Vec<V>)>, i64)> {
    let Some(store) = store else {
        return Ok((vec![], i64::MAX));
    };
    let s = ctx.state_store::<KeyValueStore<TsKey<K>, Vec<V>>>(store)?;
    let mut taken = vec![];
    let mut next = i64::MAX;
    for entry in s.all()? {
        let (k, v) = entry?;
        if k.ts >= limit {
            next = k.ts;
            break;
        }
        taken.push((k, v));
    }
    for (k, _) in &taken {
        s.delete(k)?;
    }
    Ok((taken, next))
}

impl<K: Clone + 'static, V: Clone + 'static> KStream<K, V> {
    /// Inner join with `other` over `windows`: for each pair of records with the same key whose
    /// timestamps are close enough, `joiner(this value, other value)`, at the larger of the two
    /// timestamps. Both streams are buffered in window stores (with changelogs); a stream whose
    /// key changed upstream is repartitioned first. Both sides must be co-partitioned.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{JoinWindows, StreamJoined, StreamsBuilder};
    ///
    /// // A click joins the ad impression of the same ad shown at most 10 s apart.
    /// let builder = StreamsBuilder::new();
    /// let views = builder.stream::<String, String>("impressions");
    /// let clicks = builder.stream::<String, String>("clicks");
    /// let window = JoinWindows::of_time_difference_with_no_grace(Duration::from_secs(10));
    /// views
    ///     .join(&clicks, |view, click| format!("{view}/{click}"), window, StreamJoined::default())
    ///     .to("ad-clicks");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (v, c) = (driver.input_topic("impressions", Utf8, Utf8), driver.input_topic("clicks", Utf8, Utf8));
    /// v.pipe_at("ad1".to_string(), "shown".to_string(), 1_000)?;
    /// c.pipe_at("ad1".to_string(), "clicked".to_string(), 4_000)?;
    /// c.pipe_at("ad1".to_string(), "too-late".to_string(), 30_000)?;
    /// let out = driver.output_topic::<String, String>("ad-clicks", Utf8, Utf8);
    /// assert_eq!(out.read_key_values()?, vec![("ad1".to_string(), "shown/clicked".to_string())]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn join<V2, VR>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<K, V, V2>,
    ) -> KStream<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: Joiner<K, V, V2, VR> = Arc::new(move |_, v, o| {
            joiner(
                v.expect("inner join: both sides"),
                o.expect("inner join: both sides"),
            )
        });
        self.stream_join(other, Kind::Inner, joiner, windows, joined)
    }

    /// Left join with `other` over `windows`: as [`join`](Self::join), and a record of this
    /// stream that found no partner is emitted once with `joiner(value, None)`, after its
    /// window and grace passed (a partner arriving later is still joined: see
    /// [`JoinWindows`]). A record with a null key goes out alone at once (KIP-962).
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{JoinWindows, StreamJoined, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let orders = builder.stream::<String, String>("orders");
    /// let payments = builder.stream::<String, String>("payments");
    /// let window = JoinWindows::of_time_difference_with_no_grace(Duration::from_secs(60));
    /// orders
    ///     .left_join(
    ///         &payments,
    ///         |order, payment| format!("{order}:{}", payment.map_or("unpaid", String::as_str)),
    ///         window,
    ///         StreamJoined::default(),
    ///     )
    ///     .to("order-status");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let o = driver.input_topic("orders", Utf8, Utf8);
    /// let p = driver.input_topic("payments", Utf8, Utf8);
    /// o.pipe_at("o1".to_string(), "book".to_string(), 1_000)?;
    /// o.pipe_at("o2".to_string(), "pen".to_string(), 2_000)?;
    /// p.pipe_at("o1".to_string(), "card".to_string(), 5_000)?;
    /// // Stream time passes o2's window (2 s + 60 s after, no grace): o2 is emitted alone.
    /// o.pipe_at("o3".to_string(), "ink".to_string(), 200_000)?;
    /// let out = driver.output_topic::<String, String>("order-status", Utf8, Utf8);
    /// let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    /// assert_eq!(out.read_key_values()?, vec![s("o1", "book:card"), s("o2", "pen:unpaid")]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn left_join<V2, VR>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<K, V, V2>,
    ) -> KStream<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: Joiner<K, V, V2, VR> =
            Arc::new(move |_, v, o| joiner(v.expect("left join: this side"), o));
        self.stream_join(other, Kind::Left, joiner, windows, joined)
    }

    /// Outer join with `other` over `windows`: as [`join`](Self::join), and a record of either
    /// stream that found no partner is emitted once, alone, after its window and grace
    /// passed (see [`JoinWindows`]); a record with a null key goes out alone at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{JoinWindows, StreamJoined, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let a = builder.stream::<String, String>("a");
    /// let b = builder.stream::<String, String>("b");
    /// let window = JoinWindows::of_time_difference_with_no_grace(Duration::from_secs(1));
    /// a.outer_join(
    ///     &b,
    ///     |x, y| format!("{}+{}", x.map_or("-", String::as_str), y.map_or("-", String::as_str)),
    ///     window,
    ///     StreamJoined::default(),
    /// )
    /// .to("ab");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (ta, tb) = (driver.input_topic("a", Utf8, Utf8), driver.input_topic("b", Utf8, Utf8));
    /// ta.pipe_at("k".to_string(), "x".to_string(), 1_000)?;
    /// tb.pipe_at("j".to_string(), "y".to_string(), 1_500)?;
    /// ta.pipe_at("z".to_string(), "end".to_string(), 10_000)?; // both windows have closed
    /// let out = driver.output_topic::<String, String>("ab", Utf8, Utf8);
    /// let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    /// assert_eq!(out.read_key_values()?, vec![s("k", "x+-"), s("j", "-+y")]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn outer_join<V2, VR>(
        &self,
        other: &KStream<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        joined: StreamJoined<K, V, V2>,
    ) -> KStream<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: Joiner<K, V, V2, VR> = Arc::new(move |_, v, o| joiner(v, o));
        self.stream_join(other, Kind::Outer, joiner, windows, joined)
    }

    fn stream_join<V2: Clone + 'static, VR: Clone + 'static>(
        &self,
        other: &KStream<K, V2>,
        kind: Kind,
        joiner: Joiner<K, V, V2, VR>,
        windows: JoinWindows,
        joined: StreamJoined<K, V, V2>,
    ) -> KStream<K, VR> {
        let name = joined.name.clone();
        let left = if self.key_changed {
            self.repartition(Repartitioned {
                keys: joined.keys.clone(),
                values: joined.this_values.clone(),
                name: name.as_ref().map(|n| format!("{n}-left")),
                partitions: None,
            })
        } else {
            self.clone()
        };
        let right = if other.key_changed {
            other.repartition(Repartitioned {
                keys: joined.keys.clone(),
                values: joined.other_values.clone(),
                name: name.as_ref().map(|n| format!("{n}-right")),
                partitions: None,
            })
        } else {
            other.clone()
        };
        let tag = format!("{kind:?}").to_ascii_uppercase();
        let this = left.add_op::<K, Side<V, V2>>(
            &format!("{tag}JOIN-THIS"),
            Named::default(),
            false,
            || Box::new(|r: Record<K, V>, ctx| ctx.forward(r.map_value(Side::This))),
        );
        let that = right.add_op::<K, Side<V, V2>>(
            &format!("{tag}JOIN-OTHER"),
            Named::default(),
            false,
            || Box::new(|r: Record<K, V2>, ctx| ctx.forward(r.map_value(Side::Other))),
        );
        let path = format!("{tag}join({},{})", left.path, right.path);
        let operator = format!(
            "{} join of {} and {}",
            tag.to_lowercase(),
            left.node,
            right.node
        );
        let mut g = self.graph.borrow_mut();
        let node = g.node_name(&format!("{tag}JOIN"), &path, self.name_next.as_deref());
        let mut store = |part: &str, kind: &str| {
            let explicit = name.as_ref().map(|n| format!("{n}-{part}-join-store"));
            g.state_name(kind, &path, explicit.as_deref(), &operator)
        };
        let stores = Stores {
            this: store("this", "JOINTHIS-STORE"),
            other: store("other", "JOINOTHER-STORE"),
            alone_this: kind
                .alone(true)
                .then(|| store("outer-this", "OUTERTHIS-STORE")),
            alone_other: kind
                .alone(false)
                .then(|| store("outer-other", "OUTEROTHER-STORE")),
        };
        let retention = std::time::Duration::from_millis(windows.retention().max(1) as u64);
        let keys = joined.keys.clone();
        let list1: Arc<dyn Serde<Vec<V>>> = Arc::new(ListSerde(joined.this_values.clone()));
        let list2: Arc<dyn Serde<Vec<V2>>> = Arc::new(ListSerde(joined.other_values.clone()));
        let ts_keys = TsKeySerde(keys.clone());
        let window_store = |n: &str, values: Arc<dyn Serde<Vec<V>>>| {
            configure_store!(
                WindowStore::<K, Vec<V>>::builder(n, retention, keys.clone(), values),
                joined
            )
        };
        let this_store = window_store(&stores.this, list1.clone());
        let other_store = configure_store!(
            WindowStore::<K, Vec<V2>>::builder(
                &stores.other,
                retention,
                keys.clone(),
                list2.clone()
            ),
            joined
        );
        let state_stores = stores.clone();
        let dropped = joined.dropped.clone();
        g.topology.add_processor(
            &node,
            move || {
                let mut state = JoinState {
                    kind,
                    windows,
                    stores: state_stores.clone(),
                    joiner: joiner.clone(),
                    keys: keys.clone(),
                    dropped: dropped.clone(),
                    stream_time: i64::MIN,
                    alone_from: i64::MIN,
                };
                Op::<K, Side<V, V2>, K, VR>::new(Box::new(move |r, ctx| state.process(r, ctx)))
            },
            [this.node.as_str(), that.node.as_str()],
        );
        g.topology.add_state_store(this_store, [node.as_str()]);
        g.topology.add_state_store(other_store, [node.as_str()]);
        if let Some(n) = &stores.alone_this {
            let b = KeyValueStore::<TsKey<K>, Vec<V>>::builder(
                n,
                TsKeySerde(joined.keys.clone()),
                ListSerde(joined.this_values.clone()),
            );
            g.topology
                .add_state_store(configure_store!(b, joined), [node.as_str()]);
        }
        if let Some(n) = &stores.alone_other {
            let b = KeyValueStore::<TsKey<K>, Vec<V2>>::builder(
                n,
                ts_keys,
                ListSerde(joined.other_values.clone()),
            );
            g.topology
                .add_state_store(configure_store!(b, joined), [node.as_str()]);
        }
        drop(g);
        KStream::new(self.graph.clone(), node, path, false)
    }
}
