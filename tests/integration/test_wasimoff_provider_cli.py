"""`rendezvous-wasimoff-provider` as a person runs it: it says what it does on stderr (connected,
each task with its duration, progress lines, a disconnect and its reconnect)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest

from rendezvous.testing import serve, wait_until
from tests.integration.test_wasimoff import TOOL

pytestmark = pytest.mark.anyio
SCRIPT = os.path.join(os.path.dirname(sys.executable), "rendezvous-wasimoff-provider")


class Lines:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def have(self, text: str) -> bool:
        return any(text in line for line in self.lines)


async def test_the_provider_says_what_it_does_and_reconnects():
    async with serve("wasimoff", {"static_files": None}) as srv:
        proc = subprocess.Popen([SCRIPT, "--broker", srv.url, "--name", "talky", "--workers", "2", "--progress", "0.3",
                                 "--retry-max", "1"], stderr=subprocess.PIPE, text=True)
        out = Lines(proc)
        try:
            await wait_until(lambda: out.have("connected to"), timeout=15)
            async with httpx.AsyncClient(timeout=30) as http:
                assert (await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=TOOL)).status_code == 200
                reply = await http.post(srv.url + "/api/client/run/tool.wasm", headers={"X-Args": "echo hi"})
                assert reply.status_code == 200 and reply.headers["x-wasimoff-result"] == "Ok"
            await wait_until(lambda: out.have("exit 0 in"), timeout=10)
            await wait_until(lambda: out.have("1 tasks done (0 failed), 0/2 slots busy"), timeout=5)
        except BaseException:
            proc.kill()
            raise
    try:  # the broker is gone: the provider says so and keeps trying
        await wait_until(lambda: out.have("disconnected (") and out.have("reconnecting in"), timeout=10)
        await wait_until(lambda: sum("reconnecting in" in line for line in out.lines) >= 2, timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.have("connected to http://127.0.0.1:") and out.have("as talky: 2 slots")
    assert not any("Traceback" in line for line in out.lines)


def test_bad_arguments_are_one_line_and_exit_2():
    for args, message in ((["--broker", "localhost:4080"], "--broker must be an http:// or https:// URL"),
                          (["--workers", "0"], "--workers must be at least 1")):
        out = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
