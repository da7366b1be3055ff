"""The package's public names are a promise: pin them."""

from __future__ import annotations

import crmsync_salesforce
import crmsync_salesforce.emulator
from crmsync.registry import load, load_emulator


def test_public_names() -> None:
    assert crmsync_salesforce.__all__ == ["SalesforceConnector", "SalesforceSettings"]
    assert crmsync_salesforce.emulator.__all__ == ["EVENTS_STATUSES", "SalesforceEmulator"]


def test_entry_points_resolve(monkeypatch) -> None:
    monkeypatch.setenv("CRMSYNC_CONNECTORS", "salesforce")
    assert load("salesforce") is crmsync_salesforce.SalesforceConnector
    emulator = load_emulator("salesforce")
    assert emulator is crmsync_salesforce.emulator.SalesforceEmulator
    assert emulator.tls is True  # `crmsync emulate salesforce` serves HTTPS by default
