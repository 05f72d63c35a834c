//! Text from the watched workloads (pod names, labels, DNS names) made safe to print on a
//! terminal or in a YAML comment: control characters and bidirectional overrides become
//! `\u{..}` escapes, so a crafted name cannot move the cursor, end a comment line or reorder
//! what an operator reads.

use std::borrow::Cow;
use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character escaped; borrowed when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` as a double-quoted string of a PromQL or Alertmanager label matcher: backslash,
/// quote and newline escaped.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The fields of a text log line, each [`printable`]: a flow's DNS name or a request's path
/// can carry a newline (a forged line follows) or terminal escapes, and every field can hold
/// one, the message included. JSON logs need no such step: JSON escapes control characters.
pub fn log_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer: &mut Writer<'_>, field, value| {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            writer.write_str(&printable(&text))
        } else {
            write!(writer, "{}={}", field.name(), printable(&text))
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_quoted_for_promql_and_alertmanager() {
        assert_eq!(quoted("ai-training"), "\"ai-training\"");
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("llm-pretrain-0"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\x1b[2J"), "a\\u{a}b\\u{1b}[2J");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(printable("ünïcode"), "ünïcode");
    }
}
