"""The crmsync contract suite on both API flavours, over real HTTP to the emulator."""

from __future__ import annotations

import json

import pytest

from crmsync.model import InboundRequest
from crmsync.testing.contract import ConnectorContract


class _SugarContract(ConnectorContract):
    writable_field = "last_name"
    opt_out = ("email_opt_out", "true")
    flavour = "rest"

    @pytest.fixture
    def connector(self, serve, connect):
        self.server = serve(self.flavour, contacts=12)
        return connect(self.server, page_size=5)

    @pytest.fixture
    def vendor(self, connector):
        return self.server.emulator

    def sample_event(self, connector, email):
        # a target-list hook names the record only: decoding reads it from Sugar
        record = self.find(connector, email)
        assert record is not None
        return InboundRequest(
            method="POST", path="/hooks/crm/after_relationship_add", body=json.dumps(
                {"isUpdate": True, "bean": "ProspectLists", "data": {
                    "id": "list-1", "related_module": "Contacts",
                    "related_id": record.ids["sugarcrm"]}}).encode(),
            headers={"content-type": "application/json"})


class TestSugarRestContract(_SugarContract):
    flavour = "rest"


class TestSugarV41Contract(_SugarContract):
    flavour = "v4_1"
