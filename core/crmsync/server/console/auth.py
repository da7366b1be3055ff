"""The console's operator login: password check, sessions, CSRF tokens, lockout.

The password is ``CRMSYNC_CONSOLE_PASSWORD_HASH`` (an scrypt hash made by
:func:`hash_password`, ``crmsync console --hash-password``) or, simpler and weaker,
``CRMSYNC_CONSOLE_PASSWORD`` itself; both come from :meth:`Config.secrets` (the
environment, then the secrets file) and are held as ``SecretStr``.

A session is a random token in a cookie (``Secure``, ``HttpOnly``, ``SameSite=Strict``)
naming a server-side record with its own CSRF token; sessions live in the process (a
restart logs everyone out). After ``max_failures`` wrong passwords in a row from one
address, that address waits ``lockout_s`` before the next try is even checked, and the
wait doubles with each further wrong password (at most an hour).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from ...errors import ConfigError

__all__ = ["HASH_ENV", "PASSWORD_ENV", "Operator", "Session", "hash_password",
           "password_matches"]

HASH_ENV = "CRMSYNC_CONSOLE_PASSWORD_HASH"
PASSWORD_ENV = "CRMSYNC_CONSOLE_PASSWORD"  # noqa: S105 - a variable name

# scrypt's interactive-login parameters (RFC 7914 suggests N=2**14, r=8, p=1): about
# 50 ms and 16 MiB per check, which is what makes a stolen hash slow to guess.
_N, _R, _P = 2**14, 8, 1
_MAX_LOCK_S = 3600.0


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<hash>`` (base64) for ``CRMSYNC_CONSOLE_PASSWORD_HASH``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.strip().split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(part) for part in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(
            parts[5], validate=True)
        if n < 2 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or len(digest) < 16:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{HASH_ENV} is not a hash crmsync made: run `crmsync console "
                          "--hash-password` and set what it prints") from None
    return n, r, p, salt, digest


def password_matches(password: str, stored_hash: str) -> bool:
    """Whether ``password`` is the one ``stored_hash`` was made from (constant time)."""
    n, r, p, salt, digest = _parse_hash(stored_hash)
    given = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                           maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(given, digest)


@dataclass
class Session:
    csrf: str
    expires: float


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class Operator:
    """Who may use the console, and the state of their sessions and failed logins."""

    password_hash: SecretStr | None = None
    password: SecretStr | None = None
    session_s: float = 8 * 3600.0
    max_failures: int = 5
    lockout_s: float = 30.0
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_secrets(cls, secrets_: Mapping[str, str], *, session_s: float,
                     max_failures: int, lockout_s: float) -> Operator | None:
        """The operator the secrets name, or ``None``: no console."""
        stored = secrets_.get(HASH_ENV) or None
        plain = secrets_.get(PASSWORD_ENV) or None
        if stored is None and plain is None:
            return None
        if stored is not None:
            _parse_hash(stored)  # a malformed hash is a configuration error at start-up
        return cls(password_hash=SecretStr(stored) if stored else None,
                   password=SecretStr(plain) if plain else None, session_s=session_s,
                   max_failures=max_failures, lockout_s=lockout_s)

    # -- logging in ------------------------------------------------------------------------
    def wait_s(self, client: str, now: float | None = None) -> float:
        """How long ``client`` must still wait before a password is checked (0: none)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            record = self._failures.get(client)
            return max(0.0, record.locked_until - now) if record else 0.0

    def login(self, client: str, password: str, now: float | None = None) -> str | None:
        """A new session token when ``password`` is right (``None`` when wrong; the
        caller checks :meth:`wait_s` first)."""
        now = time.monotonic() if now is None else now
        if self.password_hash is not None:
            ok = password_matches(password, self.password_hash.get_secret_value())
        else:
            assert self.password is not None
            ok = hmac.compare_digest(password.encode(),
                                     self.password.get_secret_value().encode())
        with self._lock:
            if not ok:
                record = self._failures.setdefault(client, _Failures())
                record.count += 1
                over = record.count - self.max_failures
                if over >= 0:
                    record.locked_until = now + min(self.lockout_s * 2**over, _MAX_LOCK_S)
                if len(self._failures) > 10_000:  # forget the oldest rather than grow
                    self._failures.pop(next(iter(self._failures)))
                return None
            self._failures.pop(client, None)
            token = secrets.token_urlsafe(32)
            self._sessions[token] = Session(csrf=secrets.token_urlsafe(32),
                                            expires=now + self.session_s)
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
            return token

    def session(self, token: str, now: float | None = None) -> Session | None:
        now = time.monotonic() if now is None else now
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(token)
            if found is None or found.expires <= now:
                self._sessions.pop(token, None)
                return None
            return found

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)
