"""The crmsync contract suite, against the vTiger emulator over real HTTP."""

from __future__ import annotations

import json

import pytest

from crmsync.model import InboundRequest
from crmsync.testing.contract import ConnectorContract


class TestVtigerContract(ConnectorContract):
    writable_field = "lastname"
    opt_out = ("emailoptout", "true")
    flavour = "webservice"

    @pytest.fixture
    def connector(self, vtiger_server, vtiger_connector):
        self.server = vtiger_server(contacts=130)  # vTiger pages by 100 rows (its cap)
        return vtiger_connector(self.server, flavour=self.flavour)

    @pytest.fixture
    def vendor(self, connector):
        return self.server.emulator

    def sample_event(self, connector, email):
        # a Webhook workflow action's JSON, as an admin maps it (reference §6)
        record = self.find(connector, email)
        assert record is not None
        return InboundRequest(method="POST", path="/hooks/crm", body=json.dumps(
            {"data": {"id": record.ids["vtiger"], "email": email, "emailoptout": "0",
                      "lastname": "evented"}}).encode(),
            headers={"content-type": "application/json"})


class TestVtigerCloudContract(TestVtigerContract):
    flavour = "cloud"
