"""Many CRM ↔ ESP pairs in one deployment (``crmsync --pairs DIR``): each pair its own
configuration folder, secrets prefix, state and worker; webhooks routed by
``/hooks/<pair>/...``; one pair's vendor trouble never holds up another pair.

The servers and workers are the installed ``crmsync`` command, over real HTTP; the
state is SQLite (the embedded default) or one PostgreSQL database shared by the pairs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.config import load_pairs
from crmsync.emulator import free_port
from crmsync.runtime import build_connector, open_store
from crmsync.testing.memory import store

from .conftest import FIELDS, eventually, status_event, write_config

CRMSYNC = str(Path(sys.executable).with_name("crmsync"))
CONTACTS = [f"p{n}@example.com" for n in range(6)]
SECRETS = {"acme": "acme-hook-secret", "beta": "beta-hook-secret"}


def make_pair(root: Path, name: str, *, state: str = "sqlite:///state.db",
              latency_ms: int = 0, extra: str = "") -> Path:
    """``root/name/crmsync.toml`` on the in-memory CRM and ESP of that folder."""
    folder = root / name
    folder.mkdir(parents=True)
    crm = store(path=folder / "crm.json")
    for email in CONTACTS:
        crm.add(email, fields=dict(FIELDS))
    path = write_config(folder, state=state,
                        extra='[consent]\nresubscribe = "explicit_newer"\n' + extra)
    if latency_ms:  # the pair's CRM answers each write after latency_ms: a vendor in trouble
        crm_line = f'path = "{folder / "crm.json"}"'
        path.write_text(path.read_text().replace(
            crm_line, f"{crm_line}\nlatency_ms = {latency_ms}"))
    return path


def pair_env() -> dict[str, str]:
    """Each pair's endpoint secret under its own prefix, and an unprefixed one that must
    open no pair's endpoint."""
    return {**os.environ, "CRMSYNC_PLUGINS": "",
            "CRMSYNC_ACME_HOOK_SECRET_ESP": SECRETS["acme"],
            "CRMSYNC_BETA_HOOK_SECRET_ESP": SECRETS["beta"],
            "CRMSYNC_HOOK_SECRET_ESP": "the-unprefixed-secret"}


