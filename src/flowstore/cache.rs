//! The query caches: recently read segments, `/flows/top` answers of whole chunks, the rows
//! `/flows` filters matched in stored chunks, the policy advisor's connections of whole
//! chunks. Sealed chunks never change, so an answer holds until its segment is deleted.

use super::*;

/// How many decoded segments are kept (a chunk of 65,536 Cilium-shaped flows is about 9 MB).
pub(super) const SEGMENT_CACHE: u64 = 4;

/// How many chunks' connections are kept (a chunk of a namespace holds a few hundred).
pub(super) const CONNECTIONS_CACHE: u64 = 4096;

/// A chunk (first and last sequence number: a chunk that gains rows gets a new key) and a
/// namespace.
pub(super) type ConnectionsKey = (u64, u64, String);

/// Most bytes the `/flows/top` answers of whole chunks may hold.
pub(super) const TOP_CACHE_BYTES: u64 = 16 << 20;

/// One chunk's groups for one grouping and one set of conditions.
pub(super) type TopKey = (u64, u64, GroupBy, String);

/// Most bytes the rows kept for `/flows` pages may hold (see [`FlowStore::select`]).
pub(super) const MATCH_CACHE_BYTES: u64 = 16 << 20;

/// One stored chunk's rows matching one set of conditions, or none.
pub(super) type MatchKey = (u64, u64, Arc<str>);

/// Answers computed from chunks that never change once sealed, by chunk and question, up to
/// a weight: bytes by the entry's own estimate, or a count. What is rarely asked for goes
/// first (quick_cache's CLOCK-Pro: a scan of many segments asked once does not push out what
/// dashboards ask every few seconds). The store keeps four: decoded segments, `/flows/top`
/// answers of whole chunks (each segment's groups by every key without conditions, computed
/// as it is written, so a query over the last hour groups only the flows that arrived since),
/// the rows of stored chunks that `/flows` filters matched, and the policy advisor's
/// connections of whole chunks. A chunk is named by its first and last sequence number,
/// which a sealed chunk keeps when it moves to disk.
pub(super) struct Answers<K, V>(quick_cache::sync::Cache<K, Weighed<V>, ByWeight>);

/// A value and its weight, fixed when it is kept.
#[derive(Clone)]
pub(super) struct Weighed<V> {
    value: V,
    weight: u64,
}

#[derive(Clone)]
pub(super) struct ByWeight;

impl<K, V> quick_cache::Weighter<K, Weighed<V>> for ByWeight {
    fn weight(&self, _: &K, v: &Weighed<V>) -> u64 {
        v.weight
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> std::fmt::Debug for Answers<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Answers({} of {})", self.0.weight(), self.0.capacity())
    }
}

