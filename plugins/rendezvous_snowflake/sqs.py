"""SQS rendezvous (upstream v2.9.0+, ``broker/sqs.go``): client polls arrive as messages.

The broker creates (or opens) its queue with a 300 s retention, long-polls it (10 messages,
15 s), and for each message carrying a string attribute ``ClientID`` creates the queue
``snowflake-client-<ClientID>``, runs the message body through the same rendezvous as
``/client`` and sends the JSON reply on that queue; every message it received is deleted
afterwards, with or without ``ClientID``. Every 30 s it deletes the client queues last
modified more than 2 minutes ago.

Imported only when ``--broker-sqs-name`` is set: the AWS SDK (boto3, the ``sqs`` extra) is
optional. The endpoint, credentials and retries come from the standard AWS configuration
(``AWS_ENDPOINT_URL_SQS``, ``AWS_ACCESS_KEY_ID``, ``~/.aws``, ...), as the Go SDK's do. boto3
is synchronous: the long poll runs on a daemon thread of its own (a stop never waits for it),
the short calls on anyio's worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from rendezvous.errors import ConfigError

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:  # pragma: no cover - the profile checks this before importing us
    boto3 = None

CLIENT_QUEUE_PREFIX = "snowflake-client-"
RETENTION_SECONDS = 300
RECEIVE_MAX_MESSAGES = 10
RECEIVE_WAIT_SECONDS = 15
CLEANUP_INTERVAL = 30.0
CLEANUP_AGE = 120.0
ERROR_BACKOFF = 1.0  # Go retries a failed receive at once; one second spares a busy loop


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class SqsRendezvous:
    """The broker's side of SQS rendezvous; ``rendezvous(body) -> reply`` is the profile's."""

    def __init__(self, queue_name: str, region: str, rendezvous: Callable[[bytes], Awaitable[bytes]], log: Any) -> None:
        if boto3 is None:
            raise ConfigError("--broker-sqs-name needs the AWS SDK: pip install 'rendezvous[sqs]' (boto3)")
        self.rendezvous = rendezvous
        self.log = log
        self.cleanup_interval = CLEANUP_INTERVAL
        self.cleanup_age = CLEANUP_AGE
        self._stop = threading.Event()
        session = boto3.session.Session(region_name=region)
        try:
            credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigError(f"--broker-sqs-name: cannot read AWS credentials: {_one_line(exc)}") from None
        if credentials is None:
            raise ConfigError("--broker-sqs-name: no AWS credentials found in the standard AWS configuration "
                              "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, ...)")
        config = botocore.config.Config(connect_timeout=10, read_timeout=RECEIVE_WAIT_SECONDS + 15,
                                        retries={"mode": "standard", "max_attempts": 3})
        try:
            self.client = session.client("sqs", config=config)
            # As Go: create the queue, or open it if it exists with these attributes.
            reply = self.client.create_queue(QueueName=queue_name,
                                             Attributes={"MessageRetentionPeriod": str(RETENTION_SECONDS)})
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise ConfigError(f"--broker-sqs-name: cannot create or open SQS queue {queue_name!r}: {_one_line(exc)}") from None
        self.queue_url: str = reply["QueueUrl"]

    async def run(self) -> None:
        self.log.info("SQS rendezvous: polling for messages", queue=self.queue_url)
        token = anyio.lowlevel.current_token()
        async with anyio.create_task_group() as tg:
            threading.Thread(target=self._receive_forever, args=(tg, token), name="sqs-receive", daemon=True).start()
            tg.start_soon(self._cleanup_forever)
            try:
                await anyio.sleep_forever()
            finally:
                self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    # -- receiving (its own thread) ---------------------------------------------------------
    def _receive_forever(self, tg: Any, token: Any) -> None:
        while not self._stop.is_set():
            try:
                reply = self.client.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=RECEIVE_MAX_MESSAGES,
                    WaitTimeSeconds=RECEIVE_WAIT_SECONDS, MessageAttributeNames=["All"])
            except Exception as exc:  # a network or service error: log and poll again
                if self._stop.is_set():
                    return
                self._call(token, self._log_error, "SQS rendezvous: error while polling for messages", exc)
                self._stop.wait(ERROR_BACKOFF)
                continue
            for message in reply.get("Messages", ()):
                if self._stop.is_set() or not self._call(token, tg.start_soon, self.handle_message, message):
                    return

    def _call(self, token: Any, function: Callable[..., Any], *args: Any) -> bool:
        """Run ``function`` on the event loop; False once the loop is gone."""
        try:
            anyio.from_thread.run_sync(function, *args, token=token)
        except Exception:
            self._stop.set()
            return False
        return True

    def _log_error(self, event: str, exc: BaseException) -> None:
        self.log.error(event, error=_one_line(exc))

    # -- one message ----------------------------------------------------------------------------
    async def handle_message(self, message: dict[str, Any]) -> None:
        try:
            await self._answer(message)
        finally:
            try:
                await anyio.to_thread.run_sync(lambda: self.client.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]))
            except Exception as exc:
                self._log_error("SQS rendezvous: cannot delete a message", exc)

    async def _answer(self, message: dict[str, Any]) -> None:
        client_id = message.get("MessageAttributes", {}).get("ClientID", {}).get("StringValue")
        if client_id is None:
            self.log.warning("SQS rendezvous: a message without ClientID; ignored")
            return
        try:
            created = await anyio.to_thread.run_sync(lambda: self.client.create_queue(QueueName=CLIENT_QUEUE_PREFIX + client_id))
        except Exception as exc:
            self._log_error("SQS rendezvous: cannot create a client's answer queue", exc)
            return
        reply = await self.rendezvous(message.get("Body", "").encode())
        try:
            await anyio.to_thread.run_sync(lambda: self.client.send_message(
                QueueUrl=created["QueueUrl"], MessageBody=reply.decode()))
        except Exception as exc:
            self._log_error("SQS rendezvous: cannot send an answer", exc)

    # -- client queues older than 2 minutes -------------------------------------------------------
    async def _cleanup_forever(self) -> None:
        while True:
            await anyio.sleep(self.cleanup_interval)
            try:
                await anyio.to_thread.run_sync(self.cleanup_once)
            except Exception as exc:
                self._log_error("SQS rendezvous: client queue cleanup failed", exc)

    def cleanup_once(self, now: float | None = None) -> int:
        """Delete the client queues last modified before ``now - cleanup_age``; their count."""
        cutoff = (time.time() if now is None else now) - self.cleanup_age
        urls: list[str] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"QueueNamePrefix": CLIENT_QUEUE_PREFIX, "MaxResults": 1000}
            if token:
                kwargs["NextToken"] = token
            try:
                page = self.client.list_queues(**kwargs)
            except Exception as exc:  # the next round tries again
                self._log_error("SQS rendezvous: cannot list client queues", exc)
                break
            urls += page.get("QueueUrls", [])
            token = page.get("NextToken")
            if not token:
                break
        deleted = 0
        for url in urls:
            if CLIENT_QUEUE_PREFIX not in url:
                continue
            try:
                attributes = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=["LastModifiedTimestamp"])
                # Epoch seconds; SQS sends an integer, some emulators (moto) a decimal: Go's
                # ParseInt skips those queues forever, we read the seconds.
                modified = float(attributes["Attributes"]["LastModifiedTimestamp"])
            except Exception:  # being deleted already, or a bad value: skip it this round
                continue
            if modified < cutoff:
                try:
                    self.client.delete_queue(QueueUrl=url)
                    deleted += 1
                except Exception as exc:
                    self._log_error("SQS rendezvous: cannot delete a client queue", exc)
        return deleted
