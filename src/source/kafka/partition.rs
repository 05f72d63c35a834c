//! The partition a producer gives a record key, computed the way Kafka's clients do, so that a
//! replica knows which namespaces the partitions assigned to it carry.

use crate::config::Partitioner;

impl Partitioner {
    /// The partition of `key` among `partitions` (none when there are none).
    pub fn partition(self, key: &[u8], partitions: i32) -> Option<i32> {
        let n = u32::try_from(partitions).ok().filter(|&n| n > 0)?;
        let hash = match self {
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Partitioner::Crc32 => crc32(key),
        };
        i32::try_from(hash % n).ok()
    }
}

/// MurmurHash2 as Kafka's Java client and librdkafka compute it (seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib), which librdkafka's `consistent` partitioners use.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // Kafka's own test vectors for `Utils.murmur2` (as signed 32-bit integers).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn partitions_are_in_range_and_none_without_partitions() {
        for p in [Partitioner::Murmur2, Partitioner::Crc32] {
            assert_eq!(p.partition(b"ai-training", 0), None);
            for n in 1..20 {
                let got = p.partition(b"ai-training", n).unwrap();
                assert!((0..n).contains(&got));
            }
        }
        // toPositive, not abs: "21" hashes negative.
        assert_eq!(
            Partitioner::Murmur2.partition(b"21", 8),
            Some(((-973_932_308i32 as u32 & 0x7fff_ffff) % 8) as i32)
        );
    }
}
