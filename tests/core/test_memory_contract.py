"""The contract suite on the reference in-memory connectors."""

from __future__ import annotations

import json

import pytest

from crmsync.model import InboundRequest
from crmsync.testing.contract import ConnectorContract
from crmsync.testing.memory import MemoryConnector, MemoryEspConnector


def _event(email: str) -> InboundRequest:
    return InboundRequest(method="POST", path="/hooks/x", body=json.dumps(
        {"changes": [{"email": email, "fields": {"OptOut": "true"}}]}).encode())


class TestMemoryCrm(ConnectorContract):
    writable_field = "LastName"
    opt_out = ("OptOut", "true")

    @pytest.fixture
    def connector(self):
        settings = MemoryConnector.Settings.load("memory", {"store": "contract", "page_size": 2})
        with MemoryConnector(settings) as connector:
            connector.store.seed(5)
            yield connector

    def sample_event(self, connector, email):
        return _event(email)


class TestMemoryEsp(ConnectorContract):
    list_id = "1"

    @pytest.fixture
    def connector(self):
        settings = MemoryEspConnector.Settings.load("memory-esp", {"store": "contract-esp",
                                                                  "page_size": 2})
        with MemoryEspConnector(settings) as connector:
            yield connector

    def sample_event(self, connector, email):
        return _event(email)
