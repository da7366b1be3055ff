"""The list mapping: CRM records to per-list status and groups, and back.

Configured by ``[[lists]]`` and ``[fields]``: which CRM construct feeds each ESP list
(everyone, a campaign / target list membership, a field value), which CRM field or
membership status carries the opt-out, which field's values become groups.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

from ..config import Config
from ..model import Contact, Status

__all__ = ["Desired", "ListMapper", "truthy"]

_TRUE = {"true", "1", "yes", "y", "on", "t", "x"}


def truthy(value: str | None) -> bool:
    """A CRM boolean as a string ("true", "1", "yes"...)."""
    return value is not None and value.strip().lower() in _TRUE


class Desired(NamedTuple):
    """What the CRM says about one contact on one list."""

    status: Status
    groups: frozenset[str]


class _Plan(NamedTuple):
    """One ``[[lists]]`` entry with its properties worked out once, not per contact."""

    esp_list: str
    membership_key: str | None
    member_field: tuple[str, str] | None
    status: dict[str, Status]
    opt_out: str | None
    groups_field: str | None
    separator: str
    only: frozenset[str] | None


@functools.lru_cache(maxsize=8192)
def _split_groups(raw: str, separator: str, only: frozenset[str] | None) -> frozenset[str]:
    values = {part.strip() for part in raw.split(separator)}
    values.discard("")
    if only is not None:
        values &= only
    return frozenset(values)


_NO_GROUPS: frozenset[str] = frozenset()


class ListMapper:
    """Maps contacts between the CRM's vocabulary and the ESP's lists and fields."""

    def __init__(self, config: Config) -> None:
        self.lists = list(config.lists)
        self.by_list = {item.esp_list: item for item in self.lists}
        self.fields = dict(config.fields)
        self._field_pairs = tuple(self.fields.items())
        self._plans = tuple(_Plan(
            m.esp_list, m.membership_key, m.member_field, dict(m.status), m.opt_out,
            m.groups.field if m.groups else None, m.groups.separator if m.groups else ";",
            frozenset(m.groups.only) if m.groups and m.groups.only is not None else None)
            for m in self.lists)

    def esp_fields(self, contact: Contact) -> dict[str, str | None]:
        fields = contact.fields
        return {esp: fields.get(crm) for crm, esp in self._field_pairs}

    def crm_fields(self, esp_fields: Mapping[str, str | None]) -> dict[str, str | None]:
        reverse = {esp: crm for crm, esp in self.fields.items()}
        return {reverse[name]: value for name, value in esp_fields.items() if name in reverse}

    def desired(self, contact: Contact) -> dict[str, Desired]:
        """Per ESP list id: the status and groups the CRM implies (absent: not a member)."""
        out: dict[str, Desired] = {}
        fields = contact.fields
        for plan in self._plans:
            raw_member: str | None = None
            if plan.membership_key is not None:
                if plan.membership_key not in contact.memberships:
                    continue
                raw_member = contact.memberships[plan.membership_key]
            elif plan.member_field is not None:
                name, value = plan.member_field
                if (fields.get(name) or "") != value:
                    continue
            status = Status.SUBSCRIBED
            if raw_member is not None and plan.status:
                status = plan.status.get(raw_member, Status.SUBSCRIBED)
            if plan.opt_out and truthy(fields.get(plan.opt_out)):
                status = Status.UNSUBSCRIBED
            groups = (_NO_GROUPS if plan.groups_field is None else _split_groups(
                fields.get(plan.groups_field) or "", plan.separator, plan.only))
            out[plan.esp_list] = Desired(status, groups)
        return out

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
