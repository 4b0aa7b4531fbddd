"""AMP cache rendezvous: the request encoded in the URL path, the reply in "AMP armor".

Byte for byte as upstream's ``common/amp`` (path codec, armor encoder) and ``broker/amp.go``;
:func:`dearmor` is the client side's armor decoder, for tests and load generators.
"""

from __future__ import annotations

import base64
import binascii
import html.parser
import re

_LINE = 32
_LINES_PER_PRE = (32768 - 1) // (_LINE + 1)  # 992
_HEAD = (
    "<!doctype html>\n<html amp>\n<head>\n<meta charset=\"utf-8\">\n"
    "<script async src=\"https://cdn.ampproject.org/v0.js\"></script>\n"
    "<link rel=\"canonical\" href=\"#\">\n"
    "<meta name=\"viewport\" content=\"width=device-width\">\n"
    "<style amp-boilerplate>body{-webkit-animation:-amp-start 8s steps(1,end) 0s 1 normal both;"
    "-moz-animation:-amp-start 8s steps(1,end) 0s 1 normal both;-ms-animation:-amp-start 8s steps(1,end) 0s 1 normal both;"
    "animation:-amp-start 8s steps(1,end) 0s 1 normal both}@-webkit-keyframes -amp-start{from{visibility:hidden}to{visibility:visible}}"
    "@-moz-keyframes -amp-start{from{visibility:hidden}to{visibility:visible}}@-ms-keyframes -amp-start{from{visibility:hidden}to{visibility:visible}}"
    "@-o-keyframes -amp-start{from{visibility:hidden}to{visibility:visible}}@keyframes -amp-start{from{visibility:hidden}to{visibility:visible}}</style>"
    "<noscript><style amp-boilerplate>body{-webkit-animation:none;-moz-animation:none;-ms-animation:none;animation:none}</style></noscript>\n"
    "</head>\n<body>\n"
)
_TAIL = "</body>\n</html>"  # no final newline, as Go's boilerplateEnd


class BadPath(ValueError):
    pass


_RAW_URL_BASE64 = re.compile(r"[A-Za-z0-9_-]*")


def decode_path(path: str) -> bytes:
    """``0<cache breaker>/<b64url(message)>`` → the message, as Go's ``amp.DecodePath``:
    everything up to the last ``/`` (there must be one) is ignored; the rest is unpadded
    URL-safe base64, strictly (``\\r`` and ``\\n`` skipped, as Go's decoder does)."""
    if not path:
        raise BadPath("missing format indicator")
    if path[0] != "0":
        raise BadPath(f"unknown format indicator {path[0]!r}")
    slash = path.rfind("/", 1)
    if slash == -1:
        raise BadPath("missing data")
    encoded = path[slash + 1:].replace("\r", "").replace("\n", "")
    if not _RAW_URL_BASE64.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise BadPath("illegal base64 data")
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise BadPath("illegal base64 data") from None


def encode_path(message: bytes, padding: str = "AAAAAAAAAAAA") -> str:
    """The client side (for tests and the bench): ``0<padding>/<b64url(message)>``."""
    return "0" + padding + "/" + base64.urlsafe_b64encode(message).decode().rstrip("=")


def armor(data: bytes) -> str:
    """Wrap ``data`` as the Go broker's AMP armor: ``0`` + std base64, 32-char lines in <pre>."""
    stream = "0" + base64.b64encode(data).decode()
    lines = [stream[i:i + _LINE] for i in range(0, len(stream), _LINE)]
    parts = [_HEAD]
    for start in range(0, len(lines), _LINES_PER_PRE):
        parts.append("<pre>\n")
        parts.extend(line + "\n" for line in lines[start:start + _LINES_PER_PRE])
        parts.append("</pre>\n")
    parts.append(_TAIL)
    return "".join(parts)


class BadArmor(ValueError):
    pass


class _PreText(html.parser.HTMLParser):
    """The text of the <pre> elements, as the Go decoder's HTML tokenizer walk: no nesting,
    no stray </pre>, every <pre> closed; other tags and comments are skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.active = False
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "pre":
            if self.active:
                raise BadArmor("unexpected <pre>")
            self.active = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            if not self.active:
                raise BadArmor("unexpected </pre>")
            self.active = False

    def handle_data(self, data: str) -> None:
        if self.active:
            self.chunks.append(data)


_ASCII_WHITESPACE = re.compile(r"[\t\n\f\r ]+")


def dearmor(page: str) -> bytes:
    """Undo :func:`armor` as Go's ``amp.NewArmorDecoder`` does: the text of every <pre>,
    ASCII whitespace removed, a ``0`` version indicator, then standard base64."""
    parser = _PreText()
    parser.feed(page)
    parser.close()
    if parser.active:
        raise BadArmor("missing </pre> tag")
    stream = _ASCII_WHITESPACE.sub("", "".join(parser.chunks))
    if not stream:
        raise BadArmor("no data")
    if stream[0] != "0":
        raise BadArmor(f"unknown armor version indicator {stream[0]!r}")
    try:
        return base64.b64decode(stream[1:], validate=True)
    except (binascii.Error, ValueError):
        raise BadArmor("illegal base64 data") from None
