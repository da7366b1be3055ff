"""The emulator reproduces the vTiger 8.0.0 behaviour seen in the real captures."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from crmsync_vtiger.emulator import ADMIN_KEY, SALES_KEY


class Raw:
    """A bare webservice client, to poke the emulator the way a careless client would."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url)
        self.session = ""

    def get(self, **params):
        return self.http.get("/webservice.php", params=params)

    def post(self, **form):
        return self.http.post("/webservice.php", data=form)

    def login(self, username="admin", key=ADMIN_KEY):
        token = self.get(operation="getchallenge", username=username).json()["result"]["token"]
        digest = hashlib.md5((token + key).encode()).hexdigest()
        answer = self.post(operation="login", username=username, accessKey=digest).json()
        self.session = answer["result"]["sessionName"]
        return answer

    def query(self, text):
        return self.get(operation="query", sessionName=self.session, query=text).json()


@pytest.fixture
def raw(vtiger_server):
    server = vtiger_server(contacts=260)
    client = Raw(server.url)
    client.login()
    client.server = server
    yield client
    client.http.close()


def test_errors_are_http_200_envelopes(raw):
    response = raw.get(operation="retrieve", sessionName=raw.session, id="12x999999")
    assert response.status_code == 200
    assert response.json() == {"success": False, "error": {
        "message": "Permission to perform the operation is denied", "code": "ACCESS_DENIED"}}


def test_unknown_operation_and_sync_from_zero_are_empty_http_500(raw):
    for response in (raw.get(operation="nosuchop", sessionName=raw.session),
                     raw.get(operation="sync", sessionName=raw.session, modifiedTime="0",
                             elementType="Contacts")):
        assert response.status_code == 500
        assert response.content == b""


def test_parameters_in_the_wrong_verb_arrive_empty(raw):
    # login read from GET: the server sees no username, hence no challenge
    token = raw.get(operation="getchallenge", username="admin").json()["result"]["token"]
    digest = hashlib.md5((token + ADMIN_KEY).encode()).hexdigest()
    answer = raw.get(operation="login", username="admin", accessKey=digest).json()
    assert answer["error"]["code"] == "INVALID_AUTH_TOKEN"
    # query sent as POST: the statement is empty
    answer = raw.post(operation="query", sessionName=raw.session,
                      query="select id from Contacts;").json()
    assert answer["success"] is False
    # create sent as GET: no element, so the mandatory field is missing... and nothing made
    before = len(raw.server.emulator.records)
    answer = raw.get(operation="create", sessionName=raw.session, elementType="Contacts",
                     element=json.dumps({"lastname": "X", "assigned_user_id": "19x1"})).json()
    assert answer["success"] is False
    assert len(raw.server.emulator.records) == before


def test_query_caps_rows_at_100_and_counts(raw):
    assert len(raw.query("select id from Contacts;")["result"]) == 100
    assert len(raw.query("select id from Contacts limit 0,500;")["result"]) == 100
    assert raw.query("select count(*) from Contacts;")["result"] == [{"count": "260"}]
    page = raw.query("select id, lastname from Contacts order by id limit 2,2;")["result"]
    assert [row["id"] for row in page] == ["12x4", "12x5"]


@pytest.mark.parametrize(("statement", "code"), [
    ("select * from Contacts", "QUERY_SYNTAX_ERROR"),           # no ';' (as captured)
    ("select * frm Contacts;", "ACCESS_DENIED"),                # as captured
    ("select nosuchfield from Contacts;", "ACCESS_DENIED"),     # as captured
    ("select * from NoSuchModule;", "ACCESS_DENIED"),
    ("select * from Contacts where (email = 'a@b.c');", "QUERY_SYNTAX_ERROR"),
    ("select * from Contacts limit 10 offset 5;", "QUERY_SYNTAX_ERROR"),
    # seen on the real vTiger 8.0.0 (tests/live): an empty literal, and no IS NULL
    ("select id from Contacts where email = '';", "INTERNAL_SERVER_ERROR"),
    ("select id from Contacts where lastname like '';", "INTERNAL_SERVER_ERROR"),
    ("select id from Contacts where email is null;", "QUERY_SYNTAX_ERROR"),
])
def test_vtql_errors(raw, statement, code):
    answer = raw.query(statement)
    assert answer["success"] is False
    assert answer["error"]["code"] == code


