"""The connector contract: what every CRM or ESP plugin implements.

The contract is narrow on purpose: ``check``, ``lists``, ``read``, ``write`` and
``decode_event``. What a connector can do beyond it is declared in
:class:`Capabilities` (the engine and the contract tests read it, never the vendor
name) and, for ESP extras, by also implementing :class:`FileExchange`,
:class:`MessageSender` or :class:`MultiListSubscriber`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError, DataError
from .model import (
    Change,
    Contact,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Page,
    SendResult,
    WriteResult,
)

__all__ = [
    "Capabilities",
    "Connector",
    "ConnectorSettings",
    "FileExchange",
    "MessageSender",
    "MultiListSubscriber",
    "check_url_template",
    "fill_url",
    "format_validation_error",
    "iana_time_zone",
]


class Capabilities(BaseModel):
    """What a connector can do. Tests and the engine read these flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["crm", "esp"]
    full_read: bool = True
    incremental_read: bool = False
    write: bool = True
    bulk_write: bool = False
    deletes: bool = False
    push_events: bool = False
    polling: bool = False
    lists: bool = True
    groups: bool = False
    file_exchange: bool = False
    send_message: bool = False
    multi_list_subscribe: bool = False

    def enabled(self) -> list[str]:
        """The names of the capabilities that are on (for tables and JSON)."""
        return [name for name, value in self.model_dump().items() if value is True]


def iana_time_zone(value: str) -> str:
    """A settings validator's check: ``value`` names an IANA time zone (``Europe/Rome``,
    ``UTC``); raises ``ValueError`` saying so otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Rome, UTC)"
                         ) from None
    return value


def format_validation_error(error: ValidationError, *, prefix: str = "",
                            secrets: Mapping[str, str] | None = None) -> str:
    """Render a pydantic error as lines of ``key: what is expected``; ``secrets``: the
    environment variable each missing secret is read from, by field name."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        key = f"{prefix}.{location}" if prefix and location else (prefix or location)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against `crmsync init`)"
        elif item["type"] == "missing" and secrets and location in secrets:
            message = (f"required, but not given: set {secrets[location]} in the "
                       "environment or the secrets file")
        elif item["type"] == "missing":
            message = "required, but not given"
        lines.append(f"{key}: {message}")
    return "\n".join(lines)


