"""Fixtures: a MailUp emulator served on 127.0.0.1 and connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mailup_testbed import settings_for

from crmsync.emulator import EmulatorServer
from crmsync_mailup import MailUpConnector
from crmsync_mailup.emulator import MailUpEmulator


@pytest.fixture
def emulator(tmp_path) -> Iterator[MailUpEmulator]:
    emu = MailUpEmulator(rate_limit=0, files_dir=tmp_path / "space",
                         webhook_retry_delays=[0.05, 0.05])
    server = EmulatorServer(emu).start()
    try:
        yield emu
    finally:
        server.stop()


@pytest.fixture
def make_connector(emulator, monkeypatch) -> Iterator[Callable[..., MailUpConnector]]:
    made: list[MailUpConnector] = []

    def make(**overrides: Any) -> MailUpConnector:
        connector = MailUpConnector(settings_for(emulator, monkeypatch, **overrides))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


@pytest.fixture
def connector(make_connector) -> MailUpConnector:
    return make_connector()


@pytest.fixture
def control(emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url + "/_emulator", timeout=10) as client:
        yield client
