"""`crmsync check` makes the reads a sync makes (issue #13, point 4).

On the real SuiteCRM, check passed (it only called get_user_id) while every diff read
was refused with Access Denied (40). Here the v4_1 scan is made to send the query the
connector once sent for target lists, which the emulator refuses as SugarSQLValidate
does: check must fail, and its line must name the call and say what to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.testing.pairs import write_profile_config
from crmsync_sugarcrm.legacy import LegacyFlavour

REFUSED = ("contacts.id IN (SELECT plp.related_id FROM prospect_lists_prospects plp "
           "WHERE plp.deleted = 0)")


def _config(tmp_path: Path, server, monkeypatch) -> Path:
    profile = server.emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    return write_profile_config(
        tmp_path / "crmsync.toml", crm="sugarcrm", profile=profile,
        esp={"connector": "memory-esp", "mode": "api",
             "settings": {"path": str(tmp_path / "esp.json")}})


def _check(config: Path):
    return CliRunner().invoke(cli, ["--config", str(config), "check"], catch_exceptions=False)


@pytest.mark.parametrize("flavour", ["rest", "v4_1"])
def test_check_passes_and_says_it_made_a_diff_read(tmp_path, serve, monkeypatch, flavour):
    server = serve(flavour, contacts=3)
    result = _check(_config(tmp_path, server, monkeypatch))
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("crm (sugarcrm): ok") and "a diff read since" in first


def test_check_fails_when_the_diff_read_is_refused(tmp_path, serve, monkeypatch):
    server = serve("v4_1", contacts=3)
    keyset = LegacyFlavour._keyset

    def refused(table, after, since):
        where = keyset(table, after, since)
        return f"{where} AND {REFUSED}" if since is not None else where

    monkeypatch.setattr(LegacyFlavour, "_keyset", staticmethod(refused))
    result = _check(_config(tmp_path, server, monkeypatch))
    assert result.exit_code != 0
    first = " ".join(result.output.split())  # rich wraps long lines
    assert first.startswith("crm (sugarcrm): FAILED v4_1 get_entry_list: Access Denied (40)")
    assert "on Contacts" in first and "SugarSQLValidate" in first
    assert "report it as a crmsync bug" in first and "Role Management" in first
