"""The official SDKs against the fake upstream's provider modes, and the
`openai` SDK through the gateway's provider channels.

Usage: providers.py SCENARIO   (env: SLUICE_BASE_URL, SLUICE_KEY, SLUICE_MODEL)
  anthropic_direct  the `anthropic` SDK against the mock's Anthropic mode
                    (SLUICE_BASE_URL is the mock's root, SLUICE_KEY its key)
  azure_direct      the `openai` SDK's AzureOpenAI client against its Azure mode
                    (SLUICE_BASE_URL is the mock's root, SLUICE_MODEL a deployment)
  translated        the `openai` SDK through the gateway to SLUICE_MODEL
  messages          the `anthropic` SDK through the gateway's /v1/messages to
                    SLUICE_MODEL (SLUICE_KEY_BROKE: a key without quota,
                    SLUICE_KEY_LIMITED: a key the auth policy refuses the model)
Each asks plain and streamed, for a tool call and with its result. Prints one
`ok ...` line per check; a failed check raises and exits non-zero.
"""
import json
import os
import sys

BASE = os.environ["SLUICE_BASE_URL"]
KEY = os.environ["SLUICE_KEY"]
MODEL = os.environ.get("SLUICE_MODEL", "claude-mock")
TOOLS_HEADER = {"x-mock-tools": "1"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city.", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
SAY = [{"role": "user", "content": "Say something."}]


def conversation(client, label):
    """Plain, streamed, a tool call plain and streamed, and its result sent
    back, with the `anthropic` SDK; returns the plain message."""
    message = client.messages.create(model=MODEL, max_tokens=64, system="Be brief.", messages=SAY)
    assert message.content[0].type == "text" and message.content[0].text.startswith("The quick"), message
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 16 and message.usage.input_tokens > 0, message
    print(f"ok {label} plain", message.usage.input_tokens, message.usage.output_tokens)

    with client.messages.stream(model=MODEL, max_tokens=64, system="Be brief.", messages=SAY) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text.startswith("The quick brown") and final.stop_reason == "end_turn", final
    assert final.usage.output_tokens == 16 and final.usage.input_tokens == message.usage.input_tokens, final.usage
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    print(f"ok {label} stream", final.usage.input_tokens, final.usage.output_tokens)

    asked = client.messages.create(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL], messages=[QUESTION], extra_headers=TOOLS_HEADER)
    use = next(b for b in asked.content if b.type == "tool_use")
    assert asked.stop_reason == "tool_use" and use.name == "get_weather" and use.input["q"].startswith("The quick"), asked
    with client.messages.stream(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL], messages=[QUESTION], extra_headers=TOOLS_HEADER) as stream:
        streamed = stream.get_final_message()
    streamed_use = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_use.input == use.input and streamed_use.id == use.id and streamed.stop_reason == "tool_use", streamed
    answered = client.messages.create(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL], messages=[
        QUESTION,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in asked.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
    ])
    assert answered.content[0].text.startswith("The quick") and answered.stop_reason == "end_turn", answered
    print(f"ok {label} tools", use.id)
    return message


def anthropic_direct():
    import anthropic

    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
    conversation(client, "anthropic")
    try:
        client.messages.create(model=MODEL, max_tokens=64, tools=[ANTHROPIC_TOOL], messages=[
            QUESTION,
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "x"}]},
        ])
        raise AssertionError("a tool result for an unknown tool use was accepted")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body

    try:
        anthropic.Anthropic(base_url=BASE, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("a wrong key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    print("ok anthropic errors")


def azure_direct():
    import openai

    client = openai.AzureOpenAI(azure_endpoint=BASE, api_key=KEY, api_version="2024-10-21", max_retries=0, timeout=20)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say something."}])
    assert r.choices[0].message.content.startswith("The quick") and r.usage.completion_tokens == 16, r
    print("ok azure plain", r.usage.total_tokens)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], stream=True) if c.choices)
    assert text.startswith("The quick brown"), text
    print("ok azure stream")
    r = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL], extra_headers=TOOLS_HEADER)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments)["q"].startswith("The quick"), r
    print("ok azure tools", call.id)
    try:
        openai.AzureOpenAI(azure_endpoint=BASE, api_key="wrong", api_version="2024-10-21", max_retries=0).chat.completions.create(
            model=MODEL, messages=[QUESTION])
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    print("ok azure errors")


def translated():
    import openai

    client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64)
    assert r.choices[0].message.content.startswith("The quick"), r
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 16 and r.usage.prompt_tokens > 0, r
    print("ok translated plain", r.usage.prompt_tokens, r.usage.completion_tokens)

    usage, texts, finish = None, [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(texts).startswith("The quick brown") and finish == "stop", (texts, finish)
    assert usage is not None and usage.completion_tokens == 16, usage
    print("ok translated stream", usage.total_tokens)

    r = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL], tool_choice="auto", extra_headers=TOOLS_HEADER)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather", r
    arguments = json.loads(call.function.arguments)
    assert arguments["q"].startswith("The quick"), arguments
    calls, finish = {}, None
    for chunk in client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER_TOOL], stream=True, extra_headers=TOOLS_HEADER):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] = (delta.function.name if delta.function else None) or entry["name"]
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls" and calls[0]["id"] == call.id and json.loads(calls[0]["arguments"]) == arguments, calls
    print("ok translated tool call", call.id)

    # The tool's result goes back with the call's id; the upstream refuses
    # a result whose id matches no earlier call, so a lost id fails here.
    r = client.chat.completions.create(model=MODEL, tools=[WEATHER_TOOL], messages=[
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ])
    assert r.choices[0].message.content.startswith("The quick") and r.choices[0].finish_reason == "stop", r
    try:
        client.chat.completions.create(model=MODEL, messages=[QUESTION, {"role": "tool", "tool_call_id": "call_unknown", "content": "x"}])
        raise AssertionError("a tool result without its call was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.type == "invalid_request_error", (e.type, e.body)
    print("ok translated tool result")


def messages():
    import anthropic

    base = BASE.removesuffix("/v1")
    client = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=20)
    conversation(client, "messages")

    counted = client.messages.count_tokens(model=MODEL, messages=SAY)
    assert counted.input_tokens > 0, counted
    print("ok messages count_tokens", counted.input_tokens)

    try:
        anthropic.Anthropic(base_url=base, api_key="sk-sl-not-a-key", max_retries=0).messages.create(model=MODEL, max_tokens=8, messages=SAY)
        raise AssertionError("a bad key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.body["type"] == "error" and e.body["error"]["type"] == "authentication_error", e.body
    try:
        anthropic.Anthropic(base_url=base, api_key=os.environ["SLUICE_KEY_BROKE"], max_retries=0).messages.create(model=MODEL, max_tokens=8, messages=SAY)
        raise AssertionError("a key without quota was served")
    except anthropic.RateLimitError as e:
        assert e.body["error"]["type"] == "rate_limit_error", e.body
    try:
        anthropic.Anthropic(base_url=base, api_key=os.environ["SLUICE_KEY_LIMITED"], max_retries=0).messages.create(model=MODEL, max_tokens=8, messages=SAY)
        raise AssertionError("the auth policy let a key use a model it may not")
    except anthropic.PermissionDeniedError as e:
        assert e.body["error"]["type"] == "permission_error", e.body
    try:
        client.messages.create(model="no-such-model", max_tokens=8, messages=SAY)
        raise AssertionError("an unknown model was served")
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body
    print("ok messages errors")


if __name__ == "__main__":
    {"anthropic_direct": anthropic_direct, "azure_direct": azure_direct, "translated": translated, "messages": messages}[sys.argv[1]]()
