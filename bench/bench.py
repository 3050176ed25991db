#!/usr/bin/env python3
"""Sluice benchmark driver (run through bench/run.sh).

Starts the project's fake upstream (release build, fast), Sluice in release mode
with its default policies, key auth and redb usage logging, and nginx as a plain
keep-alive `proxy_pass` with buffering off, all on 127.0.0.1. Every scenario runs
against direct-to-upstream, nginx and Sluice interleaved, repeated, and reports
medians with ratios, because these machines are noisy. Writes bench/results/<time>.md.
"""
import http.client
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import phases

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SLUICE = str(TARGET / "release" / "sluice")
MOCK = str(TARGET / "release" / "sluice-mock")
# The same binary built with frame pointers (bench/run.sh), for the phase profile.
PROFILER = ROOT / "target" / "profiling" / "release" / "sluice"
QUICK = "--quick" in sys.argv
DURATION = "3s" if QUICK else "10s"
ROUNDS = 1 if QUICK else 3
TTFT_SAMPLES = 30 if QUICK else 150
HOST = "127.0.0.1"
MOCKS = {"fast": (19100, 0, 16), "paced": (19101, 20, 16), "slow": (19102, 1000, 30)}
NGINX = {"fast": 19090, "paced": 19091, "slow": 19092}
PROXY, ADMIN = 19080, 19081
PROFILE_PROXY, PROFILE_ADMIN = 19082, 19083
CLK_TCK = os.sysconf("SC_CLK_TCK")


