//! What the store's tests share: simulated flows, a small store, filters and expected answers.
#![cfg(test)]

use super::*;
use crate::detect::testing::flow_event;
use crate::flow::wire::Decoder;
use crate::sim::traffic::TrainingCluster;
use std::time::Duration;

/// `n` simulated flows with an exfiltration attempt every 50th.
pub(super) fn flows(n: usize) -> Vec<FlowEvent> {
    flows_attacked_every(n, 50)
}

/// `n` flows of the simulator, an exfiltration attempt (denied) in place of every
/// `every`th.
pub(super) fn flows_attacked_every(n: usize, every: usize) -> Vec<FlowEvent> {
    let mut cluster = TrainingCluster::new(7, 1_767_225_600_000_000_000, 1_000_000);
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if out.len() % every == every - 1 {
            for f in cluster.exfiltration_attempt() {
                out.push(flow_event(&mut decoder, f));
            }
        } else {
            out.push(flow_event(&mut decoder, cluster.next_flow()));
        }
    }
    out.truncate(n);
    out
}

pub(super) fn small(dir: Option<PathBuf>) -> FlowStoreConfig {
    FlowStoreConfig {
        memory_flows: 3_000,
        chunk_flows: 1_000,
        dir,
        // The simulated flows are from January 2026.
        retention: Duration::from_secs(3_650 * 86_400),
        ..FlowStoreConfig::default()
    }
}

pub(super) fn filled(config: FlowStoreConfig, flows: &[FlowEvent]) -> Arc<FlowStore> {
    let store = FlowStore::open(config).unwrap();
    let rows: Vec<Row> = flows.iter().map(Row::new).collect();
    for batch in rows.chunks(777) {
        store.append(batch);
    }
    store
}

/// Every namespace's connections as comparable text: key, flows, addresses.
pub(super) fn answer(store: &FlowStore, namespace: &str, since: i64, until: i64) -> Vec<String> {
    store
        .connections(namespace, since, until)
        .unwrap()
        .iter()
        .map(|c| format!("{:?} {} {:?}", c.key, c.flows, c.addresses))
        .collect()
}

pub(super) fn parquet_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
}

pub(super) fn filter(params: &[(&str, &str)]) -> Filter {
    let mut f = Filter::default();
    for (k, v) in params {
        assert!(f.set(k, v, 0).unwrap(), "{k} is a filter");
    }
    f
}

/// Every page of a filtered listing, as sequence numbers.
pub(super) fn all_pages(store: &FlowStore, f: &Filter, limit: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(f, cursor, limit).unwrap();
        assert!(page.flows.len() <= limit);
        seqs.extend(page.flows.iter().map(|x| x.seq));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return seqs,
        }
    }
}

pub(super) fn expected(flows: &[FlowEvent], keep: impl Fn(&FlowEvent) -> bool) -> Vec<u64> {
    let mut seqs: Vec<u64> = (1u64..)
        .zip(flows)
        .filter(|(_, f)| keep(f))
        .map(|(s, _)| s)
        .collect();
    seqs.reverse();
    seqs
}
