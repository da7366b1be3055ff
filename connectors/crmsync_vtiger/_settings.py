"""Settings of the vTiger connector (``[crm.settings]``; the access key from the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from crmsync.connect import HttpConnectorSettings, iana_time_zone
from crmsync.http import account_key

__all__ = ["VtigerSettings"]


class VtigerSettings(HttpConnectorSettings):
    """How to reach one vTiger install and what to read from it."""

    base_url: str = Field(description="the vTiger address: https://crm.example.com for the "
                          "webservice (webservice.php is appended), or "
                          "https://acme.odx.vtiger.com for vTiger Cloud REST")
    username: str = Field(description="the vTiger user crmsync logs in as")
    access_key: SecretStr = Field(description="the user's Access Key (My Preferences), "
                                  "not the password")
    flavour: Literal["webservice", "cloud"] = Field(
        "webservice", description="webservice = /webservice.php with challenge login; "
        "cloud = /restapi/v1/vtiger/default with HTTP Basic")
    server_timezone: str = Field("UTC", description="the time zone the server stores and "
                                 "returns datetimes in ($default_timezone in config.inc.php)")
    campaigns: list[str] | None = Field(None, description="campaign ids whose membership "
                                        "is read (12 or 1x12); unset = every campaign, [] = none")
    fields: list[str] | None = Field(None, description="columns read with VTQL (id, email, "
                                     "emailoptout, modifiedtime and assigned_user_id are "
                                     "always read); unset = every field")
    incremental: Literal["auto", "sync", "query"] = Field(
        "auto", description="auto = sync for the API user's records plus VTQL for records "
        "other users own; sync = trust sync alone (a server patched to honour sync_type); "
        "query = VTQL on modifiedtime only (no deletions)")
    sync_type: str | None = Field(None, description="syncType sent with sync (application "
                                  "or userandgroup) on servers that accept it, such as "
                                  "F-RevoCRM; the stock server ignores it")
    owner_id: str | None = Field(None, description="assigned_user_id of contacts crmsync "
                                 "creates (19x5); unset = the API user")
    default_lastname: str = Field("", description="lastname of a contact created without "
                                  "one (vTiger requires it); empty = the address's local part")
    webhook_secret: SecretStr | None = Field(None, description="an extra secret the vTiger "
                                             "Cloud Webhook action must send (parameter "
                                             "crmsync_secret or header X-Vtiger-Secret), on "
                                             "top of crmsync serve's endpoint secret")
    # a webservice 500 is a PHP error, rarely transient: retry little
    retries: int = Field(3, ge=1, le=20, description="attempts of one API call")

    @field_validator("server_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_time_zone(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        for suffix in ("/webservice.php", "/restapi/v1/vtiger/default"):
            value = value.removesuffix(suffix)
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with https:// (or http://), got {value!r}")
        return value

    def account_key(self) -> str:
        """The vTiger install (hashed): every crmsync process calling it shares
        ``rate_per_s``."""
        return account_key("vtiger", self.base_url.lower())
