"""The crmsync exception tree.

Every error crmsync raises on purpose derives from :class:`CrmsyncError`, and every
message says what is wrong and what to do about it::

    CrmsyncError
    ├── ConfigError          the configuration or the command line is wrong (exit code 2)
    ├── PluginError          a connector could not be found or loaded
    ├── AuthError            credentials refused or a session that cannot be renewed
    ├── RemoteError          the vendor answered with an error (status, code, message)
    │   ├── RateLimited      the vendor asked us to slow down (retry_after seconds)
    │   └── QuotaExhausted   the API budget for this run or day is used: stop, resume later
    ├── TransportError       the file space (FTP / FTPS / SFTP / folder) failed
    ├── DataError            a record or a file row is malformed (line number when known)
    ├── EventRejected        an inbound webhook is forged, garbled or not for us
    └── StateError           the state store is unreachable or its schema is newer than this code
        └── StateBusy        another crmsync process holds the state store's run lock
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "CrmsyncError",
    "DataError",
    "EventRejected",
    "PluginError",
    "QuotaExhausted",
    "RateLimited",
    "RemoteError",
    "StateBusy",
    "StateError",
    "TransportError",
]


class CrmsyncError(Exception):
    """Base of every error crmsync raises on purpose."""


class ConfigError(CrmsyncError):
    """The configuration, a setting or a command-line argument is wrong."""


class PluginError(CrmsyncError):
    """A connector plugin is missing, half-installed or broken."""

    def __init__(self, message: str, *, name: str = "", distribution: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.distribution = distribution


class AuthError(CrmsyncError):
    """The vendor refused the credentials, or a session could not be renewed."""


class RemoteError(CrmsyncError):
    """The vendor answered with an error.

    ``retryable`` tells the engine whether trying again later may succeed
    (5xx, locked rows, timeouts) or not (validation errors).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


class RateLimited(RemoteError):
    """The vendor asked us to slow down; ``retry_after`` is in seconds when it said."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, retryable=True)
        self.retry_after = retry_after


class QuotaExhausted(RemoteError):
    """The API budget is used up: the run stops cleanly and can be resumed later."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message, status=status, code=code, retryable=True)


class TransportError(CrmsyncError):
    """The file space could not be reached, listed, read or written."""


class DataError(CrmsyncError):
    """A record or a row of a file is malformed."""

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None):
        where = ""
        if source and line is not None:
            where = f"{source}, line {line}: "
        elif line is not None:
            where = f"line {line}: "
        elif source:
            where = f"{source}: "
        super().__init__(where + message)
        self.line = line
        self.source = source
        self.reason = message


class EventRejected(CrmsyncError):
    """An inbound event was refused: ``status`` is the HTTP answer to give (400 or 401)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StateError(CrmsyncError):
    """The state store cannot be used as it is."""


class StateBusy(StateError):
    """Another crmsync process holds the lock this one needs: wait, or try later."""
