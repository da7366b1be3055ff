"""vTiger Cloud Webhook workflow deliveries become changes; forged or garbled ones do not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from crmsync.errors import EventRejected
from crmsync.model import InboundRequest

SECRET = "hook-secret-123"


@pytest.fixture
def connector(vtiger_server, vtiger_connector, monkeypatch):
    monkeypatch.setenv("CRMSYNC_VTIGER_WEBHOOK_SECRET", SECRET)
    return vtiger_connector(vtiger_server(contacts=3))


def form(values, **headers):
    return InboundRequest(method="POST", path="/hooks/vtiger", body=urlencode(values).encode(),
                          headers={"content-type": "application/x-www-form-urlencoded",
                                   **headers})


def test_a_form_delivery_with_the_secret_header(connector):
    [change] = connector.decode_event(form(
        {"id": "12x3", "email": "Contact0-1@Example.com", "emailoptout": "1",
         "modifiedtime": "2026-11-28 05:58:29"}, **{"X-Vtiger-Secret": SECRET}))
    assert change.email == "contact0-1@example.com"
    assert change.ids == {"vtiger": "12x3"}
    assert change.fields["emailoptout"] == "true"
    assert change.occurred_at == datetime(2026, 11, 28, 5, 58, 29, tzinfo=UTC)
    assert change.event_id == "12x3@2026-11-28 05:58:29"
    assert connector.event_ack(form({})) == (200, "text/plain", b"OK")


def test_a_json_delivery_with_the_secret_parameter_and_a_bare_crmid(connector):
    body = json.dumps({"crmsync_secret": SECRET,
                       "data": {"record_id": "3", "email": "a@example.com",
                                "emailoptout": "Yes"}}).encode()
    [change] = connector.decode_event(InboundRequest(
        method="POST", path="/", body=body, headers={"content-type": "application/json"}))
    assert change.ids == {"vtiger": "12x3"}  # the prefix comes from describe
    assert change.fields["emailoptout"] == "true"
    assert "crmsync_secret" not in change.fields


def test_a_get_delivery_in_the_query_string(connector):
    request = InboundRequest(method="GET", path="/", query=[
        ("id", "12x4"), ("email", "b@example.com"), ("crmsync_secret", SECRET)])
    [change] = connector.decode_event(request)
    assert change.ids == {"vtiger": "12x4"}


@pytest.mark.parametrize(("request_", "status"), [
    (form({"id": "12x3", "email": "a@example.com"}), 401),
    (form({"id": "12x3", "email": "a@example.com"}, **{"X-Vtiger-Secret": "guess"}), 401),
    (form({"email": "a@example.com"}, **{"X-Vtiger-Secret": SECRET}), 400),
    (form({"id": "9x3", "email": "a@example.com"}, **{"X-Vtiger-Secret": SECRET}), 400),
    (form({"id": "12x3", "email": "nope"}, **{"X-Vtiger-Secret": SECRET}), 400),
    (InboundRequest(method="POST", path="/", body=b"{not json",
                    headers={"content-type": "application/json",
                             "X-Vtiger-Secret": SECRET}), 400),
])
def test_forged_and_garbled_deliveries_are_refused(connector, request_, status):
    with pytest.raises(EventRejected) as caught:
        connector.decode_event(request_)
    assert caught.value.status == status


def test_without_webhook_secret_the_servers_endpoint_secret_is_enough(vtiger_server,
                                                                      vtiger_connector):
    connector = vtiger_connector(vtiger_server())
    [change] = connector.decode_event(form({"id": "12x3", "email": "a@example.com"}))
    assert change.ids == {"vtiger": "12x3"}
    with pytest.raises(EventRejected) as caught:
        connector.decode_event(form({"id": "12x3"}))
    assert caught.value.status == 400
