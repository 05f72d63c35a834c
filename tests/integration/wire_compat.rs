//! Wire compatibility with Cilium's own definitions: messages encoded by the upstream
//! protos (tests/fixtures, made by scripts/gen-wire-fixtures.py with Python's protobuf
//! runtime) decode to the values that script computed, through the zero-copy decoder, the
//! jsonpb decoder, and the generated prost types alike.

use exfilwatch::flow::json::JsonDecoder;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flow::{Event, Peer, PolicyRef, format_uuid};
use exfilwatch::proto::observer::GetFlowsResponse;
use exfilwatch::proto::observer::get_flows_response::ResponseTypes;
use prost::Message;
use serde_json::{Value, json};

const RESPONSES: &[u8] = include_bytes!("../fixtures/wire/responses.bin");
const EXPECTED: &str = include_str!("../fixtures/wire/expected.json");
const JSONPB: &str = include_str!("../fixtures/flows.jsonl");

/// The length-prefixed messages of responses.bin.
fn messages() -> Vec<&'static [u8]> {
    let mut out = Vec::new();
    let mut rest = RESPONSES;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

fn peer(p: &Peer) -> Value {
    json!({
        "namespace": &*p.namespace, "pod": &*p.pod, "workload": &*p.workload,
        "workload_kind": &*p.workload_kind,
        "labels": p.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "identity": p.identity, "ip": p.ip.map(|ip| ip.to_string()), "port": p.port,
    })
}

fn policies(list: &[PolicyRef]) -> Value {
    list.iter()
        .map(|p| json!([&*p.namespace, &*p.name, &*p.kind]))
        .collect()
}

/// An event in the layout of expected.json.
fn describe(event: &Event) -> Value {
    match event {
        Event::Lost(l) => json!({
            "kind": "lost", "source": l.source.as_str_name(), "count": l.count, "cpu": l.cpu,
            "first_ns": l.first_ns, "last_ns": l.last_ns, "node": &*l.node,
        }),
        Event::Checkpoint(n) => json!({ "kind": "checkpoint", "n": n }),
        Event::NodeStatus(s) => json!({
            "kind": "node_status", "state": s.state.as_str_name(),
            "nodes": s.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "message": s.message,
        }),
        Event::Flow(f) => {
            let flags = format!("{:?}", f.tcp_flags);
            json!({
                "kind": "flow", "time_ns": f.time_ns, "uuid": f.uuid.map(format_uuid),
                "verdict": f.verdict.as_str_name(), "drop_reason": f.drop_reason,
                "direction": f.direction.as_str_name(), "event_type": f.event_type,
                "event_sub_type": f.event_sub_type, "node": &*f.node,
                "source": peer(&f.source), "destination": peer(&f.destination),
                "protocol": f.protocol.as_str(),
                "tcp_flags": if flags.is_empty() { vec![] } else { flags.split('|').map(str::to_owned).collect::<Vec<_>>() },
                "destination_names": f.destination_names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "dns": f.dns.as_ref().map(|d| json!({
                    "query": &*d.query, "rcode": d.rcode,
                    "qtypes": d.qtypes.iter().map(|q| q.to_string()).collect::<Vec<_>>(),
                    "ips": d.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
                    "ttl": d.ttl, "response": d.response,
                })),
                "egress_denied_by": policies(&f.egress_denied_by),
                "ingress_denied_by": policies(&f.ingress_denied_by),
                "is_reply": f.is_reply,
            })
        }
    }
}

fn expected() -> Vec<Value> {
    serde_json::from_str(EXPECTED).unwrap()
}

/// Compares field by field so a failure names the field.
fn assert_same(got: &Value, want: &Value, what: &str) {
    let (Value::Object(g), Value::Object(w)) = (got, want) else {
        panic!("{what}: not objects")
    };
    for (key, want_value) in w {
        assert_eq!(g.get(key), Some(want_value), "{what}: field {key}");
    }
    assert_eq!(g.len(), w.len(), "{what}: field count");
}

#[test]
fn upstream_encoded_responses_decode_to_the_expected_flow_events() {
    let expected = expected();
    let messages = messages();
    assert_eq!(messages.len(), expected.len());
    let mut decoder = Decoder::default();
    for (i, (bytes, want)) in messages.iter().zip(&expected).enumerate() {
        let event = decoder.decode_response(bytes).unwrap().expect("a payload");
        assert_same(&describe(&event), want, &format!("message {i}"));
    }
}

#[test]
fn jsonpb_lines_of_the_same_responses_decode_identically() {
    let expected = expected();
    let mut decoder = JsonDecoder::default();
    let lines: Vec<&str> = JSONPB.lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (i, (line, want)) in lines.iter().zip(&expected).enumerate() {
        let event = decoder.decode_line(line).unwrap();
        assert_same(&describe(&event), want, &format!("line {}", i + 1));
    }
}

#[test]
fn the_generated_prost_types_agree_with_the_upstream_field_numbers() {
    let expected = expected();
    for (bytes, want) in messages().iter().zip(&expected) {
        let response = GetFlowsResponse::decode(*bytes).unwrap();
        match response.response_types.unwrap() {
            ResponseTypes::Flow(f) => {
                assert_eq!(Some(f.verdict().as_str_name()), want["verdict"].as_str());
                assert_eq!(want["uuid"].as_str().unwrap_or(""), f.uuid.to_lowercase());
                let src = f.source.unwrap_or_default();
                assert_eq!(Some(src.pod_name.as_str()), want["source"]["pod"].as_str());
                assert_eq!(
                    Some(src.labels.len()),
                    want["source"]["labels"].as_array().map(Vec::len)
                );
                let names: Vec<Value> = f.destination_names.into_iter().map(Value::from).collect();
                assert_eq!(&Value::from(names), &want["destination_names"]);
            }
            ResponseTypes::LostEvents(l) => {
                assert_eq!(Some(l.num_events_lost), want["count"].as_u64())
            }
            ResponseTypes::NodeStatus(s) => {
                assert_eq!(Some(s.message.as_str()), want["message"].as_str())
            }
        }
    }
}

#[test]
fn repeated_strings_are_shared_not_copied() {
    let mut decoder = Decoder::default();
    let first = messages()[0];
    let Some(Event::Flow(a)) = decoder.decode_response(first).unwrap() else {
        panic!()
    };
    let Some(Event::Flow(b)) = decoder.decode_response(first).unwrap() else {
        panic!()
    };
    assert!(std::sync::Arc::ptr_eq(
        &a.source.namespace,
        &b.source.namespace
    ));
    assert!(std::sync::Arc::ptr_eq(&a.source.labels, &b.source.labels));
    assert!(
        std::sync::Arc::ptr_eq(&a.source.labels, &a.destination.labels),
        "same label set on both sides"
    );
}

#[test]
fn truncated_and_garbage_messages_are_errors_not_panics() {
    let mut decoder = Decoder::default();
    let first = messages()[0];
    for cut in [1, 2, 10, first.len() / 2, first.len() - 1] {
        assert!(
            decoder.decode_response(&first[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..2000 {
        let mut bytes = first.to_vec();
        for _ in 0..rng.usize(1..8) {
            let i = rng.usize(..bytes.len());
            bytes[i] = rng.u8(..);
        }
        let _ = decoder.decode_response(&bytes);
    }
}
