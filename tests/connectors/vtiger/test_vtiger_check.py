"""`check` makes the reads a sync makes (issue #13, point 4), and what stock vTiger 8.0.0
on PHP 8 does to them (point 5: sync and logout die with an empty HTTP 500)."""

from __future__ import annotations


def test_check_makes_a_diff_read(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=3)
    health = vtiger_connector(server).check()
    assert health.ok and "a diff read since" in health.detail
    operations = [c["operation"] for c in server.emulator.calls]
    assert "sync" in operations and "retrieve_related" in operations


def test_check_fails_on_stock_8_0_0_under_php_8(vtiger_server, vtiger_connector):
    """The unpatched OperationManager passes named arguments: sync answers an empty 500.
    Before, check logged in and passed; every diff sync then failed."""
    server = vtiger_server(contacts=3, php8_stock=True)
    connector = vtiger_connector(server)
    health = connector.check()
    assert not health.ok
    assert health.detail.startswith("vTiger failed sync with HTTP 500 and no answer")
    assert "Unknown named parameter" in health.detail
    assert "docs/connectors/vtiger.md" in health.detail
    connector.close()  # logout dies the same way: harmless, the session expires
