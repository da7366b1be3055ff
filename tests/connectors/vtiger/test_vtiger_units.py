"""Unit tests of single modules: values, VTQL literals, the API layer on a MockTransport."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import pytest

from crmsync.errors import AuthError, ConfigError, RemoteError
from crmsync_vtiger import VtigerConnector, VtigerSettings
from crmsync_vtiger._api import CloudApi, WebserviceApi
from crmsync_vtiger._values import FieldCodec, WsId, parse_bool
from crmsync_vtiger._vtql import literal, select

DESCRIBE = {"name": "Contacts", "idPrefix": "12", "fields": [
    {"name": "emailoptout", "type": {"name": "boolean"}},
    {"name": "modifiedtime", "type": {"name": "datetime"}},
    {"name": "account_id", "type": {"name": "reference"}},
    {"name": "cf_901", "type": {"name": "multipicklist"}},
    {"name": "lastname", "type": {"name": "string"}, "mandatory": True},
]}


def test_codec_converts_both_ways_in_the_server_time_zone():
    codec = FieldCodec(DESCRIBE, "America/New_York")
    assert codec.to_neutral("emailoptout", "1") == "true"
    assert codec.to_neutral("emailoptout", "0") == "false"
    assert codec.to_neutral("modifiedtime", "2026-01-15 09:30:00") == "2026-01-15T14:30:00Z"
    assert codec.to_neutral("modifiedtime", "") is None
    assert codec.to_neutral("account_id", "") is None
    assert codec.to_neutral("account_id", "11x7") == "11x7"
    assert codec.to_neutral("cf_901", "news |##| tech") == "news;tech"
    assert codec.to_vtiger("emailoptout", "true") == "1"
    assert codec.to_vtiger("emailoptout", "no") == "0"
    assert codec.to_vtiger("modifiedtime", "2026-01-15T14:30:00Z") == "2026-01-15 09:30:00"
    assert codec.to_vtiger("cf_901", "news;tech") == "news |##| tech"
    assert codec.parse_time("2026-07-01 12:00:00") == datetime(2026, 7, 1, 16, tzinfo=UTC)
    with pytest.raises(ValueError):
        codec.to_vtiger("emailoptout", "maybe")
    with pytest.raises(ValueError):
        parse_bool("2")


def test_ws_ids_keep_the_installs_prefix():
    assert str(WsId.parse("12x345")) == "12x345"
    assert str(WsId.coerce("345", "12")) == "12x345"
    with pytest.raises(ValueError):
        WsId.coerce("4x345", "12")
    with pytest.raises(ValueError):
        WsId.parse("garbage")


def test_vtql_literals_escape_and_statements_end_with_a_semicolon():
    assert literal("o'brien@example.com") == "'o\\'brien@example.com'"
    assert literal("back\\slash") == "'back\\\\slash'"
    assert select("Contacts", where="email = 'a'", order_by="id", offset=200, limit=500) == \
        "select * from Contacts where email = 'a' order by id limit 200,100;"


def test_settings_refuse_bad_values_and_inline_secrets():
    with pytest.raises(ConfigError, match="time zone"):
        VtigerSettings.load("vtiger", {"base_url": "https://x", "username": "a",
                                       "server_timezone": "Mars/Base"})
    with pytest.raises(ConfigError, match="CRMSYNC_VTIGER_ACCESS_KEY"):
        VtigerSettings.load("vtiger", {"base_url": "https://x", "username": "a",
                                       "access_key": "inline"})
    settings = VtigerSettings(base_url="https://crm.example.com/webservice.php/",
                              username="a", access_key="k")
    assert settings.base_url == "https://crm.example.com"


class Recorder:
    """A MockTransport server that answers like vTiger and remembers what it got."""

    def __init__(self, answers):
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        query = dict(request.url.params)
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        operation = query.get("operation") or form.get("operation") or \
            request.url.path.rsplit("/", 1)[-1]
        return self.answers(operation, query, form, request)


def _webservice_answers(operation, query, form, request):
    if operation == "getchallenge":
        return httpx.Response(200, json={"success": True, "result": {"token": "abc"}})
    if operation == "login":
        expected = hashlib.md5(b"abcKEY").hexdigest()
        ok = form.get("accessKey") == expected and form.get("username") == "admin"
        if not ok:
            return httpx.Response(200, json={"success": False, "error": {
                "code": "INVALID_USER_CREDENTIALS", "message": "Invalid username or password"}})
        return httpx.Response(200, json={"success": True, "result": {
            "sessionName": "S1", "userId": "19x1", "version": "0.22", "vtigerVersion": "8.0.0"}})
    if operation == "query":
        return httpx.Response(200, json={"success": True, "result": [{"echo": query["query"]}]})
    if operation == "revise":
        return httpx.Response(200, json={"success": True, "result": json.loads(form["element"])})
    return httpx.Response(500)


def test_webservice_puts_each_parameter_where_the_server_reads_it():
    server = Recorder(_webservice_answers)
    api = WebserviceApi(httpx.Client(transport=httpx.MockTransport(server)),
                        base_url="https://crm", username="admin", access_key="KEY")
    assert api.call("query", {"query": "select id from Contacts;"}) == [
        {"echo": "select id from Contacts;"}]
    api.call("revise", {"element": '{"id":"12x1","title":"t"}'})
    methods = [(r.method, r.url.params.get("operation") or
                parse_qs(r.content.decode())["operation"][0]) for r in server.requests]
    assert methods == [("GET", "getchallenge"), ("POST", "login"), ("GET", "query"),
                       ("POST", "revise")]
    assert server.requests[2].url.params["sessionName"] == "S1"
    assert server.requests[3].url.params == httpx.QueryParams()
    assert "sessionName=S1" in server.requests[3].content.decode()


def test_webservice_empty_500_is_a_retryable_remote_error():
    api = WebserviceApi(httpx.Client(transport=httpx.MockTransport(Recorder(_webservice_answers))),
                        base_url="https://crm", username="admin", access_key="KEY")
    with pytest.raises(RemoteError) as caught:
        api.call("sync", {"modifiedTime": "1", "elementType": "Contacts"})
    assert caught.value.status == 500 and caught.value.retryable
    assert "PHP" in str(caught.value)


def test_a_page_that_is_not_the_api_says_check_base_url():
    def html(request):
        return httpx.Response(200, text="<html>login</html>")

    api = WebserviceApi(httpx.Client(transport=httpx.MockTransport(html)),
                        base_url="https://crm", username="admin", access_key="KEY")
    with pytest.raises(RemoteError, match="base_url"):
        api.session()


def _cloud_answers(operation, query, form, request):
    auth = request.headers.get("authorization", "")
    if auth != "Basic " + base64.b64encode(b"admin:KEY").decode():
        return httpx.Response(401, extensions={"reason_phrase": b"Invalid credentials"})
    if operation == "retrieve":
        return httpx.Response(403, extensions={"reason_phrase": b"Permission denied for id"})
    if operation == "query":
        return httpx.Response(200, json={"success": True, "result": []})
    return httpx.Response(429, headers={"Retry-After": "2"})


def test_cloud_uses_basic_auth_and_reads_errors_from_the_status_line():
    server = Recorder(_cloud_answers)
    api = CloudApi(httpx.Client(transport=httpx.MockTransport(server)),
                   base_url="https://acme.odx.vtiger.com", username="admin", access_key="KEY")
    assert api.call("query", {"query": "select id from Contacts;"}) == []
    assert server.requests[0].url.path == "/restapi/v1/vtiger/default/query"
    with pytest.raises(RemoteError) as denied:
        api.call("retrieve", {"id": "12x1"})
    assert denied.value.code == "ACCESS_DENIED" and denied.value.status == 403
    assert "Permission denied for id" in str(denied.value)
    with pytest.raises(RemoteError) as limited:
        api.call("create", {"elementType": "Contacts", "element": "{}"})
    assert limited.value.retryable
    wrong = CloudApi(httpx.Client(transport=httpx.MockTransport(server)),
                     base_url="https://acme.odx.vtiger.com", username="admin", access_key="NO")
    with pytest.raises(AuthError, match="401"):
        wrong.call("query", {"query": "select id from Contacts;"})


def test_building_a_connector_makes_no_call():
    def forbidden(request):
        raise AssertionError(f"unexpected call {request.url}")

    settings = VtigerSettings(base_url="https://crm", username="admin", access_key="KEY")
    connector = VtigerConnector(settings,
                                http=httpx.Client(transport=httpx.MockTransport(forbidden)))
    assert connector.write([]) == []
