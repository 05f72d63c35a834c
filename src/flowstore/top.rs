//! `/flows/top`: matching flows grouped by destination, source, FQDN, port, namespace or
//! verdict, each chunk's answer kept when the chunk is sealed.

use super::*;

/// How `/flows/top` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Destination,
    Source,
    Fqdn,
    Port,
    Namespace,
    Verdict,
}

impl GroupBy {
    /// Every grouping, with its name in the API.
    const TABLE: [(GroupBy, &'static str); 6] = [
        (GroupBy::Destination, "destination"),
        (GroupBy::Source, "source"),
        (GroupBy::Fqdn, "fqdn"),
        (GroupBy::Port, "port"),
        (GroupBy::Namespace, "namespace"),
        (GroupBy::Verdict, "verdict"),
    ];

    pub const ALL: [GroupBy; 6] = {
        let mut all = [GroupBy::Destination; 6];
        let mut i = 0;
        while i < 6 {
            all[i] = Self::TABLE[i].0;
            i += 1;
        }
        all
    };

    pub const NAMES: [&'static str; 6] = {
        let mut names = [""; 6];
        let mut i = 0;
        while i < 6 {
            names[i] = Self::TABLE[i].1;
            i += 1;
        }
        names
    };

    pub fn parse(name: &str) -> Option<GroupBy> {
        Self::TABLE
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(by, _)| *by)
    }

    /// The group's key as one `u64` per row: a single-column group-by is many times faster
    /// than grouping by several columns. Codes take [`CODE_BITS`] bits each, ports 16 and
    /// protocols 3; the destination takes the first of FQDN, namespace/pod or address,
    /// tagged in bits 42-43 of the target, as [`crate::flow::destination::label`] does.
    pub(super) fn key(self) -> Expr {
        let c = |x: Col| col(x.name()).cast(DataType::UInt64);
        let shift = |e: Expr, bits: u32| e * lit(1u64 << bits);
        let port_proto = || shift(c(Col::DstPort), 3) + c(Col::Protocol);
        match self {
            GroupBy::Destination => {
                let target = when(col(Col::Fqdn.name()).neq(lit(0u32)))
                    .then(c(Col::Fqdn) + lit(1u64 << 42))
                    .when(col(Col::DstNamespace.name()).neq(lit(0u32)))
                    .then(shift(c(Col::DstNamespace), CODE_BITS) + c(Col::DstPod) + lit(2u64 << 42))
                    .otherwise(c(Col::DstIp));
                shift(target, 19) + port_proto()
            }
            GroupBy::Source => shift(c(Col::SrcNamespace), CODE_BITS) + c(Col::SrcPod),
            GroupBy::Fqdn => c(Col::Fqdn),
            GroupBy::Port => port_proto(),
            GroupBy::Namespace => c(Col::SrcNamespace),
            GroupBy::Verdict => c(Col::Verdict),
        }
    }

    /// The columns [`GroupBy::key`] reads.
    pub(super) fn columns(self) -> &'static [Col] {
        match self {
            GroupBy::Destination => &[
                Col::Fqdn,
                Col::DstNamespace,
                Col::DstPod,
                Col::DstIp,
                Col::DstPort,
                Col::Protocol,
            ],
            GroupBy::Source => &[Col::SrcNamespace, Col::SrcPod],
            GroupBy::Fqdn => &[Col::Fqdn],
            GroupBy::Port => &[Col::DstPort, Col::Protocol],
            GroupBy::Namespace => &[Col::SrcNamespace],
            GroupBy::Verdict => &[Col::Verdict],
        }
    }

    /// The codes packed in a [`GroupBy::key`], in the order [`json::group_key`] reads them.
    pub(super) fn codes(self, key: u64) -> Vec<u32> {
        let mask = |bits: u32| (1u64 << bits) - 1;
        let code = |v: u64| u32::try_from(v).unwrap_or(0);
        match self {
            GroupBy::Destination => {
                let (pp, target) = (key & mask(19), key >> 19);
                let (port, proto) = (code(pp >> 3), code(pp & 7));
                let body = target & mask(42);
                match target >> 42 {
                    1 => vec![code(body), 0, 0, 0, port, proto],
                    2 => vec![
                        0,
                        code(body >> CODE_BITS),
                        code(body & mask(CODE_BITS)),
                        0,
                        port,
                        proto,
                    ],
                    _ => vec![0, 0, 0, code(body), port, proto],
                }
            }
            GroupBy::Source => vec![code(key >> CODE_BITS), code(key & mask(CODE_BITS))],
            GroupBy::Port => vec![code(key >> 3), code(key & 7)],
            GroupBy::Fqdn | GroupBy::Namespace | GroupBy::Verdict => vec![code(key)],
        }
    }
}

