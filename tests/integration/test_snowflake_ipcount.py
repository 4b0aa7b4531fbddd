"""The proxy IP-count log (HEAD's --ip-count-prefix, v2.5.1's --ip-count-log/--ip-count-mask)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import anyio
import pytest

from rendezvous_snowflake.ipcount import IPSetSink, read_chunks

from .test_snowflake import broker, client, poll

pytestmark = pytest.mark.anyio
GO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)"
RESTRICTED = [f"129.97.1.{i}" for i in range(1, 4)]  # NAT restricted
UNKNOWN = ["129.97.2.1", "129.97.2.2"]  # NAT unknown: the restricted pool too
UNRESTRICTED = [f"129.97.3.{i}" for i in range(1, 5)]


async def poll_from(http, srv, ip, nat):
    r = await poll(http, srv, sid=f"sid-{ip}", nat=nat, headers={"X-Forwarded-For": ip})
    assert r.status_code == 200


async def poll_everyone(http, srv):
    async with anyio.create_task_group() as tg:
        for ips, nat in ((RESTRICTED, "restricted"), (UNKNOWN, "unknown"), (UNRESTRICTED, "unrestricted")):
            for ip in ips:
                tg.start_soon(poll_from, http, srv, ip, nat)
    await poll_from(http, srv, RESTRICTED[0], "restricted")  # a repeat counts once


def lines(path):
    return path.read_text().splitlines()


async def test_per_pool_files_as_head(http_server, tmp_path):
    prefix = tmp_path / "ips"
    async with broker(http_server, proxy_timeout=0.05, ip_count_prefix=str(prefix), ip_count_interval="400ms") as srv, \
            client() as http:
        files = {pool: list(tmp_path.glob(f"ips-{pool}-*.log")) for pool in ("restricted", "unrestricted")}
        assert all(len(found) == 1 for found in files.values()), files
        for pool, (path,) in files.items():
            assert re.fullmatch(f"ips-{pool}-{GO_TIME}\\.log", path.name), path.name
            assert path.read_text() == ""  # nothing before the first interval ends
        await poll_everyone(http, srv)
        await anyio.sleep(0.5)
        await poll_from(http, srv, "129.97.9.9", "unrestricted")  # past the interval: the chunk is written first
        restricted, unrestricted = files["restricted"][0], files["unrestricted"][0]
        assert len(lines(restricted)) == 1 and len(lines(unrestricted)) == 1
        for line in lines(restricted) + lines(unrestricted):
            entry = json.loads(line)
            assert list(entry) == ["recordingStart", "recordingEnd", "recorded"]
            assert re.fullmatch(GO_TIME, entry["recordingStart"]) and re.fullmatch(GO_TIME, entry["recordingEnd"])
            assert "129.97" not in line
        [(_, first_end, chunk)] = read_chunks(lines(restricted))
        assert chunk.count() == len(RESTRICTED) + len(UNKNOWN)
        [(_, _, chunk)] = read_chunks(lines(unrestricted))
        assert chunk.count() == len(UNRESTRICTED)
    # a clean stop writes the chunk in progress (the Go broker would lose it)
    [_, (start, _, last)] = read_chunks(lines(unrestricted))
    assert start == first_end and last.count() == 1
    assert read_chunks(lines(restricted))[1][2].count() == 0


async def test_single_log_with_mask_as_v2_5_1(tmp_path):
    log = tmp_path / "ip-count.log"
    log.write_text('{"recordingStart":"earlier","recordingEnd":"earlier","recorded":""}\n')  # appended to
    async with broker(proxy_timeout=0.05, ip_count_log=str(log), ip_count_mask="operator key",
                      ip_count_interval="1h") as srv, client() as http:
        await poll_everyone(http, srv)
    written = lines(log)
    assert len(written) == 2 and written[0].startswith('{"recordingStart":"earlier"')
    [(_, _, chunk)] = read_chunks(written[1:])
    expected = IPSetSink(b"operator key")  # every pool in one set, masked with the operator's key
    for ip in RESTRICTED + UNKNOWN + UNRESTRICTED:
        expected.add(ip)
    assert chunk.gob() == expected.counter.gob()
    assert chunk.count() == len(RESTRICTED + UNKNOWN + UNRESTRICTED)


@pytest.mark.parametrize("args,message", [
    (["-ip-count-prefix", "/nonexistent/dir/ips"], "--ip-count-prefix: cannot open /nonexistent/dir/ips-restricted-"),
    (["-ip-count-log", "/nonexistent/dir/ips.log"], "--ip-count-log: cannot open /nonexistent/dir/ips.log"),
    (["-ip-count-prefix", "ips", "-ip-count-interval", "an hour"], "invalid duration 'an hour'"),
    (["-ip-count-prefix", "ips", "-ip-count-interval=-1h"], "must be a positive Go duration"),
])
def test_ip_count_startup_mistakes_are_one_line_and_exit_2(args, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--disable-tls",
                          "--disable-geoip", "--allowed-relay-pattern", "x$", "--addr", "127.0.0.1:0", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
