"""Sugar Web Logic Hook deliveries turned into Changes.

A Web Logic Hook POSTs ``{"isUpdate", "dataChanges", "bean", "data"}`` for one trigger
event; the body does not name the event, so each hook is configured with its own URL
ending in the event name (``.../after_save``) or with ``?event=after_save``. Relationship
events carry only ids, so the person record is read to learn its address.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmsync.errors import EventRejected
from crmsync.model import Change, InboundRequest, Op, normalize_email

from .records import SugarEmailAddress, SugarRecord, field_text, parse_sugar_datetime
from .settings import SugarSettings

__all__ = ["EVENTS", "WebLogicHookDecoder"]

EVENTS = ("after_save", "after_delete", "after_relationship_add", "after_relationship_delete")
_BEANS = {"Contact": "Contacts", "Lead": "Leads", "Prospect": "Prospects",
          "ProspectList": "ProspectLists"}


class WebLogicHookDecoder:
    """Decodes one delivery; ``fetch(module, id)`` reads a record when ids are all we got."""

    def __init__(self, connector: str, settings: SugarSettings,
                 fetch: Callable[[str, str], SugarRecord | None]) -> None:
        self.connector = connector
        self.settings = settings
        self.fetch = fetch

    def _authenticate(self, request: InboundRequest) -> None:
        expected = self.settings.webhook_token
        if expected is None:
            return
        given = request.header("X-Crmsync-Token") or dict(request.query).get("token", "")
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise EventRejected("web logic hook without the right token: put "
                                "?token=<CRMSYNC_SUGARCRM_WEBHOOK_TOKEN> in the hook URL",
                                status=401)

    @staticmethod
    def _event(request: InboundRequest, data: dict[str, Any]) -> str:
        named = dict(request.query).get("event") or request.path.rstrip("/").rsplit("/", 1)[-1]
        if named in EVENTS:
            return named
        if "related_id" in data:
            raise EventRejected("a relationship event without its name: end the hook URL "
                                "with /after_relationship_add or /after_relationship_delete")
        return "after_delete" if str(data.get("deleted")) in ("1", "true", "True") \
            else "after_save"

    def decode(self, request: InboundRequest) -> list[Change]:
        self._authenticate(request)
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise EventRejected("not a Sugar web logic hook: the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise EventRejected("not a Sugar web logic hook: expected "
                                '{"isUpdate", "bean", "data": {...}}')
        data: dict[str, Any] = body["data"]
        event = self._event(request, data)
        bean = str(body.get("bean") or data.get("module") or "")
        module = _BEANS.get(bean, bean)
        if event.startswith("after_relationship"):
            return self._relationship(event, module, data)
        if module not in self.settings.modules:
            return []
        record = self._record(module, data)
        if record is None:
            return []
        primary = record.primary()
        assert primary is not None
        occurred = record.date_modified
        if event == "after_delete":
            return [Change(email=primary.email, op=Op.DELETE, ids={self.connector: record.id},
                           occurred_at=datetime.now(UTC), source=f"{self.connector}:{event}",
                           event_id=f"{record.id}:deleted")]
        fields = dict(record.fields)
        fields["email_opt_out"] = "true" if primary.opt_out else "false"
        return [Change(email=primary.email, ids={self.connector: record.id}, fields=fields,
                       occurred_at=occurred, source=f"{self.connector}:{event}",
                       event_id=f"{record.id}@{occurred.isoformat()}")]

    def _record(self, module: str, data: dict[str, Any]) -> SugarRecord | None:
        if not data.get("id"):
            raise EventRejected("web logic hook data without a record id")
        addresses = [SugarEmailAddress(email=str(item.get("email_address") or ""),
                                       opt_out=bool(item.get("opt_out")) and
                                       str(item.get("opt_out")) not in ("0", "false"),
                                       primary=bool(item.get("primary_address")) and
                                       str(item.get("primary_address")) not in ("0", "false"))
                     for item in data.get("email") or [] if isinstance(item, dict)]
        if not addresses and data.get("email1"):
            addresses = [SugarEmailAddress(email=str(data["email1"]), primary=True,
                                           opt_out=str(data.get("email_opt_out")) in
                                           ("1", "true", "True"))]
        stamp = data.get("date_modified")
        try:
            modified = parse_sugar_datetime(str(stamp)) if stamp else datetime.now(UTC)
        except ValueError:
            raise EventRejected(f"web logic hook with a bad date_modified {stamp!r}") from None
        record = SugarRecord(module=module, id=str(data["id"]), date_modified=modified,
                             fields={name: field_text(data.get(name))
                                     for name in self.settings.fields if name in data},
                             addresses=addresses)
        primary = record.primary()
        if primary is None:
            return None
        try:
            normalize_email(primary.email)
        except ValueError:
            return None
        return record

    def _relationship(self, event: str, module: str, data: dict[str, Any]) -> list[Change]:
        related = str(data.get("related_module") or "")
        if module == "ProspectLists":
            list_id, person_module, person_id = data.get("id"), related, data.get("related_id")
        elif related == "ProspectLists":
            list_id, person_module, person_id = data.get("related_id"), module, data.get("id")
        else:
            return []  # a relationship crmsync does not sync
        if not list_id or not person_id:
            raise EventRejected("relationship event without id / related_id")
        if person_module not in self.settings.modules:
            return []
        record = self.fetch(person_module, str(person_id))
        primary = record.primary() if record else None
        if record is None or primary is None:
            return []
        key = f"target_list:{list_id}"
        value = "" if event == "after_relationship_add" else None
        return [Change(email=primary.email, ids={self.connector: record.id},
                       memberships={key: value}, occurred_at=datetime.now(UTC),
                       source=f"{self.connector}:{event}",
                       event_id=f"{event}:{list_id}:{record.id}")]
