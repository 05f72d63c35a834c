//! A small client for Prometheus's HTTP API: instant queries and range queries.
//!
//! Answers are checked as they are parsed: an error status, a body that is not the API's
//! JSON, a result of the wrong type or a sample that is not a number each become a
//! [`PromError`] that says which, so a blind or broken Prometheus is never mistaken for a
//! quiet namespace. Non-finite samples (NaN, ±Inf) are dropped and counted, never used.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::common::http::{HttpAuth, HttpTls};

/// Prometheus refuses range queries with more points per series than this.
pub const MAX_POINTS: i64 = 11_000;

/// Why a query gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromError {
    #[error("prometheus {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("prometheus {url}: HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("prometheus {url}: query failed ({error_type}): {error}")]
    Api {
        url: String,
        error_type: String,
        error: String,
    },
    #[error("prometheus {url}: unexpected answer: {detail}")]
    Parse { url: String, detail: String },
}

/// One series of an instant query: labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One series of a range query: labels and (unix seconds, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data<T> {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<T>,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixItem {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// A Prometheus server.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    client: reqwest::Client,
    auth: Option<HttpAuth>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .finish()
    }
}

/// A sample value: finite numbers only.
fn number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Prometheus {
    /// A client for `base` (e.g. `http://prometheus:9090`) with a per-request timeout.
    pub fn new(
        base: &str,
        timeout: Duration,
        auth: Option<HttpAuth>,
        tls: Option<&HttpTls>,
    ) -> Result<Prometheus, String> {
        let client = crate::common::http::client("prometheus", timeout, tls)?;
        Ok(Prometheus {
            base: base.trim_end_matches('/').to_owned(),
            client,
            auth,
        })
    }

    /// One GET: the answer's status and body, or the transport failure.
    async fn get(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<(u16, Vec<u8>), PromError> {
        let url = format!("{}{path}", self.base);
        let request =
            crate::common::http::authorize(self.client.get(&url).query(params), self.auth.as_ref());
        let response = request.send().await.map_err(|e| PromError::Transport {
            url: url.clone(),
            detail: crate::common::error_chain(&e),
        })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| PromError::Transport {
            url: url.clone(),
            detail: crate::common::error_chain(&e),
        })?;
        Ok((status, body.to_vec()))
    }

    /// Evaluates `query` at `time` (unix seconds). Returns the usable samples and how many
    /// were dropped as non-finite.
    pub async fn instant(&self, query: &str, time: f64) -> Result<(Vec<Sample>, usize), PromError> {
        let (status, body) = self
            .get(
                "/api/v1/query",
                &[("query", query.to_owned()), ("time", format!("{time:.3}"))],
            )
            .await?;
        parse_vector(&format!("{}/api/v1/query", self.base), status, &body)
    }

    /// Evaluates `query` at `start`, `start + step`, ... up to `end` (unix seconds), in as
    /// many requests as Prometheus's point limit needs.
    pub async fn range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<(Vec<Series>, usize), PromError> {
        let step = step.max(1);
        let url = format!("{}/api/v1/query_range", self.base);
        let mut by_labels: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        let mut dropped = 0;
        let mut from = start;
        while from <= end {
            let to = end.min(from + step * (MAX_POINTS - 1));
            let params = [
                ("query", query.to_owned()),
                ("start", from.to_string()),
                ("end", to.to_string()),
                ("step", step.to_string()),
            ];
            let (status, body) = self.get("/api/v1/query_range", &params).await?;
            let (series, bad) = parse_matrix(&url, status, &body)?;
            dropped += bad;
            for s in series {
                by_labels.entry(s.labels).or_default().extend(s.points);
            }
            from = to + step;
        }
        Ok((
            by_labels
                .into_iter()
                .map(|(labels, points)| Series { labels, points })
                .collect(),
            dropped,
        ))
    }
}

/// The `data` of an API answer, or what was wrong with it.
fn envelope(url: &str, status: u16, body: &[u8]) -> Result<serde_json::Value, PromError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if (200..300).contains(&status) => {
            return Err(PromError::Parse {
                url: url.into(),
                detail: format!("not the API's JSON: {e}"),
            });
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>();
            return Err(PromError::Http {
                url: url.into(),
                status,
                body: text.trim().to_owned(),
            });
        }
    };
    if envelope.status != "success" {
        return Err(PromError::Api {
            url: url.into(),
            error_type: envelope
                .error_type
                .unwrap_or_else(|| format!("HTTP {status}")),
            error: envelope.error.unwrap_or_default(),
        });
    }
    envelope.data.ok_or_else(|| PromError::Parse {
        url: url.into(),
        detail: "success without data".into(),
    })
}

/// An instant query's answer: the finite samples, and how many were not finite.
pub fn parse_vector(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<(Vec<Sample>, usize), PromError> {
    let data: Data<VectorItem> =
        serde_json::from_value(envelope(url, status, body)?).map_err(|e| PromError::Parse {
            url: url.into(),
            detail: format!("expected a vector: {e}"),
        })?;
    if data.result_type != "vector" {
        return Err(PromError::Parse {
            url: url.into(),
            detail: format!("expected a vector, got {}", data.result_type),
        });
    }
    let mut dropped = 0;
    let samples = data
        .result
        .into_iter()
        .filter_map(|item| match number(&item.value.1) {
            Some(value) => Some(Sample {
                labels: item.metric,
                value,
            }),
            None => {
                dropped += 1;
                None
            }
        })
        .collect();
    Ok((samples, dropped))
}

/// One range query answer: the series with their finite points, and how many were not.
pub fn parse_matrix(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<(Vec<Series>, usize), PromError> {
    let data: Data<MatrixItem> =
        serde_json::from_value(envelope(url, status, body)?).map_err(|e| PromError::Parse {
            url: url.into(),
            detail: format!("expected a matrix: {e}"),
        })?;
    if data.result_type != "matrix" {
        return Err(PromError::Parse {
            url: url.into(),
            detail: format!("expected a matrix, got {}", data.result_type),
        });
    }
    let mut dropped = 0;
    let series = data
        .result
        .into_iter()
        .map(|item| {
            let mut points = Vec::with_capacity(item.values.len());
            for (t, v) in item.values {
                match number(&v) {
                    Some(v) if t.is_finite() => points.push((t.round() as i64, v)),
                    _ => dropped += 1,
                }
            }
            Series {
                labels: item.metric,
                points,
            }
        })
        .collect();
    Ok((series, dropped))
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn only_finite_numbers_are_samples() {
        assert_eq!(number("1.5e3"), Some(1500.0));
        for bad in ["NaN", "+Inf", "-Inf", "", "fast"] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
