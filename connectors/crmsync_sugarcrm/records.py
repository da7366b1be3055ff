"""The vendor records both API flavours read into, and how they become Contacts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crmsync.model import Contact, normalize_email

__all__ = [
    "AddressChange",
    "RecordWrite",
    "SugarEmailAddress",
    "SugarRecord",
    "field_text",
    "in_key_order",
    "parse_sugar_datetime",
]

_MULTIENUM = re.compile(r"^\^.*\^$")


@dataclass(frozen=True)
class SugarEmailAddress:
    """One row of a record's address set. ``opt_out`` belongs to the address itself,
    so it is shared by every record that carries the same address."""

    email: str
    opt_out: bool = False
    primary: bool = False
    invalid: bool = False
    reply_to: bool = False
    id: str = ""


@dataclass
class SugarRecord:
    """A person record (Contacts, Leads, Prospects) as either flavour returned it."""

    module: str
    id: str
    date_modified: datetime
    deleted: bool = False
    fields: dict[str, str | None] = field(default_factory=dict)
    addresses: list[SugarEmailAddress] = field(default_factory=list)

    def key(self) -> tuple[datetime, str]:
        return (self.date_modified, self.id)

    def primary(self) -> SugarEmailAddress | None:
        usable = [item for item in self.addresses if item.email]
        for item in usable:
            if item.primary:
                return item
        return usable[0] if usable else None

    def address(self, email: str) -> SugarEmailAddress | None:
        for item in self.addresses:
            if item.email.lower() == email.lower():
                return item
        return None

    def to_contact(self, connector: str, memberships: Mapping[str, str],
                   *, modified_at: datetime | None = None) -> Contact | None:
        """The neutral contact, or ``None`` for a record without a usable address."""
        primary = self.primary()
        if primary is None:
            return None
        try:
            email = normalize_email(primary.email)
        except ValueError:
            return None
        fields = dict(self.fields)
        fields["email_opt_out"] = "true" if primary.opt_out else "false"
        return Contact(email=email, ids={connector: self.id}, fields=fields,
                       memberships=dict(memberships),
                       modified_at=max(self.date_modified, modified_at or self.date_modified),
                       deleted=self.deleted)


@dataclass(frozen=True)
class AddressChange:
    """An EmailAddresses row changed at ``date_modified`` (an opt-out flipped, say)."""

    id: str
    email: str
    opt_out: bool
    date_modified: datetime


@dataclass
class RecordWrite:
    """What one Change asks of one record, resolved against the record's current state.

    ``record`` is ``None`` when the record must be created. ``links`` maps a target
    list id to True (add the record) or False (remove it).
    """

    index: int
    module: str
    record: SugarRecord | None
    email: str
    previous_email: str | None = None
    fields: dict[str, str | None] = field(default_factory=dict)
    opt_out: bool | None = None
    delete: bool = False
    links: dict[str, bool] = field(default_factory=dict)


def parse_sugar_datetime(value: str) -> datetime:
    """``2026-11-28T05:59:10+00:00`` (REST) or ``2026-11-28 05:59:10`` (v4_1, UTC)."""
    text = value.strip().replace(" ", "T", 1)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def field_text(value: object) -> str | None:
    """A vendor value as the string the engine expects (lists and multienums as a;b)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    text = str(value)
    if _MULTIENUM.match(text):
        return ";".join(part.strip("^") for part in text.split(",") if part.strip("^"))
    return text


def in_key_order(items: Iterable[tuple[tuple[datetime, str], SugarRecord]]
                 ) -> Iterator[tuple[tuple[datetime, str], SugarRecord]]:
    """Sort runs of equal timestamps by id, so keys never go back across a stream.

    The input must already be ordered by timestamp (ids may be out of order within one
    second, as when one address change fans out to several records).
    """
    run: list[tuple[tuple[datetime, str], SugarRecord]] = []
    for item in items:
        if run and item[0][0] != run[0][0][0]:
            yield from sorted(run, key=lambda pair: pair[0])
            run = []
        run.append(item)
    yield from sorted(run, key=lambda pair: pair[0])
