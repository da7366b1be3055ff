"""MailUp API calls for common workloads: per-recipient calls vs the bulk import.

    /work/venv/bin/python benchmarks/mailup_calls.py [--contacts 1000]

Runs the real connector against the emulator (rate limit off, no pacing) and counts the
HTTP requests the emulator received. "at 5/s" is how long those calls take at MailUp's
5 calls per second, the limit the connector paces itself to.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from crmsync.emulator import EmulatorServer
from crmsync.model import Change, Status, Subscription
from crmsync_mailup import MailUpConnector
from crmsync_mailup.emulator import MailUpEmulator


def calls(server: EmulatorServer) -> int:
    return sum(httpx.get(f"{server.url}/_emulator/requests").json().values())


def connector(server: EmulatorServer, **extra: Any) -> MailUpConnector:
    emulator = server.emulator
    assert isinstance(emulator, MailUpEmulator)
    profile = emulator.demo_profile()
    os.environ.update(profile["secrets"])
    settings = MailUpConnector.Settings.load("mailup", {
        **profile["settings"], "rate": 0, "import_poll_s": 0.01, **extra})
    return MailUpConnector(settings)


def changes(count: int, status: Status, prefix: str) -> list[Change]:
    groups = ("news", "offers")
    return [Change(email=f"{prefix}{n}@example.com", fields={"name": f"N{n}"},
                   subscriptions={"1": Subscription(
                       list_id="1", status=status,
                       groups=frozenset({groups[n % 2]}))}) for n in range(count)]


def measure(server: EmulatorServer, action: Callable[[], int]) -> tuple[int, int, float]:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    httpx.post(f"{server.url}/_emulator/config", json={"rate_limit": 0}).raise_for_status()
    before = time.monotonic()
    done = action()
    return done, calls(server), time.monotonic() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1000)
    n = parser.parse_args().contacts
    rows = []
    with EmulatorServer(MailUpEmulator(rate_limit=0)) as server:
        def write(threshold: int, status: Status) -> Callable[[], int]:
            def run() -> int:
                with connector(server, bulk_threshold=threshold) as mailup:
                    return sum(r.ok for r in mailup.write(changes(n, status, "w")))
            return run

        def read(page_size: int) -> Callable[[], int]:
            def run() -> int:
                emulator = server.emulator
                assert isinstance(emulator, MailUpEmulator)
                with emulator.lock:
                    emulator.seed(n, 1)
                httpx.delete(f"{server.url}/_emulator/requests")
                with connector(server, page_size=page_size) as mailup:
                    return sum(len(p.records) for p in mailup.read(None))
            return run

        for label, action in [
            (f"subscribe {n}, per recipient", write(10**9, Status.SUBSCRIBED)),
            (f"subscribe {n}, bulk import", write(0, Status.SUBSCRIBED)),
            (f"opt-out {n}, bulk import", write(0, Status.UNSUBSCRIBED)),
            (f"full read {n}, pageSize 20", read(20)),
            (f"full read {n}, pageSize 500", read(500)),
        ]:
            done, count, seconds = measure(server, action)
            rows.append((label, done, count, count / 5, seconds))
    print(f"{'workload':<34} {'ok':>6} {'calls':>7} {'at 5/s':>9} {'here':>7}")
    for label, done, count, at_rate, seconds in rows:
        print(f"{label:<34} {done:>6} {count:>7} {at_rate:>8.0f}s {seconds:>6.1f}s")


if __name__ == "__main__":
    main()
