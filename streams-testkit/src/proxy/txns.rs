//! The consumed offsets that transactions carry (`TxnOffsetCommit`), kept by the proxy and
//! committed to their group when their transaction commits, as Kafka's coordinators do.
//!
//! nisshi 0.7.0 stores a transaction's offsets with the transaction and applies them when it
//! ends, but only if no other producer's transaction that wrote to one of the same partitions
//! is still open. Otherwise it answers the commit with success and keeps the offsets in the
//! producer's transaction state, where the producer's next transaction inherits them: they are
//! applied whenever a later end finds no such transaction open (in the order of the
//! transactional ids' names, so an older commit can overwrite a newer one), or dropped when
//! that next transaction aborts (a restarted instance's initialisation aborts it). The
//! transaction's records are committed all the same, so an application's committed output
//! then says the input was processed while its group's offsets say it was not, and the input is
//! processed again (docs/BROKER.md).
//!
//! The proxy therefore keeps the offsets itself:
//!
//! - **TxnOffsetCommit**: forwarded with the group renamed ([`held_group`]), so that nisshi's own
//!   late application lands in a group nobody reads; the producer-id and epoch checks still run
//!   on the broker. The offsets the broker accepted are held per transactional id. A commit
//!   from a generation older than the newest one the proxy has seen the group form is answered
//!   `ILLEGAL_GENERATION` and not held (Kafka fences such zombies, KIP-447; nisshi does not
//!   check).
//! - **EndTxn**: once the broker answers a commit with success, the held offsets are committed
//!   to the group (an `OffsetCommit` of the proxy's own, with the member's identity from the
//!   `TxnOffsetCommit`, or the newest member's when that generation has passed), before the
//!   client gets the answer. An abort drops them.
//! - **InitProducerId** with a transactional id: the previous producer's open transaction is
//!   over (aborted); its held offsets are dropped.
//! - **JoinGroup**: the newest generation of each group, and a member of it.
//!
//! A transactional Produce request whose batches carry an epoch older than the newest one the
//! proxy has seen its producer id get (InitProducerId responses) is answered
//! `INVALID_PRODUCER_EPOCH` without reaching the broker: Kafka fences such a zombie's late
//! writes, nisshi 0.7.0 accepts them and opens a transaction that nothing ends.
//!
//! It also ends transactions left open longer than their `transaction.timeout.ms`, as Kafka's
//! transaction coordinator does (nisshi's memory engine never does): a transaction is open from
//! its first `AddPartitionsToTxn` or `AddOffsetsToTxn` until its `EndTxn` or the next
//! `InitProducerId` of its transactional id succeeds. When it outlives its timeout (from the
//! producer's `InitProducerId`, 60 s when the proxy did not see it), the proxy sends an
//! `InitProducerId` of its own for that transactional id: the broker aborts the transaction and
//! bumps the epoch, which fences the producer, as Kafka's abort on timeout does.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, EndTxnResponse,
    GroupId, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest, JoinGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, RequestHeader, ResponseHeader, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, Encodable, StrBytes};

use super::Shared;

/// What nisshi's own copy of a group's transactional offsets is stored under.
pub fn held_group(group: &str) -> String {
    format!("{group}.kstreams-proxy-held")
}

/// The OffsetCommit version the proxy commits with (flexible, with group instance ids).
const OFFSET_COMMIT_VERSION: i16 = 8;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const FENCED_INSTANCE_ID: i16 = 82;

/// A group member's identity, as an offset commit carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    generation_id: i32,
    member_id: StrBytes,
    group_instance_id: Option<StrBytes>,
}

/// One partition's offset.
#[derive(Debug, Clone)]
struct HeldOffset {
    offset: i64,
    leader_epoch: i32,
    metadata: Option<StrBytes>,
}

/// The offsets of one group that an open transaction carries.
#[derive(Debug, Clone)]
struct GroupOffsets {
    member: Member,
    offsets: BTreeMap<(StrBytes, i32), HeldOffset>,
}

/// The offsets one producer (id, epoch) sent to its open transaction, per group.
#[derive(Debug)]
struct Held {
    producer: (i64, i16),
    groups: BTreeMap<String, GroupOffsets>,
}