/// Shards of a cache: each holds a quarter of the weight, the most one entry may weigh.
const SHARDS: usize = 4;

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Answers<K, V> {
    /// A cache of at most `capacity` in weight, for about `items` entries.
    pub(super) fn new(capacity: u64, items: usize) -> Answers<K, V> {
        let shards = if capacity >= SHARDS as u64 * 64 {
            SHARDS
        } else {
            1
        };
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(items)
            .weight_capacity(capacity)
            // Half the room for entries asked again: a small cache (four segments) would
            // otherwise keep almost none of what was just read.
            .hot_allocation(0.5)
            .build()
            .unwrap_or_else(|e| unreachable!("constant options: {e}"));
        Answers(quick_cache::sync::Cache::with_options(
            options,
            ByWeight,
            Default::default(),
            Default::default(),
        ))
    }

    /// The value kept for `key` (or for a borrowed form of it: a `&Path` for a `PathBuf`).
    pub(super) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: std::hash::Hash + quick_cache::Equivalent<K> + ?Sized,
    {
        self.0.get(key).map(|w| w.value)
    }

    /// Keeps `value` unless `weight` is over a quarter of the capacity.
    pub(super) fn put(&self, key: K, value: V, weight: usize) {
        let weight = weight.max(1) as u64;
        if weight > self.0.capacity() / SHARDS as u64 {
            return;
        }
        self.0.insert(key, Weighed { value, weight });
    }

    /// Drops the entries `gone` names.
    pub(super) fn forget(&self, gone: impl Fn(&K) -> bool) {
        self.0.retain(|key, _| !gone(key));
    }

    /// The weight held.
    pub(super) fn weight(&self) -> u64 {
        self.0.weight()
    }

    /// `f` summed over the values held.
    pub(super) fn sum(&self, f: impl Fn(&V) -> u64) -> u64 {
        self.0.iter().map(|(_, w)| f(&w.value)).sum()
    }

    /// Every key held (tests).
    #[cfg(test)]
    pub(super) fn keys(&self) -> Vec<K> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

impl FlowStore {
    /// Bytes the query caches hold by their own estimates: decoded segments, `/flows/top`
    /// groups and `/flows` matches, by name.
    pub fn cache_bytes(&self) -> [(&'static str, u64); 3] {
        [
            ("segments", self.cache.sum(|c| c.bytes() as u64)),
            ("top", self.tops.weight()),
            ("matches", self.matches.weight()),
        ]
    }

    /// Drops what the query caches hold of deleted segments: no query asks for them again,
    /// and until the caches fill, nothing else would make them go.
    pub(super) fn forget_cached(&self, deleted: &[Segment]) {
        if deleted.is_empty() {
            return;
        }
        let gone = |first: u64, last: u64| {
            deleted
                .iter()
                .any(|s| s.first_seq == first && s.last_seq == last)
        };
        self.tops.forget(|k| gone(k.0, k.1));
        self.matches.forget(|k| gone(k.0, k.1));
        self.connections.forget(|k| gone(k.0, k.1));
        self.cache
            .forget(|path| deleted.iter().any(|s| &s.path == path));
    }

    /// A segment's chunk if it is among the recently read ones.
    pub(super) fn cached(&self, name: &Path) -> Option<Arc<Chunk>> {
        self.cache.get(name)
    }

    /// A segment's chunk from the cache of recently read ones, else from `read`.
    pub(super) fn read_cached(
        &self,
        name: &Path,
        read: impl FnOnce() -> Result<DataFrame, String>,
    ) -> Result<Arc<Chunk>, StoreError> {
        if let Some(chunk) = self.cached(name) {
            return Ok(chunk);
        }
        let fail = |message: String| StoreError::Segment {
            path: name.display().to_string(),
            message,
        };
        let frame = read().map_err(fail)?;
        self.stats.segment_reads.fetch_add(1, Ordering::Relaxed);
        let chunk = Arc::new(Chunk::from_parquet_frame(&frame).map_err(fail)?);
        self.cache.put(name.to_path_buf(), chunk.clone(), 1);
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

    #[test]
    fn the_caches_forget_deleted_segments() {
        let flows = flows(20_000);
        // A disk bound of about three segments.
        let probe = tempfile::tempdir().unwrap();
        let sized = filled(small(Some(probe.path().into())), &flows[..5_000]);
        let st = &sized.stats;
        let segment = st.disk_bytes.load(Ordering::Relaxed) / st.segments.load(Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let store = filled(
            FlowStoreConfig {
                disk_bytes: segment * 7 / 2,
                ..small(Some(dir.path().into()))
            },
            &flows[..5_000],
        );
        // Pages whose few matches are kept, segment by segment; groups kept as segments
        // are written.
        let rare = filter(&[("destination_ip", crate::sim::traffic::EXFIL_IP)]);
        store.list(&rare, None, 5_000).unwrap();
        store
            .connections(crate::sim::traffic::TRAINING_NAMESPACE, 0, i64::MAX)
            .unwrap();
        let connections = |store: &FlowStore| -> Vec<(u64, u64)> {
            let keys = store.connections.keys();
            keys.iter().map(|k| (k.0, k.1)).collect()
        };
        let kept = |store: &FlowStore| {
            let mut keys: Vec<(u64, u64)> =
                store.matches.keys().iter().map(|k| (k.0, k.1)).collect();
            keys.extend(store.tops.keys().iter().map(|k| (k.0, k.1)));
            keys
        };
        let before = kept(&store);
        let connections_before = connections(&store);
        assert!(!before.is_empty());
        let rows: Vec<Row> = flows[5_000..].iter().map(Row::new).collect();
        store.append(&rows);
        let live: Vec<(u64, u64)> = store
            .lock()
            .segments
            .iter()
            .map(|s| (s.first_seq, s.last_seq))
            .collect();
        assert!(
            before.iter().any(|k| !live.contains(k)),
            "segments with cached answers were deleted"
        );
        let after = kept(&store);
        assert!(
            after.iter().all(|k| live.contains(k)),
            "cached: {after:?}; stored: {live:?}"
        );
        let deleted: Vec<&(u64, u64)> = before.iter().filter(|k| !live.contains(k)).collect();
        assert!(connections_before.iter().any(|k| deleted.contains(&k)));
        let left = connections(&store);
        assert!(
            left.iter().all(|k| !deleted.contains(&k)),
            "connections kept of deleted segments: {left:?}"
        );
        // The pages' segments are all gone, and so is what was kept of them.
        let [_, (_, top), (_, matches)] = store.cache_bytes();
        assert!(top > 0 && matches == 0, "{top}, {matches}");
    }

    #[test]
    fn answer_caches_keep_what_is_asked_again_and_stay_within_their_bound() {
        let cache: Answers<u32, u32> = Answers::new(1_000, 10);
        for k in 0..10 {
            cache.put(k, k, 100);
        }
        assert_eq!(cache.weight(), 1_000);
        // Asked again: hot, kept while new entries arrive and go.
        for _ in 0..3 {
            assert_eq!(cache.get(&0), Some(0));
        }
        for k in 10..40 {
            cache.put(k, k, 100);
            assert!(cache.weight() <= 1_000, "{} after {k}", cache.weight());
        }
        assert_eq!(cache.get(&0), Some(0), "an answer asked for again stays");
        // Of those never asked again, no more than the hot half's room stays.
        let early = (1..10).filter(|k| cache.get(k).is_some()).count();
        assert!(early <= 5, "{early} of the first entries kept");
        assert_eq!(cache.get(&39), Some(39), "the newest is kept");
        // An answer over a quarter of the bound is not kept.
        cache.put(100, 100, 300);
        assert_eq!(cache.get(&100), None);
        // Forgotten by key.
        cache.forget(|k| *k == 0);
        assert_eq!(cache.get(&0), None);
        // Every entry weighs 100: the weight held is theirs.
        assert_eq!(cache.sum(|_| 100), cache.weight());
    }

    #[test]
    fn a_cache_of_four_segments_keeps_the_last_read() {
        let cache: Answers<u32, u32> = Answers::new(SEGMENT_CACHE, SEGMENT_CACHE as usize);
        for k in 0..20 {
            cache.put(k, k, 1);
            assert_eq!(cache.get(&k), Some(k), "{k} read just now");
            assert!(cache.keys().len() as u64 <= SEGMENT_CACHE);
        }
    }
}
