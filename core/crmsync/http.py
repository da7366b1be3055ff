"""One factory for the HTTP clients connectors use.

:func:`build_client` returns an ``httpx.Client`` whose transport paces requests to a
calls-per-second limit, retries 429 and 5xx answers (and dropped connections) with
exponential backoff that honours ``Retry-After``, and gives up after a cap: a 429 that
is still refused then raises :class:`~crmsync.errors.RateLimited` (with the server's
``Retry-After``). It is the ONE retry policy of a request: a connector does not loop
around it; a POST that is safe to repeat (a search, a token grant) is marked with
``extensions=idempotent()`` instead. Connectors receive the client injected; tests pass
``transport=httpx.MockTransport(...)``.

Pacing is per client (:class:`Pacer`) unless a shared pacing is installed with
:func:`share_pacing` while the client is built and the client names the vendor
``account`` it calls as: its pacer is then the account's, shared by every process
(:mod:`crmsync.ratelimit`, in PostgreSQL).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import httpx

from .errors import ConfigError, RateLimited

__all__ = ["Pacer", "PacerFactory", "RetryPolicy", "RetryTransport", "account_key",
           "build_client", "idempotent", "mark_streamed", "retry_after_seconds",
           "share_pacing"]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_STREAMED = "crmsync.streamed"
_SAFE = "crmsync.idempotent"


def idempotent() -> dict[str, Any]:
    """Request extensions marking a call safe to send again whatever its method (a read
    or a grant made with POST): ``client.post(url, json=body, extensions=idempotent())``.
    The transport then retries its 5xx and dropped connections like a GET's."""
    return {_SAFE: True}


def mark_streamed(request: httpx.Request) -> httpx.Request:
    """Mark a request whose answer the caller reads as a stream (``send(stream=True)``):
    the retrying transport then returns at the headers instead of reading the body, so
    a large answer is never held in memory (and a cut in its body is not retried)."""
    request.extensions[_STREAMED] = True
    return request


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date) into seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Pacer:
    """Spaces calls so no more than ``rate`` start per second (thread-safe)."""

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)

    def penalise(self, seconds: float) -> None:
        """Push every next call back by ``seconds`` (after a 429)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


#: ``factory(account, rate)``: the pacer of a client calling as ``account``
PacerFactory = Callable[[str, "float | None"], Pacer]

_SHARED: ContextVar[PacerFactory | None] = ContextVar("crmsync_shared_pacing", default=None)


@contextlib.contextmanager
def share_pacing(factory: PacerFactory | None) -> Iterator[None]:
    """Within the block, a client built with an ``account`` gets ``factory(account,
    rate)`` as its pacer (``None``: each client paces itself). ``crmsync.runtime.open_side``
    installs :meth:`crmsync.ratelimit.RateLimits.pacer` around building the connectors
    when the state store is PostgreSQL; the clients keep their pacer afterwards."""
    token = _SHARED.set(factory)
    try:
        yield
    finally:
        _SHARED.reset(token)


def account_key(vendor: str, *identity: str | None) -> str:
    """``vendor:<16 hex>``: a key naming one vendor account without showing who it is
    (the SHA-256 of the identifying parts: a login URL, a user name, a client id)."""
    digest = hashlib.sha256("\x1f".join(part or "" for part in identity).encode())
    return f"{vendor}:{digest.hexdigest()[:16]}"


class RetryPolicy:
    """How many times and how long to retry; which answers are worth retrying."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        statuses: Iterable[int] = (429, 500, 502, 503, 504),
        retry_non_idempotent: bool = False,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.statuses = frozenset(statuses)
        self.retry_non_idempotent = retry_non_idempotent

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = float(min(self.max_backoff, self.backoff * (2 ** attempt)))
        return base / 2 + random.random() * base / 2  # jitter, so clients do not march in step


