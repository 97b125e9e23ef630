//! Records: what flows through a topology.

use std::sync::Arc;

/// Where a record was read from: what [`Record::origin`] and
/// `ProcessorContext::record_metadata` return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Source topic.
    pub topic: Arc<str>,
    /// Partition of the source topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
}

/// Record headers, in order; a key may repeat, a value may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Option<Vec<u8>>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Adds a header at the end.
    pub fn with(mut self, key: impl Into<String>, value: Option<&[u8]>) -> Self {
        self.0.push((key.into(), value.map(<[u8]>::to_vec)));
        self
    }

    /// The value of the last header named `key`.
    pub fn last(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// All headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An immutable record: key, value, event timestamp (milliseconds since the epoch), headers,
/// and, when it came from a topic, where from. Change it with the `with_*` methods, which
/// return a new record.
///
/// ```
/// use streams_core::Record;
///
/// let r = Record::new("alice", 3_u32, 1_000);
/// let doubled = r.clone().with_value(r.value() * 2);
/// assert_eq!((*doubled.key(), *doubled.value(), doubled.timestamp()), ("alice", 6, 1_000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<K, V> {
    key: K,
    value: V,
    timestamp: i64,
    headers: Headers,
    origin: Option<RecordMetadata>,
}

impl<K, V> Record<K, V> {
    /// A record with no headers and no origin.
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        Record {
            key,
            value,
            timestamp,
            headers: Headers::new(),
            origin: None,
        }
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The event timestamp, in milliseconds since the epoch.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Where it was read from, if it came from a topic.
    pub fn origin(&self) -> Option<&RecordMetadata> {
        self.origin.as_ref()
    }

    /// The same record with another key (of any type).
    pub fn with_key<K2>(self, key: K2) -> Record<K2, V> {
        Record {
            key,
            value: self.value,
            timestamp: self.timestamp,
            headers: self.headers,
            origin: self.origin,
        }
    }

    /// The same record with another value (of any type).
    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record {
            key: self.key,
            value,
            timestamp: self.timestamp,
            headers: self.headers,
            origin: self.origin,
        }
    }

    /// The same record with its value passed through `f` (no copy of the rest).
    pub fn map_value<V2>(self, f: impl FnOnce(V) -> V2) -> Record<K, V2> {
        Record {
            key: self.key,
            value: f(self.value),
            timestamp: self.timestamp,
            headers: self.headers,
            origin: self.origin,
        }
    }

    /// The same record with another timestamp.
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same record with other headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The same record, marked as read from `origin`.
    pub fn with_origin(mut self, origin: RecordMetadata) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Key, value, and the rest of the record (timestamp, headers, origin) to put them back
    /// into with [`with_key`](Record::with_key) and [`with_value`](Record::with_value).
    pub fn into_parts(self) -> (K, V, Record<(), ()>) {
        (
            self.key,
            self.value,
            Record {
                key: (),
                value: (),
                timestamp: self.timestamp,
                headers: self.headers,
                origin: self.origin,
            },
        )
    }

    /// Key and value, taken out.
    pub fn into_key_value(self) -> (K, V) {
        (self.key, self.value)
    }
}

/// A record whose key cannot change: what key-preserving operators (a
/// [`FixedKeyProcessor`](crate::processor::FixedKeyProcessor), the DSL's `map_values` and
/// `process_values`) receive and forward. Since nothing can re-key it, such an operator never
/// needs a repartition before the next stateful one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedKeyRecord<K, V>(Record<K, V>);

impl<K, V> FixedKeyRecord<K, V> {
    pub(crate) fn new(record: Record<K, V>) -> Self {
        FixedKeyRecord(record)
    }

    pub(crate) fn into_record(self) -> Record<K, V> {
        self.0
    }

    /// The key.
    pub fn key(&self) -> &K {
        self.0.key()
    }

    /// The value.
    pub fn value(&self) -> &V {
        self.0.value()
    }

    /// The event timestamp, in milliseconds since the epoch.
    pub fn timestamp(&self) -> i64 {
        self.0.timestamp()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        self.0.headers()
    }

    /// Where it was read from, if it came from a topic.
    pub fn origin(&self) -> Option<&RecordMetadata> {
        self.0.origin()
    }

    /// The same record with another value (of any type).
    pub fn with_value<V2>(self, value: V2) -> FixedKeyRecord<K, V2> {
        FixedKeyRecord(self.0.with_value(value))
    }

    /// The same record with its value passed through `f`.
    pub fn map_value<V2>(self, f: impl FnOnce(V) -> V2) -> FixedKeyRecord<K, V2> {
        FixedKeyRecord(self.0.map_value(f))
    }

    /// The same record with another timestamp.
    pub fn with_timestamp(self, timestamp: i64) -> Self {
        FixedKeyRecord(self.0.with_timestamp(timestamp))
    }

    /// The same record with other headers.
    pub fn with_headers(self, headers: Headers) -> Self {
        FixedKeyRecord(self.0.with_headers(headers))
    }

    /// The value, taken out.
    pub fn into_value(self) -> V {
        self.0.into_key_value().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_methods_keep_the_rest() {
        let origin = RecordMetadata {
            topic: "orders".into(),
            partition: 2,
            offset: 40,
        };
        let r = Record::new("k", 1, 5)
            .with_headers(Headers::new().with("h", Some(b"1")).with("h", Some(b"2")))
            .with_origin(origin.clone());
        let r2 = r.clone().with_key(7_u64).with_value("v").with_timestamp(9);
        assert_eq!(*r2.key(), 7);
        assert_eq!(*r2.value(), "v");
        assert_eq!(r2.timestamp(), 9);
        assert_eq!(r2.headers().last("h"), Some(&b"2"[..]));
        assert_eq!(r2.headers().len(), 2);
        assert_eq!(r2.origin(), Some(&origin));
        assert_eq!(r.into_key_value(), ("k", 1));
    }
}
