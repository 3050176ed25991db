//! Anthropic Messages clients (`POST /v1/messages`) on OpenAI-compatible
//! channels: the request as a chat completion (system, content blocks,
//! images, tools, tool choice, tool uses and results with ids kept, stop
//! sequences, sampling, the cap), the chat completion back as a message
//! (text and `tool_use` blocks, stop reason, usage with cache reads and
//! writes), errors in Anthropic's shape, and streams chunk by chunk in
//! Anthropic's event sequence (`message_start`, `ping`, content blocks,
//! `message_delta` with the usage, `message_stop`).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::relay::sse;

/// Translates a Messages request into an OpenAI chat completion request
/// (asking streams for their usage).
///
/// # Errors
/// 400 for a body that is not a Messages request.
pub fn request(anthropic: &[u8]) -> Result<Vec<u8>, ApiError> {
    let body: Map<String, Value> = serde_json::from_slice(anthropic)
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    let Some(Value::Array(turns)) = body.get("messages") else {
        return Err(ApiError::bad_request(
            "messages: Field required",
            Some("messages"),
        ));
    };
    let mut messages = Vec::new();
    let system = text_of(body.get("system").unwrap_or(&Value::Null));
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for turn in turns {
        match turn["role"].as_str() {
            Some("user") => user_turn(&turn["content"], &mut messages),
            Some("assistant") => messages.push(assistant_turn(&turn["content"])),
            _ => {
                return Err(ApiError::bad_request(
                    "messages: each role must be \"user\" or \"assistant\"",
                    Some("messages"),
                ));
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), value.clone());
        }
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = body.get("metadata").and_then(|m| m["user_id"].as_str()) {
        out.insert("user".into(), user.into());
    }
    tools(&body, &mut out);
    serde_json::to_vec(&out).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The text of a string or of an array's text blocks, joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A user turn: its tool results as `tool` messages (first, answering the
/// previous assistant turn), then its text and images as a user message.
fn user_turn(content: &Value, out: &mut Vec<Value>) {
    let Value::Array(blocks) = content else {
        out.push(json!({"role": "user", "content": content}));
        return;
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("tool_result") => {
                let content = match &block["content"] {
                    Value::Array(blocks) => Value::Array(
                        blocks
                            .iter()
                            .filter(|b| b["type"] == "text")
                            .map(|b| json!({"type": "text", "text": b["text"]}))
                            .collect(),
                    ),
                    other => Value::String(text_of(other)),
                };
                out.push(json!({"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}));
            }
            Some("text") => parts.push(json!({"type": "text", "text": block["text"]})),
            Some("image") => {
                let source = &block["source"];
                let url = match source["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source["media_type"].as_str().unwrap_or("image/png"),
                        source["data"].as_str().unwrap_or("")
                    ),
                    _ => source["url"].as_str().unwrap_or("").to_string(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            _ => {}
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
}

/// An assistant turn: its text, and its tool uses as tool calls.
fn assistant_turn(content: &Value) -> Value {
    let mut message = json!({"role": "assistant", "content": text_of(content)});
    let calls: Vec<Value> = content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            json!({"id": b["id"], "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()}})
        })
        .collect();
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// Anthropic tools as functions, and the tool choice.
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) {
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t["name"].is_string())
        .map(|t| {
            let mut function = json!({"name": t["name"], "parameters": t["input_schema"]});
            if let Some(description) = t["description"].as_str() {
                function["description"] = description.into();
            }
            json!({"type": "function", "function": function})
        })
        .collect();
    if tools.is_empty() {
        return;
    }
    out.insert("tools".into(), Value::Array(tools));
    let Some(choice) = body.get("tool_choice") else {
        return;
    };
    let mapped = match choice["type"].as_str() {
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
        _ => json!("auto"),
    };
    out.insert("tool_choice".into(), mapped);
    if choice["disable_parallel_tool_use"] == true {
        out.insert("parallel_tool_calls".into(), false.into());
    }
}

/// Anthropic's stop reason for an OpenAI finish reason.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// An OpenAI `usage` object as Anthropic's: input without the cache reads
/// and writes, which are counted apart.
pub fn usage(openai: &Value) -> Value {
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let prompt = count(&openai["prompt_tokens"]);
    let details = &openai["prompt_tokens_details"];
    let read = count(&details["cached_tokens"]).min(prompt);
    let written = count(&details["cache_write_tokens"])
        .max(count(&openai["cache_creation_input_tokens"]))
        .min(prompt - read);
    json!({
        "input_tokens": prompt - read - written,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "output_tokens": count(&openai["completion_tokens"]),
    })
}

/// Translates a whole chat completion into a message; an OpenAI error body
/// (any non-2xx status) into Anthropic's shape. A body that is neither is
/// passed through unchanged.
pub fn response(status: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let translated = if (200..300).contains(&status) {
        message(&body)?
    } else {
        let message = body["error"]["message"].as_str()?;
        crate::protocol::anthropic_error(status, message)
    };
    serde_json::to_vec(&translated).ok()
}

fn message(completion: &Value) -> Option<Value> {
    let choice = completion["choices"].get(0)?;
    let reply = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = reply["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in reply["tool_calls"].as_array().into_iter().flatten() {
        content.push(tool_use(call));
    }
    Some(json!({
        "id": completion["id"],
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": usage(&completion["usage"]),
    }))
}

fn tool_use(call: &Value) -> Value {
    let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
    let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input})
}

/// The open content block of a translated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Tool(u64),
}

/// The translation state of one stream of chat completion chunks.
#[derive(Debug, Default)]
pub struct EventWriter {
    started: bool,
    /// The open block and its index; the next block's index.
    open: Option<(Block, u64)>,
    next_index: u64,
    stop_reason: Option<&'static str>,
    usage: Value,
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl EventWriter {
    /// Translates one upstream chunk, appending the events it makes.
    pub fn translate(&mut self, chunk: &[u8], out: &mut Vec<Bytes>) {
        let data = sse::data_of(chunk);
        if data.trim_ascii() == b"[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(&data) else {
            return;
        };
        if !self.started {
            self.started = true;
            let message = json!({"type": "message_start", "message": {"id": chunk["id"],
                "type": "message", "role": "assistant", "model": chunk["model"], "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}});
            out.push(event("message_start", &message));
            out.push(event("ping", &json!({"type": "ping"})));
        }
        if chunk["usage"].is_object() {
            self.usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.open_block(Block::Text, None, out);
            let delta = json!({"type": "text_delta", "text": text});
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = self.open_block(
                Block::Tool(call["index"].as_u64().unwrap_or(0)),
                Some(call),
                out,
            );
            if let Some(fragment) = call["function"]["arguments"]
                .as_str()
                .filter(|f| !f.is_empty())
            {
                let delta = json!({"type": "input_json_delta", "partial_json": fragment});
                out.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = Some(stop_reason(finish));
            self.close_block(out);
        }
    }

    /// The index of the block `kind`, opening it (and closing the one
    /// before) when it is not the open one.
    fn open_block(&mut self, kind: Block, call: Option<&Value>, out: &mut Vec<Bytes>) -> u64 {
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        let block = match call {
            Some(call) => json!({"type": "tool_use", "id": call["id"],
                "name": call["function"]["name"], "input": {}}),
            None => json!({"type": "text", "text": ""}),
        };
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if let Some((_, index)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// The upstream's `[DONE]`: the stop reason and usage, then the end.
    fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.close_block(out);
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage(&self.usage)});
        out.push(event("message_delta", &delta));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
    }
}
