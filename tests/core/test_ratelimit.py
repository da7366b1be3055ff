"""The rate limit shared by every process (crmsync.ratelimit, in PostgreSQL).

Real processes (``python -c``) call a real HTTP server on 127.0.0.1 through
``build_client`` / ``open_side``; the server records when each call ARRIVES, and the
tests read the rate off those times: the vendor's view, whatever the clients believe.
PostgreSQL comes from CRMSYNC_TEST_POSTGRES_URL (a fresh database per test).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer

from .conftest import fresh_postgres

pytestmark = pytest.mark.timeout(120)


# -- a server that records arrivals --------------------------------------------------------
class Recorder:
    """An ASGI app (or a wrapper round one) that notes ``(arrival, path, X-Proc)`` of each
    call; ``refuse(n)`` may answer the n-th call (from 0) with 429 and a Retry-After."""

    def __init__(self, inner: Any = None, *,
                 refuse: Callable[[int], float | None] | None = None) -> None:
        self.inner = inner
        self.refuse = refuse
        self.arrivals: list[tuple[float, str, str]] = []
        self.refused: list[float] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator/"):
            await self.inner(scope, receive, send)
            return
        now = time.monotonic()
        headers = dict(scope["headers"])
        with self._lock:
            number = len(self.arrivals)
            self.arrivals.append((now, scope["path"], headers.get(b"x-proc", b"").decode()))
        after = self.refuse(number) if self.refuse else None
        if after is not None:
            self.refused.append(now)
            await _answer(send, 429, b'{"error": "too many requests"}',
                          [(b"retry-after", str(after).encode())])
            return
        if self.inner is not None:
            await self.inner(scope, receive, send)
            return
        await _answer(send, 200, b'{"ok": true}')

    def times(self, proc: str | None = None) -> list[float]:
        return sorted(t for t, _path, who in self.arrivals if proc is None or who == proc)


async def _answer(send: Any, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def busiest_second(times: list[float]) -> int:
    """The most arrivals in any window of one second."""
    return max((sum(1 for t in times[i:] if t - start < 1.0)
                for i, start in enumerate(times)), default=0)


# -- worker processes -----------------------------------------------------------------------
CLIENT_WORKER = """
import sys
from crmsync.http import RetryPolicy, build_client, share_pacing
from crmsync.ratelimit import rate_limits

state, base, account, rate, calls, name = sys.argv[1:7]
limits = rate_limits(state)
with share_pacing(limits.pacer):
    client = build_client(base_url=base, rate=float(rate), account=account,
                          policy=RetryPolicy(attempts=3))
limits.paused(account)  # the table and the connection: ready before the start
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(calls)):
    client.get(f"/{name}/{n}", headers={"X-Proc": name}).raise_for_status()
"""

SIDE_WORKER = """
import sys
from crmsync.config import load_config
from crmsync.runtime import open_side

with open_side(load_config(sys.argv[1]), "esp") as esp:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        esp.api.lists()
"""


def run_together(commands: list[list[str]], *, env: dict[str, str] | None = None,
                 timeout: float = 90) -> None:
    """Start every process, wait until each says ready, let them all go at once; each
    must exit 0."""
    procs = [subprocess.Popen([sys.executable, "-c", *command], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})}) for command in commands]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.wait(timeout=10)
                raise AssertionError(f"a worker did not start: {proc.stderr.read()}")  # type: ignore[union-attr]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def pg() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[str]:
    server = EmulatorServer(recorder).start()
    try:
        yield server.url
    finally:
        server.stop()


# -- every worker on one account ------------------------------------------------------------
def _mailup_config(tmp_path: Path, state: str, profile: dict[str, Any],
                   rate: float) -> Path:
    settings = {**profile["settings"], "rate_per_s": rate}
    lines = "\n".join(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
                      for key, value in settings.items() if not isinstance(value, dict))
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "{state}"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp_path / 'crm.json'}"
[esp]
connector = "mailup"
[esp.settings]
{lines}
field_ids = {{ name = 1, surname = 2 }}
[fields]
FirstName = "name"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
""")
    return path


def test_workers_on_one_mailup_account_keep_its_rate_between_them(tmp_path: Path, pg: str) -> None:
    """Three processes open the MailUp side as `crmsync worker` does (open_side on a
    PostgreSQL state store) and call the console at once: MailUp sees the account's
    rate_per_s in all, not three times it."""
    mailup = pytest.importorskip("crmsync_mailup.emulator")
    emulator = mailup.MailUpEmulator(rate_limit=None)
    recorder = Recorder(emulator.app())
    rate, calls, workers = 4, 6, 3
    with recording(recorder) as url:
        emulator.base_url = url
        profile = emulator.demo_profile()
        config = _mailup_config(tmp_path, pg, profile, rate)
        run_together([[SIDE_WORKER, str(config), str(calls)]] * workers,
                     env=profile["secrets"])
    times = recorder.times()
    assert len(times) >= workers * (calls + 1)  # a token each, then the console calls
    assert busiest_second(times) <= rate + 1, times
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.9


def test_a_second_account_is_not_slowed_by_the_first(pg: str) -> None:
    recorder = Recorder()
    rate, calls = 5, 10
    with recording(recorder) as url:
        run_together([[CLIENT_WORKER, pg, url, "test:first", str(rate), str(calls), "a1"],
                      [CLIENT_WORKER, pg, url, "test:first", str(rate), str(calls), "a2"],
                      [CLIENT_WORKER, pg, url, "test:second", str(rate), str(calls), "b"]])
    first = recorder.times("a1") + recorder.times("a2")
    second = recorder.times("b")
    assert busiest_second(sorted(first)) <= rate + 1
    assert busiest_second(second) <= rate + 1
    # the second account's ten calls took their own 1.8 s, not a share of the first's 3.8 s
    assert second[-1] - second[0] < (calls - 1) / rate + 0.8, second
    assert max(first) - min(first) >= (2 * calls - 1) / rate * 0.9


