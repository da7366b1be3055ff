"""Rate limits shared by every crmsync process, kept in PostgreSQL.

A vendor's rate limit belongs to the vendor ACCOUNT (say 5 calls/s per account), not
to a process: N ``crmsync worker`` processes each pacing themselves to 5 calls/s send
5N. :class:`RateLimits` keeps one token bucket per account key in
``public.crmsync_rate_limits`` of the state database, and :class:`SharedPacer` is the
:class:`~crmsync.http.Pacer` that draws from it.

The bucket is kept as a "theoretical arrival time" (the GCRA form of a token bucket):
``next_at`` is when the bucket would be full again if every call so far had taken its
token in turn. A call takes its token in ONE statement (``INSERT ... ON CONFLICT DO
UPDATE ... RETURNING``, serialised by the row lock), on credit if need be, and is told
how long to wait for it; it then sleeps exactly that long (no polling, no second round
trip). Every time is PostgreSQL's ``clock_timestamp()``, so the processes share one clock
whatever their hosts' clocks say. With ``burst`` = 1 (the default) calls are spaced
1/rate apart, as :class:`~crmsync.http.Pacer` spaces them in one process.

``paused_until`` is the shared side of :meth:`Pacer.penalise`: a 429 with
``Retry-After`` seen by one process holds every process's next call on that account.

The table is not part of the state store's migrations (a pair's state tables may live
in a schema of its own): each process creates it once, ``CREATE TABLE IF NOT EXISTS``,
in ``public``, so pairs calling the same account share its bucket. It is UNLOGGED:
its rows are worth a few seconds (lost in a crash of the database, they start again
full), and no WAL flush at each commit halves the cost of a call's token.

PostgreSQL unreachable (or the table cannot be created): the pacer falls back to
pacing its own process, with one warning that says so, and tries the database again
after :data:`RETRY_DATABASE_S`. A vendor call is not failed for want of its pacing:
the state store fails on its own, with its own message, when the database is gone;
the vendor's own limit still holds (its 429 answers are retried with backoff).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .http import Pacer

__all__ = ["RETRY_DATABASE_S", "TABLE", "RateLimits", "SharedPacer", "rate_limits"]

log = logging.getLogger("crmsync.ratelimit")

TABLE = "public.crmsync_rate_limits"
#: after a failed database call, pace locally for this long before asking it again
RETRY_DATABASE_S = 10.0

_CREATE = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} (
    account      text PRIMARY KEY,
    next_at      double precision NOT NULL,
    paused_until double precision NOT NULL DEFAULT 0,
    taken_at     double precision NOT NULL DEFAULT 0
)"""

# ``:now`` is never sent: ``EXCLUDED.taken_at`` carries the statement's one reading of
# the clock into the UPDATE branch. ``taken_at`` is when this call's token is due:
# not before the pause ends, nor before ``next_at`` less the burst allowance.
_TAKE = text(f"""
INSERT INTO {TABLE} AS b (account, next_at, paused_until, taken_at)
SELECT :account, c.now + :interval, 0, c.now
  FROM (SELECT extract(epoch FROM clock_timestamp())::double precision AS now) AS c
ON CONFLICT (account) DO UPDATE SET
    taken_at = greatest(EXCLUDED.taken_at, b.paused_until, b.next_at - :allowance),
    next_at = greatest(b.next_at, EXCLUDED.taken_at, b.paused_until) + :interval
RETURNING taken_at - extract(epoch FROM clock_timestamp())::double precision""")

_PAUSED = text(f"""
SELECT paused_until - extract(epoch FROM clock_timestamp())::double precision
  FROM {TABLE} WHERE account = :account""")

_PAUSE = text(f"""
INSERT INTO {TABLE} AS b (account, next_at, paused_until)
SELECT :account, 0, extract(epoch FROM clock_timestamp())::double precision + :seconds
ON CONFLICT (account) DO UPDATE SET
    paused_until = greatest(b.paused_until, EXCLUDED.paused_until)""")


