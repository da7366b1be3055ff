"""The emulator reproduces the documented and captured quirks of both APIs."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from sugarcrm_support import state

from crmsync.config import ListMapping
from crmsync_sugarcrm import SugarConnector
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID, SugarEmulator

TWO = "contact0-0@example.com"


@pytest.fixture
def rest(serve):
    server = serve("rest", contacts=25)
    access = httpx.post(f"{server.url}/rest/v11/oauth2/token", json={
        "grant_type": "password", "client_id": "sugar", "client_secret": "",
        "username": "admin", "password": "crmsync-demo", "platform": "t"}).json()["access_token"]
    client = httpx.Client(base_url=f"{server.url}/rest/v11", headers={"OAuth-Token": access})
    yield server, client
    client.close()


def test_list_defaults_next_offset_and_bracket_filters(rest):
    _server, client = rest
    page = client.get("/Contacts").json()
    assert len(page["records"]) == 20 and page["next_offset"] == 20
    assert client.get("/Contacts", params={"offset": 20}).json()["next_offset"] == -1
    record = page["records"][0]
    assert {"id", "date_modified", "email", "_module"} <= set(record)
    assert record["date_modified"].endswith("+00:00")
    cut = sorted(r["date_modified"] for r in page["records"])[10]
    found = client.get("/Contacts", params={"filter[0][date_modified][$gte]": cut,
                                            "max_num": 100, "fields": "id"}).json()
    assert found["records"] and all(r["date_modified"] >= cut for r in found["records"])
    assert set(found["records"][0]) == {"id", "date_modified", "_module", "_acl"}


def test_filter_operators(rest):
    _, client = rest

    def names(expression):
        body = {"filter": expression, "max_num": 100, "fields": "last_name"}
        return sorted(r["last_name"] for r in client.post("/Contacts/filter", json=body)
                      .json()["records"])

    assert names([{"last_name": {"$in": ["Seed0-1", "Seed0-2"]}}]) == ["Seed0-1", "Seed0-2"]
    assert names([{"$or": [{"last_name": "Seed0-3"}, {"last_name": {"$equals": "Seed0-4"}}]}]) \
        == ["Seed0-3", "Seed0-4"]
    assert names([{"$and": [{"last_name": {"$starts": "Seed0-1"}},
                            {"last_name": {"$not_in": ["Seed0-1"]}}]}]) == [
        f"Seed0-1{n}" for n in range(10)]
    assert names([{"email_addresses.email_address": {"$in": ["CONTACT0-7@example.com"]}}]) == [
        "Seed0-7"]
    bad = client.post("/Contacts/filter", json={"filter": [{"last_name": {"$like": "x"}}]})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_parameter"
    missing = client.get("/NoSuchModule")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "error_message"}


def test_a_put_email_array_replaces_the_whole_set(rest):
    """The naive opt-out (PUT one address) unlinks the record's other addresses."""
    server, client = rest
    record_id = state(server)[TWO]["ids"]["sugarcrm"]
    answer = client.put(f"/Contacts/{record_id}", json={
        "email": [{"email_address": TWO.upper(), "opt_out": True}]})
    assert answer.status_code == 200
    assert [(e["email_address"], e["opt_out"], e["primary_address"]) for e in
            answer.json()["email"]] == [("contact0-0@example.com", True, True)]
    assert [a["email"] for a in state(server)[TWO]["addresses"]] == [TWO]


def test_unspecified_flags_are_merged_and_invalid_addresses_refused(rest):
    server, client = rest
    record_id = state(server)[TWO]["ids"]["sugarcrm"]
    client.put(f"/Contacts/{record_id}", json={"email": [
        {"email_address": TWO, "primary_address": True, "opt_out": True},
        {"email_address": "contact0-0@work.example.org"}]})
    answer = client.put(f"/Contacts/{record_id}", json={"email": [
        {"email_address": TWO}, {"email_address": "contact0-0@work.example.org"}]})
    flags = {e["email_address"]: (e["opt_out"], e["primary_address"])
             for e in answer.json()["email"]}
    assert flags == {TWO: (True, True), "contact0-0@work.example.org": (False, False)}
    bad = client.put(f"/Contacts/{record_id}", json={"email": [{"email_address": "x@"}]})
    assert bad.status_code == 422
    assert bad.json() == {"error": "invalid_parameter",
                          "error_message": "x@ is an invalid email address"}
    assert len(state(server)[TWO]["addresses"]) == 2


def test_deleted_true_includes_deleted_rows(rest):
    server, client = rest
    record_id = state(server)[TWO]["ids"]["sugarcrm"]
    assert client.delete(f"/Contacts/{record_id}").json() == {"id": record_id}
    body = {"filter": [{"id": record_id}], "fields": "deleted"}
    assert client.post("/Contacts/filter", json=body).json()["records"] == []
    [row] = client.post("/Contacts/filter", json={**body, "deleted": True}).json()["records"]
    assert row["deleted"] is True


