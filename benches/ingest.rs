//! Ingest benchmarks: how many Hubble flows per second one core turns into `FlowEvent`s.
//!
//! - `decode/*`: `GetFlowsResponse` bytes to `FlowEvent` on one thread, with the zero-copy
//!   decoder, against a full prost decode of the same bytes (generated structs, no conversion),
//!   against a reader that walks the same bytes keeping only four fields (the floor any
//!   decoder has to walk), and against the jsonpb line decoder that `replay` uses.
//! - `end_to_end`: a tonic Observer server on its own thread streams pre-encoded flows over
//!   loopback gRPC; the real Hubble source (decode, de-duplication, bounded channel) and a
//!   summarising consumer run on one current-thread runtime, i.e. one core.
//!
//! Inputs are the simulator's training-namespace flows, with the `Summary` text Hubble still
//! fills in (about 600 bytes a message), and the same flows shaped as a real Cilium cluster
//! reports them (`sim::traffic::cilium_shaped`: labels, node labels, services, interface,
//! allowing policy; about 1.25 KB). Run: `cargo bench --bench ingest`; see the README.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use exfilwatch::config::HubbleConfig;
use exfilwatch::flow::json::JsonDecoder;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::pipeline::{self, Summary};
use exfilwatch::proto::flow::Flow;
use exfilwatch::proto::observer::GetFlowsResponse;
use exfilwatch::sim::observer::SimObserver;
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::source::SourceStats;
use exfilwatch::source::hubble::HubbleSource;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn main() {
    divan::main();
}

const T0: i64 = 1_764_115_200_000_000_000;
const BATCH: usize = 256;

/// The two flow shapes every benchmark runs on.
const SHAPES: [&str; 2] = ["simulator", "cilium-shaped"];

fn flows(n: usize, shape: &str) -> Vec<Flow> {
    let mut cluster = TrainingCluster::new(42, T0, 100_000);
    (0..n)
        .map(|_| {
            let mut f = cluster.next_flow();
            f.summary = "TCP Flags: ACK, PSH".into();
            if shape == "cilium-shaped" {
                f = exfilwatch::sim::traffic::cilium_shaped(f);
            }
            f
        })
        .collect()
}

fn encoded(n: usize, shape: &str) -> Vec<Vec<u8>> {
    flows(n, shape)
        .into_iter()
        .map(exfilwatch::sim::encode)
        .collect()
}

#[divan::bench_group(name = "decode")]
mod decode {
    use super::*;

    #[divan::bench(args = SHAPES)]
    fn zero_copy_to_flow_event(bencher: Bencher, shape: &str) {
        let messages = encoded(BATCH, shape);
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let mut decoder = Decoder::default();
        bencher
            .counter(ItemsCount::new(BATCH))
            .counter(BytesCount::new(bytes))
            .bench_local(|| {
                for m in &messages {
                    black_box(decoder.decode_response(black_box(m)).ok());
                }
            });
    }

    #[divan::bench(args = SHAPES)]
    fn prost_full_decode_only(bencher: Bencher, shape: &str) {
        let messages = encoded(BATCH, shape);
        bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
            for m in &messages {
                black_box(GetFlowsResponse::decode(black_box(&m[..])).ok());
            }
        });
    }

    /// The reference a full decoder is held against: the same bytes walked field by field as
    /// any protobuf reader must, keeping four values (time, verdict, destination IP, source
    /// namespace) as borrowed bytes, with no interning, no endpoint and no checks beyond the
    /// wire format's.
    #[divan::bench(args = SHAPES)]
    fn four_fields_only(bencher: Bencher, shape: &str) {
        let messages = encoded(BATCH, shape);
        bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
            for m in &messages {
                black_box(four::response(black_box(m)));
            }
        });
    }

    #[divan::bench]
    fn jsonpb_line_to_flow_event(bencher: Bencher) {
        // jsonpb lines of the upstream-encoded fixture, repeated.
        let fixture = include_str!("../tests/fixtures/flows.jsonl");
        let lines: Vec<&str> = fixture.lines().cycle().take(BATCH).collect();
        let mut decoder = JsonDecoder::default();
        bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
            for line in &lines {
                black_box(decoder.decode_line(black_box(line)).ok());
            }
        });
    }
}

