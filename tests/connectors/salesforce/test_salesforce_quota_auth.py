"""API budget (Sforce-Limit-Info, REQUEST_LIMIT_EXCEEDED) and the login strategies."""

from __future__ import annotations

import time
from typing import Any

import pytest

from crmsync.errors import AuthError, QuotaExhausted, RateLimited
from crmsync.model import Change
from crmsync_salesforce.emulator import SalesforceEmulator


def test_run_stops_at_the_configured_share_and_resumes(emulator: SalesforceEmulator,
                                                       connect: Any) -> None:
    with emulator.lock:
        emulator.seed(1000, 0)
        emulator.daily_limit = 20
    connector = connect(query_batch_size=200, quota_share=0.25, objects=["Contact"],
                        memberships=False)
    seen: list[str] = []
    cursor = None
    with pytest.raises(QuotaExhausted) as stopped:
        for page in connector.read(None):
            seen += [r.email for r in page.records]
            cursor = page.cursor
    assert "5 of 20" in str(stopped.value) and "resume" in str(stopped.value)
    assert cursor is not None and 0 < len(seen) < 1000
    with emulator.lock:
        emulator.used = 0  # a new day
    later = connect(query_batch_size=200, objects=["Contact"], memberships=False)
    seen += [r.email for page in later.read(cursor) for r in page.records]
    assert set(seen) == {f"contact0-{i}@example.com" for i in range(1000)}


def test_every_worker_on_the_org_stops_at_the_share(emulator: SalesforceEmulator,
                                                    connect: Any) -> None:
    """Salesforce counts the org's calls and tells each caller: a second connector (a
    second worker, its own process) stops after one call once the first has used the
    share, with no count kept by crmsync."""
    with emulator.lock:
        emulator.seed(5, 0)
        emulator.daily_limit = 20
    first = connect(quota_share=0.5, objects=["Contact"], memberships=False)
    second = connect(quota_share=0.5, objects=["Contact"], memberships=False)
    second.lists()  # a call made while the org had room
    while True:
        try:
            first.lists()
        except QuotaExhausted:
            break
    calls = emulator.used
    second.lists()  # one call: its Sforce-Limit-Info says the org is past the share
    with pytest.raises(QuotaExhausted) as stopped:
        second.lists()
    assert emulator.used == calls + 1 and f"{calls + 1} of 20" in str(stopped.value)


def test_a_long_lived_worker_calls_again_once_the_window_has_room(
        emulator: SalesforceEmulator, connect: Any) -> None:
    """A `crmsync worker` keeps its connector for days: a budget spent in the morning
    must not stop it for good. After ``recheck_s`` one call is let through; the org's
    own count decides."""
    with emulator.lock:
        emulator.seed(3, 0)
        emulator.daily_limit = emulator.used + 2
    connector = connect(objects=["Contact"], memberships=False)
    connector.quota.recheck_s = 0.3
    with pytest.raises(QuotaExhausted):
        for _ in range(3):
            connector.lists()
    with pytest.raises(QuotaExhausted):
        connector.lists()  # at once: still refused, without a call
    calls = emulator.used
    time.sleep(0.4)
    with pytest.raises(QuotaExhausted):
        connector.lists()  # one call lets the org say it is still spent
    assert emulator.used == calls or emulator.used == calls + 1
    with emulator.lock:
        emulator.used = 0  # the 24-hour window moved on
    time.sleep(0.4)
    assert len(connector.lists()) >= 0
    assert len(connector.lists()) >= 0  # and on, not one call per recheck


def test_request_limit_exceeded_stops_reads_and_writes_cleanly(emulator: SalesforceEmulator,
                                                               connect: Any) -> None:
    with emulator.lock:
        emulator.seed(3, 0)
        emulator.used = emulator.daily_limit = 50
    connector = connect()
    with pytest.raises(QuotaExhausted) as stopped:
        list(connector.read(None))
    assert stopped.value.code == "REQUEST_LIMIT_EXCEEDED" and stopped.value.status == 403
    with pytest.raises(QuotaExhausted):
        connector.write([Change(email="a@example.com", fields={"LastName": "A"})])


def test_budget_spent_mid_write_gives_retryable_results(emulator: SalesforceEmulator,
                                                        connect: Any) -> None:
    with emulator.lock:
        emulator.seed(400, 0)
    changes = [Change(email=c["email"], ids=c["ids"], fields={"HasOptedOutOfEmail": "true"})
               for c in emulator.state()["contacts"]]
    connector = connect()
    with emulator.lock:
        emulator.daily_limit = emulator.used + 1  # one more call today
    results = connector.write(changes)
    assert [r.ok for r in results] == [True] * 200 + [False] * 200
    assert all(r.retryable and r.code == "REQUEST_LIMIT_EXCEEDED" for r in results[200:])
    with pytest.raises(QuotaExhausted):
        connector.write(changes[200:])


