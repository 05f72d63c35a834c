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
