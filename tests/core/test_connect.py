"""The connector toolkit (crmsync.connect): each piece's rule, tested once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from typing import Any

import httpx
import pytest

import crmsync.connect as connect
from crmsync.connect import (
    ErrorMap,
    ErrorRule,
    HttpConnectorSettings,
    Token,
    TokenAuth,
    cursor_pages,
    keyset_pages,
    next_url_pages,
    offset_pages,
    page_number_pages,
    results_in_order,
    verify_hmac,
    write_batches,
)
from crmsync.errors import AuthError, EventRejected, QuotaExhausted, RateLimited, RemoteError
from crmsync.model import InboundRequest, WriteResult

CONNECT_API = [
    "DEPRECATED_SPELLINGS", "Capabilities", "Connector", "ErrorMap", "ErrorRule",
    "HttpConnectorSettings", "RetryPolicy", "Token", "TokenAuth", "body_value",
    "build_client", "chunks", "copy_request", "cursor_pages", "failure", "iana_time_zone",
    "idempotent",
    "keyset_pages", "mark_streamed", "next_url_pages", "offset_pages", "page_number_pages",
    "rejected_address", "results_in_order", "retry_after_seconds", "verify_hmac",
    "with_form_value", "write_batches",
]


def test_connect_public_api_is_pinned() -> None:
    assert sorted(connect.__all__) == sorted(CONNECT_API)
    for name in connect.__all__:
        assert hasattr(connect, name)


# -- settings --------------------------------------------------------------------------
class VendorSettings(HttpConnectorSettings):
    base_url: str = "https://api.example.com"
    page_size: int = 10


@pytest.mark.parametrize(("old", "new", "value"), [
    ("timeout", "timeout_s", 12.0), ("rate", "rate_per_s", 3.0),
    ("ca_path", "ca_file", "/ca.pem"), ("ca_bundle", "ca_file", "/ca.pem"),
    ("verify", "ca_file", "/ca.pem"), ("read_overlap_s", "overlap_s", 60.0),
    ("overlap_seconds", "overlap_s", 60.0)])
def test_old_spellings_still_read_with_a_warning(old: str, new: str, value: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated: rename it to '{new}'"):
        settings = VendorSettings.load("vendor", {old: value})
    assert getattr(settings, new) == value
    assert f"rename it to {new!r}" in caplog.text


def test_one_spelling_wins_and_certificate_checks_stay_on() -> None:
    with pytest.raises(Exception, match="timeout and timeout_s are the same setting"):
        VendorSettings.load("vendor", {"timeout": 1, "timeout_s": 2})
    with pytest.raises(Exception, match="verify = false is not supported"):
        VendorSettings.load("vendor", {"verify": False})
    assert VendorSettings.load("vendor", {"verify": True}).ca_file is None
    with pytest.raises(Exception, match="unknown key"):
        VendorSettings.load("vendor", {"timeuot_s": 2})


def test_the_settings_build_the_client_they_describe() -> None:
    seen: list[httpx.Request] = []
    settings = VendorSettings.load("vendor", {"timeout_s": 7, "retries": 2})
    with settings.http_client(transport=httpx.MockTransport(
            lambda r: seen.append(r) or httpx.Response(503))) as client:
        assert client.timeout.read == 7
        response = client.get("/ping")
    assert response.status_code == 503 and len(seen) == 2  # retries = attempts
    assert str(seen[0].url) == "https://api.example.com/ping"


# -- the token flow ---------------------------------------------------------------------
class GrantAuth(TokenAuth):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.issued = 0
        self.gate = threading.Event()
        self.gate.set()

    def obtain(self) -> Token:
        self.gate.wait(5)
        self.issued += 1
        return Token(value=f"t{self.issued}", refresh=f"r{self.issued}", expires_in=3600)

    def refresh(self, token: Token) -> Token:
        if token.refresh == "revoked":
            raise AuthError("refresh refused")
        self.issued += 1
        return Token(value=f"t{self.issued}", refresh=f"r{self.issued}")


def _vendor(valid: set[str], log: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Authorization", "")
        log.append(token)
        return httpx.Response(200 if token.removeprefix("Bearer ") in valid else 401)
    return httpx.MockTransport(handle)


def test_a_refused_token_is_renewed_once_and_the_call_sent_again() -> None:
    auth, log = GrantAuth(), []
    valid = {"t1"}
    client = httpx.Client(transport=_vendor(valid, log), auth=auth)
    assert client.get("https://x/a").status_code == 200
    valid.clear()
    valid.add("t2")  # the vendor expired t1
    assert client.get("https://x/b").status_code == 200
    assert log == ["Bearer t1", "Bearer t1", "Bearer t2"]
    assert (auth.obtained, auth.refreshed) == (1, 1)
    valid.clear()  # refused even after the renewal: the 401 is the caller's to map
    assert client.get("https://x/c").status_code == 401
    assert len(log) == 5  # sent twice, never more


def test_an_expired_token_is_renewed_before_the_call() -> None:
    now = [0.0]
    auth, log = GrantAuth(clock=lambda: now[0]), []
    client = httpx.Client(transport=_vendor({"t1", "t2"}, log), auth=auth)
    client.get("https://x/a")
    now[0] = 3600.0 - 59  # within the margin before expiry
    client.get("https://x/a")
    assert log == ["Bearer t1", "Bearer t2"] and auth.refreshed == 1


def test_a_refused_refresh_falls_back_to_a_login() -> None:
    auth = GrantAuth()
    stale = Token(value="t0", refresh="revoked")
    auth._token = stale
    assert auth.renew(stale).value == "t1" and auth.obtained == 1


def test_concurrent_refusals_renew_the_token_once() -> None:
    auth, log = GrantAuth(), []
    valid = {"t1"}
    client = httpx.Client(transport=_vendor(valid, log), auth=auth)
    client.get("https://x/warm")
    valid.clear()
    valid.add("t2")
    auth.gate.clear()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        client.get("https://x/p").status_code)) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    auth.gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [200] * 6
    assert auth.issued == 2  # t1, then ONE renewal for six refused calls


# -- the error table ----------------------------------------------------------------------
ERRORS = ErrorMap("Vendor", code_keys=("errorCode", "error.code"),
                  message_keys=("message", "error.message"), rules=[
    ErrorRule(QuotaExhausted, code="DAILY_LIMIT", advice="resume tomorrow"),
    ErrorRule(RemoteError, status=409, retryable=False, advice="read it again"),
    ErrorRule(AuthError, status=403, contains="token", advice="renew the API token"),
])


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers,
                          request=httpx.Request("GET", "https://x/y"))


def test_the_error_table_maps_statuses_and_bodies() -> None:
    quota = ERRORS.error(_answer(403, [{"errorCode": "DAILY_LIMIT", "message": "spent"}]),
                         "GET /y")
    assert isinstance(quota, QuotaExhausted) and quota.code == "DAILY_LIMIT"
    assert str(quota) == "Vendor GET /y: HTTP 403 DAILY_LIMIT: spent (resume tomorrow)"
    conflict = ERRORS.error(_answer(409, {"error": {"code": "C", "message": "m"}}), "PUT")
    assert type(conflict) is RemoteError and conflict.retryable is False
    assert isinstance(ERRORS.error(_answer(403, {"message": "bad token"}), "x"), AuthError)
    assert type(ERRORS.error(_answer(403, {"message": "no"}), "x")) is RemoteError
    limited = ERRORS.error(_answer(429, {}, {"Retry-After": "7"}), "x")
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    outage = ERRORS.error(_answer(503, None), "x")
    assert type(outage) is RemoteError and outage.retryable and outage.status == 503
    assert isinstance(ERRORS.error(_answer(401, {}), "x"), AuthError)
    assert ERRORS.check(_answer(201, {}), "x").status_code == 201


def test_an_unreachable_vendor_is_a_retryable_error_saying_what_to_check() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    with pytest.raises(RemoteError, match="did not answer GET /y: ConnectError; check "
                       "base_url") as info:
        ERRORS.call(httpx.Client(transport=httpx.MockTransport(down)), "GET", "https://x/y")
    assert info.value.retryable


# -- paginators -----------------------------------------------------------------------
def test_page_number_paging_does_not_stop_on_a_short_page() -> None:
    data = list(range(7))
    pages = [data[0:3], data[3:4], data[4:7]]  # the vendor capped the second page
    assert list(page_number_pages(lambda n: (pages[n], 7))) == pages
    # without a total, an empty page ends it
    assert list(page_number_pages(lambda n: (([*pages, []])[n], None))) == pages


def test_offset_paging_reads_on_until_the_total() -> None:
    data = list(range(5))
    calls: list[int] = []

    def fetch(offset: int) -> tuple[list[int], int]:
        calls.append(offset)
        return data[offset:offset + 2][:1 if offset == 2 else 2], 5
    assert [x for page in offset_pages(fetch) for x in page] == data
    assert calls == [0, 2, 3]


def test_next_url_and_cursor_paging_stop_only_without_a_next_position() -> None:
    pages = {None: ([1, 2], "/p2"), "/p2": ([], "/p3"), "/p3": ([3], None)}
    assert list(next_url_pages(lambda url: pages[url])) == [[1, 2], [3]]
    loop = {None: ([1], "a"), "a": ([2], "a")}
    with pytest.raises(RemoteError, match="'a' twice"):
        list(cursor_pages(lambda c: loop[c]))


def test_keyset_read_loses_and_repeats_nothing() -> None:
    rows = [{"id": i} for i in range(1, 8)]

    def fetch(after: int | None) -> list[dict[str, int]]:
        start = 0 if after is None else after - 1  # the vendor's ">=": one row again
        return rows[start:start + 3]
    read = [row["id"] for page in keyset_pages(fetch, lambda r: r["id"]) for row in page]
    assert read == list(range(1, 8))
    with pytest.raises(RemoteError, match="does not move past"):
        list(keyset_pages(lambda after: rows[:2], lambda r: r["id"]))  # ignores "after"


# -- batches --------------------------------------------------------------------------
def test_batches_fall_back_to_one_record_at_a_time_when_refused_whole() -> None:
    sent: list[list[str]] = []

    def send(batch: Any) -> list[WriteResult]:
        sent.append(list(batch))
        if "bad" in batch:
            raise RemoteError("HTTP 400: one invalid record", status=400)
        return [WriteResult(ok=True, record_id=item) for item in batch]

    def one(item: str) -> WriteResult:
        if item == "bad":
            raise RemoteError("invalid email", status=400, code="INVALID")
        return WriteResult(ok=True, record_id=item)

    results = write_batches(["a", "b", "c", "bad", "d"], 2, send, send_one=one)
    assert [r.ok for r in results] == [True, True, True, False, True]
    assert results[3].code == "INVALID" and results[2].record_id == "c"
    assert sent == [["a", "b"], ["c", "bad"], ["d"]]
    # an outage is not a reason to hammer the vendor record by record
    down = write_batches(["a", "b"], 5, lambda b: (_ for _ in ()).throw(
        RemoteError("503", status=503, retryable=True)), send_one=one)
    assert [(r.ok, r.retryable) for r in down] == [(False, True)] * 2


def test_a_partial_answer_gives_one_result_per_change_in_order() -> None:
    results = results_in_order(
        ["a@x", "b@x", "c@x"], str.upper, done={"A@X": "1"},
        failed={"C@X": WriteResult(ok=False, error="invalid", code="INVALID")})
    assert [(r.ok, r.record_id, r.code) for r in results] == [
        (True, "1", None), (False, None, "missing"), (False, None, "INVALID")]
    assert results[1].retryable


# -- webhook signatures ---------------------------------------------------------------
def _signed(secret: str, *, stamp: str, url: str = "https://hooks.example.com/h/s?x=1",
            body: bytes = b'{"a":1}') -> InboundRequest:
    mac = hmac.new(secret.encode(), b"POST" + url.encode() + body + stamp.encode(),
                   hashlib.sha256).digest()
    return InboundRequest(method="POST", path="/hooks/crm", url=url, body=body,
                          headers={"X-Sig-V3": base64.b64encode(mac).decode(),
                                   "X-Stamp": stamp})


def test_verify_hmac_over_method_url_body_and_timestamp() -> None:
    now = 1_700_000_000.0
    options = dict(template="{method}{url}{body}{timestamp}", header="X-Sig-V3",
                   encoding="base64", max_age_s=300, timestamp_header="X-Stamp",
                   now=lambda: now)
    verify_hmac(_signed("k", stamp=str(int(now * 1000))), "k", **options)  # milliseconds
    with pytest.raises(EventRejected, match="wrong X-Sig-V3") as info:
        verify_hmac(_signed("other", stamp=str(int(now))), "k", **options)
    assert info.value.status == 401
    with pytest.raises(EventRejected, match="more than 300 s"):
        verify_hmac(_signed("k", stamp=str(int(now - 301))), "k", **options)
    tampered = _signed("k", stamp=str(int(now))).model_copy(
        update={"url": "https://evil.example.com/h/s?x=1"})
    with pytest.raises(EventRejected):
        verify_hmac(tampered, "k", **options)
    hexed = InboundRequest(method="POST", path="/", body=b"b", headers={
        "X-Signature": "sha256=" + hmac.new(b"k", b"b", hashlib.sha256).hexdigest().upper()})
    verify_hmac(hexed, "k", prefix="sha256=")


def test_core_and_connectors_ship_py_typed() -> None:
    # pyproject says "Typing :: Typed": mypy --strict on a plugin uses these packages' types
    import importlib
    from pathlib import Path

    for name in ("crmsync", "crmsync_mailup", "crmsync_salesforce", "crmsync_sugarcrm",
                 "crmsync_vtiger"):
        package = importlib.import_module(name)
        assert (Path(package.__file__).parent / "py.typed").is_file(), name
