//! Anthropic's streamed Messages events as OpenAI chat completion chunks:
//! `message_start` opens the assistant's turn, text deltas become content,
//! a `tool_use` block and its `input_json_delta`s become one tool call (its
//! id kept, indexed in order), `message_delta` carries the finish reason,
//! and `message_stop` ends with the usage chunk (input and cache tokens
//! from `message_start`, output from `message_delta`) and `[DONE]`. An
//! `error` event is reported for the stream to fail the way any upstream
//! failure mid-stream does.

use bytes::Bytes;
use serde_json::{Value, json};

use super::anthropic;
use crate::metering::Tokens;
use crate::relay::sse;

/// Applies a `message_delta`'s usage (cumulative counts; a field it omits
/// keeps its `message_start` value) to the usage seen so far.
fn merge_usage(seen: &mut Value, update: &Value) {
    let Some(update) = update.as_object() else {
        return;
    };
    if !seen.is_object() {
        *seen = json!({});
    }
    if let Value::Object(seen) = seen {
        for (field, value) in update.iter().filter(|(_, v)| !v.is_null()) {
            seen.insert(field.clone(), value.clone());
        }
    }
}

/// What one event of an Anthropic stream tells the accounting.
#[derive(Debug, Default)]
pub struct Seen {
    /// The usage so far, when the event carried some.
    pub usage: Option<Tokens>,
    /// The event carries generated content.
    pub content: bool,
}

/// Reads the usage of an Anthropic event stream on its way to an
/// Anthropic client: input and cache tokens from `message_start`, the
/// cumulative counts of each `message_delta`. Events without a `"usage"`
/// key cost a byte scan.
#[derive(Debug, Default)]
pub struct UsageTap {
    usage: Value,
}

impl UsageTap {
    /// Inspects one event.
    pub fn inspect(&mut self, event: &[u8]) -> Seen {
        let content = memchr::memmem::find(event, b"content_block_delta").is_some();
        if memchr::memmem::find(event, b"\"usage\"").is_none() {
            return Seen {
                usage: None,
                content,
            };
        }
        let Ok(data) = serde_json::from_slice::<Value>(&sse::data_of(event)) else {
            return Seen::default();
        };
        match data["type"].as_str() {
            Some("message_start") => self.usage = data["message"]["usage"].clone(),
            Some("message_delta") => merge_usage(&mut self.usage, &data["usage"]),
            _ => return Seen::default(),
        }
        Seen {
            usage: anthropic::tokens(&self.usage),
            content,
        }
    }
}

/// An upstream `error` event: its type and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// Anthropic's error type, e.g. `overloaded_error`.
    pub kind: String,
    /// Its message.
    pub message: String,
}

/// The translation state of one stream.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    id: Value,
    model: Value,
    created: u64,
    /// Anthropic usage so far: `message_start`'s, updated by `message_delta`.
    usage: Value,
    /// Content block index → tool call index, for each `tool_use` block.
    tools: Vec<(u64, usize)>,
    error: Option<StreamError>,
}

impl ChunkWriter {
    /// Translates one upstream event, appending the chunks it makes.
    pub fn translate(&mut self, event: &[u8], out: &mut Vec<Bytes>) {
        let Ok(data) = serde_json::from_slice::<Value>(&sse::data_of(event)) else {
            return;
        };
        match data["type"].as_str().unwrap_or("") {
            "message_start" => {
                let message = &data["message"];
                self.id = message["id"].clone();
                self.model = message["model"].clone();
                self.created = anthropic::now_s();
                self.usage = message["usage"].clone();
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools
                            .push((data["index"].as_u64().unwrap_or(0), index));
                        let call = json!({"index": index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""}});
                        out.push(self.chunk(json!({"tool_calls": [call]}), None));
                    }
                    Some("text") if block["text"].as_str().is_some_and(|t| !t.is_empty()) => {
                        out.push(self.chunk(json!({"content": block["text"]}), None));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(self.chunk(json!({"content": delta["text"]}), None));
                    }
                    Some("input_json_delta") => {
                        let block = data["index"].as_u64().unwrap_or(0);
                        if let Some((_, index)) = self.tools.iter().find(|(b, _)| *b == block) {
                            let call = json!({"index": index, "function": {"arguments": delta["partial_json"]}});
                            out.push(self.chunk(json!({"tool_calls": [call]}), None));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                merge_usage(&mut self.usage, &data["usage"]);
                if let Some(stop) = data["delta"]["stop_reason"].as_str() {
                    let finish = anthropic::finish_reason(stop);
                    out.push(self.chunk(json!({}), Some(finish)));
                }
            }
            "message_stop" => {
                let usage = json!({"id": self.id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": anthropic::usage(&self.usage)});
                out.push(Bytes::from(format!("data: {usage}\n\n")));
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            "error" => {
                self.error = Some(StreamError {
                    kind: data["error"]["type"].as_str().unwrap_or("api_error").into(),
                    message: data["error"]["message"]
                        .as_str()
                        .unwrap_or("The upstream failed mid-stream.")
                        .into(),
                });
            }
            _ => {}
        }
    }

    /// The `error` event the upstream sent, once.
    pub fn take_error(&mut self) -> Option<StreamError> {
        self.error.take()
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk",
            "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        Bytes::from(format!("data: {chunk}\n\n"))
    }
}
