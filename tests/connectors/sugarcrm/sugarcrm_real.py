"""Scenarios recorded against a real SuiteCRM 7.12.14 (v4_1), replayed in CI.

``tests/live/record_cassettes.py`` sets the scene on the real server (four Prospects,
one with a second address, a target list), runs each scenario with vcrpy recording into
``cassettes/sugarcrm/real_v4_1_<name>.yaml`` and writes what the replay needs (ids,
cursors, the instant of the check) to ``cassettes/sugarcrm/real_v4_1_scene.json``.
The Prospects module keeps the reads small on a server that holds other contacts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from crmsync.errors import RemoteError
from crmsync.model import Change, Cursor
from crmsync_sugarcrm import SugarConnector

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "sugarcrm"
SCENE = CASSETTES / "real_v4_1_scene.json"
PASSWORD = "cassette-password"  # the login is scrubbed: any password replays
PREFIXED = "prospects.date_modified ASC, prospects.id ASC"
BARE = "date_modified ASC, id ASC"
REFUSED = {
    "link table": "prospects.id IN (SELECT plp.related_id FROM prospect_lists_prospects plp "
                  "WHERE plp.deleted = 0)",
    "nested": "prospects.id IN (SELECT eabr.bean_id FROM email_addr_bean_rel eabr WHERE "
              "eabr.email_address_id IN (SELECT ea.id FROM email_addresses ea "
              "WHERE ea.deleted = 0))",
}


def settings(scene: dict[str, Any]) -> dict[str, Any]:
    return {"flavour": "v4_1", "base_url": scene["base_url"], "username": scene["username"],
            "modules": ["Prospects"], "create_module": "Prospects", "page_size": 2,
            "fields": ["first_name", "last_name", "title"], "retries": 1,
            "target_lists": [scene["list_id"]]}


def cursor(raw: dict[str, Any]) -> Cursor:
    return Cursor.model_validate(raw)


def _records(connector: SugarConnector, since: Cursor | None) -> dict[str, Any]:
    pages = list(connector.read(since))
    out: dict[str, Any] = {
        "records": [r.model_dump(mode="json") for p in pages for r in p.records],
        "cursor": pages[-1].cursor.model_dump(mode="json") if pages and pages[-1].cursor
        else None}
    if since is None:
        out["count"] = connector.full_read_count()
    return out


def full_read(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    return _records(connector, None)


def diff_read(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    return _records(connector, cursor(scene["cursor_full"]))


def write(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    ann, list_key = scene["people"]["ann"], f"target_list:{scene['list_id']}"
    results = connector.write([
        Change(email=ann, ids={"sugarcrm": scene["ids"]["ann"]},
               fields={"email_opt_out": "true"}),
        Change(email=scene["people"]["eve"], fields={"last_name": "Eve", "title": "New"},
               memberships={list_key: ""}),
    ])
    return [r.model_dump(mode="json") for r in results]


def delete(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    [result] = connector.write([Change(email=scene["people"]["cyd"], op="delete",
                                       ids={"sugarcrm": scene["ids"]["cyd"]})])
    return {"result": result.model_dump(mode="json"),
            **_records(connector, cursor(scene["cursor_diff"]))}


def session_lost(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    flavour = connector.flavour
    session = flavour.session()  # type: ignore[attr-defined]
    # the server forgets the session (a logout elsewhere, an expiry)
    connector._http.post(flavour.url, data={  # type: ignore[attr-defined]
        "method": "logout", "input_type": "JSON", "response_type": "JSON",
        "rest_data": json.dumps([session])})
    lists = [(item.id, item.name) for item in connector.lists()]
    return {"lists": lists, "logins": flavour.logins}  # type: ignore[attr-defined]


def refused(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    """What SugarSQLValidate and process_order_by do, straight from the API."""
    call = connector.flavour.call  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for name, query in REFUSED.items():
        try:
            call("get_entry_list", module_name="Prospects", query=query, order_by="",
                 offset=0, select_fields=["id"], link_name_to_fields_array=[], max_results=5,
                 deleted=0, favorites=False)
        except RemoteError as exc:
            out[name] = str(exc)
    for name, order_by in (("prefixed", PREFIXED), ("bare", BARE)):
        data = call("get_entry_list", module_name="Prospects", query="", order_by=order_by,
                    offset=0, select_fields=["id", "date_modified"],
                    link_name_to_fields_array=[], max_results=100, deleted=0,
                    favorites=False)
        out[name] = [(e["name_value_list"]["date_modified"]["value"], e["id"])
                     for e in data["entry_list"]]
    out["count"] = call("get_entries_count", module_name="Prospects", query="", deleted=0)
    return out


def check(connector: SugarConnector, scene: dict[str, Any]) -> Any:
    return connector.check().model_dump(mode="json")


ACTIONS: dict[str, Callable[[SugarConnector, dict[str, Any]], Any]] = {
    "full_read": full_read, "diff_read": diff_read, "write": write, "delete": delete,
    "session_lost": session_lost, "refused": refused, "check": check,
}


class Frozen(datetime):
    """``datetime`` whose ``now()`` is the recorded instant (check reads since now - 10 min)."""

    at: datetime

    @classmethod
    def now(cls, tz: Any = None) -> Frozen:  # type: ignore[override]
        return cls.at  # type: ignore[return-value]
