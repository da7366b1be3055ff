"""Outbound Messages: delivered by the emulator, decoded, acknowledged, deduplicated."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crmsync.emulator import EmulatorServer
from crmsync.errors import EventRejected
from crmsync.model import Change, InboundRequest
from crmsync_salesforce.emulator import SalesforceEmulator


@pytest.fixture
def receiver(connector: Any) -> Any:
    """A listener standing in for `crmsync serve`: decode, store, then acknowledge."""
    inbox: list[Change] = []

    async def listen(request: Request) -> Response:
        inbound = InboundRequest(method="POST", path=request.url.path,
                                 headers=dict(request.headers), body=await request.body())
        try:
            inbox.extend(connector.decode_event(inbound))
        except EventRejected as exc:
            return Response(str(exc), status_code=exc.status)
        status, media, body = connector.event_ack(inbound)
        return Response(body, status_code=status, media_type=media)

    app = Starlette(routes=[Route("/salesforce/outbound", listen, methods=["POST"])])
    with EmulatorServer(app) as server:
        yield server, inbox


def test_a_contact_edit_is_delivered_and_acknowledged(emulator: SalesforceEmulator,
                                                      receiver: Any) -> None:
    server, inbox = receiver
    with emulator.lock:
        emulator.seed(3, 0)
        emulator.outbound_url = f"{server.url}/salesforce/outbound"
    emulator.update_contact("contact0-1@example.com", {"HasOptedOutOfEmail": "true"})
    [delivery] = emulator.flush_outbound()
    assert delivery["acked"] is True and delivery["attempts"] == 1
    [change] = inbox
    assert change.email == "contact0-1@example.com"
    assert change.fields["HasOptedOutOfEmail"] == "true"
    assert change.source == "salesforce"
    assert change.event_id == delivery["notifications"][0]
    assert change.ids["salesforce"] == emulator.state()["contacts"][1]["ids"]["salesforce"]


def test_api_writes_batch_notifications_by_100(emulator: SalesforceEmulator, receiver: Any,
                                               connect: Any) -> None:
    server, inbox = receiver
    with emulator.lock:
        emulator.seed(150, 0)
        emulator.outbound_url = f"{server.url}/salesforce/outbound"
    changes = [Change(email=c["email"], ids=c["ids"], fields={"LastName": "Echo"})
               for c in emulator.state()["contacts"]]
    assert all(r.ok for r in connect().write(changes))
    log = emulator.flush_outbound()
    assert sorted(len(entry["notifications"]) for entry in log) == [50, 100]
    assert all(entry["acked"] for entry in log)
    assert len({c.event_id for c in inbox}) == 150  # one id per notification


def test_another_org_is_refused_and_not_acked(emulator: SalesforceEmulator, connect: Any,
                                              receiver: Any) -> None:
    server, _ = receiver
    with emulator.lock:
        emulator.seed(1, 0)
        emulator.outbound_url = f"{server.url}/salesforce/outbound"
    body = emulator._outbound_xml([("04l000000000000099", emulator.org.records["Contact"][
        next(iter(emulator.org.records["Contact"]))])])
    forged = body.replace(b"00D5g000004XyZ1EAK", b"00D5g000009QwErEAK")
    with pytest.raises(EventRejected) as refused:
        connect().decode_event(InboundRequest(method="POST", path="/", body=forged))
    assert refused.value.status == 401


def test_unconfigured_org_id_refuses_everything(connect: Any) -> None:
    with pytest.raises(EventRejected) as refused:
        connect(organization_id=None).decode_event(
            InboundRequest(method="POST", path="/", body=b"<x/>"))
    assert refused.value.status == 401


@pytest.mark.parametrize("body", [
    b"not xml at all",
    b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'/>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><notifications>&a;</notifications>',
])
def test_garbled_messages_are_400(connect: Any, body: bytes) -> None:
    with pytest.raises(EventRejected) as refused:
        connect().decode_event(InboundRequest(method="POST", path="/", body=body))
    assert refused.value.status == 400
