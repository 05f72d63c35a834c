//! The query caches: recently read segments, `/flows/top` answers of whole chunks, the rows
//! `/flows` filters matched in stored chunks, the policy advisor's connections of whole
//! chunks. Sealed chunks never change, so an answer holds until its segment is deleted.

use super::*;

pub(super) const SEGMENT_CACHE: usize = 4;

/// How many chunks' connections are kept (a chunk of a namespace holds a few hundred).
pub(super) const CONNECTIONS_CACHE: usize = 4096;

/// A chunk (first and last sequence number: a chunk that gains rows gets a new key) and a
/// namespace.
pub(super) type ConnectionsKey = (u64, u64, String);

#[derive(Debug, Default)]
pub(super) struct ConnectionsCache {
    pub(super) parts: HashMap<ConnectionsKey, Arc<Vec<Connection>>>,
    pub(super) order: VecDeque<ConnectionsKey>,
}

/// Most bytes the `/flows/top` answers of whole chunks may hold.
pub(super) const TOP_CACHE_BYTES: usize = 16 << 20;

/// One chunk's groups for one grouping and one set of conditions.
pub(super) type TopKey = (u64, u64, GroupBy, String);

/// Most bytes the rows kept for `/flows` pages may hold (see [`FlowStore::select`]).
pub(super) const MATCH_CACHE_BYTES: usize = 16 << 20;

/// One stored chunk's rows matching one set of conditions, or none.
pub(super) type MatchKey = (u64, u64, Arc<str>);

/// Answers computed from chunks that never change once sealed, by chunk and question, up to
/// `limit` bytes by their own estimate; the least recently used go first. Holds the
/// `/flows/top` answers of whole chunks (each segment's summary, its groups by every key
/// without conditions, computed as it is written, and what queries with conditions computed:
/// a query over the last hour groups only the flows that arrived since instead of reading
/// every segment back from disk) and the rows of stored chunks that `/flows` filters matched.
/// A chunk is named by its first and last sequence number, which a sealed chunk keeps when
/// it moves to disk.
#[derive(Debug)]
pub(super) struct Lru<K, V> {
    pub(super) entries: HashMap<K, (V, usize, u64)>,
    pub(super) bytes: usize,
    pub(super) clock: u64,
    pub(super) limit: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub(super) fn new(limit: usize) -> Lru<K, V> {
        Lru {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
            limit,
        }
    }

