"""Drives a running Sluice gateway with the official `openai` Python SDK.

Usage: sdk_client.py SCENARIO   (env: SLUICE_BASE_URL, SLUICE_KEY, and per scenario
SLUICE_KEY_LIMITED, SLUICE_KEY_BROKE, SLUICE_CHUNK_DELAY_MS). Prints one `ok ...`
line per check; any failed check raises and exits non-zero.
"""
import os
import sys
import time

import openai

BASE = os.environ["SLUICE_BASE_URL"]
KEY = os.environ["SLUICE_KEY"]
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say something."}]


def client(key=KEY):
    return openai.OpenAI(base_url=BASE, api_key=key, max_retries=0, timeout=20)


def models():
    ids = [m.id for m in client().models.list()]
    assert MODEL in ids, ids
    assert client().models.retrieve(MODEL).id == MODEL
    print("ok models", ids)


def chat():
    r = client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert r.choices[0].message.content.startswith("The quick"), r
    assert r.usage.completion_tokens == 16 and r.usage.prompt_tokens > 0, r.usage
    print("ok chat", r.usage.total_tokens)


def stream():
    delay = float(os.environ.get("SLUICE_CHUNK_DELAY_MS", "0")) / 1000
    arrivals, texts = [], []
    for chunk in client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
        assert chunk.usage is None, "usage chunk leaked to a client that did not ask"
        assert chunk.choices, "empty-choices chunk leaked"
        arrivals.append(time.monotonic())
        texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts).startswith("The quick brown"), texts
    assert len(arrivals) == 17, len(arrivals)
    span = arrivals[-2] - arrivals[0]
    assert span >= 0.7 * 15 * delay, f"chunks arrived in a burst: {span:.3f}s for 15 gaps of {delay}s"
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:-1]))
    median = gaps[len(gaps) // 2]
    assert median >= 0.5 * delay, f"chunks coalesced: median gap {median:.4f}s for a {delay}s pace"
    print(f"ok stream span={span:.3f}s median_gap={median:.4f}s")


def stream_usage():
    usage = None
    for chunk in client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 16, usage
    print("ok stream_usage", usage.total_tokens)


def embeddings():
    r = client().embeddings.create(model=MODEL, input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 4, r
    assert r.usage.prompt_tokens > 0
    print("ok embeddings")


def completions():
    r = client().completions.create(model=MODEL, prompt="Once upon a time")
    assert r.choices[0].text.startswith("The quick"), r
    chunks = list(client().completions.create(model=MODEL, prompt="Once", stream=True))
    assert chunks[0].choices[0].text == "The", chunks[0]
    print("ok completions", len(chunks))


def expect(exc, fn, status):
    try:
        fn()
    except exc as e:
        assert e.status_code == status, (e.status_code, status)
        body = e.body if isinstance(e.body, dict) else {}
        assert "message" in body and "type" in body and "code" in body, body
        print(f"ok {exc.__name__} {e.status_code} {body.get('code')}")
        return
    raise AssertionError(f"expected {exc.__name__}")


def errors():
    expect(openai.AuthenticationError, lambda: client("sk-sl-not-a-key").chat.completions.create(model=MODEL, messages=MESSAGES), 401)
    expect(openai.NotFoundError, lambda: client().chat.completions.create(model="no-such-model", messages=MESSAGES), 404)
    expect(openai.BadRequestError, lambda: client().chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"stream": "yes"}), 400)
    expect(openai.PermissionDeniedError, lambda: client(os.environ["SLUICE_KEY_LIMITED"]).chat.completions.create(model=MODEL, messages=MESSAGES), 403)
    expect(openai.RateLimitError, lambda: client(os.environ["SLUICE_KEY_BROKE"]).chat.completions.create(model=MODEL, messages=MESSAGES), 429)
    big = "x" * (2 << 20)
    expect(openai.APIStatusError, lambda: client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": big}]), 413)
    expect(openai.NotFoundError, lambda: client().post("/no/such/path", cast_to=object, body={}), 404)
    expect(openai.APIStatusError, lambda: client().get("/chat/completions", cast_to=object), 405)


def upstream_down():
    expect(openai.InternalServerError, lambda: client().chat.completions.create(model=MODEL, messages=MESSAGES), 502)


SCENARIOS = {f.__name__: f for f in (models, chat, stream, stream_usage, embeddings, completions, errors, upstream_down)}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
