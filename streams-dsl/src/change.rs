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

/// A value to add to its group's aggregate, or to subtract from it (a table row's old value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delta<V> {
    pub(crate) value: V,
    pub(crate) add: bool,
}

/// One byte (1: add, 0: subtract), then the value's bytes.
pub(crate) struct DeltaSerde<V>(pub(crate) Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Delta<V>> for DeltaSerde<V> {
    fn serialize(&self, topic: &str, d: &Delta<V>) -> Result<Option<Vec<u8>>, SerdeError> {
        let inner = self.0.serialize(topic, &d.value)?.unwrap_or_default();
        let mut out = Vec::with_capacity(1 + inner.len());
        out.push(u8::from(d.add));
        out.extend_from_slice(&inner);
        Ok(Some(out))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Delta<V>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("Delta", topic, "null value"))?;
        let (flag, rest) = data
            .split_first()
            .ok_or_else(|| SerdeError::new("Delta", topic, "empty value"))?;
        Ok(Delta {
            value: self.0.deserialize(topic, Some(rest))?,
            add: *flag == 1,
        })
    }
}
