"""The floor of scale-out: what N worker processes can do at best, beside `crmsync worker`.

    CRMSYNC_TEST_POSTGRES_URL=postgresql+psycopg://crmsync:crmsync@127.0.0.1:5432/crmsync \\
    .venv/bin/python benchmarks/scale_floor.py [--workers 1,2,4,8] [--rounds 3] \\
        [--contacts 100] [--events-per-contact 6] [--latency-ms 50]

The floor is the smallest worker that does only what is strictly required per event
(:func:`floor_worker`, run as ``scale_floor.py --floor-worker CONFIG``): a procrastinate
worker — the same procrastinate, the same PostgreSQL, the same job per event deferred
in the storing transaction with the same per-contact ``lock``, the same worker options —
whose job reads the inbox row, makes the one CRM write through the same connector with
the same latency, and in one transaction writes the status (the snapshot), one journal
row and marks the inbox row done. Plain psycopg, no consent rules, no contact lock
against batch runs, no retries, no rescue of a killed worker's jobs: everything
`crmsync worker` does beyond that is overhead measured by the difference.

Both run on the same burst as benchmarks/scale.py (scale_setup.py: a fresh database
after a first batch run, the burst stored with its jobs once the workers are up), for
each worker count, both programs (and any ``crmsync@DIR``: `crmsync worker` on
another revision's core/) one after the other, their order alternating from one
round to the next, ``--rounds`` times. Printed: per program and worker count, the
median and the spread (min-max) of events/s, of the speed-up over the same program's
one worker (its medians), and of the CPU per event of the workers, of their PostgreSQL
backends and of both (from /proc: utime + stime), with the whole machine's busy share
during the runs and the part of it that was other people's work on a shared machine
(cores: busy - workers - their backends - this benchmark), and any order
violation, lost event or double journal entry (each must be 0).

The arithmetic that decides: N workers can at best apply ``cores / CPU per event``
events per second once the CPU is saturated, and one worker applies about
``1 / (latency + time per event)``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scale_setup import admin_url, prepared, run_burst, start_workers
from sqlalchemy.exc import SQLAlchemyError

PROGRAMS = ("floor", "crmsync")


def floor_worker(config_path: str) -> None:
    """The floor: one procrastinate worker applying the inbox's events, nothing more."""
    import procrastinate
    import psycopg

    from crmsync.config import load_config
    from crmsync.model import Change
    from crmsync.runtime import open_side
    from crmsync.scale import APPLY_TASK, QUEUE, conninfo

    config = load_config(Path(config_path))
    url = conninfo(config.state_url())
    crm = open_side(config, "crm")  # the same connector and latency as crmsync's
    db = psycopg.connect(url)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name=APPLY_TASK, queue=QUEUE)
    def apply_event(event_id: int) -> None:
        with db.transaction():
            row = db.execute("SELECT contact, payload FROM crmsync_inbox "
                             "WHERE id = %s AND status = 'pending'", (event_id,)).fetchone()
        if row is None:
            return
        email, payload = row
        event = payload[0]
        status = event["subscriptions"]["1"]["status"]
        result = crm.write([Change(email=email, fields={
            "OptOut": "true" if status == "unsubscribed" else "false"})])[0]
        if not result.ok:
            raise RuntimeError(result.error)
        with db.transaction():
            old = db.execute(
                "UPDATE crmsync_snapshots s SET status = %s, changed_at = now() "
                "FROM crmsync_contacts c WHERE c.email = %s AND s.contact_key = c.key "
                "AND s.list_id = '1' RETURNING c.key, "
                "(SELECT status FROM crmsync_snapshots WHERE contact_key = c.key "
                "AND list_id = '1')", (status, email)).fetchone()
            assert old is not None
            db.execute(
                "INSERT INTO crmsync_journal (at, run_id, contact_key, email, list_id, "
                "old_status, new_status, applied_to, source, reason, event_id) VALUES "
                "(now(), '', %s, %s, '1', %s, %s, 'crm', 'memory-esp', 'floor', %s)",
                (old[0], email, old[1], status, event.get("event_id")))
            db.execute("UPDATE crmsync_inbox SET status = 'done', attempts = attempts + 1 "
                       "WHERE id = %s", (event_id,))

    with app.open():
        # the options crmsync.scale.run_worker gives `crmsync worker --stalled-after 2`
        app.run_worker(queues=[QUEUE], wait=True, update_heartbeat_interval=0.5,
                       stalled_worker_timeout=2, delete_jobs="successful",
                       install_signal_handlers=True)


