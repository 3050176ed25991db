//! Anthropic's Messages API behind OpenAI's chat completions: the request
//! (system prompts, roles, text and image parts, tools, tool choice, tool calls
//! and their results with ids kept, stop sequences, sampling, the completion
//! cap), the whole response (text, tool calls, stop reason, usage with cache
//! reads and writes) and errors, each in the other's documented shape. Streams
//! are translated event by event in [`super::anthropic_stream`].

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// OpenAI chat completion fields with no Anthropic counterpart that change
/// what a model returns; a request using them is refused rather than answered
/// differently than asked.
const REFUSED: [&str; 4] = ["logprobs", "top_logprobs", "audio", "prediction"];

/// Translates an OpenAI chat completion request into a Messages request.
/// `default_max_tokens` is sent when the client set no cap (Anthropic
/// requires one).
///
/// # Errors
/// 400 for a body that is not a chat request, more than one choice (`n`),
/// fields with no counterpart ([`REFUSED`]), or tool call arguments that are
/// not a JSON object.
pub fn request(openai: &[u8], default_max_tokens: u32) -> Result<Vec<u8>, ApiError> {
    let body: Map<String, Value> =
        serde_json::from_slice(openai).map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refused("n", "more than one choice"));
    }
    if let Some(field) = REFUSED
        .iter()
        .find(|f| body.get(**f).is_some_and(|v| !v.is_null() && *v != false))
    {
        return Err(refused(field, "this field"));
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    let (system, messages) = messages(body.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let cap = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(default_max_tokens));
    out.insert("max_tokens".into(), cap.into());
    for field in ["temperature", "top_p", "stream"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), value.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    tools(&body, &mut out);
    serde_json::to_vec(&out).map_err(|e| ApiError::Internal(e.to_string()))
}

fn refused(param: &'static str, what: &str) -> ApiError {
    ApiError::bad_request(
        format!("The channel serving this model (Anthropic) does not support {what} (`{param}`)."),
        Some(param),
    )
}

/// The system blocks and the alternating user/assistant messages.
fn messages(messages: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(ApiError::bad_request(
            "`messages` must be an array.",
            Some("messages"),
        ));
    };
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let role = message["role"].as_str().unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(&message["content"]));
                continue;
            }
            "user" => ("user", content_blocks(&message["content"])),
            "assistant" => ("assistant", assistant_blocks(message)?),
            "tool" => ("user", vec![tool_result(message)]),
            other => {
                return Err(ApiError::bad_request(
                    format!("Unsupported message role `{other}`."),
                    Some("messages"),
                ));
            }
        };
        // Anthropic wants turns to alternate: consecutive messages of one
        // role (a tool result per call, then the user) become one turn.
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// Text blocks of a string or an array of text parts.
fn text_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .map(|text| json!({"type": "text", "text": text}))
            .collect(),
        _ => Vec::new(),
    }
}

/// A user message's content: text and images (by URL or `data:` URL).
fn content_blocks(content: &Value) -> Vec<Value> {
    let Value::Array(parts) = content else {
        return text_blocks(content);
    };
    parts
        .iter()
        .filter_map(|part| match part["type"].as_str() {
            Some("text") => Some(json!({"type": "text", "text": part["text"]})),
            Some("image_url") => {
                let url = part["image_url"]["url"]
                    .as_str()
                    .or_else(|| part["image_url"].as_str())?;
                Some(json!({"type": "image", "source": image_source(url)}))
            }
            _ => None,
        })
        .collect()
}

/// An image source: base64 from a `data:` URL, else the URL itself.
fn image_source(url: &str) -> Value {
    let inline = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"));
    match inline {
        Some((media_type, data)) => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    }
}

