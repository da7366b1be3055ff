"""Replays exchanges recorded with a real SuiteCRM 7.12.14 (v4_1; issue #13).

Recorded by ``tests/live/record_cassettes.py`` (scenarios in ``sugarcrm_real.py``); the
replay runs the same scenario on the same settings and must use every exchange.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sugarcrm_real as real
import yaml
from sugarcrm_cassettes import recorder
from sugarcrm_real import ACTIONS, SCENE, settings

import crmsync_sugarcrm.connector as connector_module
from crmsync_sugarcrm import SugarConnector
from crmsync_sugarcrm.emulator.legacy_api import ACCESS_DENIED

scene: dict[str, Any] = json.loads(SCENE.read_text())
people, ids = scene["people"], scene["ids"]
LIST_KEY = f"target_list:{scene['list_id']}"


@pytest.fixture
def replay(monkeypatch):
    monkeypatch.setenv("CRMSYNC_SUGARCRM_PASSWORD", real.PASSWORD)
    real.Frozen.at = real.Frozen.fromisoformat(scene["now"])
    monkeypatch.setattr(connector_module, "datetime", real.Frozen)
    machine = recorder()

    def run(name: str) -> Any:
        config = SugarConnector.Settings.load("sugarcrm", settings(scene))
        with machine.use_cassette(f"real_v4_1_{name}.yaml") as cassette, \
                SugarConnector(config) as connector:
            result = ACTIONS[name](connector, scene)
        assert cassette.all_played, f"{name}: not every recorded exchange was used"
        return json.loads(json.dumps(result))  # as the scene file holds it

    return run


def by_email(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["email"]: r for r in records}  # the last one wins, as in the engine


def test_full_read_is_whole_and_matches_suitecrms_count(replay):
    result = replay("full_read")
    assert result == scene["results"]["full_read"]
    distinct = {r["ids"]["sugarcrm"] for r in result["records"]}
    live = {r["ids"]["sugarcrm"] for r in result["records"] if not r["deleted"]}
    assert len(distinct) == len(result["records"])  # deleted records come too
    assert len(live) == result["count"]
    found = by_email(result["records"])
    for name in ("ann", "bob", "cyd", "dee"):
        assert found[people[name]]["ids"] == {"sugarcrm": ids[name]}
    assert found[people["ann"]]["memberships"] == {LIST_KEY: ""}
    assert found[people["bob"]]["memberships"] == {}


def test_diff_read_sees_fields_address_opt_outs_and_list_changes(replay):
    result = replay("diff_read")
    assert result == scene["results"]["diff_read"]
    found = by_email(result["records"])
    assert found[people["bob"]]["fields"]["last_name"] == "Renamed"
    assert found[people["dee"]]["fields"]["email_opt_out"] == "true"  # the address alone
    assert found[people["bob"]]["memberships"] == {LIST_KEY: ""}  # joined
    assert found[people["cyd"]]["memberships"] == {}  # left
    assert result["cursor"]["data"]["members"][scene["list_id"]] == sorted(
        [ids["ann"], ids["bob"]])


def test_write_opt_out_and_create_with_a_list(replay):
    results = replay("write")
    assert [r["ok"] for r in results] == [True, True]
    assert results[0]["record_id"] == ids["ann"]


def test_a_deleted_record_is_read_with_its_own_address(replay):
    result = replay("delete")
    assert result["result"]["ok"] and result["result"]["record_id"] == ids["cyd"]
    [gone] = [r for r in result["records"] if r["deleted"]]
    assert gone["email"] == people["cyd"] and gone["ids"] == {"sugarcrm": ids["cyd"]}


def test_a_lost_session_logs_in_again(replay):
    result = replay("session_lost")
    assert result["logins"] == 2 and [LIST_KEY, f"crmsync cassette {scene['tag']}"] in \
        result["lists"]


def test_suitecrm_refuses_subqueries_and_drops_prefixed_order_by(replay):
    result = replay("refused")
    for name in ("link table", "nested"):
        assert result[name].startswith(
            "v4_1 get_entry_list: Access Denied (40): You do not have access on Prospects.")
        assert "SugarSQLValidate" in result[name]
    prefixed, bare = result["prefixed"], result["bare"]
    assert [row[1] for row in prefixed] == sorted(row[1] for row in prefixed)  # id order
    assert bare == sorted(bare) and bare != prefixed  # (date_modified, id) order
    assert result["count"] == {"result_count": str(len(bare))}


def test_check_makes_a_diff_read(replay):
    health = replay("check")
    assert health["ok"] and "a diff read since" in health["detail"]


def test_the_emulator_answers_as_the_recorded_server(serve):
    """The emulator's Access Denied and count bodies are the recorded ones, byte for
    byte once parsed."""
    recorded = yaml.safe_load((real.CASSETTES / "real_v4_1_refused.yaml").read_text())
    bodies = [json.loads(i["response"]["body"]["string"]) for i in recorded["interactions"]]
    assert ACCESS_DENIED in bodies
    [count] = [b for b in bodies if isinstance(b, dict) and set(b) == {"result_count"}]
    assert isinstance(count["result_count"], str)
