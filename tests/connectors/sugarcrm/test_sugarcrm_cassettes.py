"""Replays the cassettes (real SuiteCRM answers, documented Sugar answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sugarcrm_cassettes import ALICE, BASE_URL, CASSETTES, NEWSLETTER, PASSWORD, recorder

from crmsync.errors import RemoteError
from crmsync.model import Change
from crmsync_sugarcrm import SugarConnector


def _read(connector: SugarConnector) -> list[Any]:
    return [r for page in connector.read(None) for r in page.records]


def _login_refused(connector: SugarConnector) -> Any:
    return connector.check()


def _bad_query(connector: SugarConnector) -> Any:
    try:
        connector.flavour.call(
            "get_entry_list", module_name="Contacts", query="contacts.nosuchcolumn = 1",
            order_by="", offset=0, select_fields=["id", "first_name", "last_name", "email1",
                                                  "email_opt_out", "date_modified", "deleted"],
            link_name_to_fields_array=[], max_results=10, deleted=0, favorites=False)
    except RemoteError as exc:
        return exc
    raise AssertionError("a bad query must raise")


def _opt_out_and_list(connector: SugarConnector) -> Any:
    return connector.write([Change(email="alice@example.com", ids={"sugarcrm": ALICE},
                                   fields={"email_opt_out": "true"},
                                   memberships={f"target_list:{NEWSLETTER}": ""})])


ACTIONS: dict[str, Callable[[SugarConnector], Any]] = {
    "v4_1_login_refused": _login_refused,
    "v4_1_read_pages": _read,
    "v4_1_session_lost": _read,
    "v4_1_bad_query": _bad_query,
    "v4_1_opt_out_and_list": _opt_out_and_list,
    "rest_read": _read,
    "rest_token_refresh": _read,
}


@pytest.fixture
def replay(monkeypatch):
    monkeypatch.setenv("CRMSYNC_SUGARCRM_PASSWORD", PASSWORD)
    machine = recorder()

    def run(name: str, **overrides: Any) -> Any:
        assert (CASSETTES / f"{name}.yaml").exists(), "run build_sugarcrm_cassettes.py"
        from sugarcrm_cassettes import SCENARIOS

        settings = SugarConnector.Settings.load("sugarcrm", {
            "base_url": BASE_URL, "username": "admin", "retries": 1,
            **SCENARIOS[name][0], **overrides})
        with machine.use_cassette(f"{name}.yaml") as cassette, \
                SugarConnector(settings) as connector:
            result = ACTIONS[name](connector)
        assert cassette.all_played, f"{name}: not every recorded exchange was used"
        return result

    return run


def test_v4_1_login_refused(replay):
    health = replay("v4_1_login_refused")
    assert not health.ok and "Invalid Login (10)" in health.detail


def test_v4_1_read_pages_with_target_list(replay):
    records = replay("v4_1_read_pages")
    assert [r.email for r in records] == [
        "alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com",
        "eve@example.com"]
    assert [r.fields["email_opt_out"] for r in records] == ["false", "true", "false", "false",
                                                            "true"]
    assert [bool(r.memberships) for r in records] == [True, True, True, True, False]
    assert records[0].fields["first_name"] == "Alice"
    assert records[0].modified_at.isoformat() == "2026-11-28T05:59:10+00:00"


def test_v4_1_lost_session_logs_in_again(replay):
    records = replay("v4_1_session_lost")
    assert len(records) == 4 and records[0].email == "alice@example.com"


def test_v4_1_bad_query_is_an_empty_500(replay):
    error = replay("v4_1_bad_query")
    assert error.status == 500 and "empty body" in str(error)


def test_v4_1_opt_out_goes_to_the_email_address_row(replay):
    [result] = replay("v4_1_opt_out_and_list")
    assert result.ok and result.record_id == ALICE


def test_rest_read_documented_shapes(replay):
    records = replay("rest_read")
    assert [(r.email, r.fields["email_opt_out"]) for r in records] == [
        ("rob@x.io", "false"), ("florence@x.io", "true")]


def test_rest_refreshes_after_invalid_grant(replay):
    assert len(replay("rest_token_refresh")) == 2
