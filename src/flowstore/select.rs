//! The rows of one chunk a `/flows` page takes: from memory, from the rows kept for the same
//! conditions, or read column-first from a segment on disk or a file of the table.

use super::*;

/// What a stored chunk holds for a `/flows` filter.
pub(super) enum Matched {
    /// Every row matching the filter's conditions, the time range aside: few enough to keep.
    Few(Option<Arc<Chunk>>),
    /// Nothing to keep (too many matches, or the chunk could not be read): the page's rows,
    /// as [`FlowStore::select`] answers.
    NotKept(Option<(Arc<Chunk>, DataFrame)>),
}

/// The columns a read takes to know a stored chunk's bounds (and a page's order).
pub(super) const BOUNDS: [&str; 2] = ["seq", "time"];

/// What a file of the table holds for a filter's conditions ([`FlowStore::matches`]).
enum Remote {
    None,
    /// Its few matching rows, every column.
    Few(Arc<Chunk>),
    /// The whole file: many rows match.
    Whole(Arc<Chunk>),
}

/// `filter`'s time range and a further condition, both to hold: what rows already matching
/// its other conditions are picked by.
pub(super) fn in_time(filter: &Filter, also: Option<Expr>) -> Expr {
    match also {
        Some(also) => filter.time_predicate().and(also),
        None => filter.time_predicate(),
    }
}

/// A filter's predicate (`None`: nothing can match) and a further condition, both to hold.
pub(super) fn both(predicate: Option<Expr>, also: Option<Expr>) -> Option<Expr> {
    let predicate = predicate?;
    Some(match also {
        Some(also) => predicate.and(also),
        None => predicate,
    })
}

