//! The web console in a real browser (headless Chromium through chromedriver) against the
//! running service, with a real Prometheus for the volume spike: sign in with a token, the
//! alerts list, the alert pages of a policy-denied and a volume-spike alert (flows, paging,
//! timeline, egress chart), the namespaces page, the flows explorer, attacker-controlled text
//! shown as text, sign out. Screenshots go to target/screenshots (and to docs/screenshots with
//! UPDATE_SCREENSHOTS=1).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::traffic::TrainingCluster;
use serde_json::Value;

use crate::prometheus::PromServer;
use crate::support::browser::Browser;
use crate::support::service::{RunConfig, Service};
use crate::support::{free_port, relay};

const TOKEN: &str = "console-token-3b7e1d9c5a2f8046d1b7e";

fn fresh(mut f: Flow, rng: &mut fastrand::Rng) -> Flow {
    f.uuid = exfilwatch::flow::format_uuid(rng.u128(..));
    let now = exfilwatch::common::clock::now_ns();
    f.time = Some(prost_types::Timestamp {
        seconds: now / 1_000_000_000,
        nanos: (now % 1_000_000_000) as i32,
    });
    if let Some(exfilwatch::proto::flow::layer4::Protocol::Tcp(tcp)) =
        f.l4.as_mut().and_then(|l| l.protocol.as_mut())
    {
        tcp.source_port = rng.u32(32_768..61_000);
    }
    f
}

