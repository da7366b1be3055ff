"""Webhook decoding: the documented sample calls, the encrypted variant, bad payloads,
and the emulator firing webhooks to a callback URL (with retries)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

import pytest
from mailup_testbed import settings_for
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from crmsync.emulator import EmulatorServer
from crmsync.errors import EventRejected
from crmsync.model import Contact, InboundRequest, Op, Status
from crmsync_mailup import MailUpConnector, MailUpSettings, encrypt_payload, rc4
from crmsync_mailup.webhooks import WebhookDecoder

SAMPLE = ("unsubscribeDate=2012-12-10T17%3a41%3a03.695%2b01"
          "&customerEmail=johnsmith%40yahoo.com&customerList=2")
SAMPLE_PARAMS = {"unsubscribeDate": "[EventDate]", "customerEmail": "[Email]",
                 "customerList": "[IdList]"}
KEY = "s3cr3t-shared-key"


def decoder(**values) -> WebhookDecoder:
    base = {"webhook_params": SAMPLE_PARAMS, "webhook_events": {"/hooks/unsub": "UNSUBSCRIBE"},
            "field_ids": {"name": 1}}
    return WebhookDecoder(MailUpSettings(**{**base, **values}))


def get(query: str, path: str = "/hooks/unsub") -> InboundRequest:
    return InboundRequest(method="GET", path=path,
                          query=parse_qsl(query, keep_blank_values=True))


def post(body: str, path: str = "/hooks/unsub") -> InboundRequest:
    return InboundRequest(method="POST", path=path, body=body.encode(),
                          headers={"content-type": "application/x-www-form-urlencoded"})


def test_rc4_known_vector():
    # The classic test vector: RC4("Key", "Plaintext").
    assert rc4(b"Key", b"Plaintext").hex().upper() == "BBF316E8D940AF0AD3"
    assert rc4(b"Key", rc4(b"Key", b"round trip")) == b"round trip"


@pytest.mark.parametrize("make", [get, post])
def test_documented_unsubscribe_sample(make):
    [change] = decoder().decode(make(SAMPLE))
    assert change.email == "johnsmith@yahoo.com"
    assert change.subscriptions["2"].status is Status.UNSUBSCRIBED
    assert change.occurred_at == datetime(2012, 12, 10, 16, 41, 3, 695000, tzinfo=UTC)
    assert change.event_id and change.source == "mailup"


def test_joomla_preset_and_all_events():
    d = WebhookDecoder(MailUpSettings(field_ids={"name": 1}))
    [sub] = d.decode(get("evt=SUBSCRIBE&evd=2012-09-12T11%3A18%3A37.664%2B02"
                         "&eml=ann%40example.com&idl=1&gru=3,4"))
    assert sub.subscriptions["1"].status is Status.SUBSCRIBED
    assert sub.subscriptions["1"].groups == frozenset({"3", "4"})
    assert not sub.subscriptions["1"].explicit
    [unsub] = d.decode(get("evt=UNSUBSCRIBE&eml=ann%40example.com&idl=1&Reason=2"))
    assert unsub.subscriptions["1"].reason == "unsubscribe link (2)"
    [profile] = d.decode(get("evt=CHANGEPROFILE&eml=ann%40example.com&idl=1&gru=4"
                             "&Field01=Ann"))
    assert profile.fields == {"name": "Ann"}
    assert profile.subscriptions["1"].groups == frozenset({"4"})
    assert not profile.subscriptions["1"].explicit
    [gone] = d.decode(get("evt=DELETE&eml=ann%40example.com"))
    assert gone.op is Op.DELETE


def test_recipient_source_subscribe_is_explicit():
    d = WebhookDecoder(MailUpSettings(webhook_params={"e": "[Email]", "l": "[IdList]",
                                                      "t": "[EventType]",
                                                      "s": "[EventSource]"}))
    [change] = d.decode(post("e=a%40example.com&l=1&t=SUBSCRIBE&s=RECIPIENT"))
    assert change.subscriptions["1"].explicit


def test_email_change_is_unsubscribe_old_plus_subscribe_new():
    d = WebhookDecoder(MailUpSettings())
    old = d.decode(get("evt=UNSUBSCRIBE&eml=old%40example.com&idl=1"))
    new = d.decode(get("evt=SUBSCRIBE&eml=new%40example.com&idl=1"))
    assert old[0].subscriptions["1"].status is Status.UNSUBSCRIBED
    assert new[0].subscriptions["1"].status is Status.SUBSCRIBED
    assert (old[0].email, new[0].email) == ("old@example.com", "new@example.com")


@pytest.mark.parametrize("shape", ["get-raw", "get-quoted", "post-quoted", "post-raw",
                                   "urlsafe-unpadded"])
def test_encrypted_variant(shape):
    payload = encrypt_payload(SAMPLE, KEY)
    d = decoder(webhook_key=SecretStr(KEY))
    if shape == "get-raw":
        request = get(payload)  # '+' read as a space, '=' padding as a value
    elif shape == "get-quoted":
        request = get(quote(payload, safe=""))
    elif shape == "post-quoted":
        request = post(quote(payload, safe=""))
    elif shape == "post-raw":
        request = post(payload)
    else:
        raw = base64.b64decode(payload)
        request = get(base64.urlsafe_b64encode(raw).decode() + "=")
    [change] = d.decode(request)
    assert change.email == "johnsmith@yahoo.com"
    assert change.subscriptions["2"].status is Status.UNSUBSCRIBED


def test_encrypted_with_wrong_key_is_rejected():
    payload = encrypt_payload(SAMPLE, "another-key")
    with pytest.raises(EventRejected) as info:
        decoder(webhook_key=SecretStr(KEY)).decode(get(quote(payload, safe="")))
    assert info.value.status == 401
    assert KEY not in str(info.value)


def test_truncated_encrypted_payload_is_rejected():
    payload = encrypt_payload(SAMPLE, KEY)
    for cut in (payload[: len(payload) // 2], payload[:-3], payload[:30] + "A"):
        with pytest.raises(EventRejected):
            decoder(webhook_key=SecretStr(KEY)).decode(get(quote(cut, safe="")))


def test_garbled_encrypted_payload_is_rejected():
    payload = bytearray(base64.b64decode(encrypt_payload(SAMPLE, KEY)))
    payload[5] ^= 0xFF
    payload[20] ^= 0x55
    garbled = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(EventRejected):
        decoder(webhook_key=SecretStr(KEY)).decode(get(quote(garbled, safe="")))
    with pytest.raises(EventRejected):
        decoder(webhook_key=SecretStr(KEY)).decode(get("not*base64!"))


def test_plain_call_to_an_encrypted_hook_is_forged():
    with pytest.raises(EventRejected) as info:
        decoder(webhook_key=SecretStr(KEY)).decode(get(SAMPLE))
    assert info.value.status == 401


@pytest.mark.parametrize("request_", [
    InboundRequest(method="POST", path="/hooks/unsub", body=b"\x00\xff garbage <<<"),
    InboundRequest(method="GET", path="/hooks/unsub"),
    InboundRequest(method="GET", path="/hooks/unsub",
                   query=[("customerEmail", "not-an-email"), ("customerList", "2")]),
    InboundRequest(method="GET", path="/hooks/unsub",
                   query=[("customerEmail", "a@example.com")]),
    InboundRequest(method="GET", path="/elsewhere",
                   query=[("customerEmail", "a@example.com"), ("customerList", "2")]),
    InboundRequest(method="GET", path="/hooks/unsub",
                   query=[("customerEmail", "a@example.com"), ("customerList", "2"),
                          ("unsubscribeDate", "yesterday")]),
])
def test_bad_plain_calls_are_rejected(request_):
    with pytest.raises(EventRejected) as info:
        decoder().decode(request_)
    assert info.value.status == 400


def test_settings_refuse_unknown_placeholders():
    with pytest.raises(ValueError, match="not a MailUp placeholder"):
        MailUpSettings(webhook_params={"x": "[Nope]"})


# -- the emulator fires webhooks ------------------------------------------------------------------
class Receiver:
    """A callback URL that records calls and fails the first ``fail`` of them."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.calls: list[InboundRequest] = []
        self.attempts = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["GET", "POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        self.attempts += 1
        if self.attempts <= self.fail:
            return PlainTextResponse("0", status_code=500)
        self.calls.append(InboundRequest(
            method=request.method, path=request.url.path,
            query=list(request.query_params.multi_items()), body=await request.body(),
            headers=dict(request.headers)))
        return PlainTextResponse("1")

    def wait(self, count: int, timeout: float = 5.0) -> list[InboundRequest]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.calls


@pytest.fixture
def receiver():
    made = []

    def start(fail: int = 0) -> tuple[Receiver, str]:
        target = Receiver(fail)
        server = EmulatorServer(target.app).start()
        made.append(server)
        return target, f"{server.url}/hook"

    yield start
    for server in made:
        server.stop()


HOOK_PARAMS = {"mail": "[Email]", "lst": "[IdList]", "when": "[EventDate]", "why": "[Reason]",
               "kind": "[EventType]", "src": "[EventSource]", "grp": "[Groups]",
               "f1": "[Field01]"}


def hooked_connector(emulator, monkeypatch, key: str | None = None) -> MailUpConnector:
    settings = settings_for(emulator, monkeypatch, webhook_params=HOOK_PARAMS)
    if key:
        settings = settings.model_copy(update={"webhook_key": SecretStr(key)})
    return MailUpConnector(settings)


@pytest.mark.parametrize(("method", "key"), [("GET", None), ("POST", None), ("GET", KEY),
                                             ("POST", KEY)])
def test_emulator_fires_on_console_unsubscribe(emulator, control, receiver, monkeypatch,
                                               method, key):
    target, url = receiver()
    control.post("/webhooks", json={"url": url, "event": "UNSUBSCRIBE", "method": method,
                                    "encrypted": bool(key), "key": key or "",
                                    "params": HOOK_PARAMS})
    with hooked_connector(emulator, monkeypatch, key) as connector:
        connector.subscribe(Contact(email="hooked@example.com", fields={"name": "Hu"}), ["1"],
                            groups=["news"], confirm=False)
        assert target.calls == []  # REST calls fire no webhook
        control.post("/unsubscribe", json={"email": "hooked@example.com", "list": "1"})
        [call] = target.wait(1)
        assert call.method == method
        [change] = connector.decode_event(call)
    assert change.email == "hooked@example.com"
    sub = change.subscriptions["1"]
    assert (sub.status, sub.reason, sub.groups) == (Status.UNSUBSCRIBED,
                                                    "unsubscribe link (2)", frozenset({"news"}))
    assert change.fields == {"name": "Hu"}


def test_emulator_retries_failed_deliveries(emulator, control, receiver, monkeypatch):
    target, url = receiver(fail=2)
    control.post("/webhooks", json={"url": url, "event": "SUBSCRIBE", "params": HOOK_PARAMS})
    control.post("/subscribe", json={"email": "form@example.com", "list": "2",
                                     "confirm": True})
    control.post("/confirm", json={"email": "form@example.com", "list": "2"})
    [call] = target.wait(1)
    assert target.attempts == 3
    deadline = time.monotonic() + 5
    while True:  # the emulator records the attempt once the answer is back
        [delivery] = control.get("/webhooks").json()["deliveries"]
        if delivery["delivered"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert delivery["attempts"] == 3 and delivery["delivered"]
    with hooked_connector(emulator, monkeypatch) as connector:
        [change] = connector.decode_event(call)
    assert change.subscriptions["2"].status is Status.SUBSCRIBED
    assert change.subscriptions["2"].explicit  # the person clicked the confirmation link


def test_emulator_email_change_and_profile_and_delete(emulator, control, receiver, monkeypatch):
    target, url = receiver()
    for event in ("SUBSCRIBE", "UNSUBSCRIBE", "CHANGEPROFILE", "DELETE"):
        control.post("/webhooks", json={"url": url, "event": event, "params": HOOK_PARAMS})
    control.post("/subscribe", json={"email": "mover@example.com", "list": "1"})
    control.post("/change_email", json={"email": "mover@example.com",
                                        "new_email": "moved@example.com"})
    control.post("/profile", json={"email": "moved@example.com", "list": "1",
                                   "fields": {"name": "Mo"}, "groups": ["offers"]})
    control.post("/delete", json={"email": "moved@example.com"})
    calls = target.wait(5)
    assert len(calls) == 5
    with hooked_connector(emulator, monkeypatch) as connector:
        changes = [c for call in calls for c in connector.decode_event(call)]
    summary = sorted((c.email, c.op.value, *(s.status.value for s in c.subscriptions.values()))
                     for c in changes)
    assert ("mover@example.com", "upsert", "unsubscribed") in summary
    assert ("moved@example.com", "upsert", "subscribed") in summary
    assert ("moved@example.com", "delete") in summary
    [profile] = [c for c in changes if c.fields.get("name") == "Mo"]
    assert profile.subscriptions["1"].groups == frozenset({"offers"})


def test_group_ids_that_cannot_be_named_now_are_retried_later():
    from crmsync.errors import RemoteError

    def unreachable(list_id: str, group_id: str) -> str:
        raise RemoteError("MailUp unreachable", retryable=True)

    d = WebhookDecoder(MailUpSettings(), group_name=unreachable)
    with pytest.raises(RemoteError):
        d.decode(get("evt=SUBSCRIBE&eml=a%40example.com&idl=1&gru=3"))
    [plain] = d.decode(get("evt=SUBSCRIBE&eml=a%40example.com&idl=1"))
    assert plain.subscriptions["1"].groups == frozenset()
