//! Property-based fuzzing of every parser that reads outside input: the jsonpb line decoder,
//! the protobuf-to-FlowEvent decoder, the configuration and rule loaders, the Prometheus
//! answer parsers, the REST API's filter parameters, and the DNS detector on query names.
//! Inputs are random bytes and random mutations of valid inputs (the fixtures, the shipped configuration and rule pack); each
//! must give a value or an error, never a panic, and errors must say what was wrong.
//!
//! Cases per target: 2,000 in CI; `PROPTEST_CASES=100000` for a longer run by hand. A failure
//! is written to `tests/integration/proptest-regressions/` and replayed first from then on:
//! commit it with the fix.

use exfilwatch::config::Config;
use exfilwatch::egress::prometheus::{parse_matrix, parse_vector};
use exfilwatch::flow::json::JsonDecoder;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::Filter;
use exfilwatch::flowstore::query::FILTER_PARAMETERS;
use exfilwatch::rules;
use proptest::prelude::*;
use proptest::test_runner::Config as Runner;

fn runner() -> Runner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    Runner {
        cases,
        ..Runner::default()
    }
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A mutation of `seed`: bytes overwritten, removed and inserted at random places.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut bytes = seed.clone();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

/// Text that is valid UTF-8 after a mutation (the loaders take `&str`).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The protobuf fixture's messages (length-prefixed in responses.bin).
fn wire_messages() -> Vec<Vec<u8>> {
    let all = fixture("tests/fixtures/wire/responses.bin");
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= all.len() {
        let n = u32::from_le_bytes(all[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        if at + n > all.len() {
            break;
        }
        out.push(all[at..at + n].to_vec());
        at += n;
    }
    out
}

#[test]
fn the_protobuf_decoder_never_panics() {
    let messages = wire_messages();
    assert!(messages.len() > 5, "the fixture's messages are found");
    let seeds = prop::sample::select(messages).prop_flat_map(mutated);
    let input = prop_oneof![seeds, prop::collection::vec(any::<u8>(), 0..600)];
    proptest!(runner(), |(bytes in input)| {
        let mut decoder = Decoder::default();
        let _ = decoder.decode_response(&bytes);
    });
}

#[test]
fn the_jsonpb_decoder_never_panics() {
    let text_fixture = String::from_utf8(fixture("tests/fixtures/flows.jsonl")).unwrap();
    let lines: Vec<Vec<u8>> = text_fixture
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let seeds = prop::sample::select(lines).prop_flat_map(mutated);
    let input = prop_oneof![seeds, prop::collection::vec(any::<u8>(), 0..400)];
    proptest!(runner(), |(bytes in input)| {
        let mut decoder = JsonDecoder::default();
        if let Err(e) = decoder.decode_line(&text(bytes)) {
            prop_assert!(!e.to_string().is_empty());
        }
    });
}

#[test]
fn the_config_loader_never_panics_and_names_problems() {
    let example = fixture("deploy/exfilwatch.yaml");
    let input = prop_oneof![mutated(example), prop::collection::vec(any::<u8>(), 0..300)];
    proptest!(runner(), |(bytes in input)| {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        if let Err(e) = Config::parse(&text(bytes), "fuzz.yaml", &base) {
            prop_assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
        }
    });
}

#[test]
fn the_rule_loader_never_panics_and_names_problems() {
    let pack = fixture("rules/default.yaml");
    let input = prop_oneof![mutated(pack), prop::collection::vec(any::<u8>(), 0..300)];
    proptest!(runner(), |(bytes in input)| {
        if let Err(e) = rules::load_text(&text(bytes), "fuzz.yaml") {
            prop_assert!(e.to_string().contains("fuzz.yaml"), "{e}");
        }
    });
}

const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"namespace":"ai-training"},"value":[1767225600.123,"1234.5"]},{"metric":{"namespace":"storage"},"value":[1767225600.123,"NaN"]}]}}"#;
const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"namespace":"ai-training"},"values":[[1767225600,"1"],[1767225660,"+Inf"],[1767225720,"3e3"]]}]}}"#;

#[test]
fn the_prometheus_parsers_never_panic_and_keep_only_finite_values() {
    let statuses = prop::sample::select(vec![200u16, 400, 422, 500, 503]);
    let body = prop_oneof![
        mutated(VECTOR.as_bytes().to_vec()),
        mutated(MATRIX.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..200),
    ];
    proptest!(runner(), |(status in statuses, bytes in body)| {
        if let Ok((samples, _)) = parse_vector("http://p/api/v1/query", status, &bytes) {
            prop_assert!(samples.iter().all(|s| s.value.is_finite()));
        }
        if let Ok((series, _)) = parse_matrix("http://p/api/v1/query_range", status, &bytes) {
            prop_assert!(series.iter().all(|s| s.points.iter().all(|p| p.1.is_finite())));
        }
    });
    // The unmutated answers parse, NaN and Inf counted as dropped.
    let (samples, dropped) = parse_vector("u", 200, VECTOR.as_bytes()).unwrap();
    assert_eq!((samples.len(), dropped), (1, 1));
    let (series, dropped) = parse_matrix("u", 200, MATRIX.as_bytes()).unwrap();
    assert_eq!((series[0].points.len(), dropped), (2, 1));
    let e = parse_vector("u", 500, b"<html>oops</html>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("500") && e.contains("oops"), "{e}");
}

#[test]
fn the_flow_filter_parameters_never_panic_and_name_themselves() {
    let keys = prop_oneof![
        prop::sample::select(FILTER_PARAMETERS.to_vec()).prop_map(str::to_owned),
        any::<String>(),
    ];
    let values = prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "10.0.0.0/8",
            "::1/129",
            "1h",
            "99999999999999999999d",
            "2026-02-30T00:00:00Z",
            "65536",
            "-1",
            "DROPPED,",
            ",",
            "*.",
            ".",
            "POLICY_DENIED,999999999999",
        ])
        .prop_map(str::to_owned),
    ];
    proptest!(runner(), |(key in keys, value in values)| {
        let mut f = Filter::default();
        match f.set(&key, &value, 1_767_225_600_000_000_000) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.parameter, key),
        }
        let _ = f.check_range();
    });
}

/// The detectors that read the workload's own text: DNS query names of any bytes, through
/// the DNS detector (the Public Suffix List, the label alphabets, the allow list) and into an
/// alert's context, never panic.
#[test]
fn the_dns_detector_never_panics_on_query_names() {
    use exfilwatch::detect::dns_exfil::DnsExfil;
    use exfilwatch::sim::traffic::TrainingCluster;
    let rule = std::sync::Arc::new(
        rules::default_pack()
            .unwrap()
            .into_iter()
            .find(|r| r.name == "TrainingPodDnsExfiltration")
            .unwrap(),
    );
    let names = prop::collection::vec(
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9\\\\.\\-_+/=é日]{0,80}",
            "([a-f0-9]{30}\\.){1,3}[a-z]{1,8}\\.(example|co\\.uk|s3\\.amazonaws\\.com)",
        ],
        1..40,
    );
    proptest!(runner(), |(names in names)| {
        let mut detector = DnsExfil::new(rule.clone()).unwrap();
        let mut cluster = TrainingCluster::new(1, 1_767_225_600_000_000_000, 1_000_000);
        let mut decoder = Decoder::default();
        for name in &names {
            let flow = cluster.lookup(1, name, "TXT");
            if let Some(event) = exfilwatch::sim::received(&mut decoder, flow) {
                let _ = detector.check(&event);
            }
        }
    });
}
