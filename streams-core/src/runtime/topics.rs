//! Start-up checks of source topics and creation of internal topics.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::StreamsConfig;
use crate::topology::Topology;
use crate::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The admin client and what its errors should say.
struct Admin<'a> {
    client: AdminClient<DefaultClientContext>,
    config: &'a StreamsConfig,
}

impl std::ops::Deref for Admin<'_> {
    type Target = AdminClient<DefaultClientContext>;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

/// The partition count of `topic`, `None` when it does not exist. A cluster that does not
/// answer within the client timeout is an error naming the bootstrap servers.
fn partition_count(admin: &Admin<'_>, topic: &str) -> Result<Option<i32>> {
    let timeout = admin.config.client_timeout;
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| {
            Error::kafka(
                format!(
                    "no answer from the Kafka cluster at {} within {timeout:?} (metadata of topic {topic}); check bootstrap_servers and that the brokers run",
                    admin.config.bootstrap_servers
                ),
                e,
            )
        })?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

fn create(admin: &Admin<'_>, new: NewTopic<'_>, topic: &str, partitions: i32) -> Result<()> {
    let results = futures::executor::block_on(admin.create_topics(
        &[new],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .map_err(|e| Error::kafka(format!("create {topic}"), e))?;
    for r in results {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(Error::Config(format!(
                    "creating internal topic {t} failed: {code}"
                )));
            }
        }
    }
    await_partitions(topic, partitions, admin.config.client_timeout, || {
        partition_count(admin, topic)
    })
}