def body(model, stream):
    return json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Write one sentence."}]})


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds():
    """User + system CPU of the finished child processes (the load generator runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-bench-"))
        self.procs = []
        self.rows = []
        self.notes = []
        self.phases = []
        self.governed = 0

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "ab"), **kw)
        self.procs.append(p)
        return p

    def start(self):
        for name, (port, delay, chunks) in MOCKS.items():
            self.spawn([MOCK, "--listen", f"{HOST}:{port}", "--chunk-delay-ms", str(delay), "--chunks", str(chunks)])
        servers = "\n".join(
            f"""    upstream up_{name} {{ server {HOST}:{MOCKS[name][0]}; keepalive 256; }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://up_{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}"""
            for name, port in NGINX.items()
        )
        (self.dir / "nginx.conf").write_text(f"""worker_processes auto;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{servers}
}}
""")
        self.nginx = self.spawn(["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")])
        models = {name: f"{name}-model" for name in MOCKS}
        channels = "\n".join(
            f'[[channels]]\nid = "{name}"\nbase_url = "http://{HOST}:{port}/v1"\napi_key = "env::BENCH_UPSTREAM_KEY"\nmodels = ["{models[name]}"]\n'
            for name, (port, _, _) in MOCKS.items()
        )
        # The same fast upstream behind an Anthropic channel: the translation's cost.
        channels += f'\n[[channels]]\nid = "fast-anthropic"\nprovider = "anthropic"\nbase_url = "http://{HOST}:{MOCKS["fast"][0]}/v1"\napi_key = "env::BENCH_UPSTREAM_KEY"\nmodels = ["fast-claude"]\n'
        self.config = self.dir / "sluice.toml"
        self.config.write_text(f"""[server]
listen = "{HOST}:{PROXY}"
[admin]
listen = "{HOST}:{ADMIN}"
token = "env::SLUICE_ADMIN_TOKEN"
[store]
backend = "redb"
path = "store.redb"
[plugins]
dir = "plugins"
cache_dir = "plugin-cache"
{channels}""")
        self.env = dict(os.environ, BENCH_UPSTREAM_KEY="bench-upstream", SLUICE_ADMIN_TOKEN="bench-admin-token-0001")
        self.key = subprocess.check_output([SLUICE, "keys", "create", "--config", str(self.config), "--name", "bench"], env=self.env, text=True).strip()
        self.sluice = self.spawn([SLUICE, "serve", "--config", str(self.config)], env=self.env)
        for port in [p for p, _, _ in MOCKS.values()] + list(NGINX.values()) + [PROXY]:
            wait_port(port)
        # Idle RSS before any load, after one request (the tokenizer, policy
        # instances and upstream pools are then resident, as they stay).
        self.oha(*self.targets("fast")[2][1:3], body("fast-model", False), "-n", "1")
        time.sleep(2)
        self.idle_before = rss_mb(self.sluice.pid)

    def idle_after(self):
        """Idle RSS once the load runs are over, against the idle RSS before them."""
        time.sleep(10)
        after = rss_mb(self.sluice.pid)
        self.notes.append(f"idle RSS after the load runs (10 s after the last): {after:.0f} MB, {after / self.idle_before:.2f}× the idle RSS before them ({self.idle_before:.0f} MB, after one request)")

    def stop(self):
        """Stops every process, then removes the run's folder (stores of several GB
        after a full run) unless BENCH_KEEP_DIR is set, e.g. to read a failed run's logs."""
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("BENCH_KEEP_DIR"):
            print(f"bench files kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def targets(self, mock):
        model = f"{mock}-model"
        return [
            ("direct", f"http://{HOST}:{MOCKS[mock][0]}/v1/chat/completions", [], model),
            ("nginx", f"http://{HOST}:{NGINX[mock]}/v1/chat/completions", [], model),
            ("sluice", f"http://{HOST}:{PROXY}/v1/chat/completions", ["-H", f"authorization: Bearer {self.key}"], model),
        ]

    def oha(self, url, headers, payload, *extra):
        cmd = ["oha", "--no-tui", "--output-format", "json", "-m", "POST", "-H", "content-type: application/json", *headers, "-d", payload, *extra, url]
        counted = f":{PROXY}/" in url
        before = self.counters() if counted else None
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        report = json.loads(out)
        if counted:
            self.check_governed(before, report)
        return report

    def counters(self):
        """Sluice's policy calls, records written and queued records, from /metrics."""
        text = urllib.request.urlopen(f"http://{HOST}:{ADMIN}/metrics", timeout=10).read().decode()
        totals = {"policy": 0, "written": 0, "queued": 0}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("sluice_policy_calls_total"):
                totals["policy"] += int(float(value))
            elif name == "sluice_usage_records_written_total":
                totals["written"] = int(float(value))
            elif name == "sluice_writer_queue_depth":
                totals["queued"] = int(float(value))
        return totals

    def check_governed(self, before, report):
        """Voids the run unless every answered request was governed: three
        policy calls (auth, route, shape) and one durable usage record each.
        Requests oha abandoned at the deadline may or may not have been."""
        ok = sum(report["statusCodeDistribution"].values())
        cut = sum(report.get("errorDistribution", {}).values())
        deadline = time.time() + 10
        while True:
            after = self.counters()
            written = after["written"] - before["written"]
            if after["queued"] == 0 and written >= ok or time.time() > deadline:
                break
            time.sleep(0.1)
        calls = after["policy"] - before["policy"]
        assert 3 * ok <= calls <= 3 * (ok + cut), f"void run: {calls} policy calls for {ok} answers (+{cut} cut)"
        assert ok <= written <= ok + cut, f"void run: {written} records written for {ok} answers (+{cut} cut)"
        self.governed += ok

    def proxy_pids(self, name):
        if name == "sluice":
            return [self.sluice.pid]
        if name == "nginx":
            return [int(w) for w in subprocess.run(["pgrep", "-P", str(self.nginx.pid)], capture_output=True, text=True).stdout.split()]
        return []

    def closed_loop(self, title, stream):
        results = {name: [] for name in ("direct", "nginx", "sluice")}
        cpu_per_request = {"nginx": [], "sluice": []}
        # What the same requests cost the upstream and the load generator
        # behind each target: on two shared cores, throughput is two cores
        # over the sum of the three.
        peers = {name: [] for name in results}
        upstream = self.procs[0].pid  # the fast mock, started first
        for _ in range(ROUNDS):
            for name, url, headers, model in self.targets("fast"):
                pids = self.proxy_pids(name)
                before = sum(cpu_seconds(p) for p in pids)
                upstream_before, generator_before = cpu_seconds(upstream), children_cpu_seconds()
                report = self.oha(url, headers, body(model, stream), "-z", DURATION, "-c", "64")
                ok = report["statusCodeDistribution"].get("200", 0)
                results[name].append(report["summary"]["requestsPerSec"])
                if pids and ok:
                    cpu_per_request[name].append((sum(cpu_seconds(p) for p in pids) - before) / ok * 1e6)
                if ok:
                    peers[name].append(((cpu_seconds(upstream) - upstream_before) / ok * 1e6, (children_cpu_seconds() - generator_before) / ok * 1e6))
                assert set(report["statusCodeDistribution"]) <= {"200"}, (name, report["statusCodeDistribution"])
        med = {k: statistics.median(v) for k, v in results.items()}
        self.row(title, med, "req/s", higher_is_better=True)
        sluice_cpu, nginx_cpu = (statistics.median(cpu_per_request[k]) for k in ("sluice", "nginx"))
        self.notes.append(f"{title}: CPU time per request: Sluice {sluice_cpu:.0f} µs, nginx {nginx_cpu:.0f} µs ({sluice_cpu / nginx_cpu:.2f}×; proxy processes only, median of rounds)")
        split = ", ".join(f"{name} {statistics.median(u for u, _ in rows):.1f} + {statistics.median(g for _, g in rows):.1f} µs" for name, rows in peers.items())
        self.notes.append(f"{title}: the upstream's + the load generator's CPU per request behind each target: {split}")

    def cpu_per_request(self, model, stream):
        """Sluice's CPU per answered request over one closed-loop run at the fast upstream."""
        url, headers = self.targets("fast")[2][1:3]
        pid = self.sluice.pid
        before = cpu_seconds(pid)
        report = self.oha(url, headers, body(model, stream), "-z", DURATION, "-c", "64")
        ok = report["statusCodeDistribution"].get("200", 0)
        assert set(report["statusCodeDistribution"]) <= {"200"}, (model, report["statusCodeDistribution"])
        return (cpu_seconds(pid) - before) / max(ok, 1) * 1e6, ok

    def translation(self):
        """CPU per request through an Anthropic channel against the pass-through
        OpenAI channel, same upstream, alternating, stream and not."""
        for stream in (False, True):
            cpu = {"fast-model": [], "fast-claude": []}
            for _ in range(ROUNDS):
                for model in cpu:
                    cpu[model].append(self.cpu_per_request(model, stream)[0])
            plain, translated = (statistics.median(cpu[m]) for m in cpu)
            kind = "stream" if stream else "non-stream"
            self.notes.append(f"Anthropic translation, {kind}: CPU time per request {translated:.0f} µs against {plain:.0f} µs pass-through ({translated / plain:.2f}×, +{translated - plain:.0f} µs; median of rounds)")

    def shadow_decisions(self):
        """The shadow router's decisions so far, from /metrics."""
        text = urllib.request.urlopen(f"http://{HOST}:{ADMIN}/metrics", timeout=10).read().decode()
        return sum(int(float(line.rpartition(" ")[2])) for line in text.splitlines()
                   if line.startswith('sluice_policy_shadow_decisions_total{plugin="shadow-router"'))

    def shadow(self):
        """CPU per request with the default router running a second time, in
        shadow mode (one more policy call after each response), against
        without it, alternating; the plugin is hot-loaded and removed."""
        source = ROOT / "plugins" / "target" / "wasm32-wasip2" / "release" / "sluice_router.wasm"
        if not source.exists():
            self.notes.append("shadow mode scenario skipped: plugins/target/…/sluice_router.wasm is missing")
            return
        folder = self.dir / "plugins"
        wasm, config = folder / "shadow-router.wasm", folder / "shadow-router.toml"
        cpu = {"without": [], "with": []}
        for _ in range(ROUNDS):
            for mode in cpu:
                if mode == "with":
                    config.write_text('mode = "shadow"\n')
                    shutil.copy(source, wasm)
                else:
                    wasm.unlink(missing_ok=True)
                    config.unlink(missing_ok=True)
                time.sleep(2)  # the folder watcher reloads (100 ms debounce)
                decided = self.shadow_decisions()
                cost, ok = self.cpu_per_request("fast-model", False)
                decided = self.shadow_decisions() - decided
                assert decided >= ok * 0.95 if mode == "with" else decided == 0, (mode, ok, decided)
                cpu[mode].append(cost)
        wasm.unlink(missing_ok=True)
        config.unlink(missing_ok=True)
        without, with_ = (statistics.median(cpu[m]) for m in cpu)
        self.notes.append(f"shadow mode (the default router as a second, shadow plugin): CPU time per request {with_:.0f} µs against {without:.0f} µs without (+{with_ - without:.0f} µs, {with_ / without:.2f}×; non-stream, median of rounds); every other figure is measured without shadow plugins")

    def profile(self):
        """Where Sluice's CPU goes, by phase: perf samples of a frame-pointer build under closed-loop load."""
        if not shutil.which("perf") or not PROFILER.exists():
            self.notes.append("phase profile skipped: perf or the frame-pointer build (target/profiling) is missing")
            return
        config = self.dir / "profile.toml"
        config.write_text(self.config.read_text().replace("store.redb", "profile.redb").replace(f":{PROXY}", f":{PROFILE_PROXY}").replace(f":{ADMIN}", f":{PROFILE_ADMIN}"))
        key = subprocess.check_output([str(PROFILER), "keys", "create", "--config", str(config), "--name", "profile"], env=self.env, text=True).strip()
        proc = self.spawn([str(PROFILER), "serve", "--config", str(config)], env=self.env)
        wait_port(PROFILE_PROXY)
        url = f"http://{HOST}:{PROFILE_PROXY}/v1/chat/completions"
        headers = ["-H", f"authorization: Bearer {key}"]
        for stream in (False, True):
            self.oha(url, headers, body("fast-model", stream), "-z", "1s", "-c", "64")
            data = self.dir / f"perf-{stream}.data"
            before = cpu_seconds(proc.pid)
            record = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", str(data), "-p", str(proc.pid), "--", "sleep", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            report = self.oha(url, headers, body("fast-model", stream), "-z", "4s", "-c", "64")
            record.wait()
            ok = report["statusCodeDistribution"].get("200", 0)
            cpu = (cpu_seconds(proc.pid) - before) / max(ok, 1) * 1e6
            script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym"], capture_output=True, text=True).stdout
            kind = "stream (16 chunks)" if stream else "non-stream"
            self.phases.append((kind, cpu, phases.split(script.splitlines(keepends=True))))
        proc.terminate()
        proc.wait()

    def latencies(self, title, *extra):
        """p50 and p99 of non-stream requests under `extra` oha settings, added over direct."""
        p50 = {name: [] for name in ("direct", "nginx", "sluice")}
        p99 = {name: [] for name in ("direct", "nginx", "sluice")}
        for _ in range(ROUNDS):
            for name, url, headers, model in self.targets("fast"):
                report = self.oha(url, headers, body(model, False), "-z", DURATION, *extra)
                pct = report["latencyPercentiles"]
                p50[name].append(pct["p50"] * 1e6)
                p99[name].append(pct["p99"] * 1e6)
        for label, series in (("p50", p50), ("p99", p99)):
            med = {k: statistics.median(v) for k, v in series.items()}
            self.row(f"{title}, latency {label}", med, "µs", added=True)

    def open_loop(self, rate):
        self.latencies(f"open loop {rate} req/s", "-c", "128", "-q", str(rate), "--latency-correction")

    def sequential(self):
        """One connection, one request at a time: the figure public gateway boards lead with."""
        self.latencies("one connection, sequential", "-c", "1")

    def ttft(self):
        ttft = {name: [] for name in ("direct", "nginx", "sluice")}
        gaps = {name: [] for name in ("direct", "nginx", "sluice")}
        for _ in range(TTFT_SAMPLES):
            for name, url, headers, model in self.targets("paced"):
                port = int(url.split(":")[2].split("/")[0])
                conn = http.client.HTTPConnection(HOST, port)
                hdrs = {"content-type": "application/json"}
                if headers:
                    hdrs["authorization"] = headers[1].split(": ", 1)[1]
                start = time.perf_counter()
                conn.request("POST", "/v1/chat/completions", body(model, True), hdrs)
                resp = conn.getresponse()
                stamps = []
                while True:
                    line = resp.fp.readline()
                    if not line or line.startswith(b"data: [DONE]"):
                        break
                    if line.startswith(b"data: {"):
                        stamps.append(time.perf_counter())
                conn.close()
                ttft[name].append((stamps[0] - start) * 1e6)
                gaps[name].extend((b - a) * 1e6 for a, b in zip(stamps, stamps[1:]))
        self.row("streaming TTFT (paced upstream, 20 ms/chunk), p50", {k: statistics.median(v) for k, v in ttft.items()}, "µs", added=True)
        self.row("between-chunk gap, p50 (pace 20,000 µs)", {k: statistics.median(v) for k, v in gaps.items()}, "µs", added=True)

    def concurrent_streams(self, n=1000):
        idle = rss_mb(self.sluice.pid)
        for name, url, headers, model in self.targets("slow"):
            if name == "direct":
                continue
            proc = subprocess.Popen(["oha", "--no-tui", "--output-format", "json", "-m", "POST", "-H", "content-type: application/json", *headers, "-d", body(model, True), "-n", str(n), "-c", str(n), url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(8)
            if name == "sluice":
                cpu0 = cpu_seconds(self.sluice.pid)
                time.sleep(5)
                cpu = (cpu_seconds(self.sluice.pid) - cpu0) / 5 * 100
                streaming = rss_mb(self.sluice.pid)
                self.notes.append(f"{n} concurrent open streams: Sluice RSS {streaming:.0f} MB (idle before: {idle:.0f} MB), CPU {cpu:.1f}% of one core")
            else:
                workers = self.proxy_pids("nginx")
                total = sum(rss_mb(w) for w in workers) + rss_mb(self.nginx.pid)
                self.notes.append(f"{n} concurrent open streams: nginx RSS {total:.0f} MB (master + {len(workers)} workers)")
            proc.kill()
            proc.wait()
            time.sleep(2)

    def startup(self):
        times, rss = [], []
        for i in range(3 if QUICK else 7):
            ready = self.dir / f"ready-{i}.json"
            env = dict(self.env, SLUICE_LISTEN=f"{HOST}:0", SLUICE_ADMIN_LISTEN=f"{HOST}:0")
            config = self.dir / "startup.toml"
            config.write_text(self.config.read_text().replace("store.redb", "startup.redb"))
            start = time.perf_counter()
            p = subprocess.Popen([SLUICE, "serve", "--config", str(config), "--ready-file", str(ready)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not ready.exists():
                time.sleep(0.001)
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(1)
            rss.append(rss_mb(p.pid))
            p.terminate()
            p.wait()
        self.notes.append(f"start-up to listening with cached plugins: median {statistics.median(times[1:] or times):.0f} ms (first, cold cache: {times[0]:.0f} ms); idle RSS {statistics.median(rss):.0f} MB")

    def row(self, title, med, unit, higher_is_better=False, added=False):
        self.rows.append((title, med, unit, higher_is_better, added))
        print(f"{title}: " + ", ".join(f"{k} {v:,.0f} {unit}" for k, v in med.items()), flush=True)

    def report(self):
        load = pathlib.Path("/proc/loadavg").read_text().split()[:3]
        lines = [
            f"# Sluice benchmark {time.strftime('%Y-%m-%d %H:%M:%S')}",
            "",
            f"Machine: {os.cpu_count()} cores, load average {' '.join(load)} at the end; everything (load generator, upstream, proxies) shares the cores.",
            f"Each figure is the median of {ROUNDS} interleaved rounds of {DURATION} ({'quick run' if QUICK else 'full run'}).",
            "",
            "| scenario | direct | nginx | sluice | sluice / direct | sluice / nginx |",
            "|---|---|---|---|---|---|",
        ]
        for title, med, unit, higher, added in self.rows:
            d, n, s = med["direct"], med["nginx"], med["sluice"]
            if added:
                ratios = f"+{s - d:,.0f} {unit} | {s / n:.2f}× (nginx adds {n - d:,.0f})"
            else:
                ratios = f"{s / d:.2f}× | {s / n:.2f}×"
            lines.append(f"| {title} | {d:,.0f} {unit} | {n:,.0f} {unit} | {s:,.0f} {unit} | {ratios} |")
        self.notes.append(f"every answered Sluice request of the scenarios above was checked as governed ({self.governed:,}): 3 policy calls and 1 durable usage record each")
        lines += ["", *[f"- {n}" for n in self.notes], ""]
        for kind, cpu, split in self.phases:
            lines += [
                f"Sluice CPU by phase, closed loop {kind}: {cpu:.0f} µs per request under `perf record -g` (frame-pointer build)",
                "",
                "| phase | share of samples | µs per request |",
                "|---|---|---|",
                *[f"| {name} | {share:.1%} | {share * cpu:.0f} |" for name, share in split],
                "",
            ]
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        path = out / f"{time.strftime('%Y%m%d-%H%M%S')}.md"
        path.write_text("\n".join(lines))
        print("\n".join(lines))
        print(f"written to {path}")


def main():
    b = Bench()
    try:
        b.start()
        b.startup()
        b.closed_loop("closed loop, non-stream, 64 connections", False)
        b.closed_loop("closed loop, stream (16 chunks), 64 connections", True)
        b.open_loop(5000)
        b.sequential()
        b.ttft()
        b.concurrent_streams()
        b.idle_after()
        b.translation()
        b.shadow()
        b.profile()
    finally:
        b.stop()
    b.report()


if __name__ == "__main__":
    main()
