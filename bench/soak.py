#!/usr/bin/env python3
"""The soak (run through bench/soak.sh; loopback only, bounded in time).

Starts the fake upstream and Sluice (release builds, shipped defaults plus a
folder auth plugin, the team-header template) on 127.0.0.1, measures the
capacity of this load generator against it for 10 s, then restarts Sluice on
the same store and runs for SOAK_MINUTES (30 by default) at half of that: streamed and plain chat
completions on keep-alive connections, mixed with keyless junk (no key, a
wrong key, a malformed body) and slow clients (headers sent a byte at a time,
given up half-way), while the plugin's config is replaced every minute so the
plugin hot-reloads. Samples the gateway's RSS every 30 s and prints a table,
the errors by kind, and the usage records written against the 2xx answers.
Exits non-zero when a target is missed: RSS over the last 10 minutes within
10 % of its value at the 10-minute mark (for runs of 20 minutes or more), no
unexpected error, records written = 2xx answers.
"""
import http.client
import json
import os
import pathlib
import random
import shutil
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
PLUGIN = ROOT / "plugins" / "target" / "wasm32-wasip2" / "release" / "team_header.wasm"
HOST, PROXY, ADMIN, UPSTREAM = "127.0.0.1", 19480, 19481, 19400
ADMIN_TOKEN = "soak-bench-admin-token"
MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
CLIENTS = 16
SAMPLE_S = 30


