"""Content-addressed storage: ``sha256:<hex>`` refs, friendly names, wasm/zip only."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pathlib
import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from rendezvous.errors import ConfigError

T = TypeVar("T")
WASM, ZIP = "application/wasm", "application/zip"
_REF = re.compile(r"sha256:[0-9a-f]{64}")


class Unsupported(ValueError):
    """Neither WebAssembly nor zip."""


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x00asm"):
        return WASM
    if data.startswith(b"PK\x03\x04"):
        return ZIP
    return None


def accepted_media(data: bytes, media: str | None, strict: bool) -> str:
    """The media type ``data`` is stored with (given, else sniffed); ``strict`` (gen C): only
    WebAssembly and zip, else :class:`Unsupported`."""
    media = media or sniff(data)
    if media not in (WASM, ZIP):
        if strict:
            raise Unsupported("unsupported filetype")
        media = media or "application/octet-stream"
    return media


def ref_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryStorage:
    remote = False  # True: reads may wait on the network (call them with :func:`off_loop`)

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, str]] = {}
        self._names: dict[str, str] = {}
        self._writing = threading.Lock()  # put() may run in worker threads (its writes block on the disk)

    def put(self, data: bytes, name: str | None = None, media: str | None = None, strict: bool = True) -> str:
        """Store ``data``; its ref. ``strict``: only WebAssembly and zip (gen C); gen A's
        upload takes any file (data files for ``loadfs``). Durable when it returns."""
        media = accepted_media(data, media, strict)
        ref = ref_of(data)
        with self._writing:
            index_changed = self._store(ref, data, media)
            if name and self._names.get(name) != ref:
                self._names[name] = ref
                index_changed = True
            if index_changed:
                self._save_names()
        return ref

    def resolve(self, name_or_ref: str) -> str | None:
        if _REF.fullmatch(name_or_ref):
            return name_or_ref if self._has(name_or_ref) else None
        return self._names.get(name_or_ref)

    def names(self) -> dict[str, str]:
        """Friendly name → ref, for every named file."""
        return dict(self._names)

    def get(self, name_or_ref: str) -> tuple[bytes, str, str] | None:
        ref = self.resolve(name_or_ref)
        if ref is None:
            return None
        found = self._load(ref)
        return None if found is None else (found[0], found[1], ref)

    # storage backends override these
    def _store(self, ref: str, data: bytes, media: str) -> bool:
        """Keep the blob; whether the index (:meth:`_save_names`) needs saving."""
        self._blobs[ref] = (data, media)
        return False

    def _has(self, ref: str) -> bool:
        return ref in self._blobs

    def _load(self, ref: str) -> tuple[bytes, str] | None:
        return self._blobs.get(ref)

    def _save_names(self) -> None:
        pass


_TEMP_PREFIX = ".incoming-"  # a write in progress; what a crash leaves is removed on the next start


def write_durably(target: pathlib.Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` so that a crash or power loss leaves either the old file
    or the complete new one: write a temporary file in the same directory, fsync it, rename it
    over ``target``, fsync the directory (which makes the rename itself durable)."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryStorage(MemoryStorage):
    """Blobs as files named by their hex digest, plus ``lookup.json`` (names and media types).
    Uploads survive a restart, and a power loss: every write is fsynced (file and directory)
    before the upload is acknowledged."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            for leftover in path.glob(_TEMP_PREFIX + "*"):  # a write a crash interrupted
                leftover.unlink()
            lookup = path / "lookup.json"
            if lookup.exists():
                data = json.loads(lookup.read_text())
                self._names = dict(data.get("names", {}))
                self._media = dict(data.get("media", {}))
            else:
                self._media = {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"WASIMOFF_FILESTORAGE {path}: {exc}") from None

    def _file(self, ref: str) -> pathlib.Path:
        return self.path / ref.split(":", 1)[1]

    def _store(self, ref: str, data: bytes, media: str) -> bool:
        target = self._file(ref)
        try:
            complete = target.stat().st_size == len(data)
        except FileNotFoundError:
            complete = False
        if not complete:  # (a blob a crash truncated before writes were durable is rewritten)
            write_durably(target, data)
        if self._media.get(ref) == media:
            return False
        self._media[ref] = media
        return True

    def _has(self, ref: str) -> bool:
        return self._file(ref).exists()

    def _load(self, ref: str) -> tuple[bytes, str] | None:
        try:
            data = self._file(ref).read_bytes()
        except OSError:
            return None
        return data, self._media.get(ref) or sniff(data) or "application/octet-stream"

    def _save_names(self) -> None:
        write_durably(self.path / "lookup.json", json.dumps({"names": self._names, "media": self._media}).encode())


