"""Certificates: PEM files, or ephemeral ones that WebTransport's serverCertificateHashes accepts.

:func:`server_context` makes the TLS context of an HTTPS listener and remembers which file it
serves; :func:`reload_certificate` loads a replaced file into every such context, which
affects the handshakes that follow (ACME renewals reach clients without a restart).

Chromium pins a certificate by hash only if it is ECDSA P-256 and valid for at most 14 days in
total (spec webtransport.md, pitfalls 1–2). :class:`CertificateRotation` keeps one such
certificate current and replaces it well before it expires; it is plain state given the time.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pathlib
import ssl
import weakref

import attrs

VALIDITY = datetime.timedelta(days=13)  # < 14 days in total, backdating included
BACKDATE = datetime.timedelta(minutes=5)


#: live server contexts -> the (certfile, keyfile) they serve
_SERVING: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[str, str | None]] = weakref.WeakKeyDictionary()


def server_context(certfile: os.PathLike[str] | str, keyfile: os.PathLike[str] | str | None = None) -> ssl.SSLContext:
    """A server-side TLS context serving ``certfile`` (the key from ``keyfile``, else from ``certfile``)."""
    files = (os.path.abspath(certfile), None if keyfile is None else os.path.abspath(keyfile))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*files)
    _SERVING[context] = files
    return context


def pem_problem(cert_pem: bytes | None, key_pem: bytes | None) -> tuple[str, str] | None:
    """What is wrong with a certificate chain and its private key as PEM, as ``("cert" | "key",
    reason)``, or None. Without ``key_pem`` the key is looked for in ``cert_pem`` (as
    ``load_cert_chain`` does); without ``cert_pem`` only the key is checked. Sans-IO: the
    configuration check reads the files and names them in its message."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    chain = None
    if cert_pem is not None:
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            return ("cert", "not a PEM certificate")
    in_cert = key_pem is None
    source = cert_pem if in_cert else key_pem
    if source is None or (in_cert and b"PRIVATE KEY-----" not in source):
        return ("cert", "no private key: give the key file too (or put the key in this file)") if chain else None
    try:
        key = serialization.load_pem_private_key(source, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return ("cert" if in_cert else "key", "the private key is encrypted (give it unencrypted)")
    except (ValueError, UnsupportedAlgorithm):
        return ("cert" if in_cert else "key", "not a PEM private key (or one of an unsupported kind)")
    if chain is None:
        return None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return ("key", "this private key does not belong to the certificate")
    return None


def reload_certificate(certfile: os.PathLike[str] | str) -> int:
    """Load ``certfile`` again into every live context serving it; how many were reloaded."""
    path = os.path.abspath(certfile)
    contexts = [(context, files) for context, files in list(_SERVING.items()) if files[0] == path]
    for context, files in contexts:
        context.load_cert_chain(*files)
    return len(contexts)


@attrs.frozen
class Certificate:
    certificate: object  # cryptography x509.Certificate
    private_key: object
    sha256: str  # hex SHA-256 of the DER certificate (serverCertificateHashes)
    not_after: datetime.datetime
    ephemeral: bool


def ephemeral_certificate(now: datetime.datetime, validity: datetime.timedelta = VALIDITY,
                          hostnames: tuple[str, ...] = ("localhost",)) -> Certificate:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if validity + BACKDATE > datetime.timedelta(days=14):
        raise ValueError("WebTransport certificate hashes need a total validity of at most 14 days")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rendezvous webtransport")])
    sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    not_before, not_after = now - BACKDATE, now + validity
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Certificate(cert, key, hashlib.sha256(der).hexdigest(), not_after, True)


def certificate_from_files(certfile: pathlib.Path, keyfile: pathlib.Path) -> Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Certificate(cert, key, hashlib.sha256(der).hexdigest(), cert.not_valid_after_utc, False)


class CertificateRotation:
    """The current ephemeral certificate, replaced once ``renew_after`` of its life has passed."""

    def __init__(self, now: datetime.datetime, validity: datetime.timedelta = VALIDITY, renew_after: float = 0.5,
                 make=ephemeral_certificate) -> None:
        self.validity = validity
        self.renew_after = renew_after
        self._make = make
        self.current = make(now, validity)
        self._issued = now

    def renew_at(self) -> datetime.datetime:
        return self._issued + self.validity * self.renew_after

    def advance(self, now: datetime.datetime) -> Certificate | None:
        """A new certificate if the current one is due for renewal, else None."""
        if now < self.renew_at():
            return None
        self.current = self._make(now, self.validity)
        self._issued = now
        return self.current
