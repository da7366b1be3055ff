"""The console REST API: MailUp's endpoints, JSON shapes, paging and error envelopes.

Handlers take a parsed call and return the JSON to send (``None`` for MailUp's empty
200 body) or raise :class:`MailUpError`; the emulator wraps them with OAuth, the rate
limit and its lock."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse

from .store import NO_FORCE, MailUpError, MailUpStore

if TYPE_CHECKING:
    from . import MailUpEmulator

__all__ = ["Call", "ConsoleApi", "envelope"]

_ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                429: None, 500: "InternalServerError", 503: "ServiceUnavailable"}
_FILTER = re.compile(r"""^\s*"?\s*(\w+)\s*(==|\.Contains\()\s*(['"])(.*)\3\s*\)?\s*"?\s*$""")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def envelope(status: int, description: str) -> JSONResponse:
    """MailUp's REST error envelope (``ErrorCode`` is a string)."""
    return JSONResponse({"ErrorCode": str(status), "ErrorDescription": description,
                         "ErrorName": _ERROR_NAMES.get(status, "Error"), "ErrorStack": None},
                        status_code=status)


def _api_date(value: Any, zone: str = "UTC") -> str:
    # EmailOptins dates carry no offset; the console writes them in its own zone (the
    # webhook samples of an Italian console carry +01: Europe/Rome).
    if not value:
        return ""
    local = value.astimezone(ZoneInfo(zone))
    return str(local.strftime("%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}")


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


class Call:
    """One vendor request: path parameters, case-insensitive query, decoded JSON body."""

    def __init__(self, request: Request, body: Any) -> None:
        self.path = request.path_params
        self.query = {k.lower(): v for k, v in request.query_params.items()}
        self.body = body

    def q(self, name: str) -> str | None:
        return self.query.get(name.lower())


Handler = Callable[[Call], Any]


class ConsoleApi:
    """``/Console/...`` handlers over the store."""

    def __init__(self, settings: MailUpEmulator) -> None:
        self.settings = settings

    @property
    def store(self) -> MailUpStore:
        return self.settings.store

    def _page(self, items: list[Any], call: Call) -> dict[str, Any]:
        given = call.q("pageSize") is not None or call.q("pageNumber") is not None
        try:
            size = int(call.q("pageSize") or 20)
            number = int(call.q("pageNumber") or 0)
        except ValueError:
            raise MailUpError(400, "Invalid paging parameters") from None
        if size < 1 or number < 0:
            raise MailUpError(400, "Invalid paging parameters")
        cap = self.settings.max_page_size
        if cap and size > cap:
            # A server may serve fewer items than asked (the maximum pageSize is not
            # documented); the envelope then says the PageSize it used.
            size = cap
        items = self._filtered(items, call.q("filterby"))
        skipped = size * number
        return {"IsPaginated": given, "Items": items[skipped:skipped + size],
                "PageNumber": number, "PageSize": size, "Skipped": skipped,
                "TotalElementsCount": len(items)}

    @staticmethod
    def _filtered(items: list[dict[str, Any]], expression: str | None) -> list[dict[str, Any]]:
        if not expression:
            return items
        match = _FILTER.match(expression)
        if not match:
            raise MailUpError(400, f"Invalid filterby expression: {expression}")
        key, op, _, value = match.groups()
        if op == "==":
            return [i for i in items if str(i.get(key)) == value]
        return [i for i in items if value in str(i.get(key, ""))]  # case-sensitive

    def _recipient_json(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"Fields": [{"Description": name, "Id": fid, "Value": rec["fields"].get(fid, "")}
                           for fid, name in sorted(self.store.fields.items())],
                "Name": rec["name"], "idRecipient": rec["id"], "Email": rec["email"],
                "MobileNumber": rec["mobile_number"] or None,
                "MobilePrefix": rec["mobile_prefix"] or None}

    def _group_json(self, gid: str) -> dict[str, Any]:
        group = self.store.groups[gid]
        count = sum(1 for r in self.store.recipients.values()
                    if gid in r["lists"].get(group["list"], {}).get("groups", ()))
        return {"Count": count, "Deletable": group["deletable"], "Name": group["name"],
                "Notes": group["notes"], "idGroup": int(gid), "idList": int(group["list"])}

    def _lists(self, call: Call) -> Any:
        return self._page([{"Company": "", "Description": v["description"], "IdList": int(k),
                            "ListGuid": v["guid"], "Name": v["name"]}
                           for k, v in self.store.lists.items()], call)

    def _user_lists(self, call: Call) -> Any:
        return self._page([{"Company": "", "Description": v["description"], "Name": v["name"],
                            "idList": int(k), "listGuid": v["guid"]}
                           for k, v in self.store.lists.items()], call)

    def _list_groups(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        return self._page([self._group_json(g) for g, v in self.store.groups.items()
                           if v["list"] == list_id], call)

    def _create_group(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        body = call.body if isinstance(call.body, dict) else {}
        name = str(body.get("Name") or "").strip()
        if not name:
            raise MailUpError(400, "Group name is required")
        gid = str(self.store.next_id("group"))
        self.store.groups[gid] = {"list": list_id, "name": name,
                                  "notes": str(body.get("Notes") or ""),
                            "deletable": bool(body.get("Deletable", True))}
        return self._group_json(gid)

    def _delete_group(self, call: Call) -> Any:
        gid = call.path["gid"]
        group = self.store.group(gid)
        if group["list"] != call.path["id"]:
            raise MailUpError(404, f"Group {gid} not found in list {call.path['id']}")
        for rec in self.store.recipients.values():
            rec["lists"].get(group["list"], {}).get("groups", set()).discard(gid)
        del self.store.groups[gid]
        return None

    def _listing(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        status = {"subscribed": "subscribed", "unsubscribed": "unsubscribed",
                  "pending": "pending"}.get(call.path["status"].lower())
        if status is None:
            raise MailUpError(404, f"Unknown listing {call.path['status']}")
        return self._page([self._recipient_json(r) for r in self.store.members(list_id, status)],
                          call)

    def _optins(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        items = []
        for rec in self.store.members(list_id):
            m = rec["lists"][list_id]
            zone = self.settings.date_zone
            items.append({
                "Email": rec["email"], "Optin_Date": _api_date(m["optin_date"], zone),
                "Optin_Request_Date": _api_date(m["optin_request_date"], zone),
                "Optin_Request_IP": None, "Optout_Date": _api_date(m["optout_date"], zone),
                "Optout_MsgID": m["optout_nl"], "Optout_Subtype": m["optout_subtype"],
                "Optout_Type": m["optout_type"],
                # Only OPTIN is in a public fixture: the other texts are configurable.
                "Status": self.settings.optin_status_names[m["status"]],
                "idRecipient": rec["id"]})
        return self._page(items, call)

    def _group_members(self, call: Call) -> Any:
        gid = call.path["id"]
        group = self.store.group(gid)
        return self._page([self._recipient_json(r) for r in self.store.members(group["list"])
                           if gid in r["lists"][group["list"]]["groups"]], call)

    def _recipient_groups(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        rec = self.store.recipient(call.path["rid"])
        gids = rec["lists"].get(list_id, {}).get("groups", set())
        return self._page([self._group_json(g) for g in sorted(gids, key=int)
                           if g in self.store.groups], call)

    def _subscribe_one(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        confirm = _flag(call.q("ConfirmEmail"))
        before = self._status(call.body, list_id)
        rec = self.store.upsert(call.body, list_id, confirm=confirm)
        if confirm and rec["lists"][list_id]["status"] == "pending" and before != "pending":
            # The synchronous subscribe sends the confirmation request itself.
            self.store.send_confirmation([rec["email"]], list_id)
        return rec["id"]

    def _status(self, body: Any, list_id: str) -> str | None:
        rec = self.store.find(str(body.get("Email") or "")) if isinstance(body, dict) else None
        return None if rec is None else rec["lists"].get(list_id, {}).get("status")

    def _subscribe_group(self, call: Call) -> Any:
        gid = call.path["id"]
        group = self.store.group(gid)
        list_id = group["list"]
        rec = self.store.upsert(call.body, list_id, confirm=_flag(call.q("ConfirmEmail")))
        member = rec["lists"][list_id]
        if member["status"] == "unsubscribed" and member["optout_type"] not in NO_FORCE:
            # "confirmSubscription=true" is the default: the call "also subscribes to the
            # MailUp list the group belongs to" (help.mailup.com, Recipients).
            self.store.set_status(rec, list_id, "subscribed")
        member["groups"].add(gid)
        return rec["id"]

    def _group_import(self, call: Call) -> Any:
        return self._import(call, group=True)

    def _import(self, call: Call, *, group: bool = False) -> Any:
        if group:
            gid: str | None = call.path["id"]
            list_id = self.store.group(call.path["id"])["list"]
        else:
            gid, list_id = None, call.path["id"]
            self.store.list_(list_id)
        if not isinstance(call.body, list):
            raise MailUpError(400, "Invalid request: expected an array of recipients")
        confirm = _flag(call.q("ConfirmEmail"))
        optout = (call.q("importType") or "").lower() == "asoptout"
        clear = _flag(call.q("clearMissingOrEmptyFields"))
        replace = _flag(call.q("removeFromPrevGroups"))
        counts = {"created": 0, "updated": 0, "valid": 0, "invalid": 0}
        pending: list[str] = []
        for row in call.body:
            existed = isinstance(row, dict) and self.store.find(
                str(row.get("Email") or "")) is not None
            before = self._status(row, list_id)
            try:
                rec = self.store.upsert(row, list_id, confirm=confirm, optout=optout,
                                   clear_empty=clear)
            except MailUpError:
                counts["invalid"] += 1
                continue
            counts["valid"] += 1
            counts["updated" if existed else "created"] += 1
            if confirm and rec["lists"][list_id]["status"] == "pending" and before != "pending":
                pending.append(rec["email"])
            if gid is not None:
                groups = rec["lists"][list_id]["groups"]
                if replace:
                    groups.clear()
                groups.add(gid)
        import_id = self.store.next_id("import")
        self.store.imports[import_id] = {"polls": 0, **counts}
        if confirm:
            # "A confirmation request email is queued but not automatically sent": the
            # caller asks GET /Import/{id}/Sending, then POST /Email/Sendings/{id}/Immediate.
            sending = self.store.next_id("sending")
            self.store.sendings[sending] = {"import": import_id, "list": list_id,
                                            "to": pending, "sent": False}
            self.store.imports[import_id]["sending"] = sending
        return import_id

    def _import_sending(self, call: Call) -> Any:
        try:
            item = self.store.imports[int(call.path["id"])]
        except (KeyError, ValueError):
            raise MailUpError(404, f"Import {call.path['id']} not found") from None
        if item["polls"] <= self.settings.import_polls:
            raise MailUpError(400, f"Import {call.path['id']} is not completed yet")
        if "sending" not in item:
            raise MailUpError(404, f"Import {call.path['id']} has no confirmation sending")
        return {"idSending": item["sending"]}  # the answer's shape is UNCONFIRMED

    def _sending_immediate(self, call: Call) -> Any:
        try:
            sending = self.store.sendings[int(call.path["id"])]
        except (KeyError, ValueError):
            raise MailUpError(404, f"Sending {call.path['id']} not found") from None
        if not sending["sent"]:
            sending["sent"] = True
            still = [e for e in sending["to"] if (r := self.store.find(e)) is not None
                     and r["lists"].get(sending["list"], {}).get("status") == "pending"]
            self.store.send_confirmation(still, sending["list"])
        return None

    def _import_status(self, call: Call) -> Any:
        try:
            item = self.store.imports[int(call.path["id"])]
        except (KeyError, ValueError):
            raise MailUpError(404, f"Import {call.path['id']} not found") from None
        item["polls"] += 1
        return self._import_json(int(call.path["id"]), item)

    def _import_json(self, import_id: int, item: dict[str, Any]) -> dict[str, Any]:
        return {"idImport": import_id, "Completed": item["polls"] > self.settings.import_polls,
                "UpdatedRecipients": item["updated"], "ValidRecipients": item["valid"],
                "CreatedRecipients": item["created"], "ImportedRecipients": item["valid"],
                "NotValidRecipients": item["invalid"]}

    def _all_imports(self, call: Call) -> Any:
        return self._page([self._import_json(k, v) for k, v in self.store.imports.items()], call)

    def _force_list(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        self.store.force(self.store.recipient(call.path["rid"]), list_id)
        return None

    def _force_group(self, call: Call) -> Any:
        gid = call.path["id"]
        group = self.store.group(gid)
        rec = self.store.recipient(call.path["rid"])
        self.store.force(rec, group["list"])
        rec["lists"][group["list"]]["groups"].add(gid)
        return None

    def _unsubscribe_list(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        rec = self.store.recipient(call.path["rid"])
        if rec["lists"].get(list_id, {}).get("status") is None:
            raise MailUpError(404, f"Recipient {rec['id']} is not in list {list_id}")
        self.store.set_status(rec, list_id, "unsubscribed", optout_type=1, optout_subtype=None)
        return None

    def _remove_group(self, call: Call) -> Any:
        group = self.store.group(call.path["id"])
        rec = self.store.recipient(call.path["rid"])
        rec["lists"].get(group["list"], {}).get("groups", set()).discard(call.path["id"])
        return None

    def _remove_list(self, call: Call) -> Any:
        self.store.list_(call.path["id"])
        rec = self.store.recipient(call.path["rid"])
        if rec["lists"].pop(call.path["id"], None) is None:
            raise MailUpError(404, f"Recipient {rec['id']} is not in list {call.path['id']}")
        return None

    def _delete_recipient(self, call: Call) -> Any:
        rec = self.store.recipient(call.path["rid"])
        rec["lists"].clear()
        rec["deleted"] = True
        self.store.by_email.pop(rec["email"], None)
        return None

    def _update_detail(self, call: Call) -> Any:
        body = call.body if isinstance(call.body, dict) else {}
        rec = self.store.recipient(body.get("idRecipient"))
        email = str(body.get("Email") or rec["email"]).strip().lower()
        if not _EMAIL.match(email):
            raise MailUpError(400, f"Invalid email address: {body.get('Email')!r}")
        other = self.store.find(email)
        if other is not None and other["id"] != rec["id"]:
            raise MailUpError(400, f"Email {email} already belongs to recipient {other['id']}")
        if email != rec["email"]:
            self.store.by_email.pop(rec["email"], None)
            rec["email"] = email
            self.store.by_email[email] = rec["id"]
        for item in body.get("Fields") or []:
            fid = int(item.get("Id"))
            if fid not in self.store.fields:
                raise MailUpError(400, f"Field {fid} does not exist")
            rec["fields"][fid] = "" if item.get("Value") is None else str(item["Value"])
        if "Name" in body:
            rec["name"] = str(body.get("Name") or "")
        return self._recipient_json(rec)

    def _dynamic_fields(self, call: Call) -> Any:
        return self._page([{"Description": name, "Id": fid}
                           for fid, name in sorted(self.store.fields.items())], call)

    def _auth_info(self, call: Call) -> Any:
        return {"Company": "crmsync emulator", "Username": self.settings.credentials[2],
                "UID": "12345"}

    def _create_message(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        body = call.body if isinstance(call.body, dict) else {}
        mid = self.store.next_id("message")
        self.store.messages[mid] = {"list": list_id, "subject": str(body.get("Subject") or "")}
        return {"idMessage": mid}

    def _list_messages(self, call: Call) -> Any:
        list_id = call.path["id"]
        self.store.list_(list_id)
        return self._page([{"CreationDate": "2020-01-27 10:05:53Z", "Notes": "",
                            "Subject": m["subject"], "idList": int(list_id), "idMessage": k,
                            "ServiceType": 0}
                           for k, m in self.store.messages.items() if m["list"] == list_id], call)

    def _message(self, mid: Any) -> dict[str, Any]:
        try:
            return self.store.messages[int(mid)]
        except (KeyError, TypeError, ValueError):
            raise MailUpError(404, f"Message {mid} not found") from None

    def _send_one(self, call: Call) -> Any:
        body = call.body if isinstance(call.body, dict) else {}
        self._message(body.get("idMessage"))
        email = str(body.get("Email") or "").strip().lower()
        ok = bool(_EMAIL.match(email))
        if ok:
            self.store.sent.append({"message": int(body["idMessage"]), "to": [email]})
        return {"Id": len(self.store.sent), "InvalidRecipients": [] if ok else [{"Email": email}],
                "Sent": int(ok), "UnprocessedRecipients": [], "idMessage": body["idMessage"]}

    def _send_group(self, call: Call) -> Any:
        return self._send_to(call, group=True)

    def _send_to(self, call: Call, *, group: bool = False) -> Any:
        mid = int(call.path["mid"])
        message = self._message(mid)
        if group:
            gid: str | None = call.path["id"]
            list_id = self.store.group(call.path["id"])["list"]
        else:
            gid, list_id = None, call.path["id"]
            self.store.list_(list_id)
        if message["list"] != list_id:
            raise MailUpError(400, f"Message {mid} does not belong to list {list_id}")
        to = [r["email"] for r in self.store.members(list_id, "subscribed")
              if gid is None or gid in r["lists"][list_id]["groups"]]
        self.store.sent.append({"message": mid, "to": to, "list": list_id, "group": gid})
        return {"idMessage": mid, "Sent": len(to), "UnprocessedRecipients": [],
                "InvalidRecipients": []}

    def table(self) -> list[tuple[str, Handler, list[str]]]:
        """``(path under /Console, handler, methods)`` for every endpoint."""
        return [
            ("/List", self._lists, ["GET"]),
            ("/User/Lists", self._user_lists, ["GET"]),
            ("/List/{id}/Groups", self._list_groups, ["GET"]),
            ("/List/{id}/Group", self._create_group, ["POST"]),
            ("/List/{id}/Group/{gid}", self._delete_group, ["DELETE"]),
            ("/List/{id}/Recipients/EmailOptins", self._optins, ["GET"]),
            ("/List/{id}/Recipients/{status}", self._listing, ["GET"]),
            ("/List/{id}/Recipients", self._import, ["POST"]),
            ("/Group/{id}/Recipients", self._group_import, ["POST"]),
            ("/Group/{id}/Recipients", self._group_members, ["GET"]),
            ("/List/{id}/Recipient/{rid}/Groups", self._recipient_groups, ["GET"]),
            ("/List/{id}/Recipient", self._subscribe_one, ["POST"]),
            ("/Group/{id}/Recipient", self._subscribe_group, ["POST"]),
            ("/List/{id}/Recipient/{rid}", self._remove_list, ["DELETE"]),
            ("/Recipients/{rid}", self._delete_recipient, ["DELETE"]),
            ("/Import/{id}", self._import_status, ["GET"]),
            ("/Import/{id}/Sending", self._import_sending, ["GET"]),
            ("/Email/Sendings/{id}/Immediate", self._sending_immediate, ["POST"]),
            ("/Imports", self._all_imports, ["GET"]),
            ("/List/{id}/Subscribe/{rid}", self._force_list, ["POST"]),
            ("/Group/{id}/Subscribe/{rid}", self._force_group, ["POST"]),
            ("/List/{id}/Unsubscribe/{rid}", self._unsubscribe_list, ["DELETE"]),
            ("/Group/{id}/Unsubscribe/{rid}", self._remove_group, ["DELETE"]),
            ("/Recipient/Detail", self._update_detail, ["PUT"]),
            ("/Recipient/DynamicFields", self._dynamic_fields, ["GET"]),
            ("/Authentication/Info", self._auth_info, ["GET"]),
            ("/List/{id}/Email", self._create_message, ["POST"]),
            ("/List/{id}/Emails", self._list_messages, ["GET"]),
            ("/Email/Send", self._send_one, ["POST"]),
            ("/List/{id}/Email/{mid}/Send", self._send_to, ["POST"]),
            ("/Group/{id}/Email/{mid}/Send", self._send_group, ["POST"]),
        ]
