"""Login strategies: one object per OAuth flow, SOAP ``login()`` only as a fallback.

Each strategy turns the settings into a :class:`SalesforceSession` (access token and
instance URL). :class:`~crmsync_salesforce._rest.SalesforceApi` calls ``login`` again
whenever the API answers ``INVALID_SESSION_ID``.

The OAuth flows speak to the token endpoint through the connector's httpx client:
simple-salesforce hard-codes ``https://{domain}.salesforce.com`` for them, so a My
Domain login URL with a port (or an emulator) cannot be reached through it. The SOAP
fallback is simple-salesforce's own ``SalesforceLogin`` (its ``scratch_url`` accepts
any login host) over a ``requests`` session that trusts ``ca_file``.
"""

from __future__ import annotations

import base64
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import jwt

from crmsync.connect import ErrorMap, ErrorRule, Token, TokenAuth
from crmsync.errors import AuthError, ConfigError, RemoteError

from ._settings import SalesforceSettings

__all__ = [
    "AuthFlow",
    "ClientCredentialsFlow",
    "JwtBearerFlow",
    "PasswordFlow",
    "SalesforceAuth",
    "SalesforceSession",
    "SoapLoginFlow",
    "flow_for",
]


#: The token endpoint's answers: every refusal below 500 is a login to fix.
LOGIN_ERRORS = ErrorMap("Salesforce", code_keys=("error",), message_keys=("error_description",),
                        rules=[ErrorRule(AuthError, status=range(400, 500), advice=(
                            "check the connected app, username and credentials in the "
                            "settings and CRMSYNC_SALESFORCE_*"))])


@dataclass(frozen=True)
class SalesforceSession:
    """An access token and the instance it is valid on."""

    instance_url: str
    access_token: str = field(repr=False)


def _secret(settings: SalesforceSettings, name: str) -> str:
    value = getattr(settings, name)
    if value is None or not value.get_secret_value():
        raise ConfigError(
            f"salesforce auth={settings.auth!r} needs {name}: set "
            f"CRMSYNC_SALESFORCE_{name.upper()} in the environment or the secrets file")
    return str(value.get_secret_value())


def _setting(settings: SalesforceSettings, name: str) -> str:
    value = getattr(settings, name)
    if not value:
        raise ConfigError(f"salesforce auth={settings.auth!r} needs {name} in [crm.settings]")
    return str(value)


class AuthFlow(ABC):
    """One way of obtaining a session."""

    name: ClassVar[str]

    def __init__(self, settings: SalesforceSettings) -> None:
        self.settings = settings
        self.logins = 0

    @abstractmethod
    def login(self, http: httpx.Client) -> SalesforceSession:
        """A fresh session, or :class:`AuthError` saying what to fix."""

    def _token(self, http: httpx.Client, data: dict[str, str],
               headers: dict[str, str] | None = None) -> SalesforceSession:
        url = self.settings.login_url.rstrip("/") + "/services/oauth2/token"
        response = LOGIN_ERRORS.call(http, "POST", url, what=f"{self.name} login", data=data,
                                     headers=headers or {}, auth=None)
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if "access_token" not in body:
            raise AuthError(f"Salesforce answered the {self.name} login without a token: "
                            "check login_url")
        self.logins += 1
        return SalesforceSession(
            instance_url=(self.settings.instance_url or body.get("instance_url", "")).rstrip("/"),
            access_token=str(body["access_token"]))


class PasswordFlow(AuthFlow):
    """OAuth 2 username-password flow (password + security token)."""

    name = "password"

    def login(self, http: httpx.Client) -> SalesforceSession:
        token = self.settings.security_token
        return self._token(http, {
            "grant_type": "password", "client_id": _setting(self.settings, "client_id"),
            "client_secret": _secret(self.settings, "client_secret"),
            "username": _setting(self.settings, "username"),
            "password": _secret(self.settings, "password")
            + (token.get_secret_value() if token else ""),
        })


