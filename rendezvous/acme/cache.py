"""The certificate cache directory, in the layout of Go's ``autocert.DirCache``.

A Go broker's ``acme-cert-cache`` keeps working after a migration, and back:

- ``acme_account+key``: the ACME account's ECDSA P-256 key (PEM);
- ``<first hostname>``: the certificate's private key, then the full chain (leaf first), PEM —
  one file, so that key and chain are always replaced together (``ssl`` loads both from it).

The directory is made 0700 and files are written 0600 through a temporary file and a rename,
so a reader (a restart, a reload) never sees half a file.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from rendezvous.acme.policy import Held

ACCOUNT_KEY = "acme_account+key"
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.S)


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # "EC PRIVATE KEY", as Go's x509.MarshalECPrivateKey writes it.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def held_from_pem(data: bytes) -> Held | None:
    """The dates and names of a cache entry's leaf, or None when it is not key + matching chain."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    chain = _PEM_CERTIFICATE.findall(data)
    if not chain:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
        leaf = x509.load_pem_x509_certificate(chain[0])
    except (ValueError, TypeError, UnsupportedAlgorithm):  # no key, an encrypted one, a broken block
        return None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, raw) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, raw):
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return Held(leaf.not_valid_before_utc, leaf.not_valid_after_utc, names, leaf.serial_number)


class CertificateCache:
    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    def path(self, name: str) -> pathlib.Path:
        return self.directory / name

    def read(self, name: str) -> bytes | None:
        """A file's content, None if there is none (other OSErrors propagate)."""
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> pathlib.Path:
        """Replace ``name`` atomically with a 0600 file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(name)
        temporary = target.with_name(f".{name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # an existing temporary file keeps its mode otherwise
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return target

    def account_key(self) -> Any:
        """The account key, made and stored on first use."""
        from cryptography.hazmat.primitives import serialization

        data = self.read(ACCOUNT_KEY)
        if data is not None:
            return serialization.load_pem_private_key(data, password=None)
        key = new_key()
        self.write(ACCOUNT_KEY, key_pem(key))
        return key

    def load(self, name: str) -> Held | None:
        data = self.read(name)
        return None if data is None else held_from_pem(data)

    def store(self, name: str, key: Any, fullchain_pem: bytes) -> pathlib.Path:
        if not fullchain_pem.endswith(b"\n"):
            fullchain_pem += b"\n"
        return self.write(name, key_pem(key) + fullchain_pem)
