"""The emulator speaks MailUp's documented shapes and quirks (raw HTTP, no connector)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mailup_testbed import PREFIX, contact

from crmsync_mailup.emulator import MailUpEmulator


@pytest.fixture
def api(emulator):
    profile = emulator.demo_profile()
    form = {"grant_type": "password", "client_id": "crmsync-demo",
            "client_secret": profile["secrets"]["CRMSYNC_MAILUP_CLIENT_SECRET"],
            "username": "m12345", "password": profile["secrets"]["CRMSYNC_MAILUP_PASSWORD"]}
    token = httpx.post(profile["settings"]["auth_url"], data=form).json()
    with httpx.Client(base_url=emulator.base_url + PREFIX, timeout=10,
                      headers={"Authorization": f"Bearer {token['access_token']}"}) as client:
        client.token = token  # type: ignore[attr-defined]
        client.form = form  # type: ignore[attr-defined]
        client.auth_url = profile["settings"]["auth_url"]  # type: ignore[attr-defined]
        yield client


def test_token_response_and_rotation(api):
    assert set(api.token) == {"access_token", "expires_in", "refresh_token"}
    assert api.token["expires_in"] == 3600
    refresh = {**api.form, "grant_type": "refresh_token",
               "refresh_token": api.token["refresh_token"]}
    del refresh["username"], refresh["password"]
    renewed = httpx.post(api.auth_url, data=refresh)
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != api.token["refresh_token"]
    again = httpx.post(api.auth_url, data=refresh)
    assert again.status_code == 400, "the old refresh token must be spent"
    bad = httpx.post(api.auth_url, data={**api.form, "password": "nope"})
    assert bad.status_code == 400


def test_token_ttl_expiry(emulator, api, control):
    control.post("/config", json={"token_ttl": 0.2})
    short = httpx.post(api.auth_url, data=api.form).json()
    headers = {"Authorization": f"Bearer {short['access_token']}"}
    assert api.get("/List", headers=headers).status_code == 200
    time.sleep(0.25)
    expired = api.get("/List", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == {"ErrorCode": "401", "ErrorDescription":
                              "Authorization error: Access token is expired",
                              "ErrorName": "Unauthorized", "ErrorStack": None}


def test_mailup_token_type_is_rejected(api):
    token = api.token["access_token"]
    response = api.get("/List", headers={"Authorization": f"MailUp {token}"})
    assert response.status_code == 401 and "Bearer" in response.json()["ErrorDescription"]


def test_list_forms_differ_in_casing(api):
    newer = api.get("/List").json()["Items"][0]
    older = api.get("/User/Lists").json()["Items"][0]
    assert set(newer) == {"Company", "Description", "IdList", "ListGuid", "Name"}
    assert set(older) == {"Company", "Description", "Name", "idList", "listGuid"}


def test_paging_envelope_zero_based_default_20_either_case(api, control):
    control.post("/seed", json={"contacts": 45})
    default = api.get("/List/1/Recipients/EmailOptins").json()
    assert default["PageSize"] == 20 and default["PageNumber"] == 0
    assert len(default["Items"]) == 20 and default["TotalElementsCount"] == 45
    lower = api.get("/List/1/Recipients/EmailOptins",
                    params={"pageSize": 10, "pageNumber": 4}).json()
    upper = api.get("/List/1/Recipients/EmailOptins",
                    params={"PageSize": 10, "PageNumber": 4}).json()
    assert lower == upper
    assert len(lower["Items"]) == 5 and lower["Skipped"] == 40 and lower["IsPaginated"]


def test_bare_integers_and_empty_deletes(api, emulator):
    rid = api.post("/List/1/Recipient", json={"Email": "bare@example.com", "Name": "",
                                              "Fields": []})
    assert rid.text.strip().isdigit()
    imp = api.post("/List/1/Recipients", json=[{"Email": "i@example.com", "Fields": []}])
    assert imp.text.strip().isdigit()
    status = api.get(f"/Import/{imp.json()}").json()
    assert status["Completed"] is False and status["CreatedRecipients"] == 1
    assert api.get(f"/Import/{imp.json()}").json()["Completed"] is True
    gone = api.delete(f"/List/1/Unsubscribe/{rid.json()}")
    assert gone.status_code == 200 and gone.content == b""


def test_filters_are_case_sensitive(api):
    api.post("/List/1/Recipient", json={"Email": "Case@Example.com", "Fields": []})
    hit = api.get("/List/1/Recipients/Subscribed",
                  params={"filterby": "Email.Contains('case@')"}).json()
    miss = api.get("/List/1/Recipients/Subscribed",
                   params={"filterby": "Email.Contains('CASE@')"}).json()
    assert hit["TotalElementsCount"] == 1 and miss["TotalElementsCount"] == 0
    bad = api.get("/List/1/Recipients/Subscribed", params={"filterby": "Email >> 1"})
    assert bad.status_code == 400 and bad.json()["ErrorCode"] == "400"


def test_upsert_rules_and_unsubscribe_keeps_groups(api, emulator):
    rid = api.post("/Group/1/Recipient", json={"Email": "g@example.com", "Fields": [
        {"Id": 1, "Value": "G"}]}).json()
    assert contact(emulator, "g@example.com")["lists"]["1"] == {
        "status": "subscribed", "groups": ["news"]}  # adding to a group subscribes the list
    api.delete(f"/List/1/Unsubscribe/{rid}")
    api.post("/List/1/Recipient", json={"Email": "g@example.com", "Fields": [
        {"Id": 1, "Value": "G2"}]})
    state = contact(emulator, "g@example.com")
    assert state["lists"]["1"] == {"status": "unsubscribed", "groups": ["news"]}
    assert state["fields"]["name"] == "G2"
    api.post("/List/1/Recipients", json=[{"Email": "g@example.com", "Fields": []}])
    assert contact(emulator, "g@example.com")["lists"]["1"]["status"] == "unsubscribed"
    api.delete(f"/Group/1/Unsubscribe/{rid}")  # removal: status unchanged
    assert contact(emulator, "g@example.com")["lists"]["1"] == {
        "status": "unsubscribed", "groups": []}
    api.post(f"/List/1/Subscribe/{rid}")
    assert contact(emulator, "g@example.com")["lists"]["1"]["status"] == "subscribed"


def test_not_found_is_the_error_envelope(api):
    response = api.delete("/List/1/Unsubscribe/424242")
    assert response.status_code == 404
    assert response.json()["ErrorCode"] == "404" and response.json()["ErrorStack"] is None


def test_rate_limit_body(api, control):
    control.post("/config", json={"rate_limit": 5})
    answers = [api.get("/List") for _ in range(8)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, "more than 5 calls in a second must be refused"
    body = limited[0].json()
    assert body["ErrorCode"] == "429" and body["ErrorName"] is None
    assert body["ErrorDescription"].startswith(
        "Authorization error (too_many_requests): Too many requests. Max:5 calls per second")


def test_injected_faults_use_the_envelope(api, control):
    control.post("/faults", json={"error_count": 1, "error_status": 503})
    response = api.get("/List")
    assert response.status_code == 503 and response.json()["ErrorCode"] == "503"


def test_state_is_vendor_neutral(emulator, control):
    control.post("/seed", json={"contacts": 3, "seed": 1})
    [first, *_] = control.get("/state").json()["contacts"]
    assert set(first) == {"email", "ids", "fields", "lists", "deleted"}
    assert first["ids"] == {"mailup": "1"} and first["fields"]["name"] == "First0"


def test_options_given_as_strings():
    emulator = MailUpEmulator(token_ttl="60", rate_limit="0", import_polls="2",
                              webhook_retry_delays="0.1,0.2")
    assert (emulator.token_ttl, emulator.rate_limit, emulator.import_polls,
            emulator.dispatcher.retry_delays) == (60.0, None, 2, [0.1, 0.2])


def test_crmsync_emulate_serves_it():
    """`crmsync emulate mailup` starts; the person trying it with curl gets a token."""
    crmsync = str(Path(sys.executable).with_name("crmsync"))
    proc = subprocess.Popen([crmsync, "--json", "emulate", "mailup",
                             "--contacts", "5", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        token = httpx.post(info["url"] + "/Authorization/OAuth/Token", data={
            "grant_type": "password", "client_id": "crmsync-demo", "client_secret": "demo-secret",
            "username": "m12345", "password": "demo-password"})
        assert token.status_code == 200 and token.json()["access_token"]
        state = httpx.get(info["control"] + "state").json()
        assert len(state["contacts"]) == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_xml_subscribe_return_codes(emulator):
    url = emulator.base_url + "/frontend/xmlSubscribe.aspx"

    def code(**params: str) -> str:
        return httpx.get(url, params={"retCode": "1", **params}).text

    assert code(Email="x@example.com", List="1,2", Confirm="0") == "0"
    assert code(Email="x@example.com", List="1,2", Confirm="0") == "3"
    assert code(Email="not-an-address", List="1") == "2"
    assert code(Email="y@example.com", List="99") == "1"
    assert code(Email="y@example.com", List="1", csvFldNames="campo1",
                csvFldValues="a--b") == "1"
    assert code(Email="y@example.com", List="1", Group="3") == "0"  # group 3 is list 2's
    assert contact(emulator, "y@example.com")["lists"]["1"] == {"status": "pending",
                                                                "groups": []}
    assert httpx.get(url, params={"Email": "z@example.com", "List": "1"}).text == ""
