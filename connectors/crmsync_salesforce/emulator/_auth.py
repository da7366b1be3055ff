"""The emulated org's login server: OAuth 2 token endpoint and the SOAP ``login()``.

One connected app (consumer key / secret, the certificate of a throw-away RSA key for
the JWT bearer flow) and one integration user. Tokens live until ``expire()``.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["LoginServer", "private_key_pem"]

ORG_ID = "00D5g000004XyZ1EAK"
USER_ID = "0055g000003AbCdAAK"
CONSUMER_KEY = "3MVG9.emulator.consumer.key"
USERNAME = "integration@example.com"
_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


@lru_cache(maxsize=1)
def _key() -> rsa.RSAPrivateKey:
    # One key per process: generating RSA keys is slow and tests start many emulators.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem() -> str:
    """The connected app's private key, as the integration would hold it (PEM)."""
    return _key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


class LoginServer:
    """Issues and checks access tokens."""

    def __init__(self) -> None:
        #: Which JWT ``aud`` the org takes: "any" (login, test or its My Domain), "standard"
        #: (login.salesforce.com / test.salesforce.com only, as the JWT flow documents for a
        #: Connected App, even when the token is asked at My Domain) or "mydomain" (its My
        #: Domain only, as some External Client Apps want).
        self.jwt_audiences = "any"
        # Emulator credentials, published in its demo profile: not secrets.
        self.consumer_secret = "emulator-consumer-secret"  # noqa: S105
        self.password = "emulator-password"  # noqa: S105
        self.security_token = "emulatortoken"  # noqa: S105
        self.tokens: dict[str, str] = {}  # token -> username
        self.logins: dict[str, int] = {}  # grant type -> count

    def expire(self) -> None:
        self.tokens.clear()

    def _issue(self, grant: str, base_url: str) -> dict[str, Any]:
        token = f"{ORG_ID}!{secrets.token_urlsafe(24)}"
        self.tokens[token] = USERNAME
        self.logins[grant] = self.logins.get(grant, 0) + 1
        return {"access_token": token, "scope": "api", "instance_url": base_url,
                "id": f"{base_url}/id/{ORG_ID}/{USER_ID}", "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
                "signature": base64.b64encode(secrets.token_bytes(32)).decode()}

    def token(self, body: bytes, authorization: str, base_url: str) -> tuple[int, dict[str, Any]]:
        """``POST /services/oauth2/token``: status and JSON answer."""
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "password":
            if form.get("client_id") != CONSUMER_KEY or \
                    form.get("client_secret") != self.consumer_secret:
                return 400, {"error": "invalid_client_id",
                             "error_description": "client identifier invalid"}
            if form.get("username") != USERNAME or form.get("password") not in (
                    self.password, self.password + self.security_token):
                return 400, {"error": "invalid_grant",
                             "error_description": "authentication failure"}
            return 200, self._issue("password", base_url)
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            problem = self._check_assertion(form.get("assertion", ""), base_url)
            if problem:
                return 400, {"error": "invalid_grant", "error_description": problem}
            return 200, self._issue("jwt", base_url)
        if grant == "client_credentials":
            key, secret = form.get("client_id"), form.get("client_secret")
            if authorization.lower().startswith("basic "):
                try:
                    key, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
                except ValueError:
                    key = secret = None
            if key != CONSUMER_KEY or secret != self.consumer_secret:
                return 400, {"error": "invalid_client",
                             "error_description": "invalid client credentials"}
            return 200, self._issue("client_credentials", base_url)
        return 400, {"error": "unsupported_grant_type",
                     "error_description": "grant type not supported"}

    def _check_assertion(self, assertion: str, base_url: str) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return "invalid assertion"
        if header.get("alg") != "RS256":
            return "invalid assertion"
        try:
            claims = jwt.decode(
                assertion, _key().public_key(), algorithms=["RS256"],
                audience={"standard": list(_AUDIENCES), "mydomain": [base_url]}.get(
                    self.jwt_audiences, [*_AUDIENCES, base_url]), issuer=CONSUMER_KEY,
                options={"require": ["iss", "sub", "aud", "exp"]}, leeway=5)
        except jwt.ExpiredSignatureError:
            return "expired authorization code"
        except jwt.PyJWTError:
            return "invalid assertion"
        if claims["exp"] - time.time() > 300:
            return "invalid assertion"  # Salesforce wants exp at most a few minutes ahead
        if claims["sub"] != USERNAME:
            return "user hasn't approved this consumer"
        return ""

    def soap_login(self, body: bytes, version: str, base_url: str) -> tuple[int, str]:
        """``POST /services/Soap/u/{version}``: status and XML answer."""
        if float(version) >= 65.0:
            return 500, _fault("INVALID_OPERATION", "INVALID_OPERATION: SOAP Login operation is "
                               f"not available in the API version specified ({version})")
        text = body.decode(errors="replace")
        user = re.search(r"<(?:\w+:)?username>([^<]*)</", text)
        password = re.search(r"<(?:\w+:)?password>([^<]*)</", text)
        if not user or not password or user.group(1) != USERNAME or password.group(1) not in (
                self.password, self.password + self.security_token):
            return 500, _fault("INVALID_LOGIN", "INVALID_LOGIN: Invalid username, password, "
                               "security token; or user locked out.")
        token = self._issue("soap", base_url)["access_token"]
        return 200, (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{base_url}/services/Soap/m/{version}/{ORG_ID}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
            f"<serverUrl>{base_url}/services/Soap/u/{version}/{ORG_ID}</serverUrl>"
            f"<sessionId>{token}</sessionId><userId>{USER_ID}</userId>"
            f"<userInfo><organizationId>{ORG_ID}</organizationId>"
            f"<userName>{USERNAME}</userName><sessionSecondsValid>7200</sessionSecondsValid>"
            "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>")


def _fault(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>sf:{code}</faultcode><faultstring>{message}</faultstring><detail>"
        f'<sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
        f"<sf:exceptionMessage>{message}</sf:exceptionMessage></sf:LoginFault></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>")
