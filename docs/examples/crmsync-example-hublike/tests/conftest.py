"""The emulator, served on 127.0.0.1, and a connector pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from crmsync_example_hublike import HubLikeConnector
from hublike_emulator import HubLikeEmulator

from crmsync.emulator import EmulatorServer


@pytest.fixture
def hublike() -> Iterator[HubLikeEmulator]:
    emulator = HubLikeEmulator(contacts=5)
    with EmulatorServer(emulator):
        yield emulator


@pytest.fixture
def connect(hublike: HubLikeEmulator, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Callable[..., HubLikeConnector]]:
    made: list[HubLikeConnector] = []

    def make(**settings: Any) -> HubLikeConnector:
        profile = hublike.demo_profile()
        for key, value in profile["secrets"].items():
            monkeypatch.setenv(key, value)
        connector = HubLikeConnector(HubLikeConnector.Settings.load(
            "hublike", {**profile["settings"], "page_size": 2, **settings}))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()
