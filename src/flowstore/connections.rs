//! A namespace's flows folded into connections: who talked to whom, on which port, with which
//! verdict, how often and when. What the policy advisor reads instead of single flows: a week
//! of a training job's traffic is millions of flows but a few hundred connections.
//!
//! Each chunk is folded on its own codes (no text per row) and the parts merged by value; the
//! parts of whole chunks are cached like `/flows/top` answers, since a sealed chunk never
//! changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use polars::prelude::*;

use super::chunk::{Chunk, Col};
use super::{FlowStore, StoreError};
use crate::common::hash::FastMap;
use crate::flow::intern::Sym;

/// Most local pods a connection names.
pub const MAX_PODS: usize = 8;

/// What tells two connections apart: the local endpoint (the source of egress, the
/// destination of ingress), the peer, the port and what the network did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    /// Hubble's `TrafficDirection` number (0 unknown, 1 ingress, 2 egress).
    pub direction: u32,
    /// Hubble's `Verdict` number.
    pub verdict: u32,
    pub drop_reason: u32,
    pub src_namespace: Sym,
    /// Sorted labels joined by commas (see `chunk::join_labels`).
    pub src_labels: Sym,
    pub src_identity: u32,
    pub dst_namespace: Sym,
    pub dst_labels: Sym,
    pub dst_identity: u32,
    pub dst_port: u16,
    /// `L4Protocol` as stored.
    pub protocol: u32,
    /// The destination's DNS name, when Hubble knew it.
    pub fqdn: Sym,
    /// The queried name of a DNS request flow.
    pub dns_query: Sym,
}

/// One connection: its key and what was seen of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub key: ConnectionKey,
    pub flows: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    /// Up to [`MAX_PODS`] local pods.
    pub pods: BTreeSet<Sym>,
    /// For a peer outside the cluster's pods (world, host, ...): its addresses (the
    /// destination's for egress, the source's for ingress) and their flows, by address.
    /// Pods are told by their labels; their addresses are not kept.
    pub addresses: Vec<(IpAddr, u64)>,
    /// The policy that denied it, "namespace/name", when Hubble named one.
    pub policy: Sym,
}

/// Codes of one row's key within a chunk, and its hour (0 when not bucketed).
type Codes = ([u32; 13], i64);

/// One hour, in nanoseconds.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// What to fold of a chunk.
#[allow(missing_debug_implementations, reason = "holds a closure")]
pub struct Fold<'a> {
    /// One namespace's connections, or every namespace's (`None`).
    pub namespace: Option<&'a str>,
    pub since_ns: i64,
    pub until_ns: i64,
    /// Keep each hour's flows apart (for the hourly summaries).
    pub by_hour: bool,
    /// Rows already counted elsewhere (by time and sequence number).
    pub skip: Option<&'a dyn Fn(i64, u64) -> bool>,
}

const KEY_COLUMNS: [Col; 13] = [
    Col::Direction,
    Col::Verdict,
    Col::DropReason,
    Col::SrcNamespace,
    Col::SrcLabels,
    Col::SrcIdentity,
    Col::DstNamespace,
    Col::DstLabels,
    Col::DstIdentity,
    Col::DstPort,
    Col::Protocol,
    Col::Fqdn,
    Col::DnsQuery,
];

struct Part {
    flows: u64,
    first_ns: i64,
    last_ns: i64,
    pods: Vec<u32>,
    policy: (u32, u32),
    /// Address code to flows.
    addresses: FastMap<u32, u64>,
}