/// The firing alert of `rule`, from the API.
async fn firing(service: &Service, rule: &str, count: Option<u64>) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let alerts = service.ok("/api/v1/alerts?status=firing").await;
        if let Some(a) = alerts.as_array().unwrap().iter().find(|a| {
            a["rule"] == rule && count.is_none_or(|n| a["context"]["count"].as_u64() == Some(n))
        }) {
            return a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {rule} alert: {alerts:#}\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn save(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("target/screenshots")];
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        dirs.push(root.join("docs/screenshots"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_signs_in_follows_alerts_to_their_evidence_and_explores_flows() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 60;
    let prometheus = PromServer::start(end).await;
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    let config = RunConfig::new(relay.addr)
        .with(
            "api",
            "tokens_file: tokens\nexternal_url: http://127.0.0.1:{port}",
        )
        .with(
            "prometheus",
            &format!("url: {}\ninterval: 1s", prometheus.url),
        )
        .with(
            "alertmanager",
            &format!(
                "urls: [\"http://127.0.0.1:{}\"]\nupdate_interval: 200ms",
                free_port()
            ),
        );
    let service = Service::spawn(&config, dir).with_token(TOKEN);
    service.ready().await;

    // Ordinary traffic, 60 denied probes of the production database, and a flow whose names
    // carry markup.
    let mut cluster = TrainingCluster::new(5, exfilwatch::common::clock::now_ns(), 1_000_000);
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..200 {
        relay.sim.push_flow(fresh(cluster.next_flow(), &mut rng));
    }
    let probe = cluster.exfiltration_attempt().swap_remove(1);
    for _ in 0..60 {
        relay.sim.push_flow(fresh(probe.clone(), &mut rng));
    }
    let mut evil = cluster.lookup(1, "<script>alert(1)</script>.evil.example", "A");
    evil.source.as_mut().unwrap().pod_name = "<img src=x onerror=alert(2)>".into();
    relay.sim.push_flow(fresh(evil, &mut rng));
    let denied = firing(&service, "TrainingPodUnexpectedEgress", Some(60)).await;
    let spike = firing(&service, "TrainingDataEgressVolumeSpike", None).await;

    // The console's responses forbid scripts and framing.
    let r = service
        .client
        .get(service.url("/ui/login"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );

    let browser = Browser::start().await;
    // Signed out: every page leads to the sign-in form; a wrong token is refused.
    browser.goto(&service.url("/ui/")).await;
    browser
        .wait_url("the sign-in page", |u| u.contains("/ui/login?next="))
        .await;
    browser.type_into("#token", "not-a-token").await;
    browser.click("#sign-in").await;
    assert!(
        browser
            .text("#login-problem")
            .await
            .contains("not accepted")
    );
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    let home = service.url("/ui/");
    browser.wait_url("the alerts page", |u| u == home).await;
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "exfilwatch_session")
        .unwrap_or_else(|| panic!("{cookies:#?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert!(!session["value"].as_str().unwrap().contains(TOKEN));

    // The alerts list links to each alert's page, its generatorURL.
    let list = browser.text("#alerts").await;
    assert!(
        list.contains("production/orders-db") && list.contains("60"),
        "{list}"
    );
    let page = denied["generator_url"].as_str().unwrap();
    assert_eq!(
        page,
        service.url(&format!(
            "/ui/alerts/{}",
            denied["fingerprint"].as_str().unwrap()
        ))
    );
    browser.goto(page).await;
    assert!(
        browser
            .text("#alert-summary")
            .await
            .contains("60 egress attempts")
    );
    assert!(
        browser
            .text("#context")
            .await
            .contains("llm-pretrain-worker-2")
    );
    assert_eq!(browser.all("#timeline rect").await.len(), 30);
    let rows = browser.all("#flows tbody tr").await.len();
    assert_eq!(rows, 50, "the first page");
    let first_page = browser.text("#flows").await;
    assert!(first_page.contains("POLICY_DENIED"), "{first_page}");
    browser.click("#next-page").await;
    browser
        .wait_url("the next page", |u| u.contains("cursor="))
        .await;
    assert_eq!(browser.all("#flows tbody tr").await.len(), 10, "the rest");
    // A silence prefilled with the alert's identifying labels.
    let silence = browser.attribute("#silence", "href").await;
    assert!(
        silence.contains("/#/silences/new?filter=")
            && silence.contains("alertname%3D%22TrainingPodUnexpectedEgress%22")
            && silence.contains("destination%3D%22production%2Forders-db%22"),
        "{silence}"
    );

    // The alert's rule, as loaded.
    browser.click("#rule").await;
    browser
        .wait_url("the rule page", |u| u.contains("/ui/rules/"))
        .await;
    let rule = browser.text("#rule-definition").await;
    assert!(
        rule.contains("policy_denied") && rule.contains("default.yaml:"),
        "{rule}"
    );

    // The volume spike's page: the egress chart against the baseline and its limit.
    browser.goto(spike["generator_url"].as_str().unwrap()).await;
    assert_eq!(browser.all("#spike-chart polyline").await.len(), 3);
    save("console-alert.png", &browser.screenshot().await);

    // Namespaces: ai-training with its flows, denials and egress chart.
    browser.click("header nav a[href='/ui/namespaces']").await;
    browser
        .wait_url("the namespaces page", |u| u.ends_with("/ui/namespaces"))
        .await;
    let namespaces = browser.text("#namespaces").await;
    assert!(namespaces.contains("ai-training"), "{namespaces}");
    assert!(!browser.all("#egress-0 polyline").await.is_empty());
    save("console-namespaces.png", &browser.screenshot().await);

    // The explorer: a filter through the form, its URL shareable.
    browser.goto(&service.url("/ui/flows")).await;
    browser.type_into("#f-verdict", "DROPPED").await;
    browser
        .type_into("#f-destination_namespace", "production")
        .await;
    browser.click("#apply").await;
    let url = browser
        .wait_url("the filtered flows", |u| {
            u.contains("verdict=DROPPED") && u.contains("destination_namespace=production")
        })
        .await;
    assert_eq!(
        browser.text("#shown").await,
        "60 flows shown, newest first."
    );
    let export = reqwest::Client::new()
        .get(url.replace("/ui/flows?", "/ui/flows.ndjson?"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.text().await.unwrap().lines().count(), 60);

    // Attacker-controlled names are text, never markup.
    browser
        .goto(&service.url("/ui/flows?fqdn=evil.example"))
        .await;
    let table = browser.text("#flows").await;
    assert!(
        table.contains("<script>alert(1)</script>.evil.example"),
        "{table}"
    );
    assert!(table.contains("<img src=x onerror=alert(2)>"), "{table}");
    assert!(browser.all("main script, main img").await.is_empty());

    // Sign out: the session is gone.
    browser.click("#sign-out").await;
    browser
        .wait_url("the sign-in page", |u| u.ends_with("/ui/login"))
        .await;
    browser.goto(&service.url("/ui/namespaces")).await;
    assert!(
        browser
            .wait_url("the sign-in page again", |u| u.contains("/ui/login"))
            .await
            .contains("/ui/login?next=%2Fui%2Fnamespaces")
    );
    // The JSON API still takes bearer tokens.
    service.ok("/api/v1/flows?limit=1").await;
    let (code, out) = service.terminate().await;
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_on_loopback_the_console_needs_no_sign_in() {
    let relay = relay(None).await;
    let service = Service::spawn(&RunConfig::new(relay.addr), tempfile::tempdir().unwrap());
    service.ready().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let alerts = client.get(service.url("/ui/")).send().await.unwrap();
    assert_eq!(alerts.status(), 200);
    assert!(alerts.text().await.unwrap().contains("<h1>Alerts</h1>"));
    // A bad filter is a 400 page naming the parameter and its value, shown as text.
    for (query, names) in [
        ("port=99999", "parameter port=&quot;99999&quot;"),
        (
            "bogus=%3Cb%3E",
            "parameter bogus=&quot;&lt;b&gt;&quot;: unknown parameter",
        ),
    ] {
        let r = client
            .get(service.url(&format!("/ui/flows?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let page = r.text().await.unwrap();
        assert!(page.contains(names), "{query}: {page}");
    }
    let login = client.get(service.url("/ui/login")).send().await.unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()["location"], "/ui/");
    let (code, out) = service.terminate().await;
    assert_eq!(code, Some(0), "{out}");
}

/// Whether a process whose command line names `profile` runs.
fn browser_running(profile: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", profile])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_ends_with_its_test_a_test_that_panics_included() {
    let browser = Browser::start().await;
    let profile = browser
        .profile()
        .expect("chromedriver names the profile")
        .to_owned();
    assert!(browser_running(&profile));
    drop(browser);
    assert!(!browser_running(&profile), "the browser outlived its test");
    // A test that fails with its browser open.
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = tokio::spawn(async move {
        let browser = Browser::start().await;
        tx.send(browser.profile().unwrap().to_owned()).unwrap();
        panic!("a failing console test");
    })
    .await;
    assert!(failed.is_err());
    let profile = rx.recv().unwrap();
    assert!(
        !browser_running(&profile),
        "the browser outlived its failed test"
    );
}
