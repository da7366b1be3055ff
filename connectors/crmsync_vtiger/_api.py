"""Calling vTiger: the webservice (challenge login, sessions) and the Cloud REST flavour.

Each operation reads its parameters from one verb only (``vtiger_ws_operation``): a
parameter sent the other way arrives empty on the server, so :data:`VERBS` decides
where every parameter goes. Every webservice answer is HTTP 200; success is the
``success`` flag of the envelope, never the status code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from crmsync.connect import ErrorMap, Token, TokenAuth, with_form_value
from crmsync.errors import AuthError, CrmsyncError, RemoteError

from ._errors import LOGIN_RETRY_CODES, SESSION_CODES, VtigerError, to_error

__all__ = ["VERBS", "CloudApi", "Session", "VtigerApi", "WebserviceApi"]

# operation -> the verb whose parameters the server reads (reference §3.1)
VERBS: dict[str, str] = {
    "getchallenge": "GET", "login": "POST", "logout": "POST", "extendsession": "POST",
    "listtypes": "GET", "describe": "GET", "retrieve": "GET", "create": "POST",
    "update": "POST", "revise": "POST", "delete": "POST", "query": "GET", "sync": "GET",
    "relatedtypes": "GET", "retrieve_related": "GET", "query_related": "GET",
    "add_related": "POST", "me": "GET",
}
LOGIN_ATTEMPTS = 4
#: HTTP-level failures (vTiger's own come as HTTP 200 envelopes: see ``_errors.to_error``)
VTIGER_HTTP = ErrorMap("vTiger")


@dataclass(frozen=True)
class Session:
    """A logged-in user: ``name`` is the sessionName ("" for Cloud REST)."""

    name: str
    user_id: str
    vtiger_version: str = ""
    api_version: str = ""


class VtigerApi:
    """``call(operation, params)`` -> the ``result`` of the envelope, or a crmsync error."""

    def __init__(self, http: httpx.Client, *, base_url: str, username: str,
                 access_key: str) -> None:
        self.http = http
        self.base_url = base_url
        self.username = username
        self._access_key = access_key
        self.calls = 0

    def session(self) -> Session:
        raise NotImplementedError

    def call(self, operation: str, params: dict[str, str] | None = None) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Forget the session (the webservice flavour also logs out)."""

    def _send(self, url: str, operation: str, params: dict[str, str],
              extra: dict[str, str], **kwargs: Any) -> httpx.Response:
        """One HTTP request with ``params`` where the server reads them."""
        verb = VERBS[operation]
        self.calls += 1
        where = {"params" if verb == "GET" else "data": {**extra, **params}}
        return VTIGER_HTTP.call(self.http, verb, url, what=f"{operation} at {self.base_url}",
                                write=verb == "POST", check=False, **where, **kwargs)

    def _decode(self, response: httpx.Response, operation: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "success" not in body:
            if response.status_code >= 500:
                hint = ""
                if operation in ("sync", "logout"):
                    hint = ("; on vTiger 8.0.0 under PHP 8 the stock "
                            "include/Webservices/OperationManager.php dies here with "
                            "\"Unknown named parameter\": patch it as "
                            "docs/connectors/vtiger.md says (PHP 8), or set "
                            "incremental = \"query\"")
                raise RemoteError(
                    f"vTiger failed {operation} with HTTP {response.status_code} and no "
                    f"answer (a PHP error on the server: see its PHP error log){hint}",
                    status=response.status_code, retryable=True)
            raise RemoteError(
                f"{response.request.url.copy_with(query=None)} did not answer as the vTiger "
                f"API (HTTP {response.status_code}, not a JSON envelope): check base_url "
                "and flavour", status=response.status_code)
        return body


class WebserviceSession(TokenAuth):
    """The webservice's ``sessionName``, sent with every call (query or form).

    Logins are serialised by :class:`TokenAuth`'s lock: a challenge lives 5 minutes and a
    concurrent ``getchallenge`` for the same user replaces it, so two threads logging in
    at once would spoil each other's token. A lost session (an HTTP 200 envelope with a
    session code: the server dropped it before acting) logs in once and the call is sent
    again.
    """

    requires_response_body = True

    def __init__(self, login: Callable[[], Token]) -> None:
        super().__init__()
        self._login = login

    def obtain(self) -> Token:
        return self._login()

    def attach(self, request: httpx.Request, token: Token) -> httpx.Request:
        return with_form_value(request, "sessionName", token.value)

    def is_refused(self, response: httpx.Response) -> bool:
        try:
            body = response.json()
        except ValueError:
            return False
        error = body.get("error") if isinstance(body, dict) and body.get("success") is False \
            else None
        return isinstance(error, dict) and str(error.get("code")) in SESSION_CODES


class WebserviceApi(VtigerApi):
    """The open-source ``/webservice.php``: getchallenge + login, then ``sessionName``
    (:class:`WebserviceSession`). ``INVALID_AUTH_TOKEN`` (another process logged in
    meanwhile) is retried with a fresh challenge."""

    def __init__(self, http: httpx.Client, *, base_url: str, username: str,
                 access_key: str) -> None:
        super().__init__(http, base_url=base_url, username=username, access_key=access_key)
        self.url = f"{base_url}/webservice.php"
        self.auth = WebserviceSession(self._login)

    @property
    def logins(self) -> int:
        return self.auth.obtained

    def session(self) -> Session:
        token = self.auth.token()
        return Session(name=token.value, **token.extra)

    def _login(self) -> Token:
        last: _Failure | None = None
        for _attempt in range(LOGIN_ATTEMPTS):
            challenge = self._raw("getchallenge", {"username": self.username})
            digest = hashlib.md5(  # noqa: S324 - the vendor's login scheme, not our choice
                (str(challenge["token"]) + self._access_key).encode()).hexdigest()
            try:
                result = self._raw("login", {"username": self.username, "accessKey": digest})
            except _Failure as failure:
                if failure.code in LOGIN_RETRY_CODES:
                    last = failure
                    continue
                raise failure.error() from None
            return Token(value=str(result["sessionName"]), extra={
                "user_id": str(result["userId"]),
                "vtiger_version": str(result.get("vtigerVersion", "")),
                "api_version": str(result.get("version", ""))})
        assert last is not None
        raise last.error()

    def call(self, operation: str, params: dict[str, str] | None = None) -> Any:
        try:
            return self._raw(operation, params or {}, auth=True)
        except _Failure as failure:
            raise failure.error() from None

    def _raw(self, operation: str, params: dict[str, str],
             session: Session | None = None, *, auth: bool = False) -> Any:
        extra = {"operation": operation}
        if session is not None or auth:  # the session goes second, as vTiger's own clients do
            extra["sessionName"] = session.name if session is not None else ""
        response = self._send(self.url, operation, params, extra,
                              auth=self.auth if auth else None)
        body = self._decode(response, operation)
        if body.get("success") is True:
            return body.get("result")
        error = body.get("error") or {}
        raise _Failure(self, str(error.get("code", "UNKNOWN")), str(error.get("message", "")),
                       operation, params, response.status_code)

    def close(self) -> None:
        token = self.auth.forget()
        if token is not None:
            # a failed logout is harmless: the session dies after 30 idle minutes
            with contextlib.suppress(_Failure, CrmsyncError):
                self._raw("logout", {}, Session(name=token.value, **token.extra))


class CloudApi(VtigerApi):
    """vTiger Cloud ``/restapi/v1/vtiger/default/<operation>``: HTTP Basic on each call.

    Failures come as HTTP 4xx / 5xx with the message in the status line (the body may
    carry the webservice envelope too; both are read).
    """

    def __init__(self, http: httpx.Client, *, base_url: str, username: str,
                 access_key: str) -> None:
        super().__init__(http, base_url=base_url, username=username, access_key=access_key)
        self.url = f"{base_url}/restapi/v1/vtiger/default"
        self._auth = httpx.BasicAuth(username, access_key)
        self._session: Session | None = None
        self._lock = threading.Lock()

    def session(self) -> Session:
        with self._lock:
            if self._session is None:
                me = self.call("me")
                self._session = Session(name="", user_id=str(me.get("id", "")))
            return self._session

    def call(self, operation: str, params: dict[str, str] | None = None) -> Any:
        params = params or {}
        response = self._send(f"{self.url}/{operation}", operation, params, {},
                              auth=self._auth)
        if response.status_code >= 400:
            code, message = _cloud_error(response)
            if response.status_code == 401:
                raise AuthError(
                    f"vTiger Cloud refused user {self.username!r} (HTTP 401: {message}): put "
                    "the user's Access Key (My Preferences) in CRMSYNC_VTIGER_ACCESS_KEY")
            raise to_error(code, message, operation=operation, params=params,
                           username=self.username, status=response.status_code)
        body = self._decode(response, operation)
        if body.get("success") is True:
            return body.get("result")
        error = body.get("error") or {}
        raise to_error(str(error.get("code", "UNKNOWN")), str(error.get("message", "")),
                       operation=operation, params=params, username=self.username)


def _cloud_error(response: httpx.Response) -> tuple[str, str]:
    code, message = "", response.reason_phrase or ""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", ""))
        message = str(body["error"].get("message", "")) or message
    status = response.status_code
    if not code:
        code = {401: "INVALID_USER_CREDENTIALS", 403: "ACCESS_DENIED", 404: "RECORD_NOT_FOUND",
                429: "RATE_LIMITED"}.get(status, f"HTTP_{status}")
    return code, message


class _Failure(Exception):
    """A ``success:false`` envelope, before it becomes a crmsync error."""

    def __init__(self, api: VtigerApi, code: str, message: str, operation: str,
                 params: dict[str, str], status: int) -> None:
        super().__init__(code)
        self.api, self.code, self.message = api, code, message
        self.operation, self.params, self.status = operation, params, status

    def error(self) -> CrmsyncError:
        return to_error(self.code, self.message, operation=self.operation, params=self.params,
                        username=self.api.username)


def is_denied(error: Exception) -> bool:
    """True for vTiger's catch-all ACCESS_DENIED (a missing or deleted record, often)."""
    return isinstance(error, VtigerError) and error.code == "ACCESS_DENIED"