def test_vtql_is_case_insensitive_on_text_like_mysql(raw):
    rows = raw.query("select id, email from Contacts where email = 'CONTACT0-3@EXAMPLE.COM';")
    assert [row["email"] for row in rows["result"]] == ["contact0-3@example.com"]


def test_describe_gives_the_id_prefix(raw):
    answer = raw.get(operation="describe", sessionName=raw.session, elementType="Contacts")
    assert answer.json()["result"]["idPrefix"] == "12"
    bad = raw.get(operation="describe", sessionName=raw.session, elementType="Nope").json()
    assert bad["error"]["code"] == "ACCESS_DENIED"


def test_update_blanks_omitted_fields_revise_does_not(raw):
    emulator = raw.server.emulator
    record = emulator.contact("contact0-1@example.com")
    ws_id = emulator.ws_id(record)
    answer = raw.post(operation="revise", sessionName=raw.session,
                      element=json.dumps({"id": ws_id, "title": "Chief"})).json()
    assert answer["result"]["firstname"] == "First1"
    assert answer["result"]["title"] == "Chief"
    answer = raw.post(operation="update", sessionName=raw.session, element=json.dumps(
        {"id": ws_id, "lastname": "Last1", "assigned_user_id": "19x1"})).json()
    assert answer["success"] is True
    assert answer["result"]["firstname"] == ""
    assert answer["result"]["title"] == ""
    assert answer["result"]["email"] == ""
    missing = raw.post(operation="update", sessionName=raw.session,
                       element=json.dumps({"id": ws_id, "title": "x"})).json()
    assert missing["error"]["code"] == "MANDATORY_FIELDS_MISSING"


def test_sync_is_owner_scoped_and_pages_on_stamps(raw):
    answer = raw.get(operation="sync", sessionName=raw.session, modifiedTime="1",
                     elementType="Contacts").json()["result"]
    # the seed's first 150 contacts share one second: a page holds all of them
    assert len(answer["updated"]) > 100
    assert answer["more"] is True
    owners = {row["assigned_user_id"] for row in answer["updated"]}
    assert owners == {"19x1"}
    seen = {row["id"] for row in answer["updated"]}
    while answer["more"]:
        answer = raw.get(operation="sync", sessionName=raw.session,
                         modifiedTime=str(answer["lastModifiedTime"]),
                         elementType="Contacts").json()["result"]
        seen |= {row["id"] for row in answer["updated"]}
    assert len(seen) == 208  # every contact but those owned by user 19x5
    other = Raw(raw.server.url)
    other.login("sales", SALES_KEY)
    theirs = other.get(operation="sync", sessionName=other.session, modifiedTime="1",
                       elementType="Contacts").json()["result"]
    assert {row["assigned_user_id"] for row in theirs["updated"]} == {"19x5"}
    other.http.close()


def test_sync_lists_deleted_ids(raw):
    emulator = raw.server.emulator
    ws_id = emulator.ws_id(emulator.contact("contact0-0@example.com"))
    start = emulator.now() - 1
    assert raw.post(operation="delete", sessionName=raw.session, id=ws_id).json()["success"]
    answer = raw.get(operation="sync", sessionName=raw.session, modifiedTime=str(start),
                     elementType="Contacts").json()["result"]
    assert answer["deleted"] == [ws_id]
    again = raw.post(operation="delete", sessionName=raw.session, id=ws_id).json()
    assert again["error"]["code"] == "ACCESS_DENIED"