/// What the proxy knows of transactions and groups.
#[derive(Debug, Default)]
pub(super) struct Transactions {
    /// Offsets held per transactional id: the producer id and epoch that sent them, then per
    /// group.
    held: HashMap<String, Held>,
    /// The newest generation each group formed, and a member of it.
    newest: HashMap<String, Member>,
    /// Each transactional id's transaction timeout, from its producer's InitProducerId.
    timeouts: HashMap<String, Duration>,
    /// Since when each open transaction is open.
    open_since: HashMap<String, Instant>,
    /// The newest epoch of each transactional producer id.
    epochs: HashMap<i64, i16>,
}

/// The timeout of a transaction whose producer's InitProducerId the proxy did not see (Kafka's
/// default `transaction.timeout.ms`).
const DEFAULT_TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// The InitProducerId version the proxy ends timed-out transactions with.
const INIT_PRODUCER_ID_VERSION: i16 = 3;

/// A request whose response the transaction tracking needs.
/// The broker's answer to an EndTxn the proxy sent itself.
type EndOutcome = tokio::sync::oneshot::Receiver<anyhow::Result<EndTxnResponse>>;

#[derive(Debug)]
pub(super) enum TxnRequest {
    Offsets(TxnOffsetCommitRequest),
    /// An EndTxn, sent to the broker by the proxy on a connection of its own (an ApiVersions
    /// request went in its place): its outcome is acted on even when the client's connection
    /// is cut meanwhile, and the client gets the broker's answer when it is there.
    End(tokio::sync::Mutex<Option<EndOutcome>>),
    Init(InitProducerIdRequest),
    Join(JoinGroupRequest),
    /// A Produce request from a fenced epoch, not forwarded (an ApiVersions request went in its
    /// place): every partition is answered `INVALID_PRODUCER_EPOCH`.
    FencedProduce(Vec<(TopicName, Vec<i32>)>),
}

const INVALID_PRODUCER_EPOCH: i16 = 47;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

/// The partitions of a transactional Produce request whose batches come from an epoch older
/// than their producer's newest, if any does.
pub(super) fn fenced_produce(
    shared: &Shared,
    req: &kafka_protocol::messages::ProduceRequest,
) -> Option<Vec<(TopicName, Vec<i32>)>> {
    req.transactional_id.as_ref()?;
    let txns = lock(shared);
    let stale = req.topic_data.iter().any(|t| {
        t.partition_data.iter().any(|p| {
            p.records.as_deref().is_some_and(|r| {
                super::batches::parse(r).iter().any(|b| {
                    txns.epochs
                        .get(&b.producer_id)
                        .is_some_and(|newest| b.producer_epoch < *newest)
                })
            })
        })
    });
    if !stale {
        return None;
    }
    shared
        .stats
        .stale_produce_fenced
        .fetch_add(1, Ordering::Relaxed);
    Some(
        req.topic_data
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.partition_data.iter().map(|p| p.index).collect(),
                )
            })
            .collect(),
    )
}

