//! Replaying `hubble observe -o jsonpb` captures: good lines decode, bad lines are reported
//! with their line number and reason and skipped, older schemas are accepted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use exfilwatch::flow::Event;
use exfilwatch::source::SourceStats;
use exfilwatch::source::replay::replay;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const JSONPB: &str = include_str!("../fixtures/flows.jsonl");

async fn run(
    input: Vec<u8>,
) -> (
    Vec<Event>,
    exfilwatch::source::replay::ReplayReport,
    Arc<SourceStats>,
) {
    let (tx, mut rx) = mpsc::channel(4096);
    let stats = Arc::new(SourceStats::default());
    let report = replay(
        &input[..],
        "capture.jsonl",
        tx,
        stats.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (events, report, stats)
}

#[tokio::test]
async fn a_clean_capture_replays_every_event() {
    let (events, report, stats) = run(JSONPB.as_bytes().to_vec()).await;
    assert_eq!(events.len(), 7);
    assert_eq!((report.lines, report.bad_lines), (7, 0));
    assert_eq!(stats.flows(), 5);
    assert_eq!(stats.lost_total(), 12_345_678_901);
    assert_eq!(stats.node_status.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn bad_lines_are_reported_with_line_numbers_and_skipped() {
    let good: Vec<&str> = JSONPB.lines().collect();
    let mut input = Vec::new();
    let mut push = |line: &[u8]| {
        input.extend_from_slice(line);
        input.push(b'\n');
    };
    push(good[0].as_bytes()); // 1
    push(&good[1].as_bytes()[..40]); // 2: cut short
    push(b""); // 3: blank, ignored
    push(b"{\"flow\":{\"verdict\":\"MAYBE\"}}"); // 4: unknown enum value
    push(b"{\"flow\":{\"IP\":{\"source\":\"10.0.0.300\"}}}"); // 5: bad address
    push(&[b'{', 0xff, 0xfe, b'}']); // 6: not UTF-8
    push(b"{\"flow\":{\"time\":\"yesterday\"}}"); // 7: bad timestamp
    push(b"[1,2,3]"); // 8: not an object
    push(good[2].as_bytes()); // 9
    let (events, report, stats) = run(input).await;
    assert_eq!(events.len(), 2, "the good lines still arrive");
    assert_eq!(report.bad_lines, 6);
    assert_eq!(stats.bad_messages.load(Ordering::Relaxed), 6);
    let lines: Vec<u64> = report.bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 4, 5, 6, 7, 8]);
    let reason = |line: u64| {
        report
            .bad
            .iter()
            .find(|b| b.line == line)
            .unwrap()
            .reason
            .clone()
    };
    assert!(reason(2).contains("EOF while parsing"), "{}", reason(2));
    assert!(
        reason(4).contains("unknown Verdict value \"MAYBE\""),
        "{}",
        reason(4)
    );
    assert!(
        reason(5).contains("field IP.source: invalid IP address \"10.0.0.300\""),
        "{}",
        reason(5)
    );
    assert!(reason(6).contains("invalid UTF-8"), "{}", reason(6));
    assert!(
        reason(7).contains("field flow.time: invalid timestamp \"yesterday\""),
        "{}",
        reason(7)
    );
}

#[tokio::test]
async fn older_schemas_with_legacy_fields_and_unknown_keys_decode() {
    // An agent from before drop_reason_desc, is_reply and uuid, plus a field from the future.
    let line = r#"{"flow":{"time":"2020-01-02T03:04:05.000000006Z","verdict":2,"drop_reason":181,
        "IP":{"source":"10.1.0.5","destination":"10.2.0.9"},"l4":{"UDP":{"source_port":5353,"destination_port":53}},
        "source":{"namespace":"ai-training","pod_name":"old-0"},"reply":true,"future_field":{"x":[1]}},
        "node_name":"n1"}"#
        .replace('\n', "");
    let (events, report, _) = run(format!("{line}\n").into_bytes()).await;
    assert_eq!(report.bad_lines, 0, "{:?}", report.bad);
    let Event::Flow(f) = &events[0] else {
        panic!("{:?}", events[0])
    };
    assert_eq!(f.drop_reason_name(), "POLICY_DENY");
    assert_eq!(f.is_reply, Some(true));
    assert_eq!(f.uuid, None);
    assert_eq!(&*f.node, "n1", "the envelope's node stands in");
    assert_eq!(f.destination.port, 53);
    assert_eq!(f.time_rfc3339(), "2020-01-02T03:04:05.000000006Z");
}

#[tokio::test]
async fn an_endless_line_is_a_bad_line_not_a_memory_problem() {
    let good: Vec<&str> = JSONPB.lines().collect();
    let mut input = Vec::new();
    input.extend_from_slice(good[0].as_bytes());
    input.push(b'\n');
    input.extend(std::iter::repeat_n(b'x', 17 * 1024 * 1024));
    input.push(b'\n');
    input.extend_from_slice(good[1].as_bytes());
    input.push(b'\n');
    let (events, report, _) = run(input).await;
    assert_eq!(events.len(), 2);
    assert_eq!(report.bad.len(), 1);
    assert_eq!(report.bad[0].line, 2);
    assert!(
        report.bad[0].reason.contains("longer than 16777216 bytes"),
        "{:?}",
        report.bad
    );
}
