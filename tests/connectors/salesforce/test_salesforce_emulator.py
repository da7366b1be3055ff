"""The emulator's own documented shapes, spoken to directly over HTTPS."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from crmsync.emulator import EmulatorServer
from crmsync_salesforce.emulator import SalesforceEmulator
from crmsync_salesforce.emulator._auth import CONSUMER_KEY, USERNAME, private_key_pem
from crmsync_salesforce.emulator._soql import SoqlError, parse

DATA = "/services/data/v59.0"


@pytest.fixture
def http(server: EmulatorServer, emulator: SalesforceEmulator) -> Iterator[httpx.Client]:
    assert server.ca_path is not None
    with httpx.Client(base_url=server.url,
                      verify=ssl.create_default_context(cafile=server.ca_path)) as client:
        yield client


def login(http: httpx.Client, aud: str, *, exp: float | None = None,
          sub: str = USERNAME) -> httpx.Response:
    assertion = jwt.encode({"iss": CONSUMER_KEY, "sub": sub, "aud": aud,
                            "exp": int(exp or time.time() + 180)},
                           private_key_pem(), algorithm="RS256")
    return http.post("/services/oauth2/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})


def token(http: httpx.Client, server: EmulatorServer) -> dict[str, str]:
    response = login(http, server.url)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_parser_accepts_the_subset_and_refuses_the_rest() -> None:
    query = parse("SELECT Id, Email, (SELECT CampaignId FROM CampaignMembers) FROM Contact "
                  "WHERE SystemModstamp >= 2024-01-01T00:00:00+00:00 AND Email IN ('a@b.c', "
                  "'it\\'s@x.io') ORDER BY SystemModstamp, Id LIMIT 5")
    assert query.object == "Contact" and query.limit == 5
    assert query.children == {"CampaignMembers": ("CampaignId",)}
    assert query.where[1].value == ("a@b.c", "it's@x.io")
    for bad in ("SELECT Id FROM Contact WHERE A = 1 OR B = 2", "SELECT FROM Contact",
                "SELECT Id FROM Contact GROUP BY Id", "DELETE Contact"):
        with pytest.raises(SoqlError):
            parse(bad)


def test_jwt_claims_are_checked(http: httpx.Client, server: EmulatorServer) -> None:
    assert login(http, server.url).status_code == 200
    assert login(http, "https://login.salesforce.com").status_code == 200
    for bad in (login(http, "https://evil.example.com"),
                login(http, server.url, exp=time.time() - 60),
                login(http, server.url, exp=time.time() + 3600),
                login(http, server.url, sub="someone@else.com")):
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_query_paging_errors_and_limit_header(http: httpx.Client, server: EmulatorServer,
                                              emulator: SalesforceEmulator) -> None:
    with emulator.lock:
        emulator.seed(2500, 0)
    auth = token(http, server)
    first = http.get(f"{DATA}/query", params={"q": "SELECT Id FROM Contact"}, headers=auth)
    body = first.json()
    assert (body["totalSize"], body["done"], len(body["records"])) == (2500, False, 2000)
    assert body["nextRecordsUrl"].startswith(f"{DATA}/query/01g")
    assert first.headers["Sforce-Limit-Info"].startswith("api-usage=1/")
    emulator.expire_sessions()
    expired = http.get(body["nextRecordsUrl"], headers=auth)
    assert expired.status_code == 401
    assert expired.json() == [{"message": "Session expired or invalid",
                               "errorCode": "INVALID_SESSION_ID"}]
    dead = http.get(body["nextRecordsUrl"], headers=token(http, server))
    assert dead.status_code == 400 and dead.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_malformed_query(http: httpx.Client, server: EmulatorServer) -> None:
    auth = token(http, server)
    answer = http.get(f"{DATA}/query", params={"q": "SELECT Id FROM Contact WHERE Name "
                                               "LIKE 'a%'"}, headers=auth)
    assert answer.status_code == 400 and answer.json()[0]["errorCode"] == "MALFORMED_QUERY"
    unknown = http.get(f"{DATA}/query", params={"q": "SELECT Nope FROM Contact"}, headers=auth)
    assert unknown.json()[0]["errorCode"] == "INVALID_FIELD"


def test_crud_status_codes(http: httpx.Client, server: EmulatorServer) -> None:
    auth = token(http, server)
    created = http.post(f"{DATA}/sobjects/Contact/", json={"LastName": "X", "Email": "x@y.io"},
                        headers=auth)
    assert created.status_code == 201 and created.json()["success"] is True
    record_id = created.json()["id"]
    patched = http.patch(f"{DATA}/sobjects/Contact/{record_id}", json={"FirstName": "Y"},
                         headers=auth)
    assert patched.status_code == 204 and patched.content == b""
    missing = http.post(f"{DATA}/sobjects/Contact/", json={"Email": "z@y.io"}, headers=auth)
    assert missing.status_code == 400
    assert missing.json()[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert http.delete(f"{DATA}/sobjects/Contact/{record_id}", headers=auth).status_code == 204


def test_collections_all_or_none_rolls_back(http: httpx.Client, server: EmulatorServer,
                                            emulator: SalesforceEmulator) -> None:
    with emulator.lock:
        emulator.seed(1, 0)
    [entry] = emulator.state()["contacts"]
    answer = http.patch(f"{DATA}/composite/sobjects", headers=token(http, server), json={
        "allOrNone": True, "records": [
            {"attributes": {"type": "Contact"}, "id": entry["ids"]["salesforce"],
             "FirstName": "Kept"},
            {"attributes": {"type": "Contact"}, "id": "001xx000003DGb2AAG", "FirstName": "x"}]})
    assert answer.status_code == 200
    first, second = answer.json()
    assert first["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert second["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert emulator.state()["contacts"][0]["fields"]["FirstName"] == "First0"


def test_bulk_results_before_completion_and_with_another_version(
        http: httpx.Client, server: EmulatorServer) -> None:
    auth = token(http, server)
    job = http.post(f"{DATA}/jobs/query", headers=auth, json={
        "operation": "query", "query": "SELECT Id FROM Contact"}).json()
    early = http.get(f"{DATA}/jobs/query/{job['id']}/results", headers=auth)
    assert early.status_code == 412 and early.json()[0]["errorCode"] == "JOB_NOT_COMPLETE"
    states = [http.get(f"{DATA}/jobs/query/{job['id']}", headers=auth).json()["state"]
              for _ in range(2)]
    assert states == ["InProgress", "JobComplete"]
    other = http.get(f"/services/data/v58.0/jobs/query/{job['id']}/results", headers=auth)
    assert other.status_code == 409
    done = http.get(f"{DATA}/jobs/query/{job['id']}/results", headers=auth)
    assert done.headers["Sforce-Locator"] == "null"
    assert done.headers["Sforce-NumberOfRecords"] == "0"
    assert done.text == '"Id"\n'


def test_get_updated_and_get_deleted_windows(http: httpx.Client, server: EmulatorServer,
                                             emulator: SalesforceEmulator) -> None:
    with emulator.lock:
        emulator.seed(3, 0)
    auth = token(http, server)
    gone = emulator.state()["contacts"][0]["ids"]["salesforce"]
    emulator.delete_record(gone)
    window = {"start": "2020-01-01T00:00:00+00:00", "end": "2099-01-01T00:00:00+00:00"}
    updated = http.get(f"{DATA}/sobjects/Contact/updated/", params=window, headers=auth).json()
    assert len(updated["ids"]) == 2 and gone not in updated["ids"]
    deleted = http.get(f"{DATA}/sobjects/Contact/deleted/", params=window, headers=auth).json()
    assert [d["id"] for d in deleted["deletedRecords"]] == [gone]
    assert {"earliestDateAvailable", "latestDateCovered"} <= set(deleted)
    short = http.get(f"{DATA}/sobjects/Contact/deleted/", headers=auth, params={
        "start": "2024-01-01T00:00:00+00:00", "end": "2024-01-01T00:00:30+00:00"})
    assert short.status_code == 400
    assert short.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
