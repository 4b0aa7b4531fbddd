"""The storage API both generations' providers and clients use: ``POST /api/storage/upload`` and
``GET /api/storage/{name-or-ref}`` (with single ``Range`` requests, as http.ServeContent)."""

from __future__ import annotations

from urllib.parse import parse_qs

import anyio.to_thread

from rendezvous.transports.base import ExchangeRoute, HttpRequest, HttpResponse
from rendezvous_wasimoff.storage import MemoryStorage, Unsupported, off_loop

TEXT = ("content-type", "text/plain; charset=utf-8")
CORS = ("access-control-allow-origin", "*")


class StorageRoutes:
    def __init__(self, storage: MemoryStorage, max_upload: int) -> None:
        self.storage = storage
        self.routes = [
            ExchangeRoute("/api/storage/upload", self.upload, frozenset(), max_upload, 413),
            ExchangeRoute("/api/storage/*", self.download, frozenset({"GET", "HEAD"})),
        ]

    async def upload(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse.text(405, "Method Not Allowed\n")
        name = parse_qs(request.query).get("name", [None])[0]
        try:
            ref = await anyio.to_thread.run_sync(self.storage.put, request.body, name)  # hashing, fsync
        except Unsupported:
            return HttpResponse.text(415, "unsupported filetype\n")
        return HttpResponse(200, f"{ref}\n".encode(), (TEXT,))

    async def download(self, request: HttpRequest) -> HttpResponse:
        storage = self.storage
        found = await off_loop(storage, storage.get, request.path[len("/api/storage/"):])  # (from Redis: not on the loop)
        if found is None:
            return HttpResponse.text(404, "File not Found in storage\n")
        data, media, ref = found
        headers = [("content-type", media), ("x-wasimoff-ref", ref), CORS, ("accept-ranges", "bytes")]
        byte_range = _parse_range(request.headers.get("range"), len(data))
        if byte_range is None:
            return HttpResponse(200, data, tuple(headers))
        if isinstance(byte_range, str):  # "invalid"
            return HttpResponse(416, b"", (*headers, ("content-range", f"bytes */{len(data)}")))
        start, end = byte_range
        return HttpResponse(206, data[start:end + 1], (*headers, ("content-range", f"bytes {start}-{end}/{len(data)}")))


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single ``bytes=a-b`` / ``a-`` / ``-n`` range (what http.ServeContent serves)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, _, last = spec.partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)
