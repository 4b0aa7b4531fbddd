"""SQS rendezvous against a real SQS emulator (moto's server mode, started here on 127.0.0.1).

The client follows upstream's ``client/lib/rendezvous_sqs.go``: it sends its poll with a
random hex ``ClientID`` attribute, waits a second, looks its answer queue up (5 tries, 1 s
apart), then long-polls it (5 tries of 20 s). The proxy polls over HTTP.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import anyio
import httpx
import pytest

from rendezvous.testing import serve, wait_until
from rendezvous_snowflake.messages import encode_client_request

from .test_snowflake import ANSWER, PATTERN, SDP_OFFER, answer, descriptor_value, dump, poll, wait_polling

boto3 = pytest.importorskip("boto3")
pytestmark = pytest.mark.anyio
REGION = "us-east-1"
QUEUE = "snowflake-broker"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url():
    """A moto server of our own on 127.0.0.1, for the whole module."""
    command = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if command is None:
        pytest.fail("moto_server is not installed (pip install 'moto[server]', in the test extra)")
    port = _free_port()
    proc = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def aws_env(moto_url, monkeypatch):
    """The standard AWS configuration pointing at moto; a fresh moto state per test."""
    httpx.post(moto_url + "/moto-api/reset", timeout=5)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {"AWS_ENDPOINT_URL_SQS": moto_url, "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, **CREDENTIALS}


def sqs():
    return boto3.client("sqs", region_name=REGION)  # endpoint and credentials from the environment


def broker(tmp_path, **settings):
    (tmp_path / "geoip").write_text(f"{int(ipaddress.IPv4Address('129.97.208.0'))},{int(ipaddress.IPv4Address('129.97.208.255'))},CA\n")
    (tmp_path / "geoip6").write_text("")
    base = {"disable_tls": True, "geoipdb": str(tmp_path / "geoip"), "geoip6db": str(tmp_path / "geoip6"),
            "allowed_relay_pattern": PATTERN, "proxy_timeout": 5.0, "client_timeout": 5.0, "metrics_interval": 3600.0,
            "broker_sqs_name": QUEUE, "broker_sqs_region": REGION}
    return serve("snowflake", {**base, **settings})


class UpstreamSqsClient:
    """``sqsRendezvous.Exchange`` of upstream's client, step for step (blocking; run in a thread)."""

    def __init__(self, queue_url: str, wait: float = 1.0, retries: int = 5) -> None:
        self.client = sqs()
        self.queue_url = queue_url
        self.wait = wait
        self.retries = retries
        self.client_id = secrets.token_bytes(8).hex()

    def exchange(self, poll_request: bytes) -> bytes:
        self.client.send_message(
            QueueUrl=self.queue_url, MessageBody=poll_request.decode(),
            MessageAttributes={"ClientID": {"DataType": "String", "StringValue": self.client_id}})
        time.sleep(self.wait)  # "wait for client queue to be created by the broker"
        answer_queue, error = None, None
        for _ in range(self.retries):
            try:
                answer_queue = self.client.get_queue_url(QueueName="snowflake-client-" + self.client_id)["QueueUrl"]
                break
            except self.client.exceptions.ClientError as exc:
                error = exc
                time.sleep(self.wait)
        if answer_queue is None:
            raise error
        for attempt in range(self.retries):
            got = self.client.receive_message(QueueUrl=answer_queue, MaxNumberOfMessages=1, WaitTimeSeconds=20)
            if got.get("Messages"):
                return got["Messages"][0]["Body"].encode()
            time.sleep(attempt / 2 + self.wait)
        return b""


def queue_counts(url):
    attributes = sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


async def test_sqs_rendezvous_with_an_http_proxy(aws_env, tmp_path):
    async with broker(tmp_path) as srv, httpx.AsyncClient(timeout=30) as http:
        runtime = srv.runtimes["snowflake"]
        url = runtime.sqs.queue_url
        attributes = sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])["Attributes"]
        assert attributes["MessageRetentionPeriod"] == "300"
        got = {}

        async def proxy():
            reply = (await poll(http, srv, sid="sqs-proxy", nat="unrestricted")).json()
            got["poll"] = reply
            got["answer"] = (await answer(http, srv, "sqs-proxy")).content

        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy)
            await wait_polling(srv)
            client = UpstreamSqsClient(url)
            reply = await anyio.to_thread.run_sync(client.exchange, encode_client_request(SDP_OFFER, "restricted"))
        assert json.loads(reply) == {"answer": ANSWER}
        assert got["poll"]["Status"] == "client match" and got["poll"]["Offer"] == SDP_OFFER
        assert got["poll"]["NAT"] == "restricted"
        assert got["answer"] == b'{"Status":"success"}'
        # what the broker consumed is deleted
        await wait_until(lambda: queue_counts(url) == (0, 0), timeout=10, interval=0.2)
        # counted under the SQS method, geolocated by the offer's candidate (not an HTTP peer)
        prom = (await http.get(srv.url + "/prometheus")).text
        assert ('snowflake_rounded_client_poll_total{cc="CA",nat="restricted",rendezvous_method="sqs",status="matched"} 8.0'
                in prom)
        text = dump(srv)
        assert descriptor_value(text, "client-sqs-count") == "8"
        assert descriptor_value(text, "client-sqs-ips") == "CA=8"
        assert descriptor_value(text, "client-snowflake-match-count") == "8"
        assert descriptor_value(text, "client-http-count") == "0"


