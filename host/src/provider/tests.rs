//! Golden translation tests: fixtures in the providers' documented shapes
//! (`golden/`), translated and compared with the expected OpenAI or Anthropic
//! documents field by field.

use bytes::Bytes;
use serde_json::{Value, json};

use super::anthropic;
use super::anthropic_stream::{ChunkWriter, StreamError};
use crate::error::ApiError;
use crate::relay::sse::{SseFramer, data_of};

fn golden(name: &str) -> &'static str {
    match name {
        "request.openai.json" => include_str!("golden/request.openai.json"),
        "request.anthropic.json" => include_str!("golden/request.anthropic.json"),
        "response.anthropic.json" => include_str!("golden/response.anthropic.json"),
        "response.openai.json" => include_str!("golden/response.openai.json"),
        "stream.anthropic.sse" => include_str!("golden/stream.anthropic.sse"),
        "stream.openai.sse" => include_str!("golden/stream.openai.sse"),
        _ => "",
    }
}

fn json_of(text: &[u8]) -> Value {
    serde_json::from_slice(text).unwrap_or(Value::Null)
}

/// `created` is the translation's clock; the goldens hold 0.
fn without_clock(mut value: Value) -> Value {
    if value.get("created").is_some() {
        value["created"] = 0.into();
    }
    value
}

#[test]
fn a_chat_request_becomes_the_documented_messages_request() -> Result<(), ApiError> {
    let translated = anthropic::request(golden("request.openai.json").as_bytes(), 4096)?;
    assert_eq!(
        json_of(&translated),
        json_of(golden("request.anthropic.json").as_bytes())
    );
    Ok(())
}

