"""Fixtures: a MailUp emulator served on 127.0.0.1 and connectors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mailup_testbed import settings_for

from crmsync.emulator import EmulatorServer
from crmsync.testing import closing_factory
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
    def make(**overrides: Any) -> MailUpConnector:
        return MailUpConnector(settings_for(emulator, monkeypatch, **overrides))

    with closing_factory(make, MailUpConnector.close) as factory:
        yield factory


@pytest.fixture
def connector(make_connector) -> MailUpConnector:
    return make_connector()


@pytest.fixture
def control(emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url + "/_emulator", timeout=10) as client:
        yield client
