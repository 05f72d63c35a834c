//! The Hubble source against a real tonic Observer server: order, filters, resume after a
//! cut, de-duplication, lost events, and which errors are fatal.

use std::sync::atomic::Ordering;

use exfilwatch::flow::{Event, LostEventSource};
use exfilwatch::proto::flow::LostEvent;
use exfilwatch::proto::observer::GetFlowsResponse;
use exfilwatch::proto::observer::get_flows_response::ResponseTypes;
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::source::StreamState;
use exfilwatch::source::hubble::HubbleError;
use tonic::Code;

use crate::support::{client_config, relay, start_client, uuid_of};

const MS: i64 = 1_000_000;
const T0: i64 = 1_764_115_200 * 1_000_000_000;

#[tokio::test]
async fn flows_arrive_in_order_and_other_namespaces_are_filtered_by_the_server() {
    let relay = relay(None).await;
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    client.streaming().await;

    let mut cluster = TrainingCluster::new(1, T0, MS);
    let mut expected = Vec::new();
    for i in 0..400 {
        let mut flow = cluster.next_flow();
        if i % 4 == 3 {
            // Traffic between two other namespaces: the server must not send it.
            for ep in [flow.source.as_mut(), flow.destination.as_mut()]
                .into_iter()
                .flatten()
            {
                ep.namespace = "web".into();
            }
        } else {
            expected.push(uuid_of(&flow));
        }
        relay.sim.push_flow(flow);
    }
    for want in &expected {
        assert_eq!(client.next_flow_uuid().await, *want);
    }
    let sentinel = cluster.next_flow();
    let sentinel_uuid = uuid_of(&sentinel);
    relay.sim.push_flow(sentinel);
    assert_eq!(
        client.next_flow_uuid().await,
        sentinel_uuid,
        "a filtered flow leaked through"
    );

    let request = &relay.sim.requests()[0];
    assert!(request.follow);
    assert_eq!(request.whitelist.len(), 2);
    assert_eq!(request.whitelist[0].source_pod, ["ai-training/"]);
    assert_eq!(request.whitelist[1].destination_pod, ["ai-training/"]);
    assert!(
        request.since.is_none(),
        "a first connect starts at the live end"
    );
    assert_eq!(client.stats.flows(), expected.len() as u64 + 1);
}

#[tokio::test]
async fn a_cut_stream_resumes_with_since_and_delivers_each_flow_exactly_once() {
    let relay = relay(None).await;
    relay.sim.cut_streams_after(Some(300));
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    client.streaming().await;

    let mut cluster = TrainingCluster::new(2, T0, MS);
    let flows: Vec<_> = (0..1000).map(|_| cluster.next_flow()).collect();
    let times: Vec<i64> = flows
        .iter()
        .map(|f| {
            let t = f.time.unwrap();
            t.seconds * 1_000_000_000 + i64::from(t.nanos)
        })
        .collect();
    let uuids: Vec<u128> = flows.iter().map(uuid_of).collect();
    for flow in flows {
        relay.sim.push_flow(flow);
    }
    for want in &uuids {
        assert_eq!(
            client.next_flow_uuid().await,
            *want,
            "flows out of order or missing"
        );
    }
    // Nothing more may follow: the next event must be a new flow, not a late duplicate.
    relay.sim.cut_streams_after(None);
    let sentinel = cluster.next_flow();
    let sentinel_uuid = uuid_of(&sentinel);
    relay.sim.push_flow(sentinel);
    assert_eq!(client.next_flow_uuid().await, sentinel_uuid);

    let requests = relay.sim.requests();
    assert!(
        requests.len() >= 4,
        "expected at least 3 resumptions, saw {} requests",
        requests.len()
    );
    // The first resume starts 50 ms (the overlap) before the 300th flow, the last one seen.
    let since = requests[1].since.expect("resume sets since");
    assert_eq!(
        since.seconds * 1_000_000_000 + i64::from(since.nanos),
        times[299] - 50 * MS
    );
    assert!(
        client.stats.duplicates.load(Ordering::Relaxed) > 0,
        "the overlap re-delivers flows"
    );
    assert!(client.stats.reconnects.load(Ordering::Relaxed) >= 3);
    assert_eq!(client.stats.flows(), 1001);
}

