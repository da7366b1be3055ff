"""A newcomer's first hour (issue 12 points 12 and 15, issue 13 point 6): `emulate`
says how to connect to it, `init --emulator` writes a configuration that works, and
`init`'s templates suggest each CRM's own fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.emulator import EmulatorServer

ENV = {"CRMSYNC_CONNECTORS": "salesforce,sugarcrm,vtiger,mailup,memory,memory-esp"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("CRMSYNC_SALESFORCE_", "CRMSYNC_MAILUP_", "CRMSYNC_SUGARCRM_",
                           "CRMSYNC_VTIGER_")):
            monkeypatch.delenv(key)


@pytest.fixture
def emulators() -> Iterator[tuple[EmulatorServer, EmulatorServer]]:
    from crmsync_mailup.emulator import MailUpEmulator
    from crmsync_salesforce.emulator import SalesforceEmulator

    with EmulatorServer(SalesforceEmulator(contacts=6, seed=1), tls=True) as crm, \
            EmulatorServer(MailUpEmulator(rate_limit=None)) as esp:
        yield crm, esp


@pytest.mark.usefixtures("clean_env")
def test_init_with_emulators_writes_a_configuration_that_works(
        tmp_path: Path, emulators: tuple[EmulatorServer, EmulatorServer]) -> None:
    crm, esp = emulators
    config = str(tmp_path / "crmsync.toml")
    written = CliRunner().invoke(cli, ["--config", config, "init", "--connector", "salesforce",
                                       "--emulator", crm.url, "--emulator", esp.url,
                                       "--ca", str(crm.ca_path)], env=ENV)
    assert written.exit_code == 0, written.output
    secrets = (tmp_path / ".crmsync.secrets").read_text()
    assert "CRMSYNC_MAILUP_PASSWORD=" in secrets and "PRIVATE KEY" in secrets
    assert "PRIVATE KEY" not in (tmp_path / "crmsync.toml").read_text()
    checked = CliRunner().invoke(cli, ["--config", config, "--connector", "salesforce",
                                       "check"], env=ENV)
    assert checked.exit_code == 0, checked.output
    synced = CliRunner().invoke(cli, ["--config", config, "--connector", "salesforce", "sync",
                                      "--full", "--json"], env=ENV)
    assert synced.exit_code == 0, synced.output
    stats = json.loads(synced.output)
    assert stats["crm_read"] == 6 and stats["failed"] == 0
    recipients = {c["email"] for c in esp.emulator.state()["contacts"]}
    assert {c["email"] for c in crm.emulator.state()["contacts"]} <= recipients


def test_init_with_one_emulator_or_a_dead_url_is_a_usage_error(
        tmp_path: Path, emulators: tuple[EmulatorServer, EmulatorServer]) -> None:
    _, esp = emulators
    config = str(tmp_path / "crmsync.toml")
    one = CliRunner().invoke(cli, ["--config", config, "init", "--emulator", esp.url], env=ENV)
    assert one.exit_code == 2 and "two --emulator URLs" in one.output
    dead = CliRunner().invoke(cli, ["--config", config, "init", "--emulator",
                                    "http://127.0.0.1:1", "--emulator", esp.url], env=ENV)
    assert dead.exit_code == 2 and "is `crmsync emulate NAME` running" in dead.output
    assert not (tmp_path / "crmsync.toml").exists()


def test_emulate_prints_the_configuration_and_environment_that_connect_to_it(
        tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "--json", "emulate", "mailup", "--contacts", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ENV})
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["environment"] == {"CRMSYNC_MAILUP_CLIENT_SECRET": "demo-secret",
                                       "CRMSYNC_MAILUP_PASSWORD": "demo-password",
                                       "CRMSYNC_MAILUP_TRANSACTIONAL_SECRET": "tx-secret"}
        block = tomllib.loads(info["config"])
        assert block["esp"]["connector"] == "mailup" and block["esp"]["mode"] == "api"
        assert block["esp"]["settings"]["auth_url"].startswith(info["url"])
        # the block and the variables, as printed, connect
        path = tmp_path / "crmsync.toml"
        path.write_text(info["config"])
        checked = CliRunner().invoke(cli, ["--config", str(path), "check"],
                                     env={**ENV, **info["environment"]})
        assert checked.exit_code == 0, checked.output
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("crm,opt_out", [("salesforce", "HasOptedOutOfEmail"),
                                         ("sugarcrm", "email_opt_out"),
                                         ("vtiger", "emailoptout")])
def test_init_suggests_each_crm_s_own_opt_out_uncommented(tmp_path: Path, crm: str,
                                                          opt_out: str) -> None:
    path = tmp_path / "crmsync.toml"
    result = CliRunner().invoke(cli, ["--config", str(path), "init", "--connector", crm],
                                env=ENV)
    assert result.exit_code == 0, result.output
    text = path.read_text()
    data = tomllib.loads(text)
    assert data["lists"][0]["opt_out"] == opt_out
    assert "HasOptedOutOfEmail" not in text or crm == "salesforce"
    assert "postgresql+psycopg://" in text and '"postgresql://' not in text


def test_the_sugarcrm_template_explains_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.toml"
    CliRunner().invoke(cli, ["--config", str(path), "init", "--connector", "sugarcrm"], env=ENV)
    settings = path.read_text().split("[crm.settings]")[1].split("[esp]")[0]
    assert "# rest: OAuth2 client" in settings
    assert "None: every target list" in settings
    assert "rate_per_s =   (unset by default)" in settings
