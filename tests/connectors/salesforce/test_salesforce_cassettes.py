"""The connector against cassettes built from the reference's documented exchanges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import vcr

from crmsync.errors import QuotaExhausted
from crmsync.model import Change
from crmsync.testing.plugin import vcr_config
from crmsync_salesforce import SalesforceConnector, SalesforceSettings
from crmsync_salesforce._bulk import bulk_query

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "salesforce"
recorder = vcr.VCR(**{**vcr_config(), "match_on": ["method", "scheme", "host", "port", "path",
                                                   "query", "body"]},
                   cassette_library_dir=str(CASSETTES))


@pytest.fixture
def connector(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CRMSYNC_SALESFORCE_CLIENT_SECRET", "not-recorded")
    settings = SalesforceSettings.load("salesforce", {
        "auth": "client_credentials", "client_id": "3MVG9key",
        "login_url": "https://acme.my.salesforce.com", "objects": ["Contact"],
        "fields": ["HasOptedOutOfEmail"], "memberships": False, "bulk_page_size": 2})
    with SalesforceConnector(settings, http=httpx.Client()) as built:
        yield built


def test_query_paging_follows_the_relative_next_records_url(connector: Any) -> None:
    with recorder.use_cassette("query_paging.yaml") as cassette:
        pages = list(connector.read(None))
    assert cassette.all_played
    records = [r for p in pages for r in p.records]
    assert [r.email for r in records] == ["ada@example.com", "bob@example.com", "cy@example.com"]
    assert [r.fields["HasOptedOutOfEmail"] for r in records] == ["false", "true", "false"]
    assert pages[-1].cursor.tie_id == "003RO0000000003AAA"
    assert connector.quota.used == 20


def test_collections_partial_failure(connector: Any) -> None:
    changes = [Change(email=f"p{n}@example.com", ids={"salesforce": record_id},
                      fields={"HasOptedOutOfEmail": "true"})
               for n, record_id in enumerate(["003xx000004TmiQAAS", "003xx000004TmiRAAS"])]
    with recorder.use_cassette("collections_partial.yaml") as cassette:
        results = connector.write(changes)
    assert cassette.all_played
    assert results[0].ok and results[0].record_id == "003xx000004TmiQAAS"
    assert results[1].code == "MALFORMED_ID" and "incorrect type" in (results[1].error or "")


def test_expired_session_then_daily_limit(connector: Any) -> None:
    with recorder.use_cassette("session_expired_then_limit.yaml") as cassette:
        assert connector.check().ok
        with pytest.raises(QuotaExhausted):
            list(connector.read(None))
    assert cassette.all_played


def test_bulk_query_locator_pages(connector: Any) -> None:
    with recorder.use_cassette("bulk_query.yaml") as cassette:
        rows = list(bulk_query(connector.api, "SELECT Id,Email FROM Contact"))
    assert cassette.all_played
    assert [row["Email"] for row in rows] == ["ada@example.com", "bob@example.com",
                                              "cy@example.com"]
