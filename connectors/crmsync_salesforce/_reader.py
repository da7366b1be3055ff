"""Reading Contacts and Leads in ``(SystemModstamp, Id)`` order, as Pages with cursors.

A full read merges one stream per object (REST query, or a Bulk 2.0 query job when
the object holds more than ``bulk_read_threshold`` records). An incremental read uses
``queryAll`` (deleted rows included) from the cursor minus the overlap window, and
merges in a third stream: CampaignMember rows changed since then, each turned into its
person's current record, so a campaign status change moves the contact. When Get
Deleted says the recycle bin no longer reaches back to the cursor, the read is a
full resync instead (its cursors carry ``data={"resync": True}``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from simple_salesforce.format import format_soql

from crmsync.errors import RemoteError
from crmsync.model import Contact, Cursor, Page, Rejected, normalize_email, rejected_address

from ._bulk import bulk_query
from ._rest import SalesforceApi

__all__ = ["Reader", "parse_stamp", "text_value"]

log = logging.getLogger(__name__)
_MEMBER_FIELDS = "Id, CampaignId, ContactId, LeadId, Status, SystemModstamp, IsDeleted"
_PERSON_PREFIX = {"003": "Contact", "00Q": "Lead"}
_IN_CHUNK = 200  # ids per "Id IN (...)": keeps the GET URL well under its limit
_DELETED_PROBE = timedelta(minutes=2)  # Get Deleted wants more than one minute
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_stamp(value: str) -> datetime:
    """``2024-01-05T10:00:00.000+0000`` (REST) or ``...Z`` (Bulk CSV) as aware UTC."""
    text = value.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text).astimezone(UTC)


def text_value(value: Any) -> str | None:
    """A field value as the engine wants it: strings, "true"/"false", ISO-8601 UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if len(text) >= 20 and text[4] == "-" and text[10] == "T" and text[13] == ":":
        try:
            return parse_stamp(text).isoformat(timespec="milliseconds")
        except ValueError:
            return text
    return text


@dataclass(order=True)
class _Item:
    key: tuple[datetime, str]
    obj: str = field(compare=False)
    row: dict[str, Any] = field(compare=False)
    memberships: dict[str, str] | None = field(compare=False, default=None)
    person_id: str | None = field(compare=False, default=None)  # set for CampaignMember rows
    merged_from: str | None = field(compare=False, default=None)  # a merge loser's own id