def test_challenge_expires_and_is_replaced(raw):
    emulator = raw.server.emulator
    first = raw.get(operation="getchallenge", username="admin").json()["result"]["token"]
    raw.get(operation="getchallenge", username="admin")  # a concurrent client
    digest = hashlib.md5((first + ADMIN_KEY).encode()).hexdigest()
    answer = raw.post(operation="login", username="admin", accessKey=digest).json()
    # the digest of a replaced token no longer matches: vTiger says bad credentials
    assert answer["error"]["code"] == "INVALID_USER_CREDENTIALS"
    token = raw.get(operation="getchallenge", username="admin").json()["result"]["token"]
    emulator.advance(301)
    digest = hashlib.md5((token + ADMIN_KEY).encode()).hexdigest()
    answer = raw.post(operation="login", username="admin", accessKey=digest).json()
    assert answer["error"]["code"] == "INVALID_AUTH_TOKEN"


def test_sessions_end_idle_expired_or_invalid(raw):
    emulator = raw.server.emulator
    emulator.advance(1801)
    assert raw.query("select id from Contacts;")["error"]["code"] == "SESSION_LEFT_IDLE"
    raw.login()
    for _ in range(57):  # active, never idle, up to 85,500 s
        emulator.advance(1500)
        assert raw.query("select id from Contacts limit 1;")["success"]
    emulator.advance(1000)  # past 86,400 s in total
    assert raw.query("select id from Contacts;")["error"]["code"] == "SESSION_EXPIRED"
    raw.login()
    emulator.expire_sessions()
    assert raw.query("select id from Contacts;")["error"]["code"] == "INVALID_SESSIONID"
    raw.session = ""
    assert raw.query("select id from Contacts;")["error"]["code"] == "AUTHENTICATION_REQUIRED"


def test_query_related_is_broken_retrieve_related_works(raw):
    emulator = raw.server.emulator
    campaign = f"1x{emulator.campaign_id}"
    broken = raw.get(operation="query_related", sessionName=raw.session, id=campaign,
                     relatedLabel="Contacts", query="select id from Contacts;").json()
    assert broken["error"]["code"] == "UNKOWN_ENTITY"
    members = raw.get(operation="retrieve_related", sessionName=raw.session, id=campaign,
                      relatedType="Contacts", relatedLabel="Contacts").json()["result"]
    assert len(members) == 87  # every third of 260


def test_control_update_contact_moves_modifiedtime(raw):
    emulator = raw.server.emulator
    before = emulator.contact("contact0-2@example.com").mtime
    emulator.advance(5)
    changed = emulator.update_contact("contact0-2@example.com", {"emailoptout": "true"})
    assert changed["emailoptout"] == "1"
    assert emulator.contact("contact0-2@example.com").mtime > before
    [state] = [c for c in emulator.state()["contacts"] if c["email"] == "contact0-2@example.com"]
    assert state["opted_out"] is True


def test_demo_profile_maps_lists_1_and_2(raw):
    profile = raw.server.emulator.demo_profile()
    assert profile["fields"] == {"firstname": "name", "lastname": "surname"}
    newsletter, campaign = profile["lists"]
    assert newsletter == {"name": "Newsletter", "esp_list": "1", "members": "all",
                          "opt_out": "emailoptout", "groups": {"field": "cf_901"}}
    assert campaign["esp_list"] == "2"
    assert campaign["members"] == f"campaign:1x{raw.server.emulator.campaign_id}"


def test_cloud_flavour_basic_auth_and_http_errors(raw):
    base = f"{raw.server.url}/restapi/v1/vtiger/default"
    with httpx.Client() as http:
        assert http.get(f"{base}/me").status_code == 401
        good = http.get(f"{base}/me", auth=("admin", ADMIN_KEY)).json()
        assert good["result"]["id"] == "19x1"
        denied = http.get(f"{base}/retrieve", params={"id": "12x999999"},
                          auth=("admin", ADMIN_KEY))
        assert denied.status_code == 403
