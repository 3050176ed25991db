//! The prompt of a request, counted the way OpenAI bills it: for chat, three
//! framing tokens per message, one more for a `name`, and three that prime the
//! reply (OpenAI's published method for its chat models); for completions and
//! embeddings, the text or the token ids given.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Tally;
use crate::completion::ToolCall;

/// Framing tokens per chat message.
const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra tokens for a message's `name`.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// Tokens counted for an image part: one 1024×1024 image at high detail
/// (85 base + 4 tiles × 170). The real figure depends on its size.
const IMAGE_TOKENS: u64 = 765;

/// Which request body holds the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    /// `/v1/chat/completions`: `messages`, `tools`, `functions`.
    Chat,
    /// `/v1/completions`: `prompt`.
    Completion,
    /// `/v1/embeddings`: `input`.
    Embedding,
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CompletionBody<'a> {
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EmbeddingBody<'a> {
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// Adds the prompt tokens of a request body to `tally`.
///
/// # Errors
/// When the body is not the JSON its endpoint takes.
pub fn prompt_tokens(
    kind: PromptKind,
    body: &[u8],
    tally: &mut Tally,
) -> Result<(), serde_json::Error> {
    match kind {
        PromptKind::Chat => {
            let chat: ChatBody<'_> = serde_json::from_slice(body)?;
            for message in &chat.messages {
                chat_message(message, tally)?;
            }
            for definitions in [chat.tools, chat.functions].into_iter().flatten() {
                tally.text(definitions.get());
            }
            tally.fixed(REPLY_PRIMING);
        }
        PromptKind::Completion => {
            let body: CompletionBody<'_> = serde_json::from_slice(body)?;
            if let Some(prompt) = body.prompt {
                texts_or_ids(prompt, tally)?;
            }
        }
        PromptKind::Embedding => {
            let body: EmbeddingBody<'_> = serde_json::from_slice(body)?;
            if let Some(input) = body.input {
                texts_or_ids(input, tally)?;
            }
        }
    }
    Ok(())
}

fn chat_message(message: &Message<'_>, tally: &mut Tally) -> Result<(), serde_json::Error> {
    tally.fixed(TOKENS_PER_MESSAGE);
    for text in [&message.role, &message.refusal, &message.tool_call_id]
        .into_iter()
        .flatten()
    {
        tally.text(text);
    }
    if let Some(name) = &message.name {
        tally.text(name);
        tally.fixed(TOKENS_PER_NAME);
    }
    for call in message.tool_calls.iter().flatten() {
        call.texts().for_each(|t| tally.text(t));
    }
    let Some(content) = message.content else {
        return Ok(());
    };
    if content.get().starts_with('"') {
        let text: Cow<'_, str> = serde_json::from_str(content.get())?;
        tally.text(&text);
    } else if content.get().starts_with('[') {
        let parts: Vec<Part<'_>> = serde_json::from_str(content.get())?;
        for part in &parts {
            match part.kind.as_ref() {
                "image_url" | "image" => tally.fixed(IMAGE_TOKENS),
                _ => {
                    for text in [&part.text, &part.refusal].into_iter().flatten() {
                        tally.text(text);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A `prompt` or `input`: a string, strings, token ids, or lists of token ids.
fn texts_or_ids(value: &RawValue, tally: &mut Tally) -> Result<(), serde_json::Error> {
    let raw = value.get();
    if raw.starts_with('"') {
        let text: Cow<'_, str> = serde_json::from_str(raw)?;
        tally.text(&text);
    } else if raw.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw)?;
        for item in items {
            let raw = item.get();
            if raw.starts_with('"') {
                let text: Cow<'_, str> = serde_json::from_str(raw)?;
                tally.text(&text);
            } else if raw.starts_with('[') {
                let ids: Vec<u64> = serde_json::from_str(raw)?;
                tally.fixed(ids.len() as u64);
            } else {
                serde_json::from_str::<u64>(raw)?;
                tally.fixed(1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    fn count(kind: PromptKind, body: &str) -> u64 {
        let mut tally = Tally::new(Encoding::O200kBase, 1 << 20);
        assert!(
            prompt_tokens(kind, body.as_bytes(), &mut tally).is_ok(),
            "{body}"
        );
        tally.total()
    }

    #[test]
    fn chat_counts_framing_roles_names_and_content() {
        // One message: 3 framing + "user" (1) + "Hello world" (2) + 3 priming.
        assert_eq!(
            count(
                PromptKind::Chat,
                r#"{"model":"m","messages":[{"role":"user","content":"Hello world"}]}"#
            ),
            9
        );
        // A name adds its tokens and one more.
        assert_eq!(
            count(
                PromptKind::Chat,
                r#"{"messages":[{"role":"user","name":"bob","content":"Hello world"}]}"#
            ),
            9 + 1 + 1
        );
        // Text parts count like a string; an image counts a fixed amount.
        assert_eq!(
            count(
                PromptKind::Chat,
                r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hello world"},{"type":"image_url","image_url":{"url":"data:"}}]}]}"#
            ),
            9 + IMAGE_TOKENS
        );
    }

    #[test]
    fn completions_and_embeddings_take_text_or_token_ids() {
        assert_eq!(
            count(PromptKind::Completion, r#"{"prompt":"Hello world"}"#),
            2
        );
        assert_eq!(
            count(
                PromptKind::Embedding,
                r#"{"input":["Hello world","Hello world"]}"#
            ),
            4
        );
        assert_eq!(count(PromptKind::Embedding, r#"{"input":[1,2,3]}"#), 3);
        assert_eq!(count(PromptKind::Embedding, r#"{"input":[[1,2],[3]]}"#), 3);
        assert_eq!(count(PromptKind::Completion, r#"{"model":"m"}"#), 0);
    }

    #[test]
    fn ill_typed_bodies_are_errors() {
        let mut tally = Tally::new(Encoding::O200kBase, 1024);
        assert!(prompt_tokens(PromptKind::Chat, br#"{"messages":3}"#, &mut tally).is_err());
        assert!(prompt_tokens(PromptKind::Embedding, br#"{"input":[{}]}"#, &mut tally).is_err());
    }
}
