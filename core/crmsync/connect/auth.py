"""Token flows as an ``httpx.Auth``: obtain, attach, refresh once on a refused token.

A connector subclasses :class:`TokenAuth`, says how a token is obtained (and, when the
vendor has one, how it is refreshed), and hands the object to its client as ``auth``.
Every request then carries the token; an answer that says the token is spent renews it
once (concurrent callers wait for one renewal under a lock, so a vendor that rotates
refresh tokens is never asked twice) and the request is sent again with the new one.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import httpx

from ..errors import AuthError

__all__ = ["Token", "TokenAuth", "copy_request", "with_form_value"]


def copy_request(request: httpx.Request, *, content: bytes | None = None,
                 params: dict[str, str] | None = None) -> httpx.Request:
    """A copy of ``request`` (its body read), with another body or more query params."""
    url = request.url.copy_merge_params(params) if params else request.url
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return httpx.Request(request.method, url, headers=headers,
                         content=request.content if content is None else content,
                         extensions=request.extensions)


def with_form_value(request: httpx.Request, name: str, value: str) -> httpx.Request:
    """``request`` with ``name=value`` set (in place of an empty placeholder the caller
    put, else at the end): in its form body when it has one (a POST of ``data=``), else
    in its query."""
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qsl(request.content.decode(), keep_blank_values=True)
        if any(key == name for key, _ in form):  # in its place: the body stays the same
            form = [(key, value if key == name else item) for key, item in form]
        else:
            form.append((name, value))
        return copy_request(request, content=urlencode(form).encode())
    return httpx.Request(request.method, request.url.copy_set_param(name, value),
                         headers=request.headers, content=request.content,
                         extensions=request.extensions)


@dataclass(frozen=True)
class Token:
    """An access token, with what a refresh needs and when it stops working.

    ``expires_in`` (seconds, as the vendor says) is turned into ``expires_at`` on the
    auth's clock by :meth:`TokenAuth.renewed`; ``extra`` keeps what else the grant
    returned (an instance URL, a user id)."""

    value: str = field(repr=False)
    refresh: str | None = field(default=None, repr=False)
    expires_in: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    expires_at: float | None = None


class TokenAuth(httpx.Auth):
    """Base of a token flow. Subclasses implement :meth:`obtain`; they may override
    :meth:`refresh` (a refresh grant), :meth:`attach` (where the token goes),
    :meth:`is_refused` (which answer means "token spent") and set
    ``requires_response_body = True`` when that needs the body.

    ``margin_s`` renews a token that far ahead of its expiry. Counters ``obtained`` and
    ``refreshed`` say how often each grant was made.
    """

    header = "Authorization"
    scheme = "Bearer"
    margin_s = 60.0
    requires_request_body = True  # a refused call is sent again: its body must be kept

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self.obtained = 0
        self.refreshed = 0

    # -- what a subclass says ---------------------------------------------------------
    @abstractmethod
    def obtain(self) -> Token:
        """A fresh token from the credentials (a login), or :class:`AuthError`."""

    def refresh(self, token: Token) -> Token:
        """A new token from ``token`` (its refresh token); the default logs in again.
        An :class:`AuthError` here falls back to :meth:`obtain` once."""
        return self.obtain()

    def attach(self, request: httpx.Request, token: Token) -> httpx.Request:
        """``request`` carrying ``token`` (``Authorization: Bearer <token>`` by default).
        A vendor that wants the token in the query or the body returns a new request
        (:func:`with_form_value` helps)."""
        request.headers[self.header] = (f"{self.scheme} {token.value}" if self.scheme
                                        else token.value)
        return request

    def is_refused(self, response: httpx.Response) -> bool:
        """Whether ``response`` says the token is spent (HTTP 401 by default)."""
        return response.status_code == 401

    def resend(self, request: httpx.Request) -> bool:
        """Whether ``request`` may be sent again once the token is renewed (a request
        bound to the old session, such as a query cursor, may not)."""
        return True

    # -- the flow ---------------------------------------------------------------------
    def token(self) -> Token:
        """The current token, obtained (or renewed ahead of its expiry) when needed."""
        with self._lock:
            current = self._token
            if current is None:
                self._token = self._stamp(self._count(self.obtain, "obtained"))
            elif current.expires_at is not None and self._clock() >= current.expires_at:
                self._token = self._renew(current)
            assert self._token is not None
            return self._token

    def renew(self, stale: Token | None) -> Token:
        """A fresh token after ``stale`` was refused: renewed once, whoever asks."""
        with self._lock:
            if self._token is not None and self._token is not stale:
                return self._token  # another caller renewed it meanwhile
            self._token = self._renew(stale) if stale is not None else self._stamp(
                self._count(self.obtain, "obtained"))
            return self._token

    def forget(self) -> Token | None:
        """Drop the current token (a logout); the next call obtains a new one."""
        with self._lock:
            token, self._token = self._token, None
            return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        response = yield self.attach(request, token)
        if self.is_refused(response):
            token = self.renew(token)
            if self.resend(request):
                yield self.attach(copy_request(request), token)

    # -- inside -----------------------------------------------------------------------
    def _renew(self, stale: Token) -> Token:
        if stale.refresh:
            try:
                return self._stamp(self._count(lambda: self.refresh(stale), "refreshed"))
            except AuthError:
                pass  # rotated away or revoked: log in again
        return self._stamp(self._count(self.obtain, "obtained"))

    def _count(self, grant: Callable[[], Token], counter: str) -> Token:
        token = grant()
        setattr(self, counter, getattr(self, counter) + 1)
        return token

    def _stamp(self, token: Token) -> Token:
        if token.expires_in is None or token.expires_at is not None:
            return token
        expires = max(1.0, token.expires_in - min(self.margin_s, token.expires_in / 10))
        return Token(value=token.value, refresh=token.refresh, expires_in=token.expires_in,
                     extra=token.extra, expires_at=self._clock() + expires)
