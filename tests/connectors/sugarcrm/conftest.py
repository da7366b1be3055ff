"""Fixtures: the Sugar emulator served on 127.0.0.1, and connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer
from crmsync_sugarcrm import SugarConnector
from crmsync_sugarcrm.emulator import SugarEmulator


@pytest.fixture
def serve() -> Iterator[Callable[..., EmulatorServer]]:
    servers: list[EmulatorServer] = []

    def start(flavour: str = "rest", contacts: int = 0, seed: int = 0,
              tls: bool = False) -> EmulatorServer:
        server = EmulatorServer(SugarEmulator(contacts=contacts, seed=seed, flavour=flavour),
                                tls=tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SugarConnector]]:
    made: list[SugarConnector] = []

    def build(server: EmulatorServer, **overrides: Any) -> SugarConnector:
        emulator = server.emulator
        assert isinstance(emulator, SugarEmulator)
        profile = emulator.demo_profile()
        for key, value in profile["secrets"].items():
            monkeypatch.setenv(key, value)
        settings = SugarConnector.Settings.load(
            "sugarcrm", {**profile["settings"], "retry_backoff_s": 0.01, **overrides})
        connector = SugarConnector(settings)
        made.append(connector)
        return connector

    yield build
    for connector in made:
        connector.close()

