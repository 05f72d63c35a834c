//! `/flows` pages: newest first, cut by a cursor that neither skips nor repeats flows while
//! new ones arrive, across this replica's chunks and, with a bucket, every replica's.

use super::*;

/// One page of flows, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub flows: Vec<json::StoredFlow>,
    /// Pass as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

/// Where the next page of flows starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Flows below this sequence number (a store of its own: `123456`).
    Seq(u64),
    /// Flows after this one, newest first by time, then replica, then sequence number (a
    /// store sharing a bucket: `time.seq.replica`).
    At {
        time_ns: i64,
        seq: u64,
        replica: Arc<str>,
    },
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cursor::Seq(s) => write!(f, "{s}"),
            Cursor::At {
                time_ns,
                seq,
                replica,
            } => write!(f, "{time_ns}.{seq}.{replica}"),
        }
    }
}

impl std::str::FromStr for Cursor {
    /// The `cursor` parameter named, with its value.
    type Err = BadParameter;

    fn from_str(s: &str) -> Result<Cursor, BadParameter> {
        let bad = || BadParameter::new("cursor", s, "not a cursor this API returned");
        let mut parts = s.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(seq), None, None) => seq.parse().map(Cursor::Seq).map_err(|_| bad()),
            (Some(time), Some(seq), Some(replica)) => Ok(Cursor::At {
                time_ns: time.parse().map_err(|_| bad())?,
                seq: seq.parse().map_err(|_| bad())?,
                replica: replica.into(),
            }),
            _ => Err(bad()),
        }
    }
}

/// Most parquet segments one query reads (4 M flows at the default chunk size), so that a
/// request's cost is bounded whatever the retention.
pub const MAX_SEGMENTS_PER_QUERY: usize = 64;

impl FlowStore {
    /// Flows matching `filter`, newest first, older than `cursor` when given. At most
    /// [`MAX_SEGMENTS_PER_QUERY`] segments are read: a page cut short there holds fewer than
    /// `limit` flows and a cursor to go on from.
    pub fn list(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if self.bucket.is_some() {
            return self.list_shared(filter, cursor, limit);
        }
        let cursor = match cursor {
            None => None,
            Some(Cursor::Seq(s)) => Some(s),
            Some(c) => return Err(StoreError::Cursor(c.to_string())),
        };
        let mut flows: Vec<json::StoredFlow> = Vec::with_capacity(limit.min(1024) + 1);
        let conditions: Arc<str> = filter.conditions_key().into();
        let mut segments_read = 0;
        // Where a page cut short by the segment budget stopped: every flow from here up to
        // the cursor has been looked at.
        let mut stopped_at = None;
        for source in self.sources(filter)? {
            if flows.len() > limit {
                break;
            }
            let (first_seq, _, min_time, max_time) = source.span();
            if cursor.is_some_and(|c| first_seq >= c) || !filter.overlaps(min_time, max_time) {
                continue;
            }
            if !source.may_match(filter) {
                continue;
            }
            if source.is_stored() {
                if segments_read == MAX_SEGMENTS_PER_QUERY {
                    let next = source.span().1 + 1;
                    stopped_at = Some(cursor.map_or(next, |c| c.min(next)));
                    break;
                }
                segments_read += 1;
            }
            let want = u32::try_from(limit + 1 - flows.len()).unwrap_or(u32::MAX) as IdxSize;
            let also = cursor.map(|c| col("seq").lt(lit(c)));
            let Some((chunk, found)) =
                self.select(&source, filter, &conditions, also, &|rows| rows.tail(want))?
            else {
                continue;
            };
            let mut rows = json::StoredFlow::read(&chunk, &found)?;
            rows.reverse();
            flows.extend(rows);
        }
        let next_cursor = if flows.len() > limit {
            flows.truncate(limit);
            flows.last().map(|f| f.seq)
        } else {
            stopped_at
        };
        Ok(Page {
            flows,
            next_cursor: next_cursor.map(Cursor::Seq),
        })
    }

