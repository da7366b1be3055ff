"""Scale-out on PostgreSQL: ``crmsync worker`` processes apply the shared inbox.

The task engine is procrastinate (``pip install 'crmsync[scale]'``): PostgreSQL only, no
broker. Every inbox event gets one job, ``crmsync.apply_event(event_id)``, deferred **in
the transaction that stores the event** (``crmsync serve --no-worker`` acknowledges only
after that commit): there is no moment where an acknowledged event exists without its
job, and no deferrer process to keep alive. Events that reach the inbox another way
(dead letters put back by ``crmsync replay``, events stored by a plain ``crmsync serve``
before the switch) get their job from the sweep each worker runs at start and every
few seconds (:func:`sweep_orphans`).

Order: the job's procrastinate ``lock`` is the pair and the contact, so jobs for one
contact run one at a time, oldest first, across every worker; a job waiting for a retry
(a job in ``todo`` scheduled later) holds back that contact's later events and no one
else's. Retries, backoff, dead letters and ``Retry-After`` pauses are the real-time
worker's (:meth:`RealtimeWorker.apply_event`); a job whose event still waits for a
retry is handed back to procrastinate with the event's ``next_attempt_at``.

A worker killed at any moment: its job stays ``doing`` (the contact stays held) until
its heartbeat is older than ``--stalled-after``, then another worker's rescue task puts
it back to ``todo`` with the same id (still the oldest for its contact). The event is
still ``pending`` in the inbox unless it was marked done, and applying it again is a
no-op with no visible effect: the snapshots committed with the first application say
the status is already there, so nothing is written, journaled or counted twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from .config import Config
from .errors import ConfigError, StateBusy

if TYPE_CHECKING:
    import procrastinate

    from .engine.realtime import RealtimeWorker
    from .state import StateStore

__all__ = [
    "APPLY_TASK",
    "PAIR",
    "QUEUE",
    "build_app",
    "contact_lock",
    "defer_events",
    "ensure_schema",
    "receiver_inbox",
    "require_postgresql",
    "run_worker",
    "sweep_orphans",
]

log = logging.getLogger(__name__)

#: The pair every job and lock is keyed by (one pair per deployment until pairs land).
PAIR = "default"
QUEUE = "crmsync"
APPLY_TASK = "crmsync.apply_event"
RESCUE_TASK = "crmsync.rescue_stalled"
SWEEP_TASK = "crmsync.sweep_orphans"
#: How long a worker waits before trying an event again while a batch run holds the store.
BATCH_WAIT_S = 2.0
#: The store-wide lock workers share and a batch run takes alone for its phases that are
#: not locked per contact (file mode, post-operations, removals, repairs).
DECISIONS = "decisions"


def require_postgresql(config: Config, what: str) -> None:
    """``what`` (``crmsync worker``, ``serve --no-worker``) needs the state on PostgreSQL."""
    if not config.state_url().startswith("postgresql"):
        raise ConfigError(
            f"{what} needs [state] url on PostgreSQL (postgresql+psycopg://user@host/db): "
            "several processes share the inbox and its job queue there; with SQLite run "
            "`crmsync serve` alone, it applies events itself (docs/scale-out.md)")
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs procrastinate: pip install 'crmsync[scale]'") from None


def contact_lock(contact: str, pair: str = PAIR) -> str:
    """The procrastinate lock of one contact's events: one at a time, oldest first."""
    return f"crmsync:{pair}:{contact.strip().lower()}"


def conninfo(url: str) -> str:
    """A libpq connection string from the state store's SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class _RetryLater(Exception):
    """The event is still pending: run this job again at ``at`` (same id, same order)."""

    def __init__(self, at: dt.datetime) -> None:
        super().__init__(f"retry at {at.isoformat()}")
        self.at = at


def _retry_strategy() -> Any:
    from procrastinate import BaseRetryStrategy, RetryDecision

    class InboxRetry(BaseRetryStrategy):
        """The inbox decides when (its backoff, the vendor's Retry-After); an unexpected
        error (a bug, the database away) is retried with backoff too: the event is not
        settled, so its job must not end."""

        def get_retry_decision(self, *, exception: BaseException,
                               job: Any) -> RetryDecision | None:
            if isinstance(exception, _RetryLater):
                return RetryDecision(retry_at=exception.at)
            log.warning("job %s failed (%s); tried again", job.id, exception)
            return RetryDecision(retry_in={"seconds": min(60, 2 ** min(job.attempts, 6))})

    return InboxRetry()


class _Worker:
    """What one ``crmsync worker`` process applies events with."""

    def __init__(self, realtime: RealtimeWorker, store: StateStore) -> None:
        self.realtime = realtime
        self.store = store
        self.lock = threading.Lock()

    def apply(self, event_id: int) -> None:
        with self.lock:
            try:
                with self.store.exclusive(DECISIONS, shared=True):
                    again = self.realtime.apply_event(event_id)
            except StateBusy:  # a batch run holds every contact for a moment: wait
                again = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=BATCH_WAIT_S)
        if again is not None:
            raise _RetryLater(again)


_CURRENT: _Worker | None = None


def _apply_event(event_id: int) -> None:
    if _CURRENT is None:
        raise RuntimeError("crmsync.apply_event runs only in `crmsync worker`")
    _CURRENT.apply(event_id)


def build_app(url: str, *, stalled_after_s: float = 30.0) -> procrastinate.App:
    """The procrastinate app over the state store's database, with crmsync's tasks."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(url)))
    app.task(name=APPLY_TASK, queue=QUEUE, retry=_retry_strategy())(_apply_event)

    @app.periodic(cron="* * * * * */2", periodic_id="rescue")
    @app.task(name=RESCUE_TASK, queue=QUEUE, queueing_lock=RESCUE_TASK, pass_context=True)
    async def rescue_stalled(context: Any, timestamp: int) -> None:
        # a worker killed (SIGKILL, power loss) left its job "doing": put it back
        manager = context.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after_s):
            if job.task_name == APPLY_TASK:
                log.warning("job %s (%s) of a worker that died goes back to the queue",
                            job.id, job.lock)
                await manager.retry_job(job)

    @app.periodic(cron="* * * * * */5", periodic_id="sweep")
    @app.task(name=SWEEP_TASK, queue=QUEUE, queueing_lock=SWEEP_TASK, pass_context=True)
    def sweep(context: Any, timestamp: int) -> None:
        if _CURRENT is not None:
            sweep_orphans(_CURRENT.store, app)

    return app


