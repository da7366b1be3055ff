"""The ``sugarcrm`` connector: one package, two API flavours behind one interface."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx

from crmsync.contract import Capabilities, Connector, ConnectorSettings
from crmsync.errors import CrmsyncError
from crmsync.model import (
    Change,
    Contact,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    Rejected,
    WriteResult,
    rejected_address,
)

from .flavour import SugarFlavour
from .hooks import WebLogicHookDecoder
from .legacy import LegacyFlavour
from .records import RecordWrite, SugarRecord, in_key_order
from .rest import RestFlavour
from .settings import SugarSettings

__all__ = ["FLAVOURS", "SugarConnector"]

log = logging.getLogger(__name__)

FLAVOURS: dict[str, type[SugarFlavour]] = {"rest": RestFlavour, "v4_1": LegacyFlavour}
OPT_OUT = "email_opt_out"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_Item = tuple[tuple[datetime, str], SugarRecord, datetime | None]


@dataclass
class _FullRead:
    """What a full read saw, for :meth:`SugarConnector.full_read_count`."""

    before: int | None = None
    skipped: set[str] = field(default_factory=set)


class SugarConnector(Connector):
    """SugarCRM (REST v10/v11) or SugarCRM CE / SuiteCRM (legacy REST v4_1).

    Contacts carry ``fields`` (the configured vendor fields plus ``email_opt_out``,
    "true"/"false", the flag of the primary address) and ``memberships``
    (``{"target_list:<id>": ""}``). Incremental reads also follow EmailAddresses
    changes, because an opt-out flipped on an address does not move the records'
    ``date_modified``.
    """

    name: ClassVar[str] = "sugarcrm"
    Settings: ClassVar[type[ConnectorSettings]] = SugarSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", full_read=True, incremental_read=True, write=True, bulk_write=True,
        deletes=True, push_events=True, polling=True, lists=True, groups=True,
    )

    settings: SugarSettings

    def __init__(self, settings: ConnectorSettings, *, http: httpx.Client | None = None) -> None:
        super().__init__(settings, http=http)
        self._owns_http = http is None
        if http is None:
            http = self.settings.http_client(base_url="")
        self._http = http
        self.flavour: SugarFlavour = FLAVOURS[self.settings.flavour](self.settings, http)
        self._hooks = WebLogicHookDecoder(self.name, self.settings, self._fetch)
        self._full_read: _FullRead | None = None

    # -- contract ----------------------------------------------------------------------
    def check(self) -> Health:
        """Log in, then make the reads a sync makes: a diff read with a recent cursor
        (records, address changes, the mapped target lists' members) and a lookup by
        address (what a write-back does first). A server that refuses any of them fails
        the check, as it would fail every sync."""
        started = time.monotonic()
        try:
            detail = self.flavour.check()
            since = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
            first = next(iter(self.read(Cursor(at=since))), None)
            for module in self.settings.modules:
                self.flavour.find(module, emails=["crmsync-check@example.invalid"])
        except (CrmsyncError, httpx.HTTPError) as exc:
            return Health(ok=False, detail=str(exc))
        read = len(first.records) if first is not None else 0
        return Health(ok=True, latency_ms=(time.monotonic() - started) * 1000,
                      detail=f"{detail}; a diff read since {since:%Y-%m-%d %H:%M} UTC "
                             f"({read} record(s) on its first page) and a lookup by address "
                             "work")

    def lists(self) -> list[MailingList]:
        return [MailingList(id=f"target_list:{list_id}", name=name)
                for list_id, name in self.flavour.target_lists()]

    def read(self, since: Cursor | None) -> Iterator[Page]:
        members = self._members()
        memberships: dict[str, dict[str, str]] = {}
        for list_id, ids in members.items():
            for record_id in ids:
                memberships.setdefault(record_id, {})[f"target_list:{list_id}"] = ""
        # The cursor carries who is in each target list: a link added or removed does
        # not move a record's date_modified, so the next read compares the lists.
        data = {"members": {list_id: sorted(ids) for list_id, ids in members.items()}}
        # Sugar stamps are whole seconds: start at the cursor's second, inclusive.
        start = since.at.replace(microsecond=0) if since is not None else None
        streams: list[Iterator[_Item]] = [self._records(module, start)
                                          for module in self.settings.modules]
        if start is not None and since is not None:
            streams.append(self._address_fanout(start))
            previous = since.data.get("members")
            if isinstance(previous, dict):
                streams.append(self._membership_changes(members, previous, start))
        full = self._full_read = _FullRead() if since is None else None
        if full is not None:
            full.before = self._count()
        page: list[Contact] = []
        rejected: list[Rejected] = []  # of this page: addresses that are no address
        last: tuple[datetime, str] | None = None
        for key, record, stamp in heapq.merge(*streams, key=lambda item: item[0]):
            if key == last:
                continue  # a record changed itself and its address in the same second
            contact = record.to_contact(self.name, memberships.get(record.id, {}),
                                        modified_at=stamp)
            if contact is None:
                # Nothing to sync without an address; a deletion we cannot tie to one is
                # logged as a warning so that someone can act on it.
                (log.warning if record.deleted else log.debug)(
                    "%s %s %s has no usable email address: skipped", record.module,
                    "deleted record" if record.deleted else "record", record.id)
                if full is not None and not record.deleted:
                    full.skipped.add(record.id)
                primary = record.primary()
                invalid = None if record.deleted or primary is None else rejected_address(
                    record.id, primary.email)
                if invalid is not None:
                    rejected.append(invalid)
                continue
            page.append(contact)
            last = key
            if len(page) >= self.settings.page_size:
                yield Page(records=page, rejected=rejected,
                           cursor=Cursor(at=key[0], tie_id=key[1], data=data))
                page, rejected = [], []
        if (page or rejected) and last is not None:
            yield Page(records=page, rejected=rejected,
                       cursor=Cursor(at=last[0], tie_id=last[1], data=data))
        elif rejected:
            yield Page(records=[], rejected=rejected)

    def full_read_count(self) -> int | None:
        """After a full read: the live records it should have yielded, by Sugar's count.

        The smaller of the counts taken before and after the read (records created or
        deleted meanwhile), less the live records skipped for want of an address.
        """
        full = self._full_read
        if full is None or full.before is None:
            return None
        after = self._count()
        if after is None:
            return None
        return min(full.before, after) - len(full.skipped)

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        size = self.settings.batch_size
        for start in range(0, len(changes), size):
            chunk = list(enumerate(changes[start:start + size], start=start))
            results.update(self._write_chunk(chunk))
            conflicts = [(i, c) for i, c in chunk if results[i].code == "edit_conflict"]
            if conflicts:
                # The record changed between our read and our write: read it again and
                # apply once more, so the address set we send is the current one.
                results.update(self._write_chunk(conflicts))
        return [results[index] for index in range(len(changes))]

    def decode_event(self, request: InboundRequest) -> list[Change]:
        return self._hooks.decode(request)

    def close(self) -> None:
        try:
            self.flavour.close()
        finally:
            if self._owns_http and self._http is not None:
                self._http.close()

    # -- reading -----------------------------------------------------------------------
    def _members(self) -> dict[str, set[str]]:
        """Who is in each target list read (the configured ones, else all)."""
        lists = self.settings.target_lists
        if lists is None:
            lists = [list_id for list_id, _ in self.flavour.target_lists()]
        return {list_id: {record_id for module in self.settings.modules
                          for record_id in self.flavour.list_members(list_id, module)}
                for list_id in lists}

    def members(self, key: str) -> set[str] | None:
        """The people in target list ``target_list:<id>`` now (a link removed from a
        target list does not touch the person's record: the engine reconciles with this)."""
        kind, _, list_id = key.partition(":")
        if kind != "target_list" or not list_id:
            return None
        return {record_id for module in self.settings.modules
                for record_id in self.flavour.list_members(list_id, module)}

    def _count(self) -> int | None:
        counts = [self.flavour.count(module) for module in self.settings.modules]
        return None if any(n is None for n in counts) else sum(n or 0 for n in counts)

    def _records(self, module: str, start: datetime | None) -> Iterator[_Item]:
        for page in self.flavour.scan(module, start):
            for record in page:
                yield record.key(), record, None

    def _address_fanout(self, start: datetime) -> Iterator[_Item]:
        """Records whose address changed (opt-out flipped) since ``start``.

        The change is shared by every record with the address, and it does not touch
        their ``date_modified``: each becomes a change at the address's stamp.
        """
        def items() -> Iterator[tuple[tuple[datetime, str], SugarRecord]]:
            for page in self.flavour.address_changes(start):
                stamps: dict[str, datetime] = {}
                for row in page:
                    if row.email:
                        stamps[row.email.lower()] = row.date_modified
                emails = sorted(stamps)
                found: list[tuple[tuple[datetime, str], SugarRecord]] = []
                for module in self.settings.modules:
                    for record in self.flavour.find(module, emails=emails):
                        hits = [stamps[a.email.lower()] for a in record.addresses
                                if a.email.lower() in stamps]
                        if hits:
                            found.append(((max(hits), record.id), record))
                yield from sorted(found, key=lambda pair: pair[0])

        for key, record in in_key_order(items()):
            yield key, record, key[0]

    def _membership_changes(self, members: dict[str, set[str]], previous: dict[str, Any],
                            start: datetime) -> Iterator[_Item]:
        """Records that joined or left a target list since the cursor's read.

        SuiteCRM refuses a query on the link table (prospect_lists_prospects), and a
        link does not move the record's date_modified: the member lists are compared
        with the ones the cursor carries. A list the cursor does not know is new to the
        read: each of its members is a change. The link's own stamp is not known, so
        these records sort at the start of the read.
        """
        changed: set[str] = set()
        for list_id, ids in members.items():
            before = previous.get(list_id)
            changed |= ids ^ {str(i) for i in before} if isinstance(before, list) else ids
        if not changed:
            return
        wanted = sorted(changed)
        found = {record.id: record for module in self.settings.modules
                 for start_at in range(0, len(wanted), self.settings.batch_size)
                 for record in self.flavour.find(
                     module, ids=wanted[start_at:start_at + self.settings.batch_size])}
        for record_id in sorted(found):
            yield (start, record_id), found[record_id], None

    def _fetch(self, module: str, record_id: str) -> SugarRecord | None:
        found = self.flavour.find(module, ids=[record_id])
        return found[0] if found else None

    # -- writing -----------------------------------------------------------------------
    def _resolve(self, changes: list[tuple[int, Change]]) -> dict[str, SugarRecord]:
        ids = sorted({c.ids[self.name] for _, c in changes if c.ids.get(self.name)})
        emails = sorted({e for _, c in changes for e in (c.email, c.previous_email) if e})
        index: dict[str, SugarRecord] = {}
        for module in reversed(self.settings.modules):  # earlier modules win on email
            for record in self.flavour.find(module, ids=ids, emails=emails):
                index[f"id:{record.id}"] = record
                for address in record.addresses:
                    index[f"email:{address.email.lower()}"] = record
        return index

    def _write_chunk(self, chunk: list[tuple[int, Change]]) -> dict[int, WriteResult]:
        results: dict[int, WriteResult] = {}
        try:
            index = self._resolve(chunk)
        except CrmsyncError as exc:
            return {i: _failed(exc) for i, _ in chunk}
        writes: list[RecordWrite] = []
        later: list[tuple[int, Change]] = []
        touched: set[str] = set()
        for position, change in chunk:
            planned = self._plan(position, change, index)
            if isinstance(planned, WriteResult):
                results[position] = planned
                continue
            # A second change to the same record waits for the first: it must be planned
            # from the record as the first left it (its address set, or its very id).
            key = planned.record.id if planned.record else f"new:{planned.email}"
            if key in touched:
                later.append((position, change))
                continue
            touched.add(key)
            writes.append(planned)
        if writes:
            try:
                results.update(self.flavour.apply(writes))
            except CrmsyncError as exc:
                results.update({w.index: _failed(exc) for w in writes})
        if later:
            results.update(self._write_chunk(later))
        return results

    def _plan(self, position: int, change: Change, index: dict[str, SugarRecord]
              ) -> RecordWrite | WriteResult:
        record_id = change.ids.get(self.name)
        record = (index.get(f"id:{record_id}") if record_id else None) \
            or (index.get(f"email:{change.previous_email}") if change.previous_email else None) \
            or index.get(f"email:{change.email}")
        if change.op == Op.DELETE:
            if record is None:
                return WriteResult(ok=False, error="no such record: nothing to delete",
                                   code="not_found")
            return RecordWrite(index=position, module=record.module, record=record,
                               email=change.email, delete=True)
        fields: dict[str, str | None] = dict(change.fields)
        opt_out: bool | None = None
        if OPT_OUT in fields:
            raw = (fields.pop(OPT_OUT) or "").strip().lower()
            if raw not in _TRUE | _FALSE:
                return WriteResult(ok=False, code="invalid_parameter",
                                   error=f"{OPT_OUT} must be true or false, got {raw!r}")
            opt_out = raw in _TRUE
        links: dict[str, bool] = {}
        for key, value in change.memberships.items():
            kind, _, list_id = key.partition(":")
            if kind != "target_list" or not list_id:
                return WriteResult(ok=False, code="unsupported_membership",
                                   error=f"{key!r}: Sugar memberships are target_list:<id>")
            links[list_id] = value is not None
        module = record.module if record is not None else self.settings.create_module
        return RecordWrite(index=position, module=module, record=record, email=change.email,
                           previous_email=change.previous_email, fields=fields,
                           opt_out=opt_out, links=links)


def _failed(exc: CrmsyncError) -> WriteResult:
    code = getattr(exc, "code", None)
    return WriteResult(ok=False, error=str(exc), code=str(code) if code else "error",
                       retryable=bool(getattr(exc, "retryable", False)))


