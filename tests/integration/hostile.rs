//! The watched pod as an attacker of the service itself: it can reach the API's port and it
//! writes every string in its flows. One test per way of trying, each against the running
//! service: half-open connections, an alias-bomb policy, a replayed session cookie, short
//! tokens and guessed ones, forged log lines, cross-site requests and foreign `Host`s.

use std::time::Duration;

use exfilwatch::sim::traffic::TrainingCluster;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::service::{RunConfig, Service, run_once, text};
use crate::support::{GUARD, free_port, relay};

const TOKEN: &str = "hostile-token-5e8a2c7f1b9d4063a5e8c";

/// Open descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident set of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Whether the server closed `stream` (a read returns end of file or a reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a 408, say) before the close: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// A client that follows no redirect, so a test sees where the service sends it.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `exfilwatch run` with tokens (`TOKEN`) and `api` settings added.
async fn with_tokens(api: &str) -> (crate::support::Relay, Service) {
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    let mut lines = String::from("tokens_file: tokens");
    if !api.is_empty() {
        lines.push('\n');
        lines.push_str(api);
    }
    let service =
        Service::spawn(&RunConfig::new(relay.addr).with("api", &lines), dir).with_token(TOKEN);
    service.ready().await;
    (relay, service)
}

#[tokio::test(flavor = "multi_thread")]
async fn half_open_connections_are_bounded_and_closed_and_the_probes_answer() {
    let probe_port = free_port();
    let (relay, service) = with_tokens(&format!(
        "max_connections: 64\nheader_timeout: 2s\nprobe_listen: 127.0.0.1:{probe_port}"
    ))
    .await;
    let before = descriptors(service.pid());
    let api = service.base.trim_start_matches("http://").to_owned();
    // 400 clients that start a request and never finish its headers.
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(&api).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        held.push(s);
    }
    // The probes' own listener answers while they are held.
    let probe = reqwest::get(format!("http://127.0.0.1:{probe_port}/healthz"))
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    let during = descriptors(service.pid());
    assert!(
        during <= before + 64 + 8,
        "{before} descriptors before, {during} with 400 connections held against a bound of 64"
    );
    // Ingest and detection go on meanwhile: an attempt raises its alert.
    let mut cluster = TrainingCluster::new(9, exfilwatch::common::clock::now_ns(), 1_000_000);
    for flow in cluster.exfiltration_attempt() {
        relay.sim.push_flow(flow);
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while !service.log().contains("alert firing") {
        assert!(tokio::time::Instant::now() < deadline, "{}", service.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every one is closed: over the bound at once, the rest when their headers time out.
    for s in &mut held {
        assert!(
            closed_within(s, GUARD).await,
            "a half-open connection stayed open"
        );
    }
    drop(held);
    // An idle kept-alive connection is closed after the same time.
    let mut idle = TcpStream::connect(&api).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut idle, GUARD).await,
        "idle keep-alive kept"
    );
    // The API itself answers again, and says what it refused.
    let metrics = service.text("/metrics").await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("exfilwatch_api_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused >= 400 - 64, "{refused} refused");
    // The probes' listener serves the probes only.
    let other = reqwest::get(format!("http://127.0.0.1:{probe_port}/api/v1/flows"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_of_aliases_is_refused_naming_its_line_without_the_memory_it_stands_for() {
    let (_relay, service) = with_tokens("").await;
    // One anchored list of 5,000 CIDRs and 1,000 aliases of it: 5 million strings expanded.
    let mut policy = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bomb\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: &cidrs\n",
    );
    for i in 0..5_000 {
        policy.push_str(&format!("    - 10.{}.{}.0/24\n", i / 256, i % 256));
    }
    for _ in 0..1_000 {
        policy.push_str("  - toCIDR: *cidrs\n");
    }
    let before = resident(service.pid());
    let r = service
        .client
        .post(service.url("/api/v1/policy/check?namespace=ai-training"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/yaml")
        .body(policy.clone())
        .timeout(GUARD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("once its aliases are expanded"), "{detail}");
    // The line where the expansion passed the bound: one of the alias lines.
    let line: usize = detail
        .strip_prefix("body:")
        .and_then(|d| d.split(':').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no body:LINE in {detail}"));
    assert!(
        policy
            .lines()
            .nth(line - 1)
            .is_some_and(|l| l.contains("*cidrs")),
        "line {line} is not an alias"
    );
    let after = resident(service.pid());
    assert!(
        after < before + (64 << 20),
        "resident set {before} -> {after} bytes"
    );
    // A policy without aliases is still checked.
    let plain = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: fine\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n";
    let r = service
        .client
        .post(service.url("/api/v1/policy/check?namespace=ai-training"))
        .bearer_auth(TOKEN)
        .body(plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Signs in on the console with `token`; the response.
async fn sign_in(client: &reqwest::Client, service: &Service, token: &str) -> reqwest::Response {
    client
        .post(service.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("token", token), ("next", "/ui/")])
                .finish(),
        )
        .send()
        .await
        .unwrap()
}

/// The `name=value` of the session cookie a sign-in set.
fn session_of(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_out_session_cookie_replayed_is_refused() {
    let (_relay, service) = with_tokens("").await;
    let client = no_redirects();
    let r = sign_in(&client, &service, TOKEN).await;
    assert_eq!(r.status(), 303);
    let cookie = session_of(&r);
    let page = |cookie: String| {
        let client = client.clone();
        let url = service.url("/ui/");
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(cookie.clone()).await, 200);
    // A second session of the same token stays valid when the first signs out.
    let other = session_of(&sign_in(&client, &service, TOKEN).await);
    let out = client
        .post(service.url("/ui/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // The copy kept by whoever copied it: sent to the sign-in page.
    assert_eq!(page(cookie).await, 303);
    assert_eq!(page(other).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_shorter_than_32_characters_is_refused_at_start_without_printing_it() {
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    let short = "only-thirty-one-characters-long";
    assert_eq!(short.len(), 31);
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n{short}\n")).unwrap();
    let out = run_once(
        &RunConfig::new(relay.addr).with("api", "tokens_file: tokens"),
        dir.path(),
    )
    .await;
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(64), "{msg}");
    assert!(
        msg.contains("token 2 of 2 is 31 characters, shorter than 32"),
        "{msg}"
    );
    assert!(!msg.contains(short) && !msg.contains(TOKEN), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_are_throttled_per_client_and_logged_without_the_token() {
    let (_relay, service) = with_tokens("signin_failures: 5").await;
    let client = no_redirects();
    let guess = "guessed-token-that-is-long-enough-0000";
    for _ in 0..5 {
        assert_eq!(sign_in(&client, &service, guess).await.status(), 401);
    }
    // The sixth try waits, whatever it sends, the right token included.
    let r = sign_in(&client, &service, guess).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(sign_in(&client, &service, TOKEN).await.status(), 429);
    // Bearer tokens of the API are not sign-ins: they still work.
    assert_eq!(service.get_raw("/api/v1/alerts").await.status(), 200);
    assert_eq!(
        service.metric("exfilwatch_api_signin_failures_total").await,
        5
    );
    assert_eq!(
        service
            .metric("exfilwatch_api_signin_throttled_total")
            .await,
        2
    );
    let log = service.log();
    assert_eq!(
        log.matches("a sign-in with a token that is not accepted")
            .count(),
        5,
        "{log}"
    );
    assert!(log.contains("client=127.0.0.1"), "{log}");
    assert!(!log.contains(guess) && !log.contains(TOKEN), "{log}");
}

/// A DNS name that ends one log line and forges another, with a terminal escape.
const FORGED: &str = "x.example\n2026-12-07T00:00:00.000000Z  INFO exfilwatch: all clear\u{1b}[2J";

/// The service's log after a denied upload to [`FORGED`], in `format`.
async fn log_of_a_forged_name(format: &str) -> String {
    let relay = relay(None).await;
    let config = RunConfig::new(relay.addr).with("log", &format!("format: {format}"));
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    service.ready().await;
    let mut cluster = TrainingCluster::new(3, exfilwatch::common::clock::now_ns(), 1_000_000);
    for mut flow in cluster.exfiltration_attempt() {
        if !flow.destination_names.is_empty() {
            flow.destination_names = vec![FORGED.into()];
        }
        relay.sim.push_flow(flow);
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while !service.log().contains("all clear") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert logged: {}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.log()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_name_cannot_forge_a_log_line_or_send_terminal_escapes() {
    let log = log_of_a_forged_name("text").await;
    assert!(!log.contains('\u{1b}'), "raw escape in the log: {log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "forged line: {log}"
    );
    assert!(log.contains("x.example\\u{a}2026-12-07T00:00:00"), "{log}");
    let json = log_of_a_forged_name("json").await;
    assert!(!json.contains('\u{1b}'), "raw escape in the log: {json:?}");
    for line in json.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
        assert_ne!(record["message"], "all clear");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_state_changes_and_foreign_hosts_are_refused() {
    let relay = relay(None).await;
    let service = Service::spawn(&RunConfig::new(relay.addr), tempfile::tempdir().unwrap());
    service.ready().await;
    let reload = |headers: &[(&'static str, &str)]| {
        let mut r = service.client.post(service.url("/-/reload"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move { r.send().await.unwrap() }
    };
    let refused = reload(&[("origin", "https://evil.example")]).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "cross_site");
    assert_eq!(
        reload(&[("sec-fetch-site", "cross-site")]).await.status(),
        403
    );
    // The console's own page, and clients without a browser, still reload.
    assert_eq!(
        reload(&[("origin", service.base.as_str())]).await.status(),
        200
    );
    assert_eq!(reload(&[]).await.status(), 200);
    // DNS rebinding: a page on another name that resolves to 127.0.0.1 reads nothing.
    let port = service.base.rsplit(':').next().unwrap().to_owned();
    for (host, status) in [
        (format!("evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
    ] {
        let r = service
            .client
            .get(service.url("/api/v1/alerts"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "Host {host}");
    }
    assert_eq!(
        service
            .metric("exfilwatch_api_cross_site_refused_total")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_in_the_bucket_larger_than_its_kind_may_be_is_not_read() {
    use exfilwatch::config::ObjectStoreConfig;
    use exfilwatch::flowstore::bucket::{Bucket, ObjectKind};
    use object_store::ObjectStoreExt as _;

    let s3 = crate::support::s3::S3::start().await;
    // Another writer of the bucket leaves a "learned state" one byte over the bound.
    let big = vec![b' '; (ObjectKind::Learned.max_bytes() + 1) as usize];
    s3.client()
        .put(
            &"state/new_destination/intruder.json".into(),
            bytes::Bytes::from(big).into(),
        )
        .await
        .unwrap();
    let config = ObjectStoreConfig {
        endpoint: s3.endpoint.clone(),
        bucket: crate::support::s3::BUCKET.into(),
        prefix: String::new(),
        region: "us-east-1".into(),
        replica: "exfilwatch-0".into(),
        access_key_id: crate::support::s3::ACCESS_KEY.into(),
        secret_access_key: crate::support::s3::SECRET_KEY.into(),
        ca_pem: None,
        allow_http: true,
        retention: Duration::from_secs(86_400),
    };
    let (refused, errors) = tokio::task::spawn_blocking(move || {
        let bucket = Bucket::connect(&config).unwrap();
        let refused = bucket.learned().unwrap_err();
        (
            refused,
            bucket
                .stats
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    })
    .await
    .unwrap();
    assert!(
        refused.contains("67108865 bytes, more than the 67108864 a learned-state object may hold"),
        "{refused}"
    );
    assert_eq!(errors, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decoy_flood_is_one_roll_up_alert_whose_link_still_leads_to_the_real_attempt() {
    use crate::alertmanager::{Alertmanager, Receiver};

    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let relay = relay(None).await;
    let config = RunConfig::new(relay.addr)
        .with(
            "alertmanager",
            &format!("urls: [\"{}\"]\nmax_firing: 20", am.url),
        )
        .with("storage", "flows:\n  flush_interval: 20ms");
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    service.ready().await;
    let mut cluster = TrainingCluster::new(21, exfilwatch::common::clock::now_ns(), 1_000_000);
    // 500 denied uploads to names of their own, the one that matters among them.
    let mut attempt = |name: String| {
        cluster.set_now_ns(exfilwatch::common::clock::now_ns());
        let mut flow = cluster.exfiltration_attempt().swap_remove(3);
        flow.destination_names = vec![name];
        flow
    };
    for i in 0..500 {
        let name = if i == 250 {
            "real-exfil.example".to_owned()
        } else {
            format!("decoy-{i}.example")
        };
        relay.sim.push_flow(attempt(name));
    }
    // Alertmanager gets 20 alerts of the rule and one roll-up, not 500 (and the sweep's
    // scan alert: 500 destinations from one pod in a minute).
    let deadline = tokio::time::Instant::now() + GUARD;
    let rollup = loop {
        let alerts = am.alerts().await;
        let named = |name: &str| {
            alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == name)
                .count()
        };
        let rollup = alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == "ExfilwatchAlertFlood")
            .cloned();
        if let Some(r) = rollup
            && r["annotations"]["folded"] == "480"
        {
            assert_eq!(named("TrainingPodUnexpectedEgress"), 20, "{alerts:#?}");
            assert_eq!(named("ExfilwatchAlertFlood"), 1);
            assert_eq!(
                alerts.len(),
                21 + named("TrainingPodScanning"),
                "{alerts:#?}"
            );
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no roll-up of 480: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rollup["labels"]["rule"], "TrainingPodUnexpectedEgress");
    assert_eq!(rollup["labels"]["severity"], "critical");
    assert!(
        rollup["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("ai-training: 500 denied destinations in "),
        "{rollup:#?}"
    );
    assert!(
        rollup["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("/runbooks/ExfilwatchAlertFlood")
    );
    assert_eq!(
        service.metric("exfilwatch_alerts_folded_total{alertname=\"TrainingPodUnexpectedEgress\",namespace=\"ai-training\"}").await,
        480
    );
    // Its link leads to every flow of the flood, the real attempt among them.
    let link = rollup["generatorURL"].as_str().unwrap();
    let fingerprint = link.rsplit('/').next().unwrap();
    let detail = service
        .ok(&format!("/api/v1/alerts/{fingerprint}?limit=1000"))
        .await;
    let flows = detail["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 500, "{}", flows.len());
    assert!(
        flows
            .iter()
            .any(|f| f["destination_names"][0] == "real-exfil.example"),
        "the real attempt is behind the roll-up's link"
    );
    // The alert list reads a page, newest first, the roll-up included.
    let page = service.ok("/api/v1/alerts?limit=10").await;
    assert_eq!(page.as_array().unwrap().len(), 10);
    let firing = service.ok("/api/v1/alerts?status=firing&limit=100").await;
    let of_the_rule = firing
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == "TrainingPodUnexpectedEgress")
        .count();
    assert_eq!(of_the_rule, 21, "20 alerts and the roll-up: {firing}");
}
