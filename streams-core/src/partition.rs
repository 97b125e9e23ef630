//! Kafka's default partitioning of keys: murmur2 of the key bytes, as the Java client and
//! librdkafka's `murmur2_random` (which the runtime's producers use) compute it. The runtime
//! needs it where it places a key itself: interactive queries find a key's partition, and a
//! sink places windowed keys by their inner key. A store whose source topic was written with
//! another partitioner is given it for queries ([`KeyPartitioner`]).

/// The partition Kafka's default partitioner gives a key: murmur2 of its bytes, made
/// non-negative, modulo the partition count (as the Java client and librdkafka's
/// `murmur2_random`, which the runtime's producers use).
pub(crate) fn default_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// How the producers of a store's source topic placed keys on its partitions, so that an
/// interactive query looks for a key on the partition that holds it
/// ([`StreamsConfig::query_partitioner`](crate::StreamsConfig::query_partitioner), as Kafka
/// Streams' `queryMetadataForKey` takes a partitioner).
#[derive(Clone)]
pub enum KeyPartitioner {
    /// Kafka's default: murmur2 of the key bytes (the Java client; librdkafka's
    /// `murmur2_random`, which this runtime's producers and repartition topics use). The
    /// default for every store.
    Murmur2,
    /// librdkafka's default (`consistent_random`, and `consistent`): CRC-32 of the key bytes,
    /// modulo the partition count. Producers in C, Go, Python or .NET built on librdkafka use
    /// it unless told otherwise. (`consistent_random` puts empty keys on a random partition,
    /// where no lookup can know to look.)
    Crc32,
    /// Any other: the key's serialized bytes and the partition count to its partition.
    Custom(PartitionFn),
}

/// A key's serialized bytes and the partition count to its partition.
pub type PartitionFn = std::sync::Arc<dyn Fn(&[u8], i32) -> i32 + Send + Sync>;

impl KeyPartitioner {
    /// The partition of `key` (its serialized bytes) among `partitions`.
    pub fn partition(&self, key: &[u8], partitions: i32) -> i32 {
        match self {
            KeyPartitioner::Murmur2 => default_partition(key, partitions),
            KeyPartitioner::Crc32 => (crc32(key) % partitions.max(1) as u32) as i32,
            KeyPartitioner::Custom(f) => f(key, partitions),
        }
    }

    /// Its name, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            KeyPartitioner::Murmur2 => "murmur2",
            KeyPartitioner::Crc32 => "crc32",
            KeyPartitioner::Custom(_) => "a custom partitioner",
        }
    }
}

impl std::fmt::Debug for KeyPartitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// CRC-32 as zlib and librdkafka compute it (reflected, polynomial 0xEDB88320).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Kafka's murmur2 (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors for its murmur2 (as signed 32-bit results).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (data, want) in cases {
            assert_eq!(
                murmur2(data) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        assert_eq!(default_partition(b"abc", 4), 479470107 % 4);
    }

    /// The CRC-32 check value, and librdkafka's `consistent` partitioner's use of it.
    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            KeyPartitioner::Crc32.partition(b"123456789", 7),
            (0xCBF4_3926u32 % 7) as i32
        );
    }
}
