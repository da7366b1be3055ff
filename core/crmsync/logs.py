"""Logging: plain text on a terminal, JSON lines for a log pipeline, addresses masked.

``--log-format json`` (or ``[logging] format = "json"``) puts one JSON object per line
on stderr, through python-json-logger on the root logger, so that the libraries'
records (httpx, SQLAlchemy, uvicorn, paramiko...) come out as JSON too. Every record
made while a run is going on carries its ``run_id``: a record factory reads it from a
context variable that :class:`RunLogContext`, a built-in plugin, sets on
``crmsync_run_started`` and clears on ``crmsync_run_finished`` (a process-wide
fallback covers the threads a run starts, which do not inherit context variables).

``--mask-emails`` (on by default in JSON) replaces the local part of every address in
a line by its first character and ``***`` (``a***@example.com``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from typing import IO, Any, Literal

from .hooks import hookimpl

__all__ = ["RunLogContext", "configure_logging", "current_run_id", "event_context",
           "mask_emails"]

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("crmsync_run_id", default="")
_process_run_id = ""  # the run this process is doing, for threads without the context
_event_ids: contextvars.ContextVar[str] = contextvars.ContextVar("crmsync_event_id",
                                                                 default="")
# an address, also percent-encoded in a URL (%40): what an HTTP client's log line holds
_EMAIL = re.compile(r"(?:(?<=%[0-9A-Fa-f]{2})|(?<![A-Za-z0-9._+%-]))"
                    r"([A-Za-z0-9_+-])[A-Za-z0-9._+-]*(?:@|%40)([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+)")


def current_run_id() -> str:
    """The id of the run going on in this context (else in this process), or ``""``."""
    return _run_id.get() or _process_run_id


def mask_emails(text: str) -> str:
    """``text`` with every address's local part masked: ``a***@example.com`` (also
    ``a%40example.com`` as a URL holds it)."""
    return _EMAIL.sub(r"\1***@\2", text)


class RunLogContext:
    """A built-in plugin: every log record of a run carries the run's id."""

    @hookimpl
    def crmsync_run_started(self, run_id: str, mode: str, full: bool) -> None:
        global _process_run_id
        _run_id.set(run_id)
        _process_run_id = run_id

    @hookimpl
    def crmsync_run_finished(self, run_id: str, stats: dict[str, Any]) -> None:
        global _process_run_id
        if _run_id.get() == run_id:
            _run_id.set("")
        if _process_run_id == run_id:
            _process_run_id = ""


_old_factory = logging.getLogRecordFactory()


@contextlib.contextmanager
def event_context(event_ids: str) -> Iterator[None]:
    """Records made in the block carry ``event_id``: the inbox id(s) of the real-time
    event(s) being applied (comma-separated when the worker applies several at once)."""
    token = _event_ids.set(event_ids)
    try:
        yield
    finally:
        _event_ids.reset(token)


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _old_factory(*args, **kwargs)
    record.run_id = current_run_id()
    record.event_id = _event_ids.get()
    return record


class _Masking(logging.Formatter):
    """Another formatter's output with the addresses masked (the message, its
    arguments, an exception's text: whatever the line ends up holding)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return mask_emails(self.inner.format(record))


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{asctime}{levelname}{name}{message}{run_id}{event_id}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=False)


def configure_logging(level: int, log_format: LogFormat = "text", *,
                      mask: bool | None = None, stream: IO[str] | None = None) -> None:
    """Set up the root logger once per command (again when the configuration file's
    ``[logging]`` table changes what the command line left open). ``mask=None``: masked
    in JSON, not in text."""
    logging.setLogRecordFactory(_record_factory)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crmsync", False)]:
        root.removeHandler(handler)
    masked = log_format == "json" if mask is None else mask
    root.setLevel(level)
    if log_format == "text" and not masked and root.handlers:
        return  # as logging.basicConfig does: the host (pytest, an embedding app) has one
    formatter = _json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Masking(formatter) if masked else formatter)
    handler._crmsync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