class RateLimits:
    """The buckets of one PostgreSQL database, reached through a small engine of its own
    (one or two connections, checked before use)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        from .state.store import _safe_url, _server_connect_args

        self.url = url
        self.where = _safe_url(url)
        args = _server_connect_args(url)
        if url.startswith("postgresql+psycopg"):
            args["connect_timeout"] = max(1, round(connect_timeout_s))
        self.engine: Engine = create_engine(
            url, pool_size=1, max_overflow=1, pool_pre_ping=True, pool_timeout=30,
            connect_args=args)
        self._ready = False
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False

    # -- the statements --------------------------------------------------------------------
    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(_CREATE))
            except DBAPIError as exc:
                # two processes creating it at the same instant: the loser's unique
                # violation on pg_type means the table is there
                if "already exists" not in str(exc) and "pg_type" not in str(exc):
                    raise
            self._ready = True

    def take(self, account: str, rate: float, *, burst: int = 1) -> float:
        """Take one token of ``account`` (``rate`` calls/s, ``burst`` at once at most):
        the seconds to wait before making the call (0: at once)."""
        interval = 1.0 / rate
        self._ensure_table()
        with self.engine.begin() as conn:
            wait = conn.execute(_TAKE, {"account": account, "interval": interval,
                                        "allowance": (max(1, burst) - 1) * interval}
                                ).scalar_one()
        return max(0.0, float(wait))

    def paused(self, account: str) -> float:
        """Seconds ``account`` is still paused for (0: not paused)."""
        self._ensure_table()
        with self.engine.begin() as conn:
            left = conn.execute(_PAUSED, {"account": account}).scalar()
        return max(0.0, float(left or 0.0))

    def pause(self, account: str, seconds: float) -> None:
        """Hold every process's next call on ``account`` for ``seconds`` (a 429's
        ``Retry-After``); a longer pause already set is kept."""
        self._ensure_table()
        with self.engine.begin() as conn:
            conn.execute(_PAUSE, {"account": account, "seconds": max(0.0, seconds)})

    # -- reaching the database -------------------------------------------------------------
    def reachable(self) -> bool:
        """False while the database is taken to be down (after a failure, for
        :data:`RETRY_DATABASE_S`)."""
        return time.monotonic() >= self._down_until

    def failed(self, exc: Exception, account: str, rate: float | None) -> None:
        """Note a failed database call: pace locally for a while, warn once per outage."""
        self._down_until = time.monotonic() + RETRY_DATABASE_S
        if self._warned:
            return
        self._warned = True
        pace = f"{rate:g} calls/s" if rate else "no rate"
        log.warning(
            "shared rate limit: cannot reach PostgreSQL at %s (%s: %s); this process now "
            "paces %s alone (%s) until the database answers again, so several workers may "
            "exceed that account's limit meanwhile (its 429 answers are retried): check "
            "[state] url and that the database is up, and that its user may CREATE TABLE "
            "in schema public", self.where, exc.__class__.__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "", account, pace)

    def recovered(self) -> None:
        if self._warned:
            self._warned = False
            log.warning("shared rate limit: PostgreSQL at %s answers again; pacing is "
                        "shared by every process again", self.where)

    def pacer(self, account: str, rate: float | None) -> SharedPacer:
        """The pacer of one client calling as ``account`` (the factory
        :func:`crmsync.http.share_pacing` takes)."""
        return SharedPacer(self, account, rate)

    def close(self) -> None:
        self.engine.dispose()


class SharedPacer(Pacer):
    """A :class:`~crmsync.http.Pacer` whose spacing and pauses are the account's, shared
    by every process through :class:`RateLimits`; its own (local) spacing while the
    database cannot be reached."""

    def __init__(self, limits: RateLimits, account: str, rate: float | None, *,
                 burst: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(rate, sleep=sleep)
        self.limits = limits
        self.account = account
        self.rate = rate or None
        self.burst = burst

    def wait(self) -> None:
        if not self.limits.reachable():
            super().wait()
            return
        try:
            if self.rate:
                delay = self.limits.take(self.account, self.rate, burst=self.burst)
            else:  # no pacing asked: only a pause set by a 429 holds the call
                delay = self.limits.paused(self.account)
        except SQLAlchemyError as exc:
            self.limits.failed(exc, self.account, self.rate)
            super().wait()
            return
        self.limits.recovered()
        if delay > 0:
            self._sleep(delay)

    def penalise(self, seconds: float) -> None:
        super().penalise(seconds)  # the local spacing too, should the database go away
        if not self.limits.reachable():
            return
        try:
            self.limits.pause(self.account, seconds)
        except SQLAlchemyError as exc:
            self.limits.failed(exc, self.account, self.rate)


_LIMITS: dict[str, RateLimits] = {}
_LIMITS_LOCK = threading.Lock()


def rate_limits(url: str) -> RateLimits:
    """The process's one :class:`RateLimits` for the database at ``url``."""
    with _LIMITS_LOCK:
        limits = _LIMITS.get(url)
        if limits is None:
            limits = _LIMITS[url] = RateLimits(url)
        return limits
