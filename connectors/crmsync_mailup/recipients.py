"""Lists, groups and recipients over MailUp's console REST API.

Status is per list (subscribed / unsubscribed / pending); groups carry no status.
Subscribing creates the recipient (MailUp has no "create without subscribing"), and
the default subscribe never changes an existing status: an unsubscribed recipient
stays unsubscribed until an explicit force-subscribe or a confirmed re-opt-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from crmsync.errors import RemoteError
from crmsync.model import Group, MailingList, Status

from .client import MailUpClient

__all__ = ["OPTIN_STATUS", "GroupDirectory", "RecipientApi", "recipient_body"]

LISTINGS = {Status.SUBSCRIBED: "Subscribed", Status.UNSUBSCRIBED: "Unsubscribed",
            Status.PENDING: "Pending"}
#: EmailOptins ``Status`` values. Only OPTIN is documented; OPTOUT and PENDING are
#: UNCONFIRMED (the obvious names), and anything else is read as unknown.
OPTIN_STATUS = {"OPTIN": Status.SUBSCRIBED, "OPTOUT": Status.UNSUBSCRIBED,
                "PENDING": Status.PENDING}


def recipient_body(email: str, fields: Mapping[str, str | None], field_ids: Mapping[str, int],
                   *, recipient_id: str | None = None) -> dict[str, Any]:
    """A recipient object as MailUp takes it (``Name`` is "not used but required")."""
    body: dict[str, Any] = {
        "Email": email, "Name": email,
        "Fields": [{"Id": field_ids[name], "Value": "" if value is None else str(value)}
                   for name, value in fields.items() if name in field_ids],
        "MobileNumber": "", "MobilePrefix": "",
    }
    if recipient_id is not None:
        body["idRecipient"] = int(recipient_id)
    return body


def _filter_equals(email: str) -> str:
    escaped = email.replace("'", "\\'")
    return f"Email=='{escaped}'"


class RecipientApi:
    """Thin, typed wrappers over the recipient endpoints; paths as MailUp documents them."""

    def __init__(self, client: MailUpClient) -> None:
        self.client = client

    # -- lists and groups ---------------------------------------------------------------
    def lists(self) -> list[dict[str, Any]]:
        return [item for page in self.client.pages("List") for item in page]

    def groups(self, list_id: str) -> list[dict[str, Any]]:
        return [item for page in self.client.pages(f"List/{list_id}/Groups") for item in page]

    def create_group(self, list_id: str, name: str) -> dict[str, Any]:
        body = self.client.call("POST", f"List/{list_id}/Group",
                                json={"Name": name, "Notes": "created by crmsync",
                                      "Deletable": True})
        if not isinstance(body, dict) or "idGroup" not in body:
            raise RemoteError(f"MailUp created group {name!r} in list {list_id} but did not "
                              "answer with its idGroup")
        return body

    # -- reading ---------------------------------------------------------------------------
    def listing(self, list_id: str, status: Status) -> Iterator[list[dict[str, Any]]]:
        return self.client.pages(f"List/{list_id}/Recipients/{LISTINGS[status]}")

    def optins(self, list_id: str, *, email: str | None = None) -> Iterator[list[dict[str, Any]]]:
        params = {"filterby": _filter_equals(email)} if email else None
        return self.client.pages(f"List/{list_id}/Recipients/EmailOptins", params=params)

    def group_members(self, group_id: str) -> Iterator[list[dict[str, Any]]]:
        return self.client.pages(f"Group/{group_id}/Recipients")

    def recipient_groups(self, list_id: str, recipient_id: str) -> set[str]:
        return {str(item["idGroup"]) for page in self.client.pages(
            f"List/{list_id}/Recipient/{recipient_id}/Groups") for item in page}

    def find(self, email: str, list_ids: Iterable[str]) -> tuple[str, str, Status | None] | None:
        """``(idRecipient, list, status)`` of ``email`` in the first list that knows it."""
        for list_id in list_ids:
            for page in self.optins(list_id, email=email):
                for item in page:
                    if str(item.get("Email", "")).lower() == email:
                        return (str(item["idRecipient"]), list_id,
                                OPTIN_STATUS.get(str(item.get("Status", "")).upper()))
        return None

    def dynamic_fields(self) -> dict[int, str]:
        return {int(item["Id"]): str(item.get("Description", ""))
                for page in self.client.pages("Recipient/DynamicFields") for item in page}

    # -- writing ---------------------------------------------------------------------------
    def subscribe(self, list_id: str, body: dict[str, Any], *, confirm: bool) -> str:
        """Synchronous subscribe (an upsert): the new or existing ``idRecipient``."""
        params = {"ConfirmEmail": "true"} if confirm else None
        return _bare_id(self.client.call("POST", f"List/{list_id}/Recipient", params=params,
                                         json=body), "idRecipient")

    def add_to_group(self, group_id: str, body: dict[str, Any]) -> str:
        return _bare_id(self.client.call("POST", f"Group/{group_id}/Recipient", json=body),
                        "idRecipient")

    def force_subscribe(self, list_id: str, recipient_id: str) -> None:
        self.client.call("POST", f"List/{list_id}/Subscribe/{recipient_id}")

    def unsubscribe(self, list_id: str, recipient_id: str) -> None:
        self.client.call("DELETE", f"List/{list_id}/Unsubscribe/{recipient_id}")

    def remove_from_group(self, group_id: str, recipient_id: str) -> None:
        self.client.call("DELETE", f"Group/{group_id}/Unsubscribe/{recipient_id}")

    def update(self, body: dict[str, Any]) -> dict[str, Any]:
        result = self.client.call("PUT", "Recipient/Detail", json=body)
        return result if isinstance(result, dict) else {}

    def delete(self, recipient_id: str) -> None:
        self.client.call("DELETE", f"Recipients/{recipient_id}")

    # -- bulk ------------------------------------------------------------------------------
    def start_import(self, path: str, rows: list[dict[str, Any]],
                     params: Mapping[str, str]) -> str:
        return _bare_id(self.client.call("POST", path, params=dict(params) or None, json=rows),
                        "idImport")

    def import_status(self, import_id: str) -> dict[str, Any]:
        body = self.client.call("GET", f"Import/{import_id}")
        return body if isinstance(body, dict) else {}

    def import_sending(self, import_id: str) -> str | None:
        """The sending that holds a ConfirmEmail import's confirmation request, if any."""
        try:
            body = self.client.call("GET", f"Import/{import_id}/Sending")
        except RemoteError as exc:
            if exc.status == 404:
                return None  # nobody became pending: nothing was queued
            raise
        if isinstance(body, dict):
            lowered = {str(k).lower(): v for k, v in body.items()}
            body = lowered.get("idsending", lowered.get("id"))
        if isinstance(body, int) and not isinstance(body, bool) and body > 0:
            return str(body)
        if isinstance(body, str) and body.isdigit() and int(body) > 0:
            return body
        return None

    def send_now(self, sending_id: str) -> None:
        self.client.call("POST", f"Email/Sendings/{sending_id}/Immediate")


