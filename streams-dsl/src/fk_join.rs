//! Foreign-key table-table joins (Kafka Streams' KIP-213): a table joined to another on a key
//! extracted from its values, through two internal topics.
//!
//! 1. Each change of this table sends a subscription, keyed by the foreign key, to the
//!    subscription topic (co-partitioned with the other table): "row `k` now refers to you,
//!    with a value whose hash is `h`", and, when the foreign key changed or the row was
//!    deleted, an unsubscription to the old foreign key.
//! 2. Beside the other table, the subscriptions are kept in a store keyed by
//!    (foreign key, key); each one is answered with the other table's current row, and each
//!    change of the other table is sent to every row subscribed to it, keyed by this table's
//!    key, to the response topic (co-partitioned with this table).
//! 3. Beside this table, a response is joined with the row's current value if the hash it
//!    carries is still the hash of that value: a response to an older version of the row (its
//!    foreign key changed since, or it was deleted) is dropped, so no stale result is left
//!    behind. The results are kept in a store, so that each change carries the row it
//!    replaces.

use std::sync::Arc;

use streams_core::processor::ProcessorContext;
use streams_core::serde::{BigEndian, RawBytes, Serde, SerdeError};
use streams_core::store::KeyValueStore;
use streams_core::topology::{Sink, Source};
use streams_core::{Record, Result};

use crate::change::Change;
use crate::handles::KTable;
use crate::ops::Op;
use crate::options::{configure_store, Materialized};
use crate::view::TableView;

/// Subscribe (or update the hash) and answer with the other table's row.
const PROPAGATE: u8 = 0;
/// Unsubscribe, silently: the row moved to another foreign key, whose answer follows.
const DELETE_NO_PROPAGATE: u8 = 1;
/// Unsubscribe and answer "nothing": the row was deleted.
const DELETE_AND_PROPAGATE: u8 = 2;

type Hash = [u8; 16];

/// A stable 128-bit hash of a value's bytes (two FNV-1a 64-bit hashes with different
/// offsets): stored in topics, so it must not change between builds.
fn hash(bytes: &[u8]) -> Hash {
    let fnv = |mut h: u64| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let mut out = [0; 16];
    out[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    out[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    out
}

fn value_hash<V: 'static>(serde: &dyn Serde<V>, value: Option<&V>) -> Result<Option<Hash>> {
    Ok(match value {
        Some(v) => Some(hash(&serde.serialize("fk-join", v)?.unwrap_or_default())),
        None => None,
    })
}

/// A subscription message: what to do, the hash of the subscribing row's value, its key.
#[derive(Clone)]
struct Subscription<K> {
    instruction: u8,
    hash: Option<Hash>,
    key: K,
}

/// `[instruction][1 if a hash follows][16 bytes of hash][key bytes]`.
struct SubscriptionSerde<K>(Arc<dyn Serde<K>>);

fn split_hash<'a>(
    data: &'a [u8],
    what: &'static str,
    topic: &str,
) -> Result<(Option<Hash>, &'a [u8]), SerdeError> {
    let bad = || SerdeError::new(what, topic, "truncated");
    let (&flag, rest) = data.split_first().ok_or_else(bad)?;
    if flag == 0 {
        return Ok((None, rest));
    }
    if rest.len() < 16 {
        return Err(bad());
    }
    let (h, rest) = rest.split_at(16);
    Ok((Some(h.try_into().expect("16 bytes")), rest))
}

fn push_hash(out: &mut Vec<u8>, hash: Option<Hash>) {
    match hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h);
        }
        None => out.push(0),
    }
}

impl<K: 'static> Serde<Subscription<K>> for SubscriptionSerde<K> {
    fn serialize(&self, topic: &str, s: &Subscription<K>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = vec![s.instruction];
        push_hash(&mut out, s.hash);
        out.extend_from_slice(&self.0.serialize(topic, &s.key)?.unwrap_or_default());
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Subscription<K>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Subscription", topic, "null data"))?;
        let (&instruction, rest) = data
            .split_first()
            .ok_or_else(|| SerdeError::new("Subscription", topic, "empty"))?;
        let (hash, key) = split_hash(rest, "Subscription", topic)?;
        Ok(Subscription {
            instruction,
            hash,
            key: self.0.deserialize(topic, Some(key))?,
        })
    }
}

