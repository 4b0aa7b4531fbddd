"""The ACME manager: keeps a certificate for the configured hostnames, from the cache or the CA.

At start it serves what the cache holds (even an expired certificate: better than nothing
while the CA is asked). :meth:`AcmeManager.run` asks the CA whenever :class:`RenewalPlan` says
so, in a thread (the ``acme`` library blocks), writes the result to the cache and reloads every
TLS context serving the cache file (:func:`rendezvous.tls.reload_certificate`), so new
handshakes get the new chain without a restart. A failure is logged as one line with its
reason and retried with backoff; the certificate on hand keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import pathlib
import ssl
import threading
from collections.abc import Callable
from typing import Any

import anyio

from rendezvous import tls
from rendezvous.acme.cache import CertificateCache, held_from_pem, key_pem, new_key
from rendezvous.acme.issue import AcmeError, issue, one_line
from rendezvous.acme.policy import Held, RenewalPlan, check_hostname

LONGEST_SLEEP = 3600.0  # re-check at least hourly (suspend, clock changes)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AcmeManager:
    def __init__(self, hostnames: tuple[str, ...], email: str, cache_dir: pathlib.Path, directory_url: str, log: Any,
                 now: Callable[[], datetime.datetime] = _utcnow, plan: RenewalPlan | None = None) -> None:
        self.hostnames = hostnames
        self.email = email
        self.directory_url = directory_url
        self.cache = CertificateCache(cache_dir)
        self.name = hostnames[0]  # the cache entry, named as Go's autocert names it
        self.certfile = self.cache.path(self.name)
        self.plan = plan or RenewalPlan(hostnames)
        self.tokens: dict[str, str] = {}  # HTTP-01 token -> key authorization
        self.log = log
        self.now = now
        self.ready = anyio.Event()  # a certificate is in certfile
        self.issued = 0  # certificates obtained from the CA by this process

    @classmethod
    def from_settings(cls, settings: Any, log: Any) -> AcmeManager:
        hostnames = tuple(dict.fromkeys(check_hostname(name) for name in settings.acme_hostnames))
        return cls(hostnames, settings.acme_email, settings.acme_cert_cache, settings.acme_directory_url,
                   log)

    @property
    def held(self) -> Held | None:
        return self.plan.held

    def load_cached(self) -> None:
        """Serve the cached certificate, if the cache has one for every hostname."""
        try:
            held = self.cache.load(self.name)
        except OSError as exc:
            self.log.warning("acme: cannot read the certificate cache", reason=f"{exc.filename}: {exc.strerror}")
            return
        if self.plan.usable(held):
            assert held is not None
            self.plan.use(held)
            self.ready.set()
            self.log.info("acme: certificate from the cache", hostnames=list(self.hostnames), file=str(self.certfile),
                          not_after=held.not_after.isoformat(), renew_at=self.plan.next_attempt(self.now()).isoformat())

    async def run(self) -> None:
        """Obtain and renew the certificate until cancelled."""
        while True:
            now = self.now()
            wait = (self.plan.next_attempt(now) - now).total_seconds()
            if wait > 0:
                await anyio.sleep(min(wait, LONGEST_SLEEP))
                continue
            await self.attempt()

    async def attempt(self) -> bool:
        """Ask the CA for a certificate once; True if one was obtained and is being served."""
        try:
            fullchain, key = await _in_daemon_thread(self._obtain)
            path = self.cache.store(self.name, key, fullchain.encode())
            held = held_from_pem(path.read_bytes())
            if held is None:
                raise AcmeError("the CA's certificate does not match the key it was ordered for")
            reloaded = tls.reload_certificate(self.certfile)
        except AcmeError as exc:
            self._failed(str(exc))
            return False
        except ssl.SSLError as exc:  # before OSError, its base class
            self._failed(one_line(f"cannot load the new certificate from {self.certfile}: {exc}"))
            return False
        except OSError as exc:
            where = f"{exc.filename}: {exc.strerror}" if exc.filename else one_line(str(exc))
            self._failed(f"cannot use the certificate cache: {where}")
            return False
        self.plan.use(held)
        self.issued += 1
        self.ready.set()
        self.log.info("acme: certificate obtained", hostnames=list(self.hostnames), serial=f"{held.serial:x}",
                      not_after=held.not_after.isoformat(), renew_at=self.plan.next_attempt(self.now()).isoformat(),
                      reloaded=reloaded)
        return True

    def _failed(self, reason: str) -> None:
        delay = self.plan.failed(self.now())
        self.log.warning("acme: certificate not obtained", reason=reason, hostnames=list(self.hostnames),
                         retry_in=int(delay.total_seconds()), serving="cached" if self.ready.is_set() else "nothing yet")

    def _obtain(self) -> tuple[str, Any]:
        """In a thread: the account key (made on first use), a fresh certificate key, the order."""
        try:
            account_key = self.cache.account_key()
        except ValueError as exc:
            raise AcmeError(f"the account key {self.cache.path('acme_account+key')} is unreadable: {exc}") from None
        key = new_key()
        return issue(self.directory_url, account_key, self.email, self.hostnames, key_pem(key), self.tokens), key


async def _in_daemon_thread(func: Callable[[], Any]) -> Any:
    """``func()`` in a daemon thread: a request hanging on the CA must not hold up the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = func()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="acme", daemon=True).start()
    return await future