    /// [`FlowStore::list`] over this replica's flows and the bucket's: sources overlap in
    /// time (replicas write side by side), so each gives its newest matching flows past the
    /// cursor and the page keeps the newest of all, by time, replica and sequence number.
    /// Sources are visited newest possible flow first, until none can hold a flow newer than
    /// the page's oldest.
    pub(super) fn list_shared(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let own = match &self.bucket {
            Some(b) => b.replica().clone(),
            None => unreachable!("called with a bucket"),
        };
        let cursor = match cursor {
            None => None,
            Some(Cursor::At {
                time_ns,
                seq,
                replica,
            }) => Some((time_ns, replica, seq)),
            Some(c) => return Err(StoreError::Cursor(c.to_string())),
        };
        let mut sources = self.sources(filter)?;
        let conditions: Arc<str> = filter.conditions_key().into();
        sources.sort_by_key(|s| std::cmp::Reverse(s.span().3));
        // Newest first: (time, replica, seq, flow).
        let mut found: Vec<(i64, Arc<str>, u64, json::StoredFlow)> = Vec::new();
        let mut read = 0;
        let mut stopped_at = None;
        for source in sources {
            let (_, _, min_time, max_time) = source.span();
            if !filter.overlaps(min_time, max_time)
                || cursor.as_ref().is_some_and(|c| min_time > c.0)
                || !source.may_match(filter)
            {
                continue;
            }
            if found.len() > limit && found[limit].0 > max_time {
                break;
            }
            if source.is_stored() {
                // The budget ends a page only when it holds a flow no unread source can
                // follow, so the next page starts further on.
                if read >= MAX_SEGMENTS_PER_QUERY && found.first().is_some_and(|f| f.0 > max_time) {
                    stopped_at = Some(max_time);
                    break;
                }
                read += 1;
            }
            let replica: Arc<str> = match &source {
                Source::Remote(o) => o.replica.clone(),
                _ => own.clone(),
            };
            let also = cursor.as_ref().map(|(time, r, seq)| {
                let time_col = || col("time");
                match replica.cmp(r) {
                    std::cmp::Ordering::Less => time_col().lt_eq(lit(*time)),
                    std::cmp::Ordering::Equal => time_col()
                        .lt(lit(*time))
                        .or(time_col().eq(lit(*time)).and(col("seq").lt(lit(*seq)))),
                    std::cmp::Ordering::Greater => time_col().lt(lit(*time)),
                }
            });
            let want = u32::try_from(limit + 1).unwrap_or(u32::MAX) as IdxSize;
            let newest = |rows: LazyFrame| {
                rows.sort(
                    ["time", "seq"],
                    SortMultipleOptions::default().with_order_descending(true),
                )
                .limit(want)
            };
            let Some((chunk, rows)) = self.select(&source, filter, &conditions, also, &newest)?
            else {
                continue;
            };
            for f in json::StoredFlow::read(&chunk, &rows)? {
                found.push((f.time_ns, replica.clone(), f.seq, f));
            }
            found.sort_by(|a, b| (b.0, &b.1, b.2).cmp(&(a.0, &a.1, a.2)));
            found.truncate(limit + 1);
        }
        if let Some(t) = stopped_at {
            // Flows at `t` or older may be in sources not read: the next page starts there,
            // whatever this page collected of them.
            found.retain(|f| f.0 > t);
        }
        let next_cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(time_ns, replica, seq, _)| Cursor::At {
                time_ns: *time_ns,
                seq: *seq,
                replica: replica.clone(),
            })
        } else {
            stopped_at.map(|t| Cursor::At {
                time_ns: t + 1,
                seq: 0,
                replica: "".into(),
            })
        };
        Ok(Page {
            flows: found.into_iter().map(|f| f.3).collect(),
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

    #[test]
    fn pages_neither_skip_nor_repeat_while_flows_arrive() {
        let flows = flows(6_000);
        let store = FlowStore::in_memory(FlowStoreConfig {
            chunk_flows: 700,
            ..FlowStoreConfig::default()
        });
        let rows: Vec<Row> = flows.iter().map(Row::new).collect();
        store.append(&rows[..3_000]);
        let f = Filter::default();
        let first = store.list(&f, None, 250).unwrap();
        let mut seen: Vec<u64> = first.flows.iter().map(|x| x.seq).collect();
        let mut cursor = first.next_cursor;
        let mut next = 3_000;
        while let Some(c) = cursor {
            if next < rows.len() {
                store.append(&rows[next..next + 150]);
                next += 150;
            }
            let page = store.list(&f, Some(c), 250).unwrap();
            seen.extend(page.flows.iter().map(|x| x.seq));
            cursor = page.next_cursor;
        }
        assert_eq!(seen, (1..=3_000).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn a_query_reads_a_bounded_number_of_segments() {
        let dir = tempfile::tempdir().unwrap();
        let n = (MAX_SEGMENTS_PER_QUERY + 20) * 1_000 + 3_000;
        let flows = flows(n);
        let store = filled(small(Some(dir.path().into())), &flows);
        assert_eq!(
            store.stats.segments.load(Ordering::Relaxed) as usize,
            MAX_SEGMENTS_PER_QUERY + 20
        );
        // A filter nothing matches, its values in every segment (DNS is never dropped): the
        // first page stops at the budget with a cursor, the next one reads the rest.
        let none = filter(&[("verdict", "DROPPED"), ("destination_port", "53")]);
        let first = store.list(&none, None, 10).unwrap();
        assert!(first.flows.is_empty());
        let cursor = first.next_cursor.expect("a cursor to go on from");
        assert_eq!(
            cursor,
            Cursor::Seq(20 * 1_000 + 1),
            "64 segments and memory were read"
        );
        let second = store.list(&none, Some(cursor), 10).unwrap();
        assert!(second.flows.is_empty());
        assert_eq!(second.next_cursor, None);
        // A filter naming a pod no segment of this run holds skips them all unread: one
        // page, no budget reached, nothing to go on from; grouping by it is not refused.
        let absent = filter(&[("pod", "nobody-here"), ("destination_port", "53")]);
        let page = store.list(&absent, None, 10).unwrap();
        assert!(page.flows.is_empty());
        assert_eq!(page.next_cursor, None);
        assert_eq!(store.top(&absent, GroupBy::Verdict, 5).unwrap().1, 0);
        // Every flow is still reachable, page by page.
        assert_eq!(all_pages(&store, &Filter::default(), 5_000).len(), n);
        // Grouping is never refused for the history it covers: it reads one segment at a
        // time, and the segments' summaries answer grouping by time alone.
        let forwarded = filter(&[("verdict", "FORWARDED")]);
        let (_, total) = store.top(&forwarded, GroupBy::Verdict, 5).unwrap();
        assert_eq!(
            total as usize,
            flows
                .iter()
                .filter(|f| f.verdict == crate::flow::Verdict::Forwarded)
                .count()
        );
        let (_, total) = store.top(&Filter::default(), GroupBy::Verdict, 5).unwrap();
        assert_eq!(total as usize, n);
        let mut recent = Filter::default();
        let since = flows[n - 10_000].time_ns;
        recent.since_ns = Some(since);
        let (_, total) = store.top(&recent, GroupBy::Verdict, 5).unwrap();
        assert_eq!(
            total as usize,
            flows.iter().filter(|f| f.time_ns >= since).count()
        );
    }

    #[test]
    fn cursors_print_and_parse_back() {
        for c in [
            Cursor::Seq(42),
            Cursor::At {
                time_ns: 1_796_047_199_999_000_000,
                seq: 7,
                replica: "exfilwatch-7d9f.x2k".into(),
            },
            Cursor::At {
                time_ns: -1,
                seq: 0,
                replica: "".into(),
            },
        ] {
            assert_eq!(c.to_string().parse::<Cursor>(), Ok(c.clone()));
        }
        for bad in ["", "x", "1.2", "1.x.r", "-1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        let store = FlowStore::in_memory(small(None));
        let at = "1.2.r".parse().unwrap();
        assert!(matches!(
            store.list(&Filter::default(), Some(at), 10),
            Err(StoreError::Cursor(_))
        ));
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let mut f = Filter::default();
        for (k, v) in [
            ("verdict", "MAYBE"),
            ("port", "70000"),
            ("cidr", "10.0.0.0/33"),
            ("ip", "10.0.0"),
            ("since", "yesterday"),
            ("since", "9999999999d"),
            ("until", "3651d"),
            ("pod", ""),
            ("protocol", "QUIC"),
        ] {
            let e = f.set(k, v, 0).unwrap_err();
            assert_eq!(e.parameter, k);
            assert!(e.to_string().contains(v), "{e}");
        }
        assert!(!f.set("colour", "blue", 0).unwrap());
        assert_eq!(
            query::parse_time("since", "2h", 10_000_000_000_000).unwrap(),
            10_000_000_000_000 - 7_200_000_000_000
        );
        let r = filter(&[
            ("since", "2026-01-02T00:00:00Z"),
            ("until", "2026-01-01T00:00:00Z"),
        ]);
        assert_eq!(r.check_range().unwrap_err().parameter, "until");
    }
}
