"""A third party's whole contract test file: one class."""

import pytest
from crmsync_example_csv import CsvCrmConnector

from crmsync.testing import ConnectorContract


class TestCsvCrm(ConnectorContract):
    writable_field = "LastName"
    opt_out = ("OptOut", "true")

    @pytest.fixture
    def connector(self, tmp_path):
        settings = CsvCrmConnector.Settings.load("example-csv", {"path": str(tmp_path / "c.csv"),
                                                                 "page_size": 2})
        with CsvCrmConnector(settings) as connector:
            yield connector
