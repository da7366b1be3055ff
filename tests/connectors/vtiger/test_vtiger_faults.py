"""Faults: lost sessions, raced and expired challenges, vTiger's error codes."""

from __future__ import annotations

import threading

import httpx
import pytest

from crmsync.errors import AuthError, RemoteError
from crmsync.model import Change


def logins(server):
    return sum(1 for c in server.emulator.calls if c["operation"] == "login")


def test_session_lost_in_the_middle_of_a_read_is_renewed(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=450)
    connector = vtiger_connector(server)
    seen = []
    for number, page in enumerate(connector.read(None)):
        seen += [r.ids["vtiger"] for r in page.records]
        if number == 1:
            server.emulator.expire_sessions()
    assert len(set(seen)) == 450
    assert logins(server) == 2


def test_session_lost_between_sync_pages_is_renewed(vtiger_server, vtiger_connector):
    from datetime import UTC, datetime

    from crmsync.model import Cursor

    server = vtiger_server(contacts=600)
    connector = vtiger_connector(server, incremental="sync", campaigns=[])
    pages = connector.read(Cursor(at=datetime(2000, 1, 1, tzinfo=UTC)))
    first = next(pages)
    server.emulator.expire_sessions()
    rest = [r for page in pages for r in page.records]
    owned = sum(1 for n in range(600) if n % 5 != 4)
    assert len({r.ids["vtiger"] for r in [*first.records, *rest]}) == owned
    assert logins(server) == 2


@pytest.mark.parametrize(("seconds", "code"), [(1801, "SESSION_LEFT_IDLE"),
                                                 (86401, "SESSION_EXPIRED")])
def test_idle_and_expired_sessions_log_in_again(vtiger_server, vtiger_connector, seconds, code):
    server = vtiger_server(contacts=5)
    connector = vtiger_connector(server)
    assert connector.check().ok
    checked = len(server.emulator.calls)  # check made a diff read too
    server.emulator.advance(seconds)
    [result] = connector.write([Change(email="contact0-1@example.com", fields={"title": "t"})])
    assert result.ok
    assert logins(server) == 2
    answers = [c for c in server.emulator.calls[checked:] if c["operation"] == "query"]
    assert len(answers) == 2  # the first met `code`, the second went through


class _Rival(httpx.BaseTransport):
    """Before our first login, another client asks for a challenge, replacing ours."""

    def __init__(self, url: str, *, expire=None) -> None:
        self.inner = httpx.HTTPTransport()
        self.url = url
        self.expire = expire
        self.fired = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.fired and request.method == "POST" and b"operation=login" in request.read():
            self.fired = True
            if self.expire is not None:
                self.expire()
            else:
                httpx.get(f"{self.url}/webservice.php",
                          params={"operation": "getchallenge", "username": "admin"})
        return self.inner.handle_request(request)


@pytest.mark.parametrize("how", ["replaced", "expired"])
def test_a_spoilt_challenge_is_asked_for_again(vtiger_server, vtiger_connector, how):
    server = vtiger_server(contacts=3)
    expire = (lambda: server.emulator.advance(301)) if how == "expired" else None
    http = httpx.Client(transport=_Rival(server.url, expire=expire))
    profile = server.emulator.demo_profile()
    from crmsync_vtiger import VtigerConnector

    connector = VtigerConnector(VtigerConnector.Settings(
        **profile["settings"], access_key=profile["secrets"]["CRMSYNC_VTIGER_ACCESS_KEY"]),
        http=http)
    try:
        assert connector.check().ok
    finally:
        connector.close()
        http.close()
    assert logins(server) == 2
    assert connector.api.logins == 1


def test_concurrent_first_calls_log_in_once(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=3)
    connector = vtiger_connector(server)
    barrier = threading.Barrier(4)
    errors = []

    def work():
        barrier.wait()
        try:
            connector.api.call("query", {"query": "select id from Contacts;"})
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert logins(server) == 1


