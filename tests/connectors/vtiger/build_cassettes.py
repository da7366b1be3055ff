"""Build cassettes/vtiger/*.yaml from the real vTiger 8.0.0 captures (run by hand).

    python tests/connectors/vtiger/build_cassettes.py /path/to/captures/vtiger-8.0.0

Each interaction pairs a captured response with the request crmsync sends for it. Where
crmsync's request differs from the captured one (its VTQL statements, its compact JSON,
the sync stamp of its cursor) the request is written as crmsync sends it and the note
says so; responses are the captured ones, secrets scrubbed the way
``crmsync.testing.plugin`` scrubs recordings. A derived response says what was changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from crmsync.testing.plugin import SCRUB, scrub_text

BASE = "http://127.0.0.1:8081/webservice.php"
OUT = Path(__file__).resolve().parents[3] / "cassettes" / "vtiger"
_SCRUB_PARAMS = {"sessionName", "accessKey"}


def _clean(params: dict[str, Any]) -> dict[str, str]:
    return {k: SCRUB if k in _SCRUB_PARAMS else str(v) for k, v in params.items()}


def interaction(captures: Path, name: str, *, params: dict[str, Any] | None = None,
                form: dict[str, Any] | None = None, result: Any = None,
                note: str = "") -> dict[str, Any]:
    capture = json.loads((captures / name).read_text())
    request, response = capture["request"], capture["response"]
    if request["method"] == "GET":
        query = _clean({**request["params"], **(params or {})})
        uri, body = f"{BASE}?{urlencode(query)}", ""
    else:
        uri = BASE
        body = urlencode(_clean({**request["form"], **(form or {})}))
    if response["json"] is not None:
        payload = response["json"]
        if result is not None:
            payload = {**payload, "result": result}
        text = scrub_text(json.dumps(payload))
    else:
        text = response["text"] or ""
    out = {
        "request": {"body": body, "headers": {}, "method": request["method"], "uri": uri},
        "response": {
            "status": {"code": response["status"],
                       "message": "OK" if response["status"] == 200 else "Internal Server Error"},
            "headers": {"Content-Type": ["application/json"]},
            "body": {"string": text},
        },
    }
    if note or capture.get("note"):
        out["note"] = f"{name}: {note or capture['note']}"
    return out


def login(captures: Path) -> list[dict[str, Any]]:
    return [interaction(captures, "01_getchallenge.json"), interaction(captures, "04_login.json")]


def build(captures: Path) -> dict[str, list[dict[str, Any]]]:
    c = captures
    contacts_page = "select * from Contacts order by modifiedtime limit 0,100;"
    related = json.loads((c / "50_retrieve_related_campaign_contacts.json").read_text())
    carol_only = [r for r in related["response"]["json"]["result"] if r["id"] == "12x4"]
    return {
        "full_read": [
            *login(c),
            interaction(c, "17_query_contacts_count.json",
                        note="count(*) before the full read (full_read_count)"),
            interaction(c, "08_describe_Campaigns.json"),
            interaction(c, "07_describe_Contacts.json"),
            interaction(c, "50_retrieve_related_campaign_contacts.json"),
            interaction(c, "15_query_contacts_modifiedtime.json",
                        params={"query": contacts_page},
                        note="crmsync's first full-read page; response as captured"),
            interaction(c, "17_query_contacts_count.json",
                        note="count(*) after the full read (full_read_count)"),
        ],
        "incremental_sync": [
            *login(c),
            interaction(c, "07_describe_Contacts.json"),
            interaction(c, "26_sync_after_update.json"),
        ],
        "incremental_sync_delete": [
            *login(c),
            interaction(c, "07_describe_Contacts.json"),
            interaction(c, "28_sync_after_delete.json"),
        ],
        "write": [
            *login(c),
            interaction(c, "07_describe_Contacts.json"),
            interaction(c, "08_describe_Campaigns.json"),
            interaction(c, "25_revise_contact_partial.json",
                        form={"element": '{"id":"12x4","emailoptout":"1","title":"Revised"}'},
                        note="crmsync sends compact JSON; response as captured"),
            interaction(c, "58_query_contacts_by_email.json", params={
                "query": "select * from Contacts where email in ('alice@example.com') "
                         "order by id limit 0,100;"},
                        note="crmsync's batched lookup; response as captured"),
            interaction(c, "50_retrieve_related_campaign_contacts.json", result=carol_only,
                        note="derived: the member list before Alice was added (Carol only)"),
            interaction(c, "48_add_related_campaign_contact.json"),
        ],
        "session_lost": [
            *login(c),
            interaction(c, "31_err_bad_session_query.json",
                        params={"query": "select id,campaignname from Campaigns order by id "
                                         "limit 0,100;"},
                        note="the session died: crmsync logs in again and repeats"),
            interaction(c, "03_getchallenge_2.json"),
            interaction(c, "04_login.json"),
            interaction(c, "57_query_campaigns.json",
                        params={"query": "select id,campaignname from Campaigns order by id "
                                         "limit 0,100;"},
                        note="crmsync's campaign list; response as captured"),
        ],
        "login_refused": [
            item for _ in range(4) for item in (
                interaction(c, "01_getchallenge.json"),
                interaction(c, "02_login_bad_accesskey.json"))
        ],
        "errors": [
            *login(c),
            interaction(c, "38_err_query_no_semicolon.json"),
            interaction(c, "37_err_query_unknown_column.json"),
            interaction(c, "33_err_retrieve_bad_id.json"),
            interaction(c, "21_err_sync_modifiedTime_0_http500.json"),
            interaction(c, "13_create_Contact_missing_mandatory.json"),
        ],
    }


def main() -> None:
    captures = Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, interactions in build(captures).items():
        notes = [i.pop("note") for i in interactions if "note" in i]
        header = "".join(f"# {line}\n" for line in [
            f"vTiger 8.0.0 webservice, built from the real captures by {Path(__file__).name}",
            *notes])
        text = yaml.safe_dump({"interactions": interactions, "version": 1}, sort_keys=False,
                               allow_unicode=True)
        (OUT / f"{name}.yaml").write_text(header + text)


if __name__ == "__main__":
    main()
