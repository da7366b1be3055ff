"""Faults: token expiry and rotation, lost sessions, bad queries, maintenance."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
from sugarcrm_support import control

from crmsync.errors import AuthError, RemoteError
from crmsync.model import Change
from crmsync_sugarcrm.legacy import rest_data


def read_emails(connector):
    return sorted(r.email for page in connector.read(None) for r in page.records)


def token(server, **body):
    return httpx.post(f"{server.url}/rest/v11/oauth2/token",
                      json={"client_id": "sugar", "client_secret": "", **body})


# -- REST v11 ----------------------------------------------------------------------------
def test_expired_token_is_refreshed_with_the_rotated_refresh_token(serve, connect):
    server = serve("rest", contacts=4)
    connector = connect(server)
    expected = read_emails(connector)
    for round_ in (1, 2, 3):
        control(server, "faults", {"expire_sessions": True})
        assert read_emails(connector) == expected
        # each refresh used the refresh token of the previous one: no new password login
        assert control(server, "stats")["refreshes"] == round_
        assert control(server, "stats")["grants"] == 1


def test_refused_refresh_token_falls_back_to_a_password_login(serve, connect):
    server = serve("rest", contacts=2)
    connector = connect(server)
    assert connector.check().ok
    control(server, "tokens", {"expire_refresh": True})
    control(server, "faults", {"expire_sessions": True})
    assert len(read_emails(connector)) == 2
    assert control(server, "stats")["grants"] == 2


def test_token_lifetime_runs_out(serve, connect):
    server = serve("rest", contacts=2)
    control(server, "tokens", {"ttl_s": 0.2})
    connector = connect(server)
    assert connector.check().ok
    time.sleep(0.3)
    assert connector.check().ok
    assert control(server, "stats")["refreshes"] == 1


def test_emulator_rotates_refresh_tokens_and_keeps_one_session_per_platform(serve):
    server = serve("rest")
    first = token(server, grant_type="password", username="admin", password="crmsync-demo",
                  platform="crmsync").json()
    second = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"],
                   platform="crmsync")
    assert second.status_code == 200
    again = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"],
                  platform="crmsync")
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    stale = httpx.get(f"{server.url}/rest/v11/ping",
                      headers={"OAuth-Token": first["access_token"]})
    assert stale.status_code == 401
    assert stale.json() == {"error": "invalid_grant",
                            "error_message": "The access token provided is invalid."}
    current = second.json()["access_token"]
    # A browser login (platform "base") leaves our platform's session alone...
    token(server, grant_type="password", username="admin", password="crmsync-demo",
          platform="base")
    ok = httpx.get(f"{server.url}/rest/v11/ping", headers={"OAuth-Token": current})
    assert ok.status_code == 200 and ok.json() == "pong"
    # ...while a second login on the same platform ends it.
    token(server, grant_type="password", username="admin", password="crmsync-demo",
          platform="crmsync")
    kicked = httpx.get(f"{server.url}/rest/v11/ping", headers={"OAuth-Token": current})
    assert kicked.status_code == 401


def test_the_token_goes_in_the_oauth_token_header(serve):
    server = serve("rest")
    access = token(server, grant_type="password", username="admin", password="crmsync-demo",
                   platform="x").json()["access_token"]
    bearer = httpx.get(f"{server.url}/rest/v11/ping",
                       headers={"Authorization": f"Bearer {access}"})
    assert bearer.status_code == 401 and bearer.json()["error"] == "need_login"


def test_bad_password_is_a_clear_auth_error_without_the_secret(serve, connect):
    server = serve("rest")
    connector = connect(server)
    connector.settings.__dict__["password"] = type(connector.settings.password)("wrong-pass")
    health = connector.check()
    assert not health.ok and "CRMSYNC_SUGARCRM_PASSWORD" in health.detail
    assert "wrong-pass" not in health.detail
    with pytest.raises(AuthError):
        connector.lists()


def test_rest_read_retries_maintenance(serve, connect):
    server = serve("rest", contacts=3)
    connector = connect(server)
    assert connector.check().ok
    control(server, "faults", {"error_status": 503, "error_count": 2})
    assert len(read_emails(connector)) == 3


def test_rest_read_gives_up_after_the_retries_with_a_retryable_error(serve, connect):
    server = serve("rest", contacts=3)
    connector = connect(server, retries=2)
    assert connector.check().ok
    control(server, "faults", {"error_status": 503, "error_count": 5})
    with pytest.raises(RemoteError) as caught:
        read_emails(connector)
    assert caught.value.retryable and caught.value.status == 503
    assert "maintenance" in str(caught.value) and "retry later" in str(caught.value)


# -- legacy v4_1 -------------------------------------------------------------------------
def test_lost_session_logs_in_again(serve, connect):
    server = serve("v4_1", contacts=4)
    connector = connect(server)
    expected = read_emails(connector)
    control(server, "faults", {"expire_sessions": True})
    assert read_emails(connector) == expected
    [result] = connector.write([Change(email=expected[0], fields={"last_name": "Back"})])
    assert result.ok
    assert control(server, "stats")["logins"] == 2


def test_v4_1_bad_password(serve, connect):
    server = serve("v4_1")
    connector = connect(server)
    connector.settings.__dict__["password"] = type(connector.settings.password)("nope-nope")
    health = connector.check()
    assert not health.ok and "Invalid Login" in health.detail
    assert "nope-nope" not in health.detail


def v41(server, method, rest_data_text):
    return httpx.post(f"{server.url}/service/v4_1/rest.php", data={
        "method": method, "input_type": "JSON", "response_type": "JSON",
        "rest_data": rest_data_text})


def test_php8_rejects_unknown_argument_names_but_takes_a_list(serve):
    server = serve("v4_1")
    digest = hashlib.md5(b"crmsync-demo").hexdigest()
    named_wrong = v41(server, "login", json.dumps({
        "user_auth": {"user_name": "admin", "password": digest},
        "application_name": "x", "name_value_list": []}))
    assert named_wrong.status_code == 500 and named_wrong.content == b""
    named_right = v41(server, "login", json.dumps({
        "user_auth": {"user_name": "admin", "password": digest},
        "application": "x", "name_value_list": []}))
    assert named_right.status_code == 200 and named_right.json()["id"]
    positional = v41(server, "login", json.dumps(
        [{"user_name": "admin", "password": digest}, "x", []]))
    assert positional.status_code == 200 and positional.json()["module_name"] == "Users"
    too_few = v41(server, "get_entry_list", json.dumps([positional.json()["id"], "Contacts"]))
    assert too_few.status_code == 500 and too_few.content == b""


def test_rest_data_names_arguments_and_sends_a_list():
    assert json.loads(rest_data("login", user_auth={"user_name": "a", "password": "h"},
                                application="crmsync", name_value_list=[])) == [
        {"user_name": "a", "password": "h"}, "crmsync", []]
    with pytest.raises(TypeError, match="application_name"):
        rest_data("login", user_auth={}, application_name="crmsync", name_value_list=[])
    with pytest.raises(TypeError, match="missing"):
        rest_data("logout")


def test_bad_query_is_a_clear_remote_error(serve, connect):
    server = serve("v4_1", contacts=1)
    connector = connect(server)
    with pytest.raises(RemoteError) as caught:
        connector.flavour.call(
            "get_entry_list", module_name="Contacts", query="contacts.nosuchcolumn = 1",
            order_by="", offset=0, select_fields=["id"], link_name_to_fields_array=[],
            max_results=10, deleted=0, favorites=False)
    assert caught.value.status == 500 and not caught.value.retryable
    assert "empty body" in str(caught.value) and "query" in str(caught.value)


def test_v4_1_errors_are_http_200_bodies(serve):
    server = serve("v4_1")
    answer = v41(server, "get_entry_list", json.dumps(
        ["not-a-session", "Contacts", "", "", 0, ["id"], [], 10, 0, False]))
    assert answer.status_code == 200
    assert answer.json() == {"name": "Invalid Session ID", "number": 11,
                             "description": "The session ID is invalid"}


def test_v4_1_read_retries_a_503(serve, connect):
    server = serve("v4_1", contacts=3)
    connector = connect(server)
    assert connector.check().ok
    control(server, "faults", {"error_status": 503, "error_count": 2})
    assert len(read_emails(connector)) == 3


@pytest.mark.parametrize("flavour", ["rest", "v4_1"])
def test_tls_with_the_emulators_ca_and_refused_without_it(serve, connect, flavour):
    server = serve(flavour, contacts=2, tls=True)
    assert server.url.startswith("https://")
    assert len(read_emails(connect(server))) == 2  # the profile trusts the throw-away CA
    untrusted = connect(server, ca_file=None, retries=1)
    health = untrusted.check()
    assert not health.ok and "CERTIFICATE" in health.detail.upper()


@pytest.mark.parametrize("flavour", ["rest", "v4_1"])
def test_a_create_whose_answer_is_cut_is_not_sent_again(serve, connect, flavour,
                                                        monkeypatch):
    """SugarCRM made the contact but its answer was lost: crmsync reports the write as
    failed and retryable; it does not send the create again (a second contact)."""
    server = serve(flavour=flavour)
    connector = connect(server)
    assert connector.check().ok
    flavour_class = type(connector.flavour)
    apply = flavour_class.apply

    def cut_first_write(self, writes):  # the lookups before it go through
        control(server, "faults", {"drop_count": 1})
        monkeypatch.setattr(flavour_class, "apply", apply)
        return apply(self, writes)

    monkeypatch.setattr(flavour_class, "apply", cut_first_write)
    [result] = connector.write([Change(email="new.person@example.com",
                                       fields={"last_name": "New"})])
    assert not result.ok and result.retryable, result
    made = [c for c in server.emulator.state()["contacts"]
            if c["email"] == "new.person@example.com"]
    assert len(made) == 1, "the create was sent twice"
    # the reads around it are retried through the same kind of cut
    control(server, "faults", {"drop_count": 1})
    assert connector.check().ok