class Reader:
    def __init__(self, api: SalesforceApi, name: str) -> None:
        self.api = api
        self.settings = api.settings
        self.name = name
        self.skipped_without_email = 0  # records read that have no usable address
        self._rejected: list[Rejected] = []  # of the page being built: invalid addresses
        self._full: tuple[int, int] | None = None  # the last full read: count, skipped

    # -- SOQL ----------------------------------------------------------------------------
    def _fields(self, obj: str) -> list[str]:
        names = ["Id", "Email", "SystemModstamp", "IsDeleted", "MasterRecordId",
                 *self.settings.fields]
        if obj == "Lead":
            names += ["IsConverted", "ConvertedContactId"]
        return list(dict.fromkeys(names))

    def _soql(self, obj: str, since: datetime | None, *, children: bool,
              ids: Iterable[str] = (), ordered: bool = True) -> str:
        select = ", ".join(self._fields(obj))
        if children and self.settings.memberships:
            select += ", (SELECT CampaignId, Status FROM CampaignMembers)"
        ids = list(ids)
        if ids:
            return format_soql(f"SELECT {select} FROM {obj} WHERE Id IN {{}}", ids)
        where = format_soql(" WHERE SystemModstamp >= {}", since) if since else ""
        order = " ORDER BY SystemModstamp, Id" if ordered else ""
        return f"SELECT {select} FROM {obj}{where}{order}"

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple[datetime, str]:
        return parse_stamp(str(row["SystemModstamp"])), str(row["Id"])

    # -- streams -------------------------------------------------------------------------
    def _memberships(self, row: dict[str, Any]) -> dict[str, str]:
        related = row.get("CampaignMembers")
        out: dict[str, str] = {}
        while related:
            for member in related.get("records", []):
                out[f"campaign:{member['CampaignId']}"] = str(member.get("Status") or "")
            following = related.get("nextRecordsUrl")
            related = self.api.json("GET", following) if following and not related.get(
                "done", True) else None
        return out

    def _rest_stream(self, obj: str, since: datetime | None, *, all_rows: bool
                     ) -> Iterator[_Item]:
        def soql(last: tuple[datetime, str] | None) -> str:
            return self._soql(obj, last[0] if last else since, children=True)

        for row in self.api.query_resumable(soql, self._key, all_rows=all_rows):
            yield self._item(obj, row, self._memberships(row))

    def _item(self, obj: str, row: dict[str, Any], memberships: dict[str, str]) -> _Item:
        master = row.get("MasterRecordId")
        if master and text_value(row.get("IsDeleted")) == "true":
            # A merge loser (queryAll: deleted, MasterRecordId set) is no deletion: the
            # person lives on as the master record, read in its place.
            return _Item(self._key(row), obj, row, person_id=str(master),
                         merged_from=str(row["Id"]))
        return _Item(self._key(row), obj, row, memberships)

    def _bulk_stream(self, obj: str, members: dict[str, dict[str, str]]) -> Iterator[_Item]:
        # No ORDER BY: in a Bulk 2.0 query it disables PK chunking, and exactly the large
        # objects read this way would time out. The rows come in no particular order.
        for row in bulk_query(self.api, self._soql(obj, None, children=False, ordered=False)):
            yield self._item(obj, row, members.get(row["Id"], {}))

    def _bulk_members(self) -> dict[str, dict[str, str]]:
        # Ids and statuses only (the contact CSV itself is streamed, not held).
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for row in bulk_query(self.api, "SELECT ContactId, LeadId, CampaignId, Status "
                                        "FROM CampaignMember"):
            for person in (row.get("ContactId"), row.get("LeadId")):
                if person:
                    out[person][f"campaign:{row['CampaignId']}"] = row.get("Status") or ""
        return out

    def _member_stream(self, since: datetime) -> Iterator[_Item]:
        def soql(last: tuple[datetime, str] | None) -> str:
            at = last[0] if last else since
            return (f"SELECT {_MEMBER_FIELDS} FROM CampaignMember"
                    + format_soql(" WHERE SystemModstamp >= {}", at)
                    + " ORDER BY SystemModstamp, Id")

        for row in self.api.query_resumable(soql, self._key, all_rows=True):
            person = row.get("ContactId") or row.get("LeadId")
            if person and _PERSON_PREFIX.get(str(person)[:3]) in self.settings.objects:
                yield _Item(self._key(row), "CampaignMember", row, person_id=str(person))

    # -- pages ---------------------------------------------------------------------------
    def _contact(self, item: _Item, modified: datetime | None = None,
                 previous: str | None = None) -> Contact | None:
        row = item.row
        try:
            email = normalize_email(str(row.get("Email") or ""))
        except ValueError:
            self.skipped_without_email += 1
            rejected = rejected_address(str(row["Id"]), str(row.get("Email") or ""))
            if rejected is not None:  # an address that is no address: reported
                self._rejected.append(rejected)
            return None  # a record without a usable address cannot be synced to an ESP
        ids = {self.name: str(row["Id"])}
        converted = row.get("ConvertedContactId")
        if item.obj == "Lead" and text_value(row.get("IsConverted")) == "true" and converted:
            # A converted Lead lives on as its Contact: same subscriptions, new id; the
            # Lead id is kept as the previous id so the id map can follow the person.
            ids = {self.name: str(converted), f"{self.name}:previous": str(row["Id"])}
        elif previous is not None:
            # A merge loser re-points its identity to the master the same way.
            ids = {self.name: str(row["Id"]), f"{self.name}:previous": previous}
        return Contact(
            email=email, ids=ids,
            fields={name: text_value(row.get(name)) for name in self.settings.fields
                    if name in row},
            memberships=item.memberships or {}, modified_at=modified or item.key[0],
            deleted=text_value(row.get("IsDeleted")) == "true")

    def _people(self, ids: set[str]) -> dict[str, _Item]:
        found: dict[str, _Item] = {}
        for prefix, obj in _PERSON_PREFIX.items():
            wanted = sorted(i for i in ids if i.startswith(prefix))
            for start in range(0, len(wanted), _IN_CHUNK):
                soql = self._soql(obj, None, children=True, ids=wanted[start:start + _IN_CHUNK])
                for row in self.api.query(soql):
                    found[str(row["Id"])] = _Item(self._key(row), obj, row,
                                                  self._memberships(row))
        return found

    def _page(self, batch: list[_Item], resync: bool) -> Page:
        own = {str(i.row["Id"]): i for i in batch if i.person_id is None}
        in_batch = set(own)
        people = self._people({i.person_id for i in batch if i.person_id} - in_batch)
        records: list[Contact] = []
        emitted: set[str] = set()
        for item in batch:
            if item.person_id is None:
                contact = self._contact(item)
            elif item.merged_from is not None:
                master = own.get(item.person_id) or people.get(item.person_id)
                if master is None:
                    continue  # the master is gone too: its own row reports that
                contact = self._contact(master, max(master.key[0], item.key[0]),
                                        previous=item.merged_from)
            elif item.person_id in in_batch or item.person_id in emitted:
                continue
            else:
                person = people.get(item.person_id)
                if person is None:
                    continue  # deleted: its own queryAll row reports that
                emitted.add(item.person_id)
                contact = self._contact(person, max(person.key[0], item.key[0]))
            if contact is not None:
                records.append(contact)
        last = batch[-1].key
        rejected, self._rejected = self._rejected, []
        return Page(records=records, rejected=rejected, cursor=Cursor(
            at=last[0], tie_id=last[1], data={"resync": True} if resync else {}))

    def _pages(self, items: Iterator[_Item], resync: bool = False,
               unordered_since: datetime | None = None) -> Iterator[Page]:
        """Pages of ``query_batch_size`` items. With ``unordered_since`` (a Bulk stream is
        in no particular order) no page but the last may advance the cursor: they carry
        1970 (resuming there is a resync), the last one the read's start minus the
        overlap."""
        batch: list[_Item] = []
        number = 0

        def page(items: list[_Item], last: bool) -> Page:
            done = self._page(items, resync) if items else Page(records=[])
            if unordered_since is None:
                return done
            at = unordered_since - timedelta(seconds=self.settings.overlap_s)
            return Page(records=done.records, rejected=done.rejected, cursor=Cursor(
                at=at if last else _EPOCH, tie_id="" if last else f"{number:08d}",
                data={"resync": True} if resync else {}))

        for item in items:
            batch.append(item)
            if len(batch) >= self.settings.query_batch_size:
                number += 1
                yield page(batch, False)
                batch = []
        if batch or unordered_since is not None:
            number += 1
            yield page(batch, True)  # unordered: possibly empty, to carry the final cursor

    # -- entry points --------------------------------------------------------------------
    def _count(self, soql: str) -> int:
        return int(self.api.json("GET", "query/", params={"q": soql}).get("totalSize", 0))

    def people_count(self, counts: dict[str, int] | None = None) -> int:
        """How many distinct people a full read yields: every record of the objects read,
        less the converted Leads when Contacts are read too (a converted Lead is read as
        its Contact: one person)."""
        counts = counts or {obj: self._count(f"SELECT COUNT() FROM {obj}")
                            for obj in self.settings.objects}
        total = sum(counts.values())
        if "Lead" in counts and "Contact" in counts:
            total -= self._count("SELECT COUNT() FROM Lead WHERE IsConverted = true")
        return total

    def full_read_count(self) -> int | None:
        """After :meth:`full`: the smaller of the counts before and after it, less the
        records it skipped for want of an address."""
        if self._full is None:
            return None
        before, skipped = self._full
        return min(before, self.people_count()) - (self.skipped_without_email - skipped)

    def members(self, key: str) -> list[str] | None:
        """The people in campaign ``campaign:<id>`` now (a removed CampaignMember skips
        the recycle bin, so no read shows its removal: the engine reconciles with this)."""
        kind, _, campaign = key.partition(":")
        if kind != "campaign" or not campaign:
            return None
        soql = format_soql("SELECT ContactId, LeadId FROM CampaignMember WHERE CampaignId = {}",
                           campaign)
        found: list[str] = []
        for row in self.api.query(soql):
            # both: a member row of a converted Lead carries the Lead and its Contact
            found.extend(str(row[name]) for name in ("ContactId", "LeadId") if row.get(name))
        # a converted Lead is read as its Contact: its membership is the Contact's
        converted = [p for p in found if p.startswith("00Q")]
        for start in range(0, len(converted), _IN_CHUNK):
            chunk = converted[start:start + _IN_CHUNK]
            for row in self.api.query(format_soql(
                    "SELECT ConvertedContactId FROM Lead WHERE Id IN {} AND IsConverted = true",
                    chunk)):
                if row.get("ConvertedContactId"):
                    found.append(str(row["ConvertedContactId"]))
        return found

    def full(self, *, resync: bool = False) -> Iterator[Page]:
        started = datetime.now(UTC)
        streams: list[Iterator[_Item]] = []
        unordered: list[Iterator[_Item]] = []
        members: dict[str, dict[str, str]] | None = None
        counts: dict[str, int] = {}
        for obj in self.settings.objects:
            counts[obj] = self._count(f"SELECT COUNT() FROM {obj}")
        self._full = (self.people_count(counts), self.skipped_without_email)
        for obj in self.settings.objects:
            if counts[obj] > self.settings.bulk_read_threshold:
                if members is None:
                    members = self._bulk_members() if self.settings.memberships else {}
                unordered.append(self._bulk_stream(obj, members))
            else:
                streams.append(self._rest_stream(obj, None, all_rows=False))
        if not unordered:
            yield from self._pages(heapq.merge(*streams), resync)
            return
        yield from self._pages(itertools.chain(heapq.merge(*streams), *unordered), resync,
                               unordered_since=started)

    def window_missed(self, start: datetime) -> bool:
        """True when deleted records since ``start`` may have left the recycle bin."""
        now = datetime.now(UTC)
        if now - start < timedelta(seconds=max(60.0, self.settings.deleted_check_after_s)):
            # Get Deleted needs more than a minute; a recent cursor (a short poll) cannot
            # have outlived the recycle bin, so the calls are saved.
            return False
        # Only earliestDateAvailable is wanted, so the window is the shortest Get Deleted
        # takes (over a minute): a window to now could hold more than 600,000 ids and be
        # refused with EXCEEDED_ID_LIMIT on every later read.
        end = min(now, start + _DELETED_PROBE)
        for obj in self.settings.objects:
            try:
                body = self.api.json("GET", f"sobjects/{obj}/deleted/", params={
                    "start": start.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    "end": end.strftime("%Y-%m-%dT%H:%M:%S+00:00")})
            except RemoteError as exc:
                if exc.code == "INVALID_REPLICATION_DATE":
                    return True  # older than the API will answer for
                if exc.code == "EXCEEDED_ID_LIMIT":
                    log.warning("Get Deleted refused even a two-minute window of %s "
                                "(EXCEEDED_ID_LIMIT): reading everything again", obj)
                    return True  # cannot tell: the safe answer is a resync
                raise
            earliest = body.get("earliestDateAvailable")
            if earliest and parse_stamp(earliest) > start:
                return True
        return False

    def read(self, since: Cursor | None) -> Iterator[Page]:
        if since is None:
            yield from self.full()
            return
        start = since.at - timedelta(seconds=self.settings.overlap_s)
        if self.settings.check_deleted_window and self.window_missed(start):
            log.warning("deleted records since %s are no longer in the Salesforce recycle "
                        "bin: reading everything again (resync)", start.isoformat())
            yield from self.full(resync=True)
            return
        streams = [self._rest_stream(obj, start, all_rows=True) for obj in self.settings.objects]
        if self.settings.memberships:
            streams.append(self._member_stream(start))
        # SOQL datetime literals stop at the second; drop what the cursor already covers.
        yield from self._pages(i for i in heapq.merge(*streams) if i.key[0] >= start)
