"""The MailUp connector: the ESP side of a sync, over MailUp's REST API v1.1."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from crmsync.contract import (
    Capabilities,
    Connector,
    ConnectorSettings,
    FileExchange,
    MessageSender,
    MultiListSubscriber,
    fill_url,
)
from crmsync.errors import CrmsyncError, DataError, RemoteError
from crmsync.model import (
    Change,
    Contact,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    SendResult,
    Status,
    Subscription,
    WriteResult,
)

from .bulk import BulkImporter
from .client import MailUpClient, make_http
from .files import MailUpFiles, optout_reason
from .frontend import FrontendSubscriber
from .recipients import OPTIN_STATUS, GroupDirectory, RecipientApi, recipient_body
from .sending import MailUpSender, TransactionalMessage
from .settings import MailUpSettings
from .webhooks import WebhookDecoder

__all__ = ["MailUpConnector"]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MailUpConnector(Connector, FileExchange, MessageSender, MultiListSubscriber):
    """MailUp as the ESP: lists, groups, recipients, bulk imports, webhooks, files, sending."""

    name: ClassVar[str] = "mailup"
    Settings: ClassVar[type[ConnectorSettings]] = MailUpSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="esp", full_read=True, incremental_read=True, write=True, bulk_write=True,
        deletes=True, push_events=True, polling=False, lists=True, groups=True,
        file_exchange=True, send_message=True, multi_list_subscribe=True,
    )

    settings: MailUpSettings

    def __init__(self, settings: ConnectorSettings, *, http: httpx.Client | None = None) -> None:
        super().__init__(settings, http=http)
        self._owns_http = http is None
        self.http = http or make_http(self.settings)
        self.client = MailUpClient(self.settings, self.http)
        self.api = RecipientApi(self.client)
        self.directory = GroupDirectory(self.api, create=self.settings.create_groups)
        self.files = MailUpFiles(self.settings)
        self.webhooks = WebhookDecoder(self.settings, group_name=self.directory.name)
        self.sender = MailUpSender(self.settings, self.client)
        self.bulk = BulkImporter(self.settings, self.api, self.directory)
        self.frontend = (FrontendSubscriber(self.settings.frontend_url, self.http)
                         if self.settings.frontend_url else None)
        self._list_ids: list[str] | None = None
        #: EmailOptins ``Status`` texts crmsync does not know, with how often each was read.
        self.unknown_statuses: Counter[str] = Counter()

    def recipient_url(self, email: str, record_id: str | None = None) -> str | None:
        """``console_recipient_url`` filled with the recipient's idRecipient and address;
        an idRecipient crmsync does not hold is looked up (``EmailOptins?filterby``)."""
        template = self.settings.console_recipient_url
        if not template:
            return None
        if record_id is None and "{id}" in template:
            found = self.api.find(email.lower(), self.list_ids())
            record_id = found[0] if found else None
        return fill_url(template, id=record_id, email=email)

    # -- health and lists -------------------------------------------------------------------
    def check(self) -> Health:
        started = datetime.now(UTC)
        try:
            lists = self.api.lists()
            known = self.api.dynamic_fields() if self.settings.field_ids else {}
        except CrmsyncError as exc:
            return Health(ok=False, detail=str(exc))
        missing = {name: ident for name, ident in self.settings.field_ids.items()
                   if ident not in known}
        if missing:
            listed = ", ".join(f"{i} {d}" for i, d in sorted(known.items()))
            return Health(ok=False, detail=(
                f"field_ids {missing} are not fields of this MailUp console: pick ids from "
                f"its dynamic fields ({listed})"))
        elapsed = (datetime.now(UTC) - started).total_seconds() * 1000
        return Health(ok=True, detail=f"MailUp user {self.settings.username}: "
                      f"{len(lists)} list(s)", latency_ms=round(elapsed, 1))

    def lists(self) -> list[MailingList]:
        return self.directory.lists()

    def dynamic_fields(self) -> dict[int, str]:
        """MailUp's recipient fields, id -> description, to fill ``field_ids`` from."""
        return self.api.dynamic_fields()

    def list_ids(self) -> list[str]:
        if self.settings.lists is not None:
            return list(self.settings.lists)
        if self._list_ids is None:
            self._list_ids = [str(item.get("IdList", item.get("idList")))
                              for item in self.api.lists()]
        return self._list_ids

    # -- reading ------------------------------------------------------------------------------
    def read(self, since: Cursor | None) -> Iterator[Page]:
        if since is None:
            return self._read_full()
        return self._read_changes(since)

    def _read_full(self) -> Iterator[Page]:
        # MailUp listings carry no modification stamp: pages before the last resume as
        # "everything since 1970" (status only), the last one as "since this read began".
        started = datetime.now(UTC)
        seq = 0
        pending: Page | None = None
        for list_id in self.list_ids():
            groups = self._group_members(list_id) or {}
            for status in (Status.SUBSCRIBED, Status.UNSUBSCRIBED, Status.PENDING):
                for items in self.api.listing(list_id, status):
                    records = [c for c in (self._contact(item, list_id, status, groups)
                                           for item in items) if c is not None]
                    if pending is not None:
                        yield pending
                    seq += 1
                    pending = Page(records=records, cursor=Cursor(
                        at=_EPOCH, tie_id=f"{seq:08d}",
                        data={"list": list_id, "status": status.value}))
        last = pending.records if pending is not None else []
        yield Page(records=last, cursor=Cursor(at=started, tie_id=f"{seq:08d}",
                                               data={"full": True}))

    def read_unsubscriptions(self, since: Cursor) -> Iterator[Page]:
        """Every list's unsubscribed recipients (``GET /List/{id}/Recipients/
        Unsubscribed``): a page per unsubscribed page. EmailOptins has no documented
        date filter, so reading the changes since the cursor pages through every
        recipient of the list (after an import, all of them), and their groups through
        every group listing; an unsubscribe keeps its groups, so none are read here.
        Undated: an unsubscribe wins whatever its date (docs/connectors/mailup.md)."""
        started = datetime.now(UTC)
        for list_id in self.list_ids():
            for items in self.api.listing(list_id, Status.UNSUBSCRIBED):
                records = [c for c in (self._contact(item, list_id, Status.UNSUBSCRIBED, {})
                                       for item in items) if c is not None]
                if records:
                    yield Page(records=records, cursor=None)
        yield Page(records=[], cursor=Cursor(at=started, tie_id="",
                                             data={"unsubscribed": True}))

    def _group_members(self, list_id: str, *, budget: int | None = None
                       ) -> dict[str, set[str]] | None:
        """idRecipient -> group names, from one listing per group (handed on to the bulk
        importer, which prunes from it); None once it would take ``budget`` pages."""
        members: dict[str, set[str]] = {}
        listings: dict[str, dict[str, str | None]] = {}
        pages = 0
        for gid, name in self.directory.groups(list_id, refresh=True).items():
            listing = listings[gid] = {}
            for items in self.api.group_members(gid):
                pages += 1
                if budget is not None and pages >= budget:
                    return None
                for item in items:
                    rid = str(item["idRecipient"])
                    members.setdefault(rid, set()).add(name)
                    listing[str(item.get("Email", "")).lower()] = rid
        for gid, listing in listings.items():
            self.bulk.remember_members(gid, listing)
        return members

    def _contact(self, item: dict[str, Any], list_id: str, status: Status,
                 groups: dict[str, set[str]]) -> Contact | None:
        rid = str(item.get("idRecipient"))
        names = self.settings.field_names()
        fields = {names[int(f["Id"])]: f.get("Value") for f in item.get("Fields") or []
                  if int(f.get("Id", 0)) in names}
        try:
            return Contact(email=str(item.get("Email") or ""), ids={self.name: rid},
                           fields=fields, subscriptions={list_id: Subscription(
                               list_id=list_id, status=status,
                               groups=frozenset(groups.get(rid, ())), source=self.name)})
        except ValueError:
            log.warning("MailUp recipient %s in list %s has no valid email; skipped", rid,
                        list_id)
            return None

    def _read_changes(self, since: Cursor) -> Iterator[Page]:
        start = since.at - timedelta(seconds=self.settings.overlap_s)
        newest = since.at
        for list_id in self.list_ids():
            # The rows changed in the window first, then their groups: one listing per
            # group when that is fewer calls than one lookup per row (after a bulk
            # import, every imported row is in the window).
            rows = [item for items in self.api.optins(list_id) for item in items
                    if self._in_window(item, start)]
            if not rows:
                continue
            groups_of = self._groups_lookup(list_id, len(rows))
            records = []
            for item in rows:
                contact = self._optin_contact(item, list_id, groups_of)
                if contact is None:
                    continue
                records.append(contact)
                changed = contact.subscriptions[list_id].changed_at
                if changed is not None and changed > newest:
                    newest = changed
                if len(records) >= self.settings.page_size:
                    yield Page(records=records, cursor=since)
                    records = []
            if records:
                yield Page(records=records, cursor=since)
        tie = since.tie_id if newest == since.at else ""
        yield Page(records=[], cursor=Cursor(at=newest, tie_id=tie, data={"incremental": True}))

    def _in_window(self, item: dict[str, Any], start: datetime) -> bool:
        dates = [d for d in (self._api_date(item.get(k)) for k in (
            "Optin_Date", "Optout_Date", "Optin_Request_Date")) if d]
        return bool(dates) and max(dates) >= start

    def _groups_lookup(self, list_id: str, rows: int) -> Callable[[str], frozenset[str]]:
        """rid -> group names: from the groups' listings when they take fewer than
        ``rows`` pages (stopped as soon as they would not), else one lookup per rid."""
        members = self._group_members(list_id, budget=rows) if rows > 2 else None
        if members is None:
            return lambda rid: frozenset(self.directory.name(list_id, gid)
                                         for gid in self.api.recipient_groups(list_id, rid))
        return lambda rid: frozenset(members.get(rid, ()))

    def _optin_status(self, item: dict[str, Any], optin: datetime | None,
                      optout: datetime | None, request: datetime | None) -> Status | None:
        """The status of an EmailOptins row. Only ``OPTIN`` is in a public fixture, so
        a row whose opt-out date is its newest is unsubscribed whatever its status text,
        and an unknown text is read from the dates (logged once, counted)."""
        text = str(item.get("Status") or "").strip().upper()
        status = OPTIN_STATUS.get(text)
        newest = max((d for d in (optin, request) if d), default=None)
        if optout is not None and (status is None or newest is None or optout >= newest):
            status = Status.UNSUBSCRIBED
        if text not in OPTIN_STATUS:
            self.unknown_statuses[text] += 1
            if self.unknown_statuses[text] == 1:
                log.warning("MailUp EmailOptins status %r is not one crmsync knows: read "
                            "from the row's dates (opt-out date -> unsubscribed)", text)
        if status is None:
            if optin is not None and (request is None or optin >= request):
                status = Status.SUBSCRIBED
            elif request is not None:
                status = Status.PENDING
        return status

    def _optin_contact(self, item: dict[str, Any], list_id: str,
                       groups_of: Callable[[str], frozenset[str]]) -> Contact | None:
        optin = self._api_date(item.get("Optin_Date"))
        optout = self._api_date(item.get("Optout_Date"))
        request = self._api_date(item.get("Optin_Request_Date"))
        dates = [d for d in (optin, optout, request) if d]
        status = self._optin_status(item, optin, optout, request)
        if status is None:
            return None  # no date says anything (counted in unknown_statuses)
        rid = str(item.get("idRecipient"))
        reason = None
        if status is Status.UNSUBSCRIBED:
            reason = optout_reason(item.get("Optout_Type"), item.get("Optout_Subtype"))
        groups = groups_of(rid)
        try:
            return Contact(email=str(item.get("Email") or ""), ids={self.name: rid},
                           modified_at=max(dates), subscriptions={list_id: Subscription(
                               list_id=list_id, status=status, groups=groups,
                               changed_at=max(dates), reason=reason, source=self.name)})
        except ValueError:
            return None

    def _api_date(self, value: Any) -> datetime | None:
        if not value or not isinstance(value, str):
            return None
        text = value.strip().replace("Z", "")
        for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f",
                    "%Y-%m-%dT%H:%M:%S"):
            try:
                naive = datetime.strptime(text, fmt)
            except ValueError:
                continue
            return naive.replace(tzinfo=ZoneInfo(self.settings.api_timezone)).astimezone(UTC)
        return None

    # -- writing ------------------------------------------------------------------------------
    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        bulk: list[tuple[int, Change]] = []
        single: list[tuple[int, Change]] = []
        for index, change in enumerate(changes):
            (bulk if self._bulkable(change) else single).append((index, change))
        if len(changes) > self.settings.bulk_threshold and bulk:
            results.update(self.bulk.run(bulk))
        else:
            single = sorted(single + bulk)
        if single:
            # Per-recipient writes change memberships behind the importer's kept listings.
            self.bulk.forget_members()
        for index, change in single:
            try:
                results[index] = self._write_one(change)
            except CrmsyncError as exc:
                results[index] = WriteResult(
                    ok=False, record_id=change.ids.get(self.name), error=str(exc),
                    code=getattr(exc, "code", None),
                    retryable=bool(getattr(exc, "retryable", False)))
        return [results[index] for index in range(len(changes))]

    def _bulkable(self, change: Change) -> bool:
        if change.op is Op.DELETE or change.previous_email or not change.subscriptions:
            return False
        # An explicit re-opt-in needs the recipient's current status: per recipient.
        return not (self.settings.resubscribe != "never" and any(
            sub.explicit and sub.status is Status.SUBSCRIBED
            for sub in change.subscriptions.values()))

    def _lookup_lists(self, change: Change) -> list[str]:
        return list(change.subscriptions) or self.list_ids()

    def _write_one(self, change: Change) -> WriteResult:
        rid = change.ids.get(self.name)
        api = self.api
        if change.op is Op.DELETE:
            if rid is None:
                found = api.find(change.email, self.list_ids())
                if found is None:
                    return WriteResult(ok=False, error=f"{change.email} is not in MailUp",
                                       code="404")
                rid = found[0]
            api.delete(rid)
            return WriteResult(ok=True, record_id=rid)
        body = recipient_body(change.email, change.fields, self.settings.field_ids)
        if change.previous_email and rid is None:
            found = api.find(change.previous_email, self._lookup_lists(change))
            rid = found[0] if found else None
        fields_written = False
        if change.previous_email and rid is not None:
            api.update(recipient_body(change.email, change.fields, self.settings.field_ids,
                                      recipient_id=rid))
            fields_written = True
        for list_id, sub in change.subscriptions.items():
            if sub.status is Status.UNSUBSCRIBED:
                target = rid
                if target is None:
                    found = api.find(change.email, [list_id])
                    target = found[0] if found else None
                if target is None:
                    self._import_opt_out(list_id, body)
                    continue
                try:
                    api.unsubscribe(list_id, target)
                except RemoteError as exc:
                    if exc.status != 404:
                        raise
                    self._import_opt_out(list_id, body)  # known, but not on this list
                rid = target
                known: Status | None = Status.UNSUBSCRIBED
                existed = True
            else:
                # Who is this on the list, before writing? Needed for a re-opt-in and for
                # groups (a group add may lift an unsubscribe); for an address new to the
                # list it also saves reading its (empty) group set.
                looked = (self._manages_groups(list_id, sub) or self._reopt_in(sub))
                prior = api.find(body["Email"], [list_id]) if looked else None
                rid, known = self._subscribe(list_id, sub, body, prior)
                existed = not looked or prior is not None
                fields_written = True
            self._sync_groups(list_id, sub, rid, body, known, existed=existed)
        if change.fields and not fields_written:
            if rid is None:
                found = api.find(change.email, self._lookup_lists(change))
                if found is None:
                    return WriteResult(ok=False, error=f"{change.email} is not in MailUp: "
                                       "subscribe it to a list first", code="404")
                rid = found[0]
            api.update(recipient_body(change.email, change.fields, self.settings.field_ids,
                                      recipient_id=rid))
        return WriteResult(ok=True, record_id=rid)

    def _import_opt_out(self, list_id: str, body: dict[str, Any]) -> None:
        # Not found by the (case-sensitive) filter: let MailUp match the address itself
        # with a one-row opt-out import. An address it does not know is recorded as
        # "imported as opt-out", so no later default import can subscribe it.
        import_id = self.api.start_import(f"List/{list_id}/Recipients", [body],
                                          {"importType": "asOptout"})
        self.bulk.wait(import_id)

    def _manages_groups(self, list_id: str, sub: Subscription) -> bool:
        return bool(sub.groups) or self.settings.clears_empty_groups(list_id)

    def _reopt_in(self, sub: Subscription) -> bool:
        return (sub.explicit and sub.status is Status.SUBSCRIBED
                and self.settings.resubscribe != "never")

    def _subscribe(self, list_id: str, sub: Subscription, body: dict[str, Any],
                   found: tuple[str, str, Status | None] | None
                   ) -> tuple[str, Status | None]:
        """Subscribe (or re-opt-in) given what EmailOptins said before (``found``); the
        id and, when known, the status after."""
        if self._reopt_in(sub) and found is not None and found[2] is Status.UNSUBSCRIBED:
            if self.settings.resubscribe == "confirm":
                rid = self.api.subscribe(list_id, body, confirm=True)
                after = self.api.find(body["Email"], [list_id])
                if after is not None and after[2] is Status.UNSUBSCRIBED:
                    # Unsubscribed -> pending needs ConfirmEmail *and* a forced opt-in
                    # (MailUp's import flags table): nothing was sent, nothing changed.
                    raise RemoteError(
                        f"{body['Email']} stays unsubscribed from MailUp list {list_id}: "
                        "MailUp sends no confirmation request to an unsubscribed "
                        "recipient through the API. Set resubscribe = \"force\" to opt "
                        "them in (refused after a bounce or spam complaint) or have them "
                        "subscribe again through a MailUp form", code="RESUBSCRIBE_REFUSED",
                        retryable=False)
                return rid, after[2] if after is not None else None
            rid = self.api.subscribe(list_id, body, confirm=False)
            self.api.force_subscribe(list_id, rid)
            return rid, Status.SUBSCRIBED
        rid = self.api.subscribe(list_id, body, confirm=sub.status is Status.PENDING)
        if found is None:
            return rid, None  # new to the list (or not looked up)
        return rid, found[2]  # the default upsert keeps an existing status

    def _sync_groups(self, list_id: str, sub: Subscription, rid: str | None,
                     body: dict[str, Any], known: Status | None = None, *,
                     existed: bool = True) -> None:
        if rid is None or not self._manages_groups(list_id, sub):
            return
        current = self.api.recipient_groups(list_id, rid) if existed else set()
        if sub.status is Status.UNSUBSCRIBED:
            # Adding to a group subscribes to its list: only removals for an unsubscribe.
            known_groups = self.directory.groups(list_id)
            by_name = {name: gid for gid, name in known_groups.items()}
            wanted = {by_name.get(g, g) for g in sub.groups}
        else:
            wanted = set(self.directory.resolve(list_id, sorted(sub.groups)).values())
            missing = sorted(wanted - current)
            if missing and known is None and existed:
                # The upsert keeps an existing unsubscribe, but a group add ("also
                # subscribes to the list the group belongs to") may lift it: ask first.
                found = self.api.find(body["Email"], [list_id])
                known = found[2] if found is not None else None
            if missing and known is Status.UNSUBSCRIBED:
                log.info("%s is unsubscribed from MailUp list %s: group(s) %s not added",
                         body["Email"], list_id, ", ".join(missing))
                wanted -= set(missing)
                missing = []
            for gid in missing:
                self.api.add_to_group(gid, body)
        for gid in sorted(current - wanted):
            self.api.remove_from_group(gid, rid)

    # -- events ---------------------------------------------------------------------------------
    def decode_event(self, request: InboundRequest) -> list[Change]:
        return self.webhooks.decode(request)

    def event_ack(self, request: InboundRequest) -> tuple[int, str, bytes]:
        # MailUp's own receivers answer 1 (0 for failure).
        return 200, "text/plain", b"1"

    # -- files -----------------------------------------------------------------------------------
    def import_file_name(self, run_id: str) -> str:
        return self.files.import_file_name(run_id)

    def write_import_file(self, out: IO[bytes], changes: Iterable[Change]) -> int:
        return self.files.write_import_file(out, changes)

    def export_file_pattern(self) -> str:
        return self.files.export_file_pattern()

    def read_export_file(self, data: IO[bytes], name: str) -> Iterator[Change | DataError]:
        return self.files.read_export_file(data, name)

    # -- sending and multi-list subscribe ---------------------------------------------------------
    def send(self, message_id: str, *, to: str | None = None, list_id: str | None = None,
             group_id: str | None = None) -> SendResult:
        return self.sender.send(message_id, to=to, list_id=list_id, group_id=group_id)

    def send_transactional(self, message: TransactionalMessage) -> SendResult:
        """One-to-one mail through MailUp's Transactional API (no OAuth)."""
        return self.sender.send_transactional(message)

    def subscribe(self, contact: Contact, lists: Sequence[str], *, groups: Sequence[str] = (),
                  confirm: bool = True) -> list[WriteResult]:
        """Subscribe to each list; ``groups`` are names or ids, ``"<list>:<group>"`` to pin one.

        A plain group is added in every target list that has it; a group found in none
        of them fails every result before anything is written. With ``frontend_url`` set
        it is one ``xmlSubscribe.aspx`` call (no record ids come back); otherwise one
        REST subscribe per list.
        """
        try:
            plan = self._plan_groups(lists, groups)
        except CrmsyncError as exc:
            return [WriteResult(ok=False, error=str(exc), code="404") for _ in lists]
        if self.frontend is not None:
            fields = {self.settings.field_ids[name]: "" if value is None else str(value)
                      for name, value in contact.fields.items()
                      if name in self.settings.field_ids}
            try:
                self.frontend.subscribe(contact.email, lists,
                                        [gid for gids in plan.values() for gid in gids],
                                        fields, confirm=confirm)
                return [WriteResult(ok=True) for _ in lists]
            except DataError:
                pass  # a value the legacy page cannot carry: one REST call per list
            except CrmsyncError as exc:
                return [WriteResult(ok=False, error=str(exc), code=getattr(exc, "code", None),
                                    retryable=bool(getattr(exc, "retryable", False)))
                        for _ in lists]
        body = recipient_body(contact.email, contact.fields, self.settings.field_ids)
        results = []
        for list_id in lists:
            try:
                rid = self.api.subscribe(list_id, body, confirm=confirm)
                gids = plan.get(list_id, [])
                found = self.api.find(body["Email"], [list_id]) if gids else None
                if found is not None and found[2] is Status.UNSUBSCRIBED:
                    # The upsert kept the unsubscribe; a group add could lift it.
                    results.append(WriteResult(
                        ok=False, record_id=rid, code="RESUBSCRIBE_REFUSED", retryable=False,
                        error=f"{contact.email} stays unsubscribed from MailUp list {list_id}"
                              ": no group was added; have them subscribe again through a "
                              "MailUp form"))
                    continue
                for gid in gids:
                    self.api.add_to_group(gid, body)
                results.append(WriteResult(ok=True, record_id=rid))
            except CrmsyncError as exc:
                results.append(WriteResult(ok=False, error=str(exc),
                                           code=getattr(exc, "code", None),
                                           retryable=bool(getattr(exc, "retryable", False))))
        return results

    def _plan_groups(self, lists: Sequence[str], groups: Sequence[str]) -> dict[str, list[str]]:
        plan: dict[str, list[str]] = {}
        missing = []
        for value in groups:
            pinned, sep, group = value.partition(":")
            if sep and pinned in lists:
                plan.setdefault(pinned, []).extend(
                    self.directory.resolve(pinned, [group]).values())
                continue
            hit = False
            for list_id in lists:
                known = self.directory.groups(list_id)
                gid = {n: g for g, n in known.items()}.get(value) or (
                    value if value in known else None)
                if gid:
                    plan.setdefault(list_id, []).append(gid)
                    hit = True
            if not hit:
                missing.append(value)
        if missing:
            raise DataError(f"group(s) {', '.join(missing)} exist in none of lists "
                            f"{', '.join(lists)}: create them or pin them as '<list>:<group>'")
        return plan

    def close(self) -> None:
        if self._owns_http:
            self.http.close()
