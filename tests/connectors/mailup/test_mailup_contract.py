"""The connector contract suite, run on the MailUp connector against its emulator."""

from __future__ import annotations

import pytest

from crmsync.model import InboundRequest
from crmsync.testing.contract import ConnectorContract

# MailUp's documented unsubscribe webhook call (a GET with the configured parameters)
PARAMS = {"customerEmail": "[Email]", "customerList": "[IdList]"}


class TestMailUpContract(ConnectorContract):
    list_id = "1"
    writable_field = "name"

    @pytest.fixture
    def connector(self, make_connector):
        return make_connector(page_size=2, webhook_params=PARAMS,
                              webhook_events={"/hooks/esp": "UNSUBSCRIBE"})

    @pytest.fixture
    def vendor(self, emulator):
        return emulator

    def sample_event(self, connector, email):
        return InboundRequest(method="GET", path="/hooks/esp",
                              query=[("customerEmail", email), ("customerList", "1")])
