"""The HTTP layer: session injection and refresh, error mapping, quota, query paging.

Every call goes through :meth:`SalesforceApi.request`, which adds the bearer token,
reads ``Sforce-Limit-Info``, maps the documented error bodies (a JSON list with
``errorCode``) onto the crmsync exception tree, and logs in again on
``INVALID_SESSION_ID`` — on every path, REST, query paging and Bulk 2.0 alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from crmsync.connect import ErrorMap, ErrorRule, mark_streamed
from crmsync.errors import AuthError, QuotaExhausted, RateLimited, RemoteError

from ._auth import AuthFlow, SalesforceAuth, SalesforceSession
from ._auth import locator as locator_extensions
from ._quota import QuotaTracker
from ._settings import SalesforceSettings

__all__ = ["SalesforceApi", "SessionRefreshed", "error_of"]

# Per-record codes worth retrying later (locks, timeouts, a rolled-back batch).
RETRYABLE_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK", "SERVER_UNAVAILABLE",
    "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT", "REQUEST_LIMIT_EXCEEDED",
})


#: Attempts for a call refused because too many long requests run at once in the org.
CONCURRENCY_ATTEMPTS = 4


def is_budget_spent(message: str, quota: QuotaTracker) -> bool:
    """Whether a ``REQUEST_LIMIT_EXCEEDED`` means the daily budget, not concurrency.

    The same code answers "TotalRequests Limit exceeded." (the 24-hour allocation) and
    "ConcurrentPerOrgLongTxn Limit exceeded" / "ConcurrentRequests ... Limit exceeded"
    (too many long requests at once, transient). Only the first, or usage at the limit in
    ``Sforce-Limit-Info``, stops the run.
    """
    if "totalrequests" in message.replace(" ", "").lower():
        return True
    return quota.limit is not None and quota.used is not None and quota.used >= quota.limit


class SessionRefreshed(Exception):
    """The session was renewed while following a query locator: restart the query."""


#: Salesforce's ``[{"errorCode", "message"}]`` answers (REQUEST_LIMIT_EXCEEDED is read
#: first by :meth:`SalesforceApi.request`: it depends on the org's usage).
API_ERRORS = ErrorMap("Salesforce", code_keys=("errorCode", "error"),
                      message_keys=("message", "error_description"), rules=[
    ErrorRule(AuthError, status=401, advice="a fresh session was refused: check the "
              "integration user's permissions and the connected app's policies"),
    ErrorRule(RateLimited, status=429, advice="slow down: lower rate_per_s"),
    ErrorRule(RemoteError, code=RETRYABLE_CODES, retryable=True),
], retryable_statuses=(500, 502, 503, 504))


def error_of(response: httpx.Response) -> tuple[str, str]:
    """``(errorCode, message)`` from a documented error body, whatever its exact shape."""
    return API_ERRORS.parts(response)


class SalesforceApi:
    """A logged-in view of one org over an httpx client."""

    def __init__(self, http: httpx.Client, flow: AuthFlow, settings: SalesforceSettings,
                 quota: QuotaTracker) -> None:
        self.http = http
        self.flow = flow
        self.auth = SalesforceAuth(flow, http)
        self.settings = settings
        self.quota = quota
        self.calls = 0

    @property
    def data_path(self) -> str:
        return f"/services/data/v{self.settings.api_version}"

    def session(self) -> SalesforceSession:
        return self.auth.session()

    def request(self, method: str, path: str, *, params: Any = None, json: Any = None,
                content: bytes | None = None, headers: dict[str, str] | None = None,
                stream: bool = False, locator: bool = False) -> httpx.Response:
        """One API call; ``path`` is relative to the data path unless it starts with '/'.

        The session is :class:`SalesforceAuth`'s (a 401 logs in again once). ``locator=True``
        marks a query-locator URL: a session renewed while following it raises
        :class:`SessionRefreshed` instead, because the locator died with the old session.
        """
        self.quota.guard()
        refusals = 0
        while True:
            url = self.session().instance_url + (path if path.startswith("/")
                                                 else f"{self.data_path}/{path}")
            request = self.http.build_request(method, url, params=params, json=json,
                                              content=content, headers=headers,
                                              extensions=locator_extensions() if locator
                                              else None)
            if stream:
                mark_streamed(request)  # a Bulk result page: read as it arrives
            self.calls += 1
            what = f"{method} {path.split('?')[0]}"
            try:
                response = self.http.send(request, stream=stream, auth=self.auth)
            except httpx.HTTPError as exc:
                raise API_ERRORS.unreachable(exc, what) from None
            self.quota.observe(response.headers)
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            code, message = error_of(response)
            if response.status_code == 401 and locator:
                raise SessionRefreshed(code or "INVALID_SESSION_ID")
            if code == "REQUEST_LIMIT_EXCEEDED":
                if is_budget_spent(message, self.quota):
                    self.quota.spent(message or code)
                    raise QuotaExhausted(
                        f"Salesforce daily API limit reached on {what} ({message}): the run "
                        "stopped with its cursor kept; resume once the 24-hour usage window "
                        "has room", code=code, status=response.status_code)
                # Too many long requests in the org right now (a documented answer that is
                # not the budget): wait and ask again a few times.
                refusals += 1
                if refusals < CONCURRENCY_ATTEMPTS:
                    self.sleep(min(30.0, 0.5 * 4 ** (refusals - 1)))
                    continue
                raise RateLimited(f"Salesforce refused {what} for now ({message}): too many "
                                  "long requests run in the org at once; the call is retried "
                                  "later", status=response.status_code, code=code)
            raise API_ERRORS.error(response, what)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- REST query ----------------------------------------------------------------------
    def query(self, soql: str, *, all_rows: bool = False) -> Iterator[dict[str, Any]]:
        """Every record of ``soql``, following ``nextRecordsUrl``.

        Raises :class:`SessionRefreshed` when the session had to be renewed mid-way;
        :meth:`query_resumable` turns that into a restart.
        """
        headers = {}
        if self.settings.query_batch_size != 2000:
            headers["Sforce-Query-Options"] = f"batchSize={self.settings.query_batch_size}"
        body = self.json("GET", "queryAll/" if all_rows else "query/", params={"q": soql},
                         headers=headers)
        while True:
            yield from body.get("records", [])
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not next_url:
                return
            try:
                body = self.json("GET", next_url, headers=headers, locator=True)
            except RemoteError as exc:
                if exc.code == "INVALID_QUERY_LOCATOR":
                    raise SessionRefreshed(exc.code) from None
                raise

    def query_resumable(self, soql_from: Callable[[Any], str], key: Callable[[dict[str, Any]], Any],
                        *, all_rows: bool = False) -> Iterator[dict[str, Any]]:
        """Records in ``key`` order; a dead locator restarts the query after the last key.

        ``soql_from(last_key_or_None)`` builds the query; records whose key is not past
        the last one yielded are skipped, so nothing is lost or repeated.
        """
        last: Any = None
        restarts = 0
        while True:
            try:
                for record in self.query(soql_from(last), all_rows=all_rows):
                    record_key = key(record)
                    if last is not None and record_key <= last:
                        continue
                    last = record_key
                    restarts = 0
                    yield record
                return
            except SessionRefreshed:
                restarts += 1
                if restarts > 3:
                    raise AuthError("Salesforce sessions keep expiring during a query: check "
                                    "the connected app's session timeout") from None

    # -- sObject Collections -----------------------------------------------------------
    def collection(self, method: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One sObject Collections call (at most 200 records), ``allOrNone=false``."""
        if method == "DELETE":
            ids = ",".join(str(r["id"]) for r in records)
            result = self.json("DELETE", "composite/sobjects",
                               params={"ids": ids, "allOrNone": "false"})
        else:
            result = self.json(method, "composite/sobjects",
                               json={"allOrNone": False, "records": records})
        if not isinstance(result, list) or len(result) != len(records):
            raise RemoteError("Salesforce answered a collection call without one result per "
                              "record: retry the batch", retryable=True)
        return result

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
