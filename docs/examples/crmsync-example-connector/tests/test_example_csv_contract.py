"""A third party's whole contract test file: one class."""

import pytest

from crmsync.testing import ConnectorContract
from crmsync_example_csv import CsvCrmConnector


class TestCsvCrm(ConnectorContract):
    writable_field = "LastName"

    @pytest.fixture
    def connector(self, tmp_path):
        settings = CsvCrmConnector.Settings.load("example-csv", {"path": str(tmp_path / "c.csv")})
        with CsvCrmConnector(settings) as connector:
            yield connector
