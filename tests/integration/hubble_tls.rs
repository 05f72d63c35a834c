//! TLS and mTLS to a Relay whose certificate is for `*.hubble-relay.cilium.io`, with
//! certificates made by the test.

use exfilwatch::config::TlsConfig;
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::source::StreamState;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::support::{client_config, relay, start_client, uuid_of};

const RELAY_NAME: &str = "ui.hubble-relay.cilium.io";

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

pub fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = ca("hubble-ca");
    Pki {
        ca_pem: ca.pem(),
        server: leaf(&ca, &["*.hubble-relay.cilium.io"]),
        client: leaf(&ca, &["exfilwatch.hubble-relay.cilium.io"]),
    }
}

fn server_tls(pki: &Pki, require_client_cert: bool) -> ServerTlsConfig {
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&pki.server.0, &pki.server.1));
    if require_client_cert {
        tls.client_ca_root(Certificate::from_pem(&pki.ca_pem))
    } else {
        tls
    }
}

fn client_tls(ca_pem: &str, identity: Option<&(String, String)>) -> TlsConfig {
    TlsConfig {
        ca_pem: ca_pem.as_bytes().to_vec(),
        identity: identity.map(|(c, k)| (c.as_bytes().to_vec(), k.as_bytes().to_vec())),
        server_name: Some(RELAY_NAME.into()),
    }
}

async fn streams_a_flow(server: ServerTlsConfig, tls: TlsConfig) {
    let relay = relay(Some(server)).await;
    let mut config = client_config(format!("https://{}", relay.addr));
    config.tls = Some(tls);
    let mut client = start_client(config);
    client.streaming().await;
    let flow = TrainingCluster::new(9, 1_764_115_200_000_000_000, 1_000_000).next_flow();
    relay.sim.push_flow(flow.clone());
    assert_eq!(client.next_flow_uuid().await, uuid_of(&flow));
}

#[tokio::test]
async fn tls_with_the_relay_ca_and_server_name_streams_flows() {
    let pki = pki();
    streams_a_flow(server_tls(&pki, false), client_tls(&pki.ca_pem, None)).await;
}

#[tokio::test]
async fn mtls_with_a_client_certificate_streams_flows() {
    let pki = pki();
    streams_a_flow(
        server_tls(&pki, true),
        client_tls(&pki.ca_pem, Some(&pki.client)),
    )
    .await;
}

async fn first_error(server: ServerTlsConfig, tls: TlsConfig) -> String {
    let relay = relay(Some(server)).await;
    let mut config = client_config(format!("https://{}", relay.addr));
    config.tls = Some(tls);
    let mut client = start_client(config);
    match client
        .wait_state(|s| matches!(s, StreamState::Retrying { .. }))
        .await
    {
        StreamState::Retrying { error } => error,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_certificate_error() {
    let pki = pki();
    let stranger = ca("someone-else");
    let error = first_error(server_tls(&pki, false), client_tls(&stranger.pem(), None)).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_name_that_does_not_match_fails_clearly() {
    let pki = pki();
    let mut tls = client_tls(&pki.ca_pem, None);
    tls.server_name = Some("hubble-relay.kube-system.svc".into());
    let error = first_error(server_tls(&pki, false), tls).await;
    assert!(
        error.contains("certificate not valid for name \"hubble-relay.kube-system.svc\""),
        "{error}"
    );
}

#[tokio::test]
async fn mtls_without_a_client_certificate_is_refused() {
    let pki = pki();
    let error = first_error(server_tls(&pki, true), client_tls(&pki.ca_pem, None)).await;
    assert!(
        error.contains("received fatal alert: CertificateRequired"),
        "{error}"
    );
}
