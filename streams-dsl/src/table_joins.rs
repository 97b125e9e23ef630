//! Joins with tables: stream-table (inner and left) and table-table (inner, left and outer).
//!
//! A stream-table join looks each stream record's key up in the table's store: the stream
//! side triggers, table updates alone emit nothing. The join node is connected to the table's
//! store, which puts the stream and the table into one sub-topology: their topics must be
//! co-partitioned (checked at start-up), and the task processes the records of both in
//! timestamp order, so that a table update older than a stream record is applied first.
//!
//! A table-table join emits a change of the joined table whenever either side changes: the
//! new joined row and the one it replaces, so that a row that stops joining is deleted
//! downstream.

use std::sync::Arc;

use streams_core::processor::ProcessorContext;
use streams_core::serde::{Serde, SerdeError};
use streams_core::store::KeyValueStore;
use streams_core::{Record, Result};

use crate::change::Change;
use crate::handles::{GlobalKTable, KStream, KTable};
use crate::ops::Op;
use crate::options::{configure_store, Joined, Materialized, Repartitioned};
use crate::view::TableView;
use crate::windowing::LateRecords;

impl<K: Clone + 'static, V: Clone + 'static> KTable<K, V> {
    /// This table with a view for joins to read its rows through (`crate::view`): itself when
    /// it has one, else a node after it that keeps its rows in a new store (generated name),
    /// made once for all the joins of the table.
    pub(crate) fn with_view(&self) -> KTable<K, V> {
        if self.view.is_some() {
            return KTable {
                graph: self.graph.clone(),
                node: self.node.clone(),
                path: self.path.clone(),
                store: self.store.clone(),
                view: self.view.clone(),
                keys: self.keys.clone(),
                values: self.values.clone(),
            };
        }
        let made = self
            .graph
            .borrow()
            .materialized_for_joins
            .get(&self.node)
            .cloned();
        if let Some((node, store)) = made {
            return KTable {
                graph: self.graph.clone(),
                node,
                path: format!("{}/materialize", self.path),
                view: Some(TableView::plain(&store)),
                store: Some(store),
                keys: self.keys.clone(),
                values: self.values.clone(),
            };
        }
        let table = self.materialize(Materialized::with_arc(self.values.clone()));
        let made = (
            table.node.clone(),
            table.store.clone().expect("materialized"),
        );
        self.graph
            .borrow_mut()
            .materialized_for_joins
            .insert(self.node.clone(), made);
        table
    }

    /// A node after this table keeping its rows in the store `materialized` describes; it
    /// forwards the changes unchanged.
    pub(crate) fn materialize(&self, materialized: Materialized<V>) -> KTable<K, V> {
        let path = format!("{}/materialize", self.path);
        let mut g = self.graph.borrow_mut();
        let node = g.node_name("KTABLE-MATERIALIZE", &path, None);
        let store = g.state_name(
            "KTABLE-STATE-STORE",
            &path,
            materialized.name.as_deref(),
            &format!("materialization after {}", self.node),
        );
        let name = store.clone();
        g.topology.add_processor(
            &node,
            move || {
                let store = name.clone();
                Op::<K, Change<V>, K, Change<V>>::new(Box::new(
                    move |r: Record<K, Change<V>>, ctx: &mut ProcessorContext<'_, K, Change<V>>| {
                        let s = ctx.state_store::<KeyValueStore<K, V>>(&store)?;
                        match &r.value().new {
                            Some(v) => s.put(r.key(), v)?,
                            None => {
                                s.delete(r.key())?;
                            }
                        }
                        ctx.forward(r)
                    },
                ))
            },
            [self.node.as_str()],
        );
        let builder = configure_store!(
            KeyValueStore::<K, V>::builder(&store, self.keys.clone(), materialized.values.clone()),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node,
            path,
            view: Some(TableView::plain(&store)),
            store: Some(store),
            keys: self.keys.clone(),
            values: materialized.values,
        }
    }
}

/// Which rows a table-table join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableJoin {
    Inner,
    Left,
    Outer,
}

type TableJoiner<V1, V2, VR> = Arc<dyn Fn(Option<&V1>, Option<&V2>) -> VR + Send + Sync>;

