//! `exfilwatch policy suggest` and `exfilwatch policy check`: the policy advisor over the
//! flow store the configuration names, opened read-only (a running service's directory can be
//! read beside it), or over a running service's REST API (`--api`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    EXIT_CONFIG, EXIT_NO_INPUT, EXIT_SOURCE, EXIT_STORE, Outcome, OutputFormat, PolicyAction,
    PolicySource,
};
use crate::common::clock::{now_ns, span_ns};
use crate::config::Config;
use crate::flowstore::FlowStore;
use crate::policy::{self, Flavor};
use crate::rules;

/// Exit code of `policy check` when the policies would drop traffic that flowed.
pub const EXIT_WOULD_DROP: u8 = 1;

/// What both subcommands read.
pub struct Window {
    pub config: PathBuf,
    pub namespace: String,
    pub since: Duration,
}

/// The configuration, the namespace's connections and the window they cover.
type History = (Config, Vec<crate::flowstore::Connection>, (i64, i64));

fn connections(w: &Window) -> Result<History, Outcome> {
    let config = Config::load(&w.config).map_err(|e| Outcome::fail(EXIT_CONFIG, e))?;
    let store = FlowStore::open_read_only(config.flows.clone())
        .map_err(|e| Outcome::fail(EXIT_STORE, format!("flow store: {e}")))?;
    let until = now_ns();
    let since = until.saturating_sub(span_ns(w.since));
    let found = store
        .connections(&w.namespace, since, until.saturating_add(1))
        .map_err(|e| Outcome::fail(EXIT_STORE, format!("flow store: {e}")))?;
    Ok((config, found, (since, until)))
}

/// `policy suggest`.
pub fn suggest(w: &Window, flavor: Flavor, format: OutputFormat) -> Outcome {
    let (config, found, window) = match connections(w) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let rules = match rules::load_dir(&config.rules_dir) {
        Ok(r) => r,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let s = policy::suggest(
        &found,
        &w.namespace,
        flavor,
        &policy::segmentation(&rules, &w.namespace),
        window,
    );
    let output = match format {
        OutputFormat::Json => serde_json::to_string_pretty(&s).unwrap_or_default() + "\n",
        OutputFormat::Table => {
            let mut out = s.yaml.clone();
            for l in &s.left_out {
                out.push_str(&format!(
                    "# left out: {} -> {} {}: {} flows: {}\n",
                    crate::common::text::printable(&l.source),
                    crate::common::text::printable(&l.destination),
                    l.port,
                    l.flows,
                    l.reason
                ));
            }
            out
        }
    };
    Outcome {
        exit_code: 0,
        output,
    }
}

/// The policies of `files`, and their texts; problems name the file and line.
fn read_policies(
    files: &[PathBuf],
    namespace: &str,
) -> Result<(Vec<policy::Policy>, Vec<String>), Outcome> {
    let mut policies = Vec::new();
    let mut texts = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Outcome::fail(EXIT_NO_INPUT, format!("{}: {e}", file.display())))?;
        policies.extend(
            policy::parse(&text, &file.display().to_string(), namespace)
                .map_err(|e| Outcome::fail(EXIT_CONFIG, e))?,
        );
        texts.push(text);
    }
    Ok((policies, texts))
}

/// The report as the command prints it, and its exit code.
fn report_outcome(report: &policy::CheckReport, format: OutputFormat) -> Outcome {
    let output = match format {
        OutputFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        OutputFormat::Table => policy::report_text(report),
    };
    Outcome {
        exit_code: if report.drops_traffic() {
            EXIT_WOULD_DROP
        } else {
            0
        },
        output,
    }
}

/// `policy check`.
pub fn check(w: &Window, files: &[PathBuf], format: OutputFormat) -> Outcome {
    let policies = match read_policies(files, &w.namespace) {
        Ok((p, _)) => p,
        Err(o) => return o,
    };
    let (_, found, (since, until)) = match connections(w) {
        Ok(x) => x,
        Err(o) => return o,
    };
    report_outcome(
        &policy::check(&policies, &found, &w.namespace, since, until),
        format,
    )
}

/// Runs a `policy` subcommand.
pub async fn run(action: PolicyAction) -> Outcome {
    let query = match &action {
        PolicyAction::Suggest { query, .. } | PolicyAction::Check { query, .. } => query,
    };
    let (namespace, since, output) = (query.namespace.clone(), query.since, query.output);
    let place = match local_or_remote(&query.from) {
        Ok(p) => p,
        Err(o) => return o,
    };
    match (place, action) {
        (Place::Local(config), action) => {
            let w = Window {
                config,
                namespace,
                since,
            };
            blocking(move || match action {
                PolicyAction::Suggest { flavor, .. } => suggest(&w, flavor, output),
                PolicyAction::Check { files, .. } => check(&w, &files, output),
            })
            .await
        }
        (Place::Remote(api), PolicyAction::Suggest { flavor, .. }) => {
            api.suggest(&namespace, since, flavor, output).await
        }
        (Place::Remote(api), PolicyAction::Check { files, .. }) => {
            api.check(&files, &namespace, since, output).await
        }
    }
}

