"""AMP cache rendezvous: the request encoded in the URL path, the reply in "AMP armor"."""

from __future__ import annotations

import base64
import binascii

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
_TAIL = "</body>\n</html>\n"


class BadPath(ValueError):
    pass


def decode_path(path: str) -> bytes:
    """``0<padding>/<b64url(message)>`` → the message. Everything to the last ``/`` is ignored."""
    if not path.startswith("0"):
        raise BadPath("unknown format version")
    encoded = path[1:].rsplit("/", 1)[-1]
    if "=" in encoded:
        raise BadPath("padding not allowed")
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise BadPath("bad base64") from None


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


def dearmor(html: str) -> bytes:
    """Undo :func:`armor`: the text of every <pre>, whitespace removed, minus the leading 0."""
    texts = []
    rest = html
    while "<pre>" in rest:
        _, _, rest = rest.partition("<pre>")
        body, _, rest = rest.partition("</pre>")
        texts.append(body)
    stream = "".join("".join(texts).split())
    if not stream.startswith("0"):
        raise ValueError("unknown armor version")
    return base64.b64decode(stream[1:])