def test_query_syntax_error_names_the_query(vtiger_server, vtiger_connector):
    connector = vtiger_connector(vtiger_server())
    with pytest.raises(RemoteError) as caught:
        connector.api.call("query", {"query": "select * from Contacts"})
    assert caught.value.code == "QUERY_SYNTAX_ERROR"
    assert "select * from Contacts" in str(caught.value)
    assert not caught.value.retryable


@pytest.mark.parametrize(("operation", "params", "words"), [
    ("retrieve", {"id": "12x99999"}, "does not exist, was deleted"),
    ("retrieve", {"id": "garbage"}, "does not exist, was deleted"),
    ("describe", {"elementType": "Nope"}, "not enabled for webservices"),
    ("query", {"query": "select nosuchfield from Contacts;"}, "misspelt"),
])
def test_access_denied_is_explained_per_operation(vtiger_server, vtiger_connector, operation,
                                                  params, words):
    connector = vtiger_connector(vtiger_server())
    with pytest.raises(RemoteError) as caught:
        connector.api.call(operation, params)
    assert caught.value.code == "ACCESS_DENIED"
    assert words in str(caught.value)


def test_a_wrong_access_key_fails_check_clearly(vtiger_server, vtiger_connector, monkeypatch):
    server = vtiger_server()
    monkeypatch.setenv("CRMSYNC_VTIGER_ACCESS_KEY", "not-the-key-0000")
    from crmsync_vtiger import VtigerConnector

    settings = VtigerConnector.Settings.load("vtiger", server.emulator.demo_profile()["settings"])
    with VtigerConnector(settings) as connector:
        health = connector.check()
    assert not health.ok
    assert "Access Key" in health.detail and "not-the-key" not in health.detail
    with VtigerConnector(settings.model_copy(update={"flavour": "cloud"})) as cloud:
        health = cloud.check()
    assert not health.ok and "401" in health.detail


def test_injected_server_errors_are_retried_or_reported_retryable(vtiger_server,
                                                                 vtiger_connector):
    server = vtiger_server(contacts=3)
    connector = vtiger_connector(server)
    assert connector.check().ok
    server.emulator.faults.update({"error_status": 503, "error_count": 1})
    assert len(connector.lists()) == 1  # a GET: retried by the transport
    server.emulator.faults.update({"error_status": 503, "error_count": 1})
    [result] = connector.write([Change(email="contact0-1@example.com", ids={"vtiger": "12x3"},
                                       fields={"title": "t"})])
    assert not result.ok and result.retryable  # a POST is not repeated blindly


def test_a_wrong_key_raises_auth_error_from_the_session(vtiger_server, vtiger_connector,
                                                                monkeypatch):
    server = vtiger_server(contacts=2)
    monkeypatch.setenv("CRMSYNC_VTIGER_ACCESS_KEY", "wrong-key-000000")
    from crmsync_vtiger import VtigerConnector

    settings = VtigerConnector.Settings.load("vtiger", server.emulator.demo_profile()["settings"])
    with VtigerConnector(settings) as connector, pytest.raises(AuthError):
        connector.api.session()


def test_a_connection_cut_mid_answer_is_retried_for_reads_and_reported_for_writes(
        vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=250)
    connector = vtiger_connector(server)
    assert connector.check().ok
    server.emulator.faults.update({"drop_count": 2})
    assert len({r.ids["vtiger"] for page in connector.read(None) for r in page.records}) == 250
    assert server.emulator.faults.drop_count == 0, "both cut answers were retried"
    # a write whose answer is lost: vTiger did update the record; crmsync cannot know,
    # so it reports the write as failed and retryable (the next run writes it again)
    server.emulator.faults.update({"drop_count": 1})
    [result] = connector.write([Change(email="contact0-1@example.com", ids={"vtiger": "12x3"},
                                       fields={"title": "lost answer"})])
    assert not result.ok and result.retryable, result
    [again] = connector.write([Change(email="contact0-1@example.com", ids={"vtiger": "12x3"},
                                      fields={"title": "lost answer"})])
    assert again.ok
