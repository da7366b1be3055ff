"""The settings of the ``sugarcrm`` connector (one model for both API flavours)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from crmsync.connect import HttpConnectorSettings, RetryPolicy
from crmsync.http import account_key

__all__ = ["SugarSettings"]

PERSON_MODULES = ("Contacts", "Leads", "Prospects")


class SugarSettings(HttpConnectorSettings):
    """Where the CRM is, how to log in, and what to read.

    ``flavour`` picks the API: ``rest`` (Sugar REST v10/v11, current Sugar) or ``v4_1``
    (the legacy REST API of SugarCRM CE and SuiteCRM 7/8; on SuiteCRM 8 point
    ``base_url`` at ``https://host/legacy``). Secrets come from the environment:
    ``CRMSYNC_SUGARCRM_PASSWORD``, ``CRMSYNC_SUGARCRM_CLIENT_SECRET``,
    ``CRMSYNC_SUGARCRM_WEBHOOK_TOKEN``.
    """

    flavour: Literal["rest", "v4_1"] = "rest"
    base_url: str
    username: str
    password: SecretStr
    # rest: OAuth2 client and a platform of our own, so a crmsync login never logs the
    # user out of their browser session (Sugar keeps one session per user and platform).
    client_id: str = "sugar"
    client_secret: SecretStr | None = None
    platform: str = "crmsync"
    api_version: str = "v11"
    # v4_1: the name given to `login` as its `application` argument.
    application: str = "crmsync"
    modules: list[str] = Field(default_factory=lambda: ["Contacts"])
    create_module: str = "Contacts"
    fields: list[str] = Field(default_factory=lambda: ["first_name", "last_name"])
    target_lists: list[str] | None = None  # None: every target list
    page_size: int = Field(200, ge=1, le=1000)
    batch_size: int = Field(100, ge=1, le=1000)
    retries: int = Field(4, ge=1, le=10)
    retry_backoff_s: float = 0.5
    webhook_token: SecretStr | None = None

    def account_key(self) -> str:
        """The Sugar instance (hashed): every crmsync process calling it shares
        ``rate_per_s``."""
        return account_key("sugarcrm", self.base_url.lower())

    def retry_policy(self) -> RetryPolicy:
        from .flavour import RETRYABLE_STATUSES

        return RetryPolicy(attempts=self.retries, backoff=self.retry_backoff_s,
                           statuses=RETRYABLE_STATUSES)

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        unknown = [item for item in value if item not in PERSON_MODULES]
        if unknown or not value:
            raise ValueError(
                f"modules must be a non-empty subset of {list(PERSON_MODULES)}, got {value}"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")
