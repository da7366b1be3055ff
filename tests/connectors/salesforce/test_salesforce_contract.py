"""The shared contract suite, on the connector against the emulator over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from crmsync.testing.contract import ConnectorContract
from crmsync_salesforce import SalesforceConnector
from crmsync_salesforce.emulator import SalesforceEmulator


class TestSalesforceContract(ConnectorContract):
    writable_field = "LastName"

    @pytest.fixture
    def connector(self, emulator: SalesforceEmulator, connect: Any) -> SalesforceConnector:
        with emulator.lock:
            emulator.seed(450, 1)
        # Small query batches so the contract's reads really page.
        return connect(query_batch_size=200)
