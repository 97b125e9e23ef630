//! Serdes: how keys and values become bytes on a topic and back.
//!
//! A [`Serde<T>`] turns a `T` into the bytes of a record's key or value (or into no bytes at
//! all: a null key or a tombstone) and back. The built-in ones cover strings, raw bytes,
//! integers and floats (big-endian, as Kafka's own serdes), absent keys (`()`), nullable values
//! ([`Nullable`]) and JSON for any `serde` type ([`Json`]). Users add their own by implementing
//! the trait.
//!
//! ```
//! use streams_core::serde::{Json, Serde, Utf8};
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Order { id: u32, amount: f64 }
//!
//! let json = Json::<Order>::default();
//! let bytes = json.serialize("orders", &Order { id: 1, amount: 9.5 }).unwrap();
//! assert_eq!(json.deserialize("orders", bytes.as_deref()).unwrap(), Order { id: 1, amount: 9.5 });
//! assert!(Utf8.deserialize("orders", None).is_err(), "a null is not a string");
//! ```

use std::marker::PhantomData;

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{serde} on topic {topic}: {message}")]
pub struct SerdeError {
    /// The serde that failed.
    pub serde: &'static str,
    /// The topic of the record.
    pub topic: String,
    /// What was wrong.
    pub message: String,
}

impl SerdeError {
    /// A new error.
    pub fn new(serde: &'static str, topic: &str, message: impl Into<String>) -> Self {
        SerdeError {
            serde,
            topic: topic.to_string(),
            message: message.into(),
        }
    }
}

/// Converts `T` to and from the bytes of a record's key or value.
///
/// `None` bytes stand for an absent key or a null value (a tombstone on a compacted topic).
pub trait Serde<T>: Send + Sync + 'static {
    /// The bytes for `value`, or `None` for an absent key / null value.
    fn serialize(&self, topic: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError>;
    /// The value for `data` (`None` when the key or value is absent).
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError>;

    /// Interactive queries over HTTP: the bytes of a key written as `text` in a URL, or `None`
    /// when this serde does not read keys from text (the endpoint then answers 400). The
    /// built-in serdes do: `Utf8` as is, numbers in decimal, `Json` as JSON (a bare word is
    /// taken as a JSON string).
    fn text_to_bytes(&self, topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        let _ = (topic, text);
        None
    }

    /// Interactive queries over HTTP: `data`, as this serde wrote it, as JSON, or `None` when
    /// this serde cannot say (the built-in serdes can).
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        let _ = (topic, data);
        None
    }

    /// As a key: the bytes a sink partitions `value` by, when they are not its serialized
    /// bytes; `None` (the default) leaves partitioning to the producer (murmur2 of the
    /// serialized key). Windowed keys give their inner key's bytes, so that every window of a
    /// key goes to the key's partition (Kafka Streams' `WindowedStreamPartitioner`).
    fn partition_bytes(
        &self,
        topic: &str,
        value: &T,
    ) -> Option<Result<Option<Vec<u8>>, SerdeError>> {
        let _ = (topic, value);
        None
    }
}

/// `value` serialized by `serde`, which must give bytes (a key).
fn some_bytes<T: 'static>(
    serde: &dyn Serde<T>,
    name: &'static str,
    topic: &str,
    value: &T,
) -> Result<Vec<u8>, SerdeError> {
    serde
        .serialize(topic, value)?
        .ok_or_else(|| SerdeError::new(name, topic, "serialized to no bytes"))
}

fn present<'a>(
    serde: &'static str,
    topic: &str,
    data: Option<&'a [u8]>,
) -> Result<&'a [u8], SerdeError> {
    data.ok_or_else(|| {
        SerdeError::new(
            serde,
            topic,
            "null data; wrap the serde in Nullable to accept nulls",
        )
    })
}