class ConnectorSettings(BaseSettings):
    """Base of every connector's settings.

    Values come from the ``[crm.settings]`` / ``[esp.settings]`` table of the config.
    Secrets (``SecretStr`` fields) must not be written there: they come from the
    environment as ``CRMSYNC_<CONNECTOR>_<FIELD>`` or from a dotenv-style secrets file.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def secret_fields(cls) -> list[str]:
        return [
            name
            for name, field in cls.model_fields.items()
            if field.annotation is SecretStr or field.annotation == (SecretStr | None)
        ]

    @classmethod
    def load(
        cls,
        connector: str,
        values: dict[str, Any] | None = None,
        *,
        secrets_file: str | Path | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> Self:
        """Validate ``values`` with secrets from the environment, then from ``secrets``
        (``Config.secrets()``: the environment first, then the secrets file) or, when
        only a path is given, from ``secrets_file``.

        Raises :class:`ConfigError` naming each bad key and what is expected, and
        refuses a secret written inline in the configuration. The process environment
        is read, never written.
        """
        values = dict(values or {})
        # one pair of a many-pairs deployment reads the environment under its own
        # prefix (CRMSYNC_ACME_MAILUP_PASSWORD): Secrets.env_name says where
        env_name: Callable[[str], str] = getattr(secrets, "env_name", lambda key: key)
        inline = sorted(set(values) & set(cls.secret_fields()))
        if inline:
            env = ", ".join(env_name(f"CRMSYNC_{connector.upper()}_{name.upper()}")
                            for name in inline)
            raise ConfigError(
                f"[{connector}] secret(s) {', '.join(inline)} written in the configuration: "
                f"remove them and set {env} in the environment or the secrets file instead"
            )
        prefix = f"CRMSYNC_{connector.upper()}_"
        if secrets is None and secrets_file:
            from .secrets import Secrets, read_secrets_file

            secrets = Secrets(read_secrets_file(secrets_file))
        if secrets is not None:
            # one secrets file serves both sides: take this connector's keys only (a
            # dotenv file handed to pydantic-settings whole makes the others "extra");
            # a key of the process environment is left to pydantic-settings, which reads
            # it itself: the environment wins over the file
            for key in secrets:
                name = key[len(prefix):].lower()
                if key.startswith(prefix) and name in cls.model_fields \
                        and env_name(key) not in os.environ:
                    values[name] = secrets[key]
        try:
            return cls(_env_prefix=env_name(prefix), **values)
        except ValidationError as exc:
            where = {name: env_name(f"{prefix}{name.upper()}") for name in cls.secret_fields()}
            raise ConfigError(
                f"invalid settings for connector {connector!r}:\n"
                + format_validation_error(exc, prefix="settings", secrets=where)
            ) from None


class Connector(ABC):
    """One CRM or ESP, behind the narrow contract the engine uses.

    Subclasses set ``name``, ``Settings`` and ``capabilities`` and implement the five
    methods. The HTTP client is injected (tests pass one with ``httpx.MockTransport``
    or pointing at an emulator); a connector builds its own only when none is given.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[ConnectorSettings]]
    capabilities: ClassVar[Capabilities]

    def __init__(self, settings: ConnectorSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http

    @abstractmethod
    def check(self) -> Health:
        """Authenticate and reach the system; never raise for a plain failure."""

    @abstractmethod
    def lists(self) -> list[MailingList]:
        """The lists (and their groups) as this system knows them."""

    @abstractmethod
    def read(self, since: Cursor | None) -> Iterator[Page]:
        """Every contact (``since=None``) or those changed at or after ``since``.

        Pages are yielded in cursor order; each page's cursor is safe to resume from
        once its records are applied on the other side.
        """

    @abstractmethod
    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        """Apply changes in batches; return exactly one result per change, in order."""

    @abstractmethod
    def decode_event(self, request: InboundRequest) -> list[Change]:
        """Turn a webhook / outbound message into changes, or raise ``EventRejected``."""

    def full_read_count(self) -> int | None:
        """After a full read (``read(None)``) was consumed to its end: how many distinct
        records it should have yielded, by the vendor's own count, less the records the
        connector left out on purpose (no usable address, say). ``None``: cannot say.

        The engine fails a full read that yields fewer distinct records, so that paging
        that loses records is never a run that "succeeded".
        """
        return None

    def read_unsubscriptions(self, since: Cursor) -> Iterator[Page] | None:
        """An ESP's unsubscribed recipients since ``since``, when it can list them by
        status more cheaply than :meth:`read` reads every change (a batch run wants
        only these: right after an import, every recipient it wrote has "changed").

        Each record carries only the lists it is unsubscribed from, with the date when
        the vendor gives one. It may repeat unsubscriptions already read (the engine
        finds them unchanged) but must include every one made since ``since``; the last
        page's cursor is where the next read starts. ``None`` (the default): the engine
        reads :meth:`read` and keeps the unsubscriptions.
        """
        return None

    def members(self, key: str) -> Iterable[str] | None:
        """Every record id that holds the membership ``key`` now (``"campaign:701..."``,
        as in :attr:`Contact.memberships`), or ``None`` when the connector cannot list
        them. The engine reconciles each mapped list with it: a contact it holds on the
        list whose membership is gone (a CRM that removes a member without touching the
        person's record, which an incremental read never sees) is unsubscribed there."""
        return None

    def recipient_url(self, email: str, record_id: str | None = None) -> str | None:
        """Where this person lives in the vendor's own web console (an ESP's recipient
        page), for the operator's one-click jump from the CRM; ``None`` (the default)
        when the vendor has none or the connector is not told its shape. ``record_id``
        is the vendor's id for the person, when crmsync knows it."""
        return None

    def api_budget(self) -> tuple[int, int] | None:
        """The vendor's API budget as last seen: ``(used, limit)`` calls in its window
        (a day, say), for the ``crmsync_api_budget_*`` metrics; ``None`` when the vendor
        does not say (the default)."""
        return None

    def event_ack(self, request: InboundRequest) -> tuple[int, str, bytes]:
        """The answer the sender expects once its event is stored: status, type, body."""
        return 200, "text/plain", b"OK"

    def close(self) -> None:
        """Release sessions and HTTP connections the connector opened itself."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileExchange(ABC):
    """An ESP that exchanges batch files: an import file in, unsubscriptions out."""

    @abstractmethod
    def import_file_name(self, run_id: str) -> str:
        """The file name the ESP expects for an import produced by run ``run_id``."""

    @abstractmethod
    def write_import_file(self, out: IO[bytes], changes: Iterable[Change]) -> int:
        """Stream ``changes`` to ``out`` in the ESP's import format; return the row count."""

    @abstractmethod
    def export_file_pattern(self) -> str:
        """A glob matching the ESP's unsubscription export files in the file space."""

    @abstractmethod
    def read_export_file(self, data: IO[bytes], name: str) -> Iterator[Change | DataError]:
        """Parse an unsubscription export: a change per row, or the row's error."""


class MessageSender(ABC):
    """An ESP that can send an existing message from an application."""

    @abstractmethod
    def send(
        self,
        message_id: str,
        *,
        to: str | None = None,
        list_id: str | None = None,
        group_id: str | None = None,
    ) -> SendResult:
        """Send message ``message_id`` to one address, or to a list / a group."""


class MultiListSubscriber(ABC):
    """An ESP that subscribes one contact to several lists at once."""

    @abstractmethod
    def subscribe(
        self,
        contact: Contact,
        lists: Sequence[str],
        *,
        groups: Sequence[str] = (),
        confirm: bool = True,
    ) -> list[WriteResult]:
        """Subscribe ``contact`` to each list (pending when ``confirm``); one result per list."""


def fill_url(template: str, **values: str | None) -> str | None:
    """``template`` with ``{name}`` placeholders replaced by the URL-quoted ``values``;
    ``None`` when it names a value that is missing (a link to the wrong page is worse
    than none). Connectors build :meth:`Connector.recipient_url` with it."""
    import string
    from urllib.parse import quote

    wanted = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if any(not values.get(name) for name in wanted):
        return None
    return template.format(**{name: quote(str(values[name]), safe="@") for name in wanted})



def check_url_template(value: str | None, allowed: frozenset[str]) -> str | None:
    """A settings validator's check of a link template: http(s), and only the
    placeholders ``allowed`` (``{id}``, ``{email}``...)."""
    import string

    if value is None:
        return None
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {value!r}: use "
                         + ", ".join(f"{{{name}}}" for name in sorted(allowed)))
    return value
