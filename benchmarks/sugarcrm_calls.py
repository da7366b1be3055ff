"""API calls to read 100k contacts and write 10k opt-outs: crmsync vs the naive way.

    /work/venv/bin/python benchmarks/sugarcrm_calls.py [--contacts 100000] [--writes 10000]

Runs the real connector against the emulator (both flavours serve one store) and counts
the HTTP requests the emulator received. The naive client is also run for real, on a
smaller store (``--naive-contacts``, default 2k) because its offset paging is slow to
emulate, and its count is scaled linearly (its calls grow as N / page + per record):

- naive read: offset paging at the API's default page size (REST ``max_num`` 20,
  v4_1 ``max_results`` 20), stopping on ``next_offset`` -1 (REST) or an empty page (v4_1);
- naive opt-out: per record, one read to keep its other addresses and one write
  (REST: GET then PUT of the whole email array; v4_1: look up the EmailAddresses row,
  then ``set_entry`` on it, since a contact update ignores ``email_opt_out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Any

import httpx

from crmsync.emulator import EmulatorServer
from crmsync.model import Change
from crmsync_sugarcrm import SugarConnector
from crmsync_sugarcrm.emulator import SugarEmulator


def calls(server: EmulatorServer) -> int:
    return sum(httpx.get(f"{server.url}/_emulator/requests").json().values())


def zero(server: EmulatorServer) -> None:
    httpx.delete(f"{server.url}/_emulator/requests").raise_for_status()


def connector(server: EmulatorServer, flavour: str, **extra: Any) -> SugarConnector:
    emulator = server.emulator
    assert isinstance(emulator, SugarEmulator)
    profile = emulator.demo_profile()
    os.environ.update(profile["secrets"])
    settings = SugarConnector.Settings.load("sugarcrm", {
        **profile["settings"], "flavour": flavour, "page_size": 1000, "batch_size": 100,
        "timeout_s": 120, **extra})
    return SugarConnector(settings)


def crmsync_read(server: EmulatorServer, flavour: str) -> tuple[int, int, float]:
    zero(server)
    started = time.monotonic()
    with connector(server, flavour) as sugar:
        count = sum(len(page.records) for page in sugar.read(None))
    return count, calls(server), time.monotonic() - started


def crmsync_write(server: EmulatorServer, flavour: str, emails: list[str],
                  value: bool) -> tuple[int, float]:
    zero(server)
    started = time.monotonic()
    with connector(server, flavour) as sugar:
        results = sugar.write([Change(email=e, fields={"email_opt_out": str(value).lower()})
                               for e in emails])
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return calls(server), time.monotonic() - started


class NaiveRest:
    def __init__(self, server: EmulatorServer) -> None:
        self.http = httpx.Client(base_url=f"{server.url}/rest/v11", timeout=120)
        token = self.http.post("/oauth2/token", json={
            "grant_type": "password", "client_id": "sugar", "client_secret": "",
            "username": "admin", "password": SugarEmulator.password,
            "platform": "base"}).json()["access_token"]
        self.http.headers["OAuth-Token"] = token

    def read(self) -> int:
        offset, count = 0, 0
        while offset != -1:
            page = self.http.get("/Contacts", params={
                "offset": offset, "order_by": "date_modified:ASC,id:ASC",
                "fields": "first_name,last_name,email"}).json()
            count += len(page["records"])
            offset = page["next_offset"]
        return count

    def opt_out(self, email: str) -> None:
        [record] = self.http.post("/Contacts/filter", json={
            "filter": [{"email_addresses.email_address": email}],
            "fields": "email"}).json()["records"]
        addresses = [{**item, "opt_out": True} if item["email_address"] == email else item
                     for item in record["email"]]
        self.http.put(f"/Contacts/{record['id']}", json={"email": addresses})


class NaiveLegacy:
    def __init__(self, server: EmulatorServer) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=120)
        digest = hashlib.md5(SugarEmulator.password.encode(), usedforsecurity=False).hexdigest()
        self.session = self.call("login", {"user_name": "admin", "password": digest},
                                 "naive", [])["id"]

    def call(self, method: str, *args: Any) -> Any:
        return self.http.post("/service/v4_1/rest.php", data={
            "method": method, "input_type": "JSON", "response_type": "JSON",
            "rest_data": json.dumps(list(args))}).json()

    def read(self) -> int:
        offset, count = 0, 0
        while True:
            page = self.call("get_entry_list", self.session, "Contacts", "",
                             "contacts.date_modified ASC, contacts.id ASC", offset,
                             ["id", "first_name", "last_name", "email1", "email_opt_out"],
                             [], 20, 0, False)
            if not page["result_count"]:
                return count
            count += page["result_count"]
            offset = page["next_offset"]

    def opt_out(self, email: str) -> None:
        [row] = self.call("get_entry_list", self.session, "EmailAddresses",
                          f"email_addresses.email_address_caps = '{email.upper()}'", "", 0,
                          ["id"], [], 1, 0, False)["entry_list"]
        self.call("set_entry", self.session, "EmailAddresses",
                  [{"name": "id", "value": row["id"]}, {"name": "opt_out", "value": 1}])


def naive(flavour: str, contacts: int, writes: int) -> tuple[int, int, float]:
    """(read calls, write calls, seconds) of the naive client on ``contacts`` contacts."""
    emulator = SugarEmulator(contacts=contacts, seed=7, flavour=flavour)
    with EmulatorServer(emulator) as server:
        started = time.monotonic()
        client: NaiveRest | NaiveLegacy = NaiveRest(server) if flavour == "rest" \
            else NaiveLegacy(server)
        zero(server)
        assert client.read() == contacts
        read_calls = calls(server)
        zero(server)
        for number in range(writes):
            client.opt_out(f"contact7-{number}@example.com")
        return read_calls, calls(server), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--naive-contacts", type=int, default=2_000)
    args = parser.parse_args()
    scale = args.contacts / args.naive_contacts
    naive_writes = max(1, args.writes // round(scale))
    emulator = SugarEmulator(contacts=args.contacts, seed=7)
    rows = []
    with EmulatorServer(emulator) as server:
        emails = [f"contact7-{n}@example.com" for n in range(args.writes)]
        for flavour in ("rest", "v4_1"):
            count, read_calls, read_s = crmsync_read(server, flavour)
            assert count == args.contacts, count
            value = flavour == "rest"  # v4_1 flips them back, so both runs change data
            write_calls, write_s = crmsync_write(server, flavour, emails, value)
            n_read, n_write, n_s = naive(flavour, args.naive_contacts, naive_writes)
            # v4_1 ends on one empty page whatever N is: that call does not scale
            extra = 1 if flavour == "v4_1" else 0
            rows.append((flavour, read_calls, round((n_read - extra) * scale) + extra, read_s,
                         write_calls, round(n_write * args.writes / naive_writes), write_s,
                         n_s))
    print(f"Sugar API calls: read {args.contacts:,} contacts, write {args.writes:,} opt-outs "
          f"(naive measured on {args.naive_contacts:,} / {naive_writes:,} and scaled)")
    header = ("flavour", "read crmsync", "read naive", "ratio", "write crmsync",
              "write naive", "ratio", "crmsync s (read/write)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for flavour, rc, rn, rs, wc, wn, ws, _ in rows:
        print(f"| {flavour} | {rc:,} | {rn:,} | {rn / rc:.0f}x | {wc:,} | {wn:,} | "
              f"{wn / wc:.0f}x | {rs:.1f} / {ws:.1f} |")


if __name__ == "__main__":
    main()
