"""OAuth 2 for MailUp's REST API: the password grant, and refresh with rotation.

MailUp renews the refresh token on every refresh ("also the refresh token is
renewed"), so the strategy keeps the newest one; when a refresh is refused it falls
back to the password grant once. Tokens never appear in a message or a log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from crmsync.errors import AuthError, ConfigError, RateLimited, RemoteError
from crmsync.http import idempotent

from .settings import MailUpSettings

__all__ = ["PasswordGrant"]

_MARGIN_S = 60.0  # refresh a little before MailUp's 3600 s expiry


class PasswordGrant:
    """The one auth strategy MailUp needs for unattended use (resource owner password)."""

    def __init__(self, settings: MailUpSettings, http: httpx.Client, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self.logins = 0
        self.refreshes = 0

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header for a resource call, logging in when needed."""
        with self._lock:
            if self._access is None or self._clock() >= self._expires_at:
                self._renew()
            assert self._access is not None
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self, used: str | None = None) -> None:
        """Forget the access token after a 401 so the next call refreshes it."""
        with self._lock:
            if used is None or used == f"Bearer {self._access}":
                self._access = None

    def _renew(self) -> None:
        if self._refresh:
            try:
                self._token({"grant_type": "refresh_token", "refresh_token": self._refresh})
                self.refreshes += 1
                return
            except AuthError:
                self._refresh = None  # rotated away or revoked: log in again
        self._login()

    def _login(self) -> None:
        missing = [name for name, value in (
            ("client_id", self.settings.client_id), ("username", self.settings.username),
            ("client_secret", self.settings.client_secret.get_secret_value()),
            ("password", self.settings.password.get_secret_value())) if not value]
        if missing:
            env = ", ".join(f"CRMSYNC_MAILUP_{name.upper()}" for name in missing)
            raise ConfigError(f"MailUp needs {', '.join(missing)}: set them in [esp.settings] "
                              f"(secrets in the environment as {env})")
        self._token({"grant_type": "password", "username": self.settings.username,
                     "password": self.settings.password.get_secret_value()})
        self.logins += 1

    def _token(self, form: dict[str, str]) -> None:
        secret = self.settings.client_secret.get_secret_value()
        data = {**form, "client_id": self.settings.client_id, "client_secret": secret}
        # A grant is safe to repeat (a spent refresh token falls back to the password
        # grant), so it is marked idempotent: the transport's one retry policy retries a
        # 5xx, a 429 or a dropped connection (no loop here: it would multiply the calls).
        try:
            response = self._http.post(
                self.settings.auth_url, data=data, extensions=idempotent(),
                auth=httpx.BasicAuth(self.settings.client_id, secret))
        except httpx.HTTPError as exc:
            raise RemoteError(f"MailUp token endpoint {self.settings.auth_url} "
                              f"unreachable ({type(exc).__name__}): check auth_url and "
                              "the network", retryable=True) from None
        if response.status_code == 429:  # MailUp asks to slow down: no credential issue
            raise RateLimited(
                f"MailUp's token endpoint is rate-limiting crmsync (HTTP 429: "
                f"{_describe(_json(response)) or 'too many requests'}): the run stops "
                "here and can be run again in a minute; lower [esp.settings] rate if "
                "other tools share this MailUp account", retry_after=_retry_after(response),
                code="429")
        if response.status_code >= 500:
            raise RemoteError(f"MailUp token endpoint answered {response.status_code}: "
                              "try again later", status=response.status_code,
                              code=str(response.status_code), retryable=True)
        grant = form["grant_type"]
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            detail = _describe(body)
            raise AuthError(
                f"MailUp refused the {grant} grant for user {self.settings.username!r} "
                f"(HTTP {response.status_code}{': ' + detail if detail else ''}): check "
                "client_id, CRMSYNC_MAILUP_CLIENT_SECRET, username and CRMSYNC_MAILUP_PASSWORD")
        self._access = token
        refresh = body.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._refresh = refresh
        expires = float(body.get("expires_in") or 3600)
        self._expires_at = self._clock() + max(1.0, expires - min(_MARGIN_S, expires / 10))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(60.0, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _describe(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    for key in ("error_description", "ErrorDescription", "error", "ErrorName"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""