def one_run(admin_url: str, program: str, workers: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    with prepared(admin_url, contacts=args.contacts,
                  events_per_contact=args.events_per_contact,
                  latency_ms=args.latency_ms) as burst:
        command, env = None, None
        if program == "floor":
            command = [sys.executable, str(Path(__file__).resolve()), "--floor-worker",
                       str(burst.config_path)]
        elif program != "crmsync":  # crmsync@DIR: the core/ of another revision
            env = {"PYTHONPATH": program.partition("@")[2]}
        start_workers(burst, workers, command, env=env)
        row = run_burst(burst, timeout=args.timeout)
    return {"program": program, "workers": workers, **row}


def _spread(values: list[float], digits: int = 1) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--programs", default=",".join(PROGRAMS),
                        help="floor, crmsync, and crmsync@DIR: `crmsync worker` running the "
                             "core/ in DIR (git archive REV core | tar -x -C ...; DIR is "
                             "its core/ folder), to measure a change in the same run")
    parser.add_argument("--contacts", type=int, default=100)
    parser.add_argument("--events-per-contact", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.floor_worker:
        floor_worker(args.floor_worker)
        return
    # SIGTERM: stop the workers and drop the database on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    url = admin_url()
    counts = [int(n) for n in args.workers.split(",")]
    programs = args.programs.split(",")
    rows: list[dict[str, Any]] = []
    for number in range(args.rounds):
        for workers in counts:
            order = programs if number % 2 == 0 else programs[::-1]
            for program in order:
                try:
                    row = one_run(url, program, workers, args)
                except SQLAlchemyError as exc:  # a shared PostgreSQL restarted: once more
                    print(f"round {number + 1}: {program} x{workers} failed ({exc!s:.200}); "
                          "again in 30 s", file=sys.stderr, flush=True)
                    time.sleep(30)
                    row = one_run(url, program, workers, args)
                rows.append(row)
                print(f"round {number + 1}: {program} x{workers}: {row['per_s']:.1f} ev/s, "
                      f"CPU {row['worker_ms']:.1f} + {row['pg_ms']:.1f} ms/event, machine "
                      f"{100 * row['machine_busy']:.0f}% busy, others "
                      f"{row['others_cores']:.2f} cores, violations / lost / doubles "
                      f"{row['violations']} / {row['lost']} / {row['doubles']}",
                      file=sys.stderr, flush=True)
    print(f"{args.contacts} contacts x {args.events_per_contact} events, CRM latency "
          f"{args.latency_ms:g} ms, {args.rounds} round(s), {os.cpu_count()} cores; "
          "median (min-max)")
    print("| program | workers | events/s | x own 1 worker | CPU ms/event workers | "
          "CPU ms/event PostgreSQL | CPU ms/event total | machine busy % | "
          "others' cores | violations / lost / doubles |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for program in programs:
        mine = [r for r in rows if r["program"] == program]
        base = statistics.median(r["per_s"] for r in mine if r["workers"] == counts[0])
        for workers in counts:
            runs = [r for r in mine if r["workers"] == workers]
            bad = [sum(r[k] for r in runs) for k in ("violations", "lost", "doubles")]
            print(f"| {program} | {workers} | {_spread([r['per_s'] for r in runs])} | "
                  f"{_spread([r['per_s'] / base for r in runs], 2)} | "
                  f"{_spread([r['worker_ms'] for r in runs])} | "
                  f"{_spread([r['pg_ms'] for r in runs])} | "
                  f"{_spread([r['worker_ms'] + r['pg_ms'] for r in runs])} | "
                  f"{_spread([100 * r['machine_busy'] for r in runs], 0)} | "
                  f"{_spread([r['others_cores'] for r in runs], 2)} | "
                  f"{bad[0]} / {bad[1]} / {bad[2]} |")


if __name__ == "__main__":
    main()
