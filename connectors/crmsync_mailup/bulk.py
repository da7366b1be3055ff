"""MailUp's asynchronous import, for change sets above ``bulk_threshold``.

Rows go to ``POST /List/{id}/Recipients`` (one import per list and target status:
plain, ``ConfirmEmail=true`` for pending, ``importType=asOptout`` for unsubscribes),
then, once those are completed, group memberships to ``POST /Group/{id}/Recipients``;
each import is polled at ``GET /Import/{idImport}`` until ``Completed``. The
confirmation request of a ``ConfirmEmail`` import is queued, not sent, by MailUp: it is
sent with ``GET /Import/{id}/Sending`` and ``POST /Email/Sendings/{id}/Immediate``.
Memberships outside a recipient's desired group set are then removed one by one (an
import cannot remove them). A default import never changes an existing status, so it
cannot lift an unsubscribe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from crmsync.errors import CrmsyncError, RemoteError
from crmsync.model import Change, Status, WriteResult

from .recipients import GroupDirectory, RecipientApi, recipient_body
from .settings import MailUpSettings

__all__ = ["BulkImporter"]

CHUNK = 5000  # rows per import call; MailUp documents no maximum
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
        for list_id, targets in desired.items():
            self._prune(list_id, targets, failures)
        return {index: failures.get(index, WriteResult(ok=True)) for index, _ in items}

    def _finish(self, started: list[tuple[str, list[int]]], failures: dict[int, WriteResult],
                confirming: set[str]) -> None:
        """Wait for each import; send the confirmation request of a ConfirmEmail one.

        MailUp queues that mail without sending it ("a confirmation request email is
        queued but not automatically sent"): ``GET /Import/{id}/Sending`` names the
        sending, ``POST /Email/Sendings/{id}/Immediate`` sends it.
        """
        for import_id, indices in started:
            try:
                self.wait(import_id)
                if import_id in confirming:
                    self.send_confirmation(import_id)
            except CrmsyncError as exc:
                for index in indices:
                    failures.setdefault(index, _failed(exc))

    def send_confirmation(self, import_id: str) -> None:
        sending = self.api.import_sending(import_id)
        if sending is not None:
            self.api.send_now(sending)

    def _prune(self, list_id: str, targets: dict[str, tuple[int, set[str]]],
               failures: dict[int, WriteResult]) -> None:
        """Remove memberships outside each recipient's desired set: one listing per group
        of the list, then one removal per extra membership (imports cannot remove)."""
        try:
            groups = list(self.groups.groups(list_id))
        except CrmsyncError as exc:
            for index, _ in targets.values():
                failures.setdefault(index, _failed(exc))
            return
        for gid in groups:
            try:
                extra = [(str(item["idRecipient"]), targets[email][0])
                         for page in self.api.group_members(gid) for item in page
                         if (email := str(item.get("Email", "")).lower()) in targets
                         and gid not in targets[email][1]]
            except CrmsyncError as exc:
                for index, _ in targets.values():
                    failures.setdefault(index, _failed(exc))
                continue
            for rid, index in extra:
                try:
                    self.api.remove_from_group(gid, rid)
                except CrmsyncError as exc:
                    failures.setdefault(index, _failed(exc))

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

    def wait(self, import_id: str) -> dict[str, Any]:
        """Poll ``GET /Import/{idImport}`` until ``Completed`` (or ``import_timeout_s``)."""
        deadline = self._clock() + self.settings.import_timeout_s
        while True:
            status = self.api.import_status(import_id)
            if status.get("Completed") is True:
                return status
            if self._clock() >= deadline:
                raise RemoteError(f"MailUp import {import_id} not completed after "
                                  f"{self.settings.import_timeout_s:.0f} s: check it in the "
                                  "console (Recipients > Import) and raise import_timeout_s",
                                  retryable=True)
            self._sleep(self.settings.import_poll_s)


def _failed(exc: CrmsyncError) -> WriteResult:
    return WriteResult(ok=False, error=str(exc), code=getattr(exc, "code", None),
                       retryable=bool(getattr(exc, "retryable", False)))
