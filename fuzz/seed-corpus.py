#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus: streams captured from the fake
upstream (`sluice-mock`, started here on a free loopback port) in each of its
modes, their single events, hand-made edge cases, and request bodies.

Usage: fuzz/seed-corpus.py PATH/TO/sluice-mock   (writes fuzz/corpus/TARGET/*)
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def seed(target, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(base, path, body, headers):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", "Bearer sk-upstream-test")
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as reply:
        return reply.read()


def events(stream):
    out, start = [], 0
    while True:
        end = stream.find(b"\n\n", start)
        if end < 0:
            return out
        out.append(stream[start : end + 2])
        start = end + 2


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-mock", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
STREAMS = [
    ("/v1/chat/completions", dict(CHAT, stream=True), {}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {"x-mock-chunks": "1"}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {"x-mock-chunks": "40"}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {"x-mock-tools": "1"}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {"x-mock-event-bytes": "900"}),
    ("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}), {"x-mock-cached-tokens": "3", "x-mock-reasoning-tokens": "5"}),
    ("/v1/chat/completions", dict(CHAT, stream=True), {"x-mock-omit-usage": "1"}),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}, {}),
    ("/v1/messages", dict(MESSAGES, stream=True), {"x-api-key": "sk-upstream-test", "anthropic-version": "2023-06-01"}),
    ("/v1/messages", dict(MESSAGES, stream=True), {"x-api-key": "sk-upstream-test", "anthropic-version": "2023-06-01", "x-mock-tools": "1"}),
]
EDGES = [
    b"data: {\"usage\":null,\"choices\":[]}\r\n\r\ndata: [DONE]\r\n\r\n",
    b"data: {\"choices\":[],\"usage\":null}\r\rdata: [DONE]\r\r",
    b"data: {\"a\":1}\n\ndata: {\"usage\" :  null , \"b\":2}\n\n",
    b": comment\n\nevent: ping\ndata: {}\n\n",
    b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3},\"choices\":[]}\n\n",
    b"data: [DONE]",
    b"data: {\"partial\":\n",
    b"\n\n\n\n   \n",
    b"data: {\"usage\":nul",
    b"data: line one\ndata: line two\n\n",
]
BODIES = [
    CHAT,
    dict(CHAT, stream=True),
    dict(CHAT, stream=True, stream_options=None),
    dict(CHAT, stream=True, stream_options={"include_usage": False}),
    dict(CHAT, stream=True, stream_options={"include_usage": True}),
    dict(CHAT, max_tokens=16),
    dict(CHAT, max_completion_tokens=16, stream=True),
    dict(CHAT, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    {"model": "gpt-4o-mini", "prompt": "hi", "stream": True},
    {"model": "text-embedding-3-small", "input": ["a", "b"]},
    MESSAGES,
    dict(MESSAGES, stream=True, system="Be brief."),
    {"model": "", "messages": []},
    {"messages": []},
    [],
    {"model": 7},
    {"model": "gpt-4o-mini", "stream": "yes"},
    {"model": "gpt-4o-mini", "max_tokens": -1},
    {"model": "gpt-4o-mini", "max_tokens": 1e30},
]
RAW_BODIES = [
    b'{"model":"a","model":"b","stream":true}',
    b'  \n{"model":"gpt-4o-mini","stream":true}',
    b'{"model":"gpt-4o-mini","stream":true,"stream":false}',
    b'{"model":"\\u0067pt","stream":true,"stream_options":{"include_usage":false}}',
    b'{"model":"gpt-4o-mini"',
    b"",
]


def main():
    mock = sys.argv[1]
    port = free_port()
    proc = subprocess.Popen([mock, "--listen", f"127.0.0.1:{port}", "--chunks", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        for path, body, headers in STREAMS:
            stream = capture(base, path, body, headers)
            for step in (1, 7, 64, 255):
                seed("sse_framer", bytes([step]) + stream)
            for event in events(stream):
                seed("usage_tap", event)
    finally:
        proc.kill()
    for edge in EDGES:
        seed("sse_framer", bytes([3]) + edge)
        seed("usage_tap", edge)
    for body in BODIES:
        data = json.dumps(body).encode()
        seed("request_parse", data)
        for knob in (0, 1, 2, 5):
            seed("body_rewrite", data + bytes([knob]))
    for data in RAW_BODIES:
        seed("request_parse", data)
        seed("body_rewrite", data + bytes([0]))
    for target in sorted(os.listdir(CORPUS)):
        print(target, len(os.listdir(os.path.join(CORPUS, target))), "seeds")


main()
