"""Bad input and broken set-ups end in one clear line and the documented exit code,
never a traceback (issue 12 point 9)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.state import StateStore
from crmsync.testing.memory import store

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp"}

MEMORY_PAIR = """
[state]
url = "{state}"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
fail_emails = ["bob@example.com"]
[sync]
report_dir = "{report_dir}"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
"""


def write_pair(tmp: Path, *, state: str = "sqlite:///state.db",
               report_dir: str = "reports") -> Path:
    path = tmp / "crmsync.toml"
    path.write_text(MEMORY_PAIR.format(tmp=tmp, state=state, report_dir=report_dir))
    return path


def one_line_error(result: Result, code: int, *words: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("crmsync: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.toml"
    path.write_bytes(b'[state]\nurl = "sqlite:///state.db"\n# caf\xe9 \xff\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "status"], env=ENV)
    one_line_error(result, 2, "line 3", "not UTF-8", "save the file as UTF-8")


def test_a_postgresql_url_without_its_driver(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if never installed
    for url in ("postgresql://crmsync:pw@127.0.0.1/crmsync",
                "postgresql+psycopg://crmsync:pw@127.0.0.1/crmsync"):
        result = CliRunner().invoke(cli, ["--config", str(write_pair(tmp_path, state=url)),
                                          "status"], env=ENV)
        line = one_line_error(result, 2, "'psycopg", "not installed", "postgresql+psycopg://",
                              "crmsync[postgresql]")
        assert "pw" not in line


def test_a_state_url_that_is_no_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(write_pair(tmp_path, state="foo://bar")),
                                      "status"], env=ENV)
    one_line_error(result, 2, "foo://bar", "sqlite:///")


def test_a_missing_ca_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crmsync.emulator import EmulatorServer
    from crmsync.testing.pairs import write_profile_config
    from crmsync_salesforce.emulator import SalesforceEmulator

    with EmulatorServer(SalesforceEmulator(), tls=True) as server:
        profile = server.emulator.demo_profile()
        for key, value in profile["secrets"].items():
            monkeypatch.setenv(key, value)
        path = write_profile_config(
            tmp_path / "crmsync.toml", crm="salesforce", profile=profile,
            crm_settings={"ca_file": str(tmp_path / "no-such-ca.pem")},
            esp={"connector": "memory-esp", "settings": {"path": str(tmp_path / "esp.json")}})
        result = CliRunner().invoke(cli, ["--config", str(path), "check"])
    assert result.exit_code == 2, result.output  # a configuration error
    assert "Traceback" not in result.output
    first = result.output.splitlines()[0]
    assert first.startswith("crm (salesforce): FAILED ca_file ") and "no-such-ca.pem" in first


def test_an_unwritable_report_dir_does_not_stop_the_run(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "reports"
        blocker.write_text("a file where the report folder should be")
        report_dir = str(blocker / "sub")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        report_dir = str(locked / "reports")
    crm = store(path=tmp_path / "crm.json")
    crm.add("ann@example.com", fields={"OptOut": "false"})
    crm.add("bob@example.com", fields={"OptOut": "false"})
    path = write_pair(tmp_path, state=f"sqlite:///{tmp_path / 'state.db'}",
                      report_dir=report_dir)
    result = CliRunner().invoke(cli, ["--config", str(path), "--json", "sync"], env=ENV)
    assert result.exit_code == 1, result.output  # a record failed: exit 1, no traceback
    assert "Traceback" not in result.output
    state = StateStore(load_config(path).state_url())
    try:
        [run] = state.runs(5)
        assert run["status"] == "partial" and run["stats"]["failed"] == 1
        assert state.count_pending() == {}
    finally:
        state.close()
