"""The emulator's in-memory MailUp account: lists, groups, fields, recipients, and the
rules MailUp documents for them (upsert, per-list status, unsubscribe keeping groups,
no forced opt-in after a bounce or a spam complaint)."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["MailUpError", "MailUpStore", "now"]

DEFAULT_FIELDS = ["name", "surname", "company", "city", "province", "zip", "region",
                  "country", "address", "fax", "phone"]
NO_FORCE = {8, 16, 512}  # bounces and spam complaints: no forced opt-in afterwards
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class MailUpError(Exception):
    """An error MailUp answers with its envelope: HTTP status and description."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def now() -> datetime:
    return datetime.now(UTC)


class MailUpStore:
    """One MailUp console's data. Not thread-safe: the emulator holds its lock."""

    def __init__(self) -> None:
        self.lists: dict[str, dict[str, Any]] = {
            "1": {"name": "Newsletter", "guid": str(uuid.UUID(int=1)), "description": ""},
            "2": {"name": "Events", "guid": str(uuid.UUID(int=2)), "description": ""},
        }
        self.groups: dict[str, dict[str, Any]] = {
            "1": {"list": "1", "name": "news", "notes": "", "deletable": True},
            "2": {"list": "1", "name": "offers", "notes": "", "deletable": True},
            "3": {"list": "2", "name": "vip", "notes": "", "deletable": True},
        }
        self.fields = {i + 1: name for i, name in enumerate(DEFAULT_FIELDS)}
        self.recipients: dict[int, dict[str, Any]] = {}
        self.by_email: dict[str, int] = {}
        self.imports: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, dict[str, Any]] = {
            1: {"list": "1", "subject": "Welcome"}, 2: {"list": "2", "subject": "Invitation"}}
        self.sent: list[dict[str, Any]] = []
        self.sendings: dict[int, dict[str, Any]] = {}  # confirmation sendings of imports
        self.optouts: list[dict[str, Any]] = []
        self.exported = 0
        self._ids = {"recipient": 0, "group": 3, "import": 0, "message": 2, "sending": 0}

    def next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def seed(self, contacts: int, seed: int) -> None:
        rng = random.Random(seed)
        for number in range(contacts):
            rec = self.create(f"contact{seed}-{number}@example.com",
                               {1: f"First{number}", 2: f"Last{number}"})
            roll = rng.random()
            status = "unsubscribed" if roll < 0.1 else "pending" if roll < 0.2 else "subscribed"
            self.set_status(rec, "1", status, optout_type=2, optout_subtype=21,
                             log=False)
            membership = rec["lists"]["1"]
            membership["groups"] = {g for g in ("1", "2") if rng.random() < 0.4}
            if rng.random() < 0.3:
                self.set_status(rec, "2", "subscribed", log=False)

    def send_confirmation(self, emails: list[str], list_id: str) -> None:
        """The confirmation request (double opt-in) mail, as delivered."""
        if emails:
            self.sent.append({"confirmation": True, "list": list_id, "to": list(emails)})

    def confirmations(self, email: str) -> list[str]:
        """The lists ``email`` was sent a confirmation request for."""
        return [str(item["list"]) for item in self.sent
                if item.get("confirmation") and email in item["to"]]

    def create(self, email: str, fields: dict[int, str] | None = None) -> dict[str, Any]:
        rid = self.next_id("recipient")
        rec: dict[str, Any] = {"id": rid, "email": email.strip().lower(), "name": "",
               "fields": dict(fields or {}), "mobile_number": "", "mobile_prefix": "",
               "lists": {}, "deleted": False}
        self.recipients[rid] = rec
        self.by_email[rec["email"]] = rid
        return rec

    def membership(self, rec: dict[str, Any], list_id: str) -> dict[str, Any]:
        lists: dict[str, dict[str, Any]] = rec["lists"]
        return lists.setdefault(list_id, {
            "status": None, "groups": set(), "optin_date": None, "optout_date": None,
            "optout_type": None, "optout_subtype": None, "optin_request_date": None,
            "optout_nl": None})

    def set_status(self, rec: dict[str, Any], list_id: str, status: str, *,
                    optout_type: int = 1, optout_subtype: int | None = None,
                    log: bool = True) -> None:
        member = self.membership(rec, list_id)
        if member["status"] == status:
            return
        member["status"] = status
        at = now()
        if status == "subscribed":
            member["optin_date"] = at
            member["optout_date"] = member["optout_type"] = member["optout_subtype"] = None
        elif status == "pending":
            member["optin_request_date"] = at
            member["optout_date"] = member["optout_type"] = member["optout_subtype"] = None
        else:
            member["optout_date"] = at
            member["optout_type"] = optout_type
            member["optout_subtype"] = optout_subtype
            if log:
                self.optouts.append({"email": rec["email"], "list": list_id, "at": at,
                                     "type": optout_type, "subtype": optout_subtype,
                                     "nl": member.get("optout_nl")})

    def recipient(self, rid: Any) -> dict[str, Any]:
        try:
            rec = self.recipients[int(rid)]
        except (KeyError, TypeError, ValueError):
            raise MailUpError(404, f"Recipient {rid} not found") from None
        if rec["deleted"]:
            raise MailUpError(404, f"Recipient {rid} not found")
        return rec

    def list_(self, list_id: str) -> dict[str, Any]:
        if list_id not in self.lists:
            raise MailUpError(404, f"List {list_id} not found")
        return self.lists[list_id]

    def group(self, group_id: str) -> dict[str, Any]:
        if group_id not in self.groups:
            raise MailUpError(404, f"Group {group_id} not found")
        return self.groups[group_id]

    def find(self, email: str) -> dict[str, Any] | None:
        rid = self.by_email.get(email.strip().lower())
        return None if rid is None or self.recipients[rid]["deleted"] else self.recipients[rid]

    def upsert(self, body: Any, list_id: str, *, confirm: bool = False, optout: bool = False,
                clear_empty: bool = False, reoptin: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MailUpError(400, "Invalid request: expected a recipient object")
        email = str(body.get("Email") or "").strip().lower()
        if not _EMAIL.match(email):
            raise MailUpError(400, f"Invalid email address: {body.get('Email')!r}")
        rec = self.find(email)
        if rec is None:
            rec = self.create(email)
        for item in body.get("Fields") or []:
            try:
                fid = int(item.get("Id"))
            except (TypeError, ValueError):
                raise MailUpError(400, f"Invalid field: {item!r}") from None
            if fid not in self.fields:
                raise MailUpError(400, f"Field {fid} does not exist")
            value = "" if item.get("Value") is None else str(item.get("Value"))
            if len(value) > 200:
                raise MailUpError(400, f"Field {fid} longer than 200 characters")
            if value or clear_empty:
                rec["fields"][fid] = value
        for key, attr in (("MobileNumber", "mobile_number"), ("MobilePrefix", "mobile_prefix")):
            if body.get(key):
                rec[attr] = str(body[key])
        member = self.membership(rec, list_id)
        current = member["status"]
        if optout:
            if current != "unsubscribed":
                self.set_status(rec, list_id, "unsubscribed", optout_type=4,
                                 optout_subtype=41)
        elif current is None:
            self.set_status(rec, list_id, "pending" if confirm else "subscribed")
        elif confirm and current == "subscribed":
            self.set_status(rec, list_id, "pending")
        elif (confirm and reoptin and current == "unsubscribed"
              and member["optout_type"] not in NO_FORCE):
            # The person's own re-subscription through a form: the confirmation flow.
            # Through the API, Unsubscribed -> Pending needs ConfirmEmail *and* a forced
            # opt-in (import flags table, help.mailup.com pageId=32604162): a plain
            # ConfirmEmail leaves an unsubscribed recipient unsubscribed.
            self.set_status(rec, list_id, "pending")
        return rec

    def force(self, rec: dict[str, Any], list_id: str) -> None:
        member = self.membership(rec, list_id)
        if member["status"] == "unsubscribed" and member["optout_type"] in NO_FORCE:
            raise MailUpError(400, "Recipient cannot be subscribed: it bounced or "
                                   "complained of spam")
        self.set_status(rec, list_id, "subscribed")

    def members(self, list_id: str, status: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.recipients.values() if not r["deleted"]
                and r["lists"].get(list_id, {}).get("status") is not None
                and (status is None or r["lists"][list_id]["status"] == status)]

    def set_groups(self, rec: dict[str, Any], list_id: str, groups: Any) -> None:
        if groups is None:
            return
        wanted = set()
        for value in groups:
            match = [g for g, v in self.groups.items()
                     if v["list"] == list_id and (v["name"] == value or g == str(value))]
            if not match:
                raise ValueError(f"list {list_id} has no group {value!r}")
            wanted.add(match[0])
        rec["lists"][list_id]["groups"] = wanted

    def replace_groups(self, rec: dict[str, Any], list_id: str, ids: list[str],
                        names: list[str]) -> None:
        wanted = set()
        for gid in ids:
            if self.groups.get(gid.strip(), {}).get("list") != list_id:
                raise ValueError(f"group {gid} is not in list {list_id}")
            wanted.add(gid.strip())
        for name in names:
            match = [g for g, v in self.groups.items()
                     if v["list"] == list_id and v["name"] == name.strip()]
            if match:
                wanted.add(match[0])
            else:
                gid = str(self.next_id("group"))
                self.groups[gid] = {"list": list_id, "name": name.strip(), "notes": "",
                                    "deletable": True}
                wanted.add(gid)
        rec["lists"][list_id]["groups"] = wanted

    def state(self) -> dict[str, Any]:
        contacts = []
        for rec in self.recipients.values():
            contacts.append({
                "email": rec["email"], "ids": {"mailup": str(rec["id"])},
                "fields": {self.fields[fid]: value for fid, value in rec["fields"].items()
                           if fid in self.fields},
                "lists": {lid: {"status": m["status"],
                                "groups": sorted(self.groups[g]["name"] for g in m["groups"]
                                                 if g in self.groups)}
                          for lid, m in rec["lists"].items() if m["status"]},
                "deleted": rec["deleted"],
            })
        return {"contacts": contacts}
