"""A batch run end to end on both flavours: the Sugar emulator and the in-memory ESP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sugarcrm_support import FLAVOURS, control, requests_made, reset_requests, state

from crmsync.config import load_config
from crmsync.runtime import build_batch, open_side, open_store
from crmsync.testing.memory import store
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.fixture(params=FLAVOURS)
def run(request, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = serve(request.param)
    profile = server.emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = "\n".join(f"{k} = {_toml(v)}" for k, v in profile["settings"].items())
    lists = "".join("\n[[lists]]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in m.items())
                    + "\n" for m in profile["lists"])
    fields = "\n".join(f"{crm} = {json.dumps(esp)}" for crm, esp in profile["fields"].items())
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "sqlite:///state.db"

[crm]
connector = "sugarcrm"
[crm.settings]
{settings}

[esp]
connector = "memory-esp"
mode = "api"
[esp.settings]
path = "{tmp_path / 'esp.json'}"

[fields]
{fields}
{lists}
""")
    config = load_config(path)

    def sync() -> Any:
        state_store = open_store(config)
        try:
            with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
                return build_batch(config, crm, esp, state_store).run()
        finally:
            state_store.close()

    sync.esp = store(path=tmp_path / "esp.json")
    sync.config = config
    sync.server = server
    return sync


def esp_lists(run: Any, email: str) -> dict[str, Any]:
    run.esp._load()
    record_id = run.esp.by_email(email)
    return {} if record_id is None else run.esp.records[record_id]["lists"]


def test_crm_to_esp_and_unsubscribe_back(run: Any) -> None:
    server = run.server
    with server.emulator.lock:
        server.emulator.seed(15, 0)
    people = state(server)
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_read == 15
    for email, entry in people.items():
        expected = "unsubscribed" if entry["opted_out"] else "subscribed"
        assert esp_lists(run, email)["1"]["status"] == expected, email
        groups = set(filter(None, (entry["fields"]["interests_c"] or "").split(";")))
        assert set(esp_lists(run, email)["1"]["groups"]) == groups, email
        in_events = f"target_list:{EVENTS_LIST_ID}" in entry["lists"]
        assert ("2" in esp_lists(run, email)) == in_events, email

    # An unsubscribe on the ESP reaches the CRM's address row, keeping the work address.
    target = "contact0-0@example.com"
    assert not people[target]["opted_out"] and len(people[target]["addresses"]) == 2
    with open_side(run.config, "esp") as esp:
        esp.unsubscribe(target, "1")
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_written == 1
    after = state(server)[target]
    assert after["opted_out"] is True and len(after["addresses"]) == 2

    # An opt-out flipped on the address alone (no record saved) still reaches the ESP.
    other = next(e for e, c in people.items() if not c["opted_out"] and e != target)
    time.sleep(1.05)
    control(server, "email_address", {"email": other, "opt_out": True})
    reset_requests(server)
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert esp_lists(run, other)["1"]["status"] == "unsubscribed"
    assert sum(requests_made(server).values()) < 20
