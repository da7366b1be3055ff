"""Unit tests of the HTTP layer with httpx.MockTransport (no server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from crmsync.errors import QuotaExhausted, RemoteError
from crmsync.model import Change
from crmsync_salesforce import SalesforceConnector, SalesforceSettings
from crmsync_salesforce._bulk import bulk_query
from crmsync_salesforce._quota import QuotaTracker

INSTANCE = "https://acme.my.salesforce.com"


def build(monkeypatch: pytest.MonkeyPatch, handler: Callable[[httpx.Request], httpx.Response],
          **values: Any) -> SalesforceConnector:
    monkeypatch.setenv("CRMSYNC_SALESFORCE_CLIENT_SECRET", "s3cr3t-value")
    tokens = iter(f"token-{n}" for n in range(1, 100))

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            return httpx.Response(200, json={"access_token": next(tokens),
                                             "instance_url": INSTANCE, "token_type": "Bearer"})
        return handler(request)

    settings = SalesforceSettings.load("salesforce", {
        "auth": "client_credentials", "client_id": "key", "login_url": "https://acme.my."
        "salesforce.com", "objects": ["Contact"], "memberships": False,
        "check_deleted_window": False, **values})
    return SalesforceConnector(settings, http=httpx.Client(transport=httpx.MockTransport(route)))


def limit(used: int, total: int = 5000) -> dict[str, str]:
    return {"Sforce-Limit-Info": f"api-usage={used}/{total}; per-app-api-usage=1/250(appName=x)"}


def record(n: int) -> dict[str, Any]:
    return {"attributes": {"type": "Contact"}, "Id": f"003{n:015d}", "Email": f"p{n}@x.com",
            "SystemModstamp": f"2024-01-01T00:00:{n:02d}.000+0000", "IsDeleted": False,
            "FirstName": None, "LastName": f"L{n}", "HasOptedOutOfEmail": n % 2 == 0,
            "Interests__c": "a;b"}


def test_quota_tracker_parses_the_header() -> None:
    quota = QuotaTracker(0.5)
    quota.observe({"sforce-limit-info": "api-usage=18/5000"})
    assert (quota.used, quota.limit) == (18, 5000)
    quota.guard()
    quota.observe({"sforce-limit-info": "api-usage=2500/5000"})
    with pytest.raises(QuotaExhausted):
        quota.guard()


def test_invalid_session_is_refreshed_and_the_call_retried(monkeypatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(401, json=[{"message": "Session expired or invalid",
                                              "errorCode": "INVALID_SESSION_ID"}])
        if request.url.path.endswith("/describe/"):
            return httpx.Response(200, json={"name": "Contact", "fields": [
                {"name": n} for n in ("FirstName", "LastName", "HasOptedOutOfEmail",
                                      "Interests__c")]}, headers=limit(4))
        return httpx.Response(200, json={"DailyApiRequests": {}}, headers=limit(3))

    connector = build(monkeypatch, handler)
    assert connector.check().ok
    assert seen == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]


def test_query_restarts_after_the_last_key_when_the_locator_dies(monkeypatch) -> None:
    queries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"]
        if request.url.path.endswith("/query/01gLOC-2"):
            return httpx.Response(401, json={"error": "not even a list"})  # any 401 shape
        if "q" in request.url.params and "COUNT()" in request.url.params["q"]:
            return httpx.Response(200, json={"totalSize": 4, "done": True, "records": []})
        queries.append(request.url.params["q"])
        if token == "Bearer token-1":
            return httpx.Response(200, json={"totalSize": 4, "done": False,
                                             "nextRecordsUrl": "/services/data/v59.0/query/"
                                             "01gLOC-2", "records": [record(1), record(2)]})
        return httpx.Response(200, json={"totalSize": 3, "done": True,
                                         "records": [record(2), record(3), record(4)]})

    connector = build(monkeypatch, handler)
    pages = list(connector.read(None))
    assert [r.email for p in pages for r in p.records] == [f"p{n}@x.com" for n in (1, 2, 3, 4)]
    assert "SystemModstamp >= 2024-01-01T00:00:02+00:00" in queries[1]
    assert pages[0].records[1].fields == {"FirstName": None, "LastName": "L2",
                                          "HasOptedOutOfEmail": "true", "Interests__c": "a;b"}


def test_request_limit_exceeded_is_quota_exhausted(monkeypatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json=[{"message": "TotalRequests Limit exceeded.",
                                          "errorCode": "REQUEST_LIMIT_EXCEEDED"}])

    connector = build(monkeypatch, handler)
    with pytest.raises(QuotaExhausted) as stopped:
        list(connector.read(None))
    assert "TotalRequests Limit exceeded." in str(stopped.value)


def test_collection_results_map_back_in_order(monkeypatch) -> None:
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return httpx.Response(200, headers=limit(9), json=[
            {"id": body["records"][0]["id"], "success": True, "errors": []},
            {"success": False, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW",
                                           "message": "unable to obtain exclusive access",
                                           "fields": []}]}])

    connector = build(monkeypatch, handler)
    results = connector.write([
        Change(email="a@x.com", ids={"salesforce": "003000000000000001"},
               fields={"HasOptedOutOfEmail": "true"}),
        Change(email="b@x.com", ids={"salesforce": "003000000000000002"},
               fields={"HasOptedOutOfEmail": "false", "Phone": None})])
    assert results[0].ok and results[0].record_id == "003000000000000001"
    assert not results[1].ok and results[1].code == "UNABLE_TO_LOCK_ROW" and results[1].retryable
    [body] = sent
    assert body["allOrNone"] is False
    assert body["records"][1] == {"attributes": {"type": "Contact"}, "id": "003000000000000002",
                                  "HasOptedOutOfEmail": False, "Phone": None}


def test_a_server_error_on_a_chunk_fails_only_that_chunk(monkeypatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=[{"message": "bad", "errorCode": "JSON_PARSER_ERROR"}])

    connector = build(monkeypatch, handler)
    results = connector.write([Change(email="a@x.com", ids={"salesforce": "003000000000000001"},
                                      fields={"LastName": "x"})])
    assert results[0].code == "JSON_PARSER_ERROR" and not results[0].retryable


def test_bulk_query_follows_the_locator_until_the_string_null(monkeypatch) -> None:
    pages = {"": ('"Id","Email"\n"1","a@x.com"\n"2","multi\nline"\n', "MTAw"),
             "MTAw": ('"Id","Email"\n"3","c@x.com"\n', "null")}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": "750X", "state": "UploadComplete"})
        if request.url.path.endswith("/results"):
            text, following = pages[request.url.params.get("locator", "")]
            return httpx.Response(200, text=text, headers={
                "Sforce-Locator": following, "Sforce-NumberOfRecords": "2"})
        return httpx.Response(200, json={"id": "750X", "state": "JobComplete"})

    connector = build(monkeypatch, handler)
    rows = list(bulk_query(connector.api, "SELECT Id, Email FROM Contact"))
    assert [r["Id"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["Email"] == "multi\nline"


def test_messages_never_carry_the_secret(monkeypatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json=[{"message": "boom", "errorCode": "UNKNOWN_EXCEPTION"}])

    connector = build(monkeypatch, handler)
    with pytest.raises(RemoteError) as failed:
        connector.api.json("GET", "limits/")
    assert failed.value.retryable
    assert "s3cr3t" not in str(failed.value) and "token-" not in str(failed.value)
