"""The MailUp connector's settings (``[esp.settings]`` with ``connector = "mailup"``).

Secrets (``client_secret``, ``password``, ``webhook_key``, ``transactional_secret``)
come from ``CRMSYNC_MAILUP_<FIELD>`` or the secrets file, never from the TOML.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from crmsync.connect import HttpConnectorSettings, iana_time_zone
from crmsync.contract import check_url_template
from crmsync.http import account_key

__all__ = ["PLACEHOLDERS", "MailUpSettings"]

CONSOLE_URL = "https://services.mailup.com/API/v1.1/Rest/ConsoleService.svc"
AUTH_URL = "https://services.mailup.com/Authorization/OAuth/Token"
TRANSACTIONAL_URL = "https://send.mailup.com/API/v2.0/messages/sendmessage"

#: The webhook placeholders MailUp documents (``[FieldNN]`` are added below).
PLACEHOLDERS = frozenset(
    {"EventDate", "IdConsole", "IdList", "IdNL", "EventType", "EventSource", "Reason",
     "Email", "Prefix", "Number", "Groups", "Channel"}
    | {f"Field{n:02d}" for n in range(1, 40)}
)


class MailUpSettings(HttpConnectorSettings):
    """Everything the MailUp connector can be told; the defaults are MailUp's real ones."""

    # -- where and who -------------------------------------------------------------------
    base_url: str = CONSOLE_URL
    auth_url: str = AUTH_URL
    transactional_url: str = TRANSACTIONAL_URL
    client_id: str = Field("", description="the OAuth client id of your MailUp console")
    client_secret: SecretStr = SecretStr("")
    username: str = Field("", description="the console user, e.g. m12345")
    password: SecretStr = SecretStr("")
    transactional_username: str | None = Field(
        None, description="an SMTP+ user (sNNNNN_NN) for the Transactional API")
    transactional_secret: SecretStr | None = None
    frontend_url: str | None = Field(
        None, description="https://<console host>/frontend: one-call multi-list subscribe")
    console_recipient_url: str | None = Field(
        None, description="a recipient's page in your MailUp console, with {id} (MailUp's "
        "idRecipient) and/or {email}: open a recipient there and copy its address")

    # -- pacing and paging -----------------------------------------------------------------
    rate_per_s: float | None = Field(5.0, ge=0,
                                     description="calls per second; MailUp allows 5")
    page_size: int = Field(20, ge=1, le=1000,
        description="pageSize of listings (20 is MailUp's default)")
    lists: list[str] | None = Field(None, description="the lists read() covers; unset = every list")
    api_timezone: str = Field(
        "Europe/Rome", description="the zone of EmailOptins dates (they carry no offset; "
        "MailUp's webhook samples carry Italian offsets)")

    # -- recipients ------------------------------------------------------------------------
    field_ids: dict[str, int] = Field(
        default_factory=dict,
        description="ESP field name -> MailUp field id 1..39, e.g. { name = 1 }")
    resubscribe: Literal["confirm", "force", "never"] = Field(
        "confirm",
        description="an explicit opt-in of an unsubscribed recipient: confirm | force | never")
    create_groups: bool = True
    empty_groups_clear: bool | list[str] = Field(
        False, description="an empty group set removes every group: true, or the list ids "
        "whose groups crmsync manages")

    # -- bulk import -----------------------------------------------------------------------
    bulk_threshold: int = Field(50, ge=0,
        description="more changes than this in one write -> async import")
    import_poll_s: float = 1.0
    import_timeout_s: float = 1800.0

    # -- webhooks --------------------------------------------------------------------------
    webhook_params: dict[str, str] = Field(
        default_factory=dict,
        description="webhook parameter name -> placeholder, e.g. { eml = \"[Email]\" }")
    webhook_events: dict[str, str] = Field(
        default_factory=dict,
        description="callback path -> SUBSCRIBE | UNSUBSCRIBE | CHANGEPROFILE | DELETE")
    webhook_default_event: str | None = None
    webhook_key: SecretStr | None = None
    webhook_timezone: str = "Europe/Rome"

    # -- batch files -----------------------------------------------------------------------
    file_separator: Literal[";", ",", "|", "\t"] = "|"
    file_quotechar: Literal['"', "'"] = '"'
    file_quoting: Literal["minimal", "all"] = "minimal"
    file_encoding: Literal["utf-8", "utf-8-sig", "cp1252"] = "utf-8"
    file_status_column: str = Field("Status",
        description="the import column carrying OPTIN / PENDING / OPTOUT")
    file_status_values: dict[str, str] = Field(
        default_factory=lambda: {"subscribed": "OPTIN", "pending": "PENDING",
                                 "unsubscribed": "OPTOUT"})
    file_group_separator: str = ","
    file_group_column: Literal["ExternalGroupName", "IdGroup"] = Field(
        "ExternalGroupName", description="the one group column of the import file: group "
        "names (ExternalGroupName) or MailUp group ids (IdGroup)")
    import_file_template: str = "crmsync-import-{run_id}.csv"
    export_file_glob: str = "unsubscribers*.csv"
    export_encoding: Literal["auto", "utf-8", "cp1252"] = "auto"
    export_timezone: str = Field("Europe/Rome",
                                 description="the zone of the export's OptOut_Date")

    @field_validator("lists", "empty_groups_clear", mode="before")
    @classmethod
    def _list_ids(cls, value: object) -> object:
        # MailUp list ids are numbers; TOML users write them as numbers too.
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) and not isinstance(item, bool)
                    else item for item in value]
        return value

    @field_validator("api_timezone", "export_timezone", "webhook_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_time_zone(value)

    @field_validator("field_ids")
    @classmethod
    def _field_ids(cls, value: dict[str, int]) -> dict[str, int]:
        for name, ident in value.items():
            if not 1 <= ident <= 39:
                raise ValueError(f"field {name!r}: MailUp field ids run 1..39, got {ident}")
        if len(set(value.values())) != len(value):
            raise ValueError("two ESP field names map to the same MailUp field id")
        return value

    @field_validator("webhook_params")
    @classmethod
    def _placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        cleaned = {}
        for name, placeholder in value.items():
            bare = placeholder.strip().strip("[]")
            if bare not in PLACEHOLDERS:
                raise ValueError(f"parameter {name!r}: {placeholder!r} is not a MailUp "
                                 f"placeholder (e.g. [Email], [IdList], [Field01])")
            cleaned[name] = bare
        return cleaned

    @field_validator("webhook_events", mode="after")
    @classmethod
    def _events(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {"SUBSCRIBE", "UNSUBSCRIBE", "CHANGEPROFILE", "DELETE"}
        for path, event in value.items():
            if event.upper() not in allowed:
                raise ValueError(f"{path}: event {event!r} is not one of {sorted(allowed)}")
        return {path: event.upper() for path, event in value.items()}

    @field_validator("console_recipient_url")
    @classmethod
    def _console_link(cls, value: str | None) -> str | None:
        return check_url_template(value, frozenset({"id", "email"}))

    @field_validator("base_url", "auth_url", "transactional_url")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def account_key(self) -> str:
        """MailUp's 5 calls/s are the account's: one key per console user (hashed), so
        every crmsync process calling as that user shares them."""
        return account_key("mailup", self.base_url, self.username or self.client_id)

    def clears_empty_groups(self, list_id: str) -> bool:
        """Whether an empty group set on ``list_id`` means "no groups" (else: leave them)."""
        value = self.empty_groups_clear
        return value if isinstance(value, bool) else list_id in value

    def field_names(self) -> dict[int, str]:
        """MailUp field id -> ESP field name."""
        return {ident: name for name, ident in self.field_ids.items()}