/// Waits until the metadata shows `topic` with `partitions` partitions. Kafka answers
/// CreateTopics once its controller has the topic; the broker that answers Metadata learns of
/// it a moment later, and meanwhile says it does not exist (Kafka Streams' internal topic
/// manager waits the same way). A topic seen with another partition count is an error at once.
fn await_partitions(
    topic: &str,
    partitions: i32,
    timeout: Duration,
    mut partition_count: impl FnMut() -> Result<Option<i32>>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let have = partition_count()?;
        if have == Some(partitions) {
            return Ok(());
        }
        if have.is_some() || std::time::Instant::now() + backoff > deadline {
            return Err(Error::Config(format!(
                "internal topic {topic} has {have:?} partitions after creation, not {partitions}"
            )));
        }
        std::thread::sleep(backoff); // the broker's metadata catching up: nothing to wait on
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Checks that source topics exist and co-partitioned topics agree, and creates the
/// repartition topics with their partition counts.
pub(crate) fn prepare(
    topology: &Topology,
    config: &StreamsConfig,
) -> Result<BTreeMap<String, i32>> {
    let app = &config.application_id;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        // A metadata request must not create the topic it asks about (with the broker's default
        // partition count) before the runtime creates it with the right one.
        .set("allow.auto.create.topics", "false");
    for (k, v) in &config.client_properties {
        c.set(k, v);
    }
    let admin = Admin {
        client: c
            .create()
            .map_err(|e| Error::kafka("create admin client", e))?,
        config,
    };
    let internal = topology.repartition_topics();
    let mut counts: BTreeMap<String, i32> = BTreeMap::new();
    for st in topology.subtopologies() {
        for t in st
            .source_topics
            .iter()
            .filter(|t| !internal.contains_key(*t))
        {
            match partition_count(&admin, t)? {
                Some(n) => {
                    counts.insert(t.clone(), n);
                }
                None => {
                    return Err(Error::Config(format!(
                        "source topic {t} does not exist; create it before starting the application"
                    )))
                }
            }
        }
    }
    // Repartition topics: explicit counts, else the largest source count of their writers,
    // repeated until every count is known (a writer may read another repartition topic).
    let mut wanted: BTreeMap<String, i32> = internal
        .iter()
        .filter_map(|(name, n)| n.map(|n| (name.clone(), n)))
        .collect();
    loop {
        let mut progress = false;
        let unknown: Vec<String> = internal
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in &unknown {
            // Read together with topics of known counts (a join): theirs, so that the
            // sub-topology's topics are co-partitioned.
            let siblings: Vec<i32> = topology
                .subtopologies()
                .iter()
                .filter(|s| s.source_topics.contains(name))
                .flat_map(|s| s.source_topics.iter())
                .filter(|t| *t != name)
                .filter_map(|t| counts.get(t).or_else(|| wanted.get(t)).copied())
                .collect();
            if let Some(&n) = siblings.iter().max() {
                wanted.insert(name.clone(), n);
                progress = true;
                continue;
            }
            let writers: Vec<_> = topology
                .subtopologies()
                .iter()
                .filter(|s| s.sink_topics.contains(name))
                .collect();
            let known: Option<Vec<i32>> = writers
                .iter()
                .flat_map(|s| s.source_topics.iter())
                .map(|t| counts.get(t).or_else(|| wanted.get(t)).copied())
                .collect();
            if let Some(n) = known.and_then(|k| k.into_iter().max()) {
                wanted.insert(name.clone(), n);
                progress = true;
            }
        }
        if wanted.len() == internal.len() {
            break;
        }
        if !progress {
            let missing: Vec<&String> = internal
                .keys()
                .filter(|n| !wanted.contains_key(*n))
                .collect();
            return Err(Error::Config(format!(
                "cannot work out the partition count of repartition topics {missing:?}; give it in add_repartition_topic"
            )));
        }
    }
    // Co-partitioning, checked before any topic is created: every source of one
    // sub-topology has the same count.
    for st in topology.subtopologies() {
        let per: Vec<(String, i32)> = st
            .source_topics
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    counts
                        .get(t)
                        .or_else(|| wanted.get(t))
                        .copied()
                        .unwrap_or(0),
                )
            })
            .collect();
        if per.windows(2).any(|w| w[0].1 != w[1].1) {
            let list: Vec<String> = per.iter().map(|(t, n)| format!("{t} ({n})")).collect();
            return Err(Error::Config(format!(
                "sub-topology {} reads topics with different partition counts: {}; topics processed together must be co-partitioned (equal counts)",
                st.id,
                list.join(", ")
            )));
        }
    }
    for (name, n) in &wanted {
        let topic = topology.resolve_topic(app, name);
        match partition_count(&admin, &topic)? {
            Some(have) if have == *n => {}
            Some(have) => {
                return Err(Error::Config(format!(
                    "internal topic {topic} has {have} partitions but the topology needs {n}"
                )))
            }
            None => {
                let new = NewTopic::new(
                    &topic,
                    *n,
                    TopicReplication::Fixed(config.replication_factor),
                )
                // As Kafka Streams' RepartitionTopicConfig: no deletion by time (records wait
                // for the application however long it is stopped; the stream threads delete
                // what the group committed past, `purge.rs`), segments of 50 MiB (deletion
                // frees whole segments), the producers' timestamps.
                .set("cleanup.policy", "delete")
                .set("retention.ms", "-1")
                .set("segment.bytes", "52428800")
                .set("message.timestamp.type", "CreateTime");
                create(&admin, new, &topic, *n)?;
                tracing::info!(topic = %topic, partitions = n, "created internal topic");
            }
        }
        counts.insert(name.clone(), *n);
    }
    // Changelog topics: one per logged store, with as many partitions as its sub-topology's
    // sources.
    for st in topology.subtopologies() {
        let n = st
            .source_topics
            .iter()
            .filter_map(|t| counts.get(t))
            .copied()
            .max()
            .unwrap_or(1);
        for builder in topology
            .store_builders()
            .iter()
            .filter(|b| st.stores.iter().any(|s| s == b.name()))
        {
            let Some(configs) = builder.changelog_configs() else {
                continue;
            };
            let topic = crate::store::changelog_topic(app, builder.name());
            match partition_count(&admin, &topic)? {
                Some(have) if have == n => {}
                Some(have) => {
                    return Err(Error::Config(format!(
                        "changelog topic {topic} has {have} partitions but store {} needs {n} (one per input partition)",
                        builder.name()
                    )))
                }
                None => {
                    let mut new = NewTopic::new(&topic, n, TopicReplication::Fixed(config.replication_factor));
                    for (k, v) in &configs {
                        new = new.set(k, v);
                    }
                    create(&admin, new, &topic, n)?;
                    tracing::info!(topic = %topic, partitions = n, "created changelog topic");
                }
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_topic_is_awaited_until_the_metadata_shows_it() {
        let mut answers = vec![None, None, Some(2)].into_iter();
        let mut asked = 0;
        await_partitions("t", 2, Duration::from_secs(5), || {
            asked += 1;
            Ok(answers.next().unwrap())
        })
        .unwrap();
        assert_eq!(asked, 3);
    }

    #[test]
    fn a_created_topic_that_never_shows_is_an_error_after_the_timeout() {
        let e = await_partitions("t", 2, Duration::from_millis(100), || Ok(None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("internal topic t has None partitions"),
            "{e}"
        );
    }

    #[test]
    fn a_created_topic_with_another_count_is_an_error_at_once() {
        let mut asked = 0;
        let e = await_partitions("t", 2, Duration::from_secs(60), || {
            asked += 1;
            Ok(Some(3))
        })
        .unwrap_err();
        assert!(e.to_string().contains("has Some(3) partitions"), "{e}");
        assert_eq!(asked, 1);
    }
}
