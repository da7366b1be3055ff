"""The shared contract suite, on the connector against the emulator over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from crmsync.model import InboundRequest
from crmsync.testing.contract import ConnectorContract
from crmsync_salesforce import SalesforceConnector
from crmsync_salesforce.emulator import SalesforceEmulator


class TestSalesforceContract(ConnectorContract):
    writable_field = "LastName"
    opt_out = ("HasOptedOutOfEmail", "true")

    @pytest.fixture
    def connector(self, emulator: SalesforceEmulator, connect: Any) -> SalesforceConnector:
        with emulator.lock:
            emulator.seed(450, 1)
        # Small query batches so the contract's reads really page.
        return connect(query_batch_size=200)

    @pytest.fixture
    def vendor(self, emulator: SalesforceEmulator) -> SalesforceEmulator:
        return emulator

    def sample_event(self, connector: Any, email: str) -> InboundRequest:
        # the Outbound Message the emulator would deliver for the record
        vendor: SalesforceEmulator = self._emulator
        with vendor.lock:
            record = next(r for r in vendor.org.records["Contact"].values()
                          if str(r.get("Email", "")).lower() == email)
            body = vendor._outbound_xml([("04l000000000000042", record)])
        return InboundRequest(method="POST", path="/hooks/crm", body=body,
                              headers={"content-type": "text/xml; charset=utf-8"})

    @pytest.fixture(autouse=True)
    def _keep(self, emulator: SalesforceEmulator) -> None:
        self._emulator = emulator
