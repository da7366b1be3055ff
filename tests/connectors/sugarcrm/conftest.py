"""Fixtures: the Sugar emulator served on 127.0.0.1, and connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crmsync.emulator import EmulatorServer
from crmsync.testing import closing_factory, connector_on
from crmsync_sugarcrm import SugarConnector
from crmsync_sugarcrm.emulator import SugarEmulator


@pytest.fixture
def serve() -> Iterator[Callable[..., EmulatorServer]]:
    def start(flavour: str = "rest", contacts: int = 0, seed: int = 0,
              tls: bool = False) -> EmulatorServer:
        return EmulatorServer(SugarEmulator(contacts=contacts, seed=seed, flavour=flavour),
                              tls=tls).start()

    with closing_factory(start, EmulatorServer.stop) as factory:
        yield factory


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SugarConnector]]:
    def build(server: EmulatorServer, **overrides: Any) -> SugarConnector:
        return connector_on(SugarConnector, server, monkeypatch.setenv,
                            **{"retry_backoff_s": 0.01, **overrides})

    with closing_factory(build, SugarConnector.close) as factory:
        yield factory

