//! JSON that the store can always read back.
//!
//! serde_json's parser refuses input nested deeper than 128 levels, but nothing
//! stops a serialiser from writing deeper. An event accepted on the way in and
//! unreadable on the way out jams every reader of the log for good (the log is
//! append-only), so the write path bounds nesting well below the parser's limit
//! and checks that each stored form parses back to the same value
//! (`round_trips`), and the read path parses stored JSON with no depth limit at
//! all (`parse_stored`), so events that older versions let through still read.

use serde::Deserialize;
use serde_json::Value;

/// The deepest nesting accepted in a key's metadata (the object itself is
/// level 1). Stored events wrap metadata two levels deeper; 32 leaves the
/// parser's limit far away.
pub const MAX_METADATA_DEPTH: usize = 32;

/// How deeply nested a value is: a scalar is 0, `{}` and `[]` are 1, `[[1]]`
/// is 2. Iterative, so a hostile value cannot exhaust the stack here.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((v, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let level = above + 1;
        deepest = deepest.max(level);
        pending.extend(children.map(|c| (c, level)));
    }
    deepest
}

/// Whether any string or object key in the value holds a NUL character.
/// PostgreSQL cannot store NUL in text, and keyledger refuses it everywhere
/// rather than let two stores disagree on what they accept.
pub fn contains_nul(value: &Value) -> bool {
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => pending.extend(items.iter()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                pending.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// The deepest nesting read back from the store: more than any version of
/// keyledger could write (the 4 KiB metadata limit of versions before nesting
/// was bounded allowed about 2,050 levels in all). A row nested deeper is
/// corrupt, and refusing it before parsing keeps every later walk over the
/// value (clone, drop, serialise: all recursive) within the threads' stacks,
/// which `cli::main` sizes for this depth.
pub const MAX_STORED_DEPTH: usize = 2100;

/// Parses JSON read from the store, nested up to `MAX_STORED_DEPTH` levels:
/// events written before nesting was bounded must still read, or the log
/// stops at them. The parser grows its stack on the heap as it descends
/// (serde_stacker).
pub fn parse_stored(text: &str) -> Result<Value, serde_json::Error> {
    if text_depth(text) > MAX_STORED_DEPTH {
        return Err(serde::de::Error::custom(format_args!(
            "nested deeper than {MAX_STORED_DEPTH} levels"
        )));
    }
    let mut parser = serde_json::Deserializer::from_str(text);
    parser.disable_recursion_limit();
    let value = Value::deserialize(serde_stacker::Deserializer::new(&mut parser))?;
    parser.end()?;
    Ok(value)
}

/// The deepest nesting of brackets in JSON text, outside strings, without
/// parsing it (so without building what is too deep to drop safely).
fn text_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a value may not be stored.
#[derive(Debug, thiserror::Error)]
pub enum NotStorable {
    #[error("it cannot be serialised: {0}")]
    Serialise(#[source] serde_json::Error),
    #[error("its serialised form does not parse back: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("its serialised form parses back to a different value")]
    Differs,
}

/// Checks that `value` survives the trip to text and back through serde_json's
/// ordinary parser (depth limit included) unchanged: what every reader of the
/// store, keyledger or another tool, will do with it. The last line before a
/// commit; the validators should have refused anything that fails here.
pub fn round_trips(value: &Value) -> Result<(), NotStorable> {
    let text = serde_json::to_string(value).map_err(NotStorable::Serialise)?;
    let back: Value = serde_json::from_str(&text).map_err(NotStorable::Parse)?;
    if &back == value {
        Ok(())
    } else {
        Err(NotStorable::Differs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_containers_not_scalars() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        let deep: Value = parse_stored(&nested(MAX_STORED_DEPTH)).expect("parses");
        assert_eq!(depth(&deep), MAX_STORED_DEPTH);
    }

    #[test]
    fn text_depth_ignores_brackets_inside_strings() {
        assert_eq!(text_depth(r#"{"a":"[[[{{{","b":["\"[["]}"#), 2);
        assert_eq!(text_depth("[[[]],[]]"), 3);
        assert_eq!(text_depth("1"), 0);
    }

    #[test]
    fn stored_json_nested_deeper_than_any_version_wrote_is_refused() {
        let err = parse_stored(&nested(MAX_STORED_DEPTH + 1)).expect_err("too deep");
        assert!(err.to_string().contains("deeper than"), "{err}");
        assert!(parse_stored(&nested(1_000_000)).is_err());
    }

    #[test]
    fn nul_is_found_in_strings_and_in_keys_at_any_depth() {
        assert!(!contains_nul(&json!({"a": ["b", {"c": "d"}]})));
        assert!(contains_nul(&json!({"a": ["b", {"c": "d\u{0}"}]})));
        assert!(contains_nul(&json!({"a": [{"\u{0}": 1}]})));
    }

    #[test]
    fn stored_json_reads_back_beyond_the_ordinary_parsers_limit() {
        // What the 4 KiB metadata limit of older versions let through: about
        // 2,000 levels inside the event's two levels of wrapping.
        let text = format!(
            "{{\"KeyCreated\":{{\"metadata\":{{\"a\":{}}}}}}}",
            nested(2045)
        );
        assert!(serde_json::from_str::<Value>(&text).is_err());
        let value = parse_stored(&text).expect("reads");
        assert_eq!(depth(&value), 2048);
        assert_eq!(serde_json::to_string(&value).expect("serialises"), text);
    }

    #[test]
    fn trailing_garbage_is_still_an_error() {
        assert!(parse_stored("{} x").is_err());
        assert!(parse_stored("{\"a\": [1,]}").is_err());
    }

    #[test]
    fn values_deeper_than_the_parser_reads_do_not_round_trip() {
        let ok: Value = parse_stored(&nested(100)).expect("parses");
        assert!(round_trips(&ok).is_ok());
        let deep: Value = parse_stored(&nested(129)).expect("parses");
        assert!(matches!(round_trips(&deep), Err(NotStorable::Parse(_))));
    }
}