CHUNK = 1 << 20  # bytes per Redis value of a stored file
CACHE_BYTES = 256 << 20  # files kept in a node's memory (content addressed: never stale)


class RedisStorage(MemoryStorage):
    """Uploads in Redis, for every node of a cluster (the ``redis`` backend): each file in 1 MiB
    chunks ``<P>:blob:<hex>:<i>`` (written once, SET NX), then its media type in the ``<P>:media``
    hash (which makes it visible), friendly names in ``<P>:names``; ``P = <prefix>:{wasimoff}``.
    A node keeps the files it read or wrote in an LRU cache (256 MiB). As durable as Redis is
    (AOF: ``docs/operations.md``). Calls are blocking (redis-py's client): callers on the event
    loop use :func:`off_loop`."""

    remote = True

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__()
        import redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)
        self._key = f"{prefix}:{{wasimoff}}"
        self._cache: collections.OrderedDict[str, tuple[bytes, str]] = collections.OrderedDict()
        self._cached = 0

    def _keep(self, ref: str, data: bytes, media: str) -> None:
        with self._writing:
            if ref in self._cache:
                self._cache.move_to_end(ref)
                return
            self._cache[ref] = (data, media)
            self._cached += len(data)
            while self._cached > CACHE_BYTES and len(self._cache) > 1:
                _, (old, _) = self._cache.popitem(last=False)
                self._cached -= len(old)

    def put(self, data: bytes, name: str | None = None, media: str | None = None, strict: bool = True) -> str:
        media = accepted_media(data, media, strict)
        ref = ref_of(data)
        digest = ref.split(":", 1)[1]
        if ref not in self._cache and not self._redis.hexists(self._key + ":media", ref):
            pipe = self._redis.pipeline(transaction=False)
            for i in range(0, max(1, len(data)), CHUNK):
                pipe.set(f"{self._key}:blob:{digest}:{i // CHUNK}", data[i:i + CHUNK], nx=True)
            pipe.hset(self._key + ":sizes", ref, len(data))
            pipe.hset(self._key + ":media", ref, media)  # last: the file is complete when it is seen
            pipe.execute()
        if name:
            self._redis.hset(self._key + ":names", name, ref)
        self._keep(ref, data, media)
        return ref

    def resolve(self, name_or_ref: str) -> str | None:
        if _REF.fullmatch(name_or_ref):
            return name_or_ref if self._has(name_or_ref) else None
        ref = self._redis.hget(self._key + ":names", name_or_ref)
        return None if ref is None else ref.decode()

    def names(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self._redis.hgetall(self._key + ":names").items()}

    def _has(self, ref: str) -> bool:
        return ref in self._cache or bool(self._redis.hexists(self._key + ":media", ref))

    def _load(self, ref: str) -> tuple[bytes, str] | None:
        cached = self._cache.get(ref)
        if cached is not None:
            return cached
        media, size = self._redis.hmget(self._key + ":media", ref)[0], self._redis.hget(self._key + ":sizes", ref)
        if media is None or size is None:
            return None
        digest, length = ref.split(":", 1)[1], int(size)
        chunks = self._redis.mget([f"{self._key}:blob:{digest}:{i}" for i in range(max(1, -(-length // CHUNK)))])
        if any(c is None for c in chunks):
            return None
        data = b"".join(chunks)
        if ref_of(data) != ref:  # (never expected: chunks are written once)
            return None
        self._keep(ref, data, media.decode())
        return data, media.decode()


async def off_loop(storage: MemoryStorage, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, in a worker thread when ``storage`` is remote (Redis), else at once
    (a local read keeps its order with the tasks around it)."""
    if storage.remote:
        return await anyio.to_thread.run_sync(function, *args)
    return function(*args)


def open_storage(spec: str, backend: object = None) -> MemoryStorage:
    """``:memory:`` / ``memory://`` (default), ``dirfs://path`` or a plain path. On a distributed
    ``backend`` (redis) the default keeps uploads in Redis, for every node."""
    settings = getattr(backend, "settings", None)
    if getattr(backend, "distributed", False) and settings is not None:
        if spec not in (":memory:", "memory://", "", "redis"):
            raise ConfigError("WASIMOFF_FILESTORAGE: on a cluster (the redis backend) uploads are kept in Redis, "
                              "for every node; leave it unset")
        return RedisStorage(settings.url, settings.prefix)
    if spec in (":memory:", "memory://", ""):
        return MemoryStorage()
    if spec.startswith("boltdb://"):
        raise ConfigError("WASIMOFF_FILESTORAGE: boltdb:// is not supported yet (use dirfs://PATH or :memory:)")
    path = spec[len("dirfs://"):] if spec.startswith("dirfs://") else spec
    return DirectoryStorage(pathlib.Path(path))
