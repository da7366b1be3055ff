"""The crmsync contract suite, on the example connector against its emulator."""

from __future__ import annotations

import pytest

from crmsync import InboundRequest
from crmsync.testing.contract import ConnectorContract

URL = "https://crmsync.example.com/hooks/crm/endpoint-secret"


class TestHubLikeContract(ConnectorContract):
    writable_field = "lastname"
    opt_out = ("hs_email_optout", "true")

    @pytest.fixture
    def connector(self, connect, hublike):
        self.hublike = hublike
        return connect()

    @pytest.fixture
    def vendor(self, hublike):
        return hublike

    def sample_event(self, connector, email):
        record = self.find(connector, email)
        assert record is not None
        body, headers = self.hublike.signed_event(URL, [record.ids["hublike"]])
        return InboundRequest(method="POST", path="/hooks/crm", url=URL, body=body,
                              headers=headers)
