"""Scale-out: `crmsync worker` processes applying one PostgreSQL inbox.

    CRMSYNC_TEST_POSTGRES_URL=postgresql+psycopg://crmsync:crmsync@127.0.0.1:5432/crmsync \\
    .venv/bin/python benchmarks/scale.py [--workers 1,2,4] [--contacts 100] \\
        [--events-per-contact 6] [--latency-ms 50] [--kill-every 2]

For each worker count, in a fresh database: the in-memory CRM answers each write after
``--latency-ms`` (a vendor's latency, which is what bounds a sync), a first full batch
run subscribes every contact, then a burst of ESP events (each contact's status
alternating unsubscribed / subscribed, an explicit newer opt-in, so that every event is
journaled) is stored in the inbox with its jobs, as `crmsync serve --no-worker` does,
and N `crmsync worker` processes, started before it, apply it. Reported: apply
throughput (events / s from the start of the burst to an empty inbox), end-to-end
latency p50 / p99 (stored to seen done, sampled every 50 ms), contacts whose journal is
not their events in order
("order violations"), events not applied ("lost") and journal entries beyond one per
event ("doubles"), and the CPU the workers and their PostgreSQL backends spent per event
(/proc, see scale_setup.py). With ``--kill-every S`` a last run with the largest worker count
SIGKILLs a random worker every S seconds during the burst and starts a new one.

Smaller than the issue's benchmark (20,000 events, 4 pairs, 8 workers): pairs are not
there yet, and the machine this was written on has 2 cores shared by 5 people.
"""

from __future__ import annotations

import argparse
from typing import Any

from scale_setup import admin_url, prepared, run_burst, start_workers


def one_run(admin_url: str, workers: int, args: argparse.Namespace,
            kill_every: float = 0.0) -> dict[str, Any]:
    with prepared(admin_url, contacts=args.contacts,
                  events_per_contact=args.events_per_contact,
                  latency_ms=args.latency_ms) as burst:
        # the workers are up (registered with procrastinate) before the burst
        start_worker = start_workers(burst, workers)
        row = run_burst(burst, timeout=args.timeout, kill_every=kill_every,
                        start_worker=start_worker)
    return {"workers": workers, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--contacts", type=int, default=100)
    parser.add_argument("--events-per-contact", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    url = admin_url()
    counts = [int(n) for n in args.workers.split(",")]
    rows = [one_run(url, n, args) for n in counts]
    if args.kill_every:
        rows.append(one_run(url, max(counts), args, kill_every=args.kill_every))
    base = rows[0]["per_s"] or 1.0
    print(f"{args.contacts} contacts x {args.events_per_contact} events, CRM latency "
          f"{args.latency_ms:g} ms, PostgreSQL state")
    print("| workers | kill -9 | events/s | x 1 worker | p50 s | p99 s | order violations "
          "| lost | doubles | CPU ms/event workers + PostgreSQL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        kill = f"{row['kills']} kills" if row["kills"] else "-"
        print(f"| {row['workers']} | {kill} | {row['per_s']:.1f} | "
              f"{row['per_s'] / base:.2f} | {row['p50']:.2f} | {row['p99']:.2f} | "
              f"{row['violations']} | {row['lost']} | {row['doubles']} | "
              f"{row['worker_ms']:.1f} + {row['pg_ms']:.1f} |")


if __name__ == "__main__":
    main()
