"""Reading contacts: VTQL for full reads, ``sync`` for changes, campaign memberships.

A VTQL statement returns at most 100 rows and offsets shift when records change
during a read, so full reads page by key: ``modifiedtime >= <last stamp>`` ordered by
``modifiedtime``, skipping the ids already seen at that stamp. When 100 or more
records share one stamp (a bulk import), that stamp is paged by ``id`` on its own.

``sync`` pages on the first 100 modification stamps after ``modifiedTime`` (so a page
may hold more than 100 records), reports deletions, and, on a stock server, returns
only the records the API user owns. In ``incremental = "auto"`` the other owners'
records are read with VTQL and merged in stamp order, with a warning that says so.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crmsync.model import Contact, Cursor, Page, Rejected, rejected_address

from ._api import VtigerApi, is_denied
from ._settings import VtigerSettings
from ._values import FieldCodec, WsId
from ._vtql import ROW_CAP, literal, select

__all__ = ["ContactReader", "Memberships", "deleted_email"]

log = logging.getLogger("crmsync_vtiger")
PAGE_SIZE = ROW_CAP
# what reading needs whatever the settings ask for
REQUIRED_COLUMNS = ("id", "email", "emailoptout", "modifiedtime", "assigned_user_id")


def deleted_email(ws_id: str) -> str:
    """The stand-in address of a deleted record, whose address vTiger no longer gives.

    ``.invalid`` is reserved (RFC 2606): it can never be a real recipient, and the
    engine matches the record by its id first.
    """
    return f"deleted-{ws_id}@vtiger.invalid"


@dataclass(frozen=True)
class _Item:
    at: datetime
    crmid: int
    ws_id: str
    row: Mapping[str, Any] | None  # None: deleted


class Memberships:
    """Which contacts belong to which campaign (``retrieve_related``, one call each).

    ``query_related`` would filter on the server, but vTiger 8.0.0 breaks it (the
    module is read as ``Contacts;``, a WHERE is rejected), so whole member lists are
    fetched.
    """

    def __init__(self, api: VtigerApi, campaign_ids: list[str]) -> None:
        self.campaign_ids = campaign_ids
        self.members: dict[str, set[int]] = {}
        self.rows: dict[int, Mapping[str, Any]] = {}
        for campaign in campaign_ids:
            rows = api.call("retrieve_related", {"id": campaign, "relatedType": "Contacts",
                                                 "relatedLabel": "Contacts"}) or []
            ids = set()
            for row in rows:
                crmid = WsId.parse(str(row["id"])).crmid
                ids.add(crmid)
                self.rows[crmid] = row
            self.members[campaign] = ids

    def of(self, crmid: int) -> dict[str, str]:
        # vTiger keeps a per-link status (campaignrelstatus) the webservice cannot read
        return {f"campaign:{c}": "" for c, ids in self.members.items() if crmid in ids}

    def snapshot(self) -> dict[str, list[int]]:
        return {c: sorted(ids) for c, ids in self.members.items()}

    def changed_since(self, previous: Mapping[str, Any]) -> set[int]:
        changed: set[int] = set()
        for campaign, ids in self.members.items():
            before = previous.get(campaign)
            if before is None:
                changed |= ids
            else:
                changed |= ids ^ {int(i) for i in before}
        return changed


class ContactReader:
    """Yields pages of contacts for one read; see the module docstring for the how."""

    def __init__(self, api: VtigerApi, codec: Callable[[], FieldCodec],
                 settings: VtigerSettings, name: str,
                 memberships: Callable[[], Memberships]) -> None:
        self.api = api
        self._codec = codec
        self.settings = settings
        self.name = name
        self._memberships = memberships
        self.warned_owner_scope = False
        self.skipped_without_email = 0
        self._rejected: list[Rejected] = []  # of the page being built: invalid addresses
        self._full: tuple[int, int] | None = None  # count before the full read, skips then

    @property
    def codec(self) -> FieldCodec:
        """The Contacts codec, described on first use (building a reader makes no call)."""
        return self._codec()

    # -- entry points -------------------------------------------------------------------
    def full(self) -> Iterator[Page]:
        self._full = (self.count(), self.skipped_without_email)
        members = self._memberships()
        data = self._data(members)
        yield from self._pages(self._scan(None), members, data)

    def since(self, cursor: Cursor) -> Iterator[Page]:
        members = self._memberships()
        data = self._data(members)
        previous = cursor.data.get("members")
        if isinstance(previous, Mapping):
            extra = self._membership_changes(members, previous)
            if extra:
                yield Page(records=extra, cursor=Cursor(at=cursor.at, tie_id=cursor.tie_id,
                                                        data=data))
        stamp = self.codec.format_time(cursor.at)
        # sync returns stamps strictly after modifiedTime; the cursor is inclusive
        epoch = int(cursor.at.timestamp()) - 1
        mode = self.settings.incremental
        if mode == "query":
            stream: Iterator[_Item] = self._scan(stamp)
        elif mode == "sync":
            stream = self._sync(epoch)
        else:
            stream = heapq.merge(self._sync(epoch), self._others(self._scan(stamp)),
                                 key=lambda item: (item.at, item.crmid))
        yield from self._pages(stream, members, data)

    def count(self) -> int:
        """The Contacts the API user can see (VTQL ``count(*)``: ``[{"count": "n"}]``)."""
        rows = self._query("select count(*) from Contacts;")
        return int(rows[0]["count"]) if rows else 0

    def full_read_count(self) -> int | None:
        """After :meth:`full`: the smaller of the counts before and after it, less the
        contacts it skipped for want of an address."""
        if self._full is None:
            return None
        before, skipped = self._full
        return min(before, self.count()) - (self.skipped_without_email - skipped)

    # -- the three sources --------------------------------------------------------------
    def _columns(self) -> str:
        if self.settings.fields is None:
            return "*"
        wanted = dict.fromkeys([*REQUIRED_COLUMNS, *self.settings.fields])
        return ",".join(wanted)

    def _query(self, statement: str) -> list[Mapping[str, Any]]:
        return list(self.api.call("query", {"query": statement}) or [])

    def _scan(self, start: str | None) -> Iterator[_Item]:
        bound, strict, seen = start, False, set[str]()
        while True:
            where = f"modifiedtime {'>' if strict else '>='} {literal(bound)}" if bound else ""
            rows = self._query(select("Contacts", columns=self._columns(), where=where,
                                      order_by="modifiedtime"))
            if len(rows) >= ROW_CAP and rows[0]["modifiedtime"] == rows[-1]["modifiedtime"]:
                stamp = str(rows[0]["modifiedtime"])
                yield from self._drain(stamp, seen if stamp == bound else set())
                bound, strict, seen = stamp, True, set()
                continue
            for row in rows:
                if not strict and row["modifiedtime"] == bound and row["id"] in seen:
                    continue
                yield self._item(row)
            if len(rows) < ROW_CAP:
                return
            last = str(rows[-1]["modifiedtime"])
            bound, strict = last, False
            seen = {str(r["id"]) for r in rows if r["modifiedtime"] == last}

    def _drain(self, stamp: str, skip: set[str]) -> Iterator[_Item]:
        """Every record stamped ``stamp``, paged by id (ties need a stable order)."""
        offset = 0
        while True:
            rows = self._query(select("Contacts", columns=self._columns(),
                                      where=f"modifiedtime = {literal(stamp)}",
                                      order_by="id", offset=offset))
            for row in rows:
                if row["id"] not in skip:
                    yield self._item(row)
            if len(rows) < ROW_CAP:
                return
            offset += ROW_CAP

    def _sync(self, epoch: int) -> Iterator[_Item]:
        # modifiedTime=0 kills vTiger 8.0.0 on PHP 8 (HTTP 500): never below 1
        modified = max(1, epoch)
        while True:
            params = {"modifiedTime": str(modified), "elementType": "Contacts"}
            if self.settings.sync_type:
                params["syncType"] = self.settings.sync_type
            result = self.api.call("sync", params) or {}
            last = int(result.get("lastModifiedTime") or modified)
            items = [self._item(row) for row in result.get("updated") or []]
            at = datetime.fromtimestamp(last, UTC)
            for ws_id in result.get("deleted") or []:
                items.append(_Item(at, WsId.parse(str(ws_id)).crmid, str(ws_id), None))
            yield from sorted(items, key=lambda item: (item.at, item.crmid))
            if not result.get("more") or last <= modified:
                return
            modified = last

    def _others(self, items: Iterator[_Item]) -> Iterator[_Item]:
        """VTQL rows sync does not return: those owned by someone else."""
        me = self.api.session().user_id
        for item in items:
            owner = (item.row or {}).get("assigned_user_id")
            if owner == me:
                continue
            if not self.warned_owner_scope:
                self.warned_owner_scope = True
                log.warning(
                    "vTiger sync returns only the records user %r (%s) owns, but contact %s "
                    "is owned by %s: crmsync reads other owners' contacts with VTQL on "
                    "modifiedtime instead, and cannot see their deletions. If this server's "
                    "sync honours syncType (F-RevoCRM and other patched forks), set "
                    "sync_type = \"application\" and incremental = \"sync\"; to silence this, "
                    "set incremental = \"query\".",
                    self.api.username, me, item.ws_id, owner)
            yield item

    # -- shaping ------------------------------------------------------------------------
    def _item(self, row: Mapping[str, Any]) -> _Item:
        ws_id = str(row["id"])
        return _Item(self.codec.parse_time(str(row["modifiedtime"])), WsId.parse(ws_id).crmid,
                     ws_id, row)

    def _contact(self, item: _Item, members: Memberships) -> Contact | None:
        if item.row is None:
            return Contact(email=deleted_email(item.ws_id), ids={self.name: item.ws_id},
                           modified_at=item.at, deleted=True)
        email = str(item.row.get("email") or "").strip()
        row = item.row
        if self.settings.fields is not None:
            # sync returns whole records: keep the fields a VTQL page would have
            wanted = {*REQUIRED_COLUMNS, *self.settings.fields}
            row = {k: v for k, v in row.items() if k in wanted}
        try:
            return Contact(email=email, ids={self.name: item.ws_id},
                           fields=self.codec.neutral_fields(row),
                           memberships=members.of(item.crmid), modified_at=item.at)
        except ValueError:
            # vTiger does not require an address; a contact without one cannot be mailed
            self.skipped_without_email += 1
            rejected = rejected_address(item.ws_id, email)
            if rejected is not None:  # an address that is no address: reported
                self._rejected.append(rejected)
            log.debug("skipping vTiger contact %s: no usable email (%r)", item.ws_id, email)
            return None

    def _pages(self, items: Iterator[_Item], members: Memberships,
               data: dict[str, Any]) -> Iterator[Page]:
        records: list[Contact] = []
        count = 0
        at: datetime | None = None
        tie = -1
        for item in items:
            if at is None or item.at > at:
                at, tie = item.at, item.crmid
            else:
                tie = max(tie, item.crmid)  # ties arrive in no order: keep the key rising
            contact = self._contact(item, members)
            if contact is not None:
                records.append(contact)
            count += 1
            if count >= PAGE_SIZE:
                rejected, self._rejected = self._rejected, []
                yield Page(records=records, rejected=rejected,
                           cursor=Cursor(at=at, tie_id=f"{tie:012d}", data=data))
                records, count = [], 0
        if count and at is not None:
            rejected, self._rejected = self._rejected, []
            yield Page(records=records, rejected=rejected,
                       cursor=Cursor(at=at, tie_id=f"{tie:012d}", data=data))

    def _data(self, members: Memberships) -> dict[str, Any]:
        return {"members": members.snapshot(), "user": self.api.session().user_id}

    def _membership_changes(self, members: Memberships,
                            previous: Mapping[str, Any]) -> list[Contact]:
        """Contacts that joined or left a campaign: that does not move their modifiedtime."""
        out = []
        for crmid in sorted(members.changed_since(previous)):
            ws_id = f"{self.codec.id_prefix}x{crmid}"
            row = members.rows.get(crmid)
            if row is None:
                try:
                    row = self.api.call("retrieve", {"id": ws_id})
                except Exception as exc:
                    if is_denied(exc):
                        continue  # deleted since: sync reports it
                    raise
            contact = self._contact(self._item(row), members)
            if contact is not None:
                out.append(contact)
        return out
