"""Kill `crmsync sync` with SIGKILL at several moments, run it again: the end state is the
one an uninterrupted run reaches, nothing is lost, nothing journaled twice."""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmsync.testing.memory import store

from ..core.conftest import write_config

CONTACTS = 1200


def _setup(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder)
    crm = store(path=folder / "crm.json")
    crm.seed(CONTACTS, seed=3)
    for number, record in enumerate(crm.records.values()):
        if number % 4 == 0:
            record["memberships"]["campaign:7"] = "Responded"
    crm.save()
    # the ESP already reported unsubscriptions: the run writes them back to the CRM first
    out = folder / "space" / "out"
    out.mkdir(parents=True)
    lines = ["email;list;date;reason"] + [
        f"contact3-{n}@example.com;1;2026-01-01T00:00:00+00:00;link" for n in range(0, 600, 2)]
    (out / "unsubscribed-1.csv").write_text("\n".join(lines) + "\n")
    return path


def _state_says(folder: Path, sql: str) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(folder / "state.db", timeout=0.05) as db:
            return db.execute(sql).fetchone() is not None
    except sqlite3.Error:
        return False


MOMENTS = {
    # the inbound file is staged, its rows not all written to the CRM yet
    "mid write-back": lambda f: _state_says(
        f, "select 1 from crmsync_files where name like 'in:%' and status = 'staged'"),
    # the import file is being written to the spool
    "mid export": lambda f: any((f / ".crmsync-spool").glob("import-*.csv")),
    # the import file is up, its snapshots not committed yet
    "after upload": lambda f: any((f / "space" / "in").glob("*.manifest.json")),
}


def _sync(config: Path, *, kill_when=None) -> bool:
    """Run a sync; with ``kill_when``, SIGKILL it the moment that condition holds.
    Returns whether it was killed before finishing."""
    process = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(config),
                                "--json", "sync"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    if kill_when is not None:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if kill_when(config.parent):
                process.send_signal(signal.SIGKILL)
                process.communicate(timeout=60)
                return True
            time.sleep(0.002)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err.decode()[-2000:]
    return False


def _uploaded(folder: Path) -> list[tuple[str, ...]]:
    rows = []
    for path in sorted((folder / "space" / "in").glob("import-*.csv")):
        reader = csv.reader(io.StringIO(path.read_text()), delimiter=";")
        next(reader)
        rows += [tuple(row[:4]) for row in reader]
    return rows


def _journal(config: Path) -> list[tuple[str, str, str]]:
    from crmsync.config import load_config
    from crmsync.runtime import open_store

    state = open_store(load_config(config))
    try:
        return [(e["email"], e["list_id"], e["new_status"]) for e in state.journal(limit=10**6)]
    finally:
        state.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    config = _setup(folder)
    _sync(config)
    crm = store(path=folder / "crm.json")
    crm._load()
    opted_out = sorted(r["email"] for r in crm.records.values()
                       if r["fields"].get("OptOut") == "true")
    return _uploaded(folder), _journal(config), opted_out


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_killed_run_resumes_to_the_same_end_state(tmp_path, reference, moment) -> None:
    config = _setup(tmp_path)
    assert _sync(config, kill_when=MOMENTS[moment]), f"the run ended before {moment}"
    _sync(config)  # the next run recovers and finishes
    rows, journal = _uploaded(tmp_path), _journal(config)
    expected_rows, expected_journal, expected_opted_out = reference
    crm = store(path=tmp_path / "crm.json")
    crm._load()
    assert sorted(r["email"] for r in crm.records.values()
                  if r["fields"].get("OptOut") == "true") == expected_opted_out
    assert len(expected_opted_out) == 300
    assert (tmp_path / "space" / "archive" / "unsubscribed-1.csv").exists()
    assert set(rows) == set(expected_rows), "the ESP would not end where it should"
    assert sorted(journal) == sorted(expected_journal), "a change was journaled twice or lost"
    # a further run has nothing left to send
    _sync(config)
    assert set(_uploaded(tmp_path)) == set(expected_rows)
    assert len(_journal(config)) == len(expected_journal)