pub(super) const CODE_BITS: u32 = 21;

/// Chunks one `/flows/top` groups at once.
const TOP_READERS: usize = 4;

/// One group of `/flows/top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub key: String,
    pub count: u64,
    pub first_ns: i64,
    pub last_ns: i64,
}

impl FlowStore {
    /// Matching flows grouped by `by`: the `limit` biggest groups, and the total count.
    pub fn top(
        &self,
        filter: &Filter,
        by: GroupBy,
        limit: usize,
    ) -> Result<(Vec<Group>, u64), StoreError> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut total = 0u64;
        // Which chunks have their answer already; the rest are grouped a few at a time, so a
        // query holds a few chunks and the groups whatever the history it covers.
        let conditions = filter.conditions_key();
        let mut plan = Vec::new();
        for source in self.sources(filter)? {
            let (_, _, min_time, max_time) = source.span();
            if !filter.overlaps(min_time, max_time) {
                continue;
            }
            if !source.may_match(filter) {
                continue;
            }
            // A chunk wholly inside the time range answers the same for the same conditions.
            let (id, version) = source.id();
            let key = filter
                .covers(min_time, max_time)
                .then(|| (id, version, by, conditions.clone()));
            let cached = key.as_ref().and_then(|k| self.tops.get(k));
            plan.push((source, key, cached));
        }
        let mut merge = |parts: &[Group]| {
            for part in parts {
                total += part.count;
                match groups.get_mut(&part.key) {
                    Some(g) => {
                        g.count += part.count;
                        g.first_ns = g.first_ns.min(part.first_ns);
                        g.last_ns = g.last_ns.max(part.last_ns);
                    }
                    None => {
                        groups.insert(part.key.clone(), part.clone());
                    }
                }
            }
        };
        let mut todo = Vec::with_capacity(plan.len());
        for (source, key, cached) in plan {
            match cached {
                Some(parts) => {
                    self.stats.top_cache_hits.fetch_add(1, Ordering::Relaxed);
                    merge(&parts);
                }
                None => todo.push((source, key)),
            }
        }
        // The rest are grouped by up to TOP_READERS threads, each holding one chunk at a time
        // (a file of the table is mostly a wait on the bucket), their groups merged as they
        // come.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::sync_channel(TOP_READERS);
        std::thread::scope(|scope| {
            for _ in 0..TOP_READERS.min(todo.len()) {
                let tx = tx.clone();
                let (todo, next, failed) = (&todo, &next, &failed);
                scope.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let Some((source, key)) = todo.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            break;
                        };
                        let parts = match self.chunk_top(source, filter, by) {
                            Ok(None) => continue,
                            Ok(Some(parts)) => Arc::new(parts),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                let _ = tx.send(Err(e));
                                break;
                            }
                        };
                        if let Some(key) = key {
                            self.keep_top(key.clone(), parts.clone());
                        }
                        if tx.send(Ok(parts)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut first_error = None;
            for got in rx {
                match got {
                    Ok(parts) => merge(&parts),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })?;
        let mut groups: Vec<Group> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        groups.truncate(limit);
        Ok((groups, total))
    }

    /// The summary of a chunk going to disk: its groups by every key with no condition, so
    /// `/flows/top` over a time range answers from them instead of reading the segment back.
    pub(super) fn summarise(&self, chunk: &Arc<Chunk>) {
        let all = Filter::default();
        let source = Source::Memory(chunk.clone());
        for by in GroupBy::ALL {
            match self.chunk_top(&source, &all, by) {
                Ok(Some(parts)) => {
                    let key = (chunk.first_seq, chunk.last_seq, by, all.conditions_key());
                    self.keep_top(key, Arc::new(parts));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("flow store: no summary for a segment: {e}"),
            }
        }
    }

    pub(super) fn keep_top(&self, key: TopKey, groups: Arc<Vec<Group>>) {
        let size = key.3.len() + 64 + groups.iter().map(|g| g.key.len() + 48).sum::<usize>();
        self.tops.put(key, groups, size);
    }

    /// One chunk's matching flows grouped by `by`; `None` when the chunk cannot be read or
    /// holds nothing that can match.
    pub(super) fn chunk_top(
        &self,
        source: &Source,
        filter: &Filter,
        by: GroupBy,
    ) -> Result<Option<Vec<Group>>, StoreError> {
        let chunk = match self.stored(source) {
            // A stored chunk not among the recently read ones: only the columns the filter and
            // the grouping read (a `/flows/top` over the last minute meets a new segment at
            // its start at every ask; reading it whole would cost many times more and push a
            // segment a page may want out of the cache; a day of the table's files is read
            // as a tenth of its bytes).
            Some(stored) => {
                let read = stored.and_then(|mut stored| {
                    self.read_columns(&mut stored, filter, by)
                        .map_err(|message| StoreError::Segment {
                            path: stored.name().display().to_string(),
                            message,
                        })
                });
                match read {
                    Ok(chunk) => Arc::new(chunk),
                    Err(e) => {
                        self.skip_unreadable(&e);
                        return Ok(None);
                    }
                }
            }
            None => match self.load(source) {
                Some(chunk) => chunk,
                None => return Ok(None),
            },
        };
        let Some(mut predicate) = filter.predicate(&chunk) else {
            return Ok(None);
        };
        if by == GroupBy::Fqdn {
            predicate = predicate.and(col(Col::Fqdn.name()).neq(lit(0u32)));
        }
        let found = chunk
            .frame
            .clone()
            .lazy()
            .filter(predicate)
            .group_by([by.key().alias("key")])
            .agg([
                len().alias("count"),
                col("time").min().alias("first"),
                col("time").max().alias("last"),
            ])
            .collect()?;
        let counts = found.column("count")?.idx()?;
        let firsts = found.column("first")?.i64()?;
        let lasts = found.column("last")?.i64()?;
        let keys = found.column("key")?.u64()?;
        let mut parts = Vec::with_capacity(found.height());
        for i in 0..found.height() {
            let codes = by.codes(keys.get(i).unwrap_or(0));
            parts.push(Group {
                key: json::group_key(&chunk, by, &codes),
                count: u64::from(counts.get(i).unwrap_or(0)),
                first_ns: firsts.get(i).unwrap_or(0),
                last_ns: lasts.get(i).unwrap_or(0),
            });
        }
        Ok(Some(parts))
    }

    /// The columns of a stored chunk that `filter` and `by` read, as a chunk of their own.
    pub(super) fn read_columns(
        &self,
        stored: &mut Stored,
        filter: &Filter,
        by: GroupBy,
    ) -> Result<Chunk, String> {
        let mut cols = filter.columns();
        for c in by.columns() {
            if !cols.contains(c) {
                cols.push(*c);
            }
        }
        let uuids = filter.reads_uuids();
        // Of a file the time range cuts, its groups outside it are not fetched (the answer of
        // a file the range covers is kept, and takes every group).
        self.keep_row_groups(stored, filter, true);
        let frame = self.read_narrow(stored, &select::BOUNDS, &cols, uuids, false)?;
        Chunk::partial_from_parquet_frame(&frame, &cols, uuids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

    use crate::flow::destination::label as destination_label;

    use crate::flow::Verdict;

    #[test]
    fn a_segment_grouped_column_first_counts_what_the_whole_segment_counts() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows_attacked_every(8_000, 150);
        let store = filled(small(Some(dir.path().into())), &flows);
        let segments = store.lock().segments.clone();
        assert!(segments.len() >= 5, "flows rolled to disk");
        // A time that cuts a segment: rows on both sides of it.
        let since = flows[2_500].time_ns;
        let cases = [
            (vec![], None),
            (vec![], Some(since)),
            (vec![("verdict", "DROPPED")], None),
            (
                vec![("source_namespace", "ai-training"), ("port", "29500")],
                None,
            ),
            (vec![("destination_cidr", "10.0.0.0/16")], Some(since)),
            (
                vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
                None,
            ),
        ];
        let st = &store.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sorted = |mut g: Vec<Group>| {
            g.sort_by(|a, b| a.key.cmp(&b.key));
            g.into_iter()
                .map(|g| format!("{} {} {} {}", g.key, g.count, g.first_ns, g.last_ns))
                .collect::<Vec<_>>()
        };
        let mut counted = 0;
        for (params, since) in &cases {
            let mut f = filter(params);
            f.since_ns = *since;
            for by in GroupBy::ALL {
                for s in &segments {
                    let source = Source::Disk(s.clone());
                    store.cache.forget(|_| true);
                    let (whole_reads, filtered) =
                        (count(&st.segment_reads), count(&st.segment_filtered_reads));
                    let first = store.chunk_top(&source, &f, by).unwrap();
                    assert_eq!(count(&st.segment_reads), whole_reads, "no whole read");
                    assert_eq!(count(&st.segment_filtered_reads), filtered + 1);
                    // The same from the whole segment, once it is among the recently read.
                    store.load(&source).unwrap();
                    let whole = store.chunk_top(&source, &f, by).unwrap();
                    assert_eq!(count(&st.segment_filtered_reads), filtered + 1);
                    let at = format!("{params:?} since {since:?} by {by:?} in {s:?}");
                    let (first, whole) = (first.map(sorted), whole.map(sorted));
                    assert_eq!(first, whole, "{at}");
                    counted += first.map_or(0, |g| g.len());
                }
            }
        }
        assert!(counted > 100, "the cases group flows: {counted}");
    }

    #[test]
    fn top_groups_count_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(7_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        let f = filter(&[("verdict", "DROPPED")]);
        let (groups, total) = store.top(&f, GroupBy::Destination, 1_000).unwrap();
        let mut want: HashMap<String, u64> = HashMap::new();
        for flow in flows.iter().filter(|x| x.verdict == Verdict::Dropped) {
            *want.entry(destination_label(flow)).or_default() += 1;
        }
        assert_eq!(total, want.values().sum::<u64>());
        let got: HashMap<String, u64> = groups.iter().map(|g| (g.key.clone(), g.count)).collect();
        assert_eq!(got, want);
        assert!(groups.windows(2).all(|w| w[0].count >= w[1].count));
        let (verdicts, all) = store.top(&Filter::default(), GroupBy::Verdict, 10).unwrap();
        assert_eq!(all, 7_000);
        assert!(verdicts.iter().any(|g| g.key == "DROPPED"));
        let (one, _) = store.top(&Filter::default(), GroupBy::Source, 1).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].first_ns <= one[0].last_ns);
    }

    #[test]
    fn top_answers_of_whole_chunks_are_reused_and_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(12_000);
        let (older, newer) = flows.split_at(9_500);
        let store = filled(small(Some(dir.path().into())), older);
        let hits = || store.stats.top_cache_hits.load(Ordering::Relaxed);
        let want = |since: i64, upto: usize| {
            let mut want: HashMap<String, u64> = HashMap::new();
            for f in flows[..upto].iter().filter(|f| f.time_ns >= since) {
                *want.entry(destination_label(f)).or_default() += 1;
            }
            want
        };
        let got = |f: &Filter| -> HashMap<String, u64> {
            let (groups, _) = store.top(f, GroupBy::Destination, 100_000).unwrap();
            groups.into_iter().map(|g| (g.key, g.count)).collect()
        };
        // 9,500 flows in chunks of 1,000, at most 3,000 in memory: the rest in segments, each
        // summarised as it was written.
        let segments = store.stats.segments.load(Ordering::Relaxed);
        assert!(segments >= 6, "{segments} segments");
        // A range starting inside a chunk: that chunk is grouped anew each time; the
        // segments wholly inside answer from their summaries, and the sealed chunks in memory
        // from the cache the second time.
        let mut recent = Filter::default();
        let since = flows[2_500].time_ns;
        recent.since_ns = Some(since);
        assert_eq!(got(&recent), want(since, 9_500));
        assert_eq!(
            hits(),
            segments - 3,
            "the segments after the third from their summaries"
        );
        assert_eq!(got(&recent), want(since, 9_500));
        let reused = hits();
        assert!(
            reused > 2 * (segments - 3),
            "segments and sealed chunks reused, {reused} were"
        );
        // Flows that arrive afterwards are counted: the growing chunk is never reused as is.
        let rows: Vec<Row> = newer.iter().map(Row::new).collect();
        store.append(&rows);
        assert_eq!(got(&recent), want(since, 12_000));
        assert!(hits() > reused);
        // Other conditions are other answers.
        let dropped = filter(&[("verdict", "DROPPED")]);
        let (groups, total) = store.top(&dropped, GroupBy::Destination, 100_000).unwrap();
        assert_eq!(
            total as usize,
            flows
                .iter()
                .filter(|f| f.verdict == Verdict::Dropped)
                .count()
        );
        assert!(groups.iter().all(|g| g.count > 0));
    }