def test_a_429_seen_by_one_process_pauses_the_others(pg: str) -> None:
    pause = 3
    recorder = Recorder(refuse=lambda n: pause if n == 4 else None)
    with recording(recorder) as url:
        run_together([[CLIENT_WORKER, pg, url, "test:shared", "10", "12", name]
                      for name in ("p1", "p2")])
    [refused] = recorder.refused
    # a call already waiting for its turn when the 429 came may still go (its token was
    # taken); after that nobody calls until the Retry-After is over
    during = [t - refused for t in recorder.times() if refused + 0.5 < t < refused + pause - 0.2]
    assert during == []
    after = [t for t in recorder.times() if t >= refused + pause - 0.2]
    assert {who for t, _path, who in recorder.arrivals if t in after} == {"p1", "p2"}
    assert len(recorder.arrivals) == 2 * 12 + 1


# -- the bucket itself ----------------------------------------------------------------------
def test_bucket_spacing_burst_and_pause(pg: str) -> None:
    from crmsync.ratelimit import RateLimits

    limits = RateLimits(pg)
    try:
        waits = [limits.take("unit:a", 10) for _ in range(3)]
        assert waits[0] == pytest.approx(0, abs=0.03)
        assert waits[1] == pytest.approx(0.1, abs=0.03)
        assert waits[2] == pytest.approx(0.2, abs=0.03)
        burst = [limits.take("unit:b", 10, burst=3) for _ in range(4)]
        assert burst[:3] == pytest.approx([0, 0, 0], abs=0.03)
        assert burst[3] == pytest.approx(0.1, abs=0.03)
        limits.pause("unit:c", 1.0)
        limits.pause("unit:c", 0.2)  # a shorter pause keeps the longer one
        assert limits.paused("unit:c") == pytest.approx(1.0, abs=0.05)
        assert limits.take("unit:c", 10) == pytest.approx(1.0, abs=0.05)
        assert limits.take("unit:c", 10) == pytest.approx(1.1, abs=0.05)
        assert limits.paused("unit:d") == 0.0
        assert limits.take("unit:d", 10) == pytest.approx(0, abs=0.03)
    finally:
        limits.close()


def test_without_the_database_a_process_paces_itself_and_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    from crmsync.ratelimit import RateLimits

    limits = RateLimits("postgresql+psycopg://crmsync:s3cret@127.0.0.1:9/nowhere",
                        connect_timeout_s=1)
    pacer = limits.pacer("unit:a", 20)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="crmsync.ratelimit"):
        for _ in range(4):
            pacer.wait()
        pacer.penalise(0.1)
    assert time.monotonic() - started >= 3 / 20 * 0.9  # paced locally
    [warning] = [r.getMessage() for r in caplog.records]
    assert "cannot reach PostgreSQL at postgresql+psycopg://crmsync:***@127.0.0.1:9" in warning
    assert "paces unit:a alone (20 calls/s)" in warning and "s3cret" not in warning
    assert "check [state] url" in warning
    limits.close()


# -- the account keys ------------------------------------------------------------------------
def test_each_connector_names_its_account_without_showing_it() -> None:
    from crmsync_mailup.settings import MailUpSettings
    from crmsync_salesforce._settings import SalesforceSettings
    from crmsync_sugarcrm.settings import SugarSettings
    from crmsync_vtiger._settings import VtigerSettings

    pairs = [
        (MailUpSettings(client_id="app-1", username="m12345"),
         MailUpSettings(client_id="app-1", username="m67890")),
        (SalesforceSettings(login_url="https://login.salesforce.com", username="ann@acme.com"),
         SalesforceSettings(login_url="https://login.salesforce.com", username="bob@bcme.com")),
        (SalesforceSettings(instance_url="https://acme.my.salesforce.com"),
         SalesforceSettings(organization_id="00D000000000001EAA")),
        (SugarSettings(base_url="https://crm.acme.com", username="m12345", password="p"),
         SugarSettings(base_url="https://crm.bcme.com", username="m12345", password="p")),
        (VtigerSettings(base_url="https://crm.acme.com", username="m12345", access_key="k"),
         VtigerSettings(base_url="https://crm.bcme.com", username="m12345", access_key="k")),
    ]
    for one, other in pairs:
        key, other_key = one.account_key(), other.account_key()
        assert key and other_key and key != other_key
        assert key.split(":")[0] == other_key.split(":")[0]
        assert key == type(one)(**one.model_dump()).account_key()  # stable
        for secretish in ("m12345", "ann@acme.com", "app-1", "acme", "00D"):
            assert secretish not in key


def test_a_state_url_no_engine_can_use_leaves_the_error_to_the_state_store(
        tmp_path: Path) -> None:
    """Opening a side does not fail on the limiter's account; the state store says what is
    wrong with the URL."""
    from crmsync.config import load_config
    from crmsync.errors import ConfigError
    from crmsync.runtime import open_side, open_store

    state = "postgresql+psycopg2://crmsync@127.0.0.1/none"  # a driver not installed
    path = _mailup_config(tmp_path, state, {"settings": {
        "base_url": "http://127.0.0.1:9/API", "client_id": "app", "username": "m1"}}, 5)
    config = load_config(path)
    with open_side(config, "esp") as esp:
        assert esp.name == "mailup"
    with pytest.raises(ConfigError, match=r"\[state\] url"):
        open_store(config)
