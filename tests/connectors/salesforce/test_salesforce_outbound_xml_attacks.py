"""Outbound Messages are parsed by a parser that refuses every DTD, whatever the bytes'
encoding (issue 12 point 6: a UTF-16 body carried an internal entity past a byte scan
for ``<!DOCTYPE``, and the expanded value was stored)."""

from __future__ import annotations

import codecs
from typing import Any

import pytest

from crmsync.errors import EventRejected
from crmsync.model import InboundRequest
from crmsync_salesforce.emulator._auth import ORG_ID

ENVELOPE = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
    '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
    f"<OrganizationId>{ORG_ID}</OrganizationId>"
    "<Notification><Id>04l000000000000001</Id>"
    '<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
    "<sf:Id>003000000000000001</sf:Id><sf:Email>ann@example.com</sf:Email>"
    "<sf:LastName>{last}</sf:LastName></sObject></Notification>"
    "</notifications></soapenv:Body></soapenv:Envelope>")

ENCODINGS = {
    "utf-8": ("utf-8", b""),
    "utf-16-le-bom": ("utf-16-le", codecs.BOM_UTF16_LE),
    "utf-16-be-bom": ("utf-16-be", codecs.BOM_UTF16_BE),
    "utf-16-le": ("utf-16-le", b""),
    "utf-16-be": ("utf-16-be", b""),
}


def encoded(text: str, encoding: str) -> bytes:
    codec, bom = ENCODINGS[encoding]
    name = "UTF-16" if codec.startswith("utf-16") else "UTF-8"
    return bom + (f'<?xml version="1.0" encoding="{name}"?>' + text).encode(codec)


DTDS = {
    "internal entity": '<!DOCTYPE x [<!ENTITY a "Hacked">]>',
    "external entity": '<!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]>',
    "billion laughs": ('<!DOCTYPE x [<!ENTITY l0 "ha">'
                       + "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">'
                                 for i in range(1, 10)) + "]>"),
    "after a comment": '<!-- hello --><!DOCTYPE x [<!ENTITY a "Hacked">]>',
    "parameter entity": '<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x">%p;]>',
}


def decode(connector: Any, body: bytes) -> Any:
    return connector.decode_event(InboundRequest(
        method="POST", path="/", body=body,
        headers={"content-type": "text/xml; charset=utf-8"}))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_plain_message_decodes_in_every_encoding(connect: Any, encoding: str) -> None:
    [change] = decode(connect(), encoded(ENVELOPE.replace("{last}", "Smith"), encoding))
    assert change.email == "ann@example.com"


@pytest.mark.parametrize("dtd", list(DTDS))
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_any_dtd_is_refused_whatever_the_encoding(connect: Any, encoding: str, dtd: str
                                                  ) -> None:
    entity = "&l9;" if dtd == "billion laughs" else "&a;"
    body = encoded(DTDS[dtd] + ENVELOPE.replace("{last}", entity if "%" not in DTDS[dtd]
                                                else "Smith"), encoding)
    with pytest.raises(EventRejected) as refused:
        decode(connect(), body)
    assert refused.value.status == 400
    assert "Hacked" not in str(refused.value)
