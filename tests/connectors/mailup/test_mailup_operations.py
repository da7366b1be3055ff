"""The operator's side against the MailUp emulator (issue 17): `crmsync forget` erases a
person at MailUp, in the state store and from the logs, and keeps them suppressed;
`--log-format json` puts every line of a run, the libraries' too, as JSON with its
run_id and the addresses masked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mailup_testbed import contact
from sqlalchemy import MetaData, select

from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.model import Change, Status, Subscription
from crmsync.runtime import build_hooks
from crmsync.state import StateStore
from crmsync.testing.memory import store
from crmsync_mailup.emulator import MailUpEmulator

ENV = {"CRMSYNC_CONNECTORS": "memory,mailup", "CRMSYNC_PLUGINS": ""}
ANN, BOB = "ann@example.com", "bob@example.com"


def configure(tmp_path: Path, emulator: MailUpEmulator, monkeypatch: pytest.MonkeyPatch,
              extra: str = "") -> Path:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = {**profile["settings"], "rate": 0, "import_poll_s": 0.01}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()
                      if not isinstance(v, dict))
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp_path / 'crm.json'}"
[esp]
connector = "mailup"
[esp.settings]
{lines}
[[lists]]
name = "Newsletter"
esp_list = "1"
members = "all"
opt_out = "OptOut"
{extra}
""")
    crm = store(path=tmp_path / "crm.json")
    crm.add(ANN, fields={"OptOut": "false"})
    crm.add(BOB, fields={"OptOut": "false"})
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def state_text(tmp_path: Path) -> str:
    """Every row of every table of the state store, as text."""
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        meta = MetaData()
        meta.reflect(state.engine)
        with state.engine.connect() as conn:
            return "\n".join(repr(row) for table in meta.sorted_tables
                             for row in conn.execute(select(table)))
    finally:
        state.close()


def test_forget_erases_at_mailup_in_state_and_logs_and_suppresses_the_next_syncs(
        tmp_path, emulator, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every record of every logger, before any formatting
    config = configure(tmp_path, emulator, monkeypatch)
    first = run(config, "-vv", "sync")
    assert first.exit_code == 0, first.output
    assert contact(emulator, ANN)["lists"]["1"]["status"] == "subscribed"
    assert ANN in state_text(tmp_path)

    forgotten = run(config, "-vv", "--log-format", "text", "--json", "forget", ANN, "--yes")
    assert forgotten.exit_code == 0, forgotten.output
    result = json.loads(forgotten.stdout)
    assert result["esp"] == "deleted"
    assert result["state"]["contacts"] == 1 and result["state"]["snapshots"] == 1
    assert result["state"]["journal entries pseudonymised"] == 1
    assert contact(emulator, ANN) is None  # gone from MailUp
    assert contact(emulator, BOB) is not None
    assert ANN not in state_text(tmp_path)  # gone from every table of the state store
    # its own log (masked: it had to look her up at MailUp) names her nowhere
    assert "HTTP Request: DELETE" in forgotten.stderr
    assert ANN not in forgotten.stderr and "ann%40" not in forgotten.stderr
    caplog.clear()

    # the CRM still has her, changed since: the next syncs, full or not, never send her
    store(path=tmp_path / "crm.json").add(ANN, fields={"OptOut": "false", "FirstName": "A"})
    for args in (["sync"], ["sync", "--full"]):
        again = run(config, "-vv", *args)
        assert again.exit_code == 0, again.output
        assert contact(emulator, ANN) is None
        assert ANN not in caplog.text and "ann%40example.com" not in caplog.text
        assert "not sent to the ESP (suppressed by crmsync forget)" in caplog.text
    assert ANN not in state_text(tmp_path)
    assert run(config, "journal", "verify").exit_code == 0

    # her consent history still proves what happened, for whoever brings the address
    proof = json.loads(run(config, "--json", "proof", ANN).stdout)
    [entry] = proof["lists"]["1"]
    assert entry["new_status"] == "subscribed" and entry["address"] == "erased"
    assert proof["chain"]["ok"] and proof["suppressed_since"]

    # she subscribes again through MailUp's confirmation flow: its webhook lifts the
    # suppression, and the CRM's data for her flows again
    hooks = build_hooks(load_config(config))
    hooks.event_received("esp", [Change(email=ANN, source="mailup", subscriptions={
        "1": Subscription(list_id="1", status=Status.SUBSCRIBED)})])
    store(path=tmp_path / "crm.json").add(ANN, fields={"OptOut": "false", "FirstName": "B"})
    assert run(config, "sync").exit_code == 0
    assert contact(emulator, ANN) is not None


def test_forget_with_crm_deletes_the_crm_record_too(tmp_path, emulator, monkeypatch) -> None:
    config = configure(tmp_path, emulator, monkeypatch)
    assert run(config, "sync").exit_code == 0
    refused = run(config, "forget", ANN)  # no terminal to confirm on
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    assert contact(emulator, ANN) is not None
    done = run(config, "--json", "forget", ANN, "--crm", "--yes")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["crm"] == "deleted"
    crm = store(path=tmp_path / "crm.json")
    crm._load()
    assert [r["deleted"] for r in crm.records.values() if r["email"] == ANN] == [True]
    assert contact(emulator, ANN) is None


def test_json_logs_carry_the_run_id_on_every_line_and_mask_addresses(
        tmp_path, emulator, monkeypatch) -> None:
    config = configure(tmp_path, emulator, monkeypatch)
    assert run(config, "sync").exit_code == 0
    crm = store(path=tmp_path / "crm.json")  # Bob's address changes in the CRM: MailUp
    crm._load()                              # is asked for the old one (in a URL)
    record = crm.records[crm.by_email(BOB)]
    record.update(email="robert@example.com", previous_email=BOB,
                  modified=crm.now().isoformat())
    crm.save()
    result = run(config, "--log-format", "json", "-vv", "--json", "sync")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records, "a -vv run logs"
    for record in records:
        assert {"time", "level", "logger", "message", "run_id"} <= set(record), record
    during = [r for r in records if r["run_id"]]
    assert {r["run_id"] for r in during} == {run_id}
    assert any(r["logger"].startswith("httpx") for r in during), "library records are JSON too"
    assert BOB not in result.stderr and "bob%40" not in result.stderr
    assert "b***@example.com" in result.stderr  # it was there, masked
    # text stays text, addresses shown unless asked
    text = run(config, "-vv", "--mask-emails", "sync", "--full")
    assert text.exit_code == 0
    assert not text.stderr.lstrip().startswith("{")
    assert ANN not in text.stderr