def _buffered(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """The same answer with its body read off the wire, as a fresh stream of the raw
    (still encoded) bytes: the client decodes it and times it as it would have."""
    if response.is_stream_consumed:  # made from bytes in memory (a mock): nothing to cut
        return response
    try:
        raw = b"".join(response.iter_raw())
    finally:
        response.close()
    return httpx.Response(response.status_code, headers=response.headers,
                          stream=httpx.ByteStream(raw), extensions=response.extensions,
                          request=request)


class RetryTransport(httpx.BaseTransport):
    """Wraps a transport with pacing and retries.

    A 429 is always retried (the server did not act on it). A 5xx or a dropped
    connection (before or in the middle of the answer) is retried for idempotent
    methods, and for POST / PATCH only when the policy allows it (a vendor whose writes
    are idempotent upserts).
    """

    def __init__(
        self,
        inner: httpx.BaseTransport,
        *,
        policy: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.pacer = pacer or Pacer(None)
        self._sleep = sleep

    def _may_retry(self, request: httpx.Request, status: int | None) -> bool:
        if status == 429:
            return True
        return (request.method in _IDEMPOTENT or bool(request.extensions.get(_SAFE))
                or self.policy.retry_non_idempotent)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            self.pacer.wait()
            try:
                response = self.inner.handle_request(request)
                # Read the answer here, not in the client after the retries are over: a
                # connection that dies mid-answer is a dropped connection like any other.
                if not request.extensions.get(_STREAMED):
                    response = _buffered(response, request)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError,
                    httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteError) as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise  # a certificate that fails now fails on every retry
                # ConnectError means the request never left: always safe to retry.
                safe = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt + 1 >= self.policy.attempts or not (
                    safe or self._may_retry(request, None)
                ):
                    raise
                self._sleep(self.policy.delay(attempt, None))
                attempt += 1
                continue
            status = response.status_code
            if (
                status in self.policy.statuses
                and attempt + 1 < self.policy.attempts
                and self._may_retry(request, status)
            ):
                after = retry_after_seconds(response.headers.get("Retry-After"))
                response.read()
                response.close()
                wait = self.policy.delay(attempt, after)
                if status == 429:
                    self.pacer.penalise(wait)
                self._sleep(wait)
                attempt += 1
                continue
            if status == 429:
                # still refused when the policy is spent: the caller gets the one error
                # that says "slow down", with the server's own Retry-After
                after = retry_after_seconds(response.headers.get("Retry-After"))
                response.read()
                response.close()
                raise RateLimited(
                    f"{request.method} {request.url.host}{request.url.path}: the server "
                    f"still answered 429 Too Many Requests after {attempt + 1} attempt(s): "
                    "run again later, or lower the connector's rate setting",
                    retry_after=after, code="429")
            return response

    def close(self) -> None:
        self.inner.close()


def build_client(
    *,
    base_url: str = "",
    timeout: float = 30.0,
    rate: float | None = None,
    policy: RetryPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
    verify: bool | str = True,
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    account: str | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` with timeouts, pacing to ``rate`` calls/s and retries.

    ``account`` names the vendor account the client calls as (:func:`account_key`):
    with a shared pacing installed (:func:`share_pacing`), the rate and the 429 pauses
    are that account's across every process, not this client's alone.

    ``verify`` may be a CA bundle path (an emulator's throw-away CA); certificate
    checks are never turned off by crmsync itself.
    """
    if isinstance(verify, str):
        try:
            verify_arg: bool | ssl.SSLContext = ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_file {verify}: cannot read a CA certificate from it "
                              f"({getattr(exc, 'strerror', None) or exc}): give the path of "
                              "a PEM file, or remove ca_file to trust the system's CAs"
                              ) from None
    else:
        verify_arg = verify
    inner = transport or httpx.HTTPTransport(verify=verify_arg)
    shared = _SHARED.get()
    pacer = shared(account, rate) if shared is not None and account else Pacer(rate)
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        transport=RetryTransport(inner, policy=policy, pacer=pacer, sleep=sleep),
        headers={"User-Agent": "crmsync", **(headers or {})},
    )
