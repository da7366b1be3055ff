"""Scenarios recorded against a real vTiger CRM 8.0.0 (webservice), replayed in CI.

``tests/live/record_cassettes.py vtiger`` sets the scene on the real server (four
contacts, a campaign), records each scenario with vcrpy into
``cassettes/vtiger/real_<name>.yaml`` and writes what the replay needs to
``cassettes/vtiger/real_scene.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import vcr

from crmsync.errors import RemoteError
from crmsync.model import Change, Cursor
from crmsync.testing.plugin import vcr_config
from crmsync_vtiger import VtigerConnector

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "vtiger"
SCENE = CASSETTES / "real_scene.json"
ACCESS_KEY = "cassette-access-key"  # the login digest is scrubbed: any key replays
REFUSED = ("select id from Contacts where email = '';",
           "select id from Contacts where email is null;")


def recorder(record: bool = False) -> vcr.VCR:
    config = vcr_config()
    config["record_mode"] = "all" if record else "none"
    return vcr.VCR(cassette_library_dir=str(CASSETTES), **config)


def settings(scene: dict[str, Any]) -> dict[str, Any]:
    return {"base_url": scene["base_url"], "username": scene["username"],
            "campaigns": [scene["campaign"]], "fields": ["firstname", "lastname", "title"]}


def _records(connector: VtigerConnector, since: Cursor | None) -> dict[str, Any]:
    pages = list(connector.read(since))
    out: dict[str, Any] = {
        "records": [r.model_dump(mode="json") for p in pages for r in p.records],
        "cursor": pages[-1].cursor.model_dump(mode="json") if pages and pages[-1].cursor
        else None}
    if since is None:
        out["count"] = connector.full_read_count()
        out["skipped"] = connector.reader.skipped_without_email
    return out


def full_read(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    """The whole CRM is read; the scene's contacts and the totals are what is kept."""
    out = _records(connector, None)
    records = out.pop("records")
    out["read"] = len(records)
    out["distinct"] = len({r["ids"]["vtiger"] for r in records})
    mine = set(scene["people"].values())
    out["records"] = [r for r in records if r["email"] in mine]
    return out


def diff_read(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    return _records(connector, Cursor.model_validate(scene["cursor_full"]))


def write(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    results = connector.write([
        Change(email=scene["people"]["ann"], ids={"vtiger": scene["ids"]["ann"]},
               fields={"emailoptout": "true"}),
        Change(email=scene["people"]["eve"], fields={"lastname": "Eve", "title": "New"},
               memberships={f"campaign:{scene['campaign']}": ""}),
    ])
    return [r.model_dump(mode="json") for r in results]


def delete(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    [result] = connector.write([Change(email=scene["people"]["cyd"], op="delete",
                                       ids={"vtiger": scene["ids"]["cyd"]})])
    return {"result": result.model_dump(mode="json"),
            **_records(connector, Cursor.model_validate(scene["cursor_diff"]))}


def session_lost(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    session = connector.api.session()
    connector.api._raw("logout", {}, session)  # type: ignore[attr-defined]
    lists = [(item.id, item.name) for item in connector.lists()]
    return {"lists": lists, "logins": connector.api.logins}  # type: ignore[attr-defined]


def refused(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    out: dict[str, Any] = {}
    for statement in REFUSED:
        try:
            connector.api.call("query", {"query": statement})
        except RemoteError as exc:
            out[statement] = {"code": exc.code, "message": str(exc)}
    out["count"] = connector.api.call("query", {"query": "select count(*) from Contacts;"})
    return out


def check(connector: VtigerConnector, scene: dict[str, Any]) -> Any:
    return connector.check().model_dump(mode="json")


ACTIONS: dict[str, Callable[[VtigerConnector, dict[str, Any]], Any]] = {
    "full_read": full_read, "diff_read": diff_read, "write": write, "delete": delete,
    "session_lost": session_lost, "refused": refused, "check": check,
}


class Frozen(datetime):
    """``datetime`` whose ``now()`` is the recorded instant (check reads since now - 10 min)."""

    at: datetime

    @classmethod
    def now(cls, tz: Any = None) -> Frozen:  # type: ignore[override]
        return cls.at  # type: ignore[return-value]
