"""Unit tests of single modules with httpx.MockTransport."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import httpx
import pytest

from crmsync_sugarcrm.records import (
    SugarEmailAddress,
    SugarRecord,
    field_text,
    in_key_order,
    parse_sugar_datetime,
)
from crmsync_sugarcrm.rest import RestFlavour
from crmsync_sugarcrm.settings import SugarSettings


def settings(**extra):
    return SugarSettings(base_url="https://sugar.test", username="u", password="p", **extra)


def test_one_owner_refreshes_once_for_concurrent_callers():
    grants: list[str] = []
    lock = threading.Lock()
    both_refused = threading.Barrier(2)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            body = json.loads(request.content)
            with lock:
                grants.append(body["grant_type"])
                number = len(grants)
            if body["grant_type"] == "refresh_token":
                assert body["refresh_token"] == "refresh-1"  # never a stale, rotated one
                assert body["platform"] == "crmsync"
            return httpx.Response(200, json={"access_token": f"access-{number}",
                                             "refresh_token": f"refresh-{number}"})
        if request.headers["OAuth-Token"] == "access-1":
            both_refused.wait(timeout=5)
            return httpx.Response(401, json={"error": "invalid_grant",
                                             "error_message": "expired"})
        return httpx.Response(200, json="pong")

    flavour = RestFlavour(settings(), httpx.Client(transport=httpx.MockTransport(handler)))
    flavour.auth.token()
    answers: list[object] = []
    threads = [threading.Thread(target=lambda: answers.append(flavour.call("GET", "ping")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == ["pong", "pong"]
    assert grants == ["password", "refresh_token"]


def test_email_array_keeps_every_address_and_flag():
    flavour = RestFlavour(settings(), httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(500))))
    record = SugarRecord(module="Contacts", id="1", date_modified=datetime.now(UTC),
                         addresses=[
                             SugarEmailAddress("A@x.io", primary=True, id="a"),
                             SugarEmailAddress("b@x.io", opt_out=True, invalid=True,
                                               reply_to=True, id="b")])
    from crmsync_sugarcrm.records import RecordWrite

    array = flavour._email_array(RecordWrite(index=0, module="Contacts", record=record,
                                             email="a@x.io", opt_out=True))
    assert array == [
        {"email_address": "A@x.io", "primary_address": True, "opt_out": True,
         "invalid_email": False, "reply_to_address": False},
        {"email_address": "b@x.io", "primary_address": False, "opt_out": True,
         "invalid_email": True, "reply_to_address": True}]
    assert flavour._email_array(RecordWrite(index=0, module="Contacts", record=record,
                                            email="a@x.io")) is None


@pytest.mark.parametrize(("raw", "text"), [
    (["a", "b"], "a;b"), ("^news^,^tech^", "news;tech"), (True, "true"), (None, None),
    (3, "3"), ("plain", "plain")])
def test_field_text(raw, text):
    assert field_text(raw) == text


def test_datetimes_from_both_flavours_are_utc():
    assert parse_sugar_datetime("2026-11-28 05:59:10") == datetime(2026, 11, 28, 5, 59, 10,
                                                                  tzinfo=UTC)
    assert parse_sugar_datetime("2026-11-28T07:59:10+02:00") == datetime(2026, 11, 28, 5, 59,
                                                                        10, tzinfo=UTC)


def test_in_key_order_sorts_ids_within_one_second():
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    items = [((t1, "b"), "x"), ((t1, "a"), "y"), ((t2, "c"), "z")]
    assert [key for key, _ in in_key_order(items)] == [(t1, "a"), (t1, "b"), (t2, "c")]


def test_settings_refuse_unknown_modules():
    with pytest.raises(ValueError, match="modules"):
        settings(modules=["Accounts"])
