#!/usr/bin/env python3
"""CPU per request of two Sluice variants and nginx, alternating in one sitting.

The machine's speed swings from one second to the next, so a lever is judged
by running its "before" and "after" in turns against the same upstream, with
nginx measured between them. Each variant is a binary plus optional settings;
each turn restarts Sluice on the bench's store and key and runs a 64-connection
closed loop. User and system CPU per answered request come from
/proc/PID/stat (every thread of the process).

    bench/ab.py A B [--rounds 3] [--seconds 4] [--stream]
        A, B: `BINARY[,TABLE.KEY=VALUE][,env:NAME=VALUE]...`
    bench/ab.py target/release/sluice target/release/sluice,server.runtime=shared
    bench/ab.py target/release/sluice target/release/sluice,upstream.direct_http=false
    bench/ab.py old/sluice target/release/sluice
    bench/ab.py target/release/sluice target/release/sluice,env:SLUICE_LOG_LEVEL=warn

Needs what bench/run.sh installs (nginx, oha in bench/.tools) and the release
build of the fake upstream; runs on 127.0.0.1 only.
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.argv, ARGS = sys.argv[:1] + ["--quick"], sys.argv[1:]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (reads --quick from argv)

os.environ["PATH"] = f"{bench.ROOT / 'bench' / '.tools' / 'bin'}:{os.environ['PATH']}"


def variant(spec):
    """(binary, extra config lines per table, extra environment) from `BINARY,opt,...`."""
    binary, *options = spec.split(",")
    tables, env = {}, {}
    for option in options:
        if option.startswith("env:"):
            name, _, value = option[4:].partition("=")
            env[name] = value
        elif "." in option.partition("=")[0]:
            key, _, value = option.partition("=")
            table, _, key = key.partition(".")
            literal = value if value.isdigit() or value in ("true", "false") else f'"{value}"'
            tables.setdefault(table, []).append(f"{key} = {literal}")
        else:
            raise SystemExit(f"unknown option {option!r} in {spec!r}")
    return str(pathlib.Path(binary).resolve()), tables, env


def configured(base, tables):
    """The base config with each table's extra lines, in it or appended."""
    for table, lines in tables.items():
        text = "".join(f"{line}\n" for line in lines)
        header = f"[{table}]\n"
        base = base.replace(header, header + text, 1) if header in base else f"{base}\n{header}{text}"
    return base


def cpu_ticks(pids):
    total = [0, 0]
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total[0] += int(fields[11])
        total[1] += int(fields[12])
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(ARGS)
    b = bench.Bench()
    results = {}
    try:
        b.start()
        b.sluice.terminate()
        b.sluice.wait()
        base_config = b.config.read_text()
        nginx_workers = b.proxy_pids("nginx")
        url = f"http://{bench.HOST}:{bench.PROXY}/v1/chat/completions"
        nginx_url = f"http://{bench.HOST}:{bench.NGINX['fast']}/v1/chat/completions"
        payload = bench.body("fast-model", args.stream)
        auth = ["-H", f"authorization: Bearer {b.key}"]

        def measure(name, pids, target, headers):
            before = cpu_ticks(pids)
            report = b.oha(target, headers, payload, "-z", f"{args.seconds}s", "-c", "64")
            after = cpu_ticks(pids)
            ok = report["statusCodeDistribution"].get("200", 0)
            user, sys_ = ((a - z) / bench.CLK_TCK / max(ok, 1) * 1e6 for a, z in zip(after, before))
            results.setdefault(name, []).append((user, sys_, ok / args.seconds))
            print(f"{name}: user {user:.1f} µs, sys {sys_:.1f} µs, total {user + sys_:.1f} µs per request, {ok / args.seconds:,.0f} req/s", flush=True)

        for _ in range(args.rounds):
            for label, spec in (("A", args.a), ("B", args.b)):
                binary, tables, env = variant(spec)
                config = b.dir / f"ab-{label}.toml"
                config.write_text(configured(base_config, tables))
                proc = b.spawn([binary, "serve", "--config", str(config)], env=dict(b.env, **env))
                b.sluice = proc
                bench.wait_port(bench.PROXY)
                b.oha(url, auth, payload, "-z", "1s", "-c", "64")
                measure(f"{label} {spec}", [proc.pid], url, auth)
                proc.terminate()
                proc.wait()
                time.sleep(0.5)
            measure("nginx", nginx_workers, nginx_url, [])
    finally:
        b.stop()
    print("\nmedians of", args.rounds, "rounds:")
    for name, rows in results.items():
        user, sys_, rate = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {name}: {user + sys_:.1f} µs per request (user {user:.1f}, sys {sys_:.1f}), {rate:,.0f} req/s")


if __name__ == "__main__":
    main()
