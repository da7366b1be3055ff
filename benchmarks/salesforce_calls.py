"""API calls crmsync makes against the Salesforce emulator, beside a naive script.

(a) read 100,000 contacts; (b) write 10,000 opt-out changes. The naive approach is what
a hand-written integration script does with simple-salesforce: one REST query paging
loop (``query_all_iter``), and one ``PATCH sobjects/Contact/{id}`` per record. Calls are
counted by the emulator (every HTTP request it served, logins included).

    python benchmarks/salesforce_calls.py [--contacts 100000] [--writes 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import requests
from simple_salesforce import Salesforce

from crmsync.emulator import EmulatorServer
from crmsync.model import Change
from crmsync_salesforce import SalesforceConnector, SalesforceSettings
from crmsync_salesforce.emulator import SalesforceEmulator


def served(emulator: SalesforceEmulator, work: Callable[[], object]) -> tuple[int, float]:
    with emulator.lock:
        emulator.requests.clear()
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    with emulator.lock:
        return sum(emulator.requests.values()), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=10_000)
    args = parser.parse_args()

    emulator = SalesforceEmulator(contacts=args.contacts, seed=0)
    with EmulatorServer(emulator, tls=True) as server:
        profile = emulator.demo_profile()
        os.environ.update(profile["secrets"])

        def connector(**values: object) -> SalesforceConnector:
            return SalesforceConnector(SalesforceSettings.load(
                "salesforce", {**profile["settings"], **values}))

        rows: list[tuple[str, str, int, int, float, float]] = []

        # (a) read every contact
        crm = connector()
        read_count = 0

        def crmsync_read() -> None:
            nonlocal read_count
            read_count = sum(len(page.records) for page in crm.read(None))

        crm_calls, crm_time = served(emulator, crmsync_read)
        assert read_count == args.contacts, read_count

        session = requests.Session()
        session.verify = server.ca_path or True
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override the emulator's CA
        token = crm.api.session().access_token
        naive = Salesforce(instance_url=server.url, session_id=token, session=session,
                           version=emulator.api_version)
        ids: list[str] = []

        def naive_read() -> None:
            for record in naive.query_all_iter(
                    "SELECT Id, Email, FirstName, LastName, HasOptedOutOfEmail, Interests__c "
                    "FROM Contact"):
                ids.append(record["Id"])

        naive_calls, naive_time = served(emulator, naive_read)
        assert len(ids) == args.contacts
        rows.append((f"(a) read {args.contacts:,} contacts", "Bulk 2.0 query jobs",
                     crm_calls, naive_calls, crm_time, naive_time))
        crm.close()

        # (b) write opt-outs, by record id as the engine's id map gives them
        targets = ids[:args.writes]
        state = {c["ids"]["salesforce"]: c["email"] for c in emulator.state()["contacts"]}
        changes = [Change(email=state[i], ids={"salesforce": i},
                          fields={"HasOptedOutOfEmail": "true"}, source="mailup")
                   for i in targets]
        results: list[object] = []
        for label, values in (("Bulk 2.0 ingest job", {}),
                              ("sObject Collections only", {"bulk_write_threshold": 10**9})):
            crm = connector(**values)
            crm.check()  # log in outside the measurement, like the naive script's token
            calls, elapsed = served(emulator, lambda c=crm: results.extend(c.write(changes)))
            crm.close()
            rows.append((f"(b) write {args.writes:,} opt-outs", label, calls, 0, elapsed, 0.0))
        assert all(getattr(r, "ok", False) for r in results)

        def naive_write() -> None:
            for record_id in targets:
                naive.Contact.update(record_id, {"HasOptedOutOfEmail": True})

        naive_calls, naive_time = served(emulator, naive_write)
        rows = [r if not r[0].startswith("(b)") else (*r[:3], naive_calls, r[4], naive_time)
                for r in rows]
        session.close()

    print(f"{'workload':<28} {'crmsync path':<26} {'crmsync calls':>13} {'naive calls':>11} "
          f"{'ratio':>9} {'crmsync s':>9} {'naive s':>8}")
    for workload, path, ours, theirs, ours_s, theirs_s in rows:
        print(f"{workload:<28} {path:<26} {ours:>13,} {theirs:>11,} "
              f"{theirs / max(ours, 1):>8.0f}x {ours_s:>9.1f} {theirs_s:>8.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