/// The connections of `chunk`'s request flows within `[since_ns, until_ns)` that leave or
/// enter `namespace`. Reply packets and DNS responses belong to the request's connection and
/// are left out.
pub fn fold(
    chunk: &Chunk,
    namespace: &str,
    since_ns: i64,
    until_ns: i64,
) -> PolarsResult<Vec<Connection>> {
    let spec = Fold {
        namespace: Some(namespace),
        since_ns,
        until_ns,
        by_hour: false,
        skip: None,
    };
    Ok(fold_with(chunk, &spec)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// The namespace a connection belongs to: its source's for egress, its destination's for
/// ingress.
pub fn local_namespace(key: &ConnectionKey) -> &str {
    if key.direction == 1 {
        &key.dst_namespace
    } else {
        &key.src_namespace
    }
}

/// [`fold`] as `spec` says; each connection with its hour (start, in nanoseconds; 0 unless
/// `by_hour`).
pub fn fold_with(chunk: &Chunk, spec: &Fold<'_>) -> PolarsResult<Vec<(i64, Connection)>> {
    // The namespace's code; 0 (the empty string) stands for "any namespace".
    let ns = match spec.namespace {
        Some(namespace) => match chunk.texts.iter().position(|t| &**t == namespace) {
            Some(code) => u32::try_from(code).unwrap_or(u32::MAX),
            None => return Ok(Vec::new()),
        },
        None => 0,
    };
    let mut parts: FastMap<Codes, Part> = FastMap::default();
    // An array at a time: a sealed chunk's columns are one array each, a snapshot of the
    // open one's an array a block, all alike.
    let mut offset = 0;
    for len in chunk.frame.column("time")?.i64()?.chunk_lengths() {
        fold_rows(&chunk.frame.slice(offset as i64, len), spec, ns, &mut parts)?;
        offset += len;
    }
    let text = |code: u32| chunk.texts.get(code as usize).cloned().unwrap_or_default();
    Ok(parts
        .into_iter()
        .map(|((codes, hour), part)| {
            let policy = match part.policy {
                (_, 0) => Sym::default(),
                (n, p) => Sym::from(format!("{}/{}", text(n), text(p))),
            };
            let connection = Connection {
                key: ConnectionKey {
                    direction: codes[0],
                    verdict: codes[1],
                    drop_reason: codes[2],
                    src_namespace: text(codes[3]),
                    src_labels: text(codes[4]),
                    src_identity: codes[5],
                    dst_namespace: text(codes[6]),
                    dst_labels: text(codes[7]),
                    dst_identity: codes[8],
                    dst_port: u16::try_from(codes[9]).unwrap_or(0),
                    protocol: codes[10],
                    fqdn: text(codes[11]),
                    dns_query: text(codes[12]),
                },
                flows: part.flows,
                first_ns: part.first_ns,
                last_ns: part.last_ns,
                pods: part
                    .pods
                    .iter()
                    .map(|p| text(*p))
                    .filter(|p| !p.is_empty())
                    .collect(),
                policy,
                addresses: {
                    let mut a: Vec<(IpAddr, u64)> = part
                        .addresses
                        .iter()
                        .filter_map(|(code, n)| {
                            Some((chunk.ips.get(*code as usize).copied().flatten()?, *n))
                        })
                        .collect();
                    a.sort_unstable();
                    a
                },
            };
            (hour, connection)
        })
        .collect())
}

/// Folds `frame`'s rows (one block of a chunk) into `parts`.
fn fold_rows(
    frame: &DataFrame,
    spec: &Fold<'_>,
    ns: u32,
    parts: &mut FastMap<Codes, Part>,
) -> PolarsResult<()> {
    let (since_ns, until_ns) = (spec.since_ns, spec.until_ns);
    // The columns' own values, not copies: a block's columns are each one array.
    let numbers =
        |c: Col| -> PolarsResult<Cow<'_, [u32]>> { Ok(values(frame.column(c.name())?.u32()?)) };
    let time = values(frame.column("time")?.i64()?);
    let seq = match spec.skip {
        Some(_) => values(frame.column("seq")?.u64()?),
        None => Cow::Borrowed(&[][..]),
    };
    let columns: Vec<Cow<'_, [u32]>> = KEY_COLUMNS
        .iter()
        .map(|c| numbers(*c))
        .collect::<PolarsResult<_>>()?;
    let [src_ip, dst_ip, is_reply, l7, src_pod, dst_pod, pol_ns, pol] = [
        Col::SrcIp,
        Col::DstIp,
        Col::IsReply,
        Col::L7,
        Col::SrcPod,
        Col::DstPod,
        Col::PolicyNamespace,
        Col::Policy,
    ]
    .map(numbers);
    let (src_ip, dst_ip, is_reply, l7, src_pod, dst_pod, pol_ns, pol) = (
        src_ip?, dst_ip?, is_reply?, l7?, src_pod?, dst_pod?, pol_ns?, pol?,
    );
    let c = |col: Col| {
        KEY_COLUMNS
            .iter()
            .position(|k| *k == col)
            .unwrap_or_default()
    };
    let (src_ns, dst_ns, direction) = (
        c(Col::SrcNamespace),
        c(Col::DstNamespace),
        c(Col::Direction),
    );
    for row in 0..time.len() {
        let t = time[row];
        if t < since_ns || t >= until_ns || is_reply[row] == 2 || l7[row] == 2 {
            continue;
        }
        // Ingress (1) is the destination's traffic; egress and unknown, the source's.
        let ingress = columns[direction][row] == 1;
        let local = if ingress {
            columns[dst_ns][row]
        } else {
            columns[src_ns][row]
        };
        if local == 0 || (ns != 0 && local != ns) {
            continue;
        }
        if let Some(skip) = spec.skip
            && skip(t, seq[row])
        {
            continue;
        }
        let mut codes: Codes = ([0; 13], 0);
        for (i, column) in columns.iter().enumerate() {
            codes.0[i] = column[row];
        }
        if spec.by_hour {
            codes.1 = t.div_euclid(HOUR_NS) * HOUR_NS;
        }
        // The peer's address, when the peer is not a pod (no namespace).
        let address = if ingress {
            (columns[src_ns][row] == 0).then_some(src_ip[row])
        } else {
            (columns[dst_ns][row] == 0).then_some(dst_ip[row])
        };
        let pod = if ingress { dst_pod[row] } else { src_pod[row] };
        let part = parts.entry(codes).or_insert_with(|| Part {
            flows: 0,
            first_ns: t,
            last_ns: t,
            pods: Vec::new(),
            policy: (pol_ns[row], pol[row]),
            addresses: FastMap::default(),
        });
        if let Some(a) = address.filter(|a| *a != 0) {
            *part.addresses.entry(a).or_default() += 1;
        }
        part.flows += 1;
        part.first_ns = part.first_ns.min(t);
        part.last_ns = part.last_ns.max(t);
        if part.pods.len() < MAX_PODS && !part.pods.contains(&pod) {
            part.pods.push(pod);
        }
    }
    Ok(())
}

/// A column's values as one slice: borrowed when the column is one array without nulls (as a
/// chunk's are), else gathered.
fn values<T: PolarsNumericType>(column: &ChunkedArray<T>) -> Cow<'_, [T::Native]> {
    match column.cont_slice() {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => Cow::Owned(column.into_no_null_iter().collect()),
    }
}

/// Addresses with their flows.
type Addresses = Vec<(IpAddr, u64)>;

/// Merges parts from several chunks into one list, sorted by key.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Connection>) -> Vec<Connection> {
    // Addresses gather in one list per connection, sorted and summed once at the end.
    let mut all: FastMap<&'a ConnectionKey, (Connection, Addresses)> = FastMap::default();
    for c in parts {
        let (m, addresses) = all.entry(&c.key).or_insert_with(|| {
            let mut first = c.clone();
            first.flows = 0;
            first.first_ns = i64::MAX;
            first.last_ns = i64::MIN;
            first.addresses = Vec::new();
            (first, Vec::new())
        });
        m.flows += c.flows;
        m.first_ns = m.first_ns.min(c.first_ns);
        m.last_ns = m.last_ns.max(c.last_ns);
        for pod in &c.pods {
            if m.pods.len() >= MAX_PODS {
                break;
            }
            if !m.pods.contains(pod) {
                m.pods.insert(pod.clone());
            }
        }
        if m.policy.is_empty() {
            m.policy = c.policy.clone();
        }
        addresses.extend_from_slice(&c.addresses);
    }
    let mut out: Vec<Connection> = all
        .into_values()
        .map(|(mut c, mut addresses)| {
            addresses.sort_unstable_by_key(|(ip, _)| *ip);
            addresses.dedup_by(|next, kept| {
                let same = next.0 == kept.0;
                if same {
                    kept.1 += next.1;
                }
                same
            });
            // The list held every part's addresses; an open hour keeps it until the next
            // merge, so it keeps only the distinct ones.
            addresses.shrink_to_fit();
            c.addresses = addresses;
            c
        })
        .collect();
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    out
}