@pytest.mark.parametrize("flow, overrides", [
    ("password", {"auth": "password", "client_secret": "emulator-consumer-secret",
                  "password": "emulator-password", "security_token": "emulatortoken"}),
    ("client_credentials", {"auth": "client_credentials",
                            "client_secret": "emulator-consumer-secret"}),
    ("soap", {"auth": "password", "client_id": None, "password": "emulator-password",
              "security_token": "emulatortoken"}),
    ("jwt", {}),
])
def test_each_login_flow(emulator: SalesforceEmulator, connect: Any, flow: str,
                         overrides: dict[str, Any]) -> None:
    connector = connect(**overrides)
    health = connector.check()
    assert health.ok, health.detail
    assert emulator.login.logins == {flow: 1}
    assert connector.api.flow.name == flow


def test_wrong_password_is_an_auth_error_without_the_secret(connect: Any) -> None:
    connector = connect(auth="password", client_secret="emulator-consumer-secret",
                        password="hunter2-wrong")
    health = connector.check()
    assert not health.ok and "invalid_grant" in health.detail
    assert "hunter2" not in health.detail
    with pytest.raises(AuthError):
        list(connector.read(None))


def test_jwt_signed_with_another_key_is_refused(connect: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    health = connect(private_key=other).check()
    assert not health.ok and "invalid assertion" in health.detail


def test_soap_login_refused_from_api_65(connect: Any) -> None:
    connector = connect(auth="soap", password="emulator-password", api_version="65.0")
    health = connector.check()
    assert not health.ok and "INVALID_OPERATION" in health.detail


def test_certificate_is_checked(emulator: SalesforceEmulator, connect: Any) -> None:
    health = connect(ca_file=None).check()  # the system CAs do not know the emulator's
    assert not health.ok and "not trusted: set ca_file" in health.detail


def test_check_names_fields_the_org_does_not_have(connect: Any) -> None:
    health = connect(fields=["LastName", "Shoe_Size__c"]).check()
    assert not health.ok
    assert "Contact.Shoe_Size__c" in health.detail and "Lead.Shoe_Size__c" in health.detail


def test_concurrent_long_requests_are_waited_out_not_a_spent_budget(
        emulator: SalesforceEmulator, connect: Any) -> None:
    # Issue 14.13: REQUEST_LIMIT_EXCEEDED also answers "ConcurrentPerOrgLongTxn Limit
    # exceeded" (too many long requests at once), which passes; only "TotalRequests" (or
    # usage at the limit) is the daily budget.
    with emulator.lock:
        emulator.seed(5, 0)
        emulator.busy_calls = 2
    connector = connect()
    slept: list[float] = []
    connector.api.sleep = slept.append  # type: ignore[method-assign]
    pages = list(connector.read(None))
    assert len({r.email for p in pages for r in p.records}) == 5
    assert len(slept) == 2 and connector.quota.reason is None


def test_a_long_busy_org_is_a_retryable_rate_limit_and_the_next_run_goes_on(
        emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
        emulator.busy_calls = 10
    connector = connect()
    connector.api.sleep = lambda seconds: None  # type: ignore[method-assign]
    with pytest.raises(RateLimited) as refused:
        list(connector.read(None))
    assert not isinstance(refused.value, QuotaExhausted) and refused.value.retryable
    assert "ConcurrentPerOrgLongTxn" in str(refused.value)
    with emulator.lock:
        emulator.busy_calls = 0
    assert len({r.email for p in connector.read(None) for r in p.records}) == 5


def test_jwt_audience_for_a_token_asked_at_my_domain(emulator: SalesforceEmulator,
                                                     connect: Any) -> None:
    # Issue 14.11: the token is asked at the My Domain URL (the emulator's), but the
    # connected app wants aud = https://login.salesforce.com.
    with emulator.lock:
        emulator.login.jwt_audiences = "standard"
    refused = connect().check()
    assert not refused.ok and "invalid_grant" in refused.detail
    health = connect(jwt_audience="https://login.salesforce.com").check()
    assert health.ok, health.detail


def test_jwt_audience_defaults_to_the_login_url_for_my_domain_apps(
        emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.login.jwt_audiences = "mydomain"  # some External Client Apps
    assert connect().check().ok
    assert not connect(jwt_audience="https://login.salesforce.com").check().ok