def test_bulk_and_links(rest):
    server, client = rest
    ids = [state(server)[f"contact0-{n}@example.com"]["ids"]["sugarcrm"] for n in (1, 2)]
    answers = client.post("/bulk", json={"requests": [
        {"url": f"/v11/ProspectLists/{EVENTS_LIST_ID}/link", "method": "POST",
         "data": json.dumps({"link_name": "contacts", "ids": [ids[0], {"id": ids[1]}]})},
        {"url": "/v11/Contacts/nope", "method": "PUT", "data": "{}"},
    ]}).json()
    assert [a["status"] for a in answers] == [200, 404]
    assert {r["id"] for r in answers[0]["contents"]["related_records"]} == set(ids)
    assert answers[1]["contents"]["error"] == "not_found"
    members = client.get(f"/ProspectLists/{EVENTS_LIST_ID}/link/contacts",
                         params={"max_num": 1000, "fields": "id"}).json()
    assert set(ids) <= {r["id"] for r in members["records"]} and members["next_offset"] == -1


# -- v4_1 --------------------------------------------------------------------------------
@pytest.fixture
def legacy(serve):
    server = serve("v4_1", contacts=5)
    digest = hashlib.md5(b"crmsync-demo").hexdigest()

    def call(method, *args):
        answer = httpx.post(f"{server.url}/service/v4_1/rest.php", data={
            "method": method, "input_type": "JSON", "response_type": "JSON",
            "rest_data": json.dumps(list(args))})
        assert answer.status_code == 200
        return answer.json()

    session = call("login", {"user_name": "admin", "password": digest}, "t", [])["id"]
    return server, session, call


def test_v4_1_next_offset_always_advances_and_deleted_1_returns_both(legacy):
    _server, session, call = legacy
    fields = ["id", "email1", "email_opt_out", "deleted"]
    last = call("get_entry_list", session, "Contacts", "", "", 4, fields, [], 10, 0, False)
    assert last["result_count"] == 1 and last["next_offset"] == 5
    past = call("get_entry_list", session, "Contacts", "", "", 5, fields, [], 10, 0, False)
    assert past["result_count"] == 0 and past["next_offset"] == 5
    entry = last["entry_list"][0]
    assert entry["name_value_list"]["id"] == {"name": "id", "value": entry["id"]}
    call("set_entries", session, "Contacts", [[{"name": "id", "value": entry["id"]},
                                               {"name": "deleted", "value": 1}]])
    both = call("get_entry_list", session, "Contacts", "", "", 0, fields, [], 10, 1, False)
    flags = {e["id"]: e["name_value_list"]["deleted"]["value"] for e in both["entry_list"]}
    assert len(flags) == 5 and flags[entry["id"]] == "1"
    gone = next(e for e in both["entry_list"] if e["id"] == entry["id"])
    assert gone["name_value_list"]["email1"]["value"] == ""


def test_v4_1_email_opt_out_is_ignored_on_update_but_set_on_the_address(legacy):
    server, session, call = legacy
    record_id = state(server)[TWO]["ids"]["sugarcrm"]
    call("set_entry", session, "Contacts", [{"name": "id", "value": record_id},
                                           {"name": "email1", "value": TWO},
                                           {"name": "email_opt_out", "value": 1}])
    saved = state(server)[TWO]
    assert saved["opted_out"] is False  # ignored, as on SuiteCRM 7.12.14
    [row] = call("get_entry_list", session, "EmailAddresses",
                 f"email_addresses.email_address_caps = '{TWO.upper()}'", "", 0,
                 ["id", "opt_out"], [], 5, 0, False)["entry_list"]
    call("set_entry", session, "EmailAddresses", [{"name": "id", "value": row["id"]},
                                                 {"name": "opt_out", "value": 1}])
    after = state(server)[TWO]
    assert after["opted_out"] is True and after["date_modified"] == saved["date_modified"]
    created = call("set_entries", session, "Contacts", [[
        {"name": "last_name", "value": "Eve"}, {"name": "email1", "value": "eve@example.com"},
        {"name": "email_opt_out", "value": "1"}]])
    assert len(created["ids"]) == 1 and state(server)["eve@example.com"]["opted_out"] is True


def test_v4_1_error_bodies(legacy):
    _, session, call = legacy
    assert call("get_entry_list", session, "NoSuchModule", "", "", 0, [], [], 1, 0)[
        "number"] == 20
    assert call("no_such_method", session)["number"] == "-1"
    links = call("get_entry_list", session, "Contacts", "", "", 0, ["id"],
                 [{"name": "email_addresses", "value": ["email_address", "opt_out"]}], 1, 0)
    records = links["relationship_list"][0]["link_list"][0]["records"]
    assert records and all(set(r["link_value"]) == {"email_address", "opt_out"}
                           for r in records)


