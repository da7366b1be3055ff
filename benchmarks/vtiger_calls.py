"""API calls to read 100k vTiger contacts and write 10k opt-outs: crmsync vs per-record.

    python benchmarks/vtiger_calls.py [--contacts 100000] [--optouts 10000] [--sample 2000]

Runs against the vTiger emulator on 127.0.0.1 and counts the webservice calls the
emulator received (login included). crmsync is measured at full size. The naive
per-record client (list ids with VTQL, then ``retrieve`` each; ``query`` each address,
then ``update`` the row it got) makes one or two calls per record whatever the size, so
it is measured on ``--sample`` records and scaled linearly, as the table says, to keep
the run under three minutes. Prints one table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time

import httpx

from crmsync.emulator import EmulatorServer
from crmsync.model import Change
from crmsync_vtiger import VtigerConnector
from crmsync_vtiger.emulator import ADMIN_KEY, VtigerEmulator


def calls(emulator: VtigerEmulator) -> int:
    return sum(emulator.requests.values())


def connector_for(emulator: VtigerEmulator) -> VtigerConnector:
    profile = emulator.demo_profile()
    os.environ.update(profile["secrets"])
    return VtigerConnector(VtigerConnector.Settings.load("vtiger", profile["settings"]))


def optout_emails(count: int, seeded: int) -> list[str]:
    """Addresses of seeded contacts that are not opted out yet (every 7th already is)."""
    eligible = (f"contact0-{n}@example.com" for n in range(seeded) if n % 7 != 6)
    return [email for email, _ in zip(eligible, range(count), strict=False)]


class NaiveClient:
    """What a first vTiger integration usually does: one record per call."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        token = self.get(operation="getchallenge", username="admin")["token"]
        digest = hashlib.md5((token + ADMIN_KEY).encode()).hexdigest()
        self.session = self.post(operation="login", username="admin",
                                 accessKey=digest)["sessionName"]

    def get(self, **params: str) -> object:
        return self.http.get("/webservice.php", params=params).json()["result"]

    def post(self, **form: str) -> dict[str, str]:
        result = self.http.post("/webservice.php", data=form).json()["result"]
        assert isinstance(result, dict)
        return result

    def read_all(self) -> int:
        offset, count = 0, 0
        while True:
            ids = self.get(operation="query", sessionName=self.session,
                           query=f"select id from Contacts limit {offset},100;")
            assert isinstance(ids, list)
            for row in ids:
                self.get(operation="retrieve", sessionName=self.session, id=row["id"])
                count += 1
            if len(ids) < 100:
                return count
            offset += 100

    def opt_out(self, email: str) -> None:
        rows = self.get(operation="query", sessionName=self.session,
                        query=f"select * from Contacts where email = '{email}';")
        assert isinstance(rows, list)
        for row in rows:
            self.post(operation="update", sessionName=self.session,
                      element=json.dumps({**row, "emailoptout": "1"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--optouts", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=2_000,
                        help="records the naive client is measured on (then scaled)")
    args = parser.parse_args()
    started = time.monotonic()
    rows = []

    emulator = VtigerEmulator(contacts=args.contacts)
    with EmulatorServer(emulator) as server:
        connector = connector_for(emulator)
        before = calls(emulator)
        read = sum(len(page.records) for page in connector.read(None))
        crmsync_read = calls(emulator) - before
        assert read == args.contacts, read
        before = calls(emulator)
        results = connector.write([Change(email=e, fields={"emailoptout": "true"})
                                   for e in optout_emails(args.optouts, args.contacts)])
        crmsync_write = calls(emulator) - before
        assert len(results) == args.optouts and all(r.ok for r in results)
        connector.close()
        del server

    sample = min(args.sample, args.contacts)
    emulator = VtigerEmulator(contacts=sample)
    with EmulatorServer(emulator) as server:
        naive = NaiveClient(server.url)
        login = calls(emulator)  # the two login calls are not per record: not scaled
        assert naive.read_all() == sample
        naive_read = login + (calls(emulator) - login) * args.contacts / sample
        before = calls(emulator)
        emails = optout_emails(args.optouts, sample)
        writes = len(emails)
        for email in emails:
            naive.opt_out(email)
        naive_write = (calls(emulator) - before) * args.optouts / writes

    scale_read = f"crmsync at {args.contacts:,}; naive on {sample:,}, x{args.contacts / sample:g}"
    scale_write = f"crmsync at {args.optouts:,}; naive on {writes:,}, x{args.optouts / writes:.2f}"
    rows.append((f"read {args.contacts:,} contacts", crmsync_read, naive_read, scale_read))
    rows.append((f"write {args.optouts:,} opt-outs", crmsync_write, naive_write, scale_write))

    header = ("task", "crmsync calls", "naive calls", "naive / crmsync", "measured")
    table = [header] + [(task, f"{ours:,}", f"{math.ceil(theirs):,}", f"{theirs / ours:.1f}x",
                         how) for task, ours, theirs, how in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))
    print(f"\n(vTiger emulator on 127.0.0.1, webservice flavour; "
          f"{time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