impl TableJoin {
    /// The joined row of `this` and `other`, if this join has one.
    fn row<V1, V2, VR>(
        self,
        joiner: &TableJoiner<V1, V2, VR>,
        this: Option<&V1>,
        other: Option<&V2>,
    ) -> Option<VR> {
        let has = match self {
            TableJoin::Inner => this.is_some() && other.is_some(),
            TableJoin::Left => this.is_some(),
            TableJoin::Outer => this.is_some() || other.is_some(),
        };
        has.then(|| joiner(this, other))
    }
}

/// A change of either table of a table-table join.
#[derive(Clone)]
enum TableSide<V1, V2> {
    This(Change<V1>),
    Other(Change<V2>),
}

/// The timestamps of a key's rows on both sides of a table-table join (`None`: no row), which
/// the join keeps so that a result carries the larger of the two (Kafka Streams reads them
/// from its timestamped stores; ours keep values only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RowTimes {
    this: Option<i64>,
    other: Option<i64>,
}

/// Two timestamps of 8 bytes each (big-endian), `i64::MIN` for none.
struct RowTimesSerde;

impl Serde<RowTimes> for RowTimesSerde {
    fn serialize(&self, _: &str, t: &RowTimes) -> std::result::Result<Option<Vec<u8>>, SerdeError> {
        let mut out = t.this.unwrap_or(i64::MIN).to_be_bytes().to_vec();
        out.extend_from_slice(&t.other.unwrap_or(i64::MIN).to_be_bytes());
        Ok(Some(out))
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> std::result::Result<RowTimes, SerdeError> {
        let data = data
            .filter(|d| d.len() == 16)
            .ok_or_else(|| SerdeError::new("RowTimes", topic, "not 16 bytes of two timestamps"))?;
        let at = |i: usize| {
            let t = i64::from_be_bytes(data[i..i + 8].try_into().expect("8 bytes"));
            (t != i64::MIN).then_some(t)
        };
        Ok(RowTimes {
            this: at(0),
            other: at(8),
        })
    }
}

impl<K: Clone + 'static, V: Clone + 'static> KStream<K, V> {
    /// Inner join with `table`: each record of this stream whose key is in the table yields
    /// `joiner(value, row)`, with the record's timestamp; a key not in the table yields
    /// nothing, and table updates alone yield nothing. A stream whose key changed upstream is
    /// repartitioned first (with `joined`'s value serde); the stream and table topics must be
    /// co-partitioned.
    ///
    /// ```
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Joined, Materialized, StreamsBuilder};
    ///
    /// // Each payment with its card's home country.
    /// let builder = StreamsBuilder::new();
    /// let cards = builder.table::<String, String>("cards", Materialized::with(Utf8));
    /// builder
    ///     .stream::<String, String>("payments")
    ///     .join_table(&cards, |amount, country| format!("{amount} from {country}"), Joined::default())
    ///     .to("payments-with-country");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (c, p) = (driver.input_topic("cards", Utf8, Utf8), driver.input_topic("payments", Utf8, Utf8));
    /// c.pipe_at("card1".to_string(), "FR".to_string(), 1)?;
    /// p.pipe_at("card1".to_string(), "10 EUR".to_string(), 2)?;
    /// p.pipe_at("card2".to_string(), "5 EUR".to_string(), 3)?; // no such card: nothing
    /// let out = driver.output_topic::<String, String>("payments-with-country", Utf8, Utf8);
    /// assert_eq!(out.read_values()?, vec!["10 EUR from FR".to_string()]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn join_table<VT, VR>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
        joined: Joined<V>,
    ) -> KStream<K, VR>
    where
        VT: Clone + 'static,
        VR: Clone + 'static,
    {
        self.stream_table_join(table, move |v, t| t.map(|t| joiner(v, t)), joined, "JOIN")
    }

    /// Left join with `table`: as [`join_table`](Self::join_table), and a record whose key is
    /// not in the table yields `joiner(value, None)`.
    ///
    /// ```
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Joined, Materialized, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let names = builder.table::<String, String>("user-names", Materialized::with(Utf8));
    /// builder
    ///     .stream::<String, String>("visits")
    ///     .left_join_table(&names, |page, name| format!("{} saw {page}", name.map_or("someone", String::as_str)), Joined::default())
    ///     .to("visit-log");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (n, v) = (driver.input_topic("user-names", Utf8, Utf8), driver.input_topic("visits", Utf8, Utf8));
    /// n.pipe_at("u1".to_string(), "Ann".to_string(), 1)?;
    /// v.pipe_at("u1".to_string(), "/home".to_string(), 2)?;
    /// v.pipe_at("u2".to_string(), "/cart".to_string(), 3)?;
    /// let out = driver.output_topic::<String, String>("visit-log", Utf8, Utf8);
    /// assert_eq!(out.read_values()?, vec!["Ann saw /home".to_string(), "someone saw /cart".to_string()]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn left_join_table<VT, VR>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
        joined: Joined<V>,
    ) -> KStream<K, VR>
    where
        VT: Clone + 'static,
        VR: Clone + 'static,
    {
        self.stream_table_join(table, move |v, t| Some(joiner(v, t)), joined, "LEFTJOIN")
    }

    fn stream_table_join<VT: Clone + 'static, VR: Clone + 'static>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync + 'static,
        joined: Joined<V>,
        kind: &str,
    ) -> KStream<K, VR> {
        let table = table.with_view();
        let store = table.view.clone().expect("with_view gives a view");
        let input = if self.key_changed {
            self.repartition(Repartitioned {
                keys: table.keys.clone(),
                values: joined.values.clone(),
                name: joined.name.clone(),
                partitions: None,
            })
        } else {
            self.clone()
        };
        let path = format!(
            "{}/{}-table({})",
            input.path,
            kind.to_lowercase(),
            table.path
        );
        let explicit = joined.name.clone().or_else(|| self.name_next.clone());
        let mut g = self.graph.borrow_mut();
        let node = g.node_name(&format!("STREAM-TABLE-{kind}"), &path, explicit.as_deref());
        let joiner = Arc::new(joiner);
        let keys = table.keys.clone();
        let dropped = joined.dropped.clone();
        let left = kind == "LEFTJOIN";
        let store_name = store.clone();
        g.topology.add_processor(
            &node,
            move || {
                let (joiner, keys, dropped, store) = (
                    joiner.clone(),
                    keys.clone(),
                    dropped.clone(),
                    store_name.clone(),
                );
                Op::<K, V, K, VR>::new(Box::new(move |r: Record<K, V>, ctx| {
                    if keys.serialize("join", r.key())?.is_none() {
                        // A null key has no row: a left join joins the record with none
                        // (Kafka's KIP-962), an inner join drops it.
                        if left {
                            return match joiner(r.value(), None) {
                                Some(out) => ctx.forward(r.with_value(out)),
                                None => Ok(()),
                            };
                        }
                        null_key(&*keys, r.key(), &dropped, ctx)?;
                        return Ok(());
                    }
                    let row = store.get(ctx, r.key())?;
                    match joiner(r.value(), row.as_ref()) {
                        Some(out) => ctx.forward(r.with_value(out)),
                        None => Ok(()),
                    }
                }))
            },
            [input.node.as_str()],
        );
        g.topology
            .connect_processor_and_state_stores(&node, store.stores.iter().map(String::as_str));
        drop(g);
        KStream::new(self.graph.clone(), node, path, false)
    }
}

