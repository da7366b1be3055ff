"""Real-time mode: webhook intake into the durable inbox, and end-to-end latency.

    /work/venv/bin/python benchmarks/realtime.py [--seconds 3] [--events 200]

1. Intake: ``crmsync serve``'s app runs in a child process (receive only, no worker)
   with the SQLite inbox; 1, 10 and 50 concurrent senders post authenticated webhooks
   (each a new event) for ``--seconds`` each and time every acknowledgement. The same
   app with an inbox that stores nothing is the floor; "x floor" is the ratio of
   events per second (floor / durable: 1.0 means storing costs nothing).
2. End to end: the whole service (app, worker) in this process on the in-memory
   connectors (zero latency); one sender posts an ESP unsubscribe at a time and
   waits until the CRM connector has written the opt-out: p50 / p99 of that delay.

Everything runs on 127.0.0.1. The senders speak plain keep-alive HTTP/1.1 over asyncio
in this process, which shares the CPUs with the server: on a small machine the floor is
also bounded by how fast the senders can send.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

SECRET = "bench-secret"
CONFIG = """
[state]
url = "sqlite:///state.db"

[crm]
connector = "memory"
[crm.settings]
store = "bench-crm"

[esp]
connector = "memory-esp"
[esp.settings]
store = "bench-esp"

[fields]
FirstName = "name"

