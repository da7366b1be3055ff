"""The real-time worker: applies inbox events to the other side, and polls CRMs that
cannot push.

Events are stored in the inbox by the server *before* the sender is acknowledged; the
worker claims the due ones in the order they were received, one contact at a time: a
contact whose oldest event waits for a retry blocks that contact's later events (never
anyone else's). Each event goes through the same engine as a batch run
(:meth:`Pipeline.apply_esp_events` / :meth:`Pipeline.apply_crm_records`): mapping,
consent, the write, the journal and the post-operations are the batch ones.

A failed event is retried with exponential backoff (``retry_base_s`` doubling up to
``retry_max_s``, never sooner than the vendor's ``Retry-After``) until
``max_attempts``, then moved to the dead letters (``crmsync replay --dead-letters``
puts it back). An event refused for good (a validation error) goes there at once. A
``Retry-After`` also holds back every event bound for that vendor (and the poller, for
the ESP) until it has passed: it is about the caller, not the one record.

Applying an event twice has no effect the second time (the snapshots say it is
already there, so nothing is written or journaled again): that is what makes a crash
between applying and marking done harmless.

CRM events are complete records or hints: an event that lacks a field the mapping
reads (a membership-only notification, a connector that sends only the changed
fields) triggers a catch-up read from the ``crm`` cursor instead, because applying a
partial record would blank the missing fields on the ESP.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ..config import Config
from ..contract import Connector
from ..errors import ConfigError, RateLimited, StateBusy
from ..hooks import Hooks
from ..logs import event_context
from ..model import Change, Contact, Cursor, Op
from ..state import StateStore
from ..state.records import QueueStatus
from .apply import Pipeline, RunStats
from .plan import Failure

__all__ = [
    "ENDPOINTS",
    "NullObserver",
    "RealtimeWorker",
    "WorkerObserver",
    "backoff_delay",
    "change_to_contact",
    "mapped_crm_fields",
    "should_poll",
]

log = logging.getLogger(__name__)

#: The inbox endpoints: events from the ESP go to the CRM, events from the CRM to the ESP.
ENDPOINTS = ("esp", "crm")


class WorkerObserver(Protocol):
    """What the worker reports (the server's Prometheus metrics implement it)."""

    def applied(self, endpoint: str, latency_s: float) -> None: ...

    def failed(self, endpoint: str) -> None: ...

    def dead(self, endpoint: str) -> None: ...

    def polled(self, records: int) -> None: ...


class NullObserver:
    """Reports nowhere."""

    def applied(self, endpoint: str, latency_s: float) -> None:
        return None

    def failed(self, endpoint: str) -> None:
        return None

    def dead(self, endpoint: str) -> None:
        return None

    def polled(self, records: int) -> None:
        return None


def backoff_delay(attempts: int, *, base: float, cap: float,
                  retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempts + 1``: ``base * 2**(attempts-1)`` up to ``cap``,
    and never sooner than the vendor's ``retry_after``."""
    delay = float(min(cap, base * 2.0 ** max(0, attempts - 1)))
    if retry_after is not None and retry_after > delay:
        delay = float(retry_after)
    return delay


def should_poll(config: Config, crm: Connector) -> bool:
    """Whether the worker polls the CRM (``[server] poll``, the CRM's capabilities)."""
    caps = crm.capabilities
    can_read = caps.incremental_read or caps.polling
    if config.server.poll == "never":
        return False
    if config.server.poll == "always":
        return can_read
    return can_read and not caps.push_events


def mapped_crm_fields(config: Config) -> set[str]:
    """The CRM fields the mapping reads: a CRM event must carry them all to be applied."""
    wanted = set(config.fields)
    for mapping in config.lists:
        if mapping.opt_out:
            wanted.add(mapping.opt_out)
        if mapping.groups is not None:
            wanted.add(mapping.groups.field)
        if mapping.member_field is not None:
            wanted.add(mapping.member_field[0])
    return wanted


def change_to_contact(change: Change, crm_name: str) -> Contact:
    """A CRM event's change as the record it describes (what a read would yield)."""
    return Contact(
        email=change.email, ids=change.ids, fields=change.fields,
        memberships={key: value for key, value in change.memberships.items()
                     if value is not None},
        modified_at=change.occurred_at, deleted=change.op == Op.DELETE,
        previous_email=change.previous_email)


class _RetryAfter:
    """The longest ``Retry-After`` a vendor asked for during one application."""

    def __init__(self) -> None:
        self.value: float | None = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.value = None

    def note(self, seconds: float | None) -> None:
        if seconds is None:
            return
        with self._lock:
            self.value = seconds if self.value is None else max(self.value, seconds)


class RealtimeWorker:
    """Applies inbox events and polls the CRM, in one background thread.

    ``lock`` serialises every use of the connectors by the worker with other users in
    the same process (the server's ``/send`` and ``/subscribe``).
    """

    def __init__(self, config: Config, crm: Connector, esp: Connector, store: StateStore, *,
                 hooks: Hooks | None = None, observer: WorkerObserver | None = None,
                 lock: threading.RLock | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if config.esp is not None and config.esp.mode != "api":
            # Real time writes through the ESP's API even when batch runs use files.
            config = config.model_copy(update={"esp": config.esp.model_copy(
                update={"mode": "api"})})
        if not config.lists:
            raise ConfigError("no [[lists]] in the configuration: map at least one ESP list")
        self.config = config
        self.server = config.server
        self.store = store
        self.hooks = hooks or Hooks()
        self.observer: WorkerObserver = observer or NullObserver()
        self.lock = lock or threading.RLock()
        self._clock = clock
        self._retry_after = _RetryAfter()
        self.crm = crm
        self.esp = esp
        self.crm_name = crm.name
        self.poll_enabled = should_poll(config, crm)
        self._catch_up_possible = crm.capabilities.incremental_read or crm.capabilities.full_read
        self._mapped = mapped_crm_fields(config)
        self._lists = set(config.list_ids())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_poll = 0.0
        self._next_flush = 0.0
        self._alive = contextlib.ExitStack()
        self.poll_failures = 0  # polls that failed in a row (readiness reports them)
        self.poll_error = ""
        self._pause_until: dict[str, float] = {}
        self._next_prune = 0.0
        self._next_leftovers = 0.0
        # what became of each event just tried: settled (None: done or dead) or when it
        # is to be tried again (what apply_event returns, without reading the row back)
        self._outcomes: dict[int, datetime | None] = {}
        self._held = False
        self.run_id = ""
        # `crmsync worker` (PostgreSQL): lock each contact from decision to commit, so a
        # batch run may decide on other contacts meanwhile (Pipeline.lock_contacts)
        self.lock_contacts = False
        self.counts = {"applied": 0, "retried": 0, "dead": 0, "polled": 0, "catch_up": 0}

    # -- the pipeline, fresh for each application (its failure list starts empty) --------
    def _pipeline(self) -> Pipeline:
        pipeline = Pipeline(self.config, self.crm, self.esp, self.store, hooks=self.hooks,
                            stats=RunStats(run_id=self.run_id, mode="realtime"))
        pipeline.lock_contacts = pipeline.one_transaction = self.lock_contacts
        # Without post-operation hooks, an application leaves nothing to follow it: look
        # for what older ones left (hooks since removed, a crash) once a second or so,
        # not after every event (3 queries and 2 transactions each time)
        now = self._clock()
        pipeline.leftovers = now >= self._next_leftovers
        if pipeline.leftovers:
            self._next_leftovers = now + max(1.0, self.server.retry_base_s)
        return pipeline

    def _noted(self, failures: list[Failure]) -> list[Failure]:
        for failure in failures:  # a vendor's Retry-After holds back its other events too
            self._retry_after.note(failure.retry_after)
        return failures

    # -- events ---------------------------------------------------------------------------
    def run_once(self) -> int:
        """Apply the due events (at most ``batch_size``); return how many were tried.

        While a batch run holds the state store, events wait in the inbox: two writers
        of the same snapshots could let stale data overwrite an unsubscribe."""
        try:
            with self.store.exclusive("batch"):
                return self._run_once()
        except StateBusy:
            self._held = True
            return 0

    def _run_once(self) -> int:
        heads = self.store.inbox_heads(limit=self.server.batch_size)
        tried = 0
        self._outcomes.clear()  # (only apply_event reads them; kept from growing here)
        self._held = False
        for endpoint in ENDPOINTS:
            rows = [row for row in heads if row["endpoint"] == endpoint]
            if rows and self._paused(endpoint):
                self._held = True
            elif rows:
                self._apply_rows(endpoint, rows)
                tried += len(rows)
        unknown = [row for row in heads if row["endpoint"] not in ENDPOINTS]
        for row in unknown:
            self._give_up(row, f"unknown endpoint {row['endpoint']!r}")
        return tried + len(unknown)

    def apply_event(self, event_id: int) -> datetime | None:
        """Apply one inbox event that another scheduler handed over (``crmsync worker``'s
        jobs, one contact at a time across processes): the same application, retries,
        dead letters and ``Retry-After`` pauses as :meth:`run_once`. Returns ``None`` when
        the event is settled (applied, dead, or already settled by an earlier attempt:
        nothing is applied twice), else when to try it again.

        The caller holds the state store's "decisions" lock (shared): a batch run takes
        it alone only for its phases that are not locked per contact."""
        row = self.store.inbox_event(event_id)
        if row is None or row["status"] != QueueStatus.PENDING:
            return None
        endpoint = row["endpoint"]
        if endpoint not in ENDPOINTS:
            self._give_up(row, f"unknown endpoint {endpoint!r}")
            return None
        if self._paused(endpoint):  # a vendor's Retry-After: not an attempt
            wait = self._pause_until[endpoint] - self._clock()
            return datetime.now(UTC) + timedelta(seconds=max(0.0, wait))
        self._outcomes.clear()
        self._apply_rows(endpoint, [row])
        if event_id in self._outcomes:
            return self._outcomes.pop(event_id)
        after = self.store.inbox_event(event_id)  # (every path records its outcome)
        if after is None or after["status"] != QueueStatus.PENDING:
            return None
        due: datetime = after["next_attempt_at"]
        return due if due.tzinfo is not None else due.replace(tzinfo=UTC)

    def _paused(self, endpoint: str) -> bool:
        return self._clock() < self._pause_until.get(endpoint, 0.0)

    def _pause(self, endpoint: str) -> None:
        # A vendor's Retry-After is about every call to it, not just this event's.
        if self._retry_after.value:
            until = self._clock() + self._retry_after.value
            self._pause_until[endpoint] = max(until, self._pause_until.get(endpoint, 0.0))

    def _apply_rows(self, endpoint: str, rows: list[dict[str, Any]]) -> None:
        events = []
        for row in rows:
            try:
                events.append((row, [Change.model_validate(item) for item in row["payload"]]))
            except (ValueError, TypeError) as exc:  # a stored payload this code cannot read
                self._give_up(row, f"unreadable stored event: {exc}")
        if not events:
            return
        changes = [change for _, items in events for change in items]
        self._retry_after.clear()
        with event_context(",".join(str(row["id"]) for row, _ in events)):
            self._apply_events(endpoint, rows, events, changes)

    def _apply_events(self, endpoint: str, rows: list[dict[str, Any]],
                      events: list[tuple[dict[str, Any], list[Change]]],
                      changes: list[Change]) -> None:
        try:
            with self.lock:
                pipeline = self._pipeline()
                if endpoint == "esp":
                    failures = self._noted(pipeline.apply_esp_events(self._esp_changes(changes)))
                else:
                    failures = self._noted(self._apply_crm(pipeline, changes))
        except Exception as exc:
            if isinstance(exc, RateLimited):
                self._retry_after.note(exc.retry_after)
            log.warning("applying %d %s event(s) failed: %s", len(rows), endpoint, exc)
            retryable = not isinstance(exc, ConfigError)
            self._pause(endpoint)
            for row, _ in events:
                self._failed(row, f"{type(exc).__name__}: {exc}", retryable=retryable)
            return
        self._pause(endpoint)
        done: list[dict[str, Any]] = []
        for row, items in events:
            emails = {c.email for c in items} | {c.previous_email for c in items
                                                  if c.previous_email}
            mine = [f for f in failures if f.email in emails or not f.email]
            if not mine:
                done.append(row)
                continue
            error = "; ".join(_describe(f) for f in mine)
            self._failed(row, error, retryable=any(f.retryable for f in mine))
        if done:
            with self.store.begin() as conn:
                for row in done:
                    self.store.inbox_done(conn, row["id"])
            now = datetime.now(UTC)
            for row in done:
                received = row["received_at"]
                if received.tzinfo is None:
                    received = received.replace(tzinfo=UTC)
                self.observer.applied(endpoint, max(0.0, (now - received).total_seconds()))
                self._outcomes[row["id"]] = None
            self.counts["applied"] += len(done)

    def _esp_changes(self, changes: list[Change]) -> list[Change]:
        # Like a batch read of the ESP: only the configured lists are this sync's business
        # (a profile change still carries its fields to the CRM).
        kept = []
        for change in changes:
            subs = {k: v for k, v in change.subscriptions.items() if k in self._lists}
            if subs or change.fields:
                kept.append(change.model_copy(update={"subscriptions": subs}))
        return kept

    def _apply_crm(self, pipeline: Pipeline, changes: list[Change]) -> list[Failure]:
        complete: list[Contact] = []
        partial = False
        for change in changes:
            if change.op == Op.DELETE or self._mapped <= set(change.fields):
                contact = change_to_contact(change, self.crm_name)
                if self.hooks.has_transforms:
                    contact = self.hooks.transform_contact(contact, "crm_to_esp")
                complete.append(contact)
            else:
                partial = True
        failures = pipeline.apply_crm_records(complete) if complete else []
        if partial:
            if not self._catch_up_possible:
                raise ConfigError(
                    f"a {self.crm_name} event lacks mapped fields and the connector cannot "
                    "read records back: send every mapped field in the notification")
            self.counts["catch_up"] += 1
            self._poll(pipeline)
        return failures

    def _failed(self, row: dict[str, Any], error: str, *, retryable: bool) -> None:
        with event_context(str(row["id"])):
            self._failed_one(row, error, retryable=retryable)

    def _failed_one(self, row: dict[str, Any], error: str, *, retryable: bool) -> None:
        attempts = int(row["attempts"]) + 1
        endpoint = row["endpoint"]
        self.observer.failed(endpoint)
        if not retryable:
            self._give_up(row, f"not retryable: {error}")
            return
        if attempts >= self.server.max_attempts:
            self._give_up(row, f"gave up after {attempts} attempts: {error}")
            return
        delay = backoff_delay(attempts, base=self.server.retry_base_s,
                              cap=self.server.retry_max_s, retry_after=self._retry_after.value)
        due = datetime.now(UTC) + timedelta(seconds=delay)
        self.store.inbox_retry(row["id"], error, due)
        self._outcomes[row["id"]] = due
        self.counts["retried"] += 1
        log.info("event %s (%s) will be retried in %.2fs: %s", row["id"], row["contact"],
                 delay, error)

    def _give_up(self, row: dict[str, Any], error: str) -> None:
        with event_context(str(row["id"])):
            self._dead(row, error)

    def _dead(self, row: dict[str, Any], error: str) -> None:
        self.store.inbox_dead(row, error)
        self._outcomes[row["id"]] = None
        self.observer.dead(row["endpoint"])
        self.counts["dead"] += 1
        log.warning("event %s (%s) moved to the dead letters: %s", row["id"], row["contact"],
                    error)

    # -- polling --------------------------------------------------------------------------
    def poll_once(self) -> int:
        """Read the CRM since the ``crm`` cursor and apply what changed; return the count."""
        self._retry_after.clear()
        try:
            with self.lock, self.store.exclusive("batch"):
                count = self._poll(self._pipeline())
        except StateBusy:
            return 0  # a batch run is reading the CRM; the next poll catches up
        except Exception as exc:  # counted for /readyz, then handled as before
            if isinstance(exc, RateLimited):
                self._retry_after.note(exc.retry_after)
            self.poll_failures += 1
            self.poll_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._pause("crm")
        self.poll_failures, self.poll_error = 0, ""
        return count

    def _poll(self, pipeline: Pipeline) -> int:
        cursor = self.store.get_cursor("crm")
        since = None
        if cursor is not None:
            since = Cursor(at=cursor.at - timedelta(seconds=self.config.sync.overlap_s),
                           tie_id="", data=cursor.data)
        count = 0
        for page in self.crm.read(since):
            records = list(page.records)
            if self.hooks.has_transforms:
                records = [self.hooks.transform_contact(r, "crm_to_esp") for r in records]
            failures = self._noted(pipeline.apply_crm_records(records))
            count += len(records)
            if any(f.retryable for f in failures):
                # The cursor stays where it is: the next poll reads these records again.
                log.warning("poll: %d record(s) could not be written yet, will retry",
                            sum(f.retryable for f in failures))
                break
            for failure in failures:
                log.warning("poll: %s", _describe(failure))
            if page.cursor is not None and (cursor is None or page.cursor.key() >= cursor.key()):
                cursor = page.cursor
                with self.store.begin() as conn:
                    self.store.set_cursor(conn, "crm", cursor)
        self.counts["polled"] += count
        self.observer.polled(count)
        return count

    def flush_followups(self) -> None:
        """Write pending post-operation follow-ups to the ESP (an earlier write failed)."""
        if self.store.count_pending().get("esp"):
            with self.lock:
                self._pipeline().flush_followups()

    def prune(self) -> int:
        """Forget applied events older than ``[server] inbox_keep_days``."""
        before = datetime.now(UTC) - timedelta(days=self.server.inbox_keep_days)
        return self.store.inbox_prune(before)

    # -- the thread -----------------------------------------------------------------------
    def wake(self) -> None:
        """A new event is in the inbox: look now rather than at the next tick."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> RealtimeWorker:
        if self._thread is not None:
            return self
        # held while this worker lives, released by the OS if the process is killed:
        # `crmsync status` tells a live server from one SIGKILLed mid-run
        self._alive = contextlib.ExitStack()
        try:
            self._alive.enter_context(self.store.exclusive("serve"))
        except StateBusy:
            log.warning("another crmsync serve applies events on this state store")
        self.run_id = self.store.start_run("realtime", full=False, dry_run=False)
        self.hooks.run_started(self.run_id, "realtime", False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"crmsync-worker-{self.config.pair_name}")
        self._thread.start()
        return self

    def stop_soon(self) -> None:
        """Ask the thread to stop after the events in hand, without waiting (several
        pairs' workers are stopped at once, then each is waited for by :meth:`stop`)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the events in hand, leave the rest in the inbox; ``False`` if the
        thread was still busy after ``timeout`` seconds."""
        if self._thread is None:
            return True
        self._stop.set()
        self._wake.set()
        wait = self.server.shutdown_timeout_s if timeout is None else timeout
        self._thread.join(wait)
        finished = not self._thread.is_alive()
        if not finished:
            log.warning("the worker was still applying events after %.0fs; what it did not "
                        "mark done stays in the inbox and is applied again at the next start",
                        wait)
        stats = dict(self.counts)
        self.store.finish_run(self.run_id, "stopped", stats)
        self.hooks.run_finished(self.run_id, stats)
        self._thread = None
        self._alive.close()
        return finished

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            tried = 0
            try:
                tried = self.run_once()
                now = self._clock()
                if (self.poll_enabled and now >= self._next_poll and not self._stop.is_set()
                        and not self._paused("crm")):
                    self._next_poll = now + self.server.poll_interval_s
                    self.poll_once()
                if now >= self._next_flush and not self._stop.is_set():
                    self._next_flush = now + max(1.0, self.server.retry_base_s)
                    self.flush_followups()
                if now >= self._next_prune and not self._stop.is_set():
                    self._next_prune = now + 3600.0
                    self.prune()
            except Exception:
                log.exception("the real-time worker hit an error; it goes on")
                self._stop.wait(min(5.0, self.server.retry_base_s))
            if tried:
                continue
            self._wake.wait(self._idle_timeout())

    def _idle_timeout(self) -> float:
        # At most a second: events stored by another process have no way to wake us.
        timeout = 1.0
        if self.poll_enabled:
            timeout = min(timeout, max(0.0, self._next_poll - self._clock()))
        if self._held:
            # Due events wait for a vendor's Retry-After: sleep until it has passed.
            now = self._clock()
            # (held by a batch run's lock, there may be no pause at all)
            timeout = min([timeout, *(max(0.0, until - now)
                                      for until in self._pause_until.values())])
        else:
            due = self.store.inbox_next_due()
            if due is not None:
                timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
        return max(timeout, 0.005)

    def drain(self, *, timeout: float = 60.0) -> int:
        """Apply due events in this thread until none is due (``replay``, tests)."""
        deadline = self._clock() + timeout
        total = 0
        while self._clock() < deadline:
            tried = self.run_once()
            total += tried
            if not tried:
                break
        self.flush_followups()
        return total


def _describe(failure: Failure) -> str:
    where = f" on list {failure.list_id}" if failure.list_id else ""
    code = f" [{failure.code}]" if failure.code else ""
    return f"{failure.side} {failure.email}{where}: {failure.reason}{code}"