/// A response: the hash of the subscription it answers, and the other table's row.
#[derive(Clone)]
struct Response<VO> {
    hash: Option<Hash>,
    value: Option<VO>,
}

/// `[1 if a hash follows][16 bytes of hash][1 if a value follows][value bytes]`.
struct ResponseSerde<VO>(Arc<dyn Serde<VO>>);

impl<VO: 'static> Serde<Response<VO>> for ResponseSerde<VO> {
    fn serialize(&self, topic: &str, r: &Response<VO>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = vec![];
        push_hash(&mut out, r.hash);
        match &r.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&self.0.serialize(topic, v)?.unwrap_or_default());
            }
            None => out.push(0),
        }
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Response<VO>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Response", topic, "null data"))?;
        let (hash, rest) = split_hash(data, "Response", topic)?;
        let (&flag, value) = rest
            .split_first()
            .ok_or_else(|| SerdeError::new("Response", topic, "truncated"))?;
        Ok(Response {
            hash,
            value: if flag == 1 {
                Some(self.0.deserialize(topic, Some(value))?)
            } else {
                None
            },
        })
    }
}

/// The subscription store's key: the foreign key, then this table's key.
#[derive(Clone)]
struct CombinedKey<KO, K> {
    fk: KO,
    key: K,
}

/// `[foreign key length, 4 bytes][foreign key bytes][key bytes]`: all subscriptions of one
/// foreign key share the prefix [`FkPrefix`] writes.
struct CombinedKeySerde<KO, K>(Arc<dyn Serde<KO>>, Arc<dyn Serde<K>>);

fn prefix_bytes<KO: 'static>(
    serde: &dyn Serde<KO>,
    topic: &str,
    fk: &KO,
) -> Result<Vec<u8>, SerdeError> {
    let fk = serde.serialize(topic, fk)?.unwrap_or_default();
    let mut out = (fk.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&fk);
    Ok(out)
}

impl<KO: 'static, K: 'static> Serde<CombinedKey<KO, K>> for CombinedKeySerde<KO, K> {
    fn serialize(
        &self,
        topic: &str,
        k: &CombinedKey<KO, K>,
    ) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = prefix_bytes(&*self.0, topic, &k.fk)?;
        out.extend_from_slice(&self.1.serialize(topic, &k.key)?.unwrap_or_default());
        Ok(Some(out))
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> Result<CombinedKey<KO, K>, SerdeError> {
        let bad = || SerdeError::new("CombinedKey", topic, "truncated");
        let data = data.ok_or_else(bad)?;
        if data.len() < 4 {
            return Err(bad());
        }
        let (len, rest) = data.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return Err(bad());
        }
        let (fk, key) = rest.split_at(len);
        Ok(CombinedKey {
            fk: self.0.deserialize(topic, Some(fk))?,
            key: self.1.deserialize(topic, Some(key))?,
        })
    }
}

/// The prefix of every subscription of one foreign key.
struct FkPrefix<KO>(Arc<dyn Serde<KO>>);

impl<KO: 'static> Serde<KO> for FkPrefix<KO> {
    fn serialize(&self, topic: &str, fk: &KO) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(prefix_bytes(&*self.0, topic, fk)?))
    }

    fn deserialize(&self, topic: &str, _data: Option<&[u8]>) -> Result<KO, SerdeError> {
        Err(SerdeError::new(
            "FkPrefix",
            topic,
            "a prefix is never read back",
        ))
    }
}

type FkJoiner<V, VO, VR> = Arc<dyn Fn(&V, Option<&VO>) -> Option<VR> + Send + Sync>;