class Tally:
    """Answers by kind, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, kind):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def get(self, kind):
        with self.lock:
            return self.counts.get(kind, 0)


def keyed_client(key, stop, rate, tally):
    """Plain and streamed chat completions on one keep-alive connection, at
    `rate` requests per second (0: as fast as it can)."""
    conn = http.client.HTTPConnection(HOST, PROXY, timeout=30)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", "x-team": "blue"}
    next_at = time.perf_counter()
    while not stop.is_set():
        stream = random.random() < 0.5
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            reply = conn.getresponse()
            data = reply.read()
            if reply.status == 200 and (not stream or data.rstrip().endswith(b"[DONE]")):
                tally.add("2xx")
            else:
                tally.add(f"unexpected {reply.status}")
        except (OSError, http.client.HTTPException) as e:
            tally.add(f"unexpected {type(e).__name__}")
            conn.close()
            conn = http.client.HTTPConnection(HOST, PROXY, timeout=30)
        if rate:
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
    conn.close()


def junk_client(stop, tally):
    """Keyless junk, a few a second: no key, a wrong key, a malformed body."""
    cases = [
        ({}, b'{"model":"gpt-4o-mini","messages":[]}', 401),
        ({"authorization": "Bearer sk-sl-wrong"}, b'{"model":"gpt-4o-mini","messages":[]}', 401),
        ({"authorization": "Bearer sk-sl-wrong"}, b'{"model": ', 401),
    ]
    while not stop.wait(0.2):
        headers, body, want = random.choice(cases)
        try:
            conn = http.client.HTTPConnection(HOST, PROXY, timeout=10)
            conn.request("POST", "/v1/chat/completions", body, dict(headers, **{"content-type": "application/json"}))
            status = conn.getresponse().status
            conn.close()
            tally.add("junk refused" if status == want else f"unexpected junk {status}")
        except OSError as e:
            tally.add(f"unexpected junk {type(e).__name__}")


def slow_client(stop, tally):
    """A client that sends its request head a byte every 100 ms and gives up
    half-way, one at a time."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    while not stop.is_set():
        try:
            s = socket.create_connection((HOST, PROXY), timeout=10)
            for byte in head[: len(head) // 2]:
                if stop.is_set():
                    break
                s.send(bytes([byte]))
                time.sleep(0.1)
            s.close()
            tally.add("slow client gave up")
        except OSError as e:
            tally.add(f"unexpected slow {type(e).__name__}")


def reloader(folder, stop, tally):
    """Replaces the plugin's config every minute (atomically), alternating
    two equivalent team lists, so the plugin hot-reloads."""
    flip = False
    while not stop.wait(60):
        flip = not flip
        teams = '["blue", "green"]' if flip else '["blue"]'
        tmp = folder / "team-header.toml.tmp"
        tmp.write_text(f'header = "x-team"\nteams = {teams}\nrpm_per_team = 100000000\n')
        tmp.rename(folder / "team-header.toml")
        tally.add("plugin reloads")


def metric(name):
    conn = http.client.HTTPConnection(HOST, ADMIN, timeout=10)
    conn.request("GET", "/metrics")
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def run(key, rate, extras):
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=keyed_client, args=(key, stop, rate, tally)) for _ in range(CLIENTS)]
    threads += [threading.Thread(target=f, args=(*a, stop, tally)) for f, a in extras]
    for t in threads:
        t.start()
    return tally, stop, threads


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    plugins = work / "plugins"
    plugins.mkdir()
    shutil.copy(PLUGIN, plugins / "team-header.wasm")
    (plugins / "team-header.toml").write_text('header = "x-team"\nteams = ["blue"]\nrpm_per_team = 100000000\n')
    config = write_config(work, (PROXY, ADMIN, UPSTREAM), plugins)
    env = dict(os.environ, SLUICE_ADMIN_TOKEN=ADMIN_TOKEN)
    procs = [subprocess.Popen([MOCK, "--listen", f"{HOST}:{UPSTREAM}"], stderr=subprocess.DEVNULL)]
    try:
        key = subprocess.check_output(
            [SLUICE, "keys", "create", "--config", str(config), "--name", "soak"],
            env=env, text=True).strip()

        def serve():
            gateway = subprocess.Popen([SLUICE, "serve", "--config", str(config)], env=env, stderr=open(work / "sluice.log", "a"))
            procs.append(gateway)
            wait_port(PROXY)
            return gateway

        wait_port(UPSTREAM)
        # Capacity of this generator against the gateway: 10 s flat out, on a
        # gateway of its own. A burst at full speed leaves memory with the
        # allocator that it returns minutes later; the soak measures a
        # gateway that has only ever seen the soak.
        calibration = serve()
        tally, stop, threads = run(key, 0, [])
        time.sleep(10)
        stop.set()
        for t in threads:
            t.join()
        capacity = tally.get("2xx") / 10
        rate = capacity / 2
        capacity_answers = tally.get("2xx")
        stop_all([calibration])
        procs.remove(calibration)
        print(f"capacity: {capacity:.0f} req/s with {CLIENTS} keep-alive clients; soaking at {rate:.0f} req/s for {MINUTES:g} min")
        gateway = serve()
        written_before = metric("sluice_usage_records_written_total")
        idle_rss = rss_mb(gateway.pid)
        extras = [(junk_client, ()), (slow_client, ()), (slow_client, ()), (reloader, (plugins,))]
        tally, stop, threads = run(key, rate / CLIENTS, extras)
        samples = []
        started = time.time()
        while time.time() - started < MINUTES * 60:
            time.sleep(min(SAMPLE_S, max(0.0, MINUTES * 60 - (time.time() - started))))
            minute = (time.time() - started) / 60
            samples.append((minute, rss_mb(gateway.pid), tally.get("2xx")))
            print(f"  {minute:5.1f} min  RSS {samples[-1][1]:6.1f} MB  2xx so far {samples[-1][2]}", flush=True)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1)
        written = metric("sluice_usage_records_written_total") - written_before
        answered = tally.get("2xx")
        unexpected = {k: v for k, v in tally.counts.items() if k.startswith("unexpected")}
        print(f"idle RSS before the soak: {idle_rss:.1f} MB")
        print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
        print(f"usage records written during the soak: {written:.0f}; 2xx answers: {answered} (the capacity run before it, on another gateway process: {capacity_answers})")
        ok = not unexpected and written == answered
        if MINUTES >= 20:
            mark = min(samples, key=lambda s: abs(s[0] - 10))[1]
            tail = [s[1] for s in samples if s[0] >= MINUTES - 10]
            drift = max(abs(r - mark) / mark for r in tail)
            print(f"RSS at 10 min {mark:.1f} MB; last 10 min {min(tail):.1f}-{max(tail):.1f} MB; largest drift {drift*100:.1f} % (target <= 10 %)")
            ok = ok and drift <= 0.10
        print("targets met" if ok else "TARGET MISSED: " + json.dumps(unexpected))
        return 0 if ok else 1
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
