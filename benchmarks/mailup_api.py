"""API-mode benchmark: crmsync's sync to MailUp's REST API against a naive script.

    python benchmarks/mailup_api.py                  # 10k unpaced, 300 at 5 calls/s, 3 repeats
    python benchmarks/mailup_api.py --contacts 10000 --paced-contacts 1000 --repeat 3

Both sides run against the same MailUp emulator served over real HTTP (OAuth, paging,
asynchronous imports that complete after the emulator's modelled number of polls):

- **crmsync**: a synthetic CRM (``benchmarks/batch.py``'s, 2 % opted out, groups from
  an ``Interests`` field) synced in API mode by the real engine and connector: a full
  run into an empty console, then a run after 1 % of the CRM changed (the ESP side is
  read since the full's cursor, as every real run does);
- **naive**: the same contacts through one ``POST /List/1/Recipient`` per contact (an
  upsert; an opted-out contact then gets ``DELETE /List/1/Unsubscribe/{id}``), as a
  simple per-recipient integration would, through the same paced, authenticated
  client, groups left out; its "diff" is the same calls for each changed contact.

Every configuration is measured once per repeat, interleaved, with the emulator's rate
limit off and at MailUp's 5 calls/s (the connector then paces itself to 5/s, and so
does the naive script); the paced runs use a smaller number of contacts (naive: one
call per contact at 5/s). The table gives wall-time medians [min-max] and the
emulator's request counts (per method and path template in ``--verbose``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from batch import SyntheticCrm
from crmsync.config import load_config
from crmsync.emulator import EmulatorServer
from crmsync.model import Cursor
from crmsync.runtime import build_batch, build_connector, open_store
from crmsync_mailup import MailUpConnector
from crmsync_mailup.emulator import MailUpEmulator
from crmsync_mailup.recipients import recipient_body

CONFIG = """
[state]
url = "sqlite:///{state}"
[crm]
connector = "synthetic"
[esp]
connector = "mailup"
mode = "api"
[esp.settings]
base_url = "{base_url}"
auth_url = "{auth_url}"
client_id = "{client_id}"
username = "{username}"
field_ids = {{ name = 1, surname = 2 }}
rate = {rate}
[fields]
FirstName = "name"
LastName = "surname"
[[lists]]
name = "Newsletter"
esp_list = 1
opt_out = "OptOut"
groups = {{ field = "Interests" }}
"""


def requests(server: EmulatorServer) -> Counter[str]:
    return Counter(httpx.get(f"{server.url}/_emulator/requests").json())


def fresh(server: EmulatorServer, rate: float) -> None:
    httpx.post(f"{server.url}/_emulator/reset").raise_for_status()
    httpx.post(f"{server.url}/_emulator/config", json={"rate_limit": rate}).raise_for_status()
    httpx.delete(f"{server.url}/_emulator/requests").raise_for_status()


def counted(server: EmulatorServer, action: Any) -> tuple[float, Counter[str]]:
    httpx.delete(f"{server.url}/_emulator/requests").raise_for_status()
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    return seconds, requests(server)


def crmsync_runs(server: EmulatorServer, folder: Path, contacts: int,
                 rate: float) -> list[tuple[float, Counter[str]]]:
    emulator = server.emulator
    assert isinstance(emulator, MailUpEmulator)
    profile = emulator.demo_profile()
    os.environ.update(profile["secrets"])
    for leftover in folder.glob("state.db*"):
        leftover.unlink()
    settings = profile["settings"]
    (folder / "crmsync.toml").write_text(CONFIG.format(
        state=folder / "state.db", base_url=settings["base_url"],
        auth_url=settings["auth_url"], client_id=settings["client_id"],
        username=settings["username"], rate=rate or 0))
    config = load_config(folder / "crmsync.toml")
    out = []
    for full in (True, False):
        crm = SyntheticCrm(SyntheticCrm.Settings.load("synthetic", {"contacts": contacts}))
        esp = build_connector("mailup", config.esp.settings if config.esp else {})
        store = open_store(config)
        try:
            stats: Any = None

            def run(full: bool = full, crm: Any = crm, esp: Any = esp,
                    store: Any = store) -> None:
                nonlocal stats
                stats = build_batch(config, crm, esp, store).run(full=full)
            out.append(counted(server, run))
            assert stats.status == "succeeded", stats
        finally:
            store.close()
            esp.close()
    return out


def naive_runs(server: EmulatorServer, contacts: int,
               rate: float) -> list[tuple[float, Counter[str]]]:
    emulator = server.emulator
    assert isinstance(emulator, MailUpEmulator)
    profile = emulator.demo_profile()
    os.environ.update(profile["secrets"])
    settings = MailUpConnector.Settings.load("mailup", {**profile["settings"],
                                                         "rate_per_s": rate or 0})
    crm = SyntheticCrm(SyntheticCrm.Settings.load("synthetic", {"contacts": contacts}))
    out = []
    with MailUpConnector(settings) as mailup:
        for since in (None, Cursor(at=crm._contact(0, False).modified_at)):
            def run(since: Cursor | None = since) -> None:
                for page in crm.read(since):
                    for c in page.records:
                        body = recipient_body(c.email, {"name": c.fields["FirstName"],
                                                        "surname": c.fields["LastName"]},
                                              {"name": 1, "surname": 2})
                        rid = mailup.api.subscribe("1", body, confirm=False)
                        if c.fields["OptOut"] == "true":
                            mailup.api.unsubscribe("1", rid)
            out.append(counted(server, run))
    return out


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000,
                        help="contacts with the rate limit off (default 10000)")
    parser.add_argument("--paced-contacts", type=int, default=300,
                        help="contacts at 5 calls/s (default 300)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="calls per path template")
    args = parser.parse_args()
    configs = [(0.0, args.contacts), (5.0, args.paced_contacts)]
    seconds: dict[tuple[float, str, str], list[float]] = {}
    calls: dict[tuple[float, str, str], Counter[str]] = {}
    with tempfile.TemporaryDirectory(prefix="crmsync-api-") as tmp, \
            EmulatorServer(MailUpEmulator(rate_limit=0)) as server:
        for _ in range(args.repeat):
            for rate, n in configs:
                for who in ("crmsync", "naive"):
                    fresh(server, rate)
                    runs = (crmsync_runs(server, Path(tmp), n, rate) if who == "crmsync"
                            else naive_runs(server, n, rate))
                    for phase, (secs, counter) in zip(("full", "diff"), runs, strict=True):
                        seconds.setdefault((rate, who, phase), []).append(secs)
                        calls[(rate, who, phase)] = counter
    header = (f"{'rate':>7} {'contacts':>8} {'run':>4} {'crmsync s':>20} {'calls':>6} "
              f"{'naive s':>20} {'calls':>6} {'x naive':>7} {'diff/full calls':>15}")
    print(header)
    print("-" * len(header))
    for rate, n in configs:
        for phase in ("full", "diff"):
            ours, theirs = seconds[(rate, "crmsync", phase)], seconds[(rate, "naive", phase)]
            ours_calls = sum(calls[(rate, "crmsync", phase)].values())
            share = ""
            if phase == "diff":
                share = f"{ours_calls / sum(calls[(rate, 'crmsync', 'full')].values()):.1%}"
            print(f"{'off' if not rate else f'{rate:g}/s':>7} {n:>8,} {phase:>4} "
                  f"{cell(ours):>20} {ours_calls:>6} {cell(theirs):>20} "
                  f"{sum(calls[(rate, 'naive', phase)].values()):>6} "
                  f"{statistics.median(ours) / statistics.median(theirs):>7.2f} {share:>15}")
    print(f"(medians [min-max] of {args.repeat} interleaved runs; calls = requests the "
          "emulator received, last repeat)")
    if args.verbose:
        for key, counter in sorted(calls.items()):
            print(key, dict(counter.most_common()))


if __name__ == "__main__":
    main()
