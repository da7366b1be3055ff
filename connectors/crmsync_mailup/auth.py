"""OAuth 2 for MailUp's REST API: the password grant, and refresh with rotation.

MailUp renews the refresh token on every refresh ("also the refresh token is
renewed"), so the strategy keeps the newest one; when a refresh is refused it falls
back to the password grant once (both done by :class:`crmsync.connect.TokenAuth`).
Tokens never appear in a message or a log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from crmsync.connect import ErrorMap, ErrorRule, Token, TokenAuth, idempotent
from crmsync.errors import AuthError, ConfigError, RateLimited

from .settings import MailUpSettings

__all__ = ["TOKEN_ERRORS", "PasswordGrant"]

TOKEN_ERRORS = ErrorMap("MailUp", code_keys=("error", "ErrorName"),
                        message_keys=("error_description", "ErrorDescription", "error"),
                        rules=[
    ErrorRule(RateLimited, status=429, advice="MailUp asks to slow down: run again in a "
              "minute; lower [esp.settings] rate_per_s if other tools share this account"),
    ErrorRule(AuthError, status=range(400, 500), advice="check client_id, "
              "CRMSYNC_MAILUP_CLIENT_SECRET, username and CRMSYNC_MAILUP_PASSWORD"),
])


class PasswordGrant(TokenAuth):
    """The one auth strategy MailUp needs for unattended use (resource owner password)."""

    def __init__(self, settings: MailUpSettings, http: httpx.Client, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.settings = settings
        self._http = http

    def obtain(self) -> Token:
        missing = [name for name, value in (
            ("client_id", self.settings.client_id), ("username", self.settings.username),
            ("client_secret", self.settings.client_secret.get_secret_value()),
            ("password", self.settings.password.get_secret_value())) if not value]
        if missing:
            env = ", ".join(f"CRMSYNC_MAILUP_{name.upper()}" for name in missing)
            raise ConfigError(f"MailUp needs {', '.join(missing)}: set them in [esp.settings] "
                              f"(secrets in the environment as {env})")
        return self._grant({"grant_type": "password", "username": self.settings.username,
                            "password": self.settings.password.get_secret_value()})

    def refresh(self, token: Token) -> Token:
        return self._grant({"grant_type": "refresh_token", "refresh_token": token.refresh or ""})

    def _grant(self, form: dict[str, str]) -> Token:
        secret = self.settings.client_secret.get_secret_value()
        # A grant is safe to repeat, so it is marked idempotent: the transport's one
        # retry policy retries a 5xx, a 429 or a dropped connection.
        what = f"refused the {form['grant_type']} grant for user {self.settings.username!r}"
        response = TOKEN_ERRORS.call(
            self._http, "POST", self.settings.auth_url, what=what, auth=httpx.BasicAuth(
                self.settings.client_id, secret), extensions=idempotent(),
            data={**form, "client_id": self.settings.client_id, "client_secret": secret})
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"MailUp answered the {form['grant_type']} grant without an "
                            "access token: check auth_url")
        refresh = body.get("refresh_token")
        return Token(value=token, refresh=refresh if isinstance(refresh, str) and refresh
                     else None, expires_in=float(body.get("expires_in") or 3600))


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
