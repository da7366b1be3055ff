"""The connector contract suite, run on the MailUp connector against its emulator."""

from __future__ import annotations

import pytest

from crmsync.testing.contract import ConnectorContract


class TestMailUpContract(ConnectorContract):
    list_id = "1"
    writable_field = "name"

    @pytest.fixture
    def connector(self, make_connector):
        return make_connector()
