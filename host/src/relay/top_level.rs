//! Finding one top-level field of a JSON object without parsing the rest:
//! strings are skipped with `memchr` (their escapes honoured, their contents
//! not validated) and only brackets are counted. A whole answer's `usage` is
//! read this way — a third of the cost of deserializing past every choice
//! with serde. What the field holds is still parsed by serde.

use serde::de::DeserializeOwned;

/// The value of the top-level field `key` of the JSON object in `body`,
/// deserialized; `None` when there is no such field, the body is not an
/// object, or the value does not deserialize as `T`.
pub fn field<T: DeserializeOwned>(body: &[u8], key: &str) -> Option<T> {
    let value = value_at(body, key.as_bytes())?;
    let mut de = serde_json::Deserializer::from_slice(value);
    T::deserialize(&mut de).ok()
}

/// The bytes from the start of the top-level field's value to the body's end.
fn value_at<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0usize;
    // At depth 1, whether the next string is a field name.
    let mut naming = false;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'"' => {
                let end = string_end(body, at + 1)?;
                if depth == 1 && naming && &body[at + 1..end] == key {
                    let rest = body[end + 1..].trim_ascii_start();
                    return rest.strip_prefix(b":").map(<[u8]>::trim_ascii_start);
                }
                naming = false;
                at = end;
            }
            b'{' => {
                depth += 1;
                naming = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' => naming = depth == 1,
            b':' => naming = false,
            _ if depth == 0 && !byte.is_ascii_whitespace() => return None,
            _ => {}
        }
        at += 1;
    }
    None
}

/// Where the string whose contents start at `from` ends (its closing quote).
fn string_end(body: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let found = from + memchr::memchr2(b'"', b'\\', body.get(from..)?)?;
        if body[found] == b'"' {
            return Some(found);
        }
        from = found + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(body: &str) -> Option<serde_json::Value> {
        field(body.as_bytes(), "usage")
    }

    #[test]
    fn a_top_level_field_is_found_after_nested_and_escaped_lookalikes() {
        let body = r#"{"id":"x\"usage\":1","choices":[{"usage":{"a":2},"text":"\\"}],
            "meta":{"usage":3}, "usage" : {"prompt_tokens": 4}, "last": true}"#;
        assert_eq!(usage(body), Some(serde_json::json!({"prompt_tokens": 4})));
    }

    #[test]
    fn a_missing_field_or_a_non_object_body_gives_none() {
        assert_eq!(usage(r#"{"choices":[{"usage":1}]}"#), None);
        assert_eq!(usage(r#"["usage", {"usage": 1}]"#), None);
        assert_eq!(usage(r#""usage""#), None);
        assert_eq!(usage(r#"{"a":"usage","b":"#), None);
        assert_eq!(usage(r#"{"a":"unterminated \"usage\": 1"#), None);
        assert_eq!(usage("}{\"usage\":1}"), None);
    }

    #[test]
    fn the_value_is_read_whatever_follows_it() {
        assert_eq!(usage(r#"{"usage":null}"#), Some(serde_json::Value::Null));
        assert_eq!(
            usage(r#"{"usage":[1,2],"x":}"#),
            Some(serde_json::json!([1, 2]))
        );
        assert_eq!(usage(r#"{"usage" 1}"#), None);
    }
}
