"""MailUp's REST console service: one call, the paging envelope, the error envelope.

Errors come as ``{"ErrorCode": "401", "ErrorDescription": ..., "ErrorName": ...}``
(``ErrorCode`` a string): :data:`CONSOLE_ERRORS` maps them. The token flow
(:class:`~crmsync_mailup.auth.PasswordGrant`) refreshes once on a 401.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from crmsync.connect import ErrorMap, ErrorRule, page_number_pages
from crmsync.errors import AuthError, RateLimited, RemoteError

from .auth import PasswordGrant
from .settings import MailUpSettings

__all__ = ["CONSOLE_ERRORS", "MailUpClient", "make_http"]

CONSOLE_ERRORS = ErrorMap(
    "MailUp", code_keys=("ErrorCode",), message_keys=("ErrorDescription", "ErrorName"),
    code_when_missing="{status}", rules=[
        ErrorRule(AuthError, status=401, advice="the token was refused even after a "
                  "refresh; check the MailUp user's API access"),
        ErrorRule(RateLimited, status=429, advice="slow down: lower rate_per_s"),
        ErrorRule(RemoteError, status=409, retryable=False),
    ])


def make_http(settings: MailUpSettings) -> httpx.Client:
    """The paced, retrying client MailUp's 5 calls/s limit asks for."""
    return settings.http_client(base_url="")


class MailUpClient:
    """Calls ``<base_url>/Console/...`` with a Bearer token from the auth strategy."""

    def __init__(self, settings: MailUpSettings, http: httpx.Client,
                 auth: PasswordGrant | None = None) -> None:
        self.settings = settings
        self.http = http
        self.auth = auth or PasswordGrant(settings, http)
        #: ``TotalElementsCount`` of the listing page last read (``None``: not given)
        self.last_total: int | None = None

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}/Console/{path.lstrip('/')}"

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None) -> Any:
        """One console call; returns the decoded JSON (a bare integer, an object, None)."""
        response = CONSOLE_ERRORS.call(
            self.http, method, self.url(path), what=f"{method} /Console/{path}",
            write=method != "GET", params=params, json=json, auth=self.auth,
            headers={"Accept": "application/json"})
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"MailUp answered {method} /Console/{path} with a body that "
                              "is not JSON: check base_url points at ConsoleService.svc",
                              status=response.status_code) from None

    def pages(self, path: str, *, params: Mapping[str, Any] | None = None,
              page_size: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every page of a paged listing (0-based ``pageNumber``), one list of items each.

        Stops on an empty page or once ``TotalElementsCount`` items were read; never on a
        merely short page, since MailUp may serve fewer items than ``pageSize`` asked.
        """
        size = page_size or self.settings.page_size
        seen = [0]

        def fetch(number: int) -> tuple[list[dict[str, Any]], int | None]:
            body = self.call("GET", path, params={**(params or {}), "pageSize": size,
                                                  "pageNumber": number})
            if not isinstance(body, dict) or not isinstance(body.get("Items"), list):
                raise RemoteError(f"MailUp GET /Console/{path}: expected a paged envelope "
                                  "with Items, got something else")
            items: list[dict[str, Any]] = body["Items"]
            seen[0] += len(items)
            total = self.last_total = _count(body, "TotalElementsCount")
            # MailUp may cap pageSize below what was asked: without a total, a page
            # shorter than the server's own PageSize is the last one.
            if total is None and len(items) < (_count(body, "PageSize") or size):
                total = seen[0]
            return items, total

        for page in page_number_pages(fetch):
            yield list(page)


def _count(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