/// The answer to a fenced Produce request (see [`fenced_produce`]).
pub(super) fn fenced_produce_response(
    correlation_id: i32,
    version: i16,
    partitions: &[(TopicName, Vec<i32>)],
) -> anyhow::Result<BytesMut> {
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::ProduceResponse;
    let resp = ProduceResponse::default().with_responses(
        partitions
            .iter()
            .map(|(name, parts)| {
                TopicProduceResponse::default()
                    .with_name(name.clone())
                    .with_partition_responses(
                        parts
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(*p)
                                    .with_error_code(INVALID_PRODUCER_EPOCH)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut out = BytesMut::new();
    header.encode(&mut out, ApiKey::Produce.response_header_version(version))?;
    resp.encode(&mut out, version)?;
    Ok(out)
}

/// An ApiVersions request (version 0) with `correlation_id`: what goes to the broker in place
/// of a request the proxy answers itself, so that responses keep their order.
pub(super) fn placeholder_request(correlation_id: i32) -> anyhow::Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(0)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("kstreams-txn-proxy")));
    let mut out = BytesMut::new();
    encode_request_header_into_buffer(&mut out, &header)?;
    Ok(out)
}

/// Looks at a request; returns what its response needs, and the request to forward instead
/// (header and body, no length prefix) when it must change.
pub(super) fn inspect_request(
    shared: &Arc<Shared>,
    header: &RequestHeader,
    body: &mut Bytes,
) -> anyhow::Result<Option<(TxnRequest, Option<BytesMut>)>> {
    let version = header.request_api_version;
    let Ok(api_key) = ApiKey::try_from(header.request_api_key) else {
        return Ok(None);
    };
    Ok(Some(match api_key {
        ApiKey::TxnOffsetCommit => {
            let req = TxnOffsetCommitRequest::decode(body, version)?;
            let mut forwarded = req.clone();
            forwarded.group_id = GroupId(StrBytes::from_string(held_group(&req.group_id)));
            let mut out = BytesMut::new();
            encode_request_header_into_buffer(&mut out, header)?;
            forwarded.encode(&mut out, version)?;
            (TxnRequest::Offsets(req), Some(out))
        }
        ApiKey::EndTxn => {
            let req = EndTxnRequest::decode(body, version)?;
            // Ending: the transaction timeout no longer applies (Kafka's coordinator does not
            // abort a transaction whose end it has received).
            lock(shared)
                .open_since
                .remove(req.transactional_id.as_str());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = tx.send(end_transaction(&shared, req, version).await);
            });
            let placeholder = placeholder_request(header.correlation_id)?;
            (
                TxnRequest::End(tokio::sync::Mutex::new(Some(rx))),
                Some(placeholder),
            )
        }
        ApiKey::InitProducerId => {
            let req = InitProducerIdRequest::decode(body, version)?;
            let Some(id) = &req.transactional_id else {
                return Ok(None);
            };
            let timeout = Duration::from_millis(req.transaction_timeout_ms.max(0) as u64);
            lock(shared).timeouts.insert(id.to_string(), timeout);
            (TxnRequest::Init(req), None)
        }
        ApiKey::AddPartitionsToTxn | ApiKey::AddOffsetsToTxn => {
            let ids: Vec<String> = if api_key == ApiKey::AddOffsetsToTxn {
                vec![AddOffsetsToTxnRequest::decode(body, version)?
                    .transactional_id
                    .to_string()]
            } else {
                let req = AddPartitionsToTxnRequest::decode(body, version)?;
                if version <= 3 {
                    vec![req.v3_and_below_transactional_id.to_string()]
                } else {
                    req.transactions
                        .iter()
                        .map(|t| t.transactional_id.to_string())
                        .collect()
                }
            };
            let mut txns = lock(shared);
            for id in ids {
                txns.open_since.entry(id).or_insert_with(Instant::now);
            }
            return Ok(None);
        }
        ApiKey::JoinGroup => (
            TxnRequest::Join(JoinGroupRequest::decode(body, version)?),
            None,
        ),
        _ => return Ok(None),
    }))
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Transactions> {
    shared.txns.lock().unwrap_or_else(|e| e.into_inner())
}

