"""The rate limit shared by every process (crmsync.ratelimit) against per-process pacing.

    CRMSYNC_TEST_POSTGRES_URL=postgresql+psycopg://crmsync:crmsync@127.0.0.1:5432/crmsync \\
    .venv/bin/python benchmarks/ratelimit.py [--rate 10] [--calls 20] [--processes 1,2,4] \\
        [--acquires 2000]

In a fresh database:

1. the cost of one acquire when no wait is due (a rate of a million calls/s): the
   in-process ``Pacer`` against the shared one (one ``INSERT ... ON CONFLICT`` round trip
   to PostgreSQL), and the shared one with no rate (only the 429 pause is read);
2. N processes each making ``--calls`` GET calls through ``build_client`` on ONE account
   at ``--rate`` calls/s to a local HTTP server that notes when each call arrives:
   the calls/s the server saw (all processes together) and its busiest second, per-process
   pacing ("local") against the shared limiter ("shared").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import create_engine, text

from crmsync.http import Pacer
from crmsync.ratelimit import RateLimits

WORKER = """
import sys
from crmsync.http import build_client, share_pacing
from crmsync.ratelimit import rate_limits

state, base, rate, calls, mode = sys.argv[1:6]
limits = rate_limits(state)
with share_pacing(limits.pacer if mode == "shared" else None):
    client = build_client(base_url=base, rate=float(rate), account="bench:one")
limits.paused("bench:one")
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(calls)):
    client.get(f"/{n}").raise_for_status()
"""


class Arrivals(BaseHTTPRequestHandler):
    times: list[float] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def busiest_second(times: list[float]) -> int:
    return max((sum(1 for t in times[i:] if t - start < 1.0)
                for i, start in enumerate(times)), default=0)


def acquire_costs(url: str, count: int) -> list[tuple[str, list[float]]]:
    limits = RateLimits(url)
    rows = []
    for name, pacer in [("local Pacer", Pacer(1e6)),
                        ("shared, rate set", limits.pacer("bench:cost", 1e6)),
                        ("shared, no rate (pause read)", limits.pacer("bench:cost", None))]:
        pacer.wait()  # the connection and the table
        costs = []
        for _ in range(count):
            started = time.perf_counter()
            pacer.wait()
            costs.append(time.perf_counter() - started)
        rows.append((name, costs))
    limits.close()
    return rows


def achieved(url: str, base: str, rate: float, calls: int, processes: int,
             mode: str) -> tuple[float, int]:
    Arrivals.times = []
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, base, str(rate), str(calls),
                               mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"a worker failed (exit {proc.returncode})")
    times = sorted(Arrivals.times)
    return (len(times) - 1) / (times[-1] - times[0]), busiest_second(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=20, help="calls per process")
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--acquires", type=int, default=2000)
    args = parser.parse_args()
    admin_url = os.environ.get("CRMSYNC_TEST_POSTGRES_URL")
    if not admin_url:
        raise SystemExit("set CRMSYNC_TEST_POSTGRES_URL to a PostgreSQL database crmsync "
                         "may create databases from")
    name = f"crmsync_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Arrivals)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        print(f"cost of one acquire ({args.acquires} acquires, no wait due)")
        print(f"{'pacer':<30} {'median':>10} {'p99':>10}")
        for label, costs in acquire_costs(url, args.acquires):
            costs.sort()
            p99 = costs[min(len(costs) - 1, int(len(costs) * 0.99))]
            print(f"{label:<30} {statistics.median(costs) * 1e6:>8.1f}us {p99 * 1e6:>8.1f}us")
        print()
        print(f"one account at {args.rate:g} calls/s, {args.calls} calls per process")
        print(f"{'processes':>9} {'pacing':>7} {'calls/s seen':>13} {'busiest second':>15}")
        for processes in [int(n) for n in args.processes.split(",")]:
            for mode in ("local", "shared"):
                seen, busiest = achieved(url, base, args.rate, args.calls, processes, mode)
                print(f"{processes:>9} {mode:>7} {seen:>13.2f} {busiest:>15}")
    finally:
        server.shutdown()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
