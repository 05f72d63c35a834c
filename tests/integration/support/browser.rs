//! A real browser for the console's tests: Debian's headless `chromium`, driven through
//! `chromedriver` with the W3C WebDriver protocol (JSON over HTTP, spoken here with reqwest).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{GUARD, free_port};

const INSTALL: &str = "apt-get install -y --no-install-recommends chromium chromium-driver (scripts/test.sh does this)";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(path.exists(), "{name} is not installed: {INSTALL}");
    path
}

/// The chromedriver process, killed on drop: also when starting the session fails.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session; the browser and its driver end on drop, a failing test's
/// panic included.
pub struct Browser {
    /// Held for its drop, which ends the driver after the browser.
    _driver: Driver,
    /// The driver's address.
    driver_addr: String,
    base: String,
    session: String,
    /// The browser's profile directory: every process of this browser names it.
    profile: Option<String>,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing the driver would leave Chromium running: the driver ends the session (and
        // its browser) when asked, and whatever is left of the browser is killed by its
        // profile directory. Blocking and plain: no runtime to await on in a drop.
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.session, self.driver_addr
        );
        if let Ok(mut s) = std::net::TcpStream::connect(&self.driver_addr) {
            use std::io::{Read as _, Write as _};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(request.as_bytes());
            let _ = s.read_to_end(&mut Vec::new());
        }
        if let Some(profile) = &self.profile {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", profile])
                .status();
        }
        // The driver itself ends when `self._driver` drops, after this.
    }
}

impl Browser {
    pub async fn start() -> Browser {
        exfilwatch::common::http::install_crypto();
        let port = free_port();
        let driver = Driver(
            Command::new(binary("chromedriver"))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}")),
        );
        let driver_addr = format!("127.0.0.1:{port}");
        let base = format!("http://{driver_addr}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + GUARD;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1100"]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {r}"))
            .to_owned();
        let profile = r["value"]["capabilities"]["chrome"]["userDataDir"]
            .as_str()
            .filter(|d| d.len() > 8)
            .map(str::to_owned);
        let mut browser = Browser {
            _driver: driver,
            driver_addr,
            base,
            session,
            profile,
            http,
        };
        browser.base = format!("{}/session/{}", browser.base, browser.session);
        browser
    }

    /// The browser's profile directory, which every process of it names.
    pub fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let r: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            r["value"].get("error").is_none(),
            "webdriver {path}: {}",
            r["value"]
        );
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The page's address once `pred` holds for it: a click that submits a form or follows a
    /// link may return before the next page is there.
    pub async fn wait_url(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let url = self.url().await;
            if pred(&url) {
                return url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {what}; at {url}: {}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every element matching `css`.
    pub async fn all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    /// The element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {css} on {}: {}",
                self.url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An attribute of the element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> String {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{e}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        decode_base64(b64.as_str().unwrap())
    }

    /// Cookies the browser holds for the page, as WebDriver reports them.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