class JwtBearerFlow(AuthFlow):
    """OAuth 2 JWT bearer flow: an RS256 assertion signed with the connected app's key."""

    name = "jwt"

    def _key(self) -> str:
        if self.settings.private_key is not None:
            return self.settings.private_key.get_secret_value()
        if self.settings.key_file is not None:
            try:
                return self.settings.key_file.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read key_file {self.settings.key_file}: "
                                  f"{exc.strerror}") from None
        raise ConfigError("salesforce auth='jwt' needs the connected app's private key: set "
                          "CRMSYNC_SALESFORCE_PRIVATE_KEY (PEM) or key_file")

    def login(self, http: httpx.Client) -> SalesforceSession:
        # The same claims simple-salesforce sends: aud is the login host (or jwt_audience,
        # for a token asked at My Domain with the standard audience), exp 3 minutes.
        claims = {"iss": _setting(self.settings, "client_id"),
                  "sub": _setting(self.settings, "username"),
                  "aud": (self.settings.jwt_audience or self.settings.login_url).rstrip("/"),
                  "exp": int(time.time()) + 180}
        try:
            assertion = jwt.encode(claims, self._key(), algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigError(f"the JWT private key cannot sign ({type(exc).__name__}): "
                              "it must be the connected app's RSA key in PEM") from None
        return self._token(http, {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                  "assertion": assertion})


class ClientCredentialsFlow(AuthFlow):
    """OAuth 2 client-credentials flow (a My Domain login URL and a run-as user)."""

    name = "client_credentials"

    def login(self, http: httpx.Client) -> SalesforceSession:
        pair = f"{_setting(self.settings, 'client_id')}:{_secret(self.settings, 'client_secret')}"
        return self._token(http, {"grant_type": "client_credentials"}, headers={
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode()})


class SoapLoginFlow(AuthFlow):
    """SOAP ``login()`` (being retired: API v65+ and new orgs refuse it); fallback only."""

    name = "soap"

    def login(self, http: httpx.Client) -> SalesforceSession:
        import requests
        from simple_salesforce.exceptions import SalesforceAuthenticationFailed
        from simple_salesforce.login import SalesforceLogin

        token = self.settings.security_token
        with requests.Session() as session:
            if self.settings.ca_file:
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify
                # unless the environment is ignored: the configured CA must win.
                session.trust_env = False
                session.verify = self.settings.ca_file
            try:
                session_id, instance = SalesforceLogin(
                    username=_setting(self.settings, "username"),
                    password=_secret(self.settings, "password"),
                    security_token=token.get_secret_value() if token else "",
                    sf_version=self.settings.api_version, session=session,
                    client_id="crmsync", scratch_url=self.settings.login_url.rstrip("/"))
            except SalesforceAuthenticationFailed as exc:
                raise AuthError(
                    f"Salesforce refused the SOAP login ({exc.code}): check username, "
                    "password and security token, or move to auth='jwt' (SOAP login is "
                    "unavailable from API v65.0)") from None
            except requests.RequestException as exc:
                raise RemoteError(f"cannot reach the Salesforce login server "
                                  f"({type(exc).__name__}): check login_url",
                                  retryable=True) from None
        self.logins += 1
        return SalesforceSession(
            instance_url=(self.settings.instance_url or f"https://{instance}").rstrip("/"),
            access_token=session_id)


class SalesforceAuth(TokenAuth):
    """The session of one flow as a :class:`TokenAuth`: a 401 logs in again once and the
    call is sent again, except a query-locator page (``locator()``), which died with the
    old session: its caller restarts the query instead."""

    def __init__(self, flow: AuthFlow, http: httpx.Client) -> None:
        super().__init__()
        self.flow = flow
        self.http = http

    def obtain(self) -> Token:
        session = self.flow.login(self.http)
        return Token(value=session.access_token, extra={"instance_url": session.instance_url})

    def session(self) -> SalesforceSession:
        token = self.token()
        return SalesforceSession(instance_url=token.extra["instance_url"],
                                 access_token=token.value)

    def resend(self, request: httpx.Request) -> bool:
        return not request.extensions.get(_LOCATOR)


_LOCATOR = "crmsync_salesforce.locator"


def locator() -> dict[str, Any]:
    """Request extensions marking a query-locator page (see :class:`SalesforceAuth`)."""
    return {_LOCATOR: True}


_FLOWS: dict[str, type[AuthFlow]] = {
    "jwt": JwtBearerFlow, "password": PasswordFlow,
    "client_credentials": ClientCredentialsFlow, "soap": SoapLoginFlow,
}


def flow_for(settings: SalesforceSettings) -> AuthFlow:
    """The strategy for ``settings.auth``; ``password`` without a connected app falls back
    to SOAP login."""
    if settings.auth == "password" and not settings.client_id:
        return SoapLoginFlow(settings)
    return _FLOWS[settings.auth](settings)
