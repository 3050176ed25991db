#!/usr/bin/env python3
"""The edge under abuse (run through bench/abuse.sh; loopback only, bounded).

Starts the fake upstream and Sluice (release builds, shipped defaults) on
127.0.0.1, measures a keyed client that opens a new connection per request,
alone, then again while, at once: 300 keyless uploads and 300 keyed uploads
that declare max_body_bytes - 1, send what the gateway takes of it and stall, 2,000 idle connections, and 1,500
keyless requests with distinct 64 KiB model names. Prints the keyed client's
latency under abuse against its own baseline from the same run, the gateway's
RSS against its idle RSS, and the size and series count of /metrics; exits
non-zero when a target is missed (>= 95 % of answers within 1 s, RSS under
128 MB, /metrics under 1 MB).
"""
import http.client
import json
import os
import pathlib
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

from procs import rss_mb, stop_all, wait_port, write_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SLUICE = str(TARGET / "release" / "sluice")
MOCK = str(TARGET / "release" / "sluice-mock")
HOST, PROXY, ADMIN, UPSTREAM = "127.0.0.1", 19380, 19381, 19300
ADMIN_TOKEN = "abuse-bench-admin-token"
MAX_BODY = 4 << 20
DURATION = float(os.environ.get("ABUSE_SECONDS", "20"))


def chat(key, model="gpt-4o-mini"):
    """One request on a new connection; its latency in seconds (None on failure)."""
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(HOST, PROXY, timeout=5)
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}", "content-type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        return time.perf_counter() - started if status == 200 else None
    except OSError:
        return None


def keyed_client(key, seconds):
    latencies, failures = [], 0
    end = time.time() + seconds
    while time.time() < end:
        took = chat(key)
        if took is None:
            failures += 1
        else:
            latencies.append(took)
        time.sleep(0.02)
    return latencies, failures


def stalled_uploads(n, key, sockets):
    """Uploads that declare max_body_bytes - 1, send what the gateway takes
    of it (without waiting), and stall."""
    headers = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    if key:
        headers += f"authorization: Bearer {key}\r\n"
    headers += f"content-length: {MAX_BODY - 1}\r\n\r\n"
    payload = headers.encode() + b"{" + b" " * (MAX_BODY - 3)
    for _ in range(n):
        try:
            s = socket.create_connection((HOST, PROXY), timeout=5)
            s.setblocking(False)
            try:
                s.send(payload)
            except OSError:
                pass
            sockets.append(s)
        except OSError:
            pass


def idle_connections(n, sockets):
    for _ in range(n):
        try:
            sockets.append(socket.create_connection((HOST, PROXY), timeout=5))
        except OSError:
            pass


def junk_models(n):
    for i in range(n):
        try:
            conn = http.client.HTTPConnection(HOST, PROXY, timeout=10)
            model = f"{i}-" + "j" * (64 << 10)
            conn.request("POST", "/v1/chat/completions", json.dumps({"model": model, "messages": []}), {"content-type": "application/json"})
            conn.getresponse().read()
            conn.close()
        except OSError:
            pass


def share_within(latencies, failures, limit):
    total = len(latencies) + failures
    return sum(1 for t in latencies if t <= limit) / total if total else 0.0


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-abuse-"))
    config = write_config(work, (PROXY, ADMIN, UPSTREAM))
    env = dict(os.environ, SLUICE_ADMIN_TOKEN=ADMIN_TOKEN)
    procs = [subprocess.Popen([MOCK, "--listen", f"{HOST}:{UPSTREAM}"], stderr=subprocess.DEVNULL)]
    try:
        key = subprocess.check_output([SLUICE, "keys", "create", "--config", str(config), "--name", "abuse"], env=env, text=True).strip()
        gateway = subprocess.Popen([SLUICE, "serve", "--config", str(config)], env=env, stderr=open(work / "sluice.log", "w"))
        procs.append(gateway)
        wait_port(UPSTREAM)
        wait_port(PROXY)
        for _ in range(50):
            chat(key)
        idle_rss = rss_mb(gateway.pid)
        base, base_fail = keyed_client(key, DURATION / 2)

        held = []
        peak = [idle_rss]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(gateway.pid))
                time.sleep(0.1)

        parts = os.environ.get("ABUSE_PARTS", "keyless,keyed,idle,junk").split(",")
        attackers = [
            threading.Thread(target=target, args=args)
            for name, target, args in [
                ("keyless", stalled_uploads, (300, None, held)),
                ("keyed", stalled_uploads, (300, key, held)),
                ("idle", idle_connections, (2000, held)),
                ("junk", junk_models, (1500,)),
            ]
            if name in parts
        ] + [threading.Thread(target=watch)]
        for t in attackers:
            t.start()
        under, under_fail = keyed_client(key, DURATION)
        for t in attackers[:-1]:
            t.join()
        conn = http.client.HTTPConnection(HOST, ADMIN, timeout=10)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read()
        stop.set()
        attackers[-1].join()
        opened = len(held)
        for s in held:
            s.close()
        time.sleep(3)
        after_rss = rss_mb(gateway.pid)
        series = sum(1 for line in metrics.decode().splitlines() if line.startswith("sluice_requests_total{"))
        within = share_within(under, under_fail, 1.0)
        print(f"keyed client alone:       {len(base)} ok, {base_fail} failed, p50 {percentile(base, 0.5)*1e3:.1f} ms, p99 {percentile(base, 0.99)*1e3:.1f} ms")
        print(f"keyed client under abuse: {len(under)} ok, {under_fail} failed, p50 {percentile(under, 0.5)*1e3:.1f} ms, p99 {percentile(under, 0.99)*1e3:.1f} ms")
        print(f"  p50 ratio to alone: {percentile(under, 0.5) / percentile(base, 0.5):.2f}x; answered within 1 s: {within*100:.1f} % (target >= 95 %)")
        print(f"gateway RSS: idle {idle_rss:.0f} MB, peak under abuse {peak[0]:.0f} MB ({peak[0]/idle_rss:.2f}x idle; target < 128 MB)")
        print(f"abusive connections held open at once: {opened}")
        print(f"gateway RSS 3 s after the abuse ended: {after_rss:.0f} MB ({after_rss/idle_rss:.2f}x idle)")
        print(f"/metrics: {len(metrics)} bytes, {series} sluice_requests_total series (target < 1 MB)")
        ok = within >= 0.95 and peak[0] < 128 and len(metrics) < (1 << 20)
        print("targets met" if ok else "TARGET MISSED")
        return 0 if ok else 1
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
