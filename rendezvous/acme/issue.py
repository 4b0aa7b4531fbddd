"""One certificate order over ACME (RFC 8555), through certbot's ``acme`` library.

:func:`issue` blocks (``acme`` is built on ``requests``): the manager runs it in a thread.
The HTTP-01 key authorizations it needs served are put in ``tokens`` (token → key
authorization) for the challenge listener, and taken out again when the order ends.
Every failure becomes an :class:`AcmeError` whose message is one line saying what went wrong.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import MutableMapping, Sequence
from typing import Any

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
ORDER_DEADLINE = datetime.timedelta(seconds=90)
NETWORK_TIMEOUT = 30  # seconds per HTTP request to the CA


class AcmeError(Exception):
    """A certificate could not be obtained; the message is one line, meant to be logged as is."""


def ca_bundle() -> Any:
    """What verifies the CA's own HTTPS certificate: ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, else the default."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or True


def issue(directory_url: str, account_key: Any, email: str, hostnames: Sequence[str], certificate_key_pem: bytes,
          tokens: MutableMapping[str, str]) -> str:
    """Order a certificate for ``hostnames`` with the key in ``certificate_key_pem``: the full chain (PEM)."""
    try:
        return _issue(directory_url, account_key, email, hostnames, certificate_key_pem, tokens)
    except AcmeError:
        raise
    except Exception as exc:
        raise AcmeError(describe(exc, directory_url)) from exc


def _issue(directory_url: str, account_key: Any, email: str, hostnames: Sequence[str], certificate_key_pem: bytes,
           tokens: MutableMapping[str, str]) -> str:
    import josepy
    from acme import challenges, client, crypto_util, errors, messages

    net = client.ClientNetwork(josepy.JWKEC(key=account_key), alg=josepy.ES256, verify_ssl=ca_bundle(),
                               user_agent="rendezvous", timeout=NETWORK_TIMEOUT)
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
    registration = messages.NewRegistration.from_data(email=email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:  # this key has an account already: use it
        net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
    order = acme.new_order(crypto_util.make_csr(certificate_key_pem, list(hostnames)))
    mine: list[str] = []
    try:
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # the CA reuses an earlier validation
            name = authorization.body.identifier.value
            http01 = [c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            if not http01:
                raise AcmeError(f"the CA offers no HTTP-01 challenge for {name}")
            response, validation = http01[0].response_and_validation(net.key)
            token = http01[0].chall.encode("token")
            tokens[token] = validation
            mine.append(token)
            acme.answer_challenge(http01[0], response)
        deadline = datetime.datetime.now() + ORDER_DEADLINE  # acme compares with naive local time
        order = acme.poll_and_finalize(order, deadline=deadline)
    finally:
        for token in mine:
            tokens.pop(token, None)
    return order.fullchain_pem


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")
_VERIFY = re.compile(r"certificate verify failed: ([^(]+?)\s*\(")


def describe(exc: BaseException, directory_url: str) -> str:
    """One line for an exception raised while talking to the CA."""
    import requests
    from acme import errors, messages

    text = str(exc)
    if isinstance(exc, errors.ValidationError):
        problems = []
        for authorization in exc.failed_authzrs:
            details = [c.error.detail or c.error.code for c in authorization.body.challenges if c.error is not None]
            problems.append(f"{authorization.body.identifier.value}: {'; '.join(d for d in details if d) or 'invalid'}")
        return one_line("the CA refused the challenge for " + ", ".join(problems))
    if isinstance(exc, errors.IssuanceError):
        return one_line(f"the CA did not issue the certificate: {exc.error.detail or exc.error.code}")
    if isinstance(exc, messages.Error):
        return one_line(f"the CA refused the request: {exc.detail or exc.description or exc.typ} ({exc.code})")
    if isinstance(exc, errors.TimeoutError):
        return f"the CA did not finish the order within {int(ORDER_DEADLINE.total_seconds())} s"
    if isinstance(exc, requests.exceptions.SSLError):
        match = _VERIFY.search(text)
        reason = match.group(1) if match else "TLS error"
        return (f"cannot verify the CA's certificate at {directory_url} ({reason}); "
                "set SSL_CERT_FILE or REQUESTS_CA_BUNDLE to trust it")
    if isinstance(exc, requests.exceptions.Timeout):
        return f"cannot reach the CA at {directory_url}: no answer within {NETWORK_TIMEOUT} s"
    if isinstance(exc, requests.exceptions.RequestException):
        match = _ERRNO.search(text)
        return one_line(f"cannot reach the CA at {directory_url}: {match.group(1) if match else type(exc).__name__}")
    if isinstance(exc, OSError) and exc.filename is not None:
        return one_line(f"cannot use the certificate cache: {exc.filename}: {exc.strerror}")
    return one_line(f"{type(exc).__name__}: {text}")


def one_line(text: str) -> str:
    return " ".join(text.split())
