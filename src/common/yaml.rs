//! The one YAML parser of the crate (`serde_yaml_ng`), behind functions that return messages
//! an operator can act on: the line and column, serde's reason, and for a misspelt key the key
//! that was probably meant.

use std::fmt;

use serde::de::DeserializeOwned;

/// A YAML document that could not be read into the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line and column, when the parser knows them.
    pub position: Option<(usize, usize)>,
    /// serde's reason, without the position, with a "did you mean" hint where one fits.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{line}:{column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<serde_yaml_ng::Error> for YamlError {
    fn from(e: serde_yaml_ng::Error) -> YamlError {
        YamlError {
            position: e.location().map(|l| (l.line(), l.column())),
            message: message(&e),
        }
    }
}

/// Parses `text` as a `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml_ng::from_str(text).map_err(YamlError::from)
}

/// Reads an already parsed YAML value as a `T`; the message has no position (a value keeps
/// none), so callers say where the value came from.
pub fn from_value<T: DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, String> {
    serde_yaml_ng::from_value(value).map_err(|e| message(&e))
}

/// Walks every document of `text` without keeping anything, counting its nodes with the
/// nodes its aliases stand for; fails, at the position where the count passes `max`, before
/// any of it is built. A document without aliases has fewer nodes than bytes, so `max` of the
/// text's length refuses only alias expansion ("billion laughs"): a few hundred bytes of
/// anchors and aliases can stand for millions of strings.
pub fn within_nodes(text: &str, max: usize) -> Result<(), YamlError> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    #[derive(Clone, Copy)]
    struct Count<'a> {
        left: &'a Cell<usize>,
        max: usize,
    }

    impl Count<'_> {
        fn take<E: serde::de::Error>(self) -> Result<(), E> {
            match self.left.get().checked_sub(1) {
                Some(n) => {
                    self.left.set(n);
                    Ok(())
                }
                None => Err(E::custom(format!(
                    "the document stands for more than {} values once its aliases are expanded: write the values out, without anchors and aliases",
                    self.max
                ))),
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Count<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Count<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any YAML value")
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
            self.take()
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
            self.take()
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
            self.take()
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
            self.take()
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            self.take()
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.take()?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.take()?;
            while map.next_key_seed(self)?.is_some() {
                map.next_value_seed(self)?;
            }
            Ok(())
        }
        fn visit_enum<A: serde::de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            // A tagged value (`!Tag x`): not part of any shape this crate reads.
            Err(A::Error::custom("YAML tags are not accepted"))
        }
    }

    let left = Cell::new(max);
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        if let Err(e) = (Count { left: &left, max }).deserialize(doc) {
            let mut e = YamlError::from(e);
            // The parser stands in the anchored value it replays: name where aliasing starts.
            if e.message.contains("once its aliases are expanded")
                && let Some(line) = first_alias_line(text)
            {
                e.position = Some((line, 1));
                e.message.push_str(" (aliases from this line on)");
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The 1-based line of the first alias (`*name` where a value starts) in `text`, for a
/// message; quoted text and comments on the same line are skipped.
fn first_alias_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let mut quote = None;
            let mut previous = ' ';
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '#') if previous.is_whitespace() => return false,
                    (None, '*')
                        if matches!(previous, ' ' | '\t' | '[' | '{' | ',' | '-' | ':' | '?')
                            && chars
                                .peek()
                                .is_some_and(|n| n.is_alphanumeric() || *n == '_' || *n == '-') =>
                    {
                        return true;
                    }
                    _ => {}
                }
                previous = c;
            }
            false
        })
        .map(|i| i + 1)
}

/// serde's reason for `e`: the text without the position serde_yaml_ng appends, with a hint
/// for a misspelt key.
fn message(e: &serde_yaml_ng::Error) -> String {
    let mut message = e.to_string();
    // serde_yaml_ng appends " at line L column C"; the position is reported on its own.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    if let Some(hint) = suggest(&message) {
        message.push_str(&hint);
    }
    message
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": "; did you mean `a`?" when one
/// of the expected keys is a few edits away. serde reports unknown fields only as text, so the
/// names are read from it.
fn suggest(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::levenshtein(unknown, k), k))
        .min()?;
    (best.0 <= unknown.len().max(2) / 2 + 1).then(|| format!("; did you mean `{}`?", best.1))
}

/// The 1-based line of item `index` of the top-level list in `text`: the line of its
/// `name: NAME` entry when `name` is given and found, else the line of the list's n-th `- `.
///
/// serde_yaml_ng keeps no positions in parsed values, and a second YAML parser only for
/// line numbers would cost more than this scan of a rule file.
pub fn item_line(text: &str, name: Option<&str>, index: usize) -> usize {
    if let Some(name) = name {
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ").trim();
            if let Some(v) = t.strip_prefix("name:")
                && v.trim().trim_matches(|c| c == '"' || c == '\'') == name
            {
                return i + 1;
            }
        }
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("- "))
        .nth(index)
        .map_or(1, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        interval: Option<String>,
        namespaces: Option<Vec<String>>,
    }

    #[test]
    fn aliases_that_expand_past_the_bound_are_refused_where_they_pass_it() {
        let plain = "a: [1, 2, 3]\nb: {c: d}\n---\ne: f\n";
        assert!(within_nodes(plain, plain.len()).is_ok());
        // Ten list items stand for 10 x 1000 strings; the fifth passes the bound, and the
        // message names the line where aliasing starts.
        let mut laughs = String::from("x: &x [");
        laughs.push_str(&vec!["lol"; 1000].join(", "));
        laughs.push_str("]\ny:\n");
        laughs.push_str(&"- *x\n".repeat(10));
        let e = within_nodes(&laughs, laughs.len()).unwrap_err();
        assert!(e.message.contains("once its aliases are expanded"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        assert_eq!(
            first_alias_line("a: '*x'\nb: \"*y\" # *z\nc: [1, *w]\n"),
            Some(3)
        );
        assert_eq!(first_alias_line("a: 2*3\n"), None);
        // A few aliases within the bound are fine.
        assert!(within_nodes("a: &a 1\nb: *a\n", 64).is_ok());
    }

    #[test]
    fn a_misspelt_key_names_its_position_and_the_key_meant() {
        let e = parse::<Section>("interval: 5s\nnamespace: [a]\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(2));
        assert!(e.message.contains("unknown field `namespace`"), "{e}");
        assert!(e.message.ends_with("did you mean `namespaces`?"), "{e}");
        assert!(!e.message.contains(" at line "), "{e}");
        assert!(e.to_string().starts_with("2:"), "{e}");
    }

    #[test]
    fn a_far_off_key_gets_no_suggestion() {
        let e = parse::<Section>("zzzzzzzzzzzz: 1\n").unwrap_err();
        assert!(!e.message.contains("did you mean"), "{e}");
    }

    #[test]
    fn items_are_found_by_name_or_by_position() {
        let text = "# pack\n- name: A\n  kind: x\n- kind: y\n  name: 'B'\n- kind: z\n";
        assert_eq!(item_line(text, Some("A"), 0), 2);
        assert_eq!(item_line(text, Some("B"), 1), 5);
        assert_eq!(item_line(text, None, 2), 6);
        assert_eq!(item_line(text, Some("missing"), 9), 1);
    }
}