impl FlowStore {
    /// The connections of `namespace` in `[since_ns, until_ns)`: its flows folded by local
    /// endpoint, peer, port and verdict (see [`connections`]), this replica's and, with a
    /// bucket, every replica's. Reads every chunk in the range, without the segment budget
    /// of `/flows`: an operator's question over days, not a dashboard's. Parts of chunks
    /// wholly inside the range are cached.
    pub fn connections(
        &self,
        namespace: &str,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<Vec<Connection>, StoreError> {
        // Whole hours inside the range that have a summary.
        let hours: BTreeMap<i64, super::summaries::Hour> = self
            .summaries_lock()
            .as_ref()
            .map(|s| {
                s.hours
                    .range(since_ns..)
                    .take_while(|(start, _)| **start + HOUR_NS <= until_ns)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut parts = Vec::new();
        let mut summarised: Vec<&super::summaries::Hour> = Vec::new();
        for hour in hours.values() {
            let key = (
                hour.first_seq,
                hour.last_seq,
                format!("{namespace}@{}", hour.start_ns),
            );
            let cached = self.connections.get(&key);
            let part = match cached {
                Some(p) => p,
                None => match super::summaries::read(hour, namespace) {
                    Ok(p) => {
                        self.connections.put(key, p.clone(), 1);
                        p
                    }
                    Err(e) => {
                        // Unreadable: its flows are read from the segments instead.
                        tracing::warn!("flow store: hourly summary: {e}");
                        continue;
                    }
                },
            };
            summarised.push(hour);
            parts.push(part);
        }
        let counted = |t: i64, seq: u64| summarised.iter().any(|h| h.counts(t, seq));
        // This replica's chunks and, with a bucket, the other replicas' objects: the answer
        // is the same whichever replica is asked.
        let mut window = super::Filter::default();
        (window.since_ns, window.until_ns) = (Some(since_ns), Some(until_ns));
        // The namespace on either side rules out the chunks that cannot hold it (a bad name
        // rules out nothing: the fold finds nothing).
        let _ = window.set("namespace", namespace, 0);
        for source in self.sources(&window)? {
            let (first_seq, last_seq, min_time, max_time) = source.span();
            if max_time < since_ns || min_time >= until_ns || !source.may_match(&window) {
                continue;
            }
            // Hours of this source that summaries count (they count this replica's own
            // chunks only); all of them: nothing to read.
            let touched: Vec<&&super::summaries::Hour> = summarised
                .iter()
                .filter(|_| !source.is_remote())
                .filter(|h| h.start_ns + HOUR_NS > min_time && h.start_ns <= max_time)
                .collect();
            let first_hour = min_time.div_euclid(HOUR_NS);
            let last_hour = max_time.div_euclid(HOUR_NS);
            let all_counted = touched.len() as i64 == last_hour - first_hour + 1
                && touched
                    .iter()
                    .all(|h| h.first_seq <= first_seq && last_seq <= h.last_seq);
            if all_counted {
                continue;
            }
            let whole = since_ns <= min_time && max_time < until_ns && touched.is_empty();
            let (id, version) = source.id();
            let key = (id, version, namespace.to_owned());
            let cached = whole.then(|| self.connections.get(&key)).flatten();
            let part = match cached {
                Some(part) => part,
                None => {
                    let Some(chunk) = self.load(&source) else {
                        continue;
                    };
                    let spec = Fold {
                        namespace: Some(namespace),
                        since_ns,
                        until_ns,
                        by_hour: false,
                        skip: (!touched.is_empty())
                            .then_some(&counted as &dyn Fn(i64, u64) -> bool),
                    };
                    let part: Vec<Connection> = fold_with(&chunk, &spec)?
                        .into_iter()
                        .map(|(_, c)| c)
                        .collect();
                    let part = Arc::new(part);
                    if whole {
                        self.connections.put(key, part.clone(), 1);
                    }
                    part
                }
            };
            parts.push(part);
        }
        Ok(merge(parts.iter().flat_map(|p| p.iter())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        flows: u64,
        first: i64,
        last: i64,
        addresses: &[(&str, u64)],
        pods: &[&str],
    ) -> Connection {
        Connection {
            key: ConnectionKey {
                direction: 2,
                verdict: 1,
                drop_reason: 0,
                src_namespace: "ai-training".into(),
                src_labels: "k8s:app=llm-pretrain".into(),
                src_identity: 1,
                dst_namespace: "".into(),
                dst_labels: "reserved:world".into(),
                dst_identity: 2,
                dst_port: 443,
                protocol: 1,
                fqdn: "".into(),
                dns_query: "".into(),
            },
            flows,
            first_ns: first,
            last_ns: last,
            pods: pods.iter().map(|p| Sym::from(*p)).collect(),
            policy: Sym::default(),
            addresses: addresses
                .iter()
                .map(|(ip, n)| (ip.parse().unwrap(), *n))
                .collect(),
        }
    }

    #[test]
    fn merging_adds_flows_and_addresses_and_bounds_the_pods() {
        let pods: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        let a = part(
            5,
            10,
            20,
            &[("203.0.113.1", 3), ("203.0.113.2", 2)],
            &pods[..6],
        );
        let b = part(
            4,
            5,
            15,
            &[("203.0.113.2", 1), ("198.51.100.9", 3)],
            &pods[6..],
        );
        let merged = merge([&a, &b]);
        assert_eq!(merged.len(), 1);
        let m = &merged[0];
        assert_eq!((m.flows, m.first_ns, m.last_ns), (9, 5, 20));
        assert_eq!(m.pods.len(), MAX_PODS);
        let addresses: Vec<(String, u64)> = m
            .addresses
            .iter()
            .map(|(ip, n)| (ip.to_string(), *n))
            .collect();
        assert_eq!(
            addresses,
            [
                ("198.51.100.9".to_owned(), 3),
                ("203.0.113.1".to_owned(), 3),
                ("203.0.113.2".to_owned(), 3)
            ]
        );
    }

    use crate::flowstore::testing::*;

    use crate::detect::testing::flow_event;

    use crate::config::FlowStoreConfig;
    use crate::flow::FlowEvent;
    use crate::flow::Verdict;
    use crate::flow::wire::Decoder;
    use crate::sim::traffic::TrainingCluster;

    #[test]
    fn hourly_summaries_answer_as_the_segments_do_and_count_late_flows_once() {
        const HOUR: i64 = HOUR_NS;
        let dir = tempfile::tempdir().unwrap();
        let start = 1_767_225_600_000_000_000; // on the hour
        // 8 hours of flows, one every 4 s, then a late flow of hour 2 after everything.
        let mut cluster = TrainingCluster::new(3, start, 4_000_000_000);
        let mut decoder = Decoder::default();
        let mut events: Vec<FlowEvent> = (0..7_200)
            .map(|_| flow_event(&mut decoder, cluster.next_flow()))
            .collect();
        cluster.set_now_ns(start + 2 * HOUR + 60_000_000_000);
        let late: Vec<FlowEvent> = cluster
            .exfiltration_attempt()
            .into_iter()
            .map(|f| flow_event(&mut decoder, f))
            .collect();
        events.extend(late.iter().cloned());
        let config = FlowStoreConfig {
            memory_flows: 1_000,
            ..small(Some(dir.path().to_path_buf()))
        };
        let store = filled(config.clone(), &events);
        store.persist().unwrap();
        let hours = store.summaries_lock().as_ref().unwrap().hours.len();
        assert!(hours >= 6, "{hours} hours summarised");

        // The same answers from the segments alone (a copy without the summaries).
        let plain = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, plain.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        let reference = FlowStore::open_read_only(FlowStoreConfig {
            dir: Some(plain.path().to_path_buf()),
            ..config.clone()
        })
        .unwrap();
        assert!(
            reference
                .summaries_lock()
                .as_ref()
                .unwrap()
                .hours
                .is_empty()
        );
        for (since, until) in [
            (start, start + 9 * HOUR),
            (start + HOUR, start + 4 * HOUR),
            (start + HOUR + 1, start + 4 * HOUR - 1),
            (start + 2 * HOUR, start + 3 * HOUR),
        ] {
            let with = answer(&store, "ai-training", since, until);
            assert_eq!(
                with,
                answer(&reference, "ai-training", since, until),
                "{since}..{until}"
            );
            assert!(!with.is_empty());
        }
        // The late denied attempts are in hour 2 (read from their own segment), once.
        let denied: u64 = store
            .connections("ai-training", start + 2 * HOUR, start + 3 * HOUR)
            .unwrap()
            .iter()
            .filter(|c| c.key.verdict == Verdict::Dropped as u32)
            .map(|c| c.flows)
            .sum();
        assert_eq!(denied, late.len() as u64);

        // A new run keeps the summaries and answers the same; deleting segments deletes the
        // summaries that count them.
        drop(store);
        let again = FlowStore::open(config).unwrap();
        assert_eq!(again.summaries_lock().as_ref().unwrap().hours.len(), hours);
        assert_eq!(
            answer(&again, "ai-training", start, start + 9 * HOUR),
            answer(&reference, "ai-training", start, start + 9 * HOUR)
        );
        // The answer really comes from the summaries: emptying hour 3's empties that hour.
        let hour3 = again.summaries_lock().as_ref().unwrap().hours[&(start + 3 * HOUR)].clone();
        std::fs::write(&hour3.path, "[]").unwrap();
        let reread = FlowStore::open_read_only(again.config().clone()).unwrap();
        assert!(answer(&reread, "ai-training", start + 3 * HOUR, start + 4 * HOUR).is_empty());
        assert_eq!(
            answer(&reread, "ai-training", start + 4 * HOUR, start + 5 * HOUR),
            answer(
                &reference,
                "ai-training",
                start + 4 * HOUR,
                start + 5 * HOUR
            )
        );
        again.retain(i64::MAX);
        assert!(again.summaries_lock().as_ref().unwrap().hours.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("connections"))
                .unwrap()
                .count(),
            0
        );
    }
}