impl<K: Clone + 'static, V: Clone + 'static> KTable<K, V> {
    /// Inner join with `other` on a foreign key: each row of this table whose
    /// `foreign_key(value)` is a key of `other` yields `joiner(value, other row)`, under this
    /// table's key. A change of either side updates the result; a row whose foreign key
    /// changes leaves its old partner's result behind, and a row deleted (or whose partner is
    /// deleted) is deleted from the result. The two tables need not be co-partitioned: the
    /// join goes through a subscription topic and a response topic (named after
    /// `materialized`'s store, or generated). The result is materialized (queryable).
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// // Orders (order -> product id) with their product's name.
    /// let builder = StreamsBuilder::new();
    /// let orders = builder.table::<String, String>("orders", Materialized::with(Utf8));
    /// let products = builder.table::<String, String>("products", Materialized::with(Utf8));
    /// orders
    ///     .foreign_key_join(
    ///         &products,
    ///         |product_id| product_id.clone(),
    ///         |_, product| product.clone(),
    ///         Materialized::with(Utf8).named("order-products"),
    ///     )
    ///     .to("order-products");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (o, p) = (driver.input_topic("orders", Utf8, Utf8), driver.input_topic("products", Utf8, Utf8));
    /// p.pipe_at("p1".to_string(), "pen".to_string(), 1)?;
    /// p.pipe_at("p2".to_string(), "ink".to_string(), 2)?;
    /// o.pipe_at("o1".to_string(), "p1".to_string(), 3)?;
    /// o.pipe_at("o1".to_string(), "p2".to_string(), 4)?; // o1 now refers to p2
    /// p.pipe_at("p1".to_string(), "red pen".to_string(), 5)?; // o1 no longer cares
    /// let out = driver.output_topic::<String, Option<String>>("order-products", Utf8, Nullable(Utf8));
    /// assert_eq!(out.read_values()?, vec![Some("pen".to_string()), Some("ink".to_string())]);
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn foreign_key_join<KO, VO, VR>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: impl Fn(&V) -> KO + Send + Sync + 'static,
        joiner: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR>
    where
        KO: Clone + 'static,
        VO: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: FkJoiner<V, VO, VR> = Arc::new(move |v, o| o.map(|o| joiner(v, o)));
        self.fk_join(
            other,
            Arc::new(foreign_key),
            joiner,
            materialized,
            "FK-JOIN",
        )
    }

    /// Left join with `other` on a foreign key: as
    /// [`foreign_key_join`](Self::foreign_key_join), and a row whose foreign key is not in
    /// `other` yields `joiner(value, None)`.
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// // Employees (id -> team id) with their team's name, if the team exists.
    /// let builder = StreamsBuilder::new();
    /// let employees = builder.table::<String, String>("employees", Materialized::with(Utf8));
    /// let teams = builder.table::<String, String>("teams", Materialized::with(Utf8));
    /// employees
    ///     .foreign_key_left_join(
    ///         &teams,
    ///         |team_id| team_id.clone(),
    ///         |team_id, name| name.cloned().unwrap_or(format!("unknown team {team_id}")),
    ///         Materialized::with(Utf8),
    ///     )
    ///     .to("employee-teams");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// let (e, t) = (driver.input_topic("employees", Utf8, Utf8), driver.input_topic("teams", Utf8, Utf8));
    /// e.pipe_at("e1".to_string(), "t1".to_string(), 1)?;
    /// t.pipe_at("t1".to_string(), "Platform".to_string(), 2)?;
    /// let out = driver.output_topic::<String, Option<String>>("employee-teams", Utf8, Nullable(Utf8));
    /// assert_eq!(
    ///     out.read_values()?,
    ///     vec![Some("unknown team t1".to_string()), Some("Platform".to_string())]
    /// );
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn foreign_key_left_join<KO, VO, VR>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: impl Fn(&V) -> KO + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
        materialized: Materialized<VR>,
    ) -> KTable<K, VR>
    where
        KO: Clone + 'static,
        VO: Clone + 'static,
        VR: Clone + 'static,
    {
        let joiner: FkJoiner<V, VO, VR> = Arc::new(move |v, o| Some(joiner(v, o)));
        self.fk_join(
            other,
            Arc::new(foreign_key),
            joiner,
            materialized,
            "FK-LEFTJOIN",
        )
    }

    #[allow(clippy::type_complexity)]
    fn fk_join<KO: Clone + 'static, VO: Clone + 'static, VR: Clone + 'static>(
        &self,
        other: &KTable<KO, VO>,
        foreign_key: Arc<dyn Fn(&V) -> KO + Send + Sync>,
        joiner: FkJoiner<V, VO, VR>,
        materialized: Materialized<VR>,
        kind: &str,
    ) -> KTable<K, VR> {
        let (this, that) = (self.with_view(), other.with_view());
        let this_store = this.view.clone().expect("with_view gives a view");
        let that_store = that.view.clone().expect("with_view gives a view");
        let path = format!("{}({},{})", kind.to_lowercase(), this.path, that.path);
        let operator = format!("foreign-key join of {} and {}", this.node, that.node);
        let base = materialized.name.clone();
        let mut g = self.graph.borrow_mut();
        let mut named = |part: &str, generated: &str| {
            let explicit = base.as_ref().map(|b| format!("{b}-{part}"));
            g.state_name(
                generated,
                &format!("{path}/{part}"),
                explicit.as_deref(),
                &operator,
            )
        };
        let sub_topic = named(
            "subscription-registration",
            "FK-JOIN-SUBSCRIPTION-REGISTRATION",
        );
        let resp_topic = named("subscription-response", "FK-JOIN-SUBSCRIPTION-RESPONSE");
        let sub_store = named("subscription-store", "FK-JOIN-SUBSCRIPTION-STATE-STORE");
        // The timestamp of each foreign row, kept from the other table's changes (Kafka reads
        // it from its timestamped store; ours keep values only).
        let times_store = named("foreign-row-times", "FK-JOIN-FOREIGN-ROW-TIMES");
        let result_store = g.state_name(
            "FK-JOIN-RESULT-STORE",
            &format!("{path}/result"),
            materialized.name.as_deref(),
            &operator,
        );
        let node = |g: &mut crate::graph::Graph, what: &str| {
            g.node_name(&format!("KTABLE-{kind}-{what}"), &path, None)
        };
        let (send, receive, right, respond) = (
            node(&mut g, "SUBSCRIPTION-SEND"),
            node(&mut g, "SUBSCRIPTION-RECEIVE"),
            node(&mut g, "OTHER-CHANGE"),
            node(&mut g, "RESPONSE-JOIN"),
        );
        let (keys, values) = (this.keys.clone(), this.values.clone());
        let (fk_keys, fk_values) = (that.keys.clone(), that.values.clone());
        let subs: Arc<dyn Serde<Subscription<K>>> = Arc::new(SubscriptionSerde(keys.clone()));
        let resps: Arc<dyn Serde<Response<VO>>> = Arc::new(ResponseSerde(fk_values.clone()));

        // 1. This table's changes become subscriptions, keyed by foreign key.
        {
            let (fk, fk_keys, values) = (foreign_key.clone(), fk_keys.clone(), values.clone());
            g.topology.add_processor(
                &send,
                move || {
                    let (fk, fk_keys, values) = (fk.clone(), fk_keys.clone(), values.clone());
                    Op::<K, Change<V>, KO, Subscription<K>>::new(Box::new(
                        move |r: Record<K, Change<V>>, ctx| {
                            let (key, change, rest) = r.into_parts();
                            let new_fk = change.new.as_ref().map(|v| fk(v));
                            let old_fk = change.old.as_ref().map(|v| fk(v));
                            let bytes = |k: &KO| fk_keys.serialize("fk-join", k);
                            let mut send = |fk: KO, instruction, hash| {
                                let s = Subscription {
                                    instruction,
                                    hash,
                                    key: key.clone(),
                                };
                                ctx.forward(rest.clone().with_key(fk).with_value(s))
                            };
                            match (old_fk, new_fk) {
                                (old, Some(new)) => {
                                    if let Some(old) = old {
                                        if bytes(&old)? != bytes(&new)? {
                                            send(old, DELETE_NO_PROPAGATE, None)?;
                                        }
                                    }
                                    let h = value_hash(&*values, change.new.as_ref())?;
                                    send(new, PROPAGATE, h)
                                }
                                (Some(old), None) => send(old, DELETE_AND_PROPAGATE, None),
                                (None, None) => Ok(()),
                            }
                        },
                    ))
                },
                [this.node.as_str()],
            );
        }
        g.topology.add_repartition_topic(&sub_topic, None);
        g.topology.add_sink(
            &format!("{sub_topic}-sink"),
            Sink::new(sub_topic.clone(), fk_keys.clone(), subs.clone()),
            [send.as_str()],
        );
        let sub_source = format!("{sub_topic}-source");
        g.topology.add_source(
            &sub_source,
            Source::new([sub_topic.clone()], fk_keys.clone(), subs),
        );

        // 2. Beside the other table: subscriptions kept and answered; the other table's
        // changes answered to every subscriber.
        let combined: Arc<dyn Serde<CombinedKey<KO, K>>> =
            Arc::new(CombinedKeySerde(fk_keys.clone(), keys.clone()));
        {
            let (sub_store, that_store, times) =
                (sub_store.clone(), that_store.clone(), times_store.clone());
            g.topology.add_processor(
                &receive,
                move || {
                    let (sub_store, that_store, times) =
                        (sub_store.clone(), that_store.clone(), times.clone());
                    Op::<KO, Subscription<K>, K, Response<VO>>::new(Box::new(
                        move |r: Record<KO, Subscription<K>>,
                              ctx: &mut ProcessorContext<'_, K, Response<VO>>| {
                            let (fk, sub, rest) = r.into_parts();
                            let ck = CombinedKey { fk: fk.clone(), key: sub.key.clone() };
                            let store = ctx.state_store::<KeyValueStore<CombinedKey<KO, K>, Vec<u8>>>(&sub_store)?;
                            let response = match sub.instruction {
                                DELETE_NO_PROPAGATE => {
                                    store.delete(&ck)?;
                                    return Ok(());
                                }
                                DELETE_AND_PROPAGATE => {
                                    store.delete(&ck)?;
                                    Response { hash: None, value: None }
                                }
                                _ => {
                                    let h = sub.hash.map(|h| h.to_vec()).unwrap_or_default();
                                    store.put(&ck, &h)?;
                                    let value = that_store.get(ctx, &fk)?;
                                    // Answered at the larger of the subscription's time and
                                    // the foreign row's.
                                    if value.is_some() {
                                        let row = ctx.state_store::<KeyValueStore<KO, i64>>(&times)?.get(&fk)?;
                                        if let Some(t) = row.filter(|t| *t > rest.timestamp()) {
                                            let response = Response { hash: sub.hash, value };
                                            return ctx.forward(rest.with_key(sub.key).with_value(response).with_timestamp(t));
                                        }
                                    }
                                    Response { hash: sub.hash, value }
                                }
                            };
                            ctx.forward(rest.with_key(sub.key).with_value(response))
                        },
                    ))
                },
                [sub_source.as_str()],
            );
        }
        {
            let (sub_store, prefix, times) =
                (sub_store.clone(), fk_keys.clone(), times_store.clone());
            g.topology.add_processor(
                &right,
                move || {
                    let (sub_store, prefix, times) =
                        (sub_store.clone(), FkPrefix(prefix.clone()), times.clone());
                    Op::<KO, Change<VO>, K, Response<VO>>::new(Box::new(
                        move |r: Record<KO, Change<VO>>,
                              ctx: &mut ProcessorContext<'_, K, Response<VO>>| {
                            let (fk, change, rest) = r.into_parts();
                            let row_times = ctx.state_store::<KeyValueStore<KO, i64>>(&times)?;
                            if change.new.is_some() {
                                row_times.put(&fk, &rest.timestamp())?;
                            } else {
                                row_times.delete(&fk)?;
                            }
                            let store = ctx.state_store::<KeyValueStore<CombinedKey<KO, K>, Vec<u8>>>(&sub_store)?;
                            let mut subscribers = vec![];
                            for entry in store.prefix_scan(&fk, &prefix)? {
                                let (ck, h) = entry?;
                                subscribers.push((ck.key, <Hash>::try_from(h.as_slice()).ok()));
                            }
                            for (key, hash) in subscribers {
                                let response = Response { hash, value: change.new.clone() };
                                ctx.forward(rest.clone().with_key(key).with_value(response))?;
                            }
                            Ok(())
                        },
                    ))
                },
                [that.node.as_str()],
            );
        }
        let sub_store_builder = configure_store!(
            KeyValueStore::<CombinedKey<KO, K>, Vec<u8>>::builder(&sub_store, combined, RawBytes),
            materialized
        );
        g.topology
            .add_state_store(sub_store_builder, [receive.as_str(), right.as_str()]);
        let times_builder = configure_store!(
            KeyValueStore::<KO, i64>::builder(&times_store, fk_keys.clone(), BigEndian),
            materialized
        );
        g.topology
            .add_state_store(times_builder, [receive.as_str(), right.as_str()]);
        g.topology.connect_processor_and_state_stores(
            &receive,
            that_store.stores.iter().map(String::as_str),
        );
        g.topology.add_repartition_topic(&resp_topic, None);
        g.topology.add_sink(
            &format!("{resp_topic}-sink"),
            Sink::new(resp_topic.clone(), keys.clone(), resps.clone()),
            [receive.as_str(), right.as_str()],
        );
        let resp_source = format!("{resp_topic}-source");
        g.topology.add_source(
            &resp_source,
            Source::new([resp_topic.clone()], keys.clone(), resps),
        );

        // 3. Beside this table: responses to the row's current value joined; results kept.
        {
            let (this_store, result, values) =
                (this_store.clone(), result_store.clone(), values.clone());
            g.topology.add_processor(
                &respond,
                move || {
                    let (this_store, result, values, joiner) =
                        (this_store.clone(), result.clone(), values.clone(), joiner.clone());
                    Op::<K, Response<VO>, K, Change<VR>>::new(Box::new(
                        move |r: Record<K, Response<VO>>,
                              ctx: &mut ProcessorContext<'_, K, Change<VR>>| {
                            let (key, response, rest) = r.into_parts();
                            let current = this_store.get(ctx, &key)?;
                            if value_hash(&*values, current.as_ref())? != response.hash {
                                tracing::trace!("foreign-key join: dropping a response to an older version of a row");
                                return Ok(());
                            }
                            let new = match &current {
                                Some(v) => joiner(v, response.value.as_ref()),
                                None => None,
                            };
                            let store = ctx.state_store::<KeyValueStore<K, VR>>(&result)?;
                            let old = store.get(&key)?;
                            match &new {
                                Some(v) => store.put(&key, v)?,
                                None if old.is_none() => return Ok(()),
                                None => {
                                    store.delete(&key)?;
                                }
                            }
                            ctx.forward(rest.with_key(key).with_value(Change { new, old }))
                        },
                    ))
                },
                [resp_source.as_str()],
            );
        }
        g.topology.connect_processor_and_state_stores(
            &respond,
            this_store.stores.iter().map(String::as_str),
        );
        let result_builder = configure_store!(
            KeyValueStore::<K, VR>::builder(
                &result_store,
                keys.clone(),
                materialized.values.clone()
            ),
            materialized
        );
        g.topology
            .add_state_store(result_builder, [respond.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node: respond,
            path,
            view: Some(TableView::plain(&result_store)),
            store: Some(result_store),
            keys,
            values: materialized.values,
        }
    }
}
