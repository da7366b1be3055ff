"""Scale-out on PostgreSQL: `crmsync serve --no-worker` receivers, `crmsync worker`
processes applying the shared inbox through procrastinate jobs.

Every test runs real worker processes (the installed ``crmsync`` command) over a fresh
PostgreSQL database; events arrive over real HTTP at a receiver-only service.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.config import Config, load_config
from crmsync.runtime import open_store
from crmsync.testing.memory import store
from crmsync.testing.pairs import serving_realtime

from .conftest import ESP_SECRET, FIELDS, eventually, status_event, write_config

pytest.importorskip("procrastinate")

CRMSYNC = str(Path(sys.executable).with_name("crmsync"))
CONTACTS = [f"c{n}@example.com" for n in range(12)]
EVENTS_PER_CONTACT = 6


class Deployment:
    """A receiver-only service over HTTP and `crmsync worker` processes, one database."""

    def __init__(self, tmp: Path, url: str, stack: contextlib.ExitStack, *,
                 server: str = "", extra: str = "") -> None:
        crm = store(path=tmp / "crm.json")
        for email in CONTACTS:
            crm.add(email, fields=dict(FIELDS))
        self.tmp = tmp
        # an explicit, newer opt-in may follow an unsubscribe: every event of a contact's
        # alternating sequence is journaled, so the journal shows the order applied
        self.path = write_config(tmp, state=url, server=server,
                                 extra='[consent]\nresubscribe = "explicit_newer"\n' + extra)
        # a vendor's latency (the CRM answers writes after 40 ms): applications overlap
        text = self.path.read_text().replace(
            f'path = "{tmp / "crm.json"}"', f'path = "{tmp / "crm.json"}"\nlatency_ms = 40')
        self.path.write_text(text)
        self.config: Config = load_config(self.path)
        self.state = open_store(self.config)
        stack.callback(self.state.close)
        from crmsync.scale import receiver_inbox

        environ = {"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}
        _, self.server = stack.enter_context(serving_realtime(
            self.config, environ=environ, worker=False,
            inbox=receiver_inbox(self.config, self.state)))
        import httpx

        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        stack.callback(self.http.close)
        self.workers: list[subprocess.Popen[bytes]] = []
        stack.callback(self.stop_workers)

    def post(self, payload: dict[str, Any]) -> int:
        return self.http.post(f"/hooks/esp/{ESP_SECRET}", json=payload).status_code

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")
        proc = subprocess.Popen([CRMSYNC, "--config", str(self.path), "worker", *extra],
                                cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "CRMSYNC_PLUGINS": ""})
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> list[int]:
        """SIGTERM every worker (once each has started: a worker still importing dies of
        the signal rather than stopping cleanly, with nothing taken yet); exit codes."""
        live = sum(proc.poll() is None for proc in self.workers)
        if live:
            with contextlib.suppress(AssertionError):
                eventually(lambda: _workers_up(self) >= live, timeout=60)
        codes = []
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def settled(self) -> bool:
        dead = [proc.args for proc in self.workers if proc.poll() not in (None, -9)]
        assert not dead, f"a worker ended on its own: {dead}"
        return self.state.inbox_pending_count() == 0

    def list1_history(self, email: str) -> list[str]:
        """The journaled statuses of ``email`` on list 1, in the order decided."""
        return [entry["new_status"] for entry in self.state.journal(email=email)
                if str(entry.get("list_id")) == "1" and entry.get("new_status")]


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        yield Deployment(tmp_path, pg_url, stack)


def sequence(email: str) -> list[str]:
    """Alternating, from unsubscribed (the first full read subscribed everyone)."""
    return ["unsubscribed" if n % 2 == 0 else "subscribed" for n in range(EVENTS_PER_CONTACT)]


def post_bursts(deployment: Deployment) -> dict[str, list[str]]:
    """Each contact's statuses, alternating, posted as one burst per contact (so that
    workers free to take the next job would apply a contact's events side by side)."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    wanted = {email: sequence(email) for email in CONTACTS}
    for i, email in enumerate(CONTACTS):
        for n in range(EVENTS_PER_CONTACT):
            at = start + timedelta(seconds=n, milliseconds=i)
            assert deployment.post(status_event(email, wanted[email][n], at,
                                                f"ev-{email}-{n}")) == 200
    return wanted


def test_worker_on_sqlite_says_why_and_what_to_do(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(path), "worker"])
    assert result.exit_code != 0
    first = result.output.strip().splitlines()[0]
    assert "crmsync worker needs [state] url on PostgreSQL" in first
    assert "run `crmsync serve` alone" in first


def test_serve_no_worker_on_sqlite_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(path), "serve", "--no-worker"])
    assert result.exit_code != 0
    assert "crmsync serve --no-worker needs [state] url on PostgreSQL" in result.output


