"""The vendor-neutral data model: immutable pydantic v2 models.

A :class:`Contact` is one person as one system knows it. Status is per list: a
:class:`Subscription` says subscribed / unsubscribed / pending on one list, with the
groups of that list, when it changed (UTC), why, and who said so. A :class:`Change` is
what one side asks the other to do. Connectors yield :class:`Page` objects whose
:class:`Cursor` marks where the next incremental read starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Change",
    "Contact",
    "Cursor",
    "Group",
    "Health",
    "InboundRequest",
    "MailingList",
    "Op",
    "Page",
    "Rejected",
    "SendResult",
    "Status",
    "Subscription",
    "WriteResult",
    "address_problem",
    "normalize_email",
    "rejected_address",
    "utc",
]

# RFC 2606's never-resolving top-level domain: connectors name a record that has no
# address with one (``deleted-12x66@vtiger.invalid``); nothing is ever sent to it.
_STAND_IN_TLD = ".invalid"


# A strict subset of what email-validator accepts (a test holds it so): ASCII dot-atoms
# of the usual characters, at most 64 before the @, host names of letters, digits and
# inner hyphens (never two in a row) under a letters-only top-level domain that is not a
# special-use one. Every address read from a CRM goes through here, so the common case
# skips the validator.
_PLAIN = re.compile(r"[a-z0-9_%+'-]+(?:\.[a-z0-9_%+'-]+)*@"
                    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)  # the validator's own list


def _plainly_valid(email: str) -> bool:
    if _PLAIN.fullmatch(email) is None:
        return False
    at = email.index("@")
    host = email[at + 1:]
    # no "--" in the host: IDNA reserves it (xn--, and "ab--" is refused outright)
    return (at <= 64 and len(email) <= 254 and "--" not in host
            and not any(host == name or host.endswith("." + name) for name in _SPECIAL_USE))


def normalize_email(value: str) -> str:
    """Case-fold and trim an address; raise ``ValueError`` if it cannot be one.

    Every system compares addresses case-insensitively in practice, and a CRM that
    stores ``John@X.com`` must match the ESP's ``john@x.com``. The syntax is checked by
    ``email-validator`` (RFC 5321/5322 and the length limits; no DNS lookup): markup,
    spaces, quotes or a 390-character local part are refused at every way in.
    """
    email = str(value).strip().lower()
    if _plainly_valid(email):
        return email  # the common case, without the validator's ~40 us per address
    checked = email
    if checked.endswith(_STAND_IN_TLD):
        checked = checked[: -len(_STAND_IN_TLD)] + ".example"
    try:
        validate_email(checked, check_deliverability=False)
    except EmailNotValidError as exc:
        shown = email if len(email) <= 80 else email[:77] + "..."
        raise ValueError(f"not an email address: {shown!r} ({exc})") from None
    return email


def address_problem(value: str) -> str | None:
    """Why ``value`` is not an email address, or ``None`` when it is one (or is empty:
    a record without an address is no error, just nothing to mail)."""
    if not str(value or "").strip():
        return None
    try:
        normalize_email(value)
    except ValueError as exc:
        return str(exc)
    return None


def rejected_address(record_id: str, value: str) -> Rejected | None:
    """The :class:`Rejected` for a record whose address is not empty and not valid."""
    problem = address_problem(value)
    if problem is None:
        return None
    shown = str(value).strip()
    return Rejected(record_id=record_id, address=shown[:320], reason=problem)


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_Valid = TypeVar("_Valid", bound=BaseModel)
_set_attr = object.__setattr__


def assume_valid(cls: type[_Valid], values: dict[str, Any]) -> _Valid:
    """A model from values already validated, with every field given in field order.

    What :meth:`~pydantic.BaseModel.model_construct` ends with, without its per-field
    alias and default look-ups: the engine builds a change and a subscription per
    contact from values it holds validated, and ``model_construct`` was a fifth of a
    full export (``benchmarks/batch.py``). A test holds the result equal to the
    validated model; giving it anything else is a bug.
    """
    model: _Valid = BaseModel.__new__(cls)
    _set_attr(model, "__dict__", values)
    _set_attr(model, "__pydantic_fields_set__", set(values))
    _set_attr(model, "__pydantic_extra__", None)
    _set_attr(model, "__pydantic_private__", None)
    return model


class Status(StrEnum):
    """A contact's status on one list."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    PENDING = "pending"


class Group(_Frozen):
    """A group inside a list (an ESP group, a CRM interest value...)."""

    id: str
    name: str
    list_id: str