/// UTF-8 strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Serde<String> for Utf8 {
    fn serialize(&self, _topic: &str, value: &String) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(value.as_bytes().to_vec()))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<String, SerdeError> {
        String::from_utf8(present("Utf8", topic, data)?.to_vec())
            .map_err(|e| SerdeError::new("Utf8", topic, e.to_string()))
    }
    fn text_to_bytes(&self, _topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        Some(Ok(text.as_bytes().to_vec()))
    }
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        Some(
            self.deserialize(topic, Some(data))
                .map(serde_json::Value::String),
        )
    }
}

/// Bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Serde<Vec<u8>> for RawBytes {
    fn serialize(&self, _topic: &str, value: &Vec<u8>) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(Some(value.clone()))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Vec<u8>, SerdeError> {
        Ok(present("RawBytes", topic, data)?.to_vec())
    }
}

/// No key at all: serializes to an absent key and ignores whatever key a record has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unit;

impl Serde<()> for Unit {
    fn serialize(&self, _topic: &str, _value: &()) -> Result<Option<Vec<u8>>, SerdeError> {
        Ok(None)
    }
    fn deserialize(&self, _topic: &str, _data: Option<&[u8]>) -> Result<(), SerdeError> {
        Ok(())
    }
    fn bytes_to_json(
        &self,
        _topic: &str,
        _data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        Some(Ok(serde_json::Value::Null))
    }
}

/// Fixed-width numbers, big-endian (the layout of Kafka's own integer serdes).
#[derive(Debug, Clone, Copy, Default)]
pub struct BigEndian;

macro_rules! big_endian {
    ($($t:ty),*) => {$(
        impl Serde<$t> for BigEndian {
            fn serialize(&self, _topic: &str, value: &$t) -> Result<Option<Vec<u8>>, SerdeError> {
                Ok(Some(value.to_be_bytes().to_vec()))
            }
            fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<$t, SerdeError> {
                let data = present("BigEndian", topic, data)?;
                let bytes = data.try_into().map_err(|_| {
                    SerdeError::new(
                        "BigEndian",
                        topic,
                        format!(
                            "{} bytes for a {} (needs {})",
                            data.len(),
                            stringify!($t),
                            std::mem::size_of::<$t>()
                        ),
                    )
                })?;
                Ok(<$t>::from_be_bytes(bytes))
            }
            fn text_to_bytes(&self, topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
                Some(match text.parse::<$t>() {
                    Ok(v) => Ok(v.to_be_bytes().to_vec()),
                    Err(e) => Err(SerdeError::new(
                        "BigEndian",
                        topic,
                        format!("{text:?} is not a {}: {e}", stringify!($t)),
                    )),
                })
            }
            fn bytes_to_json(
                &self,
                topic: &str,
                data: &[u8],
            ) -> Option<Result<serde_json::Value, SerdeError>> {
                Some(Serde::<$t>::deserialize(self, topic, Some(data)).map(|v| serde_json::json!(v)))
            }
        }
    )*};
}

big_endian!(i16, i32, i64, u16, u32, u64, f32, f64);

/// Accepts nulls: `None` ↔ absent bytes, `Some(v)` ↔ what the inner serde makes of `v`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nullable<S>(pub S);

impl<T, S: Serde<T>> Serde<Option<T>> for Nullable<S> {
    fn serialize(&self, topic: &str, value: &Option<T>) -> Result<Option<Vec<u8>>, SerdeError> {
        match value {
            Some(v) => self.0.serialize(topic, v),
            None => Ok(None),
        }
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Option<T>, SerdeError> {
        data.map(|d| self.0.deserialize(topic, Some(d))).transpose()
    }
    fn text_to_bytes(&self, topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        self.0.text_to_bytes(topic, text)
    }
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        self.0.bytes_to_json(topic, data)
    }
}

/// JSON for any `serde` type.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Json::default()
    }
}

impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T> Serde<T> for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    fn serialize(&self, topic: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError> {
        serde_json::to_vec(value)
            .map(Some)
            .map_err(|e| SerdeError::new("Json", topic, e.to_string()))
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError> {
        serde_json::from_slice(present("Json", topic, data)?)
            .map_err(|e| SerdeError::new("Json", topic, e.to_string()))
    }
    fn text_to_bytes(&self, topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        // JSON first (`42`, `"a b"`, `{"id":1}`), else the text as a JSON string (`alice`).
        let value = serde_json::from_str::<T>(text)
            .or_else(|_| serde_json::from_value::<T>(serde_json::Value::String(text.into())))
            .map_err(|e| {
                SerdeError::new(
                    "Json",
                    topic,
                    format!("{text:?} is not a {}: {e}", std::any::type_name::<T>()),
                )
            });
        Some(value.and_then(|v| some_bytes(self, "Json", topic, &v)))
    }
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        Some(self.deserialize(topic, Some(data)).and_then(|v| {
            serde_json::to_value(v).map_err(|e| SerdeError::new("Json", topic, e.to_string()))
        }))
    }
}

/// A shared serde is a serde.
impl<T: 'static> Serde<T> for std::sync::Arc<dyn Serde<T>> {
    fn serialize(&self, topic: &str, value: &T) -> Result<Option<Vec<u8>>, SerdeError> {
        (**self).serialize(topic, value)
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T, SerdeError> {
        (**self).deserialize(topic, data)
    }
    fn text_to_bytes(&self, topic: &str, text: &str) -> Option<Result<Vec<u8>, SerdeError>> {
        (**self).text_to_bytes(topic, text)
    }
    fn bytes_to_json(
        &self,
        topic: &str,
        data: &[u8],
    ) -> Option<Result<serde_json::Value, SerdeError>> {
        (**self).bytes_to_json(topic, data)
    }
    fn partition_bytes(
        &self,
        topic: &str,
        value: &T,
    ) -> Option<Result<Option<Vec<u8>>, SerdeError>> {
        (**self).partition_bytes(topic, value)
    }
}

/// Types whose serde is found from the type, so that an API taking serdes can do without
/// one: `String` (UTF-8), fixed-width numbers (big-endian, as Kafka's integer serdes),
/// `Vec<u8>` (the bytes as they are), `()` (no key), and any `serde` type marked with
/// [`JsonSerde`] (JSON).
///
/// ```
/// use streams_core::serde::{DefaultSerde, JsonSerde};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Order { id: u32 }
/// impl JsonSerde for Order {}
///
/// let bytes = Order::default_serde().serialize("orders", &Order { id: 7 }).unwrap();
/// assert_eq!(bytes.as_deref(), Some(&br#"{"id":7}"#[..]));
/// let n = u64::default_serde().deserialize("t", Some(&[0, 0, 0, 0, 0, 0, 0, 9])).unwrap();
/// assert_eq!(n, 9);
/// ```
pub trait DefaultSerde: Sized + 'static {
    /// The serde used for this type when none is given.
    fn default_serde() -> std::sync::Arc<dyn Serde<Self>>;
}

/// Marks a `serde` type whose default serde ([`DefaultSerde`]) is [`Json`]:
/// `impl JsonSerde for MyType {}`.
pub trait JsonSerde: serde::Serialize + serde::de::DeserializeOwned + 'static {}

impl<T: JsonSerde> DefaultSerde for T {
    fn default_serde() -> std::sync::Arc<dyn Serde<Self>> {
        std::sync::Arc::new(Json::<T>::default())
    }
}

impl DefaultSerde for String {
    fn default_serde() -> std::sync::Arc<dyn Serde<Self>> {
        std::sync::Arc::new(Utf8)
    }
}

impl DefaultSerde for Vec<u8> {
    fn default_serde() -> std::sync::Arc<dyn Serde<Self>> {
        std::sync::Arc::new(RawBytes)
    }
}

