"""Authentication of inbound calls: endpoint secrets, body signatures, source
addresses, and the subscription form's CSRF tokens.

Every comparison of a secret runs in constant time (:func:`hmac.compare_digest`).
Secrets come from the environment or the secrets file (``Config.secrets()``), never
from ``crmsync.toml``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CsrfTokens",
    "EndpointKeys",
    "IpGuard",
    "RateWindow",
    "constant_equal",
    "signature_ok",
]

SECRET_ENV = "CRMSYNC_HOOK_SECRET_{side}"  # noqa: S105 - a variable name
SIGNING_ENV = "CRMSYNC_HOOK_SIGNING_KEY_{side}"
SEND_TOKEN_ENV = "CRMSYNC_SEND_TOKEN"  # noqa: S105 - a variable name
FORM_SECRET_ENV = "CRMSYNC_FORM_SECRET"  # noqa: S105 - a variable name


def constant_equal(given: str, expected: str) -> bool:
    """``given == expected`` in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def signature_ok(key: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC-SHA256 of body>`` under ``key``."""
    expected = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return constant_equal(header.strip().lower(), expected)


@dataclass(frozen=True)
class EndpointKeys:
    """The secrets of one inbound endpoint (``esp`` or ``crm``)."""

    secret: str | None
    signing_key: str | None

    @classmethod
    def from_env(cls, side: str, environ: Mapping[str, str] | None = None) -> EndpointKeys:
        env = os.environ if environ is None else environ
        return cls(secret=env.get(SECRET_ENV.format(side=side.upper())) or None,
                   signing_key=env.get(SIGNING_ENV.format(side=side.upper())) or None)


class IpGuard:
    """The source-address allow-list, believing ``X-Forwarded-For`` only from
    ``trusted_proxies``."""

    def __init__(self, allow: Sequence[str], trusted_proxies: Sequence[str] = ()) -> None:
        self.allow = [ipaddress.ip_network(item, strict=False) for item in allow]
        self.proxies = [ipaddress.ip_network(item, strict=False) for item in trusted_proxies]

    @staticmethod
    def _in(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
            ) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    def client(self, peer: str, forwarded_for: str) -> str:
        """The caller's address: the peer, or the last hop a trusted proxy added."""
        if forwarded_for and self.proxies and self._in(peer, self.proxies):
            hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
            if hops:
                return hops[-1]
        return peer

    def public_url(self, peer: str, url: str, headers: Mapping[str, str]) -> str:
        """``url`` as the sender called it: the scheme and host a trusted proxy names in
        ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` replace the ones this server saw
        (from anyone else those headers are ignored: they could be forged)."""
        if not (self.proxies and self._in(peer, self.proxies)):
            return url
        lower = {key.lower(): value for key, value in headers.items()}
        scheme, _, rest = url.partition("://")
        host, slash, tail = rest.partition("/")
        proto = lower.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        forwarded_host = lower.get("x-forwarded-host", "").split(",")[-1].strip()
        if proto in ("http", "https"):
            scheme = proto
        if forwarded_host and all(c.isalnum() or c in ".-:[]" for c in forwarded_host):
            host = forwarded_host
        return f"{scheme}://{host}{slash}{tail}"

    def allowed(self, address: str) -> bool:
        return not self.allow or self._in(address, self.allow)


class CsrfTokens:
    """Signed double-submit tokens: ``<time>.<nonce>.<HMAC>`` in a cookie and in the form.

    A POST is genuine when the form field equals the cookie (a cross-site page can
    neither read nor set the cookie) and the signature is ours and fresh (a token
    cannot be minted without the key, even by someone who can plant a cookie).
    """

    def __init__(self, key: str | None = None, *, max_age_s: float = 7200.0) -> None:
        self._key = (key or secrets.token_urlsafe(32)).encode()
        self.max_age_s = max_age_s

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        payload = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, cookie: str, field: str, now: float | None = None) -> bool:
        if not cookie or not field or not constant_equal(cookie, field):
            return False
        payload, _, signature = field.rpartition(".")
        if not payload or not constant_equal(signature, self._sign(payload)):
            return False
        stamp = payload.split(".", 1)[0]
        if not stamp.isdigit():
            return False
        age = (now if now is not None else time.time()) - int(stamp)
        return 0 <= age <= self.max_age_s


class RateWindow:
    """At most ``limit`` events per key in any ``window_s`` seconds (the form's
    per-address limit, so that nobody floods strangers with confirmation emails)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, list[float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.limit <= 0:
            return True
        now = time.monotonic() if now is None else now
        recent = [t for t in self._seen.get(key, []) if now - t < self.window_s]
        if len(self._seen) > 10_000:  # forget idle addresses rather than grow forever
            self._seen = {k: v for k, v in self._seen.items() if v and now - v[-1] < self.window_s}
        if len(recent) >= self.limit:
            self._seen[key] = recent
            return False
        recent.append(now)
        self._seen[key] = recent
        return True
