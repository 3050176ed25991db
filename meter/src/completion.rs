//! The generated text of a response or a stream chunk: message or delta
//! content, refusals, reasoning text, and tool calls' names and arguments.
//! Pieces are appended to one text and counted together, as the model
//! generated them, not one chunk at a time.

use std::borrow::Cow;

use serde::Deserialize;

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
    /// The call's function name and arguments.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.function
            .iter()
            .flat_map(|f| [&f.name, &f.arguments])
            .flatten()
            .map(|t| t.as_ref())
    }
}

/// Appends the generated text of a response body or stream chunk (`json`)
/// to `out`; false when `json` is not a completion object.
pub fn completion_text(json: &[u8], out: &mut String) -> bool {
    let Ok(response) = serde_json::from_slice::<Response<'_>>(json) else {
        return false;
    };
    for choice in &response.choices {
        if let Some(text) = &choice.text {
            out.push_str(text);
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
                out.push_str(text);
            }
            for call in generated.tool_calls.iter().flatten() {
                call.texts().for_each(|t| out.push_str(t));
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    fn count(json: &str) -> usize {
        let mut text = String::new();
        assert!(completion_text(json.as_bytes(), &mut text), "{json}");
        Encoding::O200kBase.count(&text)
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
        let call = Encoding::O200kBase.count("get_weather{\"city\":\"Paris\"}");
        assert_eq!(
            count(
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#
            ),
            call
        );
        assert_eq!(count(r#"{"choices":[{"delta":{"content":null}}]}"#), 0);
    }

    #[test]
    fn other_json_is_not_a_completion() {
        let mut text = String::new();
        assert!(!completion_text(b"[DONE]", &mut text));
        assert!(!completion_text(br#"{"choices":3}"#, &mut text));
    }
}
