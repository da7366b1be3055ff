"""Issue 15 (API mode): the calls and waits a bulk write and the read after it cost.

Over real HTTP against the emulator, which completes an import after the number of polls
it models (``import_polls``) and counts every request per path template.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from mailup_testbed import PREFIX, contact, requests_of

from crmsync.model import Change, Cursor, Status, Subscription

GROUP_LISTING = f"GET {PREFIX}/Group/{{id}}/Recipients"
RECIPIENT_GROUPS = f"GET {PREFIX}/List/{{id}}/Recipient/{{rid}}/Groups"


def change(email: str, list_id: str, status: Status, *groups: str) -> Change:
    return Change(email=email, fields={"name": email.split("@")[0]},
                  subscriptions={list_id: Subscription(list_id=list_id, status=status,
                                                       groups=frozenset(groups))})


def test_imports_are_polled_together_and_first_after_a_short_wait(make_connector, emulator,
                                                                  control):
    control.post("/config", json={"import_polls": 2}).raise_for_status()
    connector = make_connector(bulk_threshold=2, import_poll_s=1.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    connector.bulk._sleep = sleep
    changes = ([change(f"s{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(3)]
               + [change(f"p{i}@example.com", "2", Status.PENDING, "vip") for i in range(3)]
               + [change(f"u{i}@example.com", "1", Status.UNSUBSCRIBED) for i in range(3)])
    results = connector.write(changes)
    assert all(r.ok for r in results), results
    assert contact(emulator, "p0@example.com")["lists"]["2"] == {"status": "pending",
                                                                 "groups": ["vip"]}
    assert emulator.store.confirmations("p0@example.com") == ["2"]
    assert contact(emulator, "s0@example.com")["lists"]["1"]["groups"] == ["news"]
    # 3 list imports then 2 group imports, each completing on its 3rd poll: polled in
    # two rounds of one short wait each, not 1 s per import and poll.
    assert sum(slept) < 1.0, slept
    assert requests_of(control)[f"GET {PREFIX}/Import/{{id}}"] == 3 * 5


def test_a_run_in_many_batches_lists_each_group_once(make_connector, emulator, control):
    setup = make_connector(bulk_threshold=0)
    assert setup.write([change("old@example.com", "1", Status.SUBSCRIBED, "offers")])[0].ok
    connector = make_connector(bulk_threshold=10)
    batches = [[change(f"b{b}n{i}@example.com", "1", Status.SUBSCRIBED, "news")
                for i in range(60)] for b in range(3)]
    batches[2][0] = change("old@example.com", "1", Status.SUBSCRIBED, "news")
    listings = []
    for batch in batches:
        assert all(r.ok for r in connector.write(batch))
        listings.append(requests_of(control).get(GROUP_LISTING, 0))
    # Listed once, in the first batch; the later ones use what was listed.
    assert listings[0] > 0
    assert listings[2] == listings[0], listings
    assert contact(emulator, "old@example.com")["lists"]["1"]["groups"] == ["news"]
    assert contact(emulator, "b1n5@example.com")["lists"]["1"]["groups"] == ["news"]


def test_a_membership_added_per_recipient_is_still_pruned_by_a_later_import(make_connector,
                                                                            emulator):
    connector = make_connector(bulk_threshold=10)
    first = [change(f"a{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(20)]
    assert all(r.ok for r in connector.write(first))
    # A small batch goes per recipient: its group add is not in the importer's listing.
    assert connector.write([change("a0@example.com", "1", Status.SUBSCRIBED,
                                   "news", "offers")])[0].ok
    assert contact(emulator, "a0@example.com")["lists"]["1"]["groups"] == ["news", "offers"]
    again = [change(f"a{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(20)]
    assert all(r.ok for r in connector.write(again))
    assert contact(emulator, "a0@example.com")["lists"]["1"]["groups"] == ["news"]


def test_the_read_after_a_bulk_import_lists_groups_not_each_recipient(make_connector,
                                                                      emulator, control):
    before = datetime.now(UTC) - timedelta(seconds=1)
    writer = make_connector(bulk_threshold=10)
    people = [change(f"r{i}@example.com", "1", Status.SUBSCRIBED,
                     "news" if i % 2 else "offers") for i in range(100)]
    assert all(r.ok for r in writer.write(people))
    control.delete("/requests").raise_for_status()
    reader = make_connector()
    read = {c.email: c for page in reader.read(Cursor(at=before)) for c in page.records}
    assert len(read) == 100
    assert read["r1@example.com"].subscriptions["1"].groups == frozenset({"news"})
    assert read["r2@example.com"].subscriptions["1"].groups == frozenset({"offers"})
    assert read["r2@example.com"].subscriptions["1"].status is Status.SUBSCRIBED
    calls = requests_of(control)
    assert calls.get(RECIPIENT_GROUPS, 0) == 0, calls
    assert calls[GROUP_LISTING] <= 6  # 50 members per group at 20 a page


def test_the_read_of_a_few_changes_looks_each_recipient_up(make_connector, emulator,
                                                           control):
    writer = make_connector(bulk_threshold=10)
    assert all(r.ok for r in writer.write(
        [change(f"q{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(100)]))
    time.sleep(1.1)
    since = datetime.now(UTC)
    assert writer.write([change("q7@example.com", "1", Status.UNSUBSCRIBED, "news")])[0].ok
    control.delete("/requests").raise_for_status()
    reader = make_connector(overlap_s=0)
    read = [c for page in reader.read(Cursor(at=since))
            for c in page.records]
    assert [c.email for c in read] == ["q7@example.com"]
    assert read[0].subscriptions["1"].status is Status.UNSUBSCRIBED
    assert read[0].subscriptions["1"].groups == frozenset({"news"})
    calls = requests_of(control)
    assert calls.get(GROUP_LISTING, 0) == 0 and calls[RECIPIENT_GROUPS] == 1, calls


def test_a_write_after_a_read_prunes_from_the_read_s_group_listings(make_connector,
                                                                  emulator, control):
    before = datetime.now(UTC) - timedelta(seconds=1)
    writer = make_connector(bulk_threshold=10)
    assert all(r.ok for r in writer.write(
        [change(f"w{i}@example.com", "1", Status.SUBSCRIBED, "news", "offers")
         for i in range(60)]))
    run = make_connector(bulk_threshold=10)  # a new run: reads, then writes
    assert len([c for page in run.read(Cursor(at=before)) for c in page.records]) == 60
    listed = requests_of(control)[GROUP_LISTING]
    assert all(r.ok for r in run.write(
        [change(f"w{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(20)]))
    assert requests_of(control)[GROUP_LISTING] == listed
    assert contact(emulator, "w3@example.com")["lists"]["1"]["groups"] == ["news"]
    assert contact(emulator, "w30@example.com")["lists"]["1"]["groups"] == ["news", "offers"]


def test_an_import_of_a_few_prunes_by_looking_them_up_not_by_listing_every_group(
        make_connector, emulator, control):
    """Issue 15 (API mode): an import cannot remove a group membership, so the importer
    pruned by listing every member of every group of the list first: 655 pages before a
    100-contact diff at 10k. When the listings would take more pages than looking each
    imported recipient's groups up (two calls each), it looks them up."""
    writer = make_connector(bulk_threshold=10)
    assert all(r.ok for r in writer.write(
        [change(f"g{i}@example.com", "1", Status.SUBSCRIBED, "news", "offers")
         for i in range(300)]))
    control.delete("/requests").raise_for_status()
    run = make_connector(bulk_threshold=2)  # a new run: no listing kept
    assert all(r.ok for r in run.write(
        [change(f"g{i}@example.com", "1", Status.SUBSCRIBED, "news") for i in range(3)]))
    calls = requests_of(control)
    assert contact(emulator, "g1@example.com")["lists"]["1"]["groups"] == ["news"]
    assert contact(emulator, "g100@example.com")["lists"]["1"]["groups"] == ["news", "offers"]
    # one page tells the listing's size (TotalElementsCount): not the 2 x 15 pages
    assert calls.get(GROUP_LISTING, 0) == 1, calls
    assert calls.get(RECIPIENT_GROUPS, 0) == 3, calls
