"""Exceptions in the logs: rendered as tracebacks (not ``<traceback object>``) and scrubbed."""

import io
import json
import logging

import pytest
import structlog

from rendezvous.observe import logging as rlog

STDLIB = ("hypercorn.error", "uvicorn", "uvicorn.error", "rendezvous", "asyncio")


@pytest.fixture
def configure():
    """``configure(fmt, **kw)`` into a buffer; the process's logging setup is restored afterwards."""
    saved_structlog = structlog.get_config()
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name in STDLIB for lg in [logging.getLogger(name)]}

    def setup(log_format, **kwargs):
        stream = io.StringIO()
        rlog.configure(log_format=log_format, stream=stream, **kwargs)
        return stream

    yield setup
    structlog.configure(**saved_structlog)
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def log_two_exceptions():
    try:
        raise ZeroDivisionError("from structlog")
    except ZeroDivisionError:
        rlog.get_logger("rendezvous.test").exception("ours failed", client="192.0.2.1")
    try:
        raise ConnectionError("peer 198.51.100.7 went away")
    except ConnectionError:
        logging.getLogger("hypercorn.error").exception("server failed")  # a server's stdlib logger


def test_json_logs_carry_the_formatted_traceback(configure):
    stream = configure("json")
    log_two_exceptions()
    ours, theirs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ours["event"] == "ours failed" and ours["client"] == "[scrubbed]"
    assert ours["exception"].startswith("Traceback (most recent call last):")
    assert ours["exception"].rstrip().endswith("ZeroDivisionError: from structlog")
    assert theirs["event"] == "server failed"
    assert theirs["exception"].rstrip().endswith("ConnectionError: peer [scrubbed] went away")
    for record in (ours, theirs):
        assert "exc_info" not in record
    assert "<traceback" not in stream.getvalue()


def test_console_logs_show_the_traceback_scrubbed(configure):
    stream = configure("console")
    log_two_exceptions()
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last):") == 2
    assert "ZeroDivisionError: from structlog" in text
    assert "ConnectionError: peer [scrubbed] went away" in text
    assert "198.51.100.7" not in text and "<traceback" not in text


def test_unsafe_logging_keeps_addresses_in_tracebacks(configure):
    stream = configure("json", unsafe_logging=True)
    log_two_exceptions()
    assert "peer 198.51.100.7 went away" in stream.getvalue()


def test_a_flood_of_one_event_is_rate_limited_and_counted():
    import structlog

    from rendezvous.observe.logging import RateLimit

    now = [0.0]
    limit = RateLimit(rate=10, burst=5, clock=lambda: now[0])
    kept = []
    for _ in range(100):
        try:
            kept.append(limit(None, "info", {"event": "bad frame"}))
        except structlog.DropEvent:
            pass
    assert len(kept) == 5  # the burst
    assert limit(None, "info", {"event": "other event"}) == {"event": "other event"}  # per event name
    now[0] += 1.0
    line = limit(None, "info", {"event": "bad frame"})
    assert line["suppressed"] == 95  # what the flood hid is reported on the next line
    assert "suppressed" not in limit(None, "info", {"event": "bad frame"})


def test_the_configured_loggers_refuse_a_flood_before_building_the_line(configure):
    stream = configure("json", level="info")
    log = rlog.get_logger("rendezvous.test").bind()
    for n in range(200):
        log.info("client matched", n=n)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 50  # the burst; the other 150 were counted, not written
    assert [line["n"] for line in lines] == list(range(50))
    log.debug("not enabled")  # below the level: not counted either
    rlog.get_logger("rendezvous.test").info("another event")  # per event name
    assert json.loads(stream.getvalue().splitlines()[-1])["event"] == "another event"
