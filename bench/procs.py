"""Helpers the bench scripts share: a process's resident memory, waiting for a
loopback port to accept connections, and stopping the processes a run started."""
import pathlib
import socket
import subprocess
import time


def rss_mb(pid):
    """The resident set of process `pid`, in MB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port, host="127.0.0.1", timeout=60):
    """Returns once `host:port` accepts a connection; exits after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def stop_all(procs):
    """Terminates each process, killing one that has not exited 30 s later."""
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def write_config(work, ports, plugins=None):
    """Writes `work/sluice.toml`: the gateway on `ports` (proxy, admin,
    upstream) in front of the fake upstream, with the shipped defaults, a
    store and a plugin cache in `work`, and `plugins` as its plugin folder
    if given; returns its path."""
    proxy, admin, upstream = ports
    folder = f'dir = "{plugins}"\n' if plugins else ""
    config = work / "sluice.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:{proxy}"
[admin]
listen = "127.0.0.1:{admin}"
token = "env::SLUICE_ADMIN_TOKEN"
[store]
path = "{work}/store.redb"
[plugins]
{folder}cache_dir = "{work}/cache"
[[channels]]
id = "mock"
base_url = "http://127.0.0.1:{upstream}/v1"
models = ["gpt-4o-mini"]
""")
    return config
