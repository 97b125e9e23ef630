//! Stored aggregates with the timestamp of their latest input, which is the timestamp of the
//! result they forward (as Kafka Streams' timestamped stores do).

use std::sync::Arc;

use streams_core::serde::{Serde, SerdeError};

/// A value and the largest timestamp of the records it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamped<V> {
    pub(crate) value: V,
    pub(crate) timestamp: i64,
}

/// 8 bytes of timestamp (big-endian), then the value's bytes.
pub(crate) struct StampedSerde<V>(pub(crate) Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Stamped<V>> for StampedSerde<V> {
    fn serialize(&self, topic: &str, s: &Stamped<V>) -> Result<Option<Vec<u8>>, SerdeError> {
        let inner = self.0.serialize(topic, &s.value)?.unwrap_or_default();
        let mut out = Vec::with_capacity(8 + inner.len());
        out.extend_from_slice(&s.timestamp.to_be_bytes());
        out.extend_from_slice(&inner);
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Stamped<V>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Stamped", topic, "null data"))?;
        if data.len() < 8 {
            return Err(SerdeError::new(
                "Stamped",
                topic,
                format!("{} bytes, fewer than the 8 of the timestamp", data.len()),
            ));
        }
        let (ts, rest) = data.split_at(8);
        let timestamp = i64::from_be_bytes(ts.try_into().expect("8 bytes"));
        Ok(Stamped {
            value: self.0.deserialize(topic, Some(rest))?,
            timestamp,
        })
    }

    /// The value alone (interactive queries show what the aggregation computed).
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        match data.get(8..) {
            Some(rest) => self.0.bytes_to_json(topic, rest),
            None => Some(Err(SerdeError::new(
                "Stamped",
                topic,
                format!("{} bytes, fewer than the 8 of the timestamp", data.len()),
            ))),
        }
    }
}
