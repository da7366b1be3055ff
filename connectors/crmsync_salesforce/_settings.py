"""The Salesforce connector's settings (``[crm.settings]`` plus secrets from the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from crmsync.connect import HttpConnectorSettings
from crmsync.http import account_key

__all__ = ["SalesforceSettings"]


class SalesforceSettings(HttpConnectorSettings):
    """How to reach one org and what to read from it.

    Secrets (``client_secret``, ``password``, ``security_token``, ``private_key``) come
    from ``CRMSYNC_SALESFORCE_<FIELD>`` or the secrets file, never from the TOML.
    """

    instance_url: str | None = None
    """``https://acme.my.salesforce.com``; default: the ``instance_url`` the login returns."""
    login_url: str = "https://login.salesforce.com"
    jwt_audience: str | None = None
    """The JWT ``aud`` claim; default: ``login_url``. Set ``https://login.salesforce.com``
    (or ``https://test.salesforce.com``) when the token is asked at My Domain but the
    connected app wants the standard audience."""
    auth: Literal["jwt", "password", "client_credentials", "soap"] = "jwt"
    username: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    private_key: SecretStr | None = None
    key_file: Path | None = None
    """PEM file of the connected app's private key (JWT bearer), instead of ``private_key``."""
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$")
    base_url: str = Field("", description="unused: Salesforce is reached at login_url, then "
                          "at the instance_url the login returns")
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(4, ge=1, le=20)

    objects: list[Literal["Contact", "Lead"]] = ["Contact", "Lead"]
    fields: list[str] = ["FirstName", "LastName", "HasOptedOutOfEmail", "Interests__c"]
    boolean_fields: list[str] = ["HasOptedOutOfEmail", "DoNotCall", "HasOptedOutOfFax",
                                 "IsEmailBounced"]
    memberships: bool = True
    """Read CampaignMember rows into ``Contact.memberships`` (``campaign:<id>`` -> Status)."""
    query_batch_size: int = Field(2000, ge=200, le=2000)
    check_deleted_window: bool = True
    deleted_check_after_s: float = Field(3600.0, ge=0)
    """Ask Get Deleted only when the cursor is older than this (short polls skip it)."""

    bulk_read_threshold: int = Field(10_000, ge=0)
    bulk_write_threshold: int = Field(2_000, ge=0)
    bulk_page_size: int = Field(50_000, ge=1)
    bulk_poll_max_interval: float = Field(2.0, gt=0)
    bulk_timeout: float = Field(3600.0, gt=0)

    create_object: Literal["Contact", "Lead"] = "Contact"
    default_last_name: str = "[not provided]"
    default_company: str = "[not provided]"

    quota_share: float = Field(0.9, gt=0, le=1)
    """Stop the run (resumably) once this share of the daily API budget is used."""
    organization_id: str | None = None
    """The org id Outbound Messages must carry (``00D...``); others are refused (401)."""

    def account_key(self) -> str:
        """The org (hashed): its id when set, else its My Domain, else the login URL and
        user. Every crmsync process calling the org shares ``rate_per_s``."""
        if self.organization_id:
            return account_key("salesforce", self.organization_id[:15])
        if self.instance_url:
            return account_key("salesforce", self.instance_url.rstrip("/").lower())
        return account_key("salesforce", self.login_url.rstrip("/").lower(),
                           self.username or self.client_id)
