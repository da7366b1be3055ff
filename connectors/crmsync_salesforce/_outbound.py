"""Outbound Messages: the SOAP ``notifications`` a workflow rule or flow sends.

Up to 100 ``Notification`` elements per message, delivered at least once and maybe
out of order; each becomes a :class:`Change` whose ``event_id`` is the notification
``Id`` (the engine's inbox deduplicates on it). The listener answers ``Ack=true``
once the changes are stored; anything else makes Salesforce retry for 24 hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

from crmsync.errors import EventRejected
from crmsync.model import Change, Op, normalize_email

from ._reader import parse_stamp, text_value

__all__ = ["ACK", "decode_notifications"]

ACK = (b'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
       b'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
       b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
       b"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>")
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _same_org(a: str, b: str) -> bool:
    # 15- and 18-character forms of one id share their first 15 characters.
    return len(a) >= 15 and len(b) >= 15 and a[:15] == b[:15]


def decode_notifications(body: bytes, *, organization_id: str | None, source: str,
                         fields: Sequence[str], id_key: str) -> list[Change]:
    """The changes in one Outbound Message, or :class:`EventRejected`."""
    if not organization_id:
        raise EventRejected("Outbound Messages are refused until organization_id (00D...) is "
                            "set in the salesforce settings", status=401)
    try:
        # The parser refuses any DTD, whatever the encoding (a byte scan for "<!DOCTYPE"
        # misses UTF-16): no entity expansion, no external fetch.
        root = safe_fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise EventRejected("an Outbound Message never carries a DTD: refused",
                            status=400) from None
    except (ElementTree.ParseError, ValueError) as exc:
        raise EventRejected(f"not an Outbound Message (XML: {exc})", status=400) from None
    notifications = next((e for e in root.iter() if _local(e.tag) == "notifications"), None)
    if notifications is None:
        raise EventRejected("not an Outbound Message: no <notifications> element", status=400)
    org = _child(notifications, "OrganizationId")
    if org is None or not _same_org((org.text or "").strip(), organization_id):
        raise EventRejected("Outbound Message from another org (OrganizationId does not match "
                            "the configured organization_id): refused", status=401)
    changes: list[Change] = []
    for note in notifications:
        if _local(note.tag) != "Notification":
            continue
        id_element, sobject = _child(note, "Id"), _child(note, "sObject")
        note_id = (id_element.text or "").strip() if id_element is not None else ""
        if not note_id or sobject is None:
            raise EventRejected("a Notification without Id or sObject", status=400)
        values = {_local(c.tag): (c.text or "") for c in sobject}
        kind = sobject.get(_XSI_TYPE, "").split(":")[-1]
        change = _change(kind, values, note_id, source=source, fields=fields,
                         id_key=id_key)
        if change is not None:
            changes.append(change)
    return changes


def _change(kind: str, values: dict[str, str], event_id: str, *, source: str,
            fields: Sequence[str], id_key: str) -> Change | None:
    try:
        email = normalize_email(values.get("Email", ""))
    except ValueError:
        return None  # nothing to sync without an address (the message is still acked)
    stamp = values.get("SystemModstamp") or values.get("LastModifiedDate")
    common: dict[str, Any] = {"email": email, "source": source, "event_id": event_id,
              "reason": f"Salesforce Outbound Message ({kind or 'record'})"}
    if stamp:
        try:
            common["occurred_at"] = parse_stamp(stamp)
        except ValueError:
            raise EventRejected(f"unreadable SystemModstamp {stamp!r}", status=400) from None
    if kind == "CampaignMember":
        person = values.get("ContactId") or values.get("LeadId")
        campaign = values.get("CampaignId")
        if not person or not campaign:
            return None
        return Change(ids={id_key: person},
                      memberships={f"campaign:{campaign}": values.get("Status") or ""},
                      **common)
    record_id = values.get("Id")
    return Change(
        ids={id_key: record_id} if record_id else {},
        op=Op.DELETE if values.get("IsDeleted") == "true" else Op.UPSERT,
        fields={name: text_value(values[name]) for name in fields if name in values},
        **common)
