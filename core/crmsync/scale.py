"""Scale-out on PostgreSQL: ``crmsync worker`` processes apply the shared inbox.

The task engine is procrastinate (``pip install 'crmsync[scale]'``): PostgreSQL only, no
broker. Every inbox event gets one job, ``crmsync.apply_event(event_id)``, deferred **in
the transaction that stores the event** (``crmsync serve --no-worker`` acknowledges only
after that commit): there is no moment where an acknowledged event exists without its
job, and no deferrer process to keep alive. Events that reach the inbox another way
(dead letters put back by ``crmsync replay``, events stored by a plain ``crmsync serve``
before the switch) get their job from the sweep each worker runs at start and every
few seconds (:func:`sweep_orphans`).

Pairs (``crmsync --pairs DIR worker``): one worker process serves every pair. Each
pair's jobs go to the pair's own queue (``crmsync.<pair>``), and the process runs one
procrastinate worker loop per queue: a pair whose vendor hangs or refuses holds up its
own loop, never another pair's. Each pair's state is its own (its schema), and so are
its connectors, secrets and schedules.

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

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
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
    "BATCH_TASK",
    "PAIR",
    "POLL_TASK",
    "QUEUE",
    "Scheduled",
    "build_app",
    "contact_lock",
    "defer_events",
    "ensure_schema",
    "every",
    "queue_of",
    "receiver_inbox",
    "require_postgresql",
    "run_worker",
    "schedule",
    "sweep_orphans",
]

log = logging.getLogger(__name__)

#: The pair of a deployment with one crmsync.toml (its jobs' queue is QUEUE).
PAIR = "default"
#: The queue of the default pair's jobs and of the tasks every worker shares (the
#: rescue of a dead worker's jobs, the sweep); another pair's jobs go to queue_of(pair).
QUEUE = "crmsync"
APPLY_TASK = "crmsync.apply_event"
RESCUE_TASK = "crmsync.rescue_stalled"
SWEEP_TASK = "crmsync.sweep_orphans"
POLL_TASK = "crmsync.poll"
BATCH_TASK = "crmsync.batch"
#: How long a worker waits before trying an event again while a batch run holds the store.
BATCH_WAIT_S = 2.0
#: The store-wide lock workers share and a batch run takes alone for its phases that are
#: not locked per contact (file mode, post-operations, removals, repairs).
DECISIONS = "decisions"


@dataclass(frozen=True)
class Scheduled:
    """One periodic task: its name, its cron (UTC; six fields: seconds last), what it does."""

    task: str
    cron: str
    what: str

    def next_runs(self, count: int = 3, *, after: dt.datetime | None = None
                  ) -> list[dt.datetime]:
        from croniter import croniter  # type: ignore[import-untyped]

        it = croniter(self.cron, after or dt.datetime.now(dt.UTC))
        return [it.get_next(dt.datetime) for _ in range(count)]


def every(seconds: float) -> str:
    """A cron for "every ``seconds``" (rounded to one that divides a minute or an hour)."""
    whole = max(1, round(seconds))
    if whole < 60:
        step = next(n for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) if n >= whole)
        return "* * * * *" if step == 60 else f"* * * * * */{step}"
    minutes = max(1, round(whole / 60))
    step = next((n for n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) if n >= minutes), 60)
    return "0 * * * *" if step == 60 else f"*/{step} * * * *"


def schedule(config: Config, *, crm_polls: bool) -> list[Scheduled]:
    """What ``crmsync worker`` processes start on a schedule (``[schedule]``), once each
    time across all of them; ``crm_polls``: the CRM is to be polled ([server] poll and
    its capabilities, :func:`~crmsync.engine.realtime.should_poll`)."""
    from croniter import croniter

    found = []
    if config.schedule.poll and crm_polls:
        found.append(Scheduled(POLL_TASK, every(config.server.poll_interval_s),
                               "read the CRM's changes since the last poll and apply them"))
    if config.schedule.batch:
        if not croniter.is_valid(config.schedule.batch):
            raise ConfigError(
                f"[schedule] batch = {config.schedule.batch!r} is not a cron expression: "
                'write five fields, minute hour day month weekday, e.g. "0 2 * * *"')
        found.append(Scheduled(BATCH_TASK, config.schedule.batch,
                               "a full batch run (crmsync sync --full)"
                               if config.schedule.batch_full else
                               "a batch run (crmsync sync)"))
    return found


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


def queue_of(pair: str) -> str:
    """The procrastinate queue of a pair's jobs (each pair its own worker loop)."""
    return QUEUE if pair == PAIR else f"{QUEUE}.{pair}"