class MailingList(_Frozen):
    """A list as one system knows it, with its groups."""

    id: str
    name: str
    groups: tuple[Group, ...] = ()


class Subscription(_Frozen):
    """A contact's status on one list, with its groups.

    ``explicit`` marks a deliberate opt-in by the person (a form, a confirmation
    click), the only kind of "subscribed" that may ever lift an earlier unsubscribe.
    """

    list_id: str
    status: Status
    groups: frozenset[str] = frozenset()
    changed_at: datetime | None = None
    reason: str | None = None
    source: str | None = None
    explicit: bool = False

    @field_validator("changed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)


class Contact(_Frozen):
    """One person as one system knows them.

    ``ids`` holds record ids per system (``{"<connector>": "<record id>"}``). ``fields`` are
    in that system's vocabulary. ``memberships`` are the CRM constructs the record
    belongs to (``"campaign:701..." -> "Responded"``, ``"target_list:abc" -> ""``);
    the engine maps them, with ``fields``, to per-list subscriptions. An ESP fills
    ``subscriptions`` directly.
    """

    email: str
    ids: Mapping[str, str] = Field(default_factory=dict)
    fields: Mapping[str, str | None] = Field(default_factory=dict)
    memberships: Mapping[str, str] = Field(default_factory=dict)
    subscriptions: Mapping[str, Subscription] = Field(default_factory=dict)
    modified_at: datetime | None = None
    deleted: bool = False
    previous_email: str | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)

    @field_validator("previous_email")
    @classmethod
    def _previous(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("modified_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)


class Op(StrEnum):
    """What a change does to the contact on the receiving side."""

    UPSERT = "upsert"
    DELETE = "delete"


class Change(_Frozen):
    """What one side asks the other to do for one contact.

    A change may carry field updates, per-list status changes (``subscriptions``,
    keyed by the receiving side's list id) and CRM membership updates
    (``memberships``: construct -> raw status, ``None`` to remove). An email change
    keeps the record ids and sets ``previous_email``.
    """

    email: str
    op: Op = Op.UPSERT
    ids: Mapping[str, str] = Field(default_factory=dict)
    previous_email: str | None = None
    fields: Mapping[str, str | None] = Field(default_factory=dict)
    memberships: Mapping[str, str | None] = Field(default_factory=dict)
    subscriptions: Mapping[str, Subscription] = Field(default_factory=dict)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = ""
    reason: str | None = None
    event_id: str | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)

    @field_validator("previous_email")
    @classmethod
    def _previous(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)


class WriteResult(_Frozen):
    """The outcome of one change: one result per change, in order."""

    ok: bool
    record_id: str | None = None
    error: str | None = None
    code: str | None = None
    retryable: bool = False
    retry_after: float | None = None  # seconds, when the vendor said when to come back


class Cursor(_Frozen):
    """Where an incremental read resumes: a UTC timestamp, a tie-break id, vendor data.

    Cursors order by ``(at, tie_id)``; ``data`` is opaque to the engine (a Bulk job
    locator, a server's own sync token...).
    """

    at: datetime
    tie_id: str = ""
    data: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)

    def key(self) -> tuple[datetime, str]:
        return (self.at, self.tie_id)


class Rejected(_Frozen):
    """A record a connector read but could not hand over: which one, and why (an address
    that is no email address, say). The engine reports it as a failed record."""

    record_id: str
    address: str
    reason: str


class Page(_Frozen):
    """A page of records and the cursor after them (``None`` when the system has none),
    with the records of the page the connector had to leave out (``rejected``)."""

    records: Sequence[Contact]
    cursor: Cursor | None = None
    rejected: Sequence[Rejected] = ()


class Health(_Frozen):
    """What ``check()`` found: reachable and authenticated, or why not."""

    ok: bool
    detail: str = ""
    latency_ms: float | None = None


class InboundRequest(_Frozen):
    """An HTTP request received by ``crmsync serve`` for a connector to decode."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    #: The public URL as the sender called it (scheme, host, the whole path with the
    #: endpoint secret, the query): what a signature over the URL was computed on. It
    #: believes ``X-Forwarded-Proto`` / ``-Host`` only from ``[server] trusted_proxies``.
    #: Never shown in a repr (it may hold the endpoint secret).
    url: str = Field("", repr=False)
    headers: Mapping[str, str] = Field(default_factory=dict)
    query: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    client: str = ""

    def header(self, name: str, default: str = "") -> str:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default


class SendResult(_Frozen):
    """What the ESP said when asked to send a message."""

    ok: bool
    message_id: str
    recipients: int = 0
    detail: str = ""
