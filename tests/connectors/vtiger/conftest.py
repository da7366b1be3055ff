"""Fixtures for the vTiger tests: the emulator served on 127.0.0.1, connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer
from crmsync_vtiger import VtigerConnector
from crmsync_vtiger.emulator import VtigerEmulator


@pytest.fixture
def vtiger_server() -> Iterator[Callable[..., EmulatorServer]]:
    """``vtiger_server(contacts=0, **emulator options)``: an emulator served until teardown."""
    servers: list[EmulatorServer] = []

    def start(contacts: int = 0, **options: Any) -> EmulatorServer:
        server = EmulatorServer(VtigerEmulator(contacts=contacts, **options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def vtiger_connector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., VtigerConnector]]:
    """``vtiger_connector(server, **settings)``: the demo profile with settings overridden."""
    made: list[VtigerConnector] = []

    def make(server: EmulatorServer, **overrides: Any) -> VtigerConnector:
        assert server.emulator is not None
        profile = server.emulator.demo_profile()
        for key, value in profile["secrets"].items():
            monkeypatch.setenv(key, value)
        settings = VtigerConnector.Settings.load("vtiger", {**profile["settings"], **overrides})
        connector = VtigerConnector(settings)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()
