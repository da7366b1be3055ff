"""The MailUp connector against the emulator over real HTTP: what ends up in MailUp."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mailup_testbed import PREFIX, contact, requests_of
from pydantic import SecretStr

from crmsync.errors import RemoteError
from crmsync.model import Change, Contact, Op, Status, Subscription
from crmsync_mailup import Address, MailUpConnector, TransactionalMessage


def sub(list_id: str, status: Status, *groups: str, explicit: bool = False) -> Subscription:
    return Subscription(list_id=list_id, status=status, groups=frozenset(groups),
                        explicit=explicit)


def change(email: str, *subs: Subscription, **kwargs) -> Change:
    return Change(email=email, subscriptions={s.list_id: s for s in subs}, **kwargs)


def status_of(emulator, email: str, list_id: str = "1") -> str | None:
    found = contact(emulator, email)
    return None if found is None else found["lists"].get(list_id, {}).get("status")


def test_subscribe_creates_recipient_with_fields_and_groups(connector, emulator):
    [result] = connector.write([change("Ann@Example.com", sub("1", Status.SUBSCRIBED, "news",
                                                              "brand-new"),
                                       fields={"name": "Ann", "surname": "Lee"})])
    assert result.ok and result.record_id
    found = contact(emulator, "ann@example.com")
    assert found["fields"] == {"name": "Ann", "surname": "Lee"}
    assert found["lists"]["1"] == {"status": "subscribed", "groups": ["brand-new", "news"]}
    assert "brand-new" in {g.name for g in connector.lists()[0].groups}


def test_pending_goes_through_confirmation(connector, emulator, control):
    [result] = connector.write([change("p@example.com", sub("2", Status.PENDING))])
    assert result.ok
    assert status_of(emulator, "p@example.com", "2") == "pending"
    assert control.post("/confirm", json={"email": "p@example.com", "list": "2"}).is_success
    assert status_of(emulator, "p@example.com", "2") == "subscribed"


def test_unsubscribe_keeps_groups_and_plain_subscribe_never_lifts_it(connector, emulator):
    connector.write([change("u@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    [result] = connector.write([change("u@example.com", sub("1", Status.UNSUBSCRIBED, "news"))])
    assert result.ok
    assert contact(emulator, "u@example.com")["lists"]["1"] == {
        "status": "unsubscribed", "groups": ["news"]}
    [again] = connector.write([change("u@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    assert again.ok
    assert status_of(emulator, "u@example.com") == "unsubscribed"


def test_group_set_is_replaced_but_never_added_for_an_unsubscribe(connector, emulator):
    connector.write([change("g@example.com", sub("1", Status.SUBSCRIBED, "news", "offers"))])
    connector.write([change("g@example.com", sub("1", Status.SUBSCRIBED, "offers"))])
    assert contact(emulator, "g@example.com")["lists"]["1"]["groups"] == ["offers"]
    connector.write([change("g@example.com", sub("1", Status.UNSUBSCRIBED, "news"))])
    assert contact(emulator, "g@example.com")["lists"]["1"] == {
        "status": "unsubscribed", "groups": []}


def test_explicit_resubscribe_confirm_is_reported_when_mailup_keeps_the_unsubscribe(
        connector, emulator, control):
    # Issue 14.4: through the API, ConfirmEmail alone leaves an unsubscribed recipient
    # unsubscribed (Unsubscribed -> Pending needs ConfirmEmail and ForceOptIn): the CRM's
    # re-opt-in must not be reported as done.
    connector.write([change("r@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/unsubscribe", json={"email": "r@example.com", "list": "1"})
    [result] = connector.write([change("r@example.com",
                                       sub("1", Status.SUBSCRIBED, explicit=True))])
    assert not result.ok and not result.retryable
    assert result.code == "RESUBSCRIBE_REFUSED"
    assert 'resubscribe = "force"' in result.error and "MailUp form" in result.error
    assert status_of(emulator, "r@example.com") == "unsubscribed"
    assert emulator.store.confirmations("r@example.com") == []


def test_a_form_resubscription_still_goes_through_confirmation(connector, emulator, control):
    connector.write([change("f@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/unsubscribe", json={"email": "f@example.com", "list": "1"})
    control.post("/subscribe", json={"email": "f@example.com", "list": "1", "confirm": True})
    assert status_of(emulator, "f@example.com") == "pending"


def test_explicit_resubscribe_force_and_never(make_connector, emulator, control):
    force = make_connector(resubscribe="force")
    never = make_connector(resubscribe="never")
    for email in ("f@example.com", "n@example.com"):
        force.write([change(email, sub("1", Status.SUBSCRIBED))])
        control.post("/unsubscribe", json={"email": email, "list": "1"})
    force.write([change("f@example.com", sub("1", Status.SUBSCRIBED, explicit=True))])
    never.write([change("n@example.com", sub("1", Status.SUBSCRIBED, explicit=True))])
    assert status_of(emulator, "f@example.com") == "subscribed"
    assert status_of(emulator, "n@example.com") == "unsubscribed"


def test_no_forced_opt_in_after_a_bounce(make_connector, emulator, control):
    force = make_connector(resubscribe="force")
    force.write([change("b@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/bounce", json={"email": "b@example.com", "kind": "hard"})
    [result] = force.write([change("b@example.com", sub("1", Status.SUBSCRIBED, explicit=True))])
    assert not result.ok and result.code == "400"
    assert "bounced" in result.error
    assert status_of(emulator, "b@example.com") == "unsubscribed"


def test_fields_only_and_email_change_keep_the_id(connector, emulator):
    [first] = connector.write([change("old@example.com", sub("1", Status.SUBSCRIBED))])
    [fields] = connector.write([Change(email="old@example.com", fields={"surname": "Smith"})])
    assert fields.ok and fields.record_id == first.record_id
    [moved] = connector.write([Change(email="new@example.com", previous_email="old@example.com",
                                      fields={"name": "Neo"})])
    assert moved.ok and moved.record_id == first.record_id
    found = contact(emulator, "new@example.com")
    assert found["ids"]["mailup"] == first.record_id
    assert found["fields"] == {"surname": "Smith", "name": "Neo"}
    assert contact(emulator, "old@example.com") is None


def test_partial_failures_are_results(connector, emulator):
    results = connector.write([
        change("ok@example.com", sub("1", Status.SUBSCRIBED)),
        change("bad@example.com", sub("99", Status.SUBSCRIBED)),
        Change(email="ghost@example.com", fields={"name": "x"}),
        Change(email="ghost@example.com", op=Op.DELETE),
    ])
    assert [r.ok for r in results] == [True, False, False, False]
    assert results[1].code == "404" and "List 99 not found" in results[1].error
    assert status_of(emulator, "ok@example.com") == "subscribed"


def test_delete_erases_the_recipient(connector, emulator):
    connector.write([change("d@example.com", sub("1", Status.SUBSCRIBED))])
    [result] = connector.write([Change(email="d@example.com", op=Op.DELETE)])
    assert result.ok
    assert contact(emulator, "d@example.com") is None


def test_full_read_pages_and_statuses(make_connector, control):
    control.post("/seed", json={"contacts": 45, "seed": 3})
    connector = make_connector(page_size=10)
    pages = list(connector.read(None))
    keys = [p.cursor.key() for p in pages]
    assert keys == sorted(keys)
    records = [r for p in pages for r in p.records]
    list1 = [r for r in records if "1" in r.subscriptions]
    assert len(list1) == 45
    assert {r.subscriptions["1"].status for r in list1} == set(Status)
    assert all(r.fields.get("name", "").startswith("First") for r in list1)
    counts = requests_of(control)
    assert counts[f"GET {PREFIX}/List/{{id}}/Recipients/{{status}}"] >= 5


def test_incremental_read_reports_unsubscriptions_with_reasons(connector, emulator, control):
    connector.write([change(f"i{n}@example.com", sub("1", Status.SUBSCRIBED, "news"))
                     for n in range(3)])
    cursor = list(connector.read(None))[-1].cursor
    control.post("/unsubscribe", json={"email": "i1@example.com", "list": "1"})
    control.post("/bounce", json={"email": "i2@example.com", "kind": "spam", "list": "1"})
    pages = list(connector.read(cursor))
    changed = {r.email: r.subscriptions["1"] for p in pages for r in p.records}
    assert changed["i1@example.com"].status is Status.UNSUBSCRIBED
    assert changed["i1@example.com"].reason == "unsubscribe link (2/21)"
    assert changed["i1@example.com"].groups == frozenset({"news"})
    assert changed["i2@example.com"].reason == "spam complaint (16/161)"
    assert pages[-1].cursor.key() >= cursor.key()


def test_token_expiry_mid_run_refreshes_and_rotates(make_connector, emulator, control):
    connector = make_connector()
    connector.write([change("t1@example.com", sub("1", Status.SUBSCRIBED))])
    old_refresh = connector.client.auth.token().refresh
    control.post("/faults", json={"expire_sessions": True})
    [result] = connector.write([change("t2@example.com", sub("1", Status.SUBSCRIBED))])
    assert result.ok
    assert connector.client.auth.refreshed == 1 and connector.client.auth.obtained == 1
    assert connector.client.auth.token().refresh != old_refresh
    assert old_refresh not in emulator.refresh


def test_short_token_ttl_is_renewed_before_calls(make_connector, emulator, control):
    control.post("/config", json={"token_ttl": 1})
    connector = make_connector()
    connector.check()
    emulator.access.clear()  # as if the second elapsed
    assert connector.check().ok
    assert connector.client.auth.refreshed == 1


def test_rate_limit_429_is_honoured(make_connector, emulator, control):
    control.post("/config", json={"rate_limit": 5})
    connector = make_connector(rate_per_s=None)  # no pacing: the emulator must push back
    control.delete("/requests")
    results = connector.write([change(f"rl{n}@example.com", sub("1", Status.SUBSCRIBED))
                               for n in range(8)])
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(status_of(emulator, f"rl{n}@example.com") == "subscribed" for n in range(8))
    sent = requests_of(control)[f"POST {PREFIX}/List/{{id}}/Recipient"]
    assert sent > 8, "some calls must have been answered 429 and retried"


def test_pacing_keeps_under_the_limit(make_connector, emulator, control):
    control.post("/config", json={"rate_limit": 5})
    connector = make_connector(rate_per_s=4, retries=1)  # one attempt: a 429 would fail
    results = connector.write([change(f"pc{n}@example.com", sub("1", Status.SUBSCRIBED))
                               for n in range(6)])
    assert all(r.ok for r in results), [r.error for r in results]


def test_bulk_import_above_threshold(make_connector, emulator, control):
    connector = make_connector(bulk_threshold=5)
    changes = [change(f"bulk{n}@example.com", sub("1", Status.SUBSCRIBED, "news"),
                      fields={"name": f"B{n}"}) for n in range(8)]
    changes.append(change("bulk-out@example.com", sub("2", Status.UNSUBSCRIBED)))
    changes.append(change("bulk-pend@example.com", sub("2", Status.PENDING)))
    control.delete("/requests")
    results = connector.write(changes)
    assert all(r.ok for r in results)
    counts = requests_of(control)
    assert counts[f"POST {PREFIX}/List/{{id}}/Recipients"] == 3
    assert counts[f"POST {PREFIX}/Group/{{id}}/Recipients"] == 1
    assert counts.get(f"POST {PREFIX}/List/{{id}}/Recipient", 0) == 0
    assert counts[f"GET {PREFIX}/Import/{{id}}"] >= 4
    assert contact(emulator, "bulk3@example.com")["lists"]["1"] == {
        "status": "subscribed", "groups": ["news"]}
    assert status_of(emulator, "bulk-out@example.com", "2") == "unsubscribed"
    assert status_of(emulator, "bulk-pend@example.com", "2") == "pending"


def test_below_threshold_is_per_recipient(make_connector, control):
    connector = make_connector(bulk_threshold=5)
    control.delete("/requests")
    connector.write([change(f"s{n}@example.com", sub("1", Status.SUBSCRIBED)) for n in range(5)])
    counts = requests_of(control)
    assert counts[f"POST {PREFIX}/List/{{id}}/Recipient"] == 5
    assert f"POST {PREFIX}/List/{{id}}/Recipients" not in counts


def test_bulk_import_never_lifts_an_unsubscribe(make_connector, emulator, control):
    connector = make_connector(bulk_threshold=1)
    connector.write([change("keep@example.com", sub("1", Status.SUBSCRIBED))])
    control.post("/unsubscribe", json={"email": "keep@example.com", "list": "1"})
    results = connector.write([change("keep@example.com", sub("1", Status.SUBSCRIBED)),
                               change("other@example.com", sub("1", Status.SUBSCRIBED))])
    assert all(r.ok for r in results)
    assert status_of(emulator, "keep@example.com") == "unsubscribed"


def test_send_to_one_list_and_group(connector, emulator):
    connector.write([change("s1@example.com", sub("1", Status.SUBSCRIBED, "news")),
                     change("s2@example.com", sub("1", Status.SUBSCRIBED))])
    one = connector.send("1", to="someone@example.com")
    assert one.ok and one.recipients == 1
    whole = connector.send("1", list_id="1")
    assert whole.recipients == 2
    group = connector.send("1", group_id="1")
    assert group.recipients == 1
    assert emulator.sent[-1]["to"] == ["s1@example.com"]
    with pytest.raises(RemoteError, match="not found"):
        connector.send("999", list_id="1")


def test_transactional_send(connector, emulator):
    message = TransactionalMessage(subject="Hi", html="<p>hi</p>",
                                   sender=Address(email="app@example.com", name="App"),
                                   to=[Address(email="x@example.com")])
    result = connector.send_transactional(message)
    assert result.ok and result.recipients == 1
    assert emulator.sent[-1] == {"transactional": True, "to": ["x@example.com"],
                                 "subject": "Hi"}


def test_transactional_refused(connector):
    wrong = connector.settings.model_copy(update={"transactional_secret": SecretStr("wrong")})
    with MailUpConnector(wrong) as bad, pytest.raises(RemoteError, match="code 3"):
        bad.send_transactional(TransactionalMessage(
            subject="s", sender=Address(email="a@example.com"),
            to=[Address(email="b@example.com")]))


def test_multi_list_subscribe(connector, emulator):
    person = Contact(email="multi@example.com", fields={"name": "M"})
    results = connector.subscribe(person, ["1", "2"], groups=["news", "vip"], confirm=False)
    assert [r.ok for r in results] == [True, True]
    found = contact(emulator, "multi@example.com")
    assert found["lists"] == {"1": {"status": "subscribed", "groups": ["news"]},
                              "2": {"status": "subscribed", "groups": ["vip"]}}
    pending = connector.subscribe(Contact(email="multi2@example.com"), ["1", "2"])
    assert all(r.ok for r in pending)
    assert status_of(emulator, "multi2@example.com", "2") == "pending"
    missing = connector.subscribe(person, ["1"], groups=["nowhere"])
    assert not missing[0].ok and "nowhere" in missing[0].error


def test_check_reports_bad_credentials(connector):
    wrong = connector.settings.model_copy(update={"password": SecretStr("wrong-pw")})
    with MailUpConnector(wrong) as bad:
        health = bad.check()
    assert not health.ok
    assert "refused the password grant" in health.detail
    assert "wrong-pw" not in health.detail
    assert connector.check().ok


def test_webhook_ack_is_one(connector):
    from crmsync.model import InboundRequest

    assert connector.event_ack(InboundRequest(method="GET", path="/")) == (200, "text/plain",
                                                                          b"1")


def test_changed_at_in_utc(connector, emulator, control):
    # Issue 14.5: EmailOptins dates carry no offset and are in the console's zone
    # (api_timezone, Europe/Rome by default); changed_at is the real moment, in UTC.
    connector.write([change("utc@example.com", sub("1", Status.SUBSCRIBED))])
    before = datetime.now(UTC)
    control.post("/unsubscribe", json={"email": "utc@example.com", "list": "1"})
    pages = list(connector.read(list(connector.read(None))[-1].cursor))
    [record] = [r for p in pages for r in p.records if r.email == "utc@example.com"]
    assert abs((record.subscriptions["1"].changed_at - before).total_seconds()) < 5


def test_dynamic_fields_and_check_of_field_ids(make_connector):
    connector = make_connector()
    fields = connector.dynamic_fields()
    assert fields[1] == "name" and fields[2] == "surname" and len(fields) == 11
    bad = make_connector(field_ids={"name": 1, "loyalty": 30})
    health = bad.check()
    assert not health.ok and "'loyalty': 30" in health.detail and "1 name" in health.detail


def test_bulk_replaces_group_sets(make_connector, emulator, control):
    connector = make_connector(bulk_threshold=2)
    connector.write([change("bg1@example.com", sub("1", Status.SUBSCRIBED, "news", "offers")),
                     change("bg2@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    results = connector.write([
        change("bg1@example.com", sub("1", Status.SUBSCRIBED, "offers")),
        change("bg2@example.com", sub("1", Status.UNSUBSCRIBED, "offers")),
        change("bg3@example.com", sub("1", Status.SUBSCRIBED, "news"))])
    assert all(r.ok for r in results)
    assert contact(emulator, "bg1@example.com")["lists"]["1"] == {
        "status": "subscribed", "groups": ["offers"]}
    assert contact(emulator, "bg2@example.com")["lists"]["1"] == {
        "status": "unsubscribed", "groups": []}
    assert contact(emulator, "bg3@example.com")["lists"]["1"]["groups"] == ["news"]


def test_unsubscribe_of_an_unknown_address_is_recorded_as_opt_out(connector, emulator, control):
    control.delete("/requests")
    [result] = connector.write([change("never@example.com", sub("1", Status.UNSUBSCRIBED))])
    assert result.ok
    assert status_of(emulator, "never@example.com") == "unsubscribed"
    assert requests_of(control)[f"POST {PREFIX}/List/{{id}}/Recipients"] == 1
    [again] = connector.write([change("never@example.com", sub("1", Status.SUBSCRIBED))])
    assert again.ok and status_of(emulator, "never@example.com") == "unsubscribed"


def test_5xx_is_retried_for_reads_and_reported_retryable_for_writes(make_connector, emulator,
                                                                    control):
    connector = make_connector(retries=3)
    assert connector.check().ok
    control.post("/faults", json={"error_count": 1, "error_status": 503})
    assert connector.check().ok  # the GET was retried
    control.post("/faults", json={"error_count": 2, "error_status": 500})
    assert make_connector(retries=3).check().ok  # so was the token request
    control.post("/faults", json={"error_count": 3, "error_status": 503})
    [result] = connector.write([change("five@example.com", sub("1", Status.SUBSCRIBED))])
    assert not result.ok and result.retryable and result.code == "503"
    control.delete("/faults")
    [again] = connector.write([change("five@example.com", sub("1", Status.SUBSCRIBED))])
    assert again.ok and status_of(emulator, "five@example.com") == "subscribed"


def test_over_tls_with_the_emulator_ca(tmp_path, monkeypatch):
    from mailup_testbed import settings_for

    from crmsync.emulator import EmulatorServer
    from crmsync_mailup.emulator import MailUpEmulator

    emu = MailUpEmulator(rate_limit=0)
    with EmulatorServer(emu, tls=True, workdir=tmp_path) as server:
        assert server.url.startswith("https://")
        settings = settings_for(emu, monkeypatch)
        assert settings.ca_file == server.ca_path
        with MailUpConnector(settings) as connector:
            assert connector.check().ok
            [result] = connector.write([change("tls@example.com", sub("1", Status.SUBSCRIBED))])
        assert result.ok


def test_multi_list_subscribe_in_one_frontend_call(make_connector, emulator, control):
    connector = make_connector(frontend_url=emulator.base_url + "/frontend")
    control.post("/webhooks", json={"url": "http://127.0.0.1:9/closed", "event": "SUBSCRIBE"})
    control.delete("/requests")
    person = Contact(email="front@example.com", fields={"name": "Fro"})
    results = connector.subscribe(person, ["1", "2"], groups=["news", "vip"], confirm=False)
    assert [r.ok for r in results] == [True, True]
    counts = requests_of(control)
    assert counts["POST /frontend/xmlSubscribe.aspx"] == 1
    assert not any("Recipient" in key for key in counts), counts
    found = contact(emulator, "front@example.com")
    assert found["lists"] == {"1": {"status": "subscribed", "groups": ["news"]},
                              "2": {"status": "subscribed", "groups": ["vip"]}}
    assert found["fields"]["name"] == "Fro"
    hooks = control.get("/webhooks").json()["deliveries"]
    assert sorted(d["list"] for d in hooks) == ["1", "2"]  # the HTTP API fires webhooks
    again = connector.subscribe(person, ["1", "2"], confirm=False)  # code 3: nothing to do
    assert all(r.ok for r in again)
    pending = connector.subscribe(Contact(email="front2@example.com"), ["2"], confirm=True)
    assert pending[0].ok and status_of(emulator, "front2@example.com", "2") == "pending"


def test_frontend_falls_back_to_rest_for_values_it_cannot_carry(make_connector, emulator,
                                                                 control):
    connector = make_connector(frontend_url=emulator.base_url + "/frontend")
    control.delete("/requests")
    [result] = connector.subscribe(Contact(email="semi@example.com", fields={"name": "a;b"}),
                                   ["1"], confirm=False)
    assert result.ok and result.record_id
    counts = requests_of(control)
    assert "POST /frontend/xmlSubscribe.aspx" not in counts
    assert counts[f"POST {PREFIX}/List/{{id}}/Recipient"] == 1
    assert contact(emulator, "semi@example.com")["fields"]["name"] == "a;b"


def test_frontend_refuses_an_unregistered_ip(make_connector, emulator):
    emulator.frontend_ips = {"10.9.8.7"}
    connector = make_connector(frontend_url=emulator.base_url + "/frontend")
    results = connector.subscribe(Contact(email="ip@example.com"), ["1", "2"])
    assert [r.ok for r in results] == [False, False]
    assert results[0].code == "-1011" and "FrontEnd" in results[0].error
    assert contact(emulator, "ip@example.com") is None


def test_empty_group_set_clears_only_where_configured(make_connector, emulator):
    keep = make_connector()
    clear = make_connector(empty_groups_clear=[1])
    keep.write([change("eg@example.com", sub("1", Status.SUBSCRIBED, "news")),
                change("eg@example.com", sub("2", Status.SUBSCRIBED, "vip"))])
    keep.write([change("eg@example.com", sub("1", Status.SUBSCRIBED))])
    assert contact(emulator, "eg@example.com")["lists"]["1"]["groups"] == ["news"]
    clear.write([change("eg@example.com", sub("1", Status.SUBSCRIBED),
                        sub("2", Status.SUBSCRIBED))])
    lists = contact(emulator, "eg@example.com")["lists"]
    assert (lists["1"]["groups"], lists["2"]["groups"]) == ([], ["vip"])


def test_unsubscribe_on_a_list_the_recipient_is_not_on(connector, emulator):
    [first] = connector.write([change("one@example.com", sub("1", Status.SUBSCRIBED))])
    [result] = connector.write([Change(email="one@example.com", ids={"mailup": first.record_id},
                                       subscriptions={"2": sub("2", Status.UNSUBSCRIBED)})])
    assert result.ok
    assert contact(emulator, "one@example.com")["lists"] == {
        "1": {"status": "subscribed", "groups": []},
        "2": {"status": "unsubscribed", "groups": []}}


def test_a_rate_limited_token_endpoint_is_waited_out_not_blamed_on_credentials(
        make_connector, control):
    """Issue 12.15: a 429 from the token endpoint is MailUp asking to slow down: the grant
    is tried again, and when MailUp keeps refusing the error says so (a retryable rate
    limit), never 'check your credentials'."""
    from crmsync.errors import RateLimited

    assert control.post("/faults", json={"error_count": 2, "error_status": 429}).is_success
    assert make_connector(retries=3).lists()  # the token came on the third try
    assert control.post("/faults", json={"error_count": 50, "error_status": 429}).is_success
    with pytest.raises(RateLimited) as info:
        make_connector(retries=3).lists()
    assert info.value.retryable
    assert "429" in str(info.value) and "check client_id" not in str(info.value)
    control.delete("/faults")