/// Acts on the response (header included) to `request`; returns a new response body (header
/// included) when it must change.
pub(super) async fn on_response(
    shared: &std::sync::Arc<Shared>,
    request: &TxnRequest,
    api_key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> anyhow::Result<Option<BytesMut>> {
    if let TxnRequest::FencedProduce(partitions) = request {
        let correlation_id = (&body[..4]).get_i32();
        return fenced_produce_response(correlation_id, version, partitions).map(Some);
    }
    if let TxnRequest::End(outcome) = request {
        // The body is the placeholder's answer; the client gets the broker's answer to its
        // EndTxn, or a retriable error when the proxy could not learn it.
        let correlation_id = (&body[..4]).get_i32();
        let outcome = outcome.lock().await.take();
        let resp = match outcome {
            Some(rx) => match rx.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    tracing::warn!("the proxy's EndTxn failed: {e:#}");
                    EndTxnResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE)
                }
                Err(_) => EndTxnResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE),
            },
            None => EndTxnResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE),
        };
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let mut out = BytesMut::new();
        header.encode(&mut out, ApiKey::EndTxn.response_header_version(version))?;
        resp.encode(&mut out, version)?;
        return Ok(Some(out));
    }
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::decode(&mut body, header_version).context("header")?;
    match request {
        TxnRequest::FencedProduce(_) | TxnRequest::End(_) => unreachable!("answered above"),
        TxnRequest::Offsets(req) => {
            let mut resp = TxnOffsetCommitResponse::decode(&mut body, version)?;
            let member = Member {
                generation_id: req.generation_id,
                member_id: req.member_id.clone(),
                group_instance_id: req.group_instance_id.clone(),
            };
            let mut txns = lock(shared);
            let stale = txns
                .newest
                .get(req.group_id.as_str())
                .is_some_and(|newest| {
                    req.generation_id >= 0 && req.generation_id < newest.generation_id
                });
            if stale {
                // A member of a generation that has passed: fenced, as Kafka fences it.
                for t in &mut resp.topics {
                    for p in &mut t.partitions {
                        p.error_code = ILLEGAL_GENERATION;
                    }
                }
                shared
                    .stats
                    .txn_offsets_fenced
                    .fetch_add(1, Ordering::Relaxed);
                let mut out = BytesMut::new();
                header.encode(&mut out, header_version)?;
                resp.encode(&mut out, version)?;
                return Ok(Some(out));
            }
            let producer = (req.producer_id.0, req.producer_epoch);
            let entry = txns
                .held
                .entry(req.transactional_id.to_string())
                .or_insert_with(|| Held {
                    producer,
                    groups: BTreeMap::new(),
                });
            if entry.producer != producer {
                // Another producer's (an older epoch's) offsets: their transaction is over.
                *entry = Held {
                    producer,
                    groups: BTreeMap::new(),
                };
            }
            let held = entry
                .groups
                .entry(req.group_id.to_string())
                .or_insert_with(|| GroupOffsets {
                    member: member.clone(),
                    offsets: BTreeMap::new(),
                });
            held.member = member;
            for topic in &req.topics {
                let accepted = resp.topics.iter().find(|t| t.name == topic.name);
                for p in &topic.partitions {
                    let ok = accepted
                        .and_then(|t| {
                            t.partitions
                                .iter()
                                .find(|r| r.partition_index == p.partition_index)
                        })
                        .is_some_and(|r| r.error_code == 0);
                    if ok {
                        held.offsets.insert(
                            (topic.name.0.clone(), p.partition_index),
                            HeldOffset {
                                offset: p.committed_offset,
                                leader_epoch: p.committed_leader_epoch,
                                metadata: p.committed_metadata.clone(),
                            },
                        );
                    }
                }
            }
            Ok(None)
        }
        TxnRequest::Init(req) => {
            let resp = InitProducerIdResponse::decode(&mut body, version)?;
            if resp.error_code == 0 {
                if let Some(id) = &req.transactional_id {
                    let mut txns = lock(shared);
                    txns.epochs.insert(resp.producer_id.0, resp.producer_epoch);
                    txns.held.remove(id.as_str());
                    txns.open_since.remove(id.as_str());
                }
            }
            Ok(None)
        }
        TxnRequest::Join(req) => {
            let resp = JoinGroupResponse::decode(&mut body, version)?;
            if resp.error_code == 0 {
                let mut txns = lock(shared);
                let newest = txns.newest.entry(req.group_id.to_string());
                let member = Member {
                    generation_id: resp.generation_id,
                    member_id: resp.member_id.clone(),
                    group_instance_id: req.group_instance_id.clone(),
                };
                match newest {
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        if o.get().generation_id <= resp.generation_id {
                            o.insert(member);
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(member);
                    }
                }
            }
            Ok(None)
        }
    }
}

/// Sends the client's EndTxn to the broker on a connection of the proxy's own and acts on the
/// answer: a commit's held offsets (of the same producer id and epoch) are committed to their
/// groups, an abort's dropped. Runs to its end whatever happens to the client's connection.
async fn end_transaction(
    shared: &Arc<Shared>,
    req: EndTxnRequest,
    version: i16,
) -> anyhow::Result<EndTxnResponse> {
    let mut body = super::side_request(shared, ApiKey::EndTxn, version, |out| {
        req.encode(out, version)
    })
    .await?;
    let resp = EndTxnResponse::decode(&mut body, version)?;
    if resp.error_code != 0 {
        return Ok(resp); // the transaction is still open: the client retries or aborts
    }
    let held = {
        let mut txns = lock(shared);
        txns.open_since.remove(req.transactional_id.as_str());
        txns.held.remove(req.transactional_id.as_str())
    };
    let producer = (req.producer_id.0, req.producer_epoch);
    if let Some(held) = held.filter(|h| req.committed && h.producer == producer) {
        for (group, offsets) in held.groups {
            if let Err(e) = commit_to_group(shared, &group, offsets).await {
                shared
                    .stats
                    .txn_offset_commit_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(transactional_id = %req.transactional_id.as_str(), group, "the proxy could not commit a committed transaction's offsets: {e:#}");
            }
        }
    }
    Ok(resp)
}