def test_several_workers_apply_each_contacts_events_in_order(deployment: Deployment) -> None:
    wanted = post_bursts(deployment)
    for _ in range(3):
        deployment.start_worker()
    assert eventually(deployment.settled, timeout=60)
    for email, statuses in wanted.items():
        # the first full read's "subscribed", then each event's status, in order
        assert deployment.list1_history(email) == ["subscribed", *statuses], email
    assert deployment.state.dead_letters() == []
    assert deployment.stop_workers() == [0, 0, 0]


def applying(deployment: Deployment, status: str = "doing") -> int:
    """How many events a worker is applying right now (jobs ``doing``), or are queued."""
    from sqlalchemy import text

    with deployment.state.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = :status "
            "AND task_name = 'crmsync.apply_event'"), {"status": status}).scalar() or 0)


def test_a_worker_killed_mid_apply_loses_nothing_and_applies_nothing_twice(
        deployment: Deployment) -> None:
    # each application takes 400 ms at the CRM, so the kill lands inside one (at 150 ms
    # a loaded CI machine once let the job finish between seeing it and the kill)
    deployment.path.write_text(deployment.path.read_text().replace(
        "latency_ms = 40", "latency_ms = 400"))
    wanted = post_bursts(deployment)
    victim = deployment.start_worker("--stalled-after", "2")
    assert eventually(lambda: deployment.state.inbox_counts().get("done", 0) >= 5, timeout=30)
    assert eventually(lambda: applying(deployment), timeout=10, interval=0.002)
    victim.send_signal(signal.SIGKILL)  # in the middle of an application
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert applying(deployment) == 1  # its job is left "doing", its contact held
    survivor = deployment.start_worker("--stalled-after", "2")
    assert eventually(deployment.settled, timeout=60)
    # nothing lost (every event applied), nothing twice (each status journaled once),
    # in order: the killed worker's event went back to the queue, still its contact's
    # oldest, and applying it again changed nothing it had already committed
    for email, statuses in wanted.items():
        assert deployment.list1_history(email) == ["subscribed", *statuses], email
    assert deployment.state.dead_letters() == []
    assert deployment.state.inbox_counts() == {"done": len(CONTACTS) * EVENTS_PER_CONTACT}
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0
    log = (deployment.tmp / "worker1.log").read_text()
    assert "of a worker that died goes back to the queue" in log