#[tokio::test]
async fn redelivered_flows_are_dropped_by_uuid_or_by_time_node_and_five_tuple() {
    let relay = relay(None).await;
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    client.streaming().await;
    let mut cluster = TrainingCluster::new(3, T0, MS);
    let with_uuid = cluster.next_flow();
    let mut without_uuid = cluster.next_flow();
    without_uuid.uuid.clear();
    let last = cluster.next_flow();
    relay.sim.push_flow(with_uuid.clone());
    relay.sim.push_flow(with_uuid.clone());
    relay.sim.push_flow(without_uuid.clone());
    relay.sim.push_flow(without_uuid.clone());
    relay.sim.push_flow(last.clone());

    assert_eq!(client.next_flow_uuid().await, uuid_of(&with_uuid));
    match client.next().await {
        Event::Flow(f) => assert!(f.uuid.is_none() && f.source.port > 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.next_flow_uuid().await, uuid_of(&last));
    assert_eq!(client.stats.duplicates.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn lost_events_are_counted_as_gaps_and_the_stream_goes_on() {
    let relay = relay(None).await;
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    client.streaming().await;
    for (source, n) in [
        (LostEventSource::PerfEventRingBuffer, 7u64),
        (LostEventSource::HubbleRingBuffer, 1000),
    ] {
        relay.sim.push(&GetFlowsResponse {
            response_types: Some(ResponseTypes::LostEvents(LostEvent {
                source: source as i32,
                num_events_lost: n,
                ..Default::default()
            })),
            node_name: "gpu-node-a".into(),
            time: None,
        });
    }
    let mut cluster = TrainingCluster::new(4, T0, MS);
    let flow = cluster.next_flow();
    relay.sim.push_flow(flow.clone());

    match client.next().await {
        Event::Lost(l) => {
            assert_eq!(
                (l.source, l.count, &*l.node),
                (LostEventSource::PerfEventRingBuffer, 7, "gpu-node-a")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.next().await, Event::Lost(l) if l.count == 1000));
    assert_eq!(client.next_flow_uuid().await, uuid_of(&flow));
    assert_eq!(client.stats.lost(LostEventSource::PerfEventRingBuffer), 7);
    assert_eq!(client.stats.lost(LostEventSource::HubbleRingBuffer), 1000);
    assert_eq!(client.stats.lost_total(), 1007);
    assert_eq!(*client.state.borrow(), StreamState::Streaming);
}

#[tokio::test]
async fn unauthenticated_is_fatal_with_a_hint_for_the_operator() {
    let relay = relay(None).await;
    relay
        .sim
        .refuse_with(Some((Code::Unauthenticated, "client certificate required")));
    let client = start_client(client_config(format!("http://{}", relay.addr)));
    let result = tokio::time::timeout(crate::support::GUARD, client.task)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            HubbleError::Fatal {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("client certificate required") && text.contains("hubble.tls"),
        "{text}"
    );
    assert_eq!(relay.sim.requests().len(), 1, "a fatal code is not retried");
}

#[tokio::test]
async fn unavailable_is_retried_until_the_relay_recovers() {
    let relay = relay(None).await;
    relay
        .sim
        .refuse_with(Some((Code::Unavailable, "no nodes connected")));
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    let state = client
        .wait_state(|s| matches!(s, StreamState::Retrying { .. }))
        .await;
    assert!(
        matches!(&state, StreamState::Retrying { error } if error.contains("no nodes connected")),
        "{state:?}"
    );
    // Keep failing for a few attempts, then recover.
    tokio::time::timeout(crate::support::GUARD, async {
        while relay.sim.requests().len() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    relay.sim.refuse_with(None);
    client.streaming().await;
    let flow = TrainingCluster::new(5, T0, MS).next_flow();
    relay.sim.push_flow(flow.clone());
    assert_eq!(client.next_flow_uuid().await, uuid_of(&flow));
    assert!(client.stats.reconnects.load(Ordering::Relaxed) >= 2);
    client.cancel.cancel();
    assert_eq!(client.task.await.unwrap(), Ok(()));
}

#[tokio::test]
async fn an_unreachable_relay_is_retried_not_fatal() {
    // Bind and drop a listener to get a port nobody serves.
    let port = crate::support::free_port();
    let mut client = start_client(client_config(format!("http://127.0.0.1:{port}")));
    let state = client
        .wait_state(|s| matches!(s, StreamState::Retrying { .. }))
        .await;
    assert!(
        matches!(&state, StreamState::Retrying { error } if error.contains("cannot connect")),
        "{state:?}"
    );
    client.cancel.cancel();
    assert_eq!(client.task.await.unwrap(), Ok(()));
}

#[tokio::test]
async fn a_relay_unavailable_for_a_minute_loses_no_flow() {
    let relay = relay(None).await;
    // The first stream is cut after 100 flows; from then on Relay refuses for a minute while
    // flows keep arriving in its ring, as during a Relay restart without connected nodes.
    relay.sim.cut_streams_after(Some(100));
    let mut client = start_client(client_config(format!("http://{}", relay.addr)));
    client.streaming().await;
    let mut cluster = TrainingCluster::new(31, exfilwatch::common::clock::now_ns(), 10 * MS);
    let mut pushed = Vec::new();
    for _ in 0..100 {
        let f = cluster.next_flow();
        pushed.push(uuid_of(&f));
        relay.sim.push_flow(f);
    }
    let mut received = Vec::new();
    for _ in 0..100 {
        received.push(client.next_flow_uuid().await);
    }
    relay.sim.cut_streams_after(None);
    relay
        .sim
        .refuse_with(Some((Code::Unavailable, "no connected nodes")));
    let outage = tokio::time::Instant::now();
    while outage.elapsed() < std::time::Duration::from_secs(60) {
        let f = cluster.next_flow();
        pushed.push(uuid_of(&f));
        relay.sim.push_flow(f);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Between attempts it is retrying or connecting; never stopped, never streaming.
        assert!(
            matches!(
                *client.state.borrow(),
                StreamState::Retrying { .. } | StreamState::Connecting
            ),
            "{:?}",
            *client.state.borrow()
        );
    }
    let attempts = client.stats.reconnects.load(Ordering::Relaxed);
    assert!(attempts >= 100, "retried {attempts} times in a minute");
    relay.sim.refuse_with(None);
    while received.len() < pushed.len() {
        received.push(client.next_flow_uuid().await);
    }
    assert_eq!(received, pushed, "every flow once, in order");
    client.cancel.cancel();
    assert_eq!(client.task.await.unwrap(), Ok(()));
}