impl FlowStore {
    /// The rows of `source` matching `filter` and `also`, as `pick` orders and cuts them,
    /// with the chunk they read from; `None` when none matches or the source cannot be read
    /// (logged and counted, as [`FlowStore::load`] does).
    ///
    /// A stored chunk's rows matching the filter's conditions (its time range aside) are
    /// kept when they are few, at most a sixteenth of a chunk ([`MATCH_CACHE_BYTES`] for
    /// all): the next page with the same conditions (an SRE's refresh, the next page, another
    /// time range) takes them instead of reading the segment again. A segment on disk that
    /// is not among the recently read ones is read column-first: the filter's columns, then
    /// every column of the rows from the first to the last match only. Most segments a
    /// selective page looks at hold no or few matches, and reading a whole segment (every
    /// string of every column into dictionaries) costs many times more. `conditions` is
    /// `filter.conditions_key()`, made once for all the chunks a query visits.
    pub(super) fn select(
        &self,
        source: &Source,
        filter: &Filter,
        conditions: &Arc<str>,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Option<(Arc<Chunk>, DataFrame)>, StoreError> {
        if let Source::Memory(chunk) = source {
            let Some(predicate) = both(filter.predicate(chunk), also) else {
                return Ok(None);
            };
            let found = pick(chunk.frame.clone().lazy().filter(predicate)).collect()?;
            return Ok(Some((chunk.clone(), found)));
        }
        let (first, last) = source.id();
        let key = (first, last, conditions.clone());
        let kept = self.matches.get(&key);
        let rows = match kept {
            Some(rows) => {
                self.stats.match_cache_hits.fetch_add(1, Ordering::Relaxed);
                rows
            }
            None => match self.matches(source, filter, also.clone(), pick)? {
                Matched::Few(rows) => {
                    // The key's text is shared by every chunk's entry for the same query.
                    let size = 96 + rows.as_ref().map_or(0, |c| c.bytes());
                    self.matches.put(key, rows.clone(), size);
                    rows
                }
                Matched::NotKept(found) => return Ok(found),
            },
        };
        let Some(rows) = rows else {
            return Ok(None);
        };
        let predicate = in_time(filter, also);
        let found = pick(rows.frame.clone().lazy().filter(predicate)).collect()?;
        Ok(Some((rows, found)))
    }

    /// The most rows of a stored chunk kept for one set of conditions.
    pub(super) fn few(&self) -> usize {
        self.config.chunk_flows / 16
    }

    /// How many columns of a span of `rows` a column-first read decodes at once to take a
    /// filter's matches from it: as many cells as four columns of a whole chunk hold (4 of a
    /// segment of 65,536 rows, all 32 of a span of 8,192).
    pub(super) fn columns_at_once(&self, rows: usize) -> usize {
        (self.config.chunk_flows * 4 / rows.max(1)).max(1)
    }

    /// A stored chunk's rows matching `filter`'s conditions when they are few, else what
    /// [`FlowStore::select`] answers.
    pub(super) fn matches(
        &self,
        source: &Source,
        filter: &Filter,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Matched, StoreError> {
        // A filter ruling out forwarded flows needs only a segment's others, when kept.
        let (unforwarded, dictionary) = match source {
            Source::Disk(s) => (
                s.dictionary
                    .as_ref()
                    .filter(|_| {
                        filter.rules_out(Col::Verdict, crate::flow::Verdict::Forwarded as u32)
                    })
                    .and_then(|d| d.unforwarded.clone()),
                s.dictionary.as_ref(),
            ),
            _ => (None, None),
        };
        let chunk = match (unforwarded, self.stored(source)) {
            (Some(rows), _) => {
                self.stats.unforwarded_hits.fetch_add(1, Ordering::Relaxed);
                rows
            }
            (None, None) => match self.load(source) {
                Some(chunk) => chunk,
                None => return Ok(Matched::NotKept(None)),
            },
            (None, Some(stored)) => {
                let read = stored.and_then(|mut stored| {
                    let read = match stored {
                        Stored::Disk(_) => self
                            .select_columns_first(
                                &mut stored,
                                dictionary,
                                filter,
                                also.clone(),
                                pick,
                            )
                            .map(Err),
                        Stored::Remote(_) => self.read_remote_matches(&mut stored, filter).map(Ok),
                    };
                    read.map_err(|message| StoreError::Segment {
                        path: stored.name().display().to_string(),
                        message,
                    })
                });
                match read {
                    Err(e) => {
                        self.skip_unreadable(&e);
                        return Ok(Matched::NotKept(None));
                    }
                    Ok(Err(matched)) => return Ok(matched),
                    Ok(Ok(Remote::None)) => return Ok(Matched::Few(None)),
                    Ok(Ok(Remote::Few(rows))) => return Ok(Matched::Few(Some(rows))),
                    Ok(Ok(Remote::Whole(chunk))) => chunk,
                }
            }
        };
        let Some(conditions) = filter.conditions_only().predicate(&chunk) else {
            return Ok(Matched::Few(None));
        };
        let rows = chunk.frame.clone().lazy().filter(conditions).collect()?;
        if rows.height() == 0 {
            return Ok(Matched::Few(None));
        }
        if rows.height() <= self.few() {
            let fail = |message: String| StoreError::Segment {
                path: format!("{source:?}"),
                message,
            };
            return Ok(Matched::Few(Some(Arc::new(
                chunk.subset(rows).map_err(fail)?,
            ))));
        }
        let predicate = in_time(filter, also);
        let found = pick(rows.lazy().filter(predicate)).collect()?;
        Ok(Matched::NotKept(Some((chunk, found))))
    }

    /// What a file of the table holds for `filter`'s conditions, its filter's columns read
    /// first (alone, of the row groups whose statistics can hold what it names): no match;
    /// few (at most [`FlowStore::few`]), then read with every column from the row groups that
    /// hold them only, to be kept as the file's matches; or many, then the whole file, kept
    /// among the recently read chunks since the pages after this one read it again.
    fn read_remote_matches(&self, stored: &mut Stored, filter: &Filter) -> Result<Remote, String> {
        let text = |e: PolarsError| e.to_string();
        let cols = filter.columns();
        let uuids = filter.reads_uuids();
        let schema = stored.names()?;
        let named = cols
            .iter()
            .map(|c| c.name())
            .chain(chunk::UUID_COLUMNS.into_iter().filter(|_| uuids))
            .any(|n| schema.iter().any(|s| s == n));
        // Without conditions on columns the file has, every flow may match. Groups are left
        // out by what the conditions name, not by time: what is kept answers these
        // conditions over any time range.
        if named {
            self.keep_row_groups(stored, filter, false);
            let narrow = self.read_narrow(stored, &[], &cols, uuids, true)?;
            let partial = Chunk::partial_from_parquet_frame(&narrow, &cols, uuids)?;
            let Some(predicate) = filter.conditions_only().predicate(&partial) else {
                return Ok(Remote::None);
            };
            let hits = partial
                .frame
                .clone()
                .lazy()
                .filter(predicate)
                .select([col(chunk::ROW_INDEX)])
                .collect()
                .map_err(text)?;
            let rows: Vec<IdxSize> = hits
                .column(chunk::ROW_INDEX)
                .and_then(|c| c.idx().cloned())
                .map_err(text)?
                .into_no_null_iter()
                .collect();
            if rows.is_empty() {
                return Ok(Remote::None);
            }
            if rows.len() <= self.few() {
                let (rows, skipped) = stored.keep_rows(&rows);
                self.count_skipped(skipped);
                stored.fetch(self.bucket.as_deref(), &schema)?;
                let groups = stored.reader()?.finish().map_err(text)?;
                let at = IdxCa::from_vec(chunk::ROW_INDEX.into(), rows);
                let taken = groups.take(&at).map_err(text)?;
                return Ok(Remote::Few(Arc::new(Chunk::from_parquet_frame(&taken)?)));
            }
        }
        stored.all_row_groups();
        stored.fetch(self.bucket.as_deref(), &schema)?;
        let reader = stored.reader()?;
        self.read_cached(stored.name(), || reader.finish().map_err(|e| e.to_string()))
            .map(Remote::Whole)
            .map_err(|e| e.to_string())
    }

    /// [`Stored::keep_row_groups`], counted.
    pub(super) fn keep_row_groups(&self, stored: &mut Stored, filter: &Filter, by_time: bool) {
        let skipped = stored.keep_row_groups(filter, by_time);
        self.count_skipped(skipped);
    }

    /// Counts row groups of the table's files left unread.
    fn count_skipped(&self, groups: usize) {
        if let Some(b) = &self.bucket {
            b.stats
                .row_groups_skipped
                .fetch_add(groups as u64, Ordering::Relaxed);
        }
    }

    /// [`FlowStore::matches`] on a segment on disk, reading the filter's columns first (with its
    /// segment's dictionary when this run wrote it).
    pub(super) fn select_columns_first(
        &self,
        stored: &mut Stored,
        dictionary: Option<&Dictionary>,
        filter: &Filter,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Matched, String> {
        let text = |e: PolarsError| e.to_string();
        let cols = filter.columns();
        let uuids = filter.reads_uuids();
        let narrow = self.read_narrow(stored, &BOUNDS, &cols, uuids, true)?;
        // With the segment's dictionaries at hand, polars compares the strings themselves
        // against the values the filter accepts; else they are coded first, as a whole read
        // codes them.
        let conditions = filter.conditions_only();
        let (frame, predicate) = match dictionary {
            Some(d) => (narrow, conditions.predicate_on_strings(&d.texts, &d.ips)),
            None => {
                let partial = Chunk::partial_from_parquet_frame(&narrow, &cols, uuids)?;
                let predicate = conditions.predicate(&partial);
                (partial.frame, predicate)
            }
        };
        let Some(predicate) = predicate else {
            return Ok(Matched::Few(None));
        };
        let hits = frame.lazy().filter(predicate).collect().map_err(text)?;
        // Few matches are all read, to be kept; of many, only those the page takes.
        let few = hits.height() <= self.few();
        let hits = if few {
            hits
        } else {
            let predicate = in_time(filter, also);
            pick(hits.lazy().filter(predicate))
                .collect()
                .map_err(text)?
        };
        let mut rows: Vec<IdxSize> = hits
            .column(chunk::ROW_INDEX)
            .and_then(|c| c.idx().cloned())
            .map_err(text)?
            .into_no_null_iter()
            .collect();
        rows.sort_unstable();
        let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
            return Ok(if few {
                Matched::Few(None)
            } else {
                Matched::NotKept(None)
            });
        };
        // The rows from the first match to the last, a few columns at a time, each narrowed
        // to the matches as soon as it is read: matches spread over a segment would otherwise
        // decode the whole of it, every column at once, to keep a handful of rows.
        let span = (last - first) as usize + 1;
        let at = IdxCa::from_vec(
            chunk::ROW_INDEX.into(),
            rows.iter().map(|r| r - first).collect(),
        );
        // The file's footer is parsed once, for every group; a file of the table fetches every
        // column's chunks in one round of requests.
        let names = stored.names()?;
        stored.fetch(self.bucket.as_deref(), &names)?;
        let metadata = stored.reader()?.get_metadata().map_err(text)?.clone();
        let mut columns = Vec::with_capacity(names.len());
        for group in names.chunks(self.columns_at_once(span)) {
            let mut reader = stored.reader()?;
            reader.set_metadata(metadata.clone());
            let part = reader
                .with_columns(Some(group.to_vec()))
                .with_slice(Some((first as usize, span)))
                .finish()
                .map_err(text)?;
            columns.extend(part.take(&at).map_err(text)?.into_columns());
        }
        let taken = DataFrame::new(rows.len(), columns).map_err(text)?;
        let chunk = Arc::new(Chunk::from_parquet_frame(&taken)?);
        if few {
            return Ok(Matched::Few(Some(chunk)));
        }
        let found = pick(chunk.frame.clone().lazy()).collect().map_err(text)?;
        Ok(Matched::NotKept(Some((chunk, found))))
    }

    /// A column-first read of a stored chunk: `lead` (`seq` and `time`: [`BOUNDS`], or none),
    /// `cols`, the UUID columns when `uuids` is set, and each row's index in the file when
    /// `row_index` is. Columns added since the file was written are left out, and read as
    /// empty ([`Chunk::partial_from_parquet_frame`]).
    pub(super) fn read_narrow(
        &self,
        stored: &mut Stored,
        lead: &[&'static str],
        cols: &[Col],
        uuids: bool,
        row_index: bool,
    ) -> Result<DataFrame, String> {
        let text = |e: PolarsError| e.to_string();
        let schema = stored.names()?;
        let names: Vec<String> = lead
            .iter()
            .copied()
            .chain(cols.iter().map(|c| c.name()))
            .chain(chunk::UUID_COLUMNS.into_iter().filter(|_| uuids))
            .filter(|n| schema.iter().any(|s| s == n))
            .map(str::to_owned)
            .collect();
        stored.fetch(self.bucket.as_deref(), &names)?;
        let frame = stored
            .reader()?
            .with_columns(Some(names))
            .with_row_index(row_index.then(|| RowIndex {
                name: chunk::ROW_INDEX.into(),
                offset: 0,
            }))
            .finish()
            .map_err(text)?;
        self.stats
            .segment_filtered_reads
            .fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::segment::Dictionary;
    use crate::flowstore::testing::*;

    use crate::flow::Verdict;

    #[test]
    fn filters_select_what_a_plain_scan_selects_across_memory_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(8_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        assert!(
            store.stats.segments.load(Ordering::Relaxed) >= 5,
            "flows rolled to disk"
        );
        let ns = |f: &FlowEvent| f.source.namespace.to_string();
        // Three flows by UUID: one in memory, two in segments.
        let wanted: Vec<u128> = [7, 4_000, 7_999]
            .iter()
            .map(|&i: &usize| flows[i].uuid.unwrap())
            .collect();
        let picked = wanted
            .iter()
            .map(|u| crate::flow::format_uuid(*u))
            .collect::<Vec<_>>()
            .join(",");
        type Keep = Box<dyn Fn(&FlowEvent) -> bool>;
        let cases: Vec<(Vec<(&str, &str)>, Keep)> = vec![
            (vec![], Box::new(|_| true)),
            (
                vec![("verdict", "DROPPED")],
                Box::new(|f| f.verdict == Verdict::Dropped),
            ),
            (
                vec![("source_namespace", "ai-training"), ("port", "29500")],
                Box::new(move |f| {
                    ns(f) == "ai-training"
                        && (f.source.port == 29500 || f.destination.port == 29500)
                }),
            ),
            (
                vec![("fqdn", "AmazonAws.com")],
                Box::new(|f| {
                    f.destination_names
                        .first()
                        .is_some_and(|n| n.ends_with(".amazonaws.com"))
                        || f.dns.as_ref().is_some_and(|d| {
                            d.query.trim_end_matches('.').ends_with(".amazonaws.com")
                        })
                }),
            ),
            (
                vec![("destination_cidr", "10.0.0.0/16"), ("protocol", "tcp")],
                Box::new(|f| {
                    f.destination
                        .ip
                        .is_some_and(|ip| ip.to_string().starts_with("10.0."))
                        && f.protocol == crate::flow::L4Protocol::Tcp
                }),
            ),
            (
                vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
                Box::new(|f| {
                    (f.source.pod.starts_with("llm-") || f.destination.pod.starts_with("llm-"))
                        && [133, 181].contains(&f.drop_reason)
                }),
            ),
            (
                vec![("destination_ip", crate::sim::traffic::EXFIL_IP)],
                Box::new(|f| {
                    f.destination.ip.map(|i| i.to_string()).as_deref()
                        == Some(crate::sim::traffic::EXFIL_IP)
                }),
            ),
            (
                vec![("namespace", "no-such-namespace")],
                Box::new(|_| false),
            ),
            (
                vec![("uuid", &picked)],
                Box::new(move |f| wanted.contains(&f.uuid.unwrap())),
            ),
        ];
        for (params, keep) in cases {
            let want = expected(&flows, keep);
            let got = all_pages(&store, &filter(&params), 997);
            assert_eq!(got.len(), want.len(), "{params:?}");
            assert_eq!(got, want, "{params:?}");
        }
        // A time window.
        let (since, until) = (flows[1000].time_ns, flows[6000].time_ns);
        let mut f = Filter::default();
        f.since_ns = Some(since);
        f.until_ns = Some(until);
        let want = expected(&flows, |x| x.time_ns >= since && x.time_ns < until);
        assert_eq!(all_pages(&store, &f, 2_500), want);
        f.set("verdict", "DROPPED", 0).unwrap();
        assert!(all_pages(&store, &f, 100).len() < want.len());
    }

    #[test]
    fn a_segment_read_column_first_selects_what_a_whole_read_selects() {
        let dir = tempfile::tempdir().unwrap();
        // Few enough denied flows that segments keep them (at most a sixteenth).
        let flows = flows_attacked_every(8_000, 150);
        let store = filled(small(Some(dir.path().into())), &flows);
        let segments = store.lock().segments.clone();
        assert!(segments.len() >= 5, "flows rolled to disk");
        let uuids = [10, 3_500, 3_501]
            .iter()
            .map(|&i: &usize| crate::flow::format_uuid(flows[i].uuid.unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        let since = flows[2_500].time_ns.to_string();
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("verdict", "DROPPED")],
            vec![("source_namespace", "ai-training"), ("port", "29500")],
            vec![("fqdn", "amazonaws.com")],
            vec![("destination_cidr", "10.0.0.0/16"), ("protocol", "tcp")],
            vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
            vec![("destination_ip", crate::sim::traffic::EXFIL_IP)],
            vec![("namespace", "no-such-namespace")],
            vec![("uuid", &uuids)],
        ];
        let newest = |rows: LazyFrame| rows.tail(40);
        let mut kinds = [0, 0];
        let lines = |found: Option<(Arc<Chunk>, DataFrame)>| -> Vec<String> {
            found.map_or_else(Vec::new, |(chunk, rows)| {
                json::StoredFlow::read(&chunk, &rows)
                    .unwrap()
                    .iter()
                    .map(|f| format!("{} {}", f.seq, f.to_jsonpb_line()))
                    .collect()
            })
        };
        // What the rows of the whole segment give.
        let oracle = |s: &Segment, f: &Filter, also: Option<Expr>| {
            let chunk = store.load(&Source::Disk(s.clone())).unwrap();
            let predicate = both(f.predicate(&chunk), also)?;
            let found = newest(chunk.frame.clone().lazy().filter(predicate));
            Some((chunk, found.collect().unwrap()))
        };
        let st = &store.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (mut matched, mut unforwarded_reads) = (0, 0);
        for params in &cases {
            let mut f = filter(params);
            // Segments of this run answer a filter ruling out forwarded flows from the others,
            // kept, or compare strings through their dictionaries; an earlier run's (none
            // kept) code them first.
            let unkept = segments.iter().map(|s| Segment {
                dictionary: s.dictionary.clone().map(|d| Dictionary {
                    unforwarded: None,
                    ..d
                }),
                ..s.clone()
            });
            let without = segments.iter().map(|s| Segment {
                dictionary: None,
                ..s.clone()
            });
            let variants: Vec<Segment> = segments
                .iter()
                .cloned()
                .chain(unkept)
                .chain(without)
                .collect();
            for s in &variants {
                let unforwarded = s
                    .dictionary
                    .as_ref()
                    .is_some_and(|d| d.unforwarded.is_some())
                    && f.rules_out(Col::Verdict, crate::flow::Verdict::Forwarded as u32);
                let middle = (s.first_seq + s.last_seq) / 2;
                let source = Source::Disk(s.clone());
                for also in [None, Some(col("seq").lt(lit(middle)))] {
                    for since in [None, Some(since.parse::<i64>().unwrap())] {
                        f.since_ns = since;
                        let read = || {
                            let conditions = f.conditions_key().into();
                            store
                                .select(&source, &f, &conditions, also.clone(), &newest)
                                .unwrap()
                        };
                        store.cache.forget(|_| true);
                        store.matches.forget(|_| true);
                        let filtered = count(&st.segment_filtered_reads);
                        let from_unforwarded = count(&st.unforwarded_hits);
                        let first = lines(read());
                        let read_once = count(&st.segment_filtered_reads);
                        assert_eq!(read_once, filtered + u64::from(!unforwarded));
                        assert_eq!(
                            count(&st.unforwarded_hits),
                            from_unforwarded + u64::from(unforwarded)
                        );
                        unforwarded_reads += usize::from(unforwarded);
                        // Again: from the rows kept when they are few.
                        let hits = count(&st.match_cache_hits);
                        let again = lines(read());
                        let kept = count(&st.match_cache_hits) > hits;
                        assert_eq!(kept, count(&st.segment_filtered_reads) == read_once);
                        // From the whole segment, once it is among the recently read.
                        let whole = lines(oracle(s, &f, also.clone()));
                        store.matches.forget(|_| true);
                        let from_whole = lines(read());
                        let at = format!("{params:?} since {since:?} in {s:?}");
                        assert_eq!(first, whole, "{at}");
                        assert_eq!(again, whole, "again, {at}");
                        assert_eq!(from_whole, whole, "from the whole segment, {at}");
                        kinds[usize::from(kept)] += 1;
                        matched += first.len();
                    }
                }
            }
        }
        // Both kinds: rows kept (few matches) and not (many).
        assert!(kinds[0] > 0 && kinds[1] > 0, "{kinds:?}");
        assert!(matched > 1_000, "the cases match flows: {matched}");
        assert!(
            unforwarded_reads > 0,
            "segments answered from their unforwarded flows"
        );
        assert!(st.segment_filtered_reads.load(Ordering::Relaxed) > 0);
        assert!(st.segment_reads.load(Ordering::Relaxed) > 0);
        // A listing reads the segments not cached column-first.
        store.cache.forget(|_| true);
        let (whole, filtered) = (
            st.segment_reads.load(Ordering::Relaxed),
            st.segment_filtered_reads.load(Ordering::Relaxed),
        );
        let rare = filter(&[("destination_ip", crate::sim::traffic::EXFIL_IP)]);
        let page = store.list(&rare, None, 5_000).unwrap();
        assert!(!page.flows.is_empty());
        assert_eq!(st.segment_reads.load(Ordering::Relaxed), whole);
        assert!(st.segment_filtered_reads.load(Ordering::Relaxed) > filtered);
        // The same page again reads no segment: each one's few matches were kept.
        let (filtered, hits) = (
            count(&st.segment_filtered_reads),
            count(&st.match_cache_hits),
        );
        let again = store.list(&rare, None, 5_000).unwrap();
        let seqs = |p: &Page| p.flows.iter().map(|f| f.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&again), seqs(&page));
        assert_eq!(count(&st.segment_filtered_reads), filtered);
        assert_eq!(count(&st.match_cache_hits), hits + segments.len() as u64);
    }
}