DENIED = {"name": "Access Denied", "number": 40, "description": "You do not have access"}


@pytest.mark.parametrize("query", [
    # a subquery on a table SugarSQLValidate does not list (what crmsync once sent)
    "contacts.id IN (SELECT plp.related_id FROM prospect_lists_prospects plp "
    "WHERE plp.deleted = 0)",
    # a subquery inside a subquery
    "contacts.id IN (SELECT eabr.bean_id FROM email_addr_bean_rel eabr WHERE "
    "eabr.email_address_id IN (SELECT ea.id FROM email_addresses ea WHERE ea.deleted = 0))",
    # the forbidden column
    "contacts.user_hash = 'x'",
])
def test_v4_1_sugarsqlvalidate_refuses_with_access_denied(legacy, query):
    """SuiteCRM 7.12.14 answers these with HTTP 200 Access Denied (40), as the real
    server did (cassettes/sugarcrm/real_v4_1_access_denied.yaml)."""
    _, session, call = legacy
    assert call("get_entry_list", session, "Contacts", query, "", 0, ["id"], [], 5, 0,
                False) == DENIED
    assert call("get_entries_count", session, "Contacts", query, 0) == DENIED


def test_v4_1_sugarsqlvalidate_allows_address_subqueries_and_counts(legacy):
    server, session, call = legacy
    query = ("contacts.id IN (SELECT eabr.bean_id FROM email_addr_bean_rel eabr "
             "JOIN email_addresses ea ON ea.id = eabr.email_address_id "
             "WHERE eabr.bean_module = 'Contacts' AND eabr.deleted = 0 "
             f"AND ea.email_address_caps IN ('{TWO.upper()}'))")
    found = call("get_entry_list", session, "Contacts", query, "", 0, ["id"], [], 5, 0, False)
    assert [e["id"] for e in found["entry_list"]] == [state(server)[TWO]["ids"]["sugarcrm"]]
    assert call("get_entries_count", session, "Contacts", "", 0) == {"result_count": "5"}
    assert call("get_entries_count", session, "Contacts", query, 0) == {"result_count": "1"}


def test_v4_1_order_by_drops_prefixed_terms_and_refuses_odd_ones(legacy):
    """SugarBean::process_order_by keeps only bare field names: a prefixed term is
    dropped and the rows come in id (primary key) order, as on the real server."""
    server, session, call = legacy
    with server.emulator.lock:  # make date order and id order differ
        store = server.emulator.store
        people = sorted(store.people["Contacts"].values(), key=lambda p: p.id)
        for person in people[:2]:
            store.touch(person)

    def ids(order_by):
        answer = call("get_entry_list", session, "Contacts", "", order_by, 0,
                      ["id", "date_modified"], [], 10, 0, False)
        if "entry_list" not in answer:
            return answer
        return [e["id"] for e in answer["entry_list"]]

    by_id = sorted(p.id for p in people)
    by_date = [p.id for p in sorted(people, key=lambda p: (p.date_modified, p.id))]
    assert by_id != by_date
    assert ids("contacts.date_modified ASC, contacts.id ASC") == by_id
    assert ids("") == by_id
    assert ids("date_modified ASC, id ASC") == by_date
    assert ids("date_modified DESC, id DESC") == by_date[::-1]
    assert ids("no_such_field ASC") == by_id
    assert ids("last_name sideways") == DENIED


def test_emulator_options_and_demo_profile(monkeypatch):
    assert SugarEmulator(flavour="v4_1").flavour == "v4_1"
    with pytest.raises(ValueError):
        SugarEmulator(flavour="soap")
    profile = SugarEmulator(flavour="v4_1").demo_profile()
    assert profile["fields"] == {"first_name": "name", "last_name": "surname"}
    lists = [ListMapping.model_validate(item) for item in profile["lists"]]
    assert [(m.esp_list, m.members, m.opt_out) for m in lists] == [
        ("1", "all", "email_opt_out"), ("2", f"target_list:{EVENTS_LIST_ID}", None)]
    assert lists[0].groups is not None and lists[0].groups.field == "interests_c"
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = SugarConnector.Settings.load(
        "sugarcrm", {**profile["settings"], "base_url": "http://127.0.0.1:1"})
    assert settings.flavour == "v4_1"


def test_public_api_is_pinned():
    import crmsync_sugarcrm
    import crmsync_sugarcrm.emulator

    assert crmsync_sugarcrm.__all__ == ["SugarConnector", "SugarSettings"]
    assert crmsync_sugarcrm.emulator.__all__ == ["EVENTS_LIST_ID", "SugarEmulator"]