def _with_procrastinate(conn: Connection) -> None:
    """Let ``conn``'s transaction reach procrastinate's tables and functions (schema
    ``public``) from a pair's store, whose search path is the pair's schema alone."""
    conn.execute(text("SELECT set_config('search_path', "
                      "current_setting('search_path') || ', public', true)"))


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
    """What one ``crmsync worker`` process applies one pair's events with."""

    def __init__(self, config: Config, realtime: RealtimeWorker, store: StateStore) -> None:
        self.config = config
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


_CURRENT: dict[str, _Worker] = {}


def _worker(pair: str) -> _Worker:
    if not _CURRENT:
        raise RuntimeError("crmsync's tasks run only in `crmsync worker`")
    worker = _CURRENT.get(pair)
    if worker is None:
        # a job of a pair this worker does not serve (its folder was removed, or this
        # worker runs --pair another one): back to the queue for a worker that does
        raise _RetryLater(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    return worker


def _apply_event(event_id: int, pair: str = PAIR) -> None:
    _worker(pair).apply(event_id)


def _poll(timestamp: int, pair: str = PAIR) -> None:
    worker = _worker(pair)
    with worker.lock:  # the connectors are the worker's: one user at a time
        count = worker.realtime.poll_once()  # a batch run reading the CRM: skipped
    log.info("scheduled poll: %d record(s) from the CRM", count)


def _batch(timestamp: int, pair: str = PAIR) -> None:
    from .runtime import build_batch, open_side

    worker = _worker(pair)
    config = worker.config
    with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
        stats = build_batch(config, crm, esp, worker.store).run(
            full=config.schedule.batch_full)
    log.info("scheduled batch run %s for the tick of %s: %s", stats.run_id,
             dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(), stats.status)


_PERIODIC = {POLL_TASK: _poll, BATCH_TASK: _batch}


def build_app(url: str, *, stalled_after_s: float = 30.0,
              scheduled: dict[str, list[Scheduled]] | list[Scheduled] | None = None
              ) -> procrastinate.App:
    """The procrastinate app over the state store's database, with crmsync's tasks and
    the ``scheduled`` periodic ones (by pair; a list: the default pair's)."""
    import procrastinate

    # a pool that grows to 4 but keeps 1 when idle: a worker process serving K pairs
    # already holds K + 1 listening connections and a pool per pair
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=conninfo(url), min_size=1, max_size=4))
    app.task(name=APPLY_TASK, queue=QUEUE, retry=_retry_strategy())(_apply_event)
    by_pair = {PAIR: scheduled} if isinstance(scheduled, list) else scheduled or {}
    tasks: dict[str, Any] = {}
    for pair, items in by_pair.items():
        for item in items:
            if item.task not in tasks:
                tasks[item.task] = app.task(name=item.task, queue=QUEUE,
                                            pass_context=False)(_PERIODIC[item.task])
            # procrastinate defers one job per tick whatever the number of workers; the
            # queueing lock keeps a second one from queueing while one waits, the lock
            # from running while one runs (a slow poll or batch run); in the pair's own
            # queue, so a pair's long batch run holds up only that pair's loop
            key = f"crmsync:{pair}:{item.task}"
            app.periodic(cron=item.cron,
                         periodic_id=item.task if pair == PAIR else f"{pair}:{item.task}",
                         queue=queue_of(pair), lock=key, queueing_lock=key,
                         task_kwargs={} if pair == PAIR else {"pair": pair}
                         )(tasks[item.task])

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
        for pair, worker in list(_CURRENT.items()):
            sweep_orphans(worker.store, app, pair=pair)

    return app