async fn blocking(work: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Outcome::fail(1, format!("policy: {e}")))
}

enum Place {
    Local(PathBuf),
    Remote(Remote),
}

fn local_or_remote(from: &PolicySource) -> Result<Place, Outcome> {
    match (&from.config, &from.api) {
        (Some(config), _) => Ok(Place::Local(config.clone())),
        (None, Some(url)) => Remote::new(url, from.token_file.as_deref(), from.ca_file.as_deref())
            .map(Place::Remote)
            .map_err(|e| Outcome::fail(EXIT_CONFIG, e)),
        (None, None) => Err(Outcome::fail(EXIT_CONFIG, "--config or --api is required")),
    }
}

/// A running exfilwatch's API.
struct Remote {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Remote {
    fn new(url: &str, token_file: Option<&Path>, ca_file: Option<&Path>) -> Result<Remote, String> {
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("--token-file {}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("EXFILWATCH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        let tls = match ca_file {
            Some(f) => Some(crate::common::http::HttpTls {
                ca_pem: Some(
                    std::fs::read(f).map_err(|e| format!("--ca-file {}: {e}", f.display()))?,
                ),
                identity_pem: None,
            }),
            None => None,
        };
        let client = crate::common::http::client("--api", Duration::from_secs(300), tls.as_ref())?;
        Ok(Remote {
            base: url.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    fn query(namespace: &str, since: Duration) -> String {
        let ns: String = form_urlencoded::byte_serialize(namespace.as_bytes()).collect();
        format!("namespace={ns}&since={}s", since.as_secs().max(1))
    }

    /// Sends `request`; the answer's JSON, or the outcome of a refusal.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, Outcome> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            Outcome::fail(
                EXIT_SOURCE,
                format!("{}: {}", self.base, crate::common::error_chain(&e)),
            )
        })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            Outcome::fail(
                EXIT_SOURCE,
                format!("{}: {status}: not JSON: {e}", self.base),
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let detail =
            crate::common::text::printable(body["detail"].as_str().unwrap_or("")).into_owned();
        let code = if status == reqwest::StatusCode::BAD_REQUEST {
            EXIT_CONFIG
        } else {
            EXIT_SOURCE
        };
        Err(Outcome::fail(
            code,
            format!("{}: {status}: {detail}", self.base),
        ))
    }

    async fn suggest(
        &self,
        namespace: &str,
        since: Duration,
        flavor: Flavor,
        format: OutputFormat,
    ) -> Outcome {
        let url = format!(
            "{}/api/v1/policy/suggest?{}&flavor={}",
            self.base,
            Remote::query(namespace, since),
            flavor.as_str()
        );
        let body = match self.send(self.client.get(url)).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        let output = match format {
            OutputFormat::Json => serde_json::to_string_pretty(&body).unwrap_or_default() + "\n",
            OutputFormat::Table => {
                let mut out = body["yaml"].as_str().unwrap_or("").to_owned();
                for l in body["left_out"].as_array().into_iter().flatten() {
                    let text = |k: &str| {
                        crate::common::text::printable(l[k].as_str().unwrap_or("")).into_owned()
                    };
                    out.push_str(&format!(
                        "# left out: {} -> {} {}: {} flows: {}\n",
                        text("source"),
                        text("destination"),
                        text("port"),
                        l["flows"],
                        text("reason")
                    ));
                }
                out
            }
        };
        Outcome {
            exit_code: 0,
            output,
        }
    }

    async fn check(
        &self,
        files: &[PathBuf],
        namespace: &str,
        since: Duration,
        format: OutputFormat,
    ) -> Outcome {
        // Read here first, so a problem names its file and line.
        let texts = match read_policies(files, namespace) {
            Ok((_, texts)) => texts,
            Err(o) => return o,
        };
        let url = format!(
            "{}/api/v1/policy/check?{}",
            self.base,
            Remote::query(namespace, since)
        );
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(texts.join("\n---\n"));
        let body = match self.send(request).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        match serde_json::from_value::<policy::CheckReport>(body) {
            Ok(report) => report_outcome(&report, format),
            Err(e) => Outcome::fail(
                EXIT_SOURCE,
                format!("{}: not a check report: {e}", self.base),
            ),
        }
    }
}
