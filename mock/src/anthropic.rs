//! The mock's Anthropic Messages mode (`POST /v1/messages`), from Anthropic's
//! public API reference: the request checks the real API makes (a
//! `max_tokens`, roles, tool results answering earlier tool uses, image
//! sources), whole messages and the streamed event sequence (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta` with `text_delta` or
//! `input_json_delta`, `content_block_stop`, `message_delta`, `message_stop`),
//! usage with cache reads and writes, and errors in Anthropic's shape.

use serde_json::{Value, json};
use sluice_meter::Encoding;

use crate::{Reply, TOOL_NAME};

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub fn error(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// What the real API refuses with 400, as its message.
pub fn invalid(request: &Value) -> Option<String> {
    if !request["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    if !request["model"].is_string() {
        return Some("model: Field required".into());
    }
    let messages = request["messages"].as_array()?;
    let mut tool_uses: Vec<&str> = Vec::new();
    let mut last_role = "";
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if role == last_role {
            return Some(
                "messages: roles must alternate between \"user\" and \"assistant\"".into(),
            );
        }
        last_role = role;
        for block in message["content"].as_array().into_iter().flatten() {
            match block["type"].as_str().unwrap_or("") {
                "tool_use" if role == "assistant" => {
                    tool_uses.push(block["id"].as_str().unwrap_or(""));
                    if !block["input"].is_object() {
                        return Some(format!("messages.{i}: tool_use.input must be an object"));
                    }
                }
                "tool_result" if role == "user" => {
                    let id = block["tool_use_id"].as_str().unwrap_or("");
                    if !tool_uses.contains(&id) {
                        return Some(format!(
                            "messages.{i}: tool_result block(s) provided with an id ({id}) not found in a previous tool_use"
                        ));
                    }
                }
                "image" => {
                    let source = &block["source"];
                    let ok = match source["type"].as_str() {
                        Some("base64") => {
                            source["media_type"].is_string() && source["data"].is_string()
                        }
                        Some("url") => source["url"].is_string(),
                        _ => false,
                    };
                    if !ok {
                        return Some(format!("messages.{i}: invalid image source"));
                    }
                }
                "text" if block["text"].is_string() => {}
                other => return Some(format!("messages.{i}: unexpected block type '{other}'")),
            }
        }
    }
    (last_role != "user").then(|| "the last message must be from the user".into())
}

/// The input tokens of a request: its system prompt and every text, tool
/// input and tool result counted with the tokenizer.
pub fn prompt_tokens(request: &Value, encoding: Encoding) -> u32 {
    let mut text = String::new();
    collect_text(&request["system"], &mut text);
    collect_text(&request["messages"], &mut text);
    u32::try_from(encoding.count(&text)).unwrap_or(u32::MAX)
}

fn collect_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                if matches!(key.as_str(), "text" | "content" | "input") {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}

fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        _ => "end_turn",
    }
}

/// The usage object: uncached input, cache reads and writes, output.
fn usage(reply: &Reply, cache_write: u32) -> Value {
    let Some(u) = &reply.usage else {
        return json!({"input_tokens": 0, "output_tokens": 0});
    };
    let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
    let read = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    let written = u64::from(cache_write).min(prompt - read);
    json!({
        "input_tokens": prompt - read - written,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
        "output_tokens": u["completion_tokens"],
    })
}

/// The whole message.
pub fn whole(reply: &Reply, model: &str, cache_write: u32) -> Value {
    let text: String = reply.pieces.concat();
    let block = if reply.tools {
        let input: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({}));
        json!({"type": "tool_use", "id": "toolu_mock", "name": TOOL_NAME, "input": input})
    } else {
        json!({"type": "text", "text": text})
    };
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [block], "stop_reason": stop_reason(reply.finish_reason),
        "stop_sequence": null, "usage": usage(reply, cache_write),
    })
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The streamed events: what precedes the first piece, one event per piece,
/// and what follows the last.
pub fn stream(reply: &Reply, model: &str, cache_write: u32) -> (String, Vec<String>, String) {
    let usage = usage(reply, cache_write);
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = 1.into();
    let block = if reply.tools {
        json!({"type": "tool_use", "id": "toolu_mock", "name": TOOL_NAME, "input": {}})
    } else {
        json!({"type": "text", "text": ""})
    };
    let head = [
        event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": start_usage}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        event("ping", &json!({"type": "ping"})),
    ]
    .concat();
    let pieces = reply
        .pieces
        .iter()
        .map(|piece| {
            let delta = if reply.tools {
                json!({"type": "input_json_delta", "partial_json": piece})
            } else {
                json!({"type": "text_delta", "text": piece})
            };
            event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            )
        })
        .collect();
    let tail = [
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(reply.finish_reason),
                "stop_sequence": null}, "usage": {"output_tokens": usage["output_tokens"]}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ]
    .concat();
    (head, pieces, tail)
}