    pub(super) fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, _, used)| {
            *used = clock;
            value.clone()
        })
    }

    /// Keeps `value` unless `size` is over a quarter of the limit.
    pub(super) fn put(&mut self, key: K, value: V, size: usize) {
        if size > self.limit / 4 {
            return;
        }
        if self.bytes + size > self.limit {
            self.evict();
        }
        self.clock += 1;
        self.bytes += size;
        if let Some((_, old, _)) = self.entries.insert(key, (value, size, self.clock)) {
            self.bytes -= old;
        }
    }

    /// Drops the entries `gone` names.
    pub(super) fn forget(&mut self, gone: impl Fn(&K) -> bool) {
        let mut freed = 0;
        self.entries.retain(|key, (_, size, _)| {
            let keep = !gone(key);
            if !keep {
                freed += *size;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Drops the least recently used entries until a quarter of the limit is free: one pass
    /// over the entries makes room for many more.
    pub(super) fn evict(&mut self) {
        let keep = self.limit - self.limit / 4;
        let mut by_use: Vec<(u64, usize)> = self
            .entries
            .values()
            .map(|(_, size, used)| (*used, *size))
            .collect();
        by_use.sort_unstable();
        let (mut bytes, mut cutoff) = (self.bytes, 0);
        for (used, size) in by_use {
            if bytes <= keep {
                break;
            }
            bytes -= size;
            cutoff = used;
        }
        self.entries.retain(|_, (_, _, used)| *used > cutoff);
        self.bytes = bytes;
    }
}

impl FlowStore {
    /// Bytes the query caches hold by their own estimates: decoded segments, `/flows/top`
    /// groups and `/flows` matches, by name.
    pub fn cache_bytes(&self) -> [(&'static str, u64); 3] {
        let segments = self
            .cache_lock()
            .iter()
            .map(|(_, chunk)| chunk.bytes())
            .sum::<usize>();
        [
            ("segments", segments as u64),
            ("top", self.tops_lock().bytes as u64),
            ("matches", self.matches_lock().bytes as u64),
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
        self.tops_lock().forget(|k| gone(k.0, k.1));
        self.matches_lock().forget(|k| gone(k.0, k.1));
        self.cache_lock()
            .retain(|(path, _)| !deleted.iter().any(|s| &s.path == path));
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.order.retain(|k| !gone(k.0, k.1));
        connections.parts.retain(|k, _| !gone(k.0, k.1));
    }

    /// A segment's chunk if it is among the recently read ones.
    pub(super) fn cached(&self, name: &Path) -> Option<Arc<Chunk>> {
        let cache = self.cache_lock();
        cache
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, c)| c.clone())
    }

    /// A segment's chunk from the cache of recently read ones, else from `read`.
    pub(super) fn read_cached(
        &self,
        name: &Path,
        read: impl FnOnce() -> Result<DataFrame, String>,
    ) -> Result<Arc<Chunk>, StoreError> {
        let mut cache = self.cache_lock();
        if let Some(i) = cache.iter().position(|(p, _)| p == name) {
            let hit = cache.remove(i).unwrap_or_else(|| unreachable!());
            let chunk = hit.1.clone();
            cache.push_back(hit);
            return Ok(chunk);
        }
        drop(cache);
        let fail = |message: String| StoreError::Segment {
            path: name.display().to_string(),
            message,
        };
        let frame = read().map_err(fail)?;
        self.stats.segment_reads.fetch_add(1, Ordering::Relaxed);
        let chunk = Arc::new(Chunk::from_parquet_frame(&frame).map_err(fail)?);
        let mut cache = self.cache_lock();
        cache.push_back((name.to_path_buf(), chunk.clone()));
        if cache.len() > SEGMENT_CACHE {
            cache.pop_front();
        }
        Ok(chunk)
    }

    pub(super) fn matches_lock(&self) -> MutexGuard<'_, Lru<MatchKey, Option<Arc<Chunk>>>> {
        self.matches.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn cache_lock(&self) -> MutexGuard<'_, VecDeque<(PathBuf, Arc<Chunk>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn tops_lock(&self) -> MutexGuard<'_, Lru<TopKey, Arc<Vec<Group>>>> {
        self.tops.lock().unwrap_or_else(|p| p.into_inner())
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
            let cache = store.connections.lock().unwrap();
            cache.order.iter().map(|k| (k.0, k.1)).collect()
        };
        let kept = |store: &FlowStore| {
            let mut keys: Vec<(u64, u64)> = store
                .matches_lock()
                .entries
                .keys()
                .map(|k| (k.0, k.1))
                .collect();
            keys.extend(store.tops_lock().entries.keys().map(|k| (k.0, k.1)));
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
    fn answer_caches_drop_the_least_recently_used_and_stay_within_their_bound() {
        let mut lru: Lru<u32, u32> = Lru::new(1_000);
        for k in 0..10 {
            lru.put(k, k, 100);
        }
        assert_eq!(lru.bytes, 1_000);
        assert_eq!(lru.get(&0), Some(0), "0 is now the most recently used");
        // Over the bound: the least recently used go until a quarter is free.
        lru.put(10, 10, 100);
        assert_eq!(lru.bytes, 800);
        assert_eq!(lru.bytes, lru.entries.values().map(|e| e.1).sum::<usize>());
        for gone in 1..4 {
            assert_eq!(lru.get(&gone), None, "{gone}");
        }
        for kept in [0, 4, 9, 10] {
            assert_eq!(lru.get(&kept), Some(kept));
        }
        // An answer over a quarter of the bound is not kept.
        lru.put(11, 11, 300);
        assert_eq!(lru.get(&11), None);
        assert_eq!(lru.bytes, 800);
    }
}
