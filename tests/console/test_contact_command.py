"""``crmsync contact EMAIL|ID``: one contact's story, read back after real syncs on the
in-memory CRM and ESP (issue 17 point 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.state import read
from crmsync.testing.memory import store

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp"}

CONFIG = """
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
fail_emails = ["cy@example.com"]
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
[fields]
FirstName = "name"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
groups = {{ field = "Interests" }}
[sync]
report_dir = "reports"
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env=ENV)


@pytest.fixture
def synced(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Ann, Bob and Cy synced; Ann and Cy then unsubscribe at the ESP and a second run
    writes that to the CRM (which refuses Cy's write)."""
    crm = store(path=tmp_path / "crm.json")
    ids = {
        "ann": crm.add("ann@example.com", fields={"OptOut": "false", "Interests": "news;tech",
                                                  "FirstName": "[red]Ann[/red] <b>"}),
        "bob": crm.add("bob@example.com", fields={"OptOut": "false", "FirstName": "Bob"}),
        "cy": crm.add("cy@example.com", fields={"OptOut": "false", "FirstName": "Cy"}),
    }
    path = tmp_path / "crmsync.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    assert run("--config", str(path), "sync").exit_code == 0
    esp = store(path=tmp_path / "esp.json")
    esp._load()
    from crmsync.config import load_config
    from crmsync.runtime import open_side

    with open_side(load_config(path), "esp") as connector:
        connector.unsubscribe("ann@example.com", "1")
        connector.unsubscribe("cy@example.com", "1")
    second = run("--config", str(path), "sync")
    assert second.exit_code == 1  # Cy's write to the CRM failed
    return path, ids


def test_contact_json_tells_the_whole_story(synced) -> None:
    path, ids = synced
    result = run("--config", str(path), "--json", "contact", "Ann@Example.com")
    assert result.exit_code == 0, result.output
    story = json.loads(result.stdout)
    assert set(story) == {"query", "matches", *read.STORY_KEYS}
    assert story["contact"]["email"] == "ann@example.com"
    systems = {i["system"]: i["record_id"] for i in story["identities"]}
    assert systems["memory"] == ids["ann"] and "memory-esp" in systems
    [newsletter] = story["lists"]
    assert newsletter["list_id"] == "1" and newsletter["status"] == "unsubscribed"
    assert newsletter["groups"] == ["news", "tech"]
    assert story["fields"]["name"] == "[red]Ann[/red] <b>"
    changes = [(e["new_status"], e["applied_to"]) for e in story["journal"]]
    assert changes[0] == ("subscribed", "esp") and ("unsubscribed", "crm") in changes
    assert all(e["source"] for e in story["journal"])
    assert story["failed_writes"] == [] and story["dead_letters"] == []


def test_contact_by_crm_id_and_its_failed_write(synced) -> None:
    path, ids = synced
    result = run("--config", str(path), "--json", "contact", ids["cy"])
    assert result.exit_code == 0, result.output
    story = json.loads(result.stdout)
    assert story["matches"] == [{"key": story["contact"]["key"], "email": "cy@example.com",
                                 "matched": "memory id"}]
    failed = story["failed_writes"]
    assert failed and {(f["side"], f["source"], f["list_id"]) for f in failed} == {
        ("crm", "report", "1")}
    assert all("rejected by test configuration" in f["error"] for f in failed)


def test_contact_prints_tables_with_crm_text_as_text(synced, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    path, _ = synced
    result = run("--config", str(path), "contact", "ann@example.com")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0].startswith("ann@example.com  (contact ")
    for title in ("identities", "status per list", "journal", "events received",
                  "dead letters", "failed writes"):
        assert title in out
    assert "[red]Ann[/red] <b>" in out  # markup from the CRM is shown, not interpreted
    assert "subscribed -> unsubscribed" in out


def test_an_unknown_contact_is_one_line_and_exit_1(synced) -> None:
    path, _ = synced
    result = run("--config", str(path), "contact", "nobody@example.com")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("crmsync: no contact matches 'nobody@example.com': give "
                                     "an address or a record id crmsync has synced")
    as_json = run("--config", str(path), "--json", "contact", "nobody@example.com")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout) == {
        "query": "nobody@example.com", "matches": []}


def test_groups_read_in_every_stored_shape() -> None:
    # a JSON list (the state store's current column), comma-separated text, and text
    # holding a JSON array after a marker (a group name with a comma)
    assert read._groups(["tech", "news"]) == ["news", "tech"]
    assert read._groups("tech,news") == ["news", "tech"]
    assert read._groups('\x1e["Sales, EMEA", "A"]') == ["A", "Sales, EMEA"]
    assert read._groups("") == [] and read._groups(None) == []