impl<K: Clone + 'static, V: Clone + 'static> KStream<K, V> {
    /// Inner join with a global table: each record is looked up under `key_mapper(key,
    /// value)` in `table` (every partition of its topic, on every instance: no
    /// co-partitioning, no repartition), and yields `joiner(value, row)` under its own key; a
    /// record whose mapped key is not in the table (or is null) yields nothing. See
    /// [`GlobalKTable`] for an example.
    pub fn join_global<KG, VG, VR>(
        &self,
        table: &GlobalKTable<KG, VG>,
        key_mapper: impl Fn(&K, &V) -> KG + Send + Sync + 'static,
        joiner: impl Fn(&V, &VG) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR>
    where
        KG: 'static,
        VG: 'static,
        VR: Clone + 'static,
    {
        self.global_join(
            table,
            key_mapper,
            move |v, g| g.map(|g| joiner(v, g)),
            "JOIN",
        )
    }

    /// Left join with a global table: as [`join_global`](Self::join_global), and a record
    /// whose mapped key is not in the table yields `joiner(value, None)`.
    ///
    /// ```
    /// use streams_core::serde::Utf8;
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let names = builder.global_table::<String, String>("product-names", Materialized::with(Utf8));
    /// builder
    ///     .stream::<String, String>("clicks") // user -> product id
    ///     .left_join_global(&names, |_, pid| pid.clone(), |pid, name| name.cloned().unwrap_or_else(|| pid.clone()))
    ///     .to("clicked-names");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// driver.input_topic("product-names", Utf8, Utf8).pipe("p1".to_string(), "pen".to_string())?;
    /// let clicks = driver.input_topic("clicks", Utf8, Utf8);
    /// clicks.pipe("ann".to_string(), "p1".to_string())?;
    /// clicks.pipe("bob".to_string(), "p2".to_string())?;
    /// let out = driver.output_topic::<String, String>("clicked-names", Utf8, Utf8);
    /// assert_eq!(out.read_values()?, vec!["pen".to_string(), "p2".to_string()]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn left_join_global<KG, VG, VR>(
        &self,
        table: &GlobalKTable<KG, VG>,
        key_mapper: impl Fn(&K, &V) -> KG + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VG>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR>
    where
        KG: 'static,
        VG: 'static,
        VR: Clone + 'static,
    {
        self.global_join(
            table,
            key_mapper,
            move |v, g| Some(joiner(v, g)),
            "LEFTJOIN",
        )
    }

    fn global_join<KG: 'static, VG: 'static, VR: Clone + 'static>(
        &self,
        table: &GlobalKTable<KG, VG>,
        key_mapper: impl Fn(&K, &V) -> KG + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VG>) -> Option<VR> + Send + Sync + 'static,
        kind: &str,
    ) -> KStream<K, VR> {
        let path = format!(
            "{}/{}-global({})",
            self.path,
            kind.to_lowercase(),
            table.store
        );
        let mut g = self.graph.borrow_mut();
        let node = g.node_name(
            &format!("STREAM-GLOBALTABLE-{kind}"),
            &path,
            self.name_next.as_deref(),
        );
        let (mapper, joiner) = (Arc::new(key_mapper), Arc::new(joiner));
        let (store, keys, values) = (
            table.store.clone(),
            table.keys.clone(),
            table.values.clone(),
        );
        g.topology.add_processor(
            &node,
            move || {
                let (mapper, joiner, store, keys, values) = (
                    mapper.clone(),
                    joiner.clone(),
                    store.clone(),
                    keys.clone(),
                    values.clone(),
                );
                Op::<K, V, K, VR>::new(Box::new(move |r: Record<K, V>, ctx| {
                    let global = ctx.global_store(&store)?;
                    let row = global.get(&*keys, &*values, &mapper(r.key(), r.value()))?;
                    match joiner(r.value(), row.as_ref()) {
                        Some(out) => ctx.forward(r.with_value(out)),
                        None => Ok(()),
                    }
                }))
            },
            [self.node.as_str()],
        );
        drop(g);
        KStream::new(self.graph.clone(), node, path, self.key_changed)
    }
}

