"""Batch export benchmark: CRM -> MailUp import file on a local folder.

For each size (10k, 100k, 1M contacts by default): a full export, then a 1 % diff, each
in a fresh process so peak RSS is that run's own, against two floors measured in the
same invocation, interleaved with crmsync's runs and repeated (``--repeat``, default 3):

- **CSV floor**: the same rows through a bare ``csv.writer`` loop (no mapping, no state);
- **state floor**: the CSV loop plus the bare SQL of the rows crmsync really writes per
  new contact (contact, id map, snapshot, journal entry, fields hash), one
  ``executemany`` per table per page of constant-shaped tuples, no other Python.

The table gives medians with the spread [min-max] in brackets, and the ratios of the
medians. The last line is the start-up cost of ``crmsync --version`` (every cron run
pays it) beside a bare ``python -c pass``. The CRM is a synthetic connector that makes
contacts on the fly, so the CRM's own storage is not counted.

    python benchmarks/batch.py                       # 10k, 100k, 1M; 3 repeats
    python benchmarks/batch.py 10000 100000 --repeat 5
    python benchmarks/batch.py --state postgresql+psycopg://user:pw@127.0.0.1/db 100000

With ``--state``, each repeat also runs crmsync with its state in that database
(emptied before each full run: give it a throw-away one), interleaved with the SQLite
runs; the extra rows say ``pg`` and the last column is that run's median over
SQLite's (the state floor stays bare SQLite).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from crmsync import (
    Capabilities,
    Change,
    Connector,
    ConnectorSettings,
    Contact,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Page,
    WriteResult,
)

BASE = datetime(2026, 1, 1, tzinfo=UTC)
PAGE = 2000


class SyntheticSettings(ConnectorSettings):
    contacts: int = 10_000
    changed_every: int = 100  # 1 % of contacts changed after the first run


class SyntheticCrm(Connector):
    """Contacts made from their index; a 1 % slice is "changed" after BASE + 1 day."""

    name: ClassVar[str] = "synthetic"
    Settings: ClassVar[type[ConnectorSettings]] = SyntheticSettings
    capabilities: ClassVar[Capabilities] = Capabilities(kind="crm", incremental_read=True)
    settings: SyntheticSettings

    def _contact(self, i: int, changed: bool) -> Contact:
        return Contact.model_construct(
            email=f"person{i}@example.com", ids={"synthetic": f"S{i:09d}"},
            fields={"FirstName": f"First{i}", "LastName": f"Last{i}{'x' if changed else ''}",
                    "OptOut": "true" if i % 50 == 0 else "false",
                    "Interests": "news;tech" if i % 3 == 0 else "news"},
            memberships={}, subscriptions={},
            modified_at=BASE + (timedelta(days=1, seconds=i) if changed else timedelta(seconds=i)),
            deleted=False, previous_email=None)

    def read(self, since: Cursor | None) -> Iterator[Page]:
        n, every = self.settings.contacts, self.settings.changed_every
        changed_phase = since is not None
        indices = range(0, n, every) if changed_phase else range(n)
        batch: list[Contact] = []
        for i in indices:
            batch.append(self._contact(i, changed_phase))
            if len(batch) == PAGE:
                yield Page.model_construct(records=batch, cursor=Cursor(
                    at=batch[-1].modified_at, tie_id=batch[-1].ids["synthetic"]))
                batch = []
        if batch:
            yield Page.model_construct(records=batch, cursor=Cursor(
                at=batch[-1].modified_at, tie_id=batch[-1].ids["synthetic"]))

    def check(self) -> Health:
        return Health(ok=True)

    def lists(self) -> list[MailingList]:
        return []

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        return [WriteResult(ok=True) for _ in changes]

    def decode_event(self, request: InboundRequest) -> list[Change]:
        return []


CONFIG = """
[state]
url = "{state}"
[crm]
connector = "synthetic"
[esp]
connector = "mailup"
mode = "files"
[esp.settings]
field_ids = {{ name = 1, surname = 2 }}
[files]
url = "file://{space}"
[fields]
FirstName = "name"
LastName = "surname"
[[lists]]
name = "Newsletter"
esp_list = 1
opt_out = "OptOut"
groups = {{ field = "Interests" }}
"""


def run_crmsync(folder: Path, contacts: int, phase: str) -> dict[str, float]:
    """One run in this process (called in a child): returns seconds, rows and RSS."""
    from crmsync.config import load_config
    from crmsync.runtime import build_batch, build_connector, open_store

    config = load_config(folder / "crmsync.toml")
    crm = SyntheticCrm(SyntheticCrm.Settings.load("synthetic", {"contacts": contacts}))
    esp = build_connector("mailup", config.esp.settings if config.esp else {})
    store = open_store(config)
    start = time.perf_counter()
    stats = build_batch(config, crm, esp, store).run(full=phase == "full")
    seconds = time.perf_counter() - start
    assert stats.status == "succeeded", stats
    return {"seconds": seconds, "rows": stats.esp_written, "read": stats.crm_read,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_floor(folder: Path, contacts: int, phase: str) -> dict[str, float]:
    """The same rows through a bare csv.writer loop: the floor."""
    crm = SyntheticCrm(SyntheticCrm.Settings.load("synthetic", {"contacts": contacts}))
    since = Cursor(at=BASE + timedelta(days=1)) if phase == "diff" else None
    start = time.perf_counter()
    rows = 0
    with (folder / f"floor-{phase}.csv").open("w", newline="") as out:
        writer = csv.writer(out, delimiter=";")
        writer.writerow(["111", "1", "2", "idList", "IdGroup"])
        for page in crm.read(since):
            for c in page.records:
                writer.writerow([c.email, c.fields["FirstName"], c.fields["LastName"], "1",
                                 c.fields["Interests"]])
                rows += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows, "read": rows,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_state_floor(folder: Path, contacts: int, phase: str) -> dict[str, float]:
    """The csv.writer floor plus the bare SQL of the rows crmsync writes per new contact
    (contact, id map, snapshot, journal entry, fields hash) into its own schema: one
    ``executemany`` per table and page, over tuples built inline, nothing else."""
    import sqlite3

    from crmsync.state import StateStore

    path = folder / "state-floor.db"
    for leftover in folder.glob("state-floor.db*"):
        leftover.unlink()
    StateStore(f"sqlite:///{path}").close()  # the same tables and indexes
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    crm = SyntheticCrm(SyntheticCrm.Settings.load("synthetic", {"contacts": contacts}))
    now = "2026-01-01 00:00:00.000000"
    digest = "0" * 32
    start = time.perf_counter()
    rows = 0
    with (folder / "floor-state.csv").open("w", newline="") as out:
        writer = csv.writer(out, delimiter=";")
        writer.writerow(["111", "1", "2", "idList", "IdGroup"])
        for page in crm.read(None):
            records = page.records
            for c in records:
                writer.writerow([c.email, c.fields["FirstName"], c.fields["LastName"], "1",
                                 c.fields["Interests"]])
            db.executemany("INSERT INTO crmsync_contacts (key, email, deleted, updated_at) "
                           "VALUES (?, ?, 0, ?)",
                           [(c.ids["synthetic"], c.email, now) for c in records])
            db.executemany("INSERT INTO crmsync_id_map VALUES ('synthetic', ?, ?)",
                           [(c.ids["synthetic"], c.ids["synthetic"]) for c in records])
            db.executemany("INSERT INTO crmsync_snapshots VALUES (?, '1', 'subscribed', ?, "
                           "'subscribed', ?, ?, 'crm:synthetic')",
                           [(c.ids["synthetic"], c.fields["Interests"], digest, now)
                            for c in records])
            db.executemany("INSERT INTO crmsync_journal (at, run_id, contact_key, email, list_id,"
                           " new_status, applied_to, source) VALUES (?, 'r', ?, ?, '1', "
                           "'subscribed', 'esp', 'crm:synthetic')",
                           [(now, c.ids["synthetic"], c.email) for c in records])
            db.executemany("UPDATE crmsync_contacts SET fields_hash = ?, fields_json = '{}' "
                           "WHERE key = ?", [(digest, c.ids["synthetic"]) for c in records])
            db.commit()
            rows += len(records)
    seconds = time.perf_counter() - start
    db.close()
    return {"seconds": seconds, "rows": rows, "read": rows,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


KINDS = {"crmsync": run_crmsync, "floor": run_floor, "state-floor": run_state_floor}


def child(kind: str, folder: str, contacts: int, phase: str) -> None:
    print(json.dumps(KINDS[kind](Path(folder), contacts, phase)))


def measure(kind: str, folder: Path, contacts: int, phase: str) -> dict[str, float]:
    env = dict(os.environ)
    for key, value in (("CRMSYNC_MAILUP_PASSWORD", "unused"),
                       ("CRMSYNC_MAILUP_CLIENT_SECRET", "unused")):
        env.setdefault(key, value)
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), str(contacts),
                          phase], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _empty(url: str) -> None:
    """Drop crmsync's tables from a benchmark's PostgreSQL database."""
    from sqlalchemy import create_engine

    from crmsync.state.schema import metadata

    engine = create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()


def _fresh(folder: Path, state: str | None) -> None:
    """An empty state store and file space for a full run."""
    for leftover in [*folder.glob("state.db*"), *folder.glob("spool*")]:
        if leftover.is_file():
            leftover.unlink()
    space = folder / "space"
    if space.exists():
        shutil.rmtree(space)
    space.mkdir()
    (folder / "crmsync.toml").write_text(CONFIG.format(space=space,
                                                       state=state or "sqlite:///state.db"))
    if state:
        _empty(state)


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def startup(repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``crmsync --version`` and of a bare ``python -c pass``, interleaved."""
    tool: list[float] = []
    bare: list[float] = []
    for _ in range(max(repeat, 5)):
        for argv, into in (([sys.executable, "-m", "crmsync", "--version"], tool),
                           ([sys.executable, "-c", "pass"], bare)):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            into.append(time.perf_counter() - start)
    return tool, bare


