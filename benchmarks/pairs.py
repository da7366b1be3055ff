"""Many pairs: `crmsync --pairs DIR worker` processes applying several pairs' bursts
from one PostgreSQL database, and what one pair's slow vendor does to the others.

    CRMSYNC_TEST_POSTGRES_URL=postgresql+psycopg://crmsync:crmsync@127.0.0.1:5432/crmsync \\
    .venv/bin/python benchmarks/pairs.py [--pairs 4] [--workers 1,2,4] [--contacts 100] \\
        [--events-per-contact 4] [--latency-ms 50] [--slow-ms 1000] [--rounds 1]

For each worker count, twice, each in a fresh database: ``--pairs`` pairs (folders
``pairs/p0`` ...; one schema each in the database), each with its own in-memory CRM
answering a write after ``--latency-ms``, a first full run each; then one burst of ESP
events, every pair's at once (each contact's status alternating unsubscribed /
subscribed, so every event is journaled), stored in each pair's inbox with its jobs as
`crmsync --pairs DIR serve --no-worker` does, and applied by N `crmsync --pairs DIR
worker` processes. The second run is the same but pair p0's CRM takes ``--slow-ms`` per
write (a vendor in trouble): what matters is that the *other* pairs' throughput and
latency do not move.

Reported per run, for the pairs other than p0 (watched until their bursts are applied):
events/s, end-to-end p50 / p99 (stored to seen done, sampled every 50 ms); p0's events
not applied yet at that moment; and over every pair: contacts whose journal is not their
events in order (for p0, stopped midway: not a prefix of them), events of the watched
pairs not applied, journal entries beyond one per event.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scale_setup import (
    CONFIG,
    CRMSYNC,
    admin_url,
    aware,
    drop_database,
    fresh_database,
    journal_check,
    status_burst,
    stop_workers,
)
from sqlalchemy import text

from crmsync.config import load_pairs
from crmsync.runtime import open_store
from crmsync.scale import QUEUE, build_app, defer_events, ensure_schema, queue_of
from crmsync.testing.memory import reset_stores, store
from crmsync.testing.pairs import sync_once


def prepare(root: Path, url: str, *, pairs: int, contacts: int, events: int,
            latency_ms: float, slow_ms: float) -> dict[str, Any]:
    """The pairs' folders, each primed by a full run; each pair's burst (not stored)."""
    reset_stores()
    bursts: dict[str, Any] = {}
    for p in range(pairs):
        name = f"p{p}"
        folder = root / name
        folder.mkdir(parents=True)
        latency = slow_ms if (p == 0 and slow_ms) else latency_ms
        (folder / "crmsync.toml").write_text(CONFIG.format(url=url, tmp=folder,
                                                           latency=latency))
        crm = store(path=folder / "crm.json")
        emails = [f"c{n}@example.com" for n in range(contacts)]  # the same people in each pair
        for email in emails:
            crm.add(email, fields={"FirstName": "A", "OptOut": "false"})
        items, wanted = status_burst(emails, events, key=f"{name}-")
        bursts[name] = {"items": items, "wanted": wanted}
    for name, config in load_pairs(root).items():
        sync_once(config, full=True)  # primed before the slow vendor matters: p0 is slow
        bursts[name]["config"] = config
    return bursts


def run(admin_url: str, *, pairs: int, workers: int, contacts: int, events: int,
        latency_ms: float, slow_ms: float, timeout: float) -> dict[str, Any]:
    url, db = fresh_database(admin_url)
    procs: list[subprocess.Popen[bytes]] = []
    stores: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "pairs"
            bursts = prepare(root, url, pairs=pairs, contacts=contacts, events=events,
                             latency_ms=latency_ms, slow_ms=slow_ms)
            app = build_app(url)
            for name, burst in bursts.items():
                stores[name] = open_store(burst["config"])
            ensure_schema(next(iter(stores.values())), app)
            env = {**os.environ, "CRMSYNC_PLUGINS": ""}
            for n in range(workers):
                log = open(Path(folder) / f"worker{n}.log", "wb")  # noqa: SIM115
                procs.append(subprocess.Popen(
                    [CRMSYNC, "--pairs", str(root), "worker", "--stalled-after", "5"],
                    cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT))
                log.close()
            watcher = stores["p0"].engine.connect()
            loops = len({QUEUE, *(queue_of(name) for name in bursts)})  # per process
            while watcher.execute(text("SELECT count(*) FROM public.procrastinate_workers")
                                  ).scalar() < workers * loops:
                for n, proc in enumerate(procs):
                    if proc.poll() is not None:
                        tail = (Path(folder) / f"worker{n}.log").read_text()[-1500:]
                        raise SystemExit(f"worker {n} exited at start:\n{tail}")
                watcher.commit()
                time.sleep(0.1)
            watcher.commit()
            began = time.monotonic()
            # every pair's burst at once, interleaved in chunks as receivers would store it
            received: dict[str, dict[int, datetime]] = {name: {} for name in bursts}
            chunks = {name: [b["items"][i:i + 100] for i in range(0, len(b["items"]), 100)]
                      for name, b in bursts.items()}
            for step in range(max(len(c) for c in chunks.values())):
                for name, chunk_list in chunks.items():
                    if step < len(chunk_list):
                        stores[name].inbox_put_many(
                            chunk_list[step], on_stored=lambda conn, rows, pair=name:
                            defer_events(app, conn, rows, pair=pair))
            for name, state in stores.items():
                received[name] = {row["id"]: row["received_at"] for row in
                                  state.inbox_events(limit=len(bursts[name]["items"]))}
            seen: dict[str, dict[int, datetime]] = {name: {} for name in bursts}
            fast = [name for name in bursts if name != "p0"]  # the pairs watched
            fast_done_at = None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                now = datetime.now(UTC)
                for name in bursts:
                    left = [i for i in received[name] if i not in seen[name]]
                    if not left:
                        continue
                    for (event_id,) in watcher.execute(text(
                            f"SELECT id FROM crmsync_{name}.crmsync_inbox "
                            "WHERE status = 'done' AND id = ANY(:ids)"), {"ids": left}):
                        seen[name].setdefault(event_id, now)
                watcher.commit()
                if all(len(seen[n]) == len(received[n]) for n in fast):
                    # the watched pairs are done (a slow p0 would keep its loops busy long
                    # after: it is left where it is)
                    fast_done_at = time.monotonic()
                    break
                time.sleep(0.05)
            elapsed = (fast_done_at or time.monotonic()) - began
            watcher.close()
            stop_workers(procs)
            latencies = sorted((seen[n][i] - aware(received[n][i])).total_seconds()
                               for n in fast for i in seen[n])
            violations = lost = doubles = 0
            for name, burst in bursts.items():
                finished = name in fast  # p0, stopped midway: a prefix, in order
                if finished:
                    lost += len(received[name]) - len(seen[name])
                bad, extra = journal_check(stores[name], burst["wanted"], complete=finished)
                violations += bad
                doubles += extra
            fast_events = sum(len(seen[n]) for n in fast)
            slow_left = len(received["p0"]) - len(seen["p0"])
            return {"per_s": fast_events / elapsed, "p50": statistics.median(latencies),
                    "p99": latencies[int(len(latencies) * 0.99) - 1],
                    "violations": violations, "lost": lost, "doubles": doubles,
                    "events": sum(len(b["items"]) for b in bursts.values()),
                    "slow_left": slow_left}
    finally:
        stop_workers(procs)
        for state in stores.values():
            state.close()
        drop_database(admin_url, db)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--contacts", type=int, default=100)
    parser.add_argument("--events-per-contact", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--slow-ms", type=float, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    url = admin_url()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"{args.pairs} pairs x {args.contacts} contacts x {args.events_per_contact} events "
          f"= {args.pairs * args.contacts * args.events_per_contact} events per run; CRM "
          f"latency {args.latency_ms:g} ms; in the second run of each line pair p0's CRM "
          f"takes {args.slow_ms:g} ms a write")
    print("| workers | p0's CRM | other pairs: events/s | p50 s | p99 s | p0 events not "
          "applied then | order violations | lost | doubles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for workers in counts:
            for slow in (0.0, args.slow_ms):
                r = run(url, pairs=args.pairs, workers=workers, contacts=args.contacts,
                        events=args.events_per_contact, latency_ms=args.latency_ms,
                        slow_ms=slow, timeout=args.timeout)
                label = f"{slow:g} ms a write" if slow else f"{args.latency_ms:g} ms, as the others"
                print(f"| {workers} | {label} | {r['per_s']:.1f} | {r['p50']:.2f} | "
                      f"{r['p99']:.2f} | {r['slow_left']} | "
                      f"{r['violations']} | {r['lost']} | {r['doubles']} |", flush=True)


if __name__ == "__main__":
    main()
