"""The `openai` SDK against the gateway's TLS listener, trusting a custom CA.

Usage: tls.py trusted|untrusted   (env: SLUICE_BASE_URL, https://…/v1;
SLUICE_KEY; SLUICE_CA, the CA's PEM file)
  trusted    a plain and a streamed chat completion through the SDK's HTTP
             client, trusting SLUICE_CA
  untrusted  the same client without the CA: the handshake must be refused
Prints one `ok ...` line per check; a failed check raises and exits non-zero.
"""
import os
import sys

import ssl

import openai

BASE = os.environ["SLUICE_BASE_URL"]
KEY = os.environ["SLUICE_KEY"]
CA = os.environ["SLUICE_CA"]
SAY = [{"role": "user", "content": "Say something."}]


def trusted():
    client = openai.OpenAI(base_url=BASE, api_key=KEY, http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=CA)), max_retries=0)
    reply = client.chat.completions.create(model=os.environ.get("SLUICE_MODEL", "gpt-4o-mini"), messages=SAY)
    assert reply.choices[0].message.content, reply
    print("ok plain", reply.usage.total_tokens)
    stream = client.chat.completions.create(
        model=os.environ.get("SLUICE_MODEL", "gpt-4o-mini"), messages=SAY, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage, (text, usage)
    print("ok stream", usage.total_tokens)


def untrusted():
    client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    try:
        client.chat.completions.create(model=os.environ.get("SLUICE_MODEL", "gpt-4o-mini"), messages=SAY)
    except openai.APIConnectionError as e:
        assert "CERTIFICATE_VERIFY_FAILED" in repr(e.__cause__) or "certificate" in repr(e.__cause__).lower(), repr(e.__cause__)
        print("ok untrusted refused")
        return
    raise AssertionError("a client without the CA must not connect")


{"trusted": trusted, "untrusted": untrusted}[sys.argv[1]]()
