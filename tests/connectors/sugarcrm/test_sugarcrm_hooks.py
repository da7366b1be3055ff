"""Real time: Sugar Web Logic Hook deliveries decoded into Changes."""

from __future__ import annotations

import json

import pytest
from sugarcrm_support import state

from crmsync.errors import EventRejected
from crmsync.model import InboundRequest, Op
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID


def delivery(path: str, body: object, **extra: object) -> InboundRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return InboundRequest(method="POST", path=path, body=raw,
                          headers={"content-type": "application/json"}, **extra)


CONTACT = {
    "id": "c-1", "date_modified": "2026-11-28T05:59:10+00:00", "first_name": "Alice",
    "last_name": "Anderson", "interests_c": ["news", "tech"],
    "email": [{"email_address": "work@example.org", "primary_address": False, "opt_out": False},
              {"email_address": "Alice@Example.com", "primary_address": True, "opt_out": True}],
}


@pytest.fixture
def connector(serve, connect):
    return connect(serve("rest", contacts=3), fields=["first_name", "last_name", "interests_c"])


def test_after_save_becomes_an_upsert_with_the_opt_out(connector):
    [change] = connector.decode_event(delivery(
        "/hooks/sugarcrm/after_save",
        {"isUpdate": True, "dataChanges": {}, "bean": "Contact", "data": CONTACT}))
    assert change.email == "alice@example.com" and change.op == Op.UPSERT
    assert change.ids == {"sugarcrm": "c-1"}
    assert dict(change.fields) == {"first_name": "Alice", "last_name": "Anderson",
                                   "interests_c": "news;tech", "email_opt_out": "true"}
    assert change.occurred_at.isoformat() == "2026-11-28T05:59:10+00:00"


def test_after_delete_and_event_named_in_the_query(connector):
    [change] = connector.decode_event(delivery(
        "/hooks/sugarcrm", {"isUpdate": True, "bean": "Contact", "data": CONTACT},
        query=[("event", "after_delete")]))
    assert change.op == Op.DELETE and change.email == "alice@example.com"


def test_modules_not_configured_are_ignored(connector):
    assert connector.decode_event(delivery(
        "/hooks/sugarcrm/after_save", {"isUpdate": False, "bean": "Account",
                                       "data": {"id": "a-1", "name": "Acme"}})) == []


def test_relationship_events_read_the_record_for_its_address(serve, connect):
    server = serve("rest", contacts=3)
    connector = connect(server)
    person = state(server)["contact0-1@example.com"]
    data = {"module": "ProspectLists", "id": EVENTS_LIST_ID, "related_module": "Contacts",
            "related_id": person["ids"]["sugarcrm"], "link": "contacts"}
    [added] = connector.decode_event(delivery(
        "/hooks/sugarcrm/after_relationship_add",
        {"isUpdate": False, "bean": "ProspectList", "data": data}))
    assert added.email == "contact0-1@example.com"
    assert dict(added.memberships) == {f"target_list:{EVENTS_LIST_ID}": ""}
    # the same event seen from the contact's side
    flipped = {"module": "Contacts", "id": person["ids"]["sugarcrm"],
               "related_module": "ProspectLists", "related_id": EVENTS_LIST_ID}
    [removed] = connector.decode_event(delivery(
        "/hooks/sugarcrm/after_relationship_delete",
        {"isUpdate": False, "bean": "Contact", "data": flipped}))
    assert dict(removed.memberships) == {f"target_list:{EVENTS_LIST_ID}": None}


def test_garbage_and_unnamed_relationship_events_are_rejected(connector):
    with pytest.raises(EventRejected) as caught:
        connector.decode_event(delivery("/hooks/sugarcrm", b"\x00\xff<<"))
    assert caught.value.status == 400
    with pytest.raises(EventRejected):
        connector.decode_event(delivery("/hooks/sugarcrm", {"bean": "Contact"}))
    with pytest.raises(EventRejected):
        connector.decode_event(delivery("/hooks/sugarcrm", {
            "bean": "ProspectList", "data": {"id": "l", "related_id": "c"}}))


def test_webhook_token_is_required_when_configured(serve, connect, monkeypatch):
    monkeypatch.setenv("CRMSYNC_SUGARCRM_WEBHOOK_TOKEN", "s3cret-hook")
    connector = connect(serve("rest"))
    body = {"isUpdate": True, "bean": "Contact", "data": CONTACT}
    with pytest.raises(EventRejected) as caught:
        connector.decode_event(delivery("/hooks/sugarcrm/after_save", body))
    assert caught.value.status == 401 and "s3cret-hook" not in str(caught.value)
    [change] = connector.decode_event(delivery("/hooks/sugarcrm/after_save", body,
                                               query=[("token", "s3cret-hook")]))
    assert change.email == "alice@example.com"
