//! What flows out of a table: changes of rows, and the add/subtract deltas of a regrouped
//! table.

use std::sync::Arc;

use streams_core::serde::{Serde, SerdeError};

/// An update of a table row: its new value (`None`: deleted) and its old one (`None`: it did
/// not exist, or the operator before does not know it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change<V> {
    pub(crate) new: Option<V>,
    pub(crate) old: Option<V>,
}

/// What a row of a regrouped table sends to a group: the value it takes away (its old value,
/// when it left the group or changed within it) and the value it adds (its new value). A row
/// that changes within its group sends both in one record, so that the group's aggregate moves
/// once, with no false intermediate result downstream (Kafka Streams' KIP-904).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delta<V> {
    pub(crate) subtract: Option<V>,
    pub(crate) add: Option<V>,
}

/// One byte, then: 1, the value to add; 0, the value to subtract; 2, 4 bytes of the length
/// of the value to subtract, its bytes, then the value to add.
pub(crate) struct DeltaSerde<V>(pub(crate) Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Delta<V>> for DeltaSerde<V> {
    fn serialize(&self, topic: &str, d: &Delta<V>) -> Result<Option<Vec<u8>>, SerdeError> {
        let bytes = |v: &V| -> Result<Vec<u8>, SerdeError> {
            Ok(self.0.serialize(topic, v)?.unwrap_or_default())
        };
        let mut out = vec![];
        match (&d.subtract, &d.add) {
            (None, Some(add)) => {
                out.push(1);
                out.extend_from_slice(&bytes(add)?);
            }
            (Some(sub), None) => {
                out.push(0);
                out.extend_from_slice(&bytes(sub)?);
            }
            (Some(sub), Some(add)) => {
                let sub = bytes(sub)?;
                let len = u32::try_from(sub.len())
                    .map_err(|_| SerdeError::new("Delta", topic, "a value of 4 GiB or more"))?;
                out.push(2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&sub);
                out.extend_from_slice(&bytes(add)?);
            }
            (None, None) => {
                return Err(SerdeError::new(
                    "Delta",
                    topic,
                    "nothing to add or subtract",
                ))
            }
        }
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Delta<V>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Delta", topic, "null value"))?;
        let (flag, rest) = data
            .split_first()
            .ok_or_else(|| SerdeError::new("Delta", topic, "empty value"))?;
        let value = |b: &[u8]| self.0.deserialize(topic, Some(b));
        Ok(match flag {
            1 => Delta {
                subtract: None,
                add: Some(value(rest)?),
            },
            0 => Delta {
                subtract: Some(value(rest)?),
                add: None,
            },
            2 => {
                let short = || SerdeError::new("Delta", topic, "truncated");
                let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
                let (sub, add) = rest
                    .split_at_checked(u32::from_be_bytes(*len) as usize)
                    .ok_or_else(short)?;
                Delta {
                    subtract: Some(value(sub)?),
                    add: Some(value(add)?),
                }
            }
            other => {
                return Err(SerdeError::new(
                    "Delta",
                    topic,
                    format!("unknown kind {other}"),
                ))
            }
        })
    }
}