def main(sizes: list[int], state: str | None = None, repeat: int = 3) -> None:
    header = (f"{'contacts':>9} {'run':>4} {'rows':>9} {'crmsync s':>22} {'rec/s':>8} "
              f"{'RSS MB':>6} {'CSV floor s':>20} {'x CSV':>5} {'state floor s':>20} "
              f"{'x state':>7} {'full/diff':>9}")
    print(header)
    print("-" * len(header))
    for contacts in sizes:
        runs: dict[str, list[dict[str, float]]] = {
            k: [] for k in ("full", "diff", "floor-full", "floor-diff", "state-floor",
                            "pg-full", "pg-diff")}
        with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as tmp:
            folder = Path(tmp)
            for _ in range(repeat):  # interleaved: each repeat measures every kind once
                runs["floor-full"].append(measure("floor", folder, contacts, "full"))
                runs["state-floor"].append(measure("state-floor", folder, contacts, "full"))
                _fresh(folder, None)
                runs["full"].append(measure("crmsync", folder, contacts, "full"))
                runs["diff"].append(measure("crmsync", folder, contacts, "diff"))
                runs["floor-diff"].append(measure("floor", folder, contacts, "diff"))
                if state:
                    _fresh(folder, state)
                    runs["pg-full"].append(measure("crmsync", folder, contacts, "full"))
                    runs["pg-diff"].append(measure("crmsync", folder, contacts, "diff"))
        secs = {k: [r["seconds"] for r in v] for k, v in runs.items()}
        med = {k: statistics.median(v) for k, v in secs.items() if v}
        for phase in ("full", "diff"):
            result = runs[phase][0]
            floor = secs[f"floor-{phase}"]
            with_state = (f"{_cell(secs['state-floor']):>20} "
                          f"{med['full'] / med['state-floor']:>7.1f}"
                          if phase == "full" and secs["state-floor"] else f"{'':>20} {'':>7}")
            speedup = f"{med['full'] / med['diff']:.0f}x" if phase == "diff" else ""
            print(f"{contacts:>9,} {phase:>4} {int(result['rows']):>9,} {_cell(secs[phase]):>22} "
                  f"{result['read'] / med[phase]:>8,.0f} "
                  f"{max(r['rss_mb'] for r in runs[phase]):>6.0f} {_cell(floor):>20} "
                  f"{med[phase] / med[f'floor-{phase}']:>5.1f} {with_state} {speedup:>9}",
                  flush=True)
        for phase in ("pg-full", "pg-diff") if state else ():
            sqlite = phase[3:]
            print(f"{contacts:>9,} {sqlite:>4} {int(runs[phase][0]['rows']):>9,} "
                  f"{_cell(secs[phase]):>22} {runs[phase][0]['read'] / med[phase]:>8,.0f} "
                  f"{max(r['rss_mb'] for r in runs[phase]):>6.0f}  state in PostgreSQL: "
                  f"{med[phase] / med[sqlite]:.2f}x SQLite's median", flush=True)
    tool, bare = startup(repeat)
    print(f"start-up: crmsync --version {_cell(tool)} s, python -c pass {_cell(bare)} s "
          f"(medians [min-max] of {len(tool)})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(Path(__file__).parent))
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        parser = argparse.ArgumentParser(
            description="Batch export benchmark: crmsync's full and 1 % diff export "
                        "against a bare CSV loop and a bare-SQL state floor.")
        parser.add_argument("sizes", nargs="*", type=int, metavar="CONTACTS",
                            help="contact counts (default: 10000 100000 1000000)")
        parser.add_argument("--repeat", type=int, default=3,
                            help="interleaved repeats per size (default 3)")
        parser.add_argument("--state", metavar="URL",
                            help="crmsync's state store (default: SQLite in a temp folder)")
        args = parser.parse_args()
        main(args.sizes or [10_000, 100_000, 1_000_000], args.state, args.repeat)
