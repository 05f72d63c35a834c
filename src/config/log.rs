//! `log:`: how the service writes its log to stderr.

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    format: Option<String>,
}

/// Lines for people (coloured only on a terminal), or one JSON object per line for log
/// pipelines (timestamp, level, target, message and the event's fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// "text" or "json".
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

impl RawLog {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> LogFormat {
        match self.format.as_deref().map(|f| (f, LogFormat::parse(f))) {
            None => LogFormat::Text,
            Some((_, Some(format))) => format,
            Some((other, None)) => {
                v.push("log.format", format!("{other:?} is not text or json"));
                LogFormat::Text
            }
        }
    }
}