[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"

[server]
poll = "never"
"""


def _write_config(folder: Path) -> Path:
    path = folder / "crmsync.toml"
    path.write_text(CONFIG)
    return path


def _event(n: int, prefix: str) -> dict[str, Any]:
    email = f"{prefix}{n}@example.com"
    return {"changes": [{"email": email, "event_id": f"{prefix}-{n}", "source": "bench",
                         "subscriptions": {"1": {"list_id": "1", "status": "unsubscribed",
                                                 "reason": "unsubscribe link"}}}]}


def _serve_child(folder: str, port: int, durable: bool) -> None:
    """The receiving server, alone in its process (no worker: intake only)."""
    import logging

    from crmsync.config import load_config
    from crmsync.runtime import open_side, open_store
    from crmsync.server import NullInbox, RealtimeService, serve

    logging.disable(logging.WARNING)
    config = load_config(Path(folder) / "crmsync.toml")
    store = open_store(config)
    service = RealtimeService(config, open_side(config, "crm"), open_side(config, "esp"),
                              store, inbox=None if durable else NullInbox(),
                              environ={"CRMSYNC_HOOK_SECRET_ESP": SECRET}, worker=False)
    serve(service, "127.0.0.1", port)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class _Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for the benchmark
    (a Python client library would be the bottleneck long before the server)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def _load(url: str, senders: int, seconds: float, prefix: str) -> tuple[int, list[float]]:
    import json

    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    host, port = url.removeprefix("http://").split(":")
    deadline = time.perf_counter() + seconds

    async def sender() -> None:
        nonlocal errors
        connection = _Connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                body = json.dumps(_event(next(counter), prefix)).encode()
                started = time.perf_counter()
                status = await connection.post(f"/hooks/esp/{SECRET}", body)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} webhook(s) were not acknowledged")
    return round(len(latencies) / elapsed), latencies


def _intake(folder: Path, durable: bool, levels: Sequence[int], seconds: float
            ) -> dict[int, tuple[int, float, float]]:
    from crmsync.emulator import free_port

    port = free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=_serve_child, args=(str(folder), port, durable), daemon=True)
    child.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not child.is_alive():
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.05)
    results = {}
    try:
        asyncio.run(_load(url, 4, 0.5, f"warm{int(durable)}-"))
        for senders in levels:
            rate, latencies = asyncio.run(_load(url, senders, seconds,
                                                f"d{int(durable)}s{senders}-"))
            results[senders] = (rate, _percentile(latencies, 0.5) * 1000,
                                _percentile(latencies, 0.99) * 1000)
    finally:
        child.terminate()
        child.join(10)
    return results


class _WatchedCrm:
    """Wakes the benchmark when the CRM connector has written an address."""

    def __init__(self) -> None:
        self.written: dict[str, float] = {}
        self.event = threading.Event()
        self.lock = threading.Lock()

    def wrap(self, crm: Any) -> Any:
        original = crm.write

        def write(changes: Any) -> Any:
            results = original(changes)
            now = time.perf_counter()
            with self.lock:
                for change in changes:
                    self.written.setdefault(change.email, now)
            self.event.set()
            return results

        crm.write = write
        return crm


def _end_to_end(folder: Path, events: int) -> tuple[float, float, float]:
    import logging

    from crmsync.config import load_config
    from crmsync.runtime import build_hooks, open_side, open_store
    from crmsync.server import RealtimeService, ServerThread
    from crmsync.testing.memory import store as memory_store

    logging.disable(logging.WARNING)
    config = load_config(_write_config(folder / "e2e"))
    crm_store = memory_store("bench-crm")
    for n in range(events):
        crm_store.add(f"e2e{n}@example.com", fields={"FirstName": f"E{n}", "OptOut": "false"})
    watch = _WatchedCrm()
    state = open_store(config)
    service = RealtimeService(config, watch.wrap(open_side(config, "crm")),
                              open_side(config, "esp"), state, hooks=build_hooks(config),
                              environ={"CRMSYNC_HOOK_SECRET_ESP": SECRET})
    service.worker.poll_once()  # the ESP and the id map know every contact
    delays = []
    with ServerThread(service) as server, httpx.Client(base_url=server.url) as client:
        for n in range(events):
            email = f"e2e{n}@example.com"
            started = time.perf_counter()
            response = client.post(f"/hooks/esp/{SECRET}", json=_event(n, "e2e"))
            response.raise_for_status()
            deadline = started + 10
            while email not in watch.written:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{email} was not written to the CRM within 10 s")
                watch.event.wait(0.5)
                watch.event.clear()
            delays.append(watch.written[email] - started)
    service.close()
    state.close()
    return (_percentile(delays, 0.5) * 1000, _percentile(delays, 0.99) * 1000,
            max(delays) * 1000)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    parser.add_argument("--events", type=int, default=200, help="end-to-end samples")
    args = parser.parse_args(argv)
    os.environ.setdefault("CRMSYNC_PLUGINS", "")
    os.environ.setdefault("CRMSYNC_CONNECTORS", "memory,memory-esp")
    levels = (1, 10, 50)
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as tmp:
        folder = Path(tmp)
        (folder / "durable").mkdir()
        (folder / "floor").mkdir()
        (folder / "e2e").mkdir()
        _write_config(folder / "durable")
        _write_config(folder / "floor")
        durable = _intake(folder / "durable", True, levels, args.seconds)
        floor = _intake(folder / "floor", False, levels, args.seconds)
        p50, p99, worst = _end_to_end(folder, args.events)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"crmsync serve, real time ({os.cpu_count()} CPUs, load average {load}, "
          f"127.0.0.1, {args.seconds:g} s per level)")
    print()
    header = (f"{'senders':>7} | {'inbox ev/s':>10} | {'ack p50 ms':>10} | {'ack p99 ms':>10} | "
              f"{'floor ev/s':>10} | {'floor p50':>9} | {'floor p99':>9} | {'x floor':>7}")
    print(header)
    print("-" * len(header))
    for senders in levels:
        rate, a50, a99 = durable[senders]
        frate, f50, f99 = floor[senders]
        print(f"{senders:>7} | {rate:>10} | {a50:>10.2f} | {a99:>10.2f} | {frate:>10} | "
              f"{f50:>9.2f} | {f99:>9.2f} | {frate / rate:>7.2f}")
    print()
    print(f"end to end, ESP unsubscribe webhook -> CRM written ({args.events} events, "
          f"one at a time): p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main()
