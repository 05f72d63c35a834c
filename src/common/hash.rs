//! Hash maps for the per-flow path. The standard library's SipHash costs more than the rest of
//! a detector's work on a flow; foldhash, seeded at random once per process, is several times
//! faster on the short keys detectors use (names, 64-bit destination keys).

/// A `HashMap` with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