impl DefaultSerde for () {
    fn default_serde() -> std::sync::Arc<dyn Serde<Self>> {
        std::sync::Arc::new(Unit)
    }
}

macro_rules! default_big_endian {
    ($($t:ty),*) => {$(
        impl DefaultSerde for $t {
            fn default_serde() -> std::sync::Arc<dyn Serde<Self>> {
                std::sync::Arc::new(BigEndian)
            }
        }
    )*};
}

default_big_endian!(i16, i32, i64, u16, u32, u64, f32, f64);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: PartialEq + std::fmt::Debug>(serde: &impl Serde<T>, value: T) {
        let bytes = serde.serialize("t", &value).unwrap();
        assert_eq!(serde.deserialize("t", bytes.as_deref()).unwrap(), value);
    }

    #[test]
    fn built_in_serdes_round_trip() {
        round_trip(&Utf8, "héllo".to_string());
        round_trip(&RawBytes, vec![0, 255, 7]);
        round_trip(&Unit, ());
        round_trip(&BigEndian, -5_i32);
        round_trip(&BigEndian, u64::MAX);
        round_trip(&BigEndian, 2.5_f64);
        round_trip(&Nullable(Utf8), None::<String>);
        round_trip(&Nullable(BigEndian), Some(3_i64));
        round_trip(&Json::<Vec<(String, u8)>>::default(), vec![("a".into(), 1)]);
    }

    #[test]
    fn layouts_match_kafka() {
        assert_eq!(
            BigEndian.serialize("t", &1_i32).unwrap(),
            Some(vec![0, 0, 0, 1])
        );
        assert_eq!(Unit.serialize("t", &()).unwrap(), None);
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        let e = Serde::<i64>::deserialize(&BigEndian, "orders", Some(&[1, 2, 3])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BigEndian on topic orders: 3 bytes for a i64 (needs 8)"
        );
        assert!(Utf8.deserialize("t", Some(&[0xff])).is_err());
        assert!(Json::<u32>::default().deserialize("t", Some(b"{")).is_err());
        assert!(Utf8
            .deserialize("t", None)
            .unwrap_err()
            .message
            .contains("Nullable"));
    }

    #[test]
    fn keys_read_from_text_and_values_written_as_json() {
        let text = |serde: &dyn Serde<u64>, t: &str| serde.text_to_bytes("t", t).unwrap();
        assert_eq!(text(&BigEndian, "7").unwrap(), 7_u64.to_be_bytes());
        assert!(text(&BigEndian, "seven")
            .unwrap_err()
            .message
            .contains("is not a u64"));
        assert_eq!(Utf8.text_to_bytes("t", "a b").unwrap().unwrap(), b"a b");
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Id {
            id: u32,
        }
        let json = Json::<Id>::default();
        assert_eq!(
            json.text_to_bytes("t", r#"{"id":4}"#).unwrap().unwrap(),
            br#"{"id":4}"#
        );
        assert!(json.text_to_bytes("t", "4").unwrap().is_err());
        // A bare word is a JSON string.
        let words = Json::<String>::default();
        assert_eq!(
            words.text_to_bytes("t", "alice").unwrap().unwrap(),
            br#""alice""#
        );
        assert_eq!(
            json.bytes_to_json("t", br#"{"id":4}"#).unwrap().unwrap(),
            serde_json::json!({"id": 4})
        );
        assert_eq!(
            Serde::<i64>::bytes_to_json(&BigEndian, "t", &(-2_i64).to_be_bytes())
                .unwrap()
                .unwrap(),
            serde_json::json!(-2)
        );
        let shared: std::sync::Arc<dyn Serde<String>> = std::sync::Arc::new(Utf8);
        assert_eq!(
            shared.bytes_to_json("t", b"x").unwrap().unwrap(),
            serde_json::json!("x")
        );
        assert!(RawBytes.text_to_bytes("t", "x").is_none());
    }
}