/// An assistant turn: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(message: &Value) -> Result<Vec<Value>, ApiError> {
    let mut blocks: Vec<Value> = text_blocks(&message["content"])
        .into_iter()
        .filter(|b| b["text"].as_str().is_some_and(|t| !t.is_empty()))
        .collect();
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments).map_err(|_| {
                ApiError::bad_request(
                    "A tool call's `arguments` must be a JSON object.",
                    Some("messages"),
                )
            })?
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": input,
        }));
    }
    Ok(blocks)
}

/// A tool message as a `tool_result` block answering its call's id.
fn tool_result(message: &Value) -> Value {
    let content = match &message["content"] {
        Value::String(text) => Value::String(text.clone()),
        other => Value::Array(text_blocks(other)),
    };
    json!({"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": content})
}

/// Tools as Anthropic tools, and the tool choice (with parallel calls off
/// when the client said so).
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t["type"] == "function")
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({
                    "name": f["name"],
                    "input_schema": if f["parameters"].is_object() { f["parameters"].clone() } else { json!({"type": "object"}) },
                });
                if let Some(description) = f["description"].as_str() {
                    tool["description"] = description.into();
                }
                tool
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let mut choice = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
        Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
        Some(Value::Object(o)) => match o.get("function").and_then(|f| f["name"].as_str()) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => json!({"type": "auto"}),
        },
        _ => json!({"type": "auto"}),
    };
    let parallel_off = body.get("parallel_tool_calls") == Some(&Value::Bool(false));
    if parallel_off && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = true.into();
    }
    if out.contains_key("tools") && (body.contains_key("tool_choice") || parallel_off) {
        out.insert("tool_choice".into(), choice);
    }
}

/// OpenAI's finish reason for an Anthropic stop reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic usage as an OpenAI `usage` object: the prompt counts every
/// input token (uncached, cache reads and cache writes), as OpenAI's does.
pub fn usage(anthropic: &Value) -> Value {
    let count = |field: &str| anthropic[field].as_u64().unwrap_or(0);
    let read = count("cache_read_input_tokens");
    let written = count("cache_creation_input_tokens");
    let prompt = count("input_tokens") + read + written;
    let completion = count("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
    })
}

/// The gateway's token counts of an Anthropic usage object (`None` when it
/// is not one).
pub fn tokens(anthropic: &Value) -> Option<crate::metering::Tokens> {
    if !anthropic.is_object() {
        return None;
    }
    serde_json::from_value(usage(anthropic)).ok()
}

/// Seconds since the Unix epoch, for `created`.
pub fn now_s() -> u64 {
    crate::keys::now_ms() / 1000
}

/// Translates a whole Messages response into a chat completion; an error body
/// (any non-2xx status) into OpenAI's error shape. A body that is neither is
/// passed through unchanged.
pub fn response(success: bool, bytes: &[u8]) -> Option<Vec<u8>> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let translated = if success {
        completion(&body)?
    } else {
        error(&body)?
    };
    serde_json::to_vec(&translated).ok()
}

fn completion(message: &Value) -> Option<Value> {
    let blocks = message["content"].as_array()?;
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })
        })
        .collect();
    let mut reply = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        reply["tool_calls"] = Value::Array(calls);
    }
    let finish = finish_reason(message["stop_reason"].as_str().unwrap_or("end_turn"));
    Some(json!({
        "id": message["id"],
        "object": "chat.completion",
        "created": now_s(),
        "model": message["model"],
        "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": null}],
        "usage": usage(&message["usage"]),
    }))
}

/// An Anthropic error object as OpenAI's: the type becomes the code, and
/// the OpenAI type the nearest one.
pub fn error(body: &Value) -> Option<Value> {
    let error = body.get("error")?;
    let kind = error["type"].as_str().unwrap_or("api_error");
    let openai_type = match kind {
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            "invalid_request_error"
        }
        "authentication_error" | "permission_error" => "authentication_error",
        "rate_limit_error" => "rate_limit_error",
        _ => "api_error",
    };
    Some(json!({"error": {
        "message": error["message"].as_str().unwrap_or("The upstream failed."),
        "type": openai_type,
        "param": null,
        "code": kind,
    }}))
}
