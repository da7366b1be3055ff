"""Fixtures for the vTiger tests: the emulator served on 127.0.0.1, connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer
from crmsync.testing import closing_factory, connector_on
from crmsync_vtiger import VtigerConnector
from crmsync_vtiger.emulator import VtigerEmulator


@pytest.fixture
def vtiger_server() -> Iterator[Callable[..., EmulatorServer]]:
    """``vtiger_server(contacts=0, **emulator options)``: an emulator served until teardown."""
    def start(contacts: int = 0, **options: Any) -> EmulatorServer:
        return EmulatorServer(VtigerEmulator(contacts=contacts, **options)).start()

    with closing_factory(start, EmulatorServer.stop) as factory:
        yield factory


@pytest.fixture
def vtiger_connector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., VtigerConnector]]:
    """``vtiger_connector(server, **settings)``: the demo profile with settings overridden."""
    def make(server: EmulatorServer, **overrides: Any) -> VtigerConnector:
        return connector_on(VtigerConnector, server, monkeypatch.setenv, **overrides)

    with closing_factory(make, VtigerConnector.close) as factory:
        yield factory