def ensure_schema(store: StateStore, app: procrastinate.App) -> None:
    """Create procrastinate's tables in the state database once (first worker wins)."""
    with store.exclusive("procrastinate-schema", wait_s=60), store.engine.begin() as conn:
        # procrastinate's tables live in schema public, whatever pair's store this is
        conn.execute(text("SET LOCAL search_path TO public"))
        if conn.execute(text("SELECT to_regclass('public.procrastinate_jobs')")
                        ).scalar() is None:
            # the driver's own execute: no parameters, so its '%' signs are left alone
            raw: Any = conn.connection.driver_connection
            raw.execute(app.schema_manager.get_schema())


def defer_events(app: procrastinate.App, conn: Connection, rows: list[dict[str, Any]], *,
                 pair: str = PAIR) -> None:
    """Queue one job per stored inbox row of ``pair`` in ``conn``'s transaction (the
    storing one), in the pair's queue."""
    from procrastinate.jobs import Job

    extra = {} if pair == PAIR else {"pair": pair}
    jobs = [Job(queue=queue_of(pair), lock=contact_lock(row["contact"], pair),
                queueing_lock=None, task_name=APPLY_TASK,
                task_kwargs={"event_id": int(row["id"]), **extra})
            for row in rows]
    _with_procrastinate(conn)
    raw = conn.connection.driver_connection
    app.job_manager.batch_defer_jobs(jobs, connection=raw)


def sweep_orphans(store: StateStore, app: procrastinate.App, *, pair: str = PAIR) -> int:
    """Queue a job for each pending inbox event of ``pair`` that has none (put back by
    ``replay``, stored by a plain ``crmsync serve``), oldest first; return how many."""
    from .state.schema import inbox

    found = 0
    try:
        with store.exclusive("procrastinate-sweep"), store.engine.begin() as conn:
            rows = conn.execute(text(
                f"SELECT i.id, i.contact FROM {inbox.name} i WHERE i.status = 'pending' "
                "AND NOT EXISTS "
                "(SELECT 1 FROM public.procrastinate_jobs j WHERE j.task_name = :task "
                "AND j.queue_name = :queue AND j.status IN ('todo', 'doing') "
                "AND (j.args->>'event_id')::bigint = i.id) ORDER BY i.id LIMIT 10000"),
                {"task": APPLY_TASK, "queue": queue_of(pair)}).all()
            if rows:
                defer_events(app, conn, [{"id": r.id, "contact": r.contact} for r in rows],
                             pair=pair)
                found = len(rows)
    except StateBusy:
        return 0  # another worker sweeps now
    if found:
        log.info("queued %d inbox event(s) of pair %s that had no job", found, pair)
    return found


@contextlib.contextmanager
def _current(workers: dict[str, _Worker]) -> Iterator[None]:
    _CURRENT.update(workers)
    try:
        yield
    finally:
        _CURRENT.clear()