def _bare_id(body: Any, key: str) -> str:
    # MailUp answers a subscribe or an import with a bare JSON integer.
    if isinstance(body, int) and not isinstance(body, bool):
        return str(body)
    if isinstance(body, dict) and key in body:
        return str(body[key])
    raise RemoteError(f"MailUp answered without the expected {key} (a bare integer): "
                      f"got {type(body).__name__}")


class GroupDirectory:
    """Lists and their groups, cached for a connector's life; groups created on demand."""

    def __init__(self, api: RecipientApi, *, create: bool) -> None:
        self.api = api
        self.create = create
        self._groups: dict[str, dict[str, str]] = {}  # list -> group id -> name

    def lists(self) -> list[MailingList]:
        result = []
        for item in self.api.lists():
            list_id = str(item.get("IdList", item.get("idList")))
            groups = self.groups(list_id, refresh=True)
            result.append(MailingList(
                id=list_id, name=str(item.get("Name", "")).strip(),
                groups=tuple(Group(id=gid, name=name, list_id=list_id)
                             for gid, name in groups.items())))
        return result

    def groups(self, list_id: str, *, refresh: bool = False) -> dict[str, str]:
        if refresh or list_id not in self._groups:
            self._groups[list_id] = {str(g["idGroup"]): str(g.get("Name", ""))
                                     for g in self.api.groups(list_id)}
        return self._groups[list_id]

    def name(self, list_id: str, group_id: str) -> str:
        groups = self.groups(list_id)
        if group_id not in groups:
            groups = self.groups(list_id, refresh=True)
        return groups.get(group_id, group_id)

    def resolve(self, list_id: str, wanted: Iterable[str]) -> dict[str, str]:
        """Group names (or ids) -> ids, creating missing groups when allowed."""
        groups = self.groups(list_id)
        by_name = {name: gid for gid, name in groups.items()}
        result = {}
        for value in wanted:
            if value in by_name:
                result[value] = by_name[value]
            elif value in groups:
                result[value] = value
            elif self.create:
                created = self.api.create_group(list_id, value)
                gid = str(created["idGroup"])
                groups[gid] = value
                by_name[value] = gid
                result[value] = gid
            else:
                raise RemoteError(f"list {list_id} has no group {value!r}: create it in MailUp "
                                  "or set create_groups = true", code="404")
        return result
