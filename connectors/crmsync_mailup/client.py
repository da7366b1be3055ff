"""MailUp's REST console service: one call, the paging envelope, the error envelope.

Errors come as ``{"ErrorCode": "401", "ErrorDescription": ..., "ErrorName": ...}``
(``ErrorCode`` a string). A 401 refreshes the token once and retries; a 429 that
survives the transport's backoff becomes :class:`RateLimited`; every other error is a
:class:`RemoteError` carrying MailUp's code and description.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from crmsync.errors import AuthError, RateLimited, RemoteError
from crmsync.http import RetryPolicy, build_client, retry_after_seconds

from .auth import PasswordGrant
from .settings import MailUpSettings

__all__ = ["MailUpClient", "make_http"]


def make_http(settings: MailUpSettings) -> httpx.Client:
    """The paced, retrying client MailUp's 5 calls/s limit asks for."""
    return build_client(timeout=settings.timeout_s, rate=settings.rate,
                        policy=RetryPolicy(attempts=settings.retries),
                        verify=settings.ca_path or True)


class MailUpClient:
    """Calls ``<base_url>/Console/...`` with a Bearer token from the auth strategy."""

    def __init__(self, settings: MailUpSettings, http: httpx.Client,
                 auth: PasswordGrant | None = None) -> None:
        self.settings = settings
        self.http = http
        self.auth = auth or PasswordGrant(settings, http)

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}/Console/{path.lstrip('/')}"

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None) -> Any:
        """One console call; returns the decoded JSON (a bare integer, an object, None)."""
        for attempt in (0, 1):
            headers = {**self.auth.headers(), "Accept": "application/json"}
            try:
                response = self.http.request(method, self.url(path), params=params, json=json,
                                             headers=headers)
            except httpx.HTTPError as exc:
                raise RemoteError(f"MailUp unreachable on {method} /Console/{path} "
                                  f"({type(exc).__name__}): check base_url and the network",
                                  retryable=True) from None
            if response.status_code == 401 and attempt == 0:
                self.auth.invalidate(headers["Authorization"])
                continue
            return self._result(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if status < 300:
            if not response.content.strip():
                return None
            try:
                return response.json()
            except ValueError:
                raise RemoteError(f"MailUp answered {method} /Console/{path} with a body that "
                                  "is not JSON: check base_url points at ConsoleService.svc",
                                  status=status) from None
        code, description = error_envelope(response)
        where = f"MailUp {method} /Console/{path}"
        if status == 429:
            raise RateLimited(f"{where}: {description} (slow down: lower `rate`)",
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                              code=code)
        if status == 401:
            raise AuthError(f"{where}: {description}: the token was refused even after a "
                            "refresh; check the MailUp user's API access")
        raise RemoteError(f"{where} failed: {code} {description}", status=status, code=code,
                          retryable=status >= 500)

    def pages(self, path: str, *, params: Mapping[str, Any] | None = None,
              page_size: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every page of a paged listing (0-based ``pageNumber``), one list of items each.

        Stops on an empty page or once ``TotalElementsCount`` items were read; never on a
        merely short page, since MailUp may serve fewer items than ``pageSize`` asked.
        """
        size = page_size or self.settings.page_size
        number = 0
        seen = 0
        while True:
            body = self.call("GET", path, params={**(params or {}), "pageSize": size,
                                                  "pageNumber": number})
            if not isinstance(body, dict) or not isinstance(body.get("Items"), list):
                raise RemoteError(f"MailUp GET /Console/{path}: expected a paged envelope "
                                  "with Items, got something else")
            items = body["Items"]
            seen += len(items)
            if items:
                yield items
            if not items or seen >= _count(body, "TotalElementsCount", seen + 1):
                return
            # MailUp may cap pageSize below what was asked: a page shorter than the
            # request is not the last one unless it is shorter than the server's own
            # PageSize too (only consulted when the envelope carries no total).
            if "TotalElementsCount" not in body and len(items) < _count(body, "PageSize", size):
                return
            number += 1


def _count(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def error_envelope(response: httpx.Response) -> tuple[str, str]:
    """MailUp's ``ErrorCode`` (a string) and ``ErrorDescription``, or the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "ErrorCode" in body:
        code = str(body.get("ErrorCode"))
        description = str(body.get("ErrorDescription") or body.get("ErrorName") or "")
        return code, description or f"HTTP {response.status_code}"
    text = response.text.strip()[:200]
    return str(response.status_code), text or f"HTTP {response.status_code}"
