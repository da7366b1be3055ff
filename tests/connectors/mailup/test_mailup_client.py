"""Unit tests of auth and the client with httpx.MockTransport (no server)."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl

import httpx
import pytest

import crmsync_mailup
from crmsync.errors import AuthError, ConfigError, RateLimited, RemoteError
from crmsync.http import RetryPolicy, build_client
from crmsync_mailup import MailUpConnector, MailUpSettings
from crmsync_mailup.auth import PasswordGrant
from crmsync_mailup.client import MailUpClient

BASE = "https://services.mailup.com/API/v1.1/Rest/ConsoleService.svc"
AUTH = "https://services.mailup.com/Authorization/OAuth/Token"


def settings(monkeypatch, **values) -> MailUpSettings:
    monkeypatch.setenv("CRMSYNC_MAILUP_CLIENT_SECRET", "cs-123")
    monkeypatch.setenv("CRMSYNC_MAILUP_PASSWORD", "pw-456")
    return MailUpSettings.load("mailup", {"client_id": "cid", "username": "m1234", **values})


class FakeMailUp:
    """A scripted MailUp: token grants rotate; console answers come from ``script``."""

    def __init__(self, script=None) -> None:
        self.script = list(script or [])
        self.grants: list[dict[str, str]] = []
        self.calls: list[httpx.Request] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == AUTH:
            form = dict(parse_qsl(request.content.decode()))
            self.grants.append(form)
            assert request.headers["authorization"] == "Basic " + base64.b64encode(
                b"cid:cs-123").decode()
            self.issued += 1
            return httpx.Response(200, json={"access_token": f"at{self.issued}",
                                             "expires_in": 3600,
                                             "refresh_token": f"rt{self.issued}"})
        self.calls.append(request)
        status, body = self.script.pop(0) if self.script else (200, {"ok": True})
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)


def client_for(monkeypatch, fake, **values) -> MailUpClient:
    s = settings(monkeypatch, **values)
    return MailUpClient(s, httpx.Client(transport=httpx.MockTransport(fake)))


def test_public_api_is_pinned():
    assert sorted(crmsync_mailup.__all__) == ["Address", "MailUpConnector", "MailUpSettings",
                                              "TransactionalMessage", "encrypt_payload", "rc4"]


def test_password_grant_then_bearer(monkeypatch):
    fake = FakeMailUp([(200, 16)])
    client = client_for(monkeypatch, fake)
    assert client.call("POST", "List/1/Recipient", json={"Email": "a@example.com"}) == 16
    assert fake.grants == [{"grant_type": "password", "username": "m1234", "password": "pw-456",
                            "client_id": "cid", "client_secret": "cs-123"}]
    assert fake.calls[0].headers["authorization"] == "Bearer at1"
    assert str(fake.calls[0].url) == f"{BASE}/Console/List/1/Recipient"


def test_401_refreshes_once_keeps_the_rotated_token_and_retries(monkeypatch):
    expired = {"ErrorCode": "401", "ErrorDescription": "Authorization error: Access token is "
               "expired", "ErrorName": "Unauthorized", "ErrorStack": None}
    fake = FakeMailUp([(401, expired), (200, {"done": 1}), (401, expired), (200, {"done": 2})])
    client = client_for(monkeypatch, fake)
    assert client.call("GET", "List") == {"done": 1}
    assert fake.grants[1]["grant_type"] == "refresh_token"
    assert fake.grants[1]["refresh_token"] == "rt1"
    assert client.call("GET", "List") == {"done": 2}
    assert fake.grants[2]["refresh_token"] == "rt2", "the rotated refresh token must be used"
    assert [c.headers["authorization"] for c in fake.calls] == [
        "Bearer at1", "Bearer at2", "Bearer at2", "Bearer at3"]


def test_401_twice_is_an_auth_error(monkeypatch):
    body = {"ErrorCode": "401", "ErrorDescription": "Authorization error: revoked",
            "ErrorName": "Unauthorized", "ErrorStack": None}
    client = client_for(monkeypatch, FakeMailUp([(401, body), (401, body)]))
    with pytest.raises(AuthError, match="revoked"):
        client.call("GET", "List")


def test_refused_refresh_falls_back_to_password(monkeypatch):
    state = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == AUTH:
            form = dict(parse_qsl(request.content.decode()))
            if form["grant_type"] == "refresh_token":
                return httpx.Response(400, json={"error": "invalid_grant"})
            state["n"] += 1
            return httpx.Response(200, json={"access_token": f"p{state['n']}",
                                             "expires_in": 3600, "refresh_token": "r"})
        return httpx.Response(200, json=1)

    s = settings(monkeypatch)
    auth = PasswordGrant(s, httpx.Client(transport=httpx.MockTransport(handler)))
    first = auth.token()
    assert auth.renew(first).value == "p2"  # after a 401: the refresh is refused
    assert auth.obtained == 2


def test_token_expiry_by_clock(monkeypatch):
    now = [0.0]
    fake = FakeMailUp()
    s = settings(monkeypatch)
    auth = PasswordGrant(s, httpx.Client(transport=httpx.MockTransport(fake)),
                         clock=lambda: now[0])
    assert auth.token().value == "at1"
    now[0] = 3000
    assert auth.token().value == "at1"
    now[0] = 3590  # within the safety margin of the 3600 s expiry
    assert auth.token().value == "at2"
    assert fake.grants[-1]["grant_type"] == "refresh_token"


def test_refused_login_names_what_to_check_but_no_secret(monkeypatch):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_grant",
                                         "error_description": "Invalid username or password"})

    s = settings(monkeypatch)
    auth = PasswordGrant(s, httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(AuthError) as info:
        auth.token()
    text = str(info.value)
    assert "Invalid username or password" in text and "CRMSYNC_MAILUP_PASSWORD" in text
    assert "pw-456" not in text and "cs-123" not in text


def test_missing_credentials_are_a_config_error():
    auth = PasswordGrant(MailUpSettings(), httpx.Client())
    with pytest.raises(ConfigError, match="CRMSYNC_MAILUP_PASSWORD"):
        auth.token()


def test_error_envelope_becomes_remote_error(monkeypatch):
    body = {"ErrorCode": "403", "ErrorDescription": "Authorization error: Contract not signed, "
            "please login in console and accept terms of service.", "ErrorName": "Forbidden",
            "ErrorStack": None}
    client = client_for(monkeypatch, FakeMailUp([(403, body), (500, b"boom")]))
    with pytest.raises(RemoteError) as info:
        client.call("GET", "List")
    assert info.value.code == "403" and info.value.status == 403
    assert "Contract not signed" in str(info.value) and not info.value.retryable
    with pytest.raises(RemoteError) as info:
        client.call("GET", "List")
    assert info.value.retryable and info.value.code == "500"


def test_429_without_retries_is_rate_limited(monkeypatch):
    body = {"ErrorCode": "429", "ErrorDescription": "Authorization error (too_many_requests): "
            "Too many requests. Max:5 calls per second , actual:10.", "ErrorName": None,
            "ErrorStack": None}
    client = client_for(monkeypatch, FakeMailUp([(429, body)]))
    with pytest.raises(RateLimited) as info:
        client.call("GET", "List")
    assert info.value.code == "429" and "Max:5 calls per second" in str(info.value)


def test_429_is_retried_with_backoff_by_the_paced_client(monkeypatch):
    body = {"ErrorCode": "429", "ErrorDescription": "too many", "ErrorName": None,
            "ErrorStack": None}
    fake = FakeMailUp([(429, body), (429, body), (200, 7)])
    slept: list[float] = []
    http = build_client(transport=httpx.MockTransport(fake), rate=None,
                        policy=RetryPolicy(attempts=5, backoff=0.5), sleep=slept.append)
    client = MailUpClient(settings(monkeypatch), http)
    assert client.call("POST", "List/1/Recipient", json={}) == 7
    assert len(slept) == 2 and slept[1] > slept[0] * 0.5


def test_paging_follows_total_elements_count(monkeypatch):
    def page(items, number, total):
        return (200, {"IsPaginated": True, "Items": items, "PageNumber": number,
                      "PageSize": 2, "Skipped": number * 2, "TotalElementsCount": total})

    fake = FakeMailUp([page([1, 2], 0, 4), page([3, 4], 1, 4)])
    client = client_for(monkeypatch, fake)
    assert list(client.pages("List", page_size=2)) == [[1, 2], [3, 4]]
    assert [dict(parse_qsl(c.url.query.decode())) for c in fake.calls] == [
        {"pageSize": "2", "pageNumber": "0"}, {"pageSize": "2", "pageNumber": "1"}]


def test_non_json_and_not_paged_answers(monkeypatch):
    client = client_for(monkeypatch, FakeMailUp([(200, b"<html>"), (200, {"x": 1})]))
    with pytest.raises(RemoteError, match="not JSON"):
        client.call("GET", "List")
    with pytest.raises(RemoteError, match="paged envelope"):
        list(client.pages("List"))


def test_empty_body_is_none(monkeypatch):
    client = client_for(monkeypatch, FakeMailUp([(200, b"")]))
    assert client.call("DELETE", "List/1/Unsubscribe/5") is None


def test_settings_validation(monkeypatch):
    with pytest.raises(ValueError, match=r"1\.\.39"):
        MailUpSettings(field_ids={"name": 40})
    with pytest.raises(ValueError, match="same MailUp field id"):
        MailUpSettings(field_ids={"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="CRMSYNC_MAILUP_PASSWORD"):
        MailUpSettings.load("mailup", {"password": "inline"})
    s = settings(monkeypatch, lists=[1, "2"])
    assert "pw-456" not in repr(s) and s.password.get_secret_value() == "pw-456"
    assert s.lists == ["1", "2"]


def test_connector_write_via_mock_transport(monkeypatch):
    """One subscribe per change below the threshold; bare-integer ids become record ids."""
    fake = FakeMailUp([(200, 21), (200, 22)])
    s = settings(monkeypatch, field_ids={"name": 1})
    http = httpx.Client(transport=httpx.MockTransport(fake))
    from crmsync.model import Change, Status, Subscription

    with MailUpConnector(s, http=http) as connector:
        results = connector.write([Change(email=f"m{n}@example.com", fields={"name": "N"},
                                          subscriptions={"1": Subscription(
                                              list_id="1", status=Status.SUBSCRIBED)})
                                   for n in range(2)])
    assert [r.record_id for r in results] == ["21", "22"]
    body = json.loads(fake.calls[0].content)
    assert body["Email"] == "m0@example.com" and body["Fields"] == [{"Id": 1, "Value": "N"}]
    assert not http.is_closed, "an injected client belongs to the caller"


def test_pages_without_a_total_follow_the_servers_own_page_size(monkeypatch):
    # Issue 14.2: a server serving 2 where 5 were asked says PageSize 2; without a total,
    # a short page ends the listing only when it is shorter than that PageSize.
    fake = FakeMailUp([(200, {"Items": [1, 2], "PageSize": 2}),
                       (200, {"Items": [3, 4], "PageSize": 2}),
                       (200, {"Items": [5], "PageSize": 2})])
    client = client_for(monkeypatch, fake)
    assert list(client.pages("List", page_size=5)) == [[1, 2], [3, 4], [5]]
    assert len(fake.calls) == 3
    bare = FakeMailUp([(200, {"Items": [1, 2]}), (200, {"Items": []})])
    assert list(client_for(monkeypatch, bare).pages("List", page_size=5)) == [[1, 2]]
