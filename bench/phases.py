#!/usr/bin/env python3
"""Splits a `perf record -g` profile of the gateway into request phases.

Reads `perf script -F comm,ip,sym` output on stdin (or use `split` from
bench.py). Each sample is given to the
first phase, in the order below, with a matching frame anywhere on its stack, so
a wasm call made while hyper polls the request handler counts as "policies",
not as client I/O. Prints `phase<TAB>share` lines (shares of all samples).
"""
import re
import sys

# (phase, frame pattern), most specific first.
PHASES = [
    ("policies (wasm auth, route, shape)", r"wasmtime|sluice::plugins::"),
    ("usage record, batch writer, store", r"sluice::usage::|sluice::store::|redb::|rusqlite|tracing_subscriber"),
    ("key lookup", r"sluice::keys::|routes::lookup_key|moka::|sha2::"),
    ("metering (prompt count, reservation, transcript)", r"sluice_meter::|bpe::|bpe_openai::|daachorse::|sluice::metering::|count_prompt|Accounting::reserve|sluice::relay::transcript::"),
    ("stream tap (SSE framing, usage)", r"sluice::relay::stream::|sluice::relay::sse::"),
    ("parse request, build upstream request", r"sluice::relay::parse|sluice::relay::read_body|sluice::relay::build_request|routes::request_info"),
    ("upstream I/O (direct or hyper client)", r"sluice::relay::upstream::|hyper_util::client|hyper::client|role::Client|futures_util::future::future::Map"),
    # Not the frames every worker sample sits under (its runtime, the
    # connection task), or nothing would reach the phases below.
    ("gateway logic (routing, relay, metrics)", r"sluice::(?!server::(?:listener|workers|h1)|app::|cli::|http1::)"),
    ("client I/O (the gateway's HTTP/1 server, or hyper's)", r"sluice::server::(?:h1|listener)::|sluice::http1::|hyper::server|hyper::proto|hyper_util::server"),
    # glibc's socket wrappers have no frame pointers, so the kernel's
    # samples under them lose the user frames that would name the side.
    ("socket send / recv, client or upstream (stack ends in glibc)", r"^(?:__send|__libc_send|__libc_recv|__recv|__writev|__libc_writev|__libc_read|__libc_write)$"),
    ("runtime, scheduler, other", r""),
]


def samples(lines):
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line[0] in " \t":
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "")
    if frames:
        yield frames


def split(lines):
    """[(phase, share of all samples)] for `perf script -F comm,ip,sym` lines."""
    compiled = [(name, re.compile(pattern)) for name, pattern in PHASES]
    counts = {name: 0 for name, _ in PHASES}
    total = 0
    for stack in samples(lines):
        total += 1
        for name, pattern in compiled:
            if any(pattern.search(frame) for frame in stack):
                counts[name] += 1
                break
    return [(name, counts[name] / max(total, 1)) for name, _ in PHASES]


def main():
    for name, share in split(sys.stdin):
        print(f"{name}\t{share:.4f}")


if __name__ == "__main__":
    main()