/// Commits a committed transaction's offsets to `group`: as the member that sent them, or, when
/// that member's generation has passed, as the newest member the proxy knows or as nobody (a
/// group without members) (Kafka applies a transaction's offsets whatever happened to the group
/// since they were accepted). Tries again for a few seconds while the group is rebalancing or
/// the broker is away.
async fn commit_to_group(
    shared: &Shared,
    group: &str,
    offsets: GroupOffsets,
) -> anyhow::Result<()> {
    let mut member = offsets.member.clone();
    let mut last_error = String::new();
    for _ in 0..50 {
        let mut topics: BTreeMap<StrBytes, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), o) in &offsets.offsets {
            topics.entry(topic.clone()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(o.offset)
                    .with_committed_leader_epoch(o.leader_epoch)
                    .with_committed_metadata(o.metadata.clone()),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(member.generation_id)
            .with_member_id(member.member_id.clone())
            .with_group_instance_id(member.group_instance_id.clone())
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(name))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let result =
            super::side_request(shared, ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, |out| {
                request.encode(out, OFFSET_COMMIT_VERSION)
            })
            .await
            .and_then(|mut body| OffsetCommitResponse::decode(&mut body, OFFSET_COMMIT_VERSION));
        let error = match result {
            Ok(resp) => resp
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.error_code)
                .find(|e| *e != 0),
            Err(e) => {
                last_error = format!("{e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match error {
            None => {
                shared
                    .stats
                    .txn_offsets_committed
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Some(ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID) => {
                // The member's generation has passed (it may have been thrown out while the
                // broker was away): commit as the group's newest member, or, when the group
                // has no members (then only a commit without a member is accepted), as nobody.
                last_error = format!("error code {}", error.unwrap_or_default());
                let anonymous = Member {
                    generation_id: -1,
                    member_id: StrBytes::from_static_str(""),
                    group_instance_id: None,
                };
                let newest = lock(shared).newest.get(group).cloned();
                member = match newest {
                    Some(newest) if newest != member && member != anonymous => newest,
                    _ if member != anonymous => anonymous,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        offsets.member.clone()
                    }
                };
            }
            Some(REBALANCE_IN_PROGRESS) | Some(_) => {
                last_error = format!("error code {}", error.unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    anyhow::bail!("gave up after 5 s: {last_error}")
}

/// Ends every transaction open longer than its timeout (see the module's documentation); runs
/// for the proxy's lifetime.
pub(super) async fn expire_transactions(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expired: Vec<(String, Duration)> = {
            let mut txns = lock(&shared);
            let now = Instant::now();
            let expired: Vec<(String, Duration)> = txns
                .open_since
                .iter()
                .map(|(id, since)| {
                    let timeout = txns
                        .timeouts
                        .get(id)
                        .copied()
                        .unwrap_or(DEFAULT_TXN_TIMEOUT);
                    (id.clone(), *since, timeout)
                })
                .filter(|(_, since, timeout)| now.duration_since(*since) > *timeout)
                .map(|(id, _, timeout)| (id, timeout))
                .collect();
            for (id, _) in &expired {
                txns.open_since.remove(id);
            }
            expired
        };
        for (id, timeout) in expired {
            match abort_by_init(&shared, &id, timeout).await {
                Ok(()) => {
                    lock(&shared).held.remove(&id);
                    shared.stats.txns_timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(transactional_id = %id, ?timeout, "the proxy aborted a transaction open longer than its timeout");
                }
                Err(e) => {
                    // Tried again in a second.
                    tracing::warn!(transactional_id = %id, "the proxy could not end a timed-out transaction: {e:#}");
                    let retry_at = Instant::now()
                        .checked_sub(timeout.saturating_sub(Duration::from_secs(1)))
                        .unwrap_or_else(Instant::now);
                    lock(&shared).open_since.entry(id).or_insert(retry_at);
                }
            }
        }
    }
}

/// An InitProducerId for `transactional_id`: the broker aborts its open transaction and bumps
/// its epoch.
async fn abort_by_init(
    shared: &Shared,
    transactional_id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(kafka_protocol::messages::TransactionalId(
            StrBytes::from_string(transactional_id.to_string()),
        )))
        .with_transaction_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    let mut body = super::side_request(
        shared,
        ApiKey::InitProducerId,
        INIT_PRODUCER_ID_VERSION,
        |out| request.encode(out, INIT_PRODUCER_ID_VERSION),
    )
    .await?;
    let resp = InitProducerIdResponse::decode(&mut body, INIT_PRODUCER_ID_VERSION)?;
    if resp.error_code != 0 {
        anyhow::bail!("InitProducerId: error code {}", resp.error_code);
    }
    lock(shared)
        .epochs
        .insert(resp.producer_id.0, resp.producer_epoch);
    Ok(())
}
