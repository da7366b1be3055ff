"""Issue 14: where MailUp itself differs from what the connector and emulator once agreed on.

Each test runs the connector against the emulator over real HTTP, the emulator acting as
MailUp documents (sources in docs/connectors/mailup.md, "UNCONFIRMED points").
"""

from __future__ import annotations

import logging

from mailup_testbed import PREFIX, contact, requests_of

from crmsync.model import Change, Contact, Status, Subscription


def sub(list_id: str, status: Status, *groups: str) -> Subscription:
    return Subscription(list_id=list_id, status=status, groups=frozenset(groups))


def change(email: str, *subs: Subscription) -> Change:
    return Change(email=email, subscriptions={s.list_id: s for s in subs})


def status_of(emulator, email: str, list_id: str = "1") -> str | None:
    found = contact(emulator, email)
    return None if found is None else found["lists"].get(list_id, {}).get("status")


# -- 1. a bulk import of pending recipients sends the confirmation request ---------------------
def test_bulk_pending_recipients_receive_the_confirmation_request(make_connector, emulator,
                                                                  control):
    connector = make_connector(bulk_threshold=2)
    people = [f"p{i}@example.com" for i in range(5)]
    results = connector.write([change(e, sub("2", Status.PENDING, "vip")) for e in people])
    assert all(r.ok for r in results), results
    for email in people:
        assert contact(emulator, email)["lists"]["2"] == {"status": "pending",
                                                          "groups": ["vip"]}
        assert emulator.store.confirmations(email) == ["2"], email
    calls = requests_of(control)
    assert calls[f"GET {PREFIX}/Import/{{id}}/Sending"] == 1
    assert calls[f"POST {PREFIX}/Email/Sendings/{{id}}/Immediate"] == 1
    # the person can now confirm, as the mail asked
    assert control.post("/confirm", json={"email": people[0], "list": "2"}).is_success
    assert status_of(emulator, people[0], "2") == "subscribed"


def test_bulk_subscribed_recipients_get_no_confirmation_request(make_connector, emulator,
                                                                control):
    connector = make_connector(bulk_threshold=2)
    results = connector.write([change(f"s{i}@example.com", sub("1", Status.SUBSCRIBED))
                               for i in range(4)])
    assert all(r.ok for r in results)
    assert not any(item.get("confirmation") for item in emulator.sent)
    assert f"GET {PREFIX}/Import/{{id}}/Sending" not in requests_of(control)


# -- 2. paging never stops on a page the server capped ---------------------------------------------
def test_capped_pages_lose_nobody_in_full_and_incremental_reads(make_connector, emulator,
                                                                control):
    control.post("/config", json={"max_page_size": 5})
    connector = make_connector(page_size=20, lists=["1"])
    people = [f"c{i:02d}@example.com" for i in range(12)]
    connector.write([change(e, sub("1", Status.SUBSCRIBED)) for e in people])
    pages = list(connector.read(None))
    assert sorted(r.email for p in pages for r in p.records) == people
    cursor = pages[-1].cursor
    for email in people:
        control.post("/unsubscribe", json={"email": email, "list": "1"})
    changed = [r for p in connector.read(cursor) for r in p.records]
    assert sorted(r.email for r in changed) == people
    assert all(r.subscriptions["1"].status is Status.UNSUBSCRIBED for r in changed)


# -- 3. an EmailOptins status crmsync does not know is read from its dates -------------------------
def test_unknown_optin_status_with_an_opt_out_date_is_an_unsubscribe(connector, emulator,
                                                                     control, caplog):
    control.post("/config", json={"optin_status_names": {"unsubscribed": "UNSUBSCRIBED"}})
    for email in ("x@example.com", "y@example.com", "z@example.com"):
        connector.write([change(email, sub("1", Status.SUBSCRIBED))])
    cursor = list(connector.read(None))[-1].cursor
    control.post("/unsubscribe", json={"email": "x@example.com", "list": "1"})
    control.post("/unsubscribe", json={"email": "y@example.com", "list": "1"})
    with caplog.at_level(logging.WARNING, logger="crmsync_mailup.connector"):
        records = {r.email: r for p in connector.read(cursor) for r in p.records}
    assert records["x@example.com"].subscriptions["1"].status is Status.UNSUBSCRIBED
    assert records["y@example.com"].subscriptions["1"].status is Status.UNSUBSCRIBED
    assert connector.unknown_statuses == {"UNSUBSCRIBED": 2}
    warned = [r for r in caplog.records if "UNSUBSCRIBED" in r.getMessage()]
    assert len(warned) == 1  # logged once, counted every time


# -- 6. no group add for a recipient unsubscribed at MailUp ----------------------------------------
def test_group_add_never_resubscribes_an_unsubscribed_recipient(connector, emulator, control):
    connector.write([change("g@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/unsubscribe", json={"email": "g@example.com", "list": "1"})
    [result] = connector.write([change("g@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    assert result.ok
    assert contact(emulator, "g@example.com")["lists"]["1"] == {"status": "unsubscribed",
                                                                "groups": []}
    assert f"POST {PREFIX}/Group/{{id}}/Recipient" not in requests_of(control)


def test_group_add_still_happens_for_a_subscribed_recipient(connector, emulator):
    [result] = connector.write([change("h@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    assert result.ok
    assert contact(emulator, "h@example.com")["lists"]["1"] == {"status": "subscribed",
                                                                "groups": ["news"]}


def test_multi_list_subscribe_adds_no_group_for_the_unsubscribed(connector, emulator, control):
    connector.write([change("m@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/unsubscribe", json={"email": "m@example.com", "list": "1"})
    first, second = connector.subscribe(Contact(email="m@example.com"), ["1", "2"],
                                        groups=["news", "vip"], confirm=False)
    assert not first.ok and first.code == "RESUBSCRIBE_REFUSED" and not first.retryable
    assert contact(emulator, "m@example.com")["lists"]["1"] == {"status": "unsubscribed",
                                                                "groups": []}
    assert second.ok
    assert contact(emulator, "m@example.com")["lists"]["2"] == {"status": "subscribed",
                                                                "groups": ["vip"]}
