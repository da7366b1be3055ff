"""Fixtures: the Salesforce emulator over real HTTPS (throw-away CA) and a connector on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer
from crmsync.testing import closing_factory
from crmsync_salesforce import SalesforceConnector, SalesforceSettings
from crmsync_salesforce.emulator import SalesforceEmulator


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    emulator = SalesforceEmulator()
    with EmulatorServer(emulator, tls=True) as running:
        yield running


@pytest.fixture
def emulator(server: EmulatorServer) -> SalesforceEmulator:
    emulator = server.emulator
    assert isinstance(emulator, SalesforceEmulator)
    with emulator.lock:
        emulator.reset()
        emulator.requests.clear()
        emulator.faults.clear()
        emulator.outbound_url = None
        emulator.outbound_log.clear()
        emulator.daily_limit = 1_000_000
        emulator.bulk_polls = 1
        emulator.id_limit = 600_000
        emulator.bulk_order_by_limit = 100_000
        emulator.login.logins.clear()
        emulator.login.jwt_audiences = "any"
    return emulator


def make_connector(emulator: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch,
                   **overrides: Any) -> SalesforceConnector:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    for key in ("CLIENT_SECRET", "PASSWORD", "SECURITY_TOKEN"):
        monkeypatch.delenv(f"CRMSYNC_SALESFORCE_{key}", raising=False)
    secrets = {k: overrides.pop(k) for k in list(overrides)
               if k in ("client_secret", "password", "security_token", "private_key")}
    for key, value in secrets.items():
        monkeypatch.setenv(f"CRMSYNC_SALESFORCE_{key.upper()}", value)
    settings = SalesforceSettings.load("salesforce", {**profile["settings"], **overrides})
    return SalesforceConnector(settings)


@pytest.fixture
def connect(emulator: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Any]:
    def make(**overrides: Any) -> SalesforceConnector:
        return make_connector(emulator, monkeypatch, **overrides)

    with closing_factory(make, SalesforceConnector.close) as factory:
        yield factory


@pytest.fixture
def connector(connect: Any) -> SalesforceConnector:
    return connect()

