"""What benchmarks/scale.py and benchmarks/scale_floor.py share: a fresh database with a
first batch run done, a burst of ESP events stored in the inbox with their jobs, worker
processes, the watch until the inbox is empty, the order / lost / doubles check, and the
CPU the workers and their PostgreSQL backends spent meanwhile (from /proc).

Not a benchmark itself: imported by the two scripts (run from the repository root as
``python benchmarks/NAME.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from crmsync.config import load_config
from crmsync.model import Change
from crmsync.scale import build_app, defer_events, ensure_schema
from crmsync.state import StateStore
from crmsync.testing.memory import reset_stores, store
from crmsync.testing.pairs import sync_once

CRMSYNC = str(Path(sys.executable).with_name("crmsync"))

CONFIG = """
[state]
url = "{url}"

[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
latency_ms = {latency}

[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"

[fields]
FirstName = "name"

[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"

[consent]
resubscribe = "explicit_newer"

[server]
poll = "never"
retry_base_s = 0.2
retry_max_s = 2

[schedule]
poll = false
"""

_TICK = os.sysconf("SC_CLK_TCK")


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"crmsync_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{admin_url.rpartition('/')[0]}/{name}", name


def drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


@dataclass
class Burst:
    """A prepared run: the database, the configuration, the events to store."""

    admin_url: str
    url: str
    db_name: str
    folder: Path
    config_path: Path
    state: StateStore
    app: Any
    items: list[tuple[str, str, list[Change]]]
    wanted: dict[str, list[str]]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def prepared(admin_url: str, *, contacts: int, events_per_contact: int,
             latency_ms: float) -> Iterator[Burst]:
    """A fresh database where a first full batch run subscribed ``contacts`` people,
    and a burst of events (each contact's status alternating unsubscribed / subscribed,
    an explicit newer opt-in, so every event is journaled), not stored yet. Worker
    processes started with :func:`start_workers` are stopped and the database dropped
    at the end."""
    url, name = fresh_database(admin_url)
    burst = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            reset_stores()
            path = tmp / "crmsync.toml"
            path.write_text(CONFIG.format(url=url, tmp=tmp, latency=latency_ms))
            emails = [f"p{n}@example.com" for n in range(contacts)]
            crm = store(path=tmp / "crm.json")
            for email in emails:
                crm.add(email, fields={"FirstName": "A", "OptOut": "false"})
            sync_once(load_config(path), full=True)  # everyone subscribed, snapshots known
            state = StateStore(url)
            app = build_app(url)
            ensure_schema(state, app)
            items, wanted = status_burst(emails, events_per_contact)
            burst = Burst(admin_url, url, name, tmp, path, state, app, items, wanted)
            yield burst
    finally:
        if burst is not None:
            stop_workers(burst.procs)
            burst.state.close()
        drop_database(admin_url, name)


def start_workers(burst: Burst, count: int, command: list[str] | None = None, *,
                  env: dict[str, str] | None = None) -> Callable[[], subprocess.Popen[bytes]]:
    """Start ``count`` worker processes (``crmsync worker`` unless ``command``; ``env``
    added to the environment) and wait until each has registered with procrastinate;
    return how to start one more."""
    env = {**os.environ, "CRMSYNC_PLUGINS": "", **(env or {})}
    argv = command or [CRMSYNC, "--config", str(burst.config_path), "worker",
                       "--stalled-after", "2"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=burst.folder, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        burst.procs.append(proc)
        return proc

    for _ in range(count):
        start()
    while True:
        with burst.state.engine.connect() as conn:
            up = conn.execute(text("SELECT count(*) FROM procrastinate_workers")).scalar()
        if up and up >= count:
            return start
        if any(proc.poll() is not None for proc in burst.procs):
            raise RuntimeError(f"a worker exited at start: {argv}")
        time.sleep(0.1)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class CpuMeter:
    """CPU spent between :meth:`start` and :meth:`stop` by the worker processes and by
    the PostgreSQL backends of the benchmark's database (except the watcher's own
    connection), the whole machine's busy share meanwhile, and what of it was neither
    theirs nor this benchmark's (other work on a shared machine), in cores."""

    def __init__(self, burst: Burst, exclude_backend: int) -> None:
        self.burst = burst
        self.exclude = exclude_backend
        self.before: dict[int, float] = {}
        self.last: dict[int, float] = {}  # a worker's CPU just before it was killed
        self.workers = self.backends = 0.0
        self.machine_share = 0.0
        self.others_cores = 0.0
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._own = (0.0, 0.0, 0.0)  # this process, the watcher's backend, the clock

    def _backends(self, conn: Any) -> list[int]:
        return [pid for (pid,) in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
            if pid != self.exclude]

    def start(self, conn: Any) -> None:
        pids = [p.pid for p in self.burst.procs] + self._backends(conn)
        self.before = {pid: cpu_seconds(pid) for pid in pids}
        self._machine = machine_busy()
        self._own = (time.process_time(), cpu_seconds(self.exclude), time.monotonic())

    def stop(self, conn: Any) -> None:
        busy, total = machine_busy()
        self.machine_share = (busy - self._machine[0]) / max(1e-9, total - self._machine[1])
        for proc in self.burst.procs:  # killed ones count up to their death (lost: small)
            spent = self.last.get(proc.pid) or cpu_seconds(proc.pid)
            self.workers += spent - self.before.get(proc.pid, 0.0)
        for pid in self._backends(conn):  # a backend born meanwhile counts from 0
            self.backends += cpu_seconds(pid) - self.before.get(pid, 0.0)
        own = (time.process_time() - self._own[0]) + (cpu_seconds(self.exclude) - self._own[1])
        others = (busy - self._machine[0]) - self.workers - self.backends - own
        self.others_cores = max(0.0, others) / max(1e-9, time.monotonic() - self._own[2])


def run_burst(burst: Burst, *, timeout: float, kill_every: float = 0.0,
              start_worker: Callable[[], subprocess.Popen[bytes]] | None = None
              ) -> dict[str, Any]:
    """Store the burst (as ``crmsync serve --no-worker`` does: each event with its job),
    watch until every event is done (or ``timeout``), check the journals."""
    state = burst.state
    watcher = state.engine.connect()
    try:
        own = watcher.execute(text("SELECT pg_backend_pid()")).scalar()
        watcher.commit()
        meter = CpuMeter(burst, int(own or 0))
        meter.start(watcher)
        watcher.commit()
        began = time.monotonic()
        for chunk in range(0, len(burst.items), 200):
            state.inbox_put_many(burst.items[chunk:chunk + 200],
                                 on_stored=lambda conn, rows: defer_events(burst.app, conn, rows))
        total = len(burst.items)
        received = {row["id"]: row["received_at"] for row in state.inbox_events(limit=total)}
        seen: dict[int, datetime] = {}
        kills = 0
        next_kill = time.monotonic() + kill_every if kill_every else float("inf")
        deadline = time.monotonic() + timeout
        while len(seen) < total and time.monotonic() < deadline:
            now = datetime.now(UTC)
            for (event_id,) in watcher.execute(text(
                    "SELECT id FROM crmsync_inbox WHERE status = 'done' AND id = ANY(:ids)"),
                    {"ids": [i for i in received if i not in seen]}):
                seen.setdefault(event_id, now)
            watcher.commit()
            if time.monotonic() >= next_kill and len(seen) < total and start_worker:
                live = [p for p in burst.procs if p.poll() is None]
                victim = random.choice(live)
                meter.last[victim.pid] = cpu_seconds(victim.pid)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                start_worker()
                kills += 1
                next_kill = time.monotonic() + kill_every
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        meter.stop(watcher)
        watcher.commit()
    finally:
        watcher.close()
    latencies = sorted((seen[i] - aware(received[i])).total_seconds() for i in seen)
    violations, doubles = journal_check(state, burst.wanted)
    done = len(seen)
    return {"events": total, "seconds": elapsed,
            "per_s": done / elapsed if elapsed else 0.0,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
            "violations": violations, "lost": total - done, "doubles": doubles,
            "kills": kills,
            "worker_ms": 1000 * meter.workers / max(1, done),
            "pg_ms": 1000 * meter.backends / max(1, done),
            "machine_busy": meter.machine_share, "others_cores": meter.others_cores}


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def admin_url() -> str:
    """The PostgreSQL server the benchmarks make throw-away databases on."""
    url = os.environ.get("CRMSYNC_TEST_POSTGRES_URL")
    if not url:
        sys.exit("set CRMSYNC_TEST_POSTGRES_URL (a PostgreSQL the benchmark may create "
                 "databases on)")
    return url


def status_burst(emails: list[str], events_per_contact: int, *, key: str = ""
                 ) -> tuple[list[tuple[str, str, list[Change]]], dict[str, list[str]]]:
    """Each contact's status alternating unsubscribed / subscribed (an explicit newer
    opt-in, so every event is journaled), contacts shuffled within each round: the
    inbox items (event ids prefixed with ``key``) and each contact's statuses in order."""
    start = datetime.now(UTC) - timedelta(hours=1)
    items: list[tuple[str, str, list[Change]]] = []
    wanted: dict[str, list[str]] = {email: [] for email in emails}
    for n in range(events_per_contact):
        status = "unsubscribed" if n % 2 == 0 else "subscribed"
        at = (start + timedelta(seconds=n)).isoformat()
        for email in random.sample(emails, len(emails)):
            event_id = f"{key}{email}-{n}"
            items.append(("esp", event_id, [Change.model_validate({
                "email": email, "source": "memory-esp", "occurred_at": at,
                "event_id": event_id,
                "subscriptions": {"1": {"list_id": "1", "status": status, "changed_at": at,
                                        "explicit": status == "subscribed"}}})]))
            wanted[email].append(status)
    return items, wanted


def journal_check(state: StateStore, wanted: dict[str, list[str]], *,
                  complete: bool = True) -> tuple[int, int]:
    """(contacts whose journal on list 1 is not their events in order, journal entries
    beyond one per event). ``complete=False``: a run stopped midway, where each
    journal must be a prefix of the events, in order."""
    violations = doubles = 0
    for email, statuses in wanted.items():
        got = [e["new_status"] for e in state.journal(email=email)
               if e["list_id"] == "1"][1:]  # after the first run's "subscribed"
        if len(got) > len(statuses) and got[:len(statuses)] == statuses:
            doubles += len(got) - len(statuses)
        elif got != (statuses if complete else statuses[:len(got)]):
            violations += 1
    return violations, doubles
