"""Vendor errors as data: which answer becomes which :mod:`crmsync.errors` exception.

A connector describes where its error bodies keep the code and the message, and lists
its rules; :meth:`ErrorMap.check` turns any answer of 400 and up into the exception a
rule names (first match wins), with the vendor's code, the status and the advice::

    ERRORS = ErrorMap(
        "HubLike", code_keys=("category", "error"), message_keys=("message",),
        rules=[ErrorRule(AuthError, status=401, advice="check the API token"),
               ErrorRule(RemoteError, code="VALIDATION_ERROR", advice="fix the value")])
    data = ERRORS.check(response, "POST /contacts").json()

Without a matching rule: 401 is an :class:`AuthError`, 429 a :class:`RateLimited` with
the server's ``Retry-After``, 5xx a retryable :class:`RemoteError`, the rest a
:class:`RemoteError` that is not retried.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import AuthError, CrmsyncError, QuotaExhausted, RateLimited, RemoteError
from ..http import retry_after_seconds

__all__ = ["ErrorMap", "ErrorRule", "body_value"]


@dataclass(frozen=True)
class ErrorRule:
    """``error`` for answers matching every condition given: ``status`` (one or several),
    ``code`` (the vendor's error code, one or several), ``contains`` (a piece of the
    message, case-insensitive). ``retryable`` overrides the default (5xx, 409, 429)."""

    error: type[CrmsyncError]
    status: int | Collection[int] | None = None
    code: str | Collection[str] | None = None
    contains: str | None = None
    retryable: bool | None = None
    advice: str = ""

    def matches(self, status: int | None, code: str, message: str) -> bool:
        if self.status is not None and not _among(status, self.status):
            return False
        if self.code is not None and not _among(code, self.code):
            return False
        return self.contains is None or self.contains.lower() in message.lower()


def _among(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, (str, int)):
        return bool(value == wanted)
    return value in wanted


def body_value(body: Any, path: str) -> Any:
    """``body["a"]["b"]`` for ``"a.b"``; a list is looked into at its first item."""
    for part in path.split("."):
        if isinstance(body, list):
            body = body[0] if body else None
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    if isinstance(body, list) and body and not isinstance(body[0], (dict, list)):
        return body[0]
    return body


@dataclass(frozen=True)
class ErrorMap:
    """One vendor's error table (see the module docstring)."""

    vendor: str
    code_keys: Sequence[str] = ("error", "code", "errorCode")
    message_keys: Sequence[str] = ("message", "error_message", "error_description")
    rules: Sequence[ErrorRule] = ()
    retryable_statuses: Collection[int] = (409, 429, 500, 502, 503, 504)
    #: the code of an answer whose body names none (``"{status}"``, ``"http_{status}"``)
    code_when_missing: str = ""

    def parts(self, response: httpx.Response) -> tuple[str, str]:
        """The vendor's ``(code, message)`` in an error answer ("" when it has none)."""
        if not response.content.strip():
            return "", "empty body"
        try:
            body: Any = response.json()
        except ValueError:
            return "", response.text.strip()[:200]
        code = next((str(v) for v in (body_value(body, k) for k in self.code_keys)
                     if isinstance(v, (str, int)) and str(v)), "")
        message = next((str(v) for v in (body_value(body, k) for k in self.message_keys)
                        if isinstance(v, (str, int)) and str(v)), "")
        return code, message

    def call(self, client: httpx.Client, method: str, url: str, *, what: str | None = None,
             write: bool = False, check: bool = True, **kwargs: Any) -> httpx.Response:
        """``client.request(method, url, **kwargs)``: a connection that fails (once the
        transport's retries are spent) is a retryable :class:`RemoteError` saying what to
        check, and (``check``) an error answer the mapped exception. ``write=True`` says
        the call may have been applied before the connection failed."""
        what = what or f"{method} {httpx.URL(url).path}"
        try:
            response = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc, what, write=write) from None
        return self.check(response, what) if check else response

    def unreachable(self, exc: Exception, what: str, *, write: bool = False) -> RemoteError:
        """The error for a connection that failed during ``what``."""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = ("its TLS certificate is not trusted: set ca_file to the CA that signed "
                    "it (certificate checks stay on)")
        elif write:
            hint = (f"{type(exc).__name__}; the write may or may not have been applied: it "
                    "is not repeated blindly, the next run writes it again")
        else:
            hint = f"{type(exc).__name__}; check base_url and the network, then run again"
        return RemoteError(f"{self.vendor} did not answer {what}: {hint}", retryable=True)

    def check(self, response: httpx.Response, what: str) -> httpx.Response:
        """``response`` when it succeeded (below 400); else the mapped error is raised."""
        if response.status_code < 400:
            return response
        raise self.error(response, what)

    def error(self, response: httpx.Response, what: str) -> CrmsyncError:
        """The exception for a failed ``response`` to the call ``what``."""
        response.read()
        code, message = self.parts(response)
        if not code and self.code_when_missing:
            code = self.code_when_missing.format(status=response.status_code)
        after = retry_after_seconds(response.headers.get("Retry-After"))
        return self.build(response.status_code, code, message, what, retry_after=after)

    def build(self, status: int | None, code: str, message: str, what: str, *,
              retry_after: float | None = None) -> CrmsyncError:
        """The exception for a failure told some other way (an HTTP 200 envelope)."""
        rule = next((rule for rule in self.rules if rule.matches(status, code, message)),
                    None)
        kind: type[CrmsyncError]
        if rule is not None:
            kind = rule.error
        elif status == 401:
            kind = AuthError
        elif status == 429:
            kind = RateLimited
        else:
            kind = RemoteError
        retryable = rule.retryable if rule is not None and rule.retryable is not None \
            else status in self.retryable_statuses
        shown = " ".join(part for part in (f"HTTP {status}" if status else "", code) if part)
        text = f"{self.vendor} {what}: {shown}: {message or 'no message'}"
        advice = rule.advice if rule is not None and rule.advice else _advice(kind, retryable)
        text = f"{text} ({advice})"
        if issubclass(kind, RateLimited):
            return kind(text, retry_after=retry_after, status=status, code=code or None)
        if issubclass(kind, QuotaExhausted):
            return kind(text, status=status, code=code or None)
        if issubclass(kind, RemoteError):
            return kind(text, status=status, code=code or None, retryable=retryable)
        return kind(text)


def _advice(kind: type[CrmsyncError], retryable: bool) -> str:
    if issubclass(kind, AuthError):
        return "check the credentials in the settings and the environment"
    if issubclass(kind, RateLimited):
        return "slow down: lower rate_per_s, or run again later"
    if retryable:
        return "try again later"
    return "see the message: the request was refused as sent"
