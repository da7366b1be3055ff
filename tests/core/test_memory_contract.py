"""The contract suite on the reference in-memory connectors."""

from __future__ import annotations

import pytest

from crmsync.testing.contract import ConnectorContract
from crmsync.testing.memory import MemoryConnector, MemoryEspConnector


class TestMemoryCrm(ConnectorContract):
    writable_field = "LastName"

    @pytest.fixture
    def connector(self):
        settings = MemoryConnector.Settings.load("memory", {"store": "contract", "page_size": 2})
        with MemoryConnector(settings) as connector:
            connector.store.seed(5)
            yield connector


class TestMemoryEsp(ConnectorContract):
    list_id = "1"

    @pytest.fixture
    def connector(self):
        settings = MemoryEspConnector.Settings.load("memory-esp", {"store": "contract-esp"})
        with MemoryEspConnector(settings) as connector:
            yield connector
