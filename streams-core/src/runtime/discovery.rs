//! Which instance holds which task, from the group coordinator's description of the
//! application's consumer group (`docs/adr/0011-instance-discovery-for-queries-and-standbys.md`).
//!
//! Every stream thread's consumer carries its instance's advertised HTTP address in its client
//! id (`<thread>-consumer@<host:port>`), and the coordinator's member ids begin with the client
//! id. The runtime pins librdkafka's `range` assignor, which is deterministic: partition `p` of
//! an `n`-partition topic goes to the member at the position the members' ids sort to, `n / m`
//! partitions each, the first `n % m` members one more. So the member list alone tells every
//! instance the same placement (nisshi, the project's fallback test broker, does not return the
//! assignments themselves; Kafka does).

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::{Error, Result};

/// The separator before the advertised address in a consumer's client id.
const ADDRESS_MARK: char = '@';
/// What stands between a thread's consumer name and its instance id in the client id.
const INSTANCE_MARK: &str = "-consumer:";

/// The client id of a stream thread's consumer: `<thread>-consumer:<instance id>`, then
/// `@<host:port>` when the instance advertises an HTTP address.
pub(crate) fn consumer_client_id(thread: &str, instance: &str, advertised: Option<&str>) -> String {
    match advertised {
        Some(a) => format!("{thread}{INSTANCE_MARK}{instance}{ADDRESS_MARK}{a}"),
        None => format!("{thread}{INSTANCE_MARK}{instance}"),
    }
}

/// One member of the group, as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct GroupMember {
    /// The member id the coordinator gave it (`<client id>-<uuid>`).
    pub member_id: String,
    /// Its client id (empty when the coordinator leaves it out).
    pub client_id: String,
}

impl GroupMember {
    /// The HTTP address the member's instance advertises, if it advertises one: from the client
    /// id, or from the member id, which begins with the client id.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn address(&self) -> Option<&str> {
        self.id()?
            .rsplit_once(ADDRESS_MARK)
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty())
    }

    /// The id of the member's instance (one per `KafkaStreams`, however many threads).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn instance(&self) -> Option<&str> {
        let id = self.id()?;
        let id = id
            .rsplit_once(ADDRESS_MARK)
            .map_or(id, |(before, _)| before);
        id.rsplit_once(INSTANCE_MARK)
            .map(|(_, i)| i)
            .filter(|i| !i.is_empty())
    }

    /// The client id, or, when the coordinator leaves it out, the member id without its
    /// `-<uuid>` suffix (a member id begins with the client id).
    fn id(&self) -> Option<&str> {
        if self.client_id.is_empty() {
            let cut = self.member_id.len().checked_sub(37)?;
            self.member_id.get(..cut)
        } else {
            Some(&self.client_id)
        }
    }
}

/// The coordinator's description of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct GroupView {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
    pub state: String,
    /// Its members, sorted by member id.
    pub members: Vec<GroupMember>,
}

impl GroupView {
    /// Whether the group is between rebalances (its assignments are the current ones).
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn is_stable(&self) -> bool {
        self.state == "Stable"
    }