#[test]
fn requests_take_the_default_cap_and_map_every_tool_choice() -> Result<(), ApiError> {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let cases = [
        (json!("required"), json!({"type": "any"})),
        (json!("none"), json!({"type": "none"})),
        (json!("auto"), json!({"type": "auto"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ];
    for (choice, expected) in cases {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": tools, "tool_choice": choice, "stop": "END", "max_tokens": 9});
        let out = json_of(&anthropic::request(body.to_string().as_bytes(), 4096)?);
        assert_eq!(out["tool_choice"], expected);
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["max_tokens"], 9);
    }
    let plain = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let out = json_of(&anthropic::request(plain.to_string().as_bytes(), 777)?);
    assert_eq!(out["max_tokens"], 777);
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert!(out.get("tool_choice").is_none() && out.get("system").is_none());
    Ok(())
}

#[test]
fn requests_anthropic_cannot_honour_are_refused_with_400() {
    let refused = [
        json!({"model": "m", "n": 2, "messages": []}),
        json!({"model": "m", "logprobs": true, "messages": []}),
        json!({"model": "m", "messages": "hi"}),
        json!({"model": "m", "messages": [{"role": "critic", "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}),
    ];
    for body in refused {
        let result = anthropic::request(body.to_string().as_bytes(), 1);
        assert!(
            matches!(result, Err(ApiError::Client { status, .. }) if status == 400),
            "{body}"
        );
    }
    let fine = json!({"model": "m", "n": 1, "logprobs": false, "messages": []});
    assert!(anthropic::request(fine.to_string().as_bytes(), 1).is_ok());
}

#[test]
fn a_messages_response_becomes_the_documented_chat_completion() {
    let translated = anthropic::response(true, golden("response.anthropic.json").as_bytes());
    let translated = translated.map(|t| without_clock(json_of(&t)));
    assert_eq!(
        translated,
        Some(json_of(golden("response.openai.json").as_bytes()))
    );
}

#[test]
fn every_stop_reason_has_its_finish_reason() {
    let cases = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ];
    for (stop, finish) in cases {
        assert_eq!(anthropic::finish_reason(stop), finish, "{stop}");
        let body = json!({"id": "m", "model": "c", "content": [{"type": "text", "text": "x"}],
            "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 2}});
        let out = anthropic::response(true, body.to_string().as_bytes()).map(|t| json_of(&t));
        assert_eq!(
            out.map(|o| o["choices"][0]["finish_reason"].clone()),
            Some(json!(finish))
        );
    }
}

#[test]
fn errors_take_openai_shape_with_anthropic_type_as_code() {
    let cases = [
        ("overloaded_error", "api_error"),
        ("rate_limit_error", "rate_limit_error"),
        ("invalid_request_error", "invalid_request_error"),
        ("not_found_error", "invalid_request_error"),
        ("authentication_error", "authentication_error"),
        ("permission_error", "authentication_error"),
        ("api_error", "api_error"),
    ];
    for (kind, openai_type) in cases {
        let body = json!({"type": "error", "error": {"type": kind, "message": "Overloaded"}});
        let out = anthropic::response(false, body.to_string().as_bytes()).map(|t| json_of(&t));
        assert_eq!(
            out,
            Some(
                json!({"error": {"message": "Overloaded", "type": openai_type, "param": null, "code": kind}})
            )
        );
    }
    // A body that is not Anthropic's error passes as it came.
    assert_eq!(
        anthropic::response(false, b"<html>bad gateway</html>"),
        None
    );
}

/// Feeds `sse` through the real framer in `piece`-byte reads, translating
/// each event; returns the client's events.
fn translate_stream(sse: &str, piece: usize) -> (Vec<Bytes>, ChunkWriter) {
    let mut framer = SseFramer::new(1 << 20);
    let mut writer = ChunkWriter::default();
    let (mut framed, mut out) = (Vec::new(), Vec::new());
    for chunk in sse.as_bytes().chunks(piece) {
        let _ = framer.push(Bytes::copy_from_slice(chunk), &mut framed);
        for event in framed.drain(..) {
            writer.translate(&event, &mut out);
        }
    }
    (out, writer)
}

#[test]
fn a_streamed_tool_call_becomes_the_documented_chunks_however_it_is_cut() {
    let expected: Vec<Value> = golden("stream.openai.sse")
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = data_of(e.as_bytes());
            if data == b"[DONE]" {
                json!("[DONE]")
            } else {
                json_of(&data)
            }
        })
        .collect();
    for piece in [1, 7, 64, 100_000] {
        let (events, _) = translate_stream(golden("stream.anthropic.sse"), piece);
        let seen: Vec<Value> = events
            .iter()
            .map(|e| {
                assert!(e.starts_with(b"data: ") && e.ends_with(b"\n\n"));
                let data = data_of(e);
                if data == b"[DONE]" {
                    json!("[DONE]")
                } else {
                    without_clock(json_of(&data))
                }
            })
            .collect();
        assert_eq!(seen, expected, "read in {piece}-byte pieces");
    }
}

#[test]
fn the_streamed_usage_is_what_the_gateway_meters() {
    let (events, _) = translate_stream(golden("stream.anthropic.sse"), 1 << 20);
    let usage = events
        .iter()
        .find_map(|e| crate::relay::sse::inspect(e).usage);
    assert_eq!(
        usage,
        Some(crate::metering::Tokens {
            prompt: 1496,
            completion: 89,
            cached: 1024,
            ..Default::default()
        })
    );
}

#[test]
fn an_error_event_mid_stream_is_reported_once() {
    let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n\
               event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (events, mut writer) = translate_stream(sse, 5);
    assert_eq!(events.len(), 1, "only the opening chunk");
    assert_eq!(
        writer.take_error(),
        Some(StreamError {
            kind: "overloaded_error".into(),
            message: "Overloaded".into()
        })
    );
    assert_eq!(writer.take_error(), None);
}

#[test]
fn a_chat_completion_survives_the_trip_to_a_message_and_back() {
    let openai = golden("response.openai.json").as_bytes();
    let message = super::messages::response(200, openai).map(|m| json_of(&m));
    let message = message.unwrap_or(Value::Null);
    assert_eq!(message["type"], "message");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 472, "cache_read_input_tokens": 2048, "cache_creation_input_tokens": 100, "output_tokens": 91})
    );
    let back = anthropic::response(true, message.to_string().as_bytes());
    assert_eq!(
        back.map(|b| without_clock(json_of(&b))),
        Some(json_of(openai))
    );
}

#[test]
fn a_chat_stream_survives_the_trip_to_message_events_and_back() {
    // OpenAI chunks → Anthropic events (what a /v1/messages client reads
    // from an OpenAI channel) → OpenAI chunks again: the same text, tool
    // call, finish reason and usage.
    let mut writer = super::messages::EventWriter::default();
    let mut events = Vec::new();
    for chunk in golden("stream.openai.sse").split_inclusive("\n\n") {
        writer.translate(chunk.as_bytes(), &mut events);
    }
    let names: Vec<String> = events
        .iter()
        .filter_map(|e| {
            std::str::from_utf8(e)
                .ok()?
                .lines()
                .next()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("event: message_start")
    );
    assert_eq!(names.get(1).map(String::as_str), Some("event: ping"));
    assert_eq!(
        names.last().map(String::as_str),
        Some("event: message_stop")
    );
    let sse: String = events
        .iter()
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    let (chunks, _) = translate_stream(&sse, 13);
    let text: String = chunks
        .iter()
        .map(|c| json_of(&data_of(c)))
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "Okay, let's check the weather.");
    let arguments: String = chunks
        .iter()
        .map(|c| json_of(&data_of(c)))
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(arguments, "{\"location\": \"San Francisco, CA\"}");
    let usage = chunks
        .iter()
        .find_map(|e| crate::relay::sse::inspect(e).usage);
    assert_eq!(
        usage.map(|u| (u.prompt, u.completion, u.cached)),
        Some((1496, 89, 1024))
    );
    assert!(
        chunks
            .iter()
            .any(|c| json_of(&data_of(c))["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[test]
fn a_messages_request_becomes_the_equivalent_chat_request() -> Result<(), ApiError> {
    let chat = json_of(&super::messages::request(
        golden("request.anthropic.json").as_bytes(),
    )?);
    let roles: Vec<&str> = chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "tool", "user"]
    );
    let messages = &chat["messages"];
    assert_eq!(
        messages[0]["content"],
        "You are a weather assistant.\nAnswer in one sentence."
    );
    assert_eq!(
        messages[1]["content"][1]["image_url"]["url"],
        "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ=="
    );
    assert_eq!(
        messages[2]["tool_calls"][1]["id"],
        "toolu_01B7dp3Xz2Vb8c9sPqR4mN5k"
    );
    assert_eq!(
        json_of(
            messages[2]["tool_calls"][1]["function"]["arguments"]
                .as_str()
                .unwrap_or("")
                .as_bytes()
        ),
        json!({"location": "Paris, France"})
    );
    assert_eq!(messages[3]["tool_call_id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(
        messages[4]["content"],
        json!([{"type": "text", "text": "18 degrees"}])
    );
    assert_eq!(chat["tool_choice"], "auto");
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["stop"], json!(["\n\nHuman:"]));
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        (chat["max_tokens"].as_u64(), chat["user"].as_str()),
        (Some(512), Some("user-42"))
    );
    // And back: the same turns, tool uses and results, ids and all.
    let again = json_of(&anthropic::request(chat.to_string().as_bytes(), 1)?);
    let original = json_of(golden("request.anthropic.json").as_bytes());
    assert_eq!(again["messages"], original["messages"]);
    assert_eq!(again["tools"], original["tools"]);
    assert_eq!(again["tool_choice"], original["tool_choice"]);
    Ok(())
}
