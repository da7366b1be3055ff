"""Cassette scenarios: what the connector does, and the answers a real server gave.

v4_1 answers are the real SuiteCRM 7.12.14 captures (reference/captures), with the
session ids replaced; each request is the one the connector sends. REST v11 answers
are the documented examples (Sugar's API help files). ``build_sugarcrm_cassettes.py``
records them once through a mock transport; the tests replay them with vcrpy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import vcr

from crmsync.testing.plugin import SCRUB, scrub_text, vcr_config

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = ROOT.parent / "shared" / "reference" / "captures" / "suitecrm-7.12.14-v4_1"
CASSETTES = ROOT / "cassettes" / "sugarcrm"
BASE_URL = "https://suitecrm.example.test"
PASSWORD = "cassette-password"
SESSION = "SCRUBBEDSESSION0000000000000000"
# v4_1 session ids (and md5 hashes, in requests we do not replay) are 32 hex digits.
SESSION_ID = re.compile(r"\b[0-9a-f]{32}\b")
ALICE = "8c2caeb4-a102-a6fb-e643-6b0a6d8e3c3e"
ALICE_ADDRESS = "8c64e239-9555-9b88-3bec-6b0a6dce39b1"
NEWSLETTER = "6a9604d9-334b-9d7d-5ebe-6b0a6d963248"


def captured(number: int) -> tuple[int, Any]:
    """``(status, body)`` of a capture, session ids replaced."""
    [path] = CAPTURES.glob(f"{number:02d}_*.json")
    text = SESSION_ID.sub(SESSION, path.read_text())
    response = json.loads(text)["response"]
    if response["json"] is None:
        return response["status"], response["text"] or ""
    return response["status"], response["json"]


def _alice_found() -> tuple[int, Any]:
    # get_entry_list with an id filter: capture 13's shape, keeping Alice's entry.
    status, page = captured(13)
    page = {**page, "result_count": 1, "total_count": "1", "next_offset": 1,
            "entry_list": page["entry_list"][:1]}
    return status, page


def _count(n: int) -> Callable[[], tuple[int, Any]]:
    # get_entries_count: a string, as a real SuiteCRM 7.12.14 answers (tests/live)
    return lambda: (200, {"result_count": str(n)})


def _logout() -> tuple[int, Any]:
    return captured(41)  # the body is the text "null"


# The REST v11 answers, from Sugar's API help files (oauth2_token_post_help.html,
# module_filter_get_help.html) and SugarFieldEmail's email array.
def _token(n: int) -> dict[str, Any]:
    return {"access_token": f"access-{n}", "expires_in": 3600, "token_type": "bearer",
            "scope": None, "refresh_token": f"refresh-{n}", "refresh_expires_in": 1209600,
            "download_token": f"download-{n}"}


_REST_RECORDS = {"next_offset": -1, "records": [
    {"id": "fa300a0e-0ad1-b322-9601-512d0983c19a", "first_name": "Dale",
     "last_name": "Spivey", "date_modified": "2013-02-26T19:12:00+00:00", "deleted": False,
     "email": [{"email_address_id": "e1", "email_address": "rob@x.io", "primary_address": True,
                "reply_to_address": False, "invalid_email": False, "opt_out": False},
               {"email_address_id": "e2", "email_address": "dale@x.io",
                "primary_address": False, "reply_to_address": False, "invalid_email": False,
                "opt_out": True}],
     "_acl": {"fields": {}}, "_module": "Contacts"},
    {"id": "95e17367-9b3d-0e26-22dc-512d0961fedf", "first_name": "Florence",
     "last_name": "Haddock", "date_modified": "2013-02-28T05:03:00+00:00", "deleted": False,
     "email": [{"email_address_id": "e3", "email_address": "florence@x.io",
                "primary_address": True, "reply_to_address": False, "invalid_email": False,
                "opt_out": True}],
     "_acl": {"fields": {}}, "_module": "Contacts"},
]}
# GET /<module>/count (module_count_get_help): {"record_count": n}
_REST_COUNT = {"record_count": 2}
_INVALID = {"error": "invalid_grant", "error_message": "The access token provided is invalid."}

# name -> (settings overrides, answers in order)
SCENARIOS: dict[str, tuple[dict[str, Any], list[Callable[[], tuple[int, Any]]]]] = {
    "v4_1_login_refused": ({"flavour": "v4_1"}, [lambda: captured(1)]),
    "v4_1_read_pages": ({"flavour": "v4_1", "page_size": 2}, [
        lambda: captured(4), lambda: captured(30), lambda: captured(26), _count(5),
        lambda: captured(13), lambda: captured(14), lambda: captured(15), _logout]),
    "v4_1_session_lost": ({"flavour": "v4_1", "page_size": 10, "target_lists": []}, [
        lambda: captured(4), lambda: captured(35), lambda: captured(4), _count(4),
        lambda: captured(33), _logout]),
    "v4_1_bad_query": ({"flavour": "v4_1"}, [lambda: captured(4), lambda: captured(36), _logout]),
    "v4_1_opt_out_and_list": ({"flavour": "v4_1"}, [
        lambda: captured(4), _alice_found, lambda: captured(45),
        lambda: (200, {"ids": [ALICE_ADDRESS]}), lambda: captured(24), _logout]),
    "rest_read": ({"flavour": "rest", "target_lists": []}, [
        lambda: (200, _token(1)), lambda: (200, _REST_COUNT), lambda: (200, _REST_RECORDS)]),
    "rest_token_refresh": ({"flavour": "rest", "target_lists": []}, [
        lambda: (200, _token(1)), lambda: (401, _INVALID), lambda: (200, _token(2)),
        lambda: (200, _REST_COUNT), lambda: (200, _REST_RECORDS)]),
}


def _semantic(body: Any) -> Any:
    """A request body with its secrets blanked, for matching recorded to live requests."""
    text = body.decode() if isinstance(body, bytes) else (body or "")
    if text.startswith("method="):
        form = dict(parse_qsl(text, keep_blank_values=True))
        data = json.loads(form.get("rest_data") or "null")
        if form.get("method") == "login" and isinstance(data, list) and data:
            data[0] = {**data[0], "password": SCRUB}
        return form.get("method"), data
    try:
        return json.loads(scrub_text(text)) if text else None
    except ValueError:
        return text


def _body_matcher(one: Any, two: Any) -> None:
    assert _semantic(one.body) == _semantic(two.body)


def _scrub_login(request: Any) -> Any:
    if request.body:
        text = request.body.decode() if isinstance(request.body, bytes) else request.body
        if text.startswith("method=login"):
            form = dict(parse_qsl(text, keep_blank_values=True))
            data = json.loads(form["rest_data"])
            data[0]["password"] = SCRUB
            form["rest_data"] = json.dumps(data)
            from urllib.parse import urlencode

            request.body = urlencode(form).encode()
            return request
    return vcr_config()["before_record_request"](request)


def _scrub_sessions(request: Any) -> Any:
    request = _scrub_login(request)
    if request.body:
        text = request.body.decode() if isinstance(request.body, bytes) else request.body
        # in the form body the id sits between url-encoded quotes (%22)
        request.body = re.sub(r"(?<=%22)[0-9a-f]{32}(?=%22)", SESSION, text).encode()
    return request


def _scrub_session_answers(response: dict[str, Any]) -> dict[str, Any]:
    response = vcr_config()["before_record_response"](response)
    body = response.get("body", {}).get("string")
    if body:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        response["body"]["string"] = SESSION_ID.sub(SESSION, text).encode()
    return response


def recorder(record: bool = False, *, real: bool = False) -> vcr.VCR:
    """``real``: recordings of a real server, whose session ids (in requests and in the
    login answer) are replaced by one placeholder."""
    config = vcr_config()
    config["match_on"] = ["method", "scheme", "host", "port", "path", "query", "sugar_body"]
    config["before_record_request"] = _scrub_sessions if real else _scrub_login
    if real:
        config["before_record_response"] = _scrub_session_answers
    if record:
        config["record_mode"] = "all"
    machine = vcr.VCR(cassette_library_dir=str(CASSETTES), **config)
    machine.register_matcher("sugar_body", _body_matcher)
    return machine
