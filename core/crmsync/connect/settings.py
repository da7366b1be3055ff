"""The settings base of an HTTP connector: one spelling for each transport setting."""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

import httpx
from pydantic import Field, model_validator

from ..contract import ConnectorSettings
from ..http import RetryPolicy, build_client

__all__ = ["DEPRECATED_SPELLINGS", "HttpConnectorSettings"]

log = logging.getLogger("crmsync.connect")

#: Old spellings of the transport settings, still read (with a warning) so that a
#: ``crmsync.toml`` written for an older release keeps working.
DEPRECATED_SPELLINGS: dict[str, str] = {
    "timeout": "timeout_s",
    "rate": "rate_per_s",
    "ca_path": "ca_file",
    "ca_bundle": "ca_file",
    "verify": "ca_file",
    "read_overlap_s": "overlap_s",
    "overlap_seconds": "overlap_s",
}


class HttpConnectorSettings(ConnectorSettings):
    """Base of an HTTP connector's settings: extend it and add the vendor's own fields.

    ``base_url`` where the API lives, ``timeout_s`` per call, ``rate_per_s`` calls per
    second at most (unset: no pacing), ``retries`` attempts of one call (the transport's
    one retry policy), ``ca_file`` a CA bundle to trust besides the system's (certificate
    checks are never turned off), ``overlap_s`` how far an incremental read goes back
    before its cursor. :meth:`http_client` builds the client these describe.
    """

    #: a connector may keep other old names for its own fields: ``{"old": "new"}``
    renamed: ClassVar[dict[str, str]] = {}

    base_url: str = Field("", description="where the vendor's API lives (https://...)")
    timeout_s: float = Field(30.0, gt=0, description="seconds before one API call times out")
    rate_per_s: float | None = Field(None, ge=0, description="at most this many API calls "
                                     "per second; unset = no pacing")
    retries: int = Field(5, ge=1, le=20, description="attempts of one API call (429, 5xx, "
                         "a dropped connection), with backoff honouring Retry-After")
    ca_file: str | None = Field(None, description="a CA bundle to trust besides the "
                                "system's (certificate checks are never turned off)")
    overlap_s: float = Field(300.0, ge=0, description="how far an incremental read goes "
                             "back before its cursor, in seconds")

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        renamed = {**DEPRECATED_SPELLINGS, **cls.renamed}
        out = dict(data)
        for old, new in renamed.items():
            if old not in out or old in cls.model_fields:
                continue
            value = out.pop(old)
            if new in out:
                raise ValueError(f"{old} and {new} are the same setting: keep {new} only")
            if old == "verify":
                if value is True:
                    continue
                if value is False or not isinstance(value, str):
                    raise ValueError("verify = false is not supported (certificate checks "
                                     "stay on): set ca_file to the CA that signed the "
                                     "server's certificate")
            message = (f"setting {old!r} is deprecated: rename it to {new!r} in the "
                       "configuration (it is read as such for now)")
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            log.warning("%s", message)
            out[new] = value
        return out

    def account_key(self) -> str | None:
        """The vendor account these settings call as, hashed
        (:func:`crmsync.http.account_key`): the key of the rate limit every crmsync
        process calling that account shares. ``None`` (the default): this process paces
        its own calls. A connector whose vendor limits calls per account overrides it."""
        return None

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retries)

    def http_client(self, *, base_url: str | None = None,
                    transport: httpx.BaseTransport | None = None,
                    headers: dict[str, str] | None = None,
                    auth: httpx.Auth | None = None) -> httpx.Client:
        """The paced, retrying ``httpx.Client`` these settings describe (``auth`` is
        attached to every request: a :class:`~crmsync.connect.TokenAuth`, say)."""
        client = build_client(base_url=self.base_url if base_url is None else base_url,
                              timeout=self.timeout_s, rate=self.rate_per_s or None,
                              policy=self.retry_policy(), transport=transport,
                              verify=self.ca_file or True, headers=headers,
                              account=self.account_key())
        if auth is not None:
            client.auth = auth
        return client
