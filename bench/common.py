"""What every benchmark here shares: pinning, limits, the server process, /proc readings."""

from __future__ import annotations

import os
import pathlib
import resource
import socket
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
SERVER_CORE, GENERATOR_CORE = 0, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_pinned(cmd: list[str], port: int, *, cwd: pathlib.Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """Start the server under test on the server core and wait until ``port`` accepts."""
    proc = subprocess.Popen(["taskset", "-c", str(SERVER_CORE), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {cmd[:4]}")


def prepare_generator() -> None:
    """The load generator: on its own core, with every file descriptor it may have, on uvloop."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers started later
    os.sched_setaffinity(0, {GENERATOR_CORE})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