async def test_sqs_no_proxy_bad_poll_and_message_without_client_id(aws_env, tmp_path):
    async with broker(tmp_path) as srv:
        url = srv.runtimes["snowflake"].sqs.queue_url
        denied = await anyio.to_thread.run_sync(UpstreamSqsClient(url).exchange, encode_client_request(SDP_OFFER, "unknown"))
        assert denied == b'{"error":"no snowflake proxies currently available"}'
        bad = await anyio.to_thread.run_sync(UpstreamSqsClient(url).exchange, b"2.0\n{}")
        assert bad == b'{"error":"unsupported message version"}'
        # no ClientID: ignored, no queue made, but deleted all the same
        sqs().send_message(QueueUrl=url, MessageBody=encode_client_request(SDP_OFFER, "unknown").decode())
        await wait_until(lambda: queue_counts(url) == (0, 0), timeout=20, interval=0.2)
        client_queues = sqs().list_queues(QueueNamePrefix="snowflake-client-").get("QueueUrls", [])
        assert len(client_queues) == 2  # the two clients' answer queues only
        text = dump(srv)
        assert descriptor_value(text, "client-sqs-count") == "8"
        assert descriptor_value(text, "client-denied-count") == "8"


async def test_sqs_cleanup_deletes_client_queues_older_than_two_minutes(aws_env, tmp_path):
    async with broker(tmp_path) as srv:
        handler = srv.runtimes["snowflake"].sqs
        for name in ("snowflake-client-old", "snowflake-client-new", "unrelated"):
            sqs().create_queue(QueueName=name)
        assert await anyio.to_thread.run_sync(handler.cleanup_once) == 0  # all younger than 2 min
        # two minutes and a second later, every client queue is stale; the others stay
        assert await anyio.to_thread.run_sync(handler.cleanup_once, time.time() + 121) == 2
        names = sorted(u.rsplit("/", 1)[1] for u in sqs().list_queues().get("QueueUrls", []))
        assert names == sorted([QUEUE, "unrelated"])


async def test_sqs_cleanup_runs_on_its_interval(aws_env, tmp_path):
    async with broker(tmp_path) as srv:
        handler = srv.runtimes["snowflake"].sqs
        sqs().create_queue(QueueName="snowflake-client-stale")
        handler.cleanup_age = -1.0  # everything is stale
        handler.cleanup_interval = 0.2

        def gone():
            return not sqs().list_queues(QueueNamePrefix="snowflake-client-").get("QueueUrls")

        # the loop already sleeps on the 30 s interval: it takes the short one after that
        async with anyio.create_task_group() as tg:
            tg.start_soon(handler._cleanup_forever)
            await wait_until(gone, timeout=10, interval=0.2)
            tg.cancel_scope.cancel()


def _serve_args(*extra):
    return [sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--disable-tls", "--disable-geoip",
            "--addr", "127.0.0.1:0", "--allowed-relay-pattern", PATTERN, *extra]


def _env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RENDEZVOUS_", "AWS_"))}
    e.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    e.update(extra)
    return e


@pytest.mark.parametrize("args,environ,message", [
    (["--broker-sqs-name", "q"], {}, "--broker-sqs-name needs --broker-sqs-region"),
    (["-broker-sqs-name", "q", "-broker-sqs-region", REGION], {}, "--broker-sqs-name: no AWS credentials found"),
    (["--broker-sqs-name", "q", "--broker-sqs-region", REGION],
     {**CREDENTIALS, "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9"}, "cannot create or open SQS queue 'q'"),
])
def test_sqs_startup_mistakes_are_one_line_and_exit_2(args, environ, message):
    out = subprocess.run(_serve_args(*args), env=_env(**environ), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_profile_imports_no_aws_library_without_sqs():
    code = ("import sys, anyio\n"
            "from rendezvous.testing import serve\n"
            "async def main():\n"
            "    async with serve('snowflake', {'disable_tls': True, 'disable_geoip': True}):\n"
            "        pass\n"
            "anyio.run(main)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'aiobotocore')))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
