//! The generated text of a response or a stream chunk: message or delta
//! content, refusals, reasoning text, and tool calls' names and arguments.

use std::borrow::Cow;

use serde::Deserialize;

use crate::Tally;

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Option<Generated<'a>>,
    #[serde(borrow, default)]
    delta: Option<Generated<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Generated<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

/// A tool call, in a request's history or a response.
#[derive(Deserialize)]
pub(crate) struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl ToolCall<'_> {
    /// Adds the call's function name and arguments.
    pub(crate) fn count(&self, tally: &mut Tally) {
        let Some(function) = &self.function else {
            return;
        };
        for text in [&function.name, &function.arguments].into_iter().flatten() {
            tally.text(text);
        }
    }
}

/// Adds the generated text of a response body or stream chunk (`json`) to
/// `tally`; false when `json` is not a completion object.
pub fn completion_text(json: &[u8], tally: &mut Tally) -> bool {
    let Ok(response) = serde_json::from_slice::<Response<'_>>(json) else {
        return false;
    };
    for choice in &response.choices {
        if let Some(text) = &choice.text {
            tally.text(text);
        }
        for generated in [&choice.message, &choice.delta].into_iter().flatten() {
            for text in [
                &generated.content,
                &generated.refusal,
                &generated.reasoning_content,
            ]
            .into_iter()
            .flatten()
            {
                tally.text(text);
            }
            for call in generated.tool_calls.iter().flatten() {
                call.count(tally);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    fn count(json: &str) -> u64 {
        let mut tally = Tally::new(Encoding::O200kBase, 1 << 20);
        assert!(completion_text(json.as_bytes(), &mut tally), "{json}");
        tally.total()
    }

    #[test]
    fn reads_messages_deltas_text_and_tool_calls() {
        assert_eq!(
            count(r#"{"choices":[{"message":{"role":"assistant","content":"Hello world"}}]}"#),
            2
        );
        assert_eq!(
            count(r#"{"choices":[{"delta":{"content":"Hello world"}}],"usage":null}"#),
            2
        );
        assert_eq!(count(r#"{"choices":[{"text":"Hello world"}]}"#), 2);
        let args = Encoding::O200kBase.count("{\"city\":\"Paris\"}") as u64;
        let name = Encoding::O200kBase.count("get_weather") as u64;
        assert_eq!(
            count(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#
            ),
            args + name
        );
        assert_eq!(count(r#"{"choices":[{"delta":{"content":null}}]}"#), 0);
    }

    #[test]
    fn other_json_is_not_a_completion() {
        let mut tally = Tally::new(Encoding::O200kBase, 1024);
        assert!(!completion_text(b"[DONE]", &mut tally));
        assert!(!completion_text(br#"{"choices":3}"#, &mut tally));
    }
}