    /// The group's instances, by id (one per `KafkaStreams`, however many threads it runs).
    pub(crate) fn instances(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.members.iter().filter_map(|m| m.instance()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The instances that keep standbys of the task on partition `partition` (of a topic of
    /// `partitions` partitions): the `replicas` instances after its active instance in the
    /// ring of instance ids, never the active one. Every instance computes the same from the
    /// same member list.
    pub(crate) fn standby_instances(
        &self,
        partitions: i32,
        partition: i32,
        replicas: usize,
    ) -> Vec<&str> {
        let Some(active) = self
            .range_owner(partitions, partition)
            .and_then(GroupMember::instance)
        else {
            return vec![];
        };
        let ring = self.instances();
        let Some(at) = ring.iter().position(|i| *i == active) else {
            return vec![];
        };
        (1..ring.len())
            .take(replicas)
            .map(|step| ring[(at + step) % ring.len()])
            .collect()
    }

    /// The member the range assignor gives partition `partition` of a topic of `partitions`
    /// partitions that every member subscribes to.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn range_owner(&self, partitions: i32, partition: i32) -> Option<&GroupMember> {
        let m = i32::try_from(self.members.len()).ok().filter(|m| *m > 0)?;
        if !(0..partitions).contains(&partition) {
            return None;
        }
        let (each, extra) = (partitions / m, partitions % m);
        // Members below `extra` hold `each + 1` partitions, the rest `each`.
        let i = if partition < extra * (each + 1) {
            partition / (each + 1)
        } else {
            extra + (partition - extra * (each + 1)) / each.max(1)
        };
        self.members.get(usize::try_from(i).ok()?)
    }
}

/// Asks the group coordinator to describe `group`, through any client.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn describe_group<C: ConsumerContext + ClientContext>(
    client: &BaseConsumer<C>,
    group: &str,
    timeout: Duration,
) -> Result<GroupView> {
    let list = client
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| Error::Kafka {
            context: format!("describe consumer group {group}"),
            source: e,
        })?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupView {
            state: "Dead".into(),
            members: vec![],
        });
    };
    let mut members: Vec<GroupMember> = info
        .members()
        .iter()
        .map(|m| GroupMember {
            member_id: m.id().to_string(),
            client_id: m.client_id().to_string(),
        })
        .collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(GroupView {
        state: info.state().to_string(),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: usize) -> GroupView {
        GroupView {
            state: "Stable".into(),
            members: (0..n)
                .map(|i| GroupMember {
                    member_id: format!("m{i}"),
                    client_id: String::new(),
                })
                .collect(),
        }
    }

    /// Standbys go to the next instances in the ring, never to the active one.
    #[test]
    fn standbys_follow_the_ring_of_instances() {
        let member = |id: &str, instance: &str| GroupMember {
            member_id: format!("{id}-057772c4-2772-42e4-8754-eeb3cfd08f73"),
            client_id: consumer_client_id(id, instance, None),
        };
        // Two threads of instance b, one of a, one of c: members sorted by member id.
        let v = GroupView {
            state: "Stable".into(),
            members: vec![
                member("x-StreamThread-1", "b"),
                member("x-StreamThread-2", "b"),
                member("y-StreamThread-1", "a"),
                member("z-StreamThread-1", "c"),
            ],
        };
        assert_eq!(v.instances(), ["a", "b", "c"]);
        // 4 partitions, 4 members: partition p to member p.
        assert_eq!(v.standby_instances(4, 0, 1), ["c"]);
        assert_eq!(v.standby_instances(4, 2, 1), ["b"]);
        assert_eq!(v.standby_instances(4, 3, 1), ["a"]);
        assert_eq!(v.standby_instances(4, 3, 2), ["a", "b"]);
        // Never more than the other instances.
        assert_eq!(v.standby_instances(4, 3, 5), ["a", "b"]);
        assert!(v.standby_instances(4, 3, 0).is_empty());
    }

    /// librdkafka's range assignor: `n / m` each, the first `n % m` members one more.
    #[test]
    fn range_owners_follow_the_range_assignor() {
        let owners = |n: usize, partitions: i32| -> Vec<String> {
            let v = view(n);
            (0..partitions)
                .map(|p| v.range_owner(partitions, p).unwrap().member_id.clone())
                .collect()
        };
        assert_eq!(owners(2, 4), ["m0", "m0", "m1", "m1"]);
        assert_eq!(owners(3, 4), ["m0", "m0", "m1", "m2"]);
        assert_eq!(
            owners(3, 8),
            ["m0", "m0", "m0", "m1", "m1", "m1", "m2", "m2"]
        );
        assert_eq!(owners(4, 2), ["m0", "m1"]);
        assert_eq!(owners(1, 3), ["m0", "m0", "m0"]);
        assert!(view(2).range_owner(4, 4).is_none());
        assert!(view(0).range_owner(4, 0).is_none());
    }

    #[test]
    fn addresses_come_back_from_client_ids() {
        let member = |client_id: &str| GroupMember {
            member_id: "m".into(),
            client_id: client_id.into(),
        };
        let id = consumer_client_id("app-StreamThread-1", "i-1", Some("10.0.0.7:7070"));
        assert_eq!(member(&id).address(), Some("10.0.0.7:7070"));
        assert_eq!(member(&id).instance(), Some("i-1"));
        let without = member(&consumer_client_id("app-StreamThread-1", "i-2", None));
        assert_eq!(without.address(), None);
        assert_eq!(without.instance(), Some("i-2"));
        // nisshi (the fallback test broker) leaves the client id out; the member id begins
        // with it.
        let from_member_id = GroupMember {
            member_id: format!("{id}-057772c4-2772-42e4-8754-eeb3cfd08f73"),
            client_id: String::new(),
        };
        assert_eq!(from_member_id.address(), Some("10.0.0.7:7070"));
        assert_eq!(from_member_id.instance(), Some("i-1"));
    }
}