def test_serve_no_worker_acknowledges_durably_and_leaves_applying_to_workers(
        deployment: Deployment) -> None:
    import httpx

    from crmsync.emulator import free_port

    port = free_port()
    log = (deployment.tmp / "receiver.log").open("wb")
    receiver = subprocess.Popen(
        [CRMSYNC, "--config", str(deployment.path), "serve", "--no-worker", "--port",
         str(port)], cwd=deployment.tmp, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "CRMSYNC_PLUGINS": "", "CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET})
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert receiver.poll() is None, (deployment.tmp / "receiver.log").read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert eventually(ready, timeout=30, interval=0.05)
        deployment.http = httpx.Client(base_url=url, timeout=10)
        wanted = post_bursts(deployment)  # every post answered 200
        receiver.send_signal(signal.SIGKILL)  # right after the last acknowledgement
        assert receiver.wait(timeout=10) == -signal.SIGKILL
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        log.close()
    total = len(CONTACTS) * EVENTS_PER_CONTACT
    # acknowledged = stored with its job; nothing applied by the receiver
    assert deployment.state.inbox_counts() == {"pending": total}
    assert applying(deployment) == 0
    assert applying(deployment, "todo") == total  # each with its job, same transaction
    assert all(deployment.list1_history(email) == ["subscribed"] for email in CONTACTS)
    deployment.start_worker()
    assert eventually(deployment.settled, timeout=60)
    for email, statuses in wanted.items():
        assert deployment.list1_history(email) == ["subscribed", *statuses], email


def test_a_batch_run_and_workers_on_the_same_contacts_go_side_by_side(
        deployment: Deployment) -> None:
    import threading

    from crmsync.runtime import open_side
    from crmsync.testing.pairs import sync_once

    # the ESP has everyone unsubscribed (its webhooks follow), the CRM changed everyone's
    # name with its opt-out still false: the batch run sends them all, slowly (the ESP
    # answers each write after 600 ms, one contact per write, two per CRM page)
    with open_side(deployment.config, "esp") as esp:
        for email in CONTACTS:
            esp.unsubscribe(email, "1")
    crm = store(path=deployment.tmp / "crm.json")
    for email in CONTACTS:
        crm.update(crm.by_email(email), fields={"FirstName": "Renamed"})
    text = deployment.path.read_text().replace(
        f'path = "{deployment.tmp / "esp.json"}"',
        f'path = "{deployment.tmp / "esp.json"}"\nlatency_ms = 600').replace(
        "latency_ms = 40", "latency_ms = 40\npage_size = 2")
    deployment.path.write_text(text + "\n[sync]\nbatch_size = 1\n")
    for _ in range(2):
        deployment.start_worker()
    assert eventually(lambda: _workers_up(deployment) == 2, timeout=60)

    result: dict[str, Any] = {}
    batch = threading.Thread(target=lambda: result.update(
        stats=sync_once(load_config(deployment.path))))
    batch.start()
    try:
        assert eventually(lambda: _batch_running(deployment), timeout=10)
        start = datetime.now(UTC)
        for n, email in enumerate(CONTACTS):
            assert deployment.post(status_event(email, "unsubscribed", start, f"u{n}")) == 200
        # the workers are not held back for the whole run: events are applied while
        # the batch run is still going (before: none until it ended)
        applied_during_run = 0
        while batch.is_alive():
            applied_during_run = deployment.state.inbox_counts().get("done", 0)
            time.sleep(0.05)
        assert applied_during_run >= len(CONTACTS) // 2, applied_during_run
    finally:
        batch.join(timeout=120)
    assert eventually(deployment.settled, timeout=30)
    assert result["stats"].status == "succeeded", result["stats"].stopped_reason
    assert result["stats"].esp_written >= len(CONTACTS)
    # consistent at the end: no unsubscribe lost, at the ESP or in crmsync's journal
    esp_store = store(path=deployment.tmp / "esp.json")
    for email in CONTACTS:
        assert deployment.list1_history(email)[-1] == "unsubscribed", email
        record = esp_store.records[esp_store.by_email(email)]
        assert record["lists"]["1"]["status"] == "unsubscribed", email
    assert deployment.state.dead_letters() == []


def _workers_up(deployment: Deployment) -> int:
    from sqlalchemy import text

    with deployment.state.engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass('procrastinate_workers')")).scalar() is None:
            return 0
        return int(conn.execute(text("SELECT count(*) FROM procrastinate_workers")).scalar()
                   or 0)


def _batch_running(deployment: Deployment) -> bool:
    return any(run["mode"] == "batch" and run["status"] == "running"
               for run in deployment.state.runs(limit=5))


def test_scheduled_batch_runs_once_per_tick_with_several_workers(
        tmp_path: Path, pg_url: str) -> None:
    with contextlib.ExitStack() as stack:
        deployment = Deployment(tmp_path, pg_url, stack,
                                extra='[schedule]\nbatch = "* * * * * */2"\npoll = false')
        result = CliRunner().invoke(cli, ["--config", str(deployment.path), "schedule"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].startswith("run by `crmsync worker` (once per tick")
        assert lines[1].startswith("crmsync.batch  * * * * * */2")
        assert len(lines) == 2  # polling is off
        for _ in range(3):
            deployment.start_worker("-v")
        assert eventually(lambda: len(_batch_runs(deployment)) >= 3, timeout=60)
        assert deployment.stop_workers() == [0, 0, 0]
        runs = _batch_runs(deployment)
        # three workers, one run per 2 s tick (its worker logs which): never two runs for
        # one tick, never two at once
        logs = "".join((tmp_path / f"worker{n}.log").read_text() for n in range(3))
        ticks = [line.split("for the tick of ")[1].split(":")[:3]
                 for line in logs.splitlines() if "for the tick of" in line]
        assert len(ticks) == len(runs)
        assert len({str(tick) for tick in ticks}) == len(ticks), ticks
        for earlier, later in itertools.pairwise(runs):
            assert earlier["finished_at"] <= later["started_at"], (earlier, later)
        assert {run["status"] for run in runs} == {"succeeded"}


def _batch_runs(deployment: Deployment) -> list[dict[str, Any]]:
    return sorted((run for run in deployment.state.runs(limit=1000) if run["mode"] == "batch"),
                  key=lambda run: run["started_at"])


def test_workers_poll_the_crm_on_schedule(tmp_path: Path, pg_url: str) -> None:
    with contextlib.ExitStack() as stack:
        deployment = Deployment(tmp_path, pg_url, stack,
                                server='poll = "always"\npoll_interval_s = 1')
        result = CliRunner().invoke(cli, ["--config", str(deployment.path), "schedule"])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[1].startswith("crmsync.poll   * * * * * */1")
        crm = store(path=tmp_path / "crm.json")
        crm.update(crm.by_email(CONTACTS[0]), fields={"OptOut": "true"})
        for _ in range(2):
            deployment.start_worker()
        assert eventually(lambda: deployment.list1_history(CONTACTS[0])[-1:]
                          == ["unsubscribed"], timeout=60)
        assert deployment.stop_workers() == [0, 0]


def test_schedule_on_sqlite_says_what_runs_instead(tmp_path: Path) -> None:
    path = write_config(tmp_path, server='poll = "always"')
    result = CliRunner().invoke(cli, ["--config", str(path), "schedule"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "state on SQLite: nothing is scheduled by crmsync; run `crmsync sync` from cron or "
        "a systemd timer (docs/batch.md); `crmsync serve` polls memory every 0.2s")