    #[test]
    fn packed_group_keys_keep_the_largest_codes_apart() {
        let max = (1u32 << CODE_BITS) - 1;
        let rows: [[u32; 7]; 4] = [
            // fqdn, dst ns, dst pod, dst ip, dst port, protocol, src ns / src pod
            [max, max, max, max, 65_535, 5, max],
            [0, max, max - 1, max, 65_535, 1, 1],
            [0, 0, max, max, 0, 0, 0],
            [1, 0, 0, 0, 443, 1, 0],
        ];
        let column = |i: usize, c: Col| {
            UInt32Chunked::from_vec(c.name().into(), rows.iter().map(|r| r[i]).collect())
                .into_column()
        };
        let frame = DataFrame::new(
            rows.len(),
            vec![
                column(0, Col::Fqdn),
                column(1, Col::DstNamespace),
                column(2, Col::DstPod),
                column(3, Col::DstIp),
                column(4, Col::DstPort),
                column(5, Col::Protocol),
                column(6, Col::SrcNamespace),
                column(6, Col::SrcPod),
            ],
        )
        .unwrap();
        let keys = |by: GroupBy| -> Vec<u64> {
            let out = frame
                .clone()
                .lazy()
                .select([by.key().alias("key")])
                .collect()
                .unwrap();
            out.column("key")
                .unwrap()
                .u64()
                .unwrap()
                .into_no_null_iter()
                .collect()
        };
        let dest: Vec<Vec<u32>> = keys(GroupBy::Destination)
            .into_iter()
            .map(|k| GroupBy::Destination.codes(k))
            .collect();
        assert_eq!(dest[0], vec![max, 0, 0, 0, 65_535, 5], "the FQDN wins");
        assert_eq!(
            dest[1],
            vec![0, max, max - 1, 0, 65_535, 1],
            "then namespace/pod"
        );
        assert_eq!(dest[2], vec![0, 0, 0, max, 0, 0], "then the address");
        assert_eq!(dest[3], vec![1, 0, 0, 0, 443, 1]);
        let src: Vec<Vec<u32>> = keys(GroupBy::Source)
            .into_iter()
            .map(|k| GroupBy::Source.codes(k))
            .collect();
        assert_eq!(src[0], vec![max, max]);
        assert_eq!(src[1], vec![1, 1]);
        let ports: Vec<Vec<u32>> = keys(GroupBy::Port)
            .into_iter()
            .map(|k| GroupBy::Port.codes(k))
            .collect();
        assert_eq!(ports[0], vec![65_535, 5]);
    }
}
