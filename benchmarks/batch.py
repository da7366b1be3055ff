"""Batch export benchmark: CRM -> MailUp import file on a local folder.

For 10k, 100k and 1M contacts: a full export, then a 1 % diff, each run in a fresh
process so peak RSS is that run's own. The floor is the same rows written by a bare
``csv.writer`` loop (no mapping, no state, no consent). The state floor adds to it the
rows a full export must make durable per contact (contact, id map, snapshot, journal
entry, fields hash), written by bare ``sqlite3`` into the same schema: the part of the
gap that per-contact state costs in any design. The CRM is a synthetic connector that
makes contacts on the fly, so the CRM's own storage is not counted.

    python benchmarks/batch.py                 # 10k, 100k, 1M
    python benchmarks/batch.py 10000 100000    # chosen sizes
    python benchmarks/batch.py --state postgresql+psycopg://user:pw@127.0.0.1/db 100000

With ``--state``, crmsync keeps its state in that database (emptied first: give it a
throw-away one) and the state floor is not measured (it is bare sqlite3).
"""

from __future__ import annotations

import csv
import json
import os
import resource
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
    """The csv.writer floor plus the rows a full export must make durable per contact
    (contact, id map, snapshot, journal entry, fields hash), written by bare sqlite3
    ``executemany`` into crmsync's own schema: what any design keeping per-contact
    state in SQLite pays before doing anything else."""
    import sqlite3
    import uuid

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
    start = time.perf_counter()
    rows = 0
    with (folder / "floor-state.csv").open("w", newline="") as out:
        writer = csv.writer(out, delimiter=";")
        writer.writerow(["111", "1", "2", "idList", "IdGroup"])
        for page in crm.read(None):
            keys = [f"{n:032x}" for n in range(rows, rows + len(page.records))]
            for c in page.records:
                writer.writerow([c.email, c.fields["FirstName"], c.fields["LastName"], "1",
                                 c.fields["Interests"]])
            recs = list(zip(keys, page.records, strict=True))
            db.executemany("INSERT INTO crmsync_contacts (key, email, deleted, updated_at) "
                           "VALUES (?, ?, 0, ?)", [(k, c.email, now) for k, c in recs])
            db.executemany("INSERT INTO crmsync_id_map VALUES (?, ?, ?)",
                           [("synthetic", c.ids["synthetic"], k) for k, c in recs])
            db.commit()
            db.executemany("INSERT INTO crmsync_snapshots VALUES (?, '1', 'subscribed', ?, "
                           "'subscribed', ?, ?, 'crm:synthetic')",
                           [(k, c.fields["Interests"], uuid.uuid4().hex, now) for k, c in recs])
            db.executemany("INSERT INTO crmsync_journal (at, run_id, contact_key, email, list_id,"
                           " new_status, applied_to, source) VALUES (?, 'r', ?, ?, '1', "
                           "'subscribed', 'esp', 'crm:synthetic')",
                           [(now, k, c.email) for k, c in recs])
            db.executemany("UPDATE crmsync_contacts SET fields_hash = ?, fields_json = ? "
                           "WHERE key = ?", [(uuid.uuid4().hex, "{}", k) for k, _ in recs])
            db.commit()
            rows += len(recs)
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


def main(sizes: list[int], state: str | None = None) -> None:
    header = (f"{'contacts':>9} {'run':>5} {'rows':>8} {'seconds':>8} {'rec/s':>9} "
              f"{'peak RSS MB':>11} {'floor s':>8} {'floor RSS':>9} {'x floor':>7} "
              f"{'state floor s':>13} {'x state floor':>13} {'full/diff':>9}")
    print(header)
    print("-" * len(header))
    for contacts in sizes:
        with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as tmp:
            folder = Path(tmp)
            (folder / "space").mkdir()
            (folder / "crmsync.toml").write_text(CONFIG.format(
                space=folder / "space", state=state or "sqlite:///state.db"))
            if state:
                _empty(state)
            full = measure("crmsync", folder, contacts, "full")
            diff = measure("crmsync", folder, contacts, "diff")
            state_floor = None if state else measure("state-floor", folder, contacts, "full")
            for phase, result in (("full", full), ("diff", diff)):
                floor = measure("floor", folder, contacts, phase)
                speedup = full["seconds"] / diff["seconds"] if phase == "diff" else float("nan")
                with_state = (f"{state_floor['seconds']:>13.2f} "
                              f"{result['seconds'] / state_floor['seconds']:>13.1f}"
                              if phase == "full" and state_floor else f"{'':>13} {'':>13}")
                print(f"{contacts:>9,} {phase:>5} {int(result['rows']):>8,} "
                      f"{result['seconds']:>8.2f} {result['read'] / result['seconds']:>9,.0f} "
                      f"{result['rss_mb']:>11.0f} {floor['seconds']:>8.2f} "
                      f"{floor['rss_mb']:>9.0f} {result['seconds'] / floor['seconds']:>7.1f} "
                      f"{with_state} {'' if phase == 'full' else f'{speedup:.0f}x':>9}",
                      flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(Path(__file__).parent))
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        args = sys.argv[1:]
        url = None
        if "--state" in args:
            at = args.index("--state")
            url = args[at + 1]
            del args[at:at + 2]
        main([int(arg) for arg in args] or [10_000, 100_000, 1_000_000], url)
