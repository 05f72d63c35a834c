//! Hash maps for the per-flow path. The standard library's SipHash costs more than the rest of
//! a detector's work on a flow; foldhash, seeded at random once per process, is several times
//! faster on the short keys detectors use (names, 64-bit destination keys).

/// The one hash seed of the process, chosen at random when first asked: keys of names the
/// watched workloads choose (pods, DNS names) must not be chosen to collide, and keys worked
/// out in one place (an endpoint, a flow) are found by them in another (a detector's table).
pub fn process_seed() -> &'static foldhash::fast::RandomState {
    static SEED: std::sync::LazyLock<foldhash::fast::RandomState> =
        std::sync::LazyLock::new(Default::default);
    &SEED
}

/// The identity of an alert's label set: SHA-256 over the sorted pairs, each key and value
/// ended by a 0xff byte (which UTF-8 never holds), the first 128 bits as 32 hex digits.
/// Labels carry names the watched workloads choose: a 64-bit non-cryptographic hash could be
/// made to collide, and a collision would overwrite one alert with another.
pub fn fingerprint(labels: &std::collections::BTreeMap<String, String>) -> String {
    use std::fmt::Write as _;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in labels {
        digest.update(k.as_bytes());
        digest.update(&[0xff]);
        digest.update(v.as_bytes());
        digest.update(&[0xff]);
    }
    digest.finish().as_ref()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A `HashMap` with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A `HashMap` keyed by a 64-bit key that is itself a hash seeded at random per process
/// (such as a destination's key): the key is its own hash, so a look-up does not hash again.
pub type KeyMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The hasher of [`KeyMap`]: hands back the 64-bit key it is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; anything else is folded in rather than lost.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}
