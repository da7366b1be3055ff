"""The crmsync contract suite on both API flavours, over real HTTP to the emulator."""

from __future__ import annotations

import pytest

from crmsync.testing.contract import ConnectorContract


class TestSugarRestContract(ConnectorContract):
    writable_field = "last_name"

    @pytest.fixture
    def connector(self, serve, connect):
        return connect(serve("rest", contacts=12), page_size=5)


class TestSugarV41Contract(ConnectorContract):
    writable_field = "last_name"

    @pytest.fixture
    def connector(self, serve, connect):
        return connect(serve("v4_1", contacts=12), page_size=5)
