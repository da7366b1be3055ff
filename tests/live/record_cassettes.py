"""Record cassettes/sugarcrm/real_v4_1_*.yaml and cassettes/vtiger/real_*.yaml from the
real servers (run by hand; the replays run in CI)::

    CRMSYNC_LIVE_SUITECRM_URL=http://127.0.0.1:8082 CRMSYNC_LIVE_SUITECRM_PASSWORD=... \\
    CRMSYNC_LIVE_VTIGER_URL=http://127.0.0.1:8081 CRMSYNC_LIVE_VTIGER_ACCESS_KEY=... \\
        .venv/bin/python tests/live/record_cassettes.py [suitecrm] [vtiger]

Each vendor's scene (a few contacts tagged with the run, a list) is created through the
API first; the scenarios are in tests/connectors/<vendor>/<vendor>_real.py. Secrets and
session ids are scrubbed on the way to disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "live"), str(ROOT / "tests" / "connectors" / "sugarcrm"),
                str(ROOT / "tests" / "connectors" / "vtiger")]


def suitecrm() -> None:
    import sugarcrm_real as real
    from sugarcrm_cassettes import recorder
    from test_live_suitecrm import SuiteRaw

    import crmsync_sugarcrm.connector as connector_module
    from crmsync_sugarcrm import SugarConnector

    url = os.environ["CRMSYNC_LIVE_SUITECRM_URL"].rstrip("/")
    username = os.environ.get("CRMSYNC_LIVE_SUITECRM_USERNAME") or "admin"
    password = os.environ["CRMSYNC_LIVE_SUITECRM_PASSWORD"]
    os.environ["CRMSYNC_SUGARCRM_PASSWORD"] = password
    raw = SuiteRaw(url, username, password)
    tag = f"c{int(time.time())}"
    people = {name: f"{tag}-{name}@example.com" for name in ("ann", "bob", "cyd", "dee", "eve")}
    ids = dict(zip(["ann", "bob", "cyd", "dee"], raw.create("Prospects", [
        {"first_name": name.title(), "last_name": f"Cassette{tag}", "title": f"T-{name}",
         "email1": people[name],
         **({"email2": f"{tag}-ann@work.example.org"} if name == "ann" else {})}
        for name in ("ann", "bob", "cyd", "dee")]), strict=True))
    [list_id] = raw.create("ProspectLists", [{"name": f"crmsync cassette {tag}",
                                              "list_type": "default"}])
    raw.link(list_id, [ids["ann"], ids["cyd"]], module="prospects")
    scene: dict[str, Any] = {"base_url": url, "username": username, "tag": tag,
                             "people": people, "ids": ids, "list_id": list_id, "results": {}}
    machine = recorder(record=True, real=True)

    def run(name: str) -> Any:
        path = real.CASSETTES / f"real_v4_1_{name}.yaml"
        path.unlink(missing_ok=True)
        settings = SugarConnector.Settings.load("sugarcrm", real.settings(scene))
        with machine.use_cassette(path.name), SugarConnector(settings) as connector:
            result = real.ACTIONS[name](connector, scene)
        scene["results"][name] = result
        print(f"recorded {path.name}")
        return result

    scene["cursor_full"] = run("full_read")["cursor"]
    time.sleep(1.1)
    raw.update("Prospects", ids["bob"], last_name="Renamed")
    raw.update("EmailAddresses", raw.address(people["dee"])["id"], opt_out=1)
    raw.link(list_id, [ids["bob"]], module="prospects")
    raw.link(list_id, [ids["cyd"]], module="prospects", delete=True)
    scene["cursor_diff"] = run("diff_read")["cursor"]
    run("write")
    time.sleep(1.1)
    run("delete")
    run("session_lost")
    run("refused")
    # an hour ahead: the check's diff read (since now - 10 min) then finds no change,
    # which keeps the cassette small on a server seeded a minute ago
    real.Frozen.at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    scene["now"] = real.Frozen.at.isoformat()
    original = connector_module.datetime
    connector_module.datetime = real.Frozen  # type: ignore[misc]
    try:
        run("check")
    finally:
        connector_module.datetime = original  # type: ignore[misc]
    real.SCENE.write_text(json.dumps(scene, indent=1, sort_keys=True) + "\n")
    print(f"wrote {real.SCENE.name}")


def main() -> None:
    wanted = sys.argv[1:] or ["suitecrm", "vtiger"]
    if "suitecrm" in wanted:
        suitecrm()
    if "vtiger" in wanted:
        vtiger()


def vtiger() -> None:
    import vtiger_real as real
    from test_live_vtiger import VtRaw

    import crmsync_vtiger._connector as connector_module
    from crmsync_vtiger import VtigerConnector

    env = {"url": os.environ["CRMSYNC_LIVE_VTIGER_URL"].rstrip("/"),
           "username": os.environ.get("CRMSYNC_LIVE_VTIGER_USERNAME") or "admin",
           "access_key": os.environ["CRMSYNC_LIVE_VTIGER_ACCESS_KEY"]}
    os.environ["CRMSYNC_VTIGER_ACCESS_KEY"] = env["access_key"]
    raw = VtRaw(env)
    tag = f"c{int(time.time())}"
    people = {name: f"{tag}-{name}@example.com" for name in ("ann", "bob", "cyd", "dee", "eve")}
    ids = {name: raw.create("Contacts", {
        "firstname": name.title(), "lastname": f"Cassette{tag}", "title": f"T-{name}",
        "email": people[name]})["id"] for name in ("ann", "bob", "cyd", "dee")}
    campaign = raw.create("Campaigns", {"campaignname": f"crmsync cassette {tag}",
                                        "closingdate": "2030-12-31"})["id"]
    raw.api.call("add_related", {"sourceRecordId": campaign, "relatedRecordId": ids["ann"],
                                 "relationIdLabel": "Contacts"})
    scene: dict[str, Any] = {"base_url": env["url"], "username": env["username"], "tag": tag,
                             "people": people, "ids": ids, "campaign": campaign,
                             "results": {}}
    machine = real.recorder(record=True)

    def run(name: str) -> Any:
        path = real.CASSETTES / f"real_{name}.yaml"
        path.unlink(missing_ok=True)
        settings = VtigerConnector.Settings.load("vtiger", real.settings(scene))
        with machine.use_cassette(path.name), VtigerConnector(settings) as connector:
            result = real.ACTIONS[name](connector, scene)
        scene["results"][name] = json.loads(json.dumps(result))
        print(f"recorded {path.name}")
        return result

    scene["cursor_full"] = run("full_read")["cursor"]
    time.sleep(1.1)
    raw.revise(ids["bob"], lastname="Renamed")
    raw.revise(ids["dee"], emailoptout="1")
    raw.api.call("add_related", {"sourceRecordId": campaign, "relatedRecordId": ids["bob"],
                                 "relationIdLabel": "Contacts"})
    scene["cursor_diff"] = run("diff_read")["cursor"]
    run("write")
    time.sleep(1.1)
    run("delete")
    run("session_lost")
    run("refused")
    real.Frozen.at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    scene["now"] = real.Frozen.at.isoformat()
    original = connector_module.datetime
    connector_module.datetime = real.Frozen  # type: ignore[misc]
    try:
        run("check")
    finally:
        connector_module.datetime = original  # type: ignore[misc]
    real.SCENE.write_text(json.dumps(scene, indent=1, sort_keys=True) + "\n")
    print(f"wrote {real.SCENE.name}")


if __name__ == "__main__":
    main()