def ensure_schema(store: StateStore, app: procrastinate.App) -> None:
    """Create procrastinate's tables in the state database once (first worker wins)."""
    with store.exclusive("procrastinate-schema", wait_s=60), store.engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            # the driver's own execute: no parameters, so its '%' signs are left alone
            raw: Any = conn.connection.driver_connection
            raw.execute(app.schema_manager.get_schema())


def defer_events(app: procrastinate.App, conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Queue one job per stored inbox row in ``conn``'s transaction (the storing one)."""
    from procrastinate.jobs import Job

    jobs = [Job(queue=QUEUE, lock=contact_lock(row["contact"]), queueing_lock=None,
                task_name=APPLY_TASK, task_kwargs={"event_id": int(row["id"])})
            for row in rows]
    raw = conn.connection.driver_connection
    app.job_manager.batch_defer_jobs(jobs, connection=raw)


def sweep_orphans(store: StateStore, app: procrastinate.App) -> int:
    """Queue a job for each pending inbox event that has none (put back by ``replay``,
    stored by a plain ``crmsync serve``), oldest first; return how many."""
    from .state.schema import inbox

    found = 0
    try:
        with store.exclusive("procrastinate-sweep"), store.engine.begin() as conn:
            rows = conn.execute(text(
                f"SELECT i.id, i.contact FROM {inbox.name} i WHERE i.status = 'pending' "
                "AND NOT EXISTS "
                "(SELECT 1 FROM procrastinate_jobs j WHERE j.task_name = :task "
                "AND j.status IN ('todo', 'doing') "
                "AND (j.args->>'event_id')::bigint = i.id) ORDER BY i.id LIMIT 10000"),
                {"task": APPLY_TASK}).all()
            if rows:
                defer_events(app, conn, [{"id": r.id, "contact": r.contact} for r in rows])
                found = len(rows)
    except StateBusy:
        return 0  # another worker sweeps now
    if found:
        log.info("queued %d inbox event(s) that had no job", found)
    return found


@contextlib.contextmanager
def _current(worker: _Worker) -> Iterator[None]:
    global _CURRENT
    _CURRENT = worker
    try:
        yield
    finally:
        _CURRENT = None


def run_worker(config: Config, *, stalled_after_s: float = 30.0,
               name: str | None = None) -> dict[str, int]:
    """Run one ``crmsync worker`` until SIGTERM / SIGINT; return its counts."""
    from .engine.realtime import RealtimeWorker
    from .runtime import build_hooks, open_side, open_store

    require_postgresql(config, "crmsync worker")
    store = open_store(config)
    try:
        app = build_app(config.state_url(), stalled_after_s=stalled_after_s)
        ensure_schema(store, app)
        with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
            hooks = build_hooks(config)
            realtime = RealtimeWorker(config, crm, esp, store, hooks=hooks)
            realtime.lock_contacts = True
            realtime.run_id = store.start_run("realtime", full=False, dry_run=False)
            hooks.run_started(realtime.run_id, "realtime", False)
            status = "stopped"
            with app.open(), _current(_Worker(realtime, store)):
                sweep_orphans(store, app)
                try:
                    app.run_worker(queues=[QUEUE], name=name, wait=True,
                                   update_heartbeat_interval=max(0.5, stalled_after_s / 4),
                                   stalled_worker_timeout=stalled_after_s,
                                   delete_jobs="successful", install_signal_handlers=True)
                except BaseException:
                    status = "failed"
                    raise
                finally:
                    counts = dict(realtime.counts)
                    store.finish_run(realtime.run_id, status, counts)
                    hooks.run_finished(realtime.run_id, counts)
        return counts
    finally:
        store.close()


def receiver_inbox(config: Config, store: StateStore) -> Any:
    """The inbox ``crmsync serve --no-worker`` stores into: each event with its job."""
    from .server.app import StoreInbox

    require_postgresql(config, "crmsync serve --no-worker")
    app = build_app(config.state_url())
    ensure_schema(store, app)
    return StoreInbox(store, on_stored=lambda conn, rows: defer_events(app, conn, rows))

