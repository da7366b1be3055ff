"""A batch run end to end: the in-memory CRM against the MailUp emulator, through the
API and through the file space (import file in, unsubscriber export out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mailup_testbed import contact, requests_of

from crmsync.config import load_config
from crmsync.runtime import build_batch, open_side, open_store
from crmsync.testing.memory import store
from crmsync_mailup.emulator import MailUpEmulator


def make_run(tmp_path: Path, emulator: MailUpEmulator, monkeypatch: pytest.MonkeyPatch,
             mode: str) -> Any:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = {**profile["settings"], "rate_per_s": 0, "import_poll_s": 0.01,
                "field_ids": {"name": 1, "surname": 2}}
    esp_settings = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}"
                             for k, v in settings.items())
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
mode = "{mode}"
[esp.settings]
{esp_settings}

[files]
url = "file://{emulator.files_dir}"
import_dir = "in"
export_dir = "out"

[fields]
FirstName = "name"
LastName = "surname"

[[lists]]
name = "Newsletter"
esp_list = "1"
members = "all"
opt_out = "OptOut"
groups = {{ field = "Interests", separator = ";" }}
""")
    config = load_config(path)

    def sync() -> Any:
        state = open_store(config)
        try:
            with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
                return build_batch(config, crm, esp, state).run()
        finally:
            state.close()

    sync.crm = store(path=tmp_path / "crm.json")  # type: ignore[attr-defined]
    return sync


def _inline(value: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + " }"


def crm_field(run: Any, email: str, field: str) -> Any:
    crm = run.crm
    crm._load()
    return crm.records[crm.by_email(email)]["fields"].get(field)


def assert_groups_follow_interests(run: Any, emulator: MailUpEmulator) -> None:
    for record in run.crm.records.values():
        wanted = sorted(filter(None, record["fields"]["Interests"].split(";")))
        assert contact(emulator, record["email"])["lists"]["1"]["groups"] == wanted


def test_api_mode_both_ways(tmp_path, emulator, control, monkeypatch):
    run = make_run(tmp_path, emulator, monkeypatch, "api")
    run.crm.seed(4, 0)
    run()
    people = sorted(r["email"] for r in run.crm.records.values())
    first = contact(emulator, people[0])
    assert first is not None and first["lists"]["1"]["status"] == "subscribed"
    assert first["fields"]["name"].startswith("First")
    assert_groups_follow_interests(run, emulator)
    control.post("/unsubscribe", json={"email": people[1], "list": "1"})
    run()
    assert crm_field(run, people[1], "OptOut") == "true"
    assert crm_field(run, people[0], "OptOut") == "false"


def test_files_mode_both_ways(tmp_path, emulator, control, monkeypatch):
    run = make_run(tmp_path, emulator, monkeypatch, "files")
    run.crm.seed(4, 0)
    run()
    inbox = emulator.files_dir / "in"
    assert any(p.name.endswith(".manifest.json") for p in inbox.iterdir())
    report = control.post("/import").json()
    assert report["imported"] and not report["imported"][0]["errors"], report
    people = sorted(r["email"] for r in run.crm.records.values())
    for email in people:
        assert contact(emulator, email)["lists"]["1"]["status"] == "subscribed"
    assert_groups_follow_interests(run, emulator)
    control.post("/unsubscribe", json={"email": people[2], "list": "1"})
    assert control.post("/export").json()["rows"] == 1
    run()
    assert crm_field(run, people[2], "OptOut") == "true"
    assert crm_field(run, people[3], "OptOut") == "false"


def test_a_diff_run_reads_only_unsubscribed_recipients_not_every_optin(tmp_path, emulator,
                                                                       control, monkeypatch):
    """Issue 15 (API mode): a diff run right after a full one read every recipient the
    full had imported (all of them are "changed" since the ESP cursor) through
    EmailOptins, and listed every group to learn their groups: O(list) pages per run
    for a handful of changes. It reads the list's unsubscribed recipients instead,
    and the unsubscribe made at the ESP still reaches the CRM."""
    run = make_run(tmp_path, emulator, monkeypatch, "api")
    run.crm.seed(120, 0)
    run()
    people = sorted(r["email"] for r in run.crm.records.values())
    control.post("/unsubscribe", json={"email": people[3], "list": "1"})
    before = requests_of(control)
    run()
    calls = {path: n - before.get(path, 0) for path, n in requests_of(control).items()
             if n - before.get(path, 0)}
    assert crm_field(run, people[3], "OptOut") == "true"
    assert not [path for path in calls if "EmailOptins" in path or "/Group/" in path], calls
    reads = sum(n for path, n in calls.items() if path.startswith("GET"))
    assert reads <= 4, calls  # the unsubscribed listing (1 page) and the token, not 120/20
