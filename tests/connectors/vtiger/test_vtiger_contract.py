"""The crmsync contract suite, against the vTiger emulator over real HTTP."""

from __future__ import annotations

import pytest

from crmsync.testing.contract import ConnectorContract


class TestVtigerContract(ConnectorContract):
    writable_field = "lastname"

    @pytest.fixture
    def connector(self, vtiger_server, vtiger_connector):
        server = vtiger_server(contacts=30)
        return vtiger_connector(server)


class TestVtigerCloudContract(ConnectorContract):
    writable_field = "lastname"

    @pytest.fixture
    def connector(self, vtiger_server, vtiger_connector):
        server = vtiger_server(contacts=30)
        return vtiger_connector(server, flavour="cloud")
