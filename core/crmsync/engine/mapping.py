"""The list mapping: CRM records to per-list status and groups, and back.

Configured by ``[[lists]]`` and ``[fields]``: which CRM construct feeds each ESP list
(everyone, a campaign / target list membership, a field value), which CRM field or
membership status carries the opt-out, which field's values become groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Config, ListMapping
from ..model import Contact, Status

__all__ = ["Desired", "ListMapper", "truthy"]

_TRUE = {"true", "1", "yes", "y", "on", "t", "x"}


def truthy(value: str | None) -> bool:
    """A CRM boolean as a string ("true", "1", "yes"...)."""
    return value is not None and value.strip().lower() in _TRUE


@dataclass(frozen=True)
class Desired:
    """What the CRM says about one contact on one list."""

    status: Status
    groups: frozenset[str]


class ListMapper:
    """Maps contacts between the CRM's vocabulary and the ESP's lists and fields."""

    def __init__(self, config: Config) -> None:
        self.lists = list(config.lists)
        self.by_list = {item.esp_list: item for item in self.lists}
        self.fields = dict(config.fields)

    def esp_fields(self, contact: Contact) -> dict[str, str | None]:
        return {esp: contact.fields.get(crm) for crm, esp in self.fields.items()}

    def crm_fields(self, esp_fields: Mapping[str, str | None]) -> dict[str, str | None]:
        reverse = {esp: crm for crm, esp in self.fields.items()}
        return {reverse[name]: value for name, value in esp_fields.items() if name in reverse}

    def desired(self, contact: Contact) -> dict[str, Desired]:
        """Per ESP list id: the status and groups the CRM implies (absent: not a member)."""
        out: dict[str, Desired] = {}
        for mapping in self.lists:
            state = self._one(mapping, contact)
            if state is not None:
                out[mapping.esp_list] = state
        return out

    def _one(self, mapping: ListMapping, contact: Contact) -> Desired | None:
        key = mapping.membership_key
        raw_member: str | None = None
        if key is not None:
            if key not in contact.memberships:
                return None
            raw_member = contact.memberships[key]
        elif mapping.member_field is not None:
            name, value = mapping.member_field
            if (contact.fields.get(name) or "") != value:
                return None
        status = Status.SUBSCRIBED
        if raw_member is not None and mapping.status:
            status = mapping.status.get(raw_member, Status.SUBSCRIBED)
        if mapping.opt_out and truthy(contact.fields.get(mapping.opt_out)):
            status = Status.UNSUBSCRIBED
        groups: frozenset[str] = frozenset()
        if mapping.groups is not None:
            raw = contact.fields.get(mapping.groups.field) or ""
            values = {part.strip() for part in raw.split(mapping.groups.separator)}
            values.discard("")
            if mapping.groups.only is not None:
                values &= set(mapping.groups.only)
            groups = frozenset(values)
        return Desired(status, groups)

    def to_crm(self, list_id: str, status: Status
               ) -> tuple[dict[str, str | None], dict[str, str | None]] | None:
        """The CRM fields and memberships that record ``status`` on ``list_id``.

        ``None`` when the mapping gives the CRM no way to hold it (a list fed by
        everyone, with no opt-out field): the caller reports it.
        """
        mapping = self.by_list.get(list_id)
        if mapping is None:
            return None
        fields: dict[str, str | None] = {}
        memberships: dict[str, str | None] = {}
        key = mapping.membership_key
        if key is not None and mapping.status:
            raws = [raw for raw, mapped in mapping.status.items() if mapped == status]
            if raws:
                memberships[key] = raws[0]
        if not memberships and mapping.opt_out:
            if status == Status.UNSUBSCRIBED:
                fields[mapping.opt_out] = "true"
            elif status == Status.SUBSCRIBED:
                fields[mapping.opt_out] = "false"
        if not fields and not memberships:
            return None
        return fields, memberships
