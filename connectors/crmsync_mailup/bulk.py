"""MailUp's asynchronous import, for change sets above ``bulk_threshold``.

Rows go to ``POST /List/{id}/Recipients`` (one import per list and target status:
plain, ``ConfirmEmail=true`` for pending, ``importType=asOptout`` for unsubscribes),
then, once those are completed, group memberships to ``POST /Group/{id}/Recipients``;
the imports of a phase are polled together at ``GET /Import/{idImport}`` until each is
``Completed``, first after 0.1 s, then twice as long each round up to ``import_poll_s``.
The confirmation request of a ``ConfirmEmail`` import is queued, not sent, by MailUp: it
is sent with ``GET /Import/{id}/Sending`` and ``POST /Email/Sendings/{id}/Immediate``.
Memberships outside a recipient's desired group set are then removed one by one (an
import cannot remove them); which memberships exist is listed once per group and kept,
with this importer's own adds and removals, for ``MEMBERS_TTL_S`` (a run writes its
changes in many batches: re-listing every group after each would cost N² pages). A
default import never changes an existing status, so it cannot lift an unsubscribe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from crmsync.errors import CrmsyncError, RemoteError
from crmsync.model import Change, Status, WriteResult

from .recipients import GroupDirectory, RecipientApi, recipient_body
from .settings import MailUpSettings

__all__ = ["BulkImporter"]

CHUNK = 5000  # rows per import call; MailUp documents no maximum
FIRST_POLL_S = 0.1  # the first wait before polling again; doubled up to import_poll_s
MEMBERS_TTL_S = 600.0  # how long a group's listed members are trusted without re-listing
_PARAMS = {Status.SUBSCRIBED: {}, Status.PENDING: {"ConfirmEmail": "true"},
           Status.UNSUBSCRIBED: {"importType": "asOptout"}}


class BulkImporter:
    """Runs a set of changes as MailUp imports; one :class:`WriteResult` per change."""

    def __init__(self, settings: MailUpSettings, api: RecipientApi, groups: GroupDirectory,
                 *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.api = api
        self.groups = groups
        self._sleep = sleep
        self._clock = clock
        #: group id -> (listed at, lowercased email -> idRecipient or None if unknown)
        self._members: dict[str, tuple[float, dict[str, str | None]]] = {}
        self._pages_taken = 0

    def run(self, items: Sequence[tuple[int, Change]]) -> dict[int, WriteResult]:
        failures: dict[int, WriteResult] = {}
        batches: dict[tuple[str, Status], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        members: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        desired: dict[str, dict[str, tuple[int, set[str]]]] = defaultdict(dict)
        for index, change in items:
            body = recipient_body(change.email, change.fields, self.settings.field_ids)
            for list_id, sub in change.subscriptions.items():
                batches[(list_id, sub.status)].append((index, body))
                if not sub.groups and not self.settings.clears_empty_groups(list_id):
                    continue
                try:
                    if sub.status is Status.UNSUBSCRIBED:
                        # Adding to a group subscribes to its list: only removals here.
                        known = {n: g for g, n in self.groups.groups(list_id).items()}
                        wanted = {known.get(g, g) for g in sub.groups}
                    else:
                        wanted = set(self.groups.resolve(list_id, sorted(sub.groups)).values())
                except CrmsyncError as exc:
                    failures[index] = _failed(exc)
                    continue
                desired[list_id][change.email] = (index, wanted)
                if sub.status is not Status.UNSUBSCRIBED:
                    for gid in sorted(wanted):
                        members[(list_id, gid)].append((index, body))
        # List imports first and to the end: a group import adds to the group's list
        # too, so run before the ConfirmEmail import it would subscribe a new address
        # without the confirmation request.
        started: list[tuple[str, list[int]]] = []
        confirming: set[str] = set()
        for (list_id, status), rows in batches.items():
            before = len(started)
            self._start(f"List/{list_id}/Recipients", rows, _PARAMS[status], started, failures)
            if status is Status.PENDING:
                confirming.update(import_id for import_id, _ in started[before:])
        self._finish(started, failures, confirming)
        started = []
        for (_, gid), rows in members.items():
            self._start(f"Group/{gid}/Recipients", rows, {}, started, failures)
        self._finish(started, failures, set())
        for (_, gid), rows in members.items():
            cached = self._members.get(gid)
            if cached is not None:  # keep a listing taken by an earlier batch current
                for index, body in rows:
                    if index not in failures:
                        cached[1].setdefault(str(body["Email"]).lower(), None)
        for list_id, targets in desired.items():
            self._prune(list_id, targets, failures)
        return {index: failures.get(index, WriteResult(ok=True)) for index, _ in items}

    def _finish(self, started: list[tuple[str, list[int]]], failures: dict[int, WriteResult],
                confirming: set[str]) -> None:
        """Wait for every import together; send the confirmation request of each
        ConfirmEmail one as soon as it completes.

        MailUp queues that mail without sending it ("a confirmation request email is
        queued but not automatically sent"): ``GET /Import/{id}/Sending`` names the
        sending, ``POST /Email/Sendings/{id}/Immediate`` sends it.
        """
        def failed(indices: list[int], exc: CrmsyncError) -> None:
            for index in indices:
                failures.setdefault(index, _failed(exc))

        def done(import_id: str, indices: list[int]) -> None:
            if import_id in confirming:
                try:
                    self.send_confirmation(import_id)
                except CrmsyncError as exc:
                    failed(indices, exc)

        for import_id, indices, error in self.wait_all(started):
            if error is None:
                done(import_id, indices)
            else:
                failed(indices, error)

    def send_confirmation(self, import_id: str) -> None:
        sending = self.api.import_sending(import_id)
        if sending is not None:
            self.api.send_now(sending)

    def _prune(self, list_id: str, targets: dict[str, tuple[int, set[str]]],
               failures: dict[int, WriteResult]) -> None:
        """Remove memberships outside each recipient's desired set (imports cannot
        remove). From the groups' member listings (kept, see :meth:`members`) — unless
        listing them would take more pages than looking each recipient's groups up
        (two calls each): then each recipient is looked up."""
        try:
            groups = list(self.groups.groups(list_id))
        except CrmsyncError as exc:
            for index, _ in targets.values():
                failures.setdefault(index, _failed(exc))
            return
        budget = 2 * len(targets)
        listings: dict[str, dict[str, str | None]] = {}
        for gid in groups:
            try:
                members = self.members(gid, budget=budget)
            except CrmsyncError as exc:
                for index, _ in targets.values():
                    failures.setdefault(index, _failed(exc))
                continue
            if members is None:  # more pages than the look-ups: look them up instead
                self._prune_each(list_id, targets, failures)
                return
            listings[gid] = members
            budget -= self._pages_taken
        for gid, members in listings.items():
            for email, (index, wanted) in targets.items():
                key = email.lower()
                if gid in wanted or key not in members:
                    continue
                try:
                    rid = members[key]
                    if rid is None:  # added by this importer: its id was not listed
                        found = self.api.find(key, [list_id])
                        rid = found[0] if found else None
                    if rid is not None:
                        self.api.remove_from_group(gid, rid)
                    del members[key]
                except CrmsyncError as exc:
                    failures.setdefault(index, _failed(exc))

    def _prune_each(self, list_id: str, targets: dict[str, tuple[int, set[str]]],
                    failures: dict[int, WriteResult]) -> None:
        """The prune for a few recipients: each one's groups looked up, the extra ones
        removed (and the kept listings of those groups updated)."""
        for email, (index, wanted) in targets.items():
            if index in failures:
                continue
            try:
                found = self.api.find(email.lower(), [list_id])
                if not found:
                    continue
                rid = found[0]
                for gid in self.api.recipient_groups(list_id, rid) - wanted:
                    self.api.remove_from_group(gid, rid)
                    cached = self._members.get(gid)
                    if cached is not None:
                        cached[1].pop(email.lower(), None)
            except CrmsyncError as exc:
                failures.setdefault(index, _failed(exc))

    def forget_members(self) -> None:
        """Drop the kept group listings (memberships were changed some other way)."""
        self._members.clear()

    def remember_members(self, gid: str, members: dict[str, str | None]) -> None:
        """Keep a listing of the group taken elsewhere (a read), as if listed here."""
        self._members[gid] = (self._clock(), members)

    def members(self, gid: str, *, budget: int | None = None) -> dict[str, str | None] | None:
        """The group's members (lowercased email -> idRecipient), listed once and then
        kept up to date with this importer's own changes for ``MEMBERS_TTL_S``;
        ``None`` when listing them would take more than ``budget`` pages (nothing is
        kept then). ``_pages_taken`` says how many pages this call listed."""
        now = self._clock()
        self._pages_taken = 0
        cached = self._members.get(gid)
        if cached is not None and now - cached[0] < MEMBERS_TTL_S:
            return cached[1]
        members: dict[str, str | None] = {}
        for page in self.api.group_members(gid):
            self._pages_taken += 1
            if budget is not None:
                # the listing's size is known from its first page: give up at once
                total = self.api.client.last_total
                needed = (-(-total // len(page)) if total is not None and page
                          else self._pages_taken)
                if needed > budget:
                    return None
            members.update((str(item.get("Email", "")).lower(), str(item["idRecipient"]))
                           for item in page)
        self._members[gid] = (now, members)
        return members

    def _start(self, path: str, rows: list[tuple[int, dict[str, Any]]], params: dict[str, str],
               started: list[tuple[str, list[int]]], failures: dict[int, WriteResult]) -> None:
        for offset in range(0, len(rows), CHUNK):
            chunk = rows[offset:offset + CHUNK]
            indices = [index for index, _ in chunk]
            try:
                import_id = self.api.start_import(path, [body for _, body in chunk], params)
            except CrmsyncError as exc:
                for index in indices:
                    failures.setdefault(index, _failed(exc))
                continue
            started.append((import_id, indices))

    def wait(self, import_id: str) -> None:
        """Poll ``GET /Import/{idImport}`` until ``Completed`` (or ``import_timeout_s``)."""
        for _, _, error in self.wait_all([(import_id, [])]):
            if error is not None:
                raise error

    def wait_all(self, started: Sequence[tuple[str, list[int]]]
                 ) -> Iterator[tuple[str, list[int], CrmsyncError | None]]:
        """Poll every import in ``started`` each round, until all are ``Completed`` or
        ``import_timeout_s`` passed; yields ``(import, indices, error or None)`` as each
        one ends. Rounds are ``FIRST_POLL_S`` apart, doubling up to ``import_poll_s``."""
        pending = list(started)
        deadline = self._clock() + self.settings.import_timeout_s
        pause = min(FIRST_POLL_S, self.settings.import_poll_s)
        while pending:
            still = []
            for import_id, indices in pending:
                try:
                    status = self.api.import_status(import_id)
                except CrmsyncError as exc:
                    yield import_id, indices, exc
                    continue
                if status.get("Completed") is True:
                    yield import_id, indices, None
                else:
                    still.append((import_id, indices))
            pending = still
            if pending and self._clock() >= deadline:
                for import_id, indices in pending:
                    yield import_id, indices, RemoteError(
                        f"MailUp import {import_id} not completed after "
                        f"{self.settings.import_timeout_s:.0f} s: check it in the console "
                        "(Recipients > Import) and raise import_timeout_s", retryable=True)
                return
            if pending:
                self._sleep(pause)
                pause = min(pause * 2, self.settings.import_poll_s)


def _failed(exc: CrmsyncError) -> WriteResult:
    return WriteResult(ok=False, error=str(exc), code=getattr(exc, "code", None),
                       retryable=bool(getattr(exc, "retryable", False)))