/// A minimal protobuf reader for `four_fields_only`.
mod four {
    /// A varint at the front of `buf`, and what follows it.
    #[inline]
    fn varint(buf: &[u8]) -> Option<(u64, &[u8])> {
        let mut value = 0u64;
        for (i, &b) in buf.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some((value, &buf[i + 1..]));
            }
        }
        None
    }

    /// Calls `each(field, varint, bytes)` for every field of one message.
    #[inline]
    fn walk<'a>(mut buf: &'a [u8], mut each: impl FnMut(u64, u64, &'a [u8])) -> Option<()> {
        while !buf.is_empty() {
            let (key, rest) = varint(buf)?;
            let (field, wire) = (key >> 3, key & 7);
            buf = match wire {
                0 => {
                    let (v, rest) = varint(rest)?;
                    each(field, v, &[]);
                    rest
                }
                1 => rest.get(8..)?,
                2 => {
                    let (len, rest) = varint(rest)?;
                    let len = usize::try_from(len).ok()?;
                    let (bytes, rest) = (rest.get(..len)?, rest.get(len..)?);
                    each(field, 0, bytes);
                    rest
                }
                5 => rest.get(4..)?,
                _ => return None,
            };
        }
        Some(())
    }

    /// Time (seconds), verdict, destination IP and source namespace of one response's flow.
    pub fn response(buf: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
        let mut flow: &[u8] = &[];
        walk(buf, |f, _, b| {
            if f == 1 {
                flow = b;
            }
        })?;
        let (mut time, mut verdict, mut ip, mut namespace) = (0, 0, &[][..], &[][..]);
        let (mut time_msg, mut ip_msg, mut source) = (&[][..], &[][..], &[][..]);
        walk(flow, |f, v, b| match f {
            1 => time_msg = b,
            2 => verdict = v,
            5 => ip_msg = b,
            8 => source = b,
            _ => {}
        })?;
        walk(time_msg, |f, v, _| {
            if f == 1 {
                time = v;
            }
        })?;
        walk(ip_msg, |f, _, b| {
            if f == 2 {
                ip = b;
            }
        })?;
        walk(source, |f, _, b| {
            if f == 3 {
                namespace = b;
            }
        })?;
        Some((time, verdict, ip, namespace))
    }
}

/// Flows streamed per end-to-end iteration.
const STREAM: usize = 200_000;

#[divan::bench(sample_count = 10, sample_size = 1, args = SHAPES)]
fn end_to_end(bencher: Bencher, shape: &str) {
    // The server: its own thread and runtime, a ring pre-filled with encoded flows.
    let sim = SimObserver::new(STREAM);
    for f in flows(STREAM, shape) {
        sim.push_flow(f);
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let addr = server_rt
        .block_on(sim.clone().spawn_local(None, stop.clone()))
        .unwrap();

    // The client: one current-thread runtime on the benchmark thread.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = HubbleConfig {
        address: format!("http://{addr}"),
        namespaces: vec!["ai-training".into()],
        backoff_initial: Duration::from_millis(10),
        ..HubbleConfig::default()
    };
    bencher.counter(ItemsCount::new(STREAM)).bench_local(|| {
        client_rt.block_on(async {
            let stats = Arc::new(SourceStats::default());
            let source = HubbleSource::new(config.clone(), stats.clone()).start_at(0);
            let (tx, rx) = mpsc::channel(pipeline::CHANNEL_CAPACITY);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(source.run(tx, cancel.clone()));
            let mut rx = rx;
            let mut summary = Summary::new(&config.namespaces);
            let mut seen = 0;
            while seen < STREAM {
                let event = rx.recv().await.expect("stream ended early");
                summary.add(&event);
                seen += 1;
            }
            cancel.cancel();
            let _ = task.await;
            assert_eq!(summary.flows, STREAM as u64);
        });
    });
    stop.cancel();
}