def run_worker(configs: Config | dict[str, Config], *, stalled_after_s: float = 30.0,
               name: str | None = None) -> dict[str, int]:
    """Run one ``crmsync worker`` until SIGTERM / SIGINT, for one pair or several (by
    name); return its counts (summed over the pairs)."""
    from .engine.realtime import RealtimeWorker, should_poll
    from .runtime import build_hooks, open_side, open_store

    pairs = configs if isinstance(configs, dict) else {configs.pair_name: configs}
    urls = set()
    for pair, config in pairs.items():
        require_postgresql(config, f"crmsync worker (pair {pair})" if pair != PAIR
                           else "crmsync worker")
        urls.add(config.state_url())
    if len(urls) > 1:
        raise ConfigError(
            "the pairs' [state] url name different databases: one `crmsync worker` serves "
            "the pairs of one PostgreSQL database (each pair has its own schema there); "
            "run a worker per database with --pair, or point the pairs at one database")
    workers: dict[str, _Worker] = {}
    with contextlib.ExitStack() as stack:
        scheduled: dict[str, list[Scheduled]] = {}
        for pair, config in pairs.items():
            store = open_store(config)
            stack.callback(store.close)
            crm = stack.enter_context(open_side(config, "crm"))
            esp = stack.enter_context(open_side(config, "esp"))
            scheduled[pair] = schedule(config, crm_polls=should_poll(config, crm))
            hooks = build_hooks(config)
            realtime = RealtimeWorker(config, crm, esp, store, hooks=hooks)
            realtime.lock_contacts = True
            workers[pair] = _Worker(config, realtime, store)
        app = build_app(urls.pop(), stalled_after_s=stalled_after_s, scheduled=scheduled)
        ensure_schema(next(iter(workers.values())).store, app)
        for worker in workers.values():
            worker.realtime.run_id = worker.store.start_run("realtime", full=False,
                                                            dry_run=False)
            worker.realtime.hooks.run_started(worker.realtime.run_id, "realtime", False)
        status = "stopped"
        try:
            with app.open(), _current(workers):
                for pair, worker in workers.items():
                    sweep_orphans(worker.store, app, pair=pair)
                queues = list(dict.fromkeys([QUEUE, *(queue_of(p) for p in workers)]))
                asyncio.run(_run_loops(app, queues, name=name, stalled_after_s=stalled_after_s))
        except BaseException:
            status = "failed"
            raise
        finally:
            totals: dict[str, int] = {}
            for worker in workers.values():
                counts = dict(worker.realtime.counts)
                worker.store.finish_run(worker.realtime.run_id, status, counts)
                worker.realtime.hooks.run_finished(worker.realtime.run_id, counts)
                for key, value in counts.items():
                    totals[key] = totals.get(key, 0) + int(value)
    return totals


async def _run_loops(app: procrastinate.App, queues: list[str], *, name: str | None,
                     stalled_after_s: float) -> None:
    """One procrastinate worker loop per queue (the shared one, then each pair's), in one
    event loop; SIGTERM / SIGINT stops them all after the jobs in hand."""
    from procrastinate.worker import Worker

    class PairLoop(Worker):
        """A pair's loop: the shared loop alone defers the periodic tasks (every loop
        would, once per tick each, for nothing: procrastinate keeps one per tick)."""

        async def _periodic_deferrer(self) -> None:
            await asyncio.Event().wait()  # until the worker stops and cancels it

    async with app.open_async():
        loops = [(Worker if queue == QUEUE else PairLoop)(
                        app=app, queues=[queue], concurrency=1, wait=True,
                        name=f"{name}:{queue}" if name else None,
                        update_heartbeat_interval=max(0.5, stalled_after_s / 4),
                        stalled_worker_timeout=stalled_after_s,
                        delete_jobs="successful", install_signal_handlers=False)
                 for queue in queues]
        loop = asyncio.get_running_loop()

        def stop_all() -> None:
            log.info("stopping: finishing the jobs in hand")
            for worker in loops:
                worker.stop()  # type: ignore[no-untyped-call]

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_all)
        try:
            await asyncio.gather(*(worker.run() for worker in loops))  # type: ignore[no-untyped-call]
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def receiver_inbox(config: Config, store: StateStore) -> Any:
    """The inbox ``crmsync serve --no-worker`` stores into: each event with its job."""
    from .server.app import StoreInbox

    require_postgresql(config, "crmsync serve --no-worker")
    app = build_app(config.state_url())
    ensure_schema(store, app)
    pair = config.pair_name
    return StoreInbox(store,
                      on_stored=lambda conn, rows: defer_events(app, conn, rows, pair=pair))