def prime(root: Path, name: str) -> None:
    """A first full run of one pair (``--pair``): the ESP and the id map know everyone."""
    result = CliRunner().invoke(cli, ["--pairs", str(root), "--pair", name, "sync", "--full"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def unsubscribe(email: str, event_id: str, at: datetime, status: str = "unsubscribed"
                ) -> dict[str, Any]:
    return status_event(email, status, at, event_id)


class Process:
    """A ``crmsync`` process; stopped with SIGTERM at the end."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path, args: list[str], *,
                 log: str) -> None:
        self.log_path = tmp / log
        handle = open(self.log_path, "wb")  # closed with the stack
        stack.callback(handle.close)
        self.proc = subprocess.Popen([CRMSYNC, *args], cwd=tmp, stdout=handle,
                                     stderr=subprocess.STDOUT, env=pair_env())
        stack.callback(self.stop)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve(stack: contextlib.ExitStack, tmp: Path, root: Path, *extra: str) -> httpx.Client:
    port = free_port()
    server = Process(stack, tmp, ["--pairs", str(root), "serve", "--port", str(port), *extra],
                     log=f"serve-{port}.log")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    stack.callback(http.close)

    def up() -> bool:
        assert server.proc.poll() is None, server.output()
        with contextlib.suppress(httpx.TransportError):
            return http.get("/healthz").status_code == 200
        return False

    assert eventually(up, timeout=60)
    return http


def opted_out(root: Path, name: str, email: str) -> bool:
    """What the pair's CRM holds: the address's OptOut field (its JSON file)."""
    records = json.loads((root / name / "crm.json").read_text())["records"]
    record = next(r for r in records.values() if r["email"] == email)
    return str(record["fields"].get("OptOut")).lower() == "true"


def list1_history(config: Any, email: str) -> list[str]:
    state = open_store(config)
    try:
        return [entry["new_status"] for entry in state.journal(email=email)
                if str(entry.get("list_id")) == "1" and entry.get("new_status")]
    finally:
        state.close()


def pending(config: Any) -> int:
    state = open_store(config)
    try:
        return state.inbox_pending_count()
    finally:
        state.close()


# -- configuration ------------------------------------------------------------------------

def test_a_pair_reads_its_secrets_under_its_own_prefix_and_never_another_pairs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name)
    (root / "beta" / "crmsync.toml").write_text(
        (root / "beta" / "crmsync.toml").read_text()
        + '\n[pair]\nsecrets_prefix = "CLIENT_B_"\n')
    monkeypatch.setenv("CRMSYNC_MAILUP_PASSWORD", "the-default-pairs-password")
    monkeypatch.setenv("CRMSYNC_ACME_MAILUP_PASSWORD", "acme-password")
    monkeypatch.setenv("CLIENT_B_MAILUP_PASSWORD", "beta-password")
    pairs = load_pairs(root)
    assert list(pairs) == ["acme", "beta"]

    def password(name: str) -> str:
        esp = build_connector("mailup", {"client_id": "c", "username": "m1"},
                              secrets=pairs[name].secrets())
        return esp.settings.password.get_secret_value()

    assert password("acme") == "acme-password"
    assert password("beta") == "beta-password"
    # a pair whose variable is not set reads nothing, not the unprefixed one
    monkeypatch.delenv("CRMSYNC_ACME_MAILUP_PASSWORD")
    assert password("acme") == ""
    # a pair's own secrets file holds the plain names
    (root / "acme" / "acme.secrets").write_text("CRMSYNC_MAILUP_PASSWORD=from-acme-file\n")
    path = root / "acme" / "crmsync.toml"
    path.write_text('secrets_file = "acme.secrets"\n' + path.read_text())
    assert build_connector("mailup", {"client_id": "c", "username": "m1"},
                           secrets=load_pairs(root)["acme"].secrets()
                           ).settings.password.get_secret_value() == "from-acme-file"


def test_commands_about_one_pair_say_which_pairs_there_are(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name)
    runner = CliRunner()
    result = runner.invoke(cli, ["--pairs", str(root), "sync"])
    assert result.exit_code == 2
    assert "this command is about one pair: pass --pair NAME" in result.output
    assert "acme, beta" in result.output
    result = runner.invoke(cli, ["--pairs", str(root), "--pair", "gamma", "status"])
    assert result.exit_code == 2
    assert "--pair gamma: there is no" in result.output and "acme, beta" in result.output
    result = runner.invoke(cli, ["--pairs", str(root), "--pair", "Bad Name!", "status"])
    assert result.exit_code == 2 and "pair name 'Bad Name!'" in result.output


def test_status_shows_every_pair_and_one_pair_in_full(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name)
    prime(root, "acme")
    runner = CliRunner()
    result = runner.invoke(cli, ["--pairs", str(root), "status", "--json"])
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.output)["pairs"]
    assert set(pairs) == {"acme", "beta"}
    assert pairs["acme"]["runs"][0]["status"] == "succeeded"
    assert pairs["beta"]["runs"] == []  # beta never ran: its state is its own
    result = runner.invoke(cli, ["--pairs", str(root), "status"])
    assert "acme" in result.output and "never run" in result.output
    one = json.loads(runner.invoke(cli, ["--pairs", str(root), "--pair", "acme", "--json",
                                         "status"]).output)
    assert one["pair"] == "acme" and one["lists"]["1"]["subscribed"] == len(CONTACTS)
    # each pair's state file is in its own folder
    assert (root / "acme" / "state.db").exists()


def test_a_pairs_batch_metrics_carry_its_pair_label(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    make_pair(root, "acme", extra='[metrics]\ntextfile = "metrics/crmsync.prom"\n')
    prime(root, "acme")
    text = (root / "acme" / "metrics" / "crmsync.prom").read_text()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('pair="acme"' in line for line in samples), samples[:3]


# -- the embedded default: SQLite, `crmsync --pairs DIR serve` ---------------------------

def test_webhooks_are_routed_per_pair_with_each_pairs_own_secret(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name)
        prime(root, name)
    at = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        http = serve(stack, tmp_path, root)
        email = CONTACTS[0]
        # another pair's secret, or the unprefixed one, opens nothing
        assert http.post(f"/hooks/beta/esp/{SECRETS['acme']}",
                         json=unsubscribe(email, "e1", at)).status_code == 401
        assert http.post("/hooks/acme/esp/the-unprefixed-secret",
                         json=unsubscribe(email, "e1", at)).status_code == 401
        assert http.post(f"/hooks/gamma/esp/{SECRETS['acme']}",
                         json=unsubscribe(email, "e1", at)).status_code == 404
        assert http.post(f"/hooks/acme/esp/{SECRETS['acme']}",
                         json=unsubscribe(email, "e1", at)).status_code == 200
        pairs = load_pairs(root)
        # the CRM is written first, then the decision committed, then the event done
        assert eventually(lambda: opted_out(root, "acme", email)
                          and pending(pairs["acme"]) == 0, timeout=30)
        assert list1_history(pairs["acme"], email) == ["subscribed", "unsubscribed"]
        metrics = http.get("/metrics").text
        assert 'crmsync_events_received_total{endpoint="esp",pair="acme"} 1.0' in metrics
        assert 'crmsync_events_received_total{endpoint="esp",pair="beta"}' not in metrics
        ready = http.get("/readyz").json()
        assert ready["ready"] and set(ready["pairs"]) == {"acme", "beta"}
    # the same address in the other pair was never touched
    assert not opted_out(root, "beta", email)
    assert list1_history(pairs["beta"], email) == ["subscribed"]


def test_a_pair_whose_vendor_hangs_does_not_hold_up_another_pair(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    make_pair(root, "acme", latency_ms=4000)  # acme's CRM takes 4 s per write
    make_pair(root, "beta")
    for name in ("acme", "beta"):
        prime(root, name)
    pairs = load_pairs(root)
    at = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        http = serve(stack, tmp_path, root)
        for n, email in enumerate(CONTACTS[:3]):
            assert http.post(f"/hooks/acme/esp/{SECRETS['acme']}",
                             json=unsubscribe(email, f"a{n}", at)).status_code == 200
        time.sleep(0.5)  # acme's worker is inside its slow CRM now
        started = time.monotonic()
        for n, email in enumerate(CONTACTS[:3]):
            assert http.post(f"/hooks/beta/esp/{SECRETS['beta']}",
                             json=unsubscribe(email, f"b{n}", at)).status_code == 200
        assert eventually(lambda: all(opted_out(root, "beta", e) for e in CONTACTS[:3]),
                          timeout=30)
        beta_took = time.monotonic() - started
        acme_left = pending(pairs["acme"])
        # beta's events were applied while acme's were still waiting for acme's CRM
        assert acme_left > 0, f"acme finished first: beta took {beta_took:.1f}s"
        assert beta_took < 3.5, beta_took
        assert eventually(lambda: pending(pairs["acme"]) == 0, timeout=60)
    assert all(opted_out(root, "acme", e) for e in CONTACTS[:3])


# -- PostgreSQL: receivers and workers for every pair over one database -------------------

def test_workers_serve_every_pair_of_one_database_in_order_and_isolated(
        tmp_path: Path, pg_url: str) -> None:
    pytest.importorskip("procrastinate")
    from sqlalchemy import create_engine, text

    root = tmp_path / "pairs"
    make_pair(root, "acme", state=pg_url, latency_ms=2500)
    make_pair(root, "beta", state=pg_url)
    for name in ("acme", "beta"):
        prime(root, name)
    pairs = load_pairs(root)
    start = datetime.now(UTC) - timedelta(minutes=5)
    with contextlib.ExitStack() as stack:
        http = serve(stack, tmp_path, root, "--no-worker")
        # acme: an unsubscribe for each of four contacts, behind a CRM taking 2.5 s a
        # write, queued before all of beta's
        for i, email in enumerate(CONTACTS[:4]):
            assert http.post(f"/hooks/acme/esp/{SECRETS['acme']}",
                             json=unsubscribe(email, f"a{i}", start)).status_code == 200
        # beta: each contact unsubscribed, back, unsubscribed again: the order must hold
        wanted = ["unsubscribed", "subscribed", "unsubscribed"]
        for n, status in enumerate(wanted):
            for i, email in enumerate(CONTACTS):
                at = start + timedelta(seconds=n, milliseconds=i)
                assert http.post(f"/hooks/beta/esp/{SECRETS['beta']}",
                                 json=unsubscribe(email, f"b{n}-{i}", at, status)
                                 ).status_code == 200
        workers = [Process(stack, tmp_path, ["--pairs", str(root), "worker"],
                           log=f"worker{n}.log") for n in range(2)]
        assert eventually(lambda: pending(pairs["beta"]) == 0, timeout=90), \
            workers[0].output()[-3000:]
        # beta's 18 events were all applied while acme's slow CRM still held some of its
        # four: two workers taking the oldest jobs first would have spent 5 s on acme's
        assert pending(pairs["acme"]) > 0
        assert eventually(lambda: pending(pairs["acme"]) == 0, timeout=90)
        for email in CONTACTS:
            assert list1_history(pairs["beta"], email) == ["subscribed", *wanted], email
        # the same addresses in acme: only acme's one event each
        assert list1_history(pairs["acme"], CONTACTS[0]) == ["subscribed", "unsubscribed"]
        assert list1_history(pairs["acme"], CONTACTS[4]) == ["subscribed"]
        codes = [worker.stop() for worker in workers]
        assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            schemas = set(conn.execute(text(
                "SELECT schema_name FROM information_schema.schemata")).scalars())
            queues = set(conn.execute(text(
                "SELECT DISTINCT queue_name FROM public.procrastinate_jobs "
                "WHERE task_name = 'crmsync.apply_event'")).scalars())
            public_tables = set(conn.execute(text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public'")).scalars())
    finally:
        engine.dispose()
    assert {"crmsync_acme", "crmsync_beta"} <= schemas
    assert "crmsync_inbox" not in public_tables  # no pair's state fell into public
    # successful jobs are deleted: what is left, if anything, is in the pairs' queues
    assert queues <= {"crmsync.acme", "crmsync.beta"}


def test_a_pair_moves_to_postgresql_into_its_own_schema(tmp_path: Path, pg_url: str) -> None:
    root = tmp_path / "pairs"
    make_pair(root, "acme")
    prime(root, "acme")
    result = CliRunner().invoke(cli, ["--pairs", str(root), "--pair", "acme",
                                      "migrate-state", "--to", pg_url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from crmsync.state import StateStore

    moved = StateStore(pg_url, schema="crmsync_acme")
    try:
        assert moved.status_counts()["1"]["subscribed"] == len(CONTACTS)
    finally:
        moved.close()


def test_a_pairs_console_resyncs_that_pair(tmp_path: Path, pg_url: str) -> None:
    """The console's Resync runs `crmsync sync` in a child process: for a pair it must be
    that pair (its schema, its secrets), not the file read as the default pair."""
    from tests.console.conftest import PASSWORD, Operator

    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name, state=pg_url)
    prime(root, "acme")
    port = free_port()
    with contextlib.ExitStack() as stack:
        os.environ["CRMSYNC_ACME_CONSOLE_PASSWORD"] = PASSWORD
        stack.callback(os.environ.pop, "CRMSYNC_ACME_CONSOLE_PASSWORD")
        console = Process(stack, tmp_path, ["--pairs", str(root), "--pair", "acme",
                                            "console", "--port", str(port)], log="console.log")
        op = Operator(f"http://127.0.0.1:{port}")

        def up() -> bool:
            assert console.proc.poll() is None, console.output()
            with contextlib.suppress(httpx.TransportError):
                return op.http.get("/healthz").status_code == 200
            return False

        assert eventually(up, timeout=60)
        assert op.login().status_code == 303
        go = op.post("/admin/resync", data={"csrf": op.csrf(), "mode": "full",
                                            "confirm": "yes"})
        assert go.status_code == 303
        acme = load_pairs(root)["acme"]

        def batch_runs(config: Any) -> list[dict[str, Any]]:
            state = open_store(config)
            try:
                return [r for r in state.runs(10) if r["mode"] == "batch"]
            finally:
                state.close()

        assert eventually(lambda: len(batch_runs(acme)) == 2
                          and batch_runs(acme)[0]["status"] == "succeeded", timeout=60), \
            op.get("/admin/resync/rows").text
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            public = conn.execute(text("SELECT to_regclass('public.crmsync_runs')")).scalar()
    finally:
        engine.dispose()
    assert public is None  # nothing ran as the default pair
    assert batch_runs(load_pairs(root)["beta"]) == []


def test_init_writes_a_new_pairs_folder_naming_its_prefixed_secrets(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    result = CliRunner().invoke(cli, ["--pairs", str(root), "--pair", "acme-eu", "init",
                                      "--connector", "salesforce", "--esp", "mailup"])
    assert result.exit_code == 0, result.output
    text = (root / "acme-eu" / "crmsync.toml").read_text()
    assert "set CRMSYNC_ACME_EU_MAILUP_PASSWORD" in text
    assert "set CRMSYNC_MAILUP_PASSWORD" not in text
    assert list(load_pairs(root)) == ["acme-eu"]


def test_an_event_stored_without_its_job_is_swept_into_its_pairs_queue(
        tmp_path: Path, pg_url: str) -> None:
    """An event that reached a pair's inbox with no job (stored by a plain `serve`,
    put back by `replay`) is found by the workers' sweep and applied in its pair."""
    pytest.importorskip("procrastinate")
    root = tmp_path / "pairs"
    for name in ("acme", "beta"):
        make_pair(root, name, state=pg_url)
        prime(root, name)
    pairs = load_pairs(root)
    email = CONTACTS[2]
    state = open_store(pairs["beta"])
    try:
        change = unsubscribe(email, "orphan", datetime.now(UTC))["changes"][0]
        from crmsync.model import Change

        assert state.inbox_put("esp", "orphan-1", [Change.model_validate(change)])
    finally:
        state.close()
    with contextlib.ExitStack() as stack:
        worker = Process(stack, tmp_path, ["-v", "--pairs", str(root), "worker"],
                         log="worker.log")
        assert eventually(lambda: opted_out(root, "beta", email), timeout=60), \
            worker.output()[-3000:]
        assert worker.stop() == 0
    assert list1_history(pairs["beta"], email) == ["subscribed", "unsubscribed"]
    assert list1_history(pairs["acme"], email) == ["subscribed"]
    assert "queued 1 inbox event(s) of pair beta that had no job" in worker.output()


def test_each_pairs_schedule_runs_in_that_pair_once_per_tick(tmp_path: Path,
                                                               pg_url: str) -> None:
    pytest.importorskip("procrastinate")
    root = tmp_path / "pairs"
    make_pair(root, "acme", state=pg_url, extra='[schedule]\nbatch = "* * * * * */2"\n'
                                                'poll = false\n')
    make_pair(root, "beta", state=pg_url, extra="[schedule]\npoll = false\n")
    result = CliRunner().invoke(cli, ["--pairs", str(root), "schedule"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("pair acme: run by `crmsync worker`")
    assert lines[1].startswith("crmsync.batch  * * * * * */2")
    assert lines[2].startswith("pair beta: nothing scheduled")
    pairs = load_pairs(root)

    def batch_runs(name: str) -> list[dict[str, Any]]:
        state = open_store(pairs[name])
        try:
            return sorted((r for r in state.runs(1000) if r["mode"] == "batch"),
                          key=lambda r: r["started_at"])
        finally:
            state.close()

    with contextlib.ExitStack() as stack:
        workers = [Process(stack, tmp_path, ["-v", "--pairs", str(root), "worker"],
                           log=f"worker{n}.log") for n in range(2)]
        assert eventually(lambda: len(batch_runs("acme")) >= 3, timeout=60)
        assert [w.stop() for w in workers] == [0, 0]
    runs = batch_runs("acme")
    logs = "".join(w.output() for w in workers)
    ticks = [line.split("for the tick of ")[1][:19] for line in logs.splitlines()
             if "for the tick of " in line]
    # two workers, one run per tick of acme's schedule; beta has none scheduled
    assert len(ticks) == len(runs) and len(set(ticks)) == len(ticks), ticks
    assert {run["status"] for run in runs} == {"succeeded"}
    assert batch_runs("beta") == []


def test_a_missing_secret_names_the_variable_of_its_pair(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from crmsync.errors import ConfigError

    root = tmp_path / "pairs"
    make_pair(root, "acme")
    monkeypatch.setenv("CRMSYNC_SUGARCRM_PASSWORD", "the default pair's")
    settings = {"flavour": "v4_1", "base_url": "http://127.0.0.1:9", "username": "admin"}
    with pytest.raises(ConfigError) as caught:
        build_connector("sugarcrm", settings, secrets=load_pairs(root)["acme"].secrets())
    assert ("settings.password: required, but not given: set CRMSYNC_ACME_SUGARCRM_PASSWORD "
            "in the environment or the secrets file") in str(caught.value)