/// Whether `key` is null (its serde writes no bytes); such a record is dropped and counted.
fn null_key<K: 'static, VR: 'static>(
    keys: &dyn Serde<K>,
    key: &K,
    dropped: &LateRecords,
    ctx: &ProcessorContext<'_, K, VR>,
) -> Result<bool> {
    if keys.serialize("join", key)?.is_some() {
        return Ok(false);
    }
    dropped.add(ctx.task_id());
    ctx.record_dropped(streams_core::metrics::DropReason::NullKey);
    tracing::debug!(task = %ctx.task_id(), "join: dropping a record with a null key");
    Ok(true)
}

impl<K: Clone + 'static, V: Clone + 'static> KTable<K, V> {
    /// Inner join with `other`: the table of `joiner(this row, other row)` for the keys in
    /// both, kept in the store `materialized` describes (queryable). Every change of either
    /// side updates the joined row; a key that leaves either table is deleted from the join.
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let names = builder.table::<String, String>("names", Materialized::with(Utf8));
    /// let emails = builder.table::<String, String>("emails", Materialized::with(Utf8));
    /// names
    ///     .join(&emails, |name, email| format!("{name} <{email}>"), Materialized::with(Utf8).named("contacts"))
    ///     .to("contacts");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (n, e) = (driver.input_topic("names", Utf8, Utf8), driver.input_topic("emails", Utf8, Nullable(Utf8)));
    /// n.pipe_at("u1".to_string(), "Ann".to_string(), 1)?;
    /// e.pipe_at("u1".to_string(), Some("ann@example.com".to_string()), 2)?;
    /// e.pipe_at("u1".to_string(), None, 3)?; // the email is deleted: so is the contact
    /// let out = driver.output_topic::<String, Option<String>>("contacts", Utf8, Nullable(Utf8));
    /// assert_eq!(out.read_values()?, vec![Some("Ann <ann@example.com>".to_string()), None]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn join<V2, VR>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: TableJoiner<V, V2, VR> = Arc::new(move |a, b| {
            joiner(a.expect("inner join: both"), b.expect("inner join: both"))
        });
        self.table_join(other, TableJoin::Inner, joiner, materialized)
    }

    /// Left join with `other`: a row for every key of this table, `joiner(row, other row or
    /// None)`.
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let users = builder.table::<String, String>("users", Materialized::with(Utf8));
    /// let phones = builder.table::<String, String>("phones", Materialized::with(Utf8));
    /// users
    ///     .left_join(&phones, |u, p| format!("{u}:{}", p.map_or("no phone", String::as_str)), Materialized::with(Utf8))
    ///     .to("user-phones");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// driver.input_topic("users", Utf8, Utf8).pipe_at("u1".to_string(), "Ann".to_string(), 1)?;
    /// driver.input_topic("phones", Utf8, Utf8).pipe_at("u1".to_string(), "555".to_string(), 2)?;
    /// let out = driver.output_topic::<String, Option<String>>("user-phones", Utf8, Nullable(Utf8));
    /// assert_eq!(out.read_values()?, vec![Some("Ann:no phone".to_string()), Some("Ann:555".to_string())]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn left_join<V2, VR>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: TableJoiner<V, V2, VR> =
            Arc::new(move |a, b| joiner(a.expect("left join: this side"), b));
        self.table_join(other, TableJoin::Left, joiner, materialized)
    }

    /// Outer join with `other`: a row for every key of either table.
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// let builder = StreamsBuilder::new();
    /// let stock = builder.table::<String, String>("stock", Materialized::with(Utf8));
    /// let prices = builder.table::<String, String>("prices", Materialized::with(Utf8));
    /// let show = |v: Option<&String>| v.map_or("?", String::as_str).to_string();
    /// stock
    ///     .outer_join(&prices, move |s, p| format!("{} at {}", show(s), show(p)), Materialized::with(Utf8))
    ///     .to("catalog");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// driver.input_topic("prices", Utf8, Utf8).pipe_at("pen".to_string(), "2 EUR".to_string(), 1)?;
    /// driver.input_topic("stock", Utf8, Utf8).pipe_at("pen".to_string(), "12".to_string(), 2)?;
    /// let out = driver.output_topic::<String, Option<String>>("catalog", Utf8, Nullable(Utf8));
    /// assert_eq!(out.read_values()?, vec![Some("? at 2 EUR".to_string()), Some("12 at 2 EUR".to_string())]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn outer_join<V2, VR>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR>
    where
        V2: Clone + 'static,
        VR: Clone + 'static,
    {
        self.table_join(other, TableJoin::Outer, Arc::new(joiner), materialized)
    }

    fn table_join<V2: Clone + 'static, VR: Clone + 'static>(
        &self,
        other: &KTable<K, V2>,
        kind: TableJoin,
        joiner: TableJoiner<V, V2, VR>,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR> {
        let (this, that) = (self.with_view(), other.with_view());
        let (this_store, that_store) = (
            this.view.clone().expect("with_view gives a view"),
            that.view.clone().expect("with_view gives a view"),
        );
        let tag = format!("{kind:?}").to_ascii_uppercase();
        let path = format!("{tag}join({},{})", this.path, that.path);
        let mut g = self.graph.borrow_mut();
        let this_tag = g.node_name(&format!("KTABLE-{tag}JOIN-THIS"), &path, None);
        let that_tag = g.node_name(&format!("KTABLE-{tag}JOIN-OTHER"), &path, None);
        let node = g.node_name(&format!("KTABLE-{tag}JOIN"), &path, None);
        g.topology.add_processor(
            &this_tag,
            || {
                Op::<K, Change<V>, K, TableSide<V, V2>>::new(Box::new(|r, ctx| {
                    ctx.forward(r.map_value(TableSide::This))
                }))
            },
            [this.node.as_str()],
        );
        g.topology.add_processor(
            &that_tag,
            || {
                Op::<K, Change<V2>, K, TableSide<V, V2>>::new(Box::new(|r, ctx| {
                    ctx.forward(r.map_value(TableSide::Other))
                }))
            },
            [that.node.as_str()],
        );
        let times = g.state_name(
            "KTABLE-JOIN-ROWTIMES",
            &path,
            materialized
                .name
                .as_ref()
                .map(|n| format!("{n}-row-times"))
                .as_deref(),
            &format!(
                "{} join of {} and {}",
                tag.to_lowercase(),
                this.node,
                that.node
            ),
        );
        let (s1, s2, times_store) = (this_store.clone(), that_store.clone(), times.clone());
        g.topology.add_processor(
            &node,
            move || {
                let (joiner, s1, s2, times) =
                    (joiner.clone(), s1.clone(), s2.clone(), times_store.clone());
                Op::<K, TableSide<V, V2>, K, Change<VR>>::new(Box::new(
                    move |r: Record<K, TableSide<V, V2>>, ctx| {
                        let ts = r.timestamp();
                        let (key, side, rest) = r.into_parts();
                        let mut rows = ctx
                            .state_store::<KeyValueStore<K, RowTimes>>(&times)?
                            .get(&key)?
                            .unwrap_or_default();
                        // The other side's row, and its timestamp if it has one.
                        let (change, other_ts) = match side {
                            TableSide::This(c) => {
                                rows.this = c.new.is_some().then_some(ts);
                                let o = s2.get(ctx, &key)?;
                                let other_ts = o.as_ref().and(rows.other);
                                let change = Change {
                                    new: kind.row(&joiner, c.new.as_ref(), o.as_ref()),
                                    old: kind.row(&joiner, c.old.as_ref(), o.as_ref()),
                                };
                                (change, other_ts)
                            }
                            TableSide::Other(c) => {
                                rows.other = c.new.is_some().then_some(ts);
                                let t = s1.get(ctx, &key)?;
                                let other_ts = t.as_ref().and(rows.this);
                                let change = Change {
                                    new: kind.row(&joiner, t.as_ref(), c.new.as_ref()),
                                    old: kind.row(&joiner, t.as_ref(), c.old.as_ref()),
                                };
                                (change, other_ts)
                            }
                        };
                        let store = ctx.state_store::<KeyValueStore<K, RowTimes>>(&times)?;
                        if rows == RowTimes::default() {
                            store.delete(&key)?;
                        } else {
                            store.put(&key, &rows)?;
                        }
                        if change.new.is_none() && change.old.is_none() {
                            return Ok(());
                        }
                        let result_ts = other_ts.map_or(ts, |o| ts.max(o));
                        ctx.forward(
                            rest.with_key(key)
                                .with_value(change)
                                .with_timestamp(result_ts),
                        )
                    },
                ))
            },
            [this_tag.as_str(), that_tag.as_str()],
        );
        let times_builder = configure_store!(
            KeyValueStore::<K, RowTimes>::builder(&times, self.keys.clone(), RowTimesSerde),
            materialized
        );
        g.topology.add_state_store(times_builder, [node.as_str()]);
        g.topology.connect_processor_and_state_stores(
            &node,
            this_store
                .stores
                .iter()
                .chain(&that_store.stores)
                .map(String::as_str),
        );
        drop(g);
        let joined = KTable {
            graph: self.graph.clone(),
            node,
            path,
            store: None,
            view: None,
            keys: self.keys.clone(),
            values: materialized.values.clone(),
        };
        joined.materialize(materialized)
    }
}
