"""rediss://: nodes on a real redis-server that speaks only TLS (its own port, a self-signed
certificate the nodes are given as their CA): a rendezvous across two nodes, so both the command
connection and the Pub/Sub bus run over TLS; a node that cannot verify the server is refused at start."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from rendezvous.backends import BackendSettings, create_backend
from rendezvous.backends.base import BackendUnavailable
from rendezvous.testing.tls import self_signed_certificate

from .redis_fixture import _free_port, redis_nodes, rendezvous_across

pytestmark = pytest.mark.anyio


@pytest.fixture
def tls_redis(tmp_path, redis_server):  # (redis_server: skipped or failed as the other Redis tests are)
    cert, key = self_signed_certificate(tmp_path)
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server with TLS did not start"
                time.sleep(0.02)
        yield port, cert
    finally:
        process.terminate()
        process.wait(5)


async def test_nodes_rendezvous_over_tls(tls_redis, redis_prefix):
    port, cert = tls_redis
    async with redis_nodes(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", redis_prefix, 2) as (a, b):
        for i in range(3):
            await rendezvous_across(a, b, f"tls{i}", timeout=5)


async def test_a_server_the_node_cannot_verify_is_refused_at_start(tls_redis):
    port, _ = tls_redis
    backend = create_backend("redis", BackendSettings(url=f"rediss://127.0.0.1:{port}/0", prefix="x"))
    with pytest.raises(BackendUnavailable, match="certificate verify failed"):
        await backend.run()
