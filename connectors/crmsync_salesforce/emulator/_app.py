"""The Salesforce emulator: REST, sObject Collections, Bulk API 2.0, OAuth, Outbound Messages.

Reproduces the shapes and quirks of the reference (``salesforce-api.md`` §8): HTTPS
only, 2,000-record query batches with a relative ``nextRecordsUrl``, query locators
tied to the session that opened them, errors as a JSON list with ``errorCode`` (per
record: ``statusCode``), ``Sforce-Limit-Info`` on every REST answer and a 403
``REQUEST_LIMIT_EXCEEDED`` once the daily budget is spent, Bulk 2.0 jobs that move
through their states one poll at a time, and Outbound Message delivery.

Vendor control routes, besides the harness's ``/_emulator/...``::

    POST /_emulator/salesforce/outbound  {"url", "fields"?, "object"?}  deliver on change
    GET  /_emulator/salesforce/outbound                      what was delivered and acked
    POST /_emulator/salesforce/limits    {"daily_limit"?, "used"?}
    POST /_emulator/salesforce/reject    {"emails": [...]}    a validation rule on Email
    POST /_emulator/salesforce/bulk_failure {"message"}       the next Bulk job ends Failed
    POST /_emulator/salesforce/convert   {"lead_id"}          convert a Lead to a Contact
    POST /_emulator/salesforce/merge     {"master_id", "loser_ids"}  merge duplicates
    POST /_emulator/salesforce/busy      {"calls"}  the next calls meet a full org
                                         (403 ConcurrentPerOrgLongTxn Limit exceeded)
    POST /_emulator/salesforce/purge                          empty the recycle bin
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from xml.sax.saxutils import escape

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator

from ._auth import CONSUMER_KEY, ORG_ID, USER_ID, USERNAME, LoginServer, private_key_pem
from ._soql import Query, SoqlError, parse, parse_datetime
from ._store import SCHEMA, Org, RecordError, format_datetime

__all__ = ["EVENTS_STATUSES", "SalesforceEmulator"]

EVENTS_STATUSES = ("Sent", "Responded", "Opted Out")
_INTERESTS = ("news", "events", "offers", "tech")
_BATCH = 2000
_DATA = "/services/data/{version}"
Handler = Callable[[Request, bytes, str], Response]


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.response = _error(status, code, message, fields)


def _error(status: int, code: str, message: str, fields: list[str] | None = None) -> Response:
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return JSONResponse([item], status_code=status)


def _json_value(value: Any) -> Any:
    return format_datetime(value) if isinstance(value, datetime) else value


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{value.microsecond // 1000:03d}Z"
    return str(value)


def _sort(rows: list[dict[str, Any]], order: tuple[tuple[str, bool], ...]) -> None:
    for name, descending in reversed(order):
        # NULLS FIRST when ascending, as SOQL does by default.
        def key(row: dict[str, Any], name: str = name) -> tuple[bool, Any]:
            value = row.get(name)
            return (value is not None, value if value is not None else "")

        rows.sort(key=key, reverse=descending)


class SalesforceEmulator(Emulator):
    """An org with Contacts, Leads, one Campaign ("Events") and its members."""

    name: ClassVar[str] = "salesforce"
    tls: ClassVar[bool] = True  # simple-salesforce and real orgs only speak HTTPS
    api_version: ClassVar[str] = "59.0"

    def __init__(self, *, contacts: int = 0, seed: int = 0, daily_limit: int | str = 1_000_000,
                 bulk_polls: int | str = 1, id_limit: int | str = 600_000,
                 bulk_order_by_limit: int | str = 100_000, jwt_audiences: str = "any") -> None:
        self.daily_limit = int(daily_limit)
        self.id_limit = int(id_limit)  # Get Updated / Get Deleted: EXCEEDED_ID_LIMIT above
        # A Bulk 2.0 query with ORDER BY runs without PK chunking: over this many rows it
        # times out (the job ends Failed).
        self.bulk_order_by_limit = int(bulk_order_by_limit)
        self.bulk_polls = int(bulk_polls)
        self.login = LoginServer()
        self.login.jwt_audiences = jwt_audiences
        self.outbound_url: str | None = None
        self.outbound_fields: tuple[str, ...] = ("Email", "FirstName", "LastName",
                                                 "HasOptedOutOfEmail", "SystemModstamp")
        self.outbound_object = "Contact"
        self.outbound_log: list[dict[str, Any]] = []
        self._outbound_threads: list[threading.Thread] = []
        super().__init__(contacts=contacts, seed=seed)

    # -- the harness's hooks -------------------------------------------------------------
    def reset(self) -> None:
        self.org = Org()
        self.used = 0
        self.locators: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.next_bulk_failure: str | None = None
        self.busy_calls = 0  # calls refused because the org's long-request slots are full
        self._ids = itertools.count(1)
        self.events_campaign = self.org.insert("Campaign", {"Name": "Events", "IsActive": True})
        self.org.campaign_statuses[self.events_campaign] = EVENTS_STATUSES
        self.org.changed.clear()

    def seed(self, contacts: int, seed: int) -> None:
        rng = random.Random(seed)
        start = self.org.tick()
        for number in range(contacts):
            # A few records share each millisecond, so the Id tie-break matters.
            stamp = start + timedelta(milliseconds=number // 3)
            interests = ";".join(sorted(rng.sample(_INTERESTS, rng.randint(0, 2))))
            contact = self.org.insert("Contact", {
                "FirstName": f"First{number}", "LastName": f"Last{number}",
                "Email": f"contact{seed}-{number}@example.com",
                "HasOptedOutOfEmail": rng.random() < 0.1, "Interests__c": interests or None,
            }, stamp=stamp)
            if number % 3 == 0:
                self.org.insert("CampaignMember", {
                    "CampaignId": self.events_campaign, "ContactId": contact,
                    "Status": EVENTS_STATUSES[(number // 3) % 3]}, stamp=stamp)
        self.org.tick()
        self.org.changed.clear()

    def state(self) -> dict[str, Any]:
        people = []
        for obj in ("Contact", "Lead"):
            for record in self.org.records[obj].values():
                if record.get("IsConverted") or not record.get("Email"):
                    continue
                lists = {
                    f"campaign:{m['CampaignId']}": {"status": m["Status"], "groups": []}
                    for m in self.org.members_of(record["Id"]) if not m["IsDeleted"]
                    and m[("ContactId" if obj == "Contact" else "LeadId")] == record["Id"]}
                people.append({
                    "email": str(record["Email"]).lower(), "ids": {"salesforce": record["Id"]},
                    "fields": {name: _csv_value(record.get(name)) or None for name in (
                        "FirstName", "LastName", "HasOptedOutOfEmail", "Interests__c")},
                    "lists": lists, "opted_out": bool(record["HasOptedOutOfEmail"]),
                    "deleted": bool(record["IsDeleted"]),
                })
        return {"contacts": people}

    def expire_sessions(self) -> None:
        self.login.expire()

    def update_contact(self, email: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # re-entrant: the control route already holds it
            return self._update_contact(email, fields)

    def _update_contact(self, email: str, fields: dict[str, Any]) -> dict[str, Any]:
        record_id = self._find_person(email)
        obj = self.org.object_of(record_id) or "Contact"
        values, errors = self.org.coerce(obj, fields)
        errors += self.org.check_write(obj, values, record_id)
        if errors:
            raise KeyError("; ".join(e.message for e in errors))
        self.org.update(record_id, values, stamp=self.org.tick())
        self._flush_outbound()
        record = self.org.records[obj][record_id]
        return {"id": record_id, "SystemModstamp": format_datetime(record["SystemModstamp"])}

    def demo_profile(self) -> dict[str, Any]:
        return {
            "settings": {"instance_url": self.base_url, "login_url": self.base_url,
                         "auth": "jwt", "username": USERNAME, "client_id": CONSUMER_KEY,
                         "ca_file": self.ca_path, "organization_id": ORG_ID},
            "secrets": {"CRMSYNC_SALESFORCE_PRIVATE_KEY": private_key_pem()},
            "fields": {"FirstName": "name", "LastName": "surname"},
            "lists": [
                {"name": "Newsletter", "esp_list": "1", "members": "all",
                 "opt_out": "HasOptedOutOfEmail", "groups": {"field": "Interests__c"}},
                {"name": "Events", "esp_list": "2", "members": f"campaign:{self.events_campaign}",
                 "status": {"Responded": "subscribed", "Sent": "pending",
                            "Opted Out": "unsubscribed"}},
            ],
        }

    def fault_response(self, status: int) -> Response:
        code = {500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE",
                403: "REQUEST_LIMIT_EXCEEDED"}.get(status, "UNKNOWN_EXCEPTION")
        return _error(status, code, f"injected fault ({status})")

    # -- test and demo conveniences ----------------------------------------------------
    def _find_person(self, email: str) -> str:
        wanted = email.strip().lower()
        for obj in ("Contact", "Lead"):
            for record in self.org.records[obj].values():
                if str(record.get("Email") or "").lower() == wanted and not record["IsDeleted"] \
                        and not record.get("IsConverted"):
                    return str(record["Id"])
        raise KeyError(email)

    def add_lead(self, email: str, **fields: Any) -> str:
        """A Lead as a user (or web-to-lead) would create it."""
        with self.lock:
            values = {"LastName": "Lead", "Company": "[not provided]", "Email": email, **fields}
            record_id = self.org.insert("Lead", values, stamp=self.org.tick())
            self.org.changed.clear()
            return record_id

    def add_member(self, person_id: str, status: str, campaign_id: str | None = None) -> str:
        with self.lock:
            key = "LeadId" if person_id.startswith("00Q") else "ContactId"
            record_id = self.org.insert("CampaignMember", {
                "CampaignId": campaign_id or self.events_campaign, key: person_id,
                "Status": status}, stamp=self.org.tick())
            self.org.changed.clear()
            return record_id

    def set_member_status(self, member_id: str, status: str) -> None:
        with self.lock:
            self.org.update(member_id, {"Status": status}, stamp=self.org.tick())
            self.org.changed.clear()

    def delete_record(self, record_id: str) -> None:
        with self.lock:
            self.org.delete(record_id)
            self.org.changed.clear()

    def convert_lead(self, lead_id: str) -> str:
        """Convert a Lead: a new Contact, the Lead read-only, its memberships kept."""
        with self.lock:
            lead = self.org.records["Lead"][lead_id]
            stamp = self.org.tick()
            self.org.update(lead_id, {"IsConverted": True}, stamp=stamp)
            contact_id = self.org.insert("Contact", {
                name: lead.get(name) for name in (
                    "FirstName", "LastName", "Email", "HasOptedOutOfEmail", "Interests__c")},
                stamp=self.org.tick())
            lead["ConvertedContactId"] = contact_id
            for member in self.org.members_of(lead_id):
                member["ContactId"] = contact_id
                self.org.update(member["Id"], {}, stamp=self.org.records["Contact"][contact_id]
                                ["SystemModstamp"])
                self.org._index("CampaignMember", member, True)
            self.org.changed.clear()
            return contact_id

    def merge(self, master_id: str, loser_ids: list[str]) -> None:
        """Merge duplicate Contacts (or Leads) into ``master_id``, as the UI's Merge does."""
        with self.lock:
            self.org.merge(master_id, loser_ids)
            self.org.changed.clear()

    # -- routes ------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        api = self._api
        data = _DATA
        routes: list[tuple[str, Handler, list[str]]] = [
            (f"{data}/query", lambda r, b, t: self._query(r, t, all_rows=False), ["GET"]),
            (f"{data}/queryAll", lambda r, b, t: self._query(r, t, all_rows=True), ["GET"]),
            (f"{data}/query/{{locator}}", self._query_more, ["GET"]),
            (f"{data}/queryAll/{{locator}}", self._query_more, ["GET"]),
            (f"{data}/limits", self._limits, ["GET"]),
            (f"{data}/sobjects/{{object}}/describe", self._describe, ["GET"]),
            (f"{data}/sobjects/{{object}}/deleted", self._get_deleted, ["GET"]),
            (f"{data}/sobjects/{{object}}/updated", self._get_updated, ["GET"]),
            (f"{data}/sobjects/{{object}}", self._create, ["POST"]),
            (f"{data}/sobjects/{{object}}/{{id}}", self._record, ["GET", "PATCH", "DELETE"]),
            (f"{data}/composite/sobjects", self._collections, ["POST", "PATCH", "DELETE"]),
            (f"{data}/jobs/ingest", self._ingest_create, ["POST"]),
            (f"{data}/jobs/ingest/{{job}}", self._job, ["GET", "PATCH", "DELETE"]),
            (f"{data}/jobs/ingest/{{job}}/batches", self._ingest_upload, ["PUT"]),
            (f"{data}/jobs/ingest/{{job}}/successfulResults", self._ingest_results, ["GET"]),
            (f"{data}/jobs/ingest/{{job}}/failedResults", self._ingest_results, ["GET"]),
            (f"{data}/jobs/ingest/{{job}}/unprocessedrecords", self._ingest_results, ["GET"]),
            (f"{data}/jobs/query", self._query_job_create, ["POST"]),
            (f"{data}/jobs/query/{{job}}", self._job, ["GET", "PATCH", "DELETE"]),
            (f"{data}/jobs/query/{{job}}/results", self._query_job_results, ["GET"]),
            ("/services/oauth2/userinfo", self._userinfo, ["GET"]),
        ]
        out: list[BaseRoute] = [
            Route("/services/oauth2/token", self._token, methods=["POST"]),
            Route("/services/Soap/u/{version}", self._soap_login, methods=["POST"]),
        ]
        for path, handler, methods in routes:
            # Clients spell these with and without the trailing slash; both work.
            out.append(Route(path, api(handler), methods=methods))
            out.append(Route(path + "/", api(handler), methods=methods))
        return out

    def control_routes(self) -> list[BaseRoute]:
        prefix = "/_emulator/salesforce"
        return [
            Route(f"{prefix}/outbound", self._control_outbound, methods=["GET", "POST"]),
            Route(f"{prefix}/limits", self._control_limits, methods=["POST"]),
            Route(f"{prefix}/reject", self._control_reject, methods=["POST"]),
            Route(f"{prefix}/bulk_failure", self._control_bulk_failure, methods=["POST"]),
            Route(f"{prefix}/convert", self._control_convert, methods=["POST"]),
            Route(f"{prefix}/merge", self._control_merge, methods=["POST"]),
            Route(f"{prefix}/busy", self._control_busy, methods=["POST"]),
            Route(f"{prefix}/purge", self._control_purge, methods=["POST"]),
        ]

    def _api(self, handler: Handler) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                return self._call(request, body, handler)
        return endpoint

    def _call(self, request: Request, body: bytes, handler: Handler) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if token not in self.login.tokens:
            return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        version = request.path_params.get("version", "v" + self.api_version)
        if "version" in request.path_params and not str(version).startswith("v"):
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if self.used >= self.daily_limit:
            response = _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        elif self.busy_calls > 0:
            # Other clients hold the org's long-running request slots (25 long requests
            # at once): the same code as the daily limit, with another message. Not
            # counted against the daily budget.
            self.busy_calls -= 1
            response = _error(403, "REQUEST_LIMIT_EXCEEDED",
                              "ConcurrentPerOrgLongTxn Limit exceeded")
        else:
            self.used += 1
            try:
                response = handler(request, body, token)
            except _ApiError as exc:
                response = exc.response
            self._flush_outbound()
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.used}/{self.daily_limit}"
        return response

    # -- OAuth and SOAP login (not counted against the API budget) ---------------------
    async def _token(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            status, answer = self.login.token(body, request.headers.get("authorization", ""),
                                              self.base_url)
        return JSONResponse(answer, status_code=status)

    async def _soap_login(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            status, xml = self.login.soap_login(body, request.path_params["version"],
                                                self.base_url)
        return Response(xml, status_code=status, media_type="text/xml")

    def _userinfo(self, request: Request, body: bytes, token: str) -> Response:
        return JSONResponse({"organization_id": ORG_ID, "preferred_username": USERNAME,
                             "user_id": USER_ID})

    def _limits(self, request: Request, body: bytes, token: str) -> Response:
        return JSONResponse({"DailyApiRequests": {"Max": self.daily_limit,
                                                  "Remaining": self.daily_limit - self.used}})

    # -- query -------------------------------------------------------------------------
    def _parse(self, text: str | None, *, bulk: bool = False) -> Query:
        if not text:
            raise _ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            query = parse(text)
        except SoqlError as exc:
            raise _ApiError(400, "MALFORMED_QUERY", f"unexpected token: {exc}") from None
        spec = SCHEMA.get(query.object)
        if spec is None:
            raise _ApiError(400, "INVALID_TYPE", f"sObject type '{query.object}' is not supported.")
        for name in (*query.fields, *(c.field for c in query.where), *(o[0] for o in query.order)):
            if name not in spec["fields"]:
                raise _ApiError(400, "INVALID_FIELD",
                                f"No such column '{name}' on entity '{query.object}'.")
        for relation, fields in query.children.items():
            if bulk:
                raise _ApiError(400, "MALFORMED_QUERY",
                                "Nested queries are not supported in Bulk API 2.0")
            if relation not in spec["children"]:
                raise _ApiError(400, "INVALID_TYPE", f"Didn't understand relationship "
                                f"'{relation}' in FROM part of query call.")
            for name in fields:
                if name not in SCHEMA["CampaignMember"]["fields"]:
                    raise _ApiError(400, "INVALID_FIELD",
                                    f"No such column '{name}' on entity 'CampaignMember'.")
        return query

    def _run(self, query: Query, *, include_deleted: bool) -> list[dict[str, Any]]:
        rows = list(self.org.candidates(query, include_deleted=include_deleted))
        _sort(rows, query.order)
        return rows[:query.limit] if query.limit is not None else rows

    def _render(self, version: str, query: Query, record: dict[str, Any]) -> dict[str, Any]:
        obj = query.object
        out: dict[str, Any] = {"attributes": {
            "type": obj, "url": f"/services/data/{version}/sobjects/{obj}/{record['Id']}"}}
        for name in query.fields:
            out[name] = _json_value(record.get(name))
        for relation, fields in query.children.items():
            key = SCHEMA[obj]["children"][relation]
            kids = [m for m in self.org.members_of(record["Id"])
                    if not m["IsDeleted"] and m[key] == record["Id"]]
            out[relation] = None if not kids else {
                "totalSize": len(kids), "done": True, "records": [
                    {"attributes": {"type": "CampaignMember", "url":
                                    f"/services/data/{version}/sobjects/CampaignMember/{m['Id']}"},
                     **{n: _json_value(m.get(n)) for n in fields}} for m in kids]}
        return out

    def _query(self, request: Request, token: str, *, all_rows: bool) -> Response:
        query = self._parse(request.query_params.get("q"))
        rows = self._run(query, include_deleted=all_rows)
        if query.count:
            return JSONResponse({"totalSize": len(rows), "done": True, "records": []})
        batch = _BATCH
        options = request.headers.get("sforce-query-options", "")
        if "batchSize=" in options:
            batch = max(200, min(_BATCH, int(options.split("batchSize=")[1].split(",")[0])))
        locator = f"01g{next(self._ids):015d}"
        self.locators[locator] = {"token": token, "query": query, "rows": rows, "batch": batch}
        if len(self.locators) > 50:  # open cursors are limited; the oldest go first
            self.locators.pop(next(iter(self.locators)))
        return self._page(request.path_params["version"], locator, 0)

    def _page(self, version: str, locator: str, offset: int) -> Response:
        state = self.locators[locator]
        rows, batch = state["rows"], state["batch"]
        chunk = rows[offset:offset + batch]
        body: dict[str, Any] = {"totalSize": len(rows), "done": offset + batch >= len(rows),
                                "records": [self._render(version, state["query"], r)
                                            for r in chunk]}
        if body["done"]:
            self.locators.pop(locator, None)
        else:
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{offset + batch}"
        return JSONResponse(body)

    def _query_more(self, request: Request, body: bytes, token: str) -> Response:
        locator, _, offset = request.path_params["locator"].rpartition("-")
        state = self.locators.get(locator)
        if state is None or state["token"] != token or not offset.isdigit():
            raise _ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(request.path_params["version"], locator, int(offset))

    # -- sObjects ----------------------------------------------------------------------
    def _object(self, request: Request) -> str:
        obj = request.path_params["object"]
        if obj not in SCHEMA:
            raise _ApiError(404, "NOT_FOUND", f"The requested resource does not exist: {obj}")
        return str(obj)

    def _describe(self, request: Request, body: bytes, token: str) -> Response:
        obj = self._object(request)
        spec = SCHEMA[obj]
        return JSONResponse({"name": obj, "fields": [
            {"name": n, "type": t, "updateable": n not in spec["readonly"]}
            for n, t in spec["fields"].items()]})

    def _window(self, request: Request) -> tuple[datetime, datetime]:
        try:
            start = parse_datetime(request.query_params["start"])
            end = parse_datetime(request.query_params["end"])
        except (KeyError, ValueError):
            raise _ApiError(400, "INVALID_REPLICATION_DATE", "start and end must be "
                            "ISO-8601 dates with a time zone") from None
        if end - start < timedelta(minutes=1):
            raise _ApiError(400, "INVALID_REPLICATION_DATE", "end must be more than one "
                            "minute after start")
        return start, end

    def _get_deleted(self, request: Request, body: bytes, token: str) -> Response:
        obj = self._object(request)
        start, end = self._window(request)
        deleted = [{"id": r["Id"], "deletedDate": format_datetime(r["SystemModstamp"])}
                   for r in self.org.records[obj].values()
                   if r["IsDeleted"] and start <= r["SystemModstamp"] < end]
        if len(deleted) > self.id_limit:
            raise _ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        return JSONResponse({"deletedRecords": deleted,
                             "earliestDateAvailable": format_datetime(self.org.recycle_bin_start),
                             "latestDateCovered": format_datetime(min(end, self.org.now()))})

    def _get_updated(self, request: Request, body: bytes, token: str) -> Response:
        obj = self._object(request)
        start, end = self._window(request)
        ids = [r["Id"] for r in self.org.records[obj].values()
               if not r["IsDeleted"] and start <= r["SystemModstamp"] < end]
        if len(ids) > self.id_limit:
            raise _ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        return JSONResponse({"ids": ids,
                             "latestDateCovered": format_datetime(min(end, self.org.now()))})

    def _write_one(self, obj: str, values: dict[str, Any], record_id: str | None, *,
                   from_csv: bool = False) -> tuple[str | None, list[RecordError]]:
        typed, errors = self.org.coerce(obj, values, from_csv=from_csv)
        errors += self.org.check_write(obj, typed, record_id)
        if errors:
            return None, errors
        if record_id is None:
            return self.org.insert(obj, typed), []
        self.org.update(record_id, typed)
        return record_id, []

    def _create(self, request: Request, body: bytes, token: str) -> Response:
        obj = self._object(request)
        values = self._json(body)
        if not isinstance(values, dict):
            raise _ApiError(400, "JSON_PARSER_ERROR", "expected a JSON object")
        record_id, errors = self._write_one(obj, values, None)
        if errors:
            return JSONResponse([{"message": e.message, "errorCode": e.status_code,
                                  "fields": e.fields} for e in errors], status_code=400)
        return JSONResponse({"id": record_id, "success": True, "errors": []}, status_code=201)

    def _record(self, request: Request, body: bytes, token: str) -> Response:
        obj = self._object(request)
        record_id = request.path_params["id"]
        record = self.org.records[obj].get(record_id)
        if record is None or record["IsDeleted"]:
            raise _ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if request.method == "GET":
            version = request.path_params["version"]
            query = Query(object=obj, fields=tuple(SCHEMA[obj]["fields"]))
            return JSONResponse(self._render(version, query, record))
        if request.method == "DELETE":
            self.org.delete(record_id)
            return Response(status_code=204)
        values = self._json(body)
        if not isinstance(values, dict):
            raise _ApiError(400, "JSON_PARSER_ERROR", "expected a JSON object")
        _, errors = self._write_one(obj, values, record_id)
        if errors:
            return JSONResponse([{"message": e.message, "errorCode": e.status_code,
                                  "fields": e.fields} for e in errors], status_code=400)
        return Response(status_code=204)

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise _ApiError(400, "JSON_PARSER_ERROR", "Unexpected character in the body") \
                from None

    def _collections(self, request: Request, body: bytes, token: str) -> Response:
        if request.method == "DELETE":
            ids = [i for i in request.query_params.get("ids", "").split(",") if i]
            all_or_none = request.query_params.get("allOrNone", "false") == "true"
            items: list[tuple[str | None, dict[str, Any] | None]] = [(i, None) for i in ids]
        else:
            payload = self._json(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
                raise _ApiError(400, "JSON_PARSER_ERROR", "expected {\"records\": [...]}")
            all_or_none = bool(payload.get("allOrNone", False))
            items = []
            for record in payload["records"]:
                if not isinstance(record, dict):
                    raise _ApiError(400, "JSON_PARSER_ERROR", "each record must be an object")
                items.append((record.get("id") or record.get("Id"), record))
        if len(items) > 200:
            raise _ApiError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more "
                            "than 200 records into this call")
        if not items:
            raise _ApiError(400, "INVALID_FIELD", "No records were provided")
        checked: list[tuple[str, str | None, dict[str, Any], list[RecordError]]] = []
        for record_id, record in items:
            if request.method == "DELETE":
                obj = self.org.object_of(record_id or "")
                checked.append((obj or "", record_id, {}, self._check_delete(obj, record_id)))
                continue
            assert record is not None
            obj = str((record.get("attributes") or {}).get("type") or "")
            if obj not in SCHEMA:
                raise _ApiError(400, "INVALID_TYPE", f"sObject type '{obj}' is not supported.")
            if request.method == "POST" and record_id:
                checked.append((obj, None, {}, [RecordError(
                    "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])]))
                continue
            if request.method == "PATCH" and not record_id:
                checked.append((obj, None, {}, [RecordError(
                    "MISSING_ARGUMENT", "Id not specified in an update call", [])]))
                continue
            typed, errors = self.org.coerce(obj, record)
            errors += self.org.check_write(obj, typed, record_id if request.method == "PATCH"
                                           else None)
            checked.append((obj, record_id, typed, errors))
        failed = any(errors for *_, errors in checked)
        results = []
        for obj, record_id, typed, errors in checked:
            if errors:
                results.append({"success": False, "errors": [e.json() for e in errors]}
                               | ({"id": record_id} if record_id else {}))
            elif all_or_none and failed:
                results.append({"id": record_id, "success": False, "errors": [RecordError(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all "
                    "records were valid and the request was using AllOrNone header").json()]})
            elif request.method == "DELETE":
                assert record_id is not None
                self.org.delete(record_id)
                results.append({"id": record_id, "success": True, "errors": []})
            elif request.method == "POST":
                new_id = self.org.insert(obj, typed)
                results.append({"id": new_id, "success": True, "errors": []})
            else:
                assert record_id is not None
                self.org.update(record_id, typed)
                results.append({"id": record_id, "success": True, "errors": []})
        return JSONResponse(results)

    def _check_delete(self, obj: str | None, record_id: str | None) -> list[RecordError]:
        if obj is None or record_id is None:
            return [RecordError("MALFORMED_ID", f"malformed id {record_id}", [])]
        record = self.org.records[obj].get(record_id)
        if record is None:
            return [RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])]
        if record["IsDeleted"]:
            return [RecordError("ENTITY_IS_DELETED", "entity is deleted", [])]
        return []

    # -- Bulk API 2.0 ------------------------------------------------------------------
    def _new_job(self, kind: str, spec: dict[str, Any], version: str, state: str) -> dict[str, Any]:
        job_id = f"750{next(self._ids):015d}"
        job: dict[str, Any] = {
               "id": job_id, "operation": spec.get("operation"), "object": spec.get("object"),
               "createdById": USER_ID, "state": state,
               "concurrencyMode": "Parallel", "contentType": "CSV",
               "apiVersion": float(version.lstrip("v")), "lineEnding": "LF",
               "columnDelimiter": "COMMA", "jobType": "V2Ingest" if kind == "ingest"
               else "V2Query", "_kind": kind, "_version": version, "_data": [],
               "_polls": self.bulk_polls, "_fail": None}
        self.jobs[job_id] = job
        return job

    @staticmethod
    def _job_info(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _find_job(self, request: Request, kind: str) -> dict[str, Any]:
        job = self.jobs.get(request.path_params["job"])
        if job is None or job["_kind"] != kind:
            raise _ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def _ingest_create(self, request: Request, body: bytes, token: str) -> Response:
        spec = self._json(body)
        if not isinstance(spec, dict) or spec.get("object") not in SCHEMA or spec.get(
                "operation") not in ("insert", "update", "delete", "hardDelete"):
            raise _ApiError(400, "INVALIDJOB", "InvalidJob : the object or operation is not "
                            "supported")
        job = self._new_job("ingest", spec, request.path_params["version"], "Open")
        return JSONResponse(self._job_info(job))

    def _ingest_upload(self, request: Request, body: bytes, token: str) -> Response:
        job = self._find_job(request, "ingest")
        if job["state"] != "Open":
            raise _ApiError(409, "INVALIDJOBSTATE", f"Job is in state {job['state']}: "
                            "data can only be uploaded to an Open job")
        job["_data"].append(body.decode("utf-8-sig"))
        return Response(status_code=201)

    def _job(self, request: Request, body: bytes, token: str) -> Response:
        kind = "ingest" if "/jobs/ingest/" in request.url.path else "query"
        job = self._find_job(request, kind)
        if request.method == "DELETE":
            del self.jobs[job["id"]]
            return Response(status_code=204)
        if request.method == "PATCH":
            wanted = (self._json(body) or {}).get("state")
            if wanted == "UploadComplete" and job["state"] == "Open":
                job["state"] = "UploadComplete"
            elif wanted == "Aborted" and job["state"] not in ("JobComplete", "Failed"):
                job["state"] = "Aborted"
            else:
                raise _ApiError(400, "INVALIDJOBSTATE",
                                f"cannot move a job from {job['state']} to {wanted}")
            if self.next_bulk_failure and job["state"] == "UploadComplete":
                job["_fail"], self.next_bulk_failure = self.next_bulk_failure, None
            return JSONResponse(self._job_info(job))
        self._advance(job)
        return JSONResponse(self._job_info(job))

    def _advance(self, job: dict[str, Any]) -> None:
        """One poll moves a job one step: UploadComplete -> InProgress -> ... -> done."""
        if job["state"] == "UploadComplete":
            job["state"] = "InProgress"
        elif job["state"] == "InProgress":
            if job["_polls"] > 1:
                job["_polls"] -= 1
                return
            if job["_fail"]:
                job.update(state="Failed", errorMessage=job["_fail"],
                           numberRecordsProcessed=0, numberRecordsFailed=0)
                return
            if job["_kind"] == "ingest":
                self._process_ingest(job)
            else:
                query = job["_query"]
                rows = self._run(query, include_deleted=job["operation"] == "queryAll")
                if query.order and len(rows) > self.bulk_order_by_limit:
                    job.update(state="Failed", numberRecordsProcessed=0, errorMessage=(
                        "QUERY_TIMEOUT: Your query request was running for too long. ORDER BY "
                        "disables PK chunking for Bulk API 2.0 queries"))
                    return
                if not query.order:
                    # PK chunks run in parallel: the rows come in no particular order.
                    random.Random(job["id"]).shuffle(rows)
                job["_rows"] = [[_csv_value(r.get(f)) for f in query.fields] for r in rows]
                job.update(state="JobComplete", numberRecordsProcessed=len(rows))

    def _process_ingest(self, job: dict[str, Any]) -> None:
        obj, operation = job["object"], job["operation"]
        ok: list[list[str]] = []
        failed: list[list[str]] = []
        header: list[str] = []
        for chunk in job["_data"]:
            reader = csv.reader(io.StringIO(chunk))
            chunk_header = next(reader, [])
            header = header or chunk_header
            unknown = [c for c in chunk_header if c not in SCHEMA[obj]["fields"]]
            if unknown:
                job.update(state="Failed", numberRecordsProcessed=0, numberRecordsFailed=0,
                           errorMessage=f"InvalidBatch : Field name not found : {unknown[0]}")
                return
            for row in reader:
                values = dict(zip(chunk_header, row, strict=False))
                record_id = values.pop("Id", None) or None
                if operation in ("delete", "hardDelete"):
                    record = self.org.get(record_id or "")
                    if record is None or record["IsDeleted"]:
                        failed.append([record_id or "", "ENTITY_IS_DELETED:entity is deleted:--",
                                       *row])
                    else:
                        self.org.delete(str(record_id))
                        ok.append([str(record_id), "false", *row])
                    continue
                new_id, errors = self._write_one(
                    obj, values, record_id if operation == "update" else None, from_csv=True)
                if errors:
                    message = "; ".join(f"{e.status_code}:{e.message}:{','.join(e.fields)} --"
                                        for e in errors)
                    failed.append([record_id or "", message, *row])
                else:
                    ok.append([str(new_id), "true" if operation == "insert" else "false", *row])
        job["_results"] = {"header": header, "ok": ok, "failed": failed}
        job.update(state="JobComplete", numberRecordsProcessed=len(ok) + len(failed),
                   numberRecordsFailed=len(failed))

    def _ingest_results(self, request: Request, body: bytes, token: str) -> Response:
        job = self._find_job(request, "ingest")
        path = request.url.path.rstrip("/")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        results = job.get("_results")
        if path.endswith("unprocessedrecords"):
            rows = [] if results else [r for chunk in job["_data"]
                                       for r in list(csv.reader(io.StringIO(chunk)))[1:]]
            header = (next(iter(csv.reader(io.StringIO(job["_data"][0]))))
                      if job["_data"] else [])
            writer.writerow(header)
            writer.writerows(rows)
        elif results is None:
            raise _ApiError(400, "INVALIDJOBSTATE", "results are available once the job is "
                            "complete")
        elif path.endswith("successfulResults"):
            writer.writerow(["sf__Id", "sf__Created", *results["header"]])
            writer.writerows(results["ok"])
        else:
            writer.writerow(["sf__Id", "sf__Error", *results["header"]])
            writer.writerows(results["failed"])
        return Response(out.getvalue(), media_type="text/csv")

    def _query_job_create(self, request: Request, body: bytes, token: str) -> Response:
        spec = self._json(body)
        if not isinstance(spec, dict) or spec.get("operation") not in ("query", "queryAll"):
            raise _ApiError(400, "INVALIDJOB", "InvalidJob : operation must be query or queryAll")
        query = self._parse(spec.get("query"), bulk=True)
        job = self._new_job("query", {"operation": spec["operation"], "object": query.object},
                            request.path_params["version"], "UploadComplete")
        job["_query"] = query
        if self.next_bulk_failure:
            job["_fail"], self.next_bulk_failure = self.next_bulk_failure, None
        return JSONResponse(self._job_info(job))

    def _query_job_results(self, request: Request, body: bytes, token: str) -> Response:
        job = self._find_job(request, "query")
        if job["_version"] != request.path_params["version"]:
            raise _ApiError(409, "API_VERSION_MISMATCH", "results must be requested with the "
                            "API version that created the job")
        if job["state"] != "JobComplete":
            raise _ApiError(412, "JOB_NOT_COMPLETE", "the job is not complete yet")
        size = int(request.query_params.get("maxRecords") or 50_000)
        locator = request.query_params.get("locator") or ""
        try:
            offset = int(base64.b64decode(locator).decode()) if locator else 0
        except ValueError:
            raise _ApiError(400, "INVALID_LOCATOR", "the locator is not valid") from None
        rows = job["_rows"][offset:offset + size]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(job["_query"].fields)
        writer.writerows(rows)
        following = offset + size
        next_locator = base64.b64encode(str(following).encode()).decode() \
            if following < len(job["_rows"]) else "null"
        return Response(out.getvalue(), media_type="text/csv", headers={
            "Sforce-Locator": next_locator, "Sforce-NumberOfRecords": str(len(rows))})

    # -- Outbound Messages -------------------------------------------------------------
    def _flush_outbound(self) -> None:
        changed, self.org.changed = self.org.changed, []
        if not self.outbound_url:
            return
        ids = list(dict.fromkeys(i for obj, i in changed if obj == self.outbound_object))
        for start in range(0, len(ids), 100):  # up to 100 notifications per message
            notes = []
            for record_id in ids[start:start + 100]:
                record = self.org.records[self.outbound_object].get(record_id)
                if record is None:
                    continue
                notes.append((f"04l{next(self._ids):015d}", record))
            if notes:
                body = self._outbound_xml(notes)
                thread = threading.Thread(target=self._deliver,
                                          args=(self.outbound_url, body, [n for n, _ in notes]),
                                          daemon=True, name="sf-outbound")
                self._outbound_threads.append(thread)
                thread.start()

    def _outbound_xml(self, notes: list[tuple[str, dict[str, Any]]]) -> bytes:
        parts = []
        for note_id, record in notes:
            fields = "".join(
                f"<sf:{name}>{escape(_csv_value(record.get(name)))}</sf:{name}>"
                for name in ("Id", *self.outbound_fields) if record.get(name) is not None)
            parts.append(f"<Notification><Id>{note_id}</Id><sObject xsi:type=\"sf:"
                         f"{self.outbound_object}\" xmlns:sf=\"urn:sobject.enterprise.soap."
                         f"sforce.com\">{fields}</sObject></Notification>")
        return (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
            '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
            f"<OrganizationId>{ORG_ID}</OrganizationId><ActionId>04k000000000000001</ActionId>"
            '<SessionId xsi:nil="true"/>'
            f"<EnterpriseUrl>{self.base_url}/services/Soap/c/{self.api_version}/{ORG_ID}"
            f"</EnterpriseUrl><PartnerUrl>{self.base_url}/services/Soap/u/{self.api_version}/"
            f"{ORG_ID}</PartnerUrl>{''.join(parts)}</notifications></soapenv:Body>"
            "</soapenv:Envelope>").encode()

    def _deliver(self, url: str, body: bytes, note_ids: list[str]) -> None:
        entry: dict[str, Any] = {"notifications": note_ids, "status": None, "acked": False,
                                 "attempts": 0}
        for _ in range(3):  # Salesforce retries for 24 h; three quick tries suffice here
            entry["attempts"] += 1
            try:
                answer = httpx.post(url, content=body, timeout=5, headers={
                    "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
            except httpx.HTTPError as exc:
                entry["status"] = f"error: {type(exc).__name__}"
                continue
            entry["status"] = answer.status_code
            if answer.status_code == 200 and "<Ack>true</Ack>" in answer.text.replace(" ", ""):
                entry["acked"] = True
                break
        with self.lock:
            self.outbound_log.append(entry)

    def flush_outbound(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for deliveries in flight; return the delivery log."""
        for thread in list(self._outbound_threads):
            thread.join(timeout)
        self._outbound_threads = [t for t in self._outbound_threads if t.is_alive()]
        with self.lock:
            return list(self.outbound_log)

    # -- control routes ----------------------------------------------------------------
    async def _control_outbound(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.flush_outbound())
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            self.outbound_url = body.get("url") or None
            self.outbound_fields = tuple(body.get("fields") or self.outbound_fields)
            self.outbound_object = body.get("object") or "Contact"
        return JSONResponse({"ok": True})

    async def _control_limits(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            self.daily_limit = int(body.get("daily_limit", self.daily_limit))
            self.used = int(body.get("used", self.used))
            return JSONResponse({"daily_limit": self.daily_limit, "used": self.used})

    async def _control_reject(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            self.org.reject_emails = {str(e).lower() for e in body.get("emails", [])}
        return JSONResponse({"ok": True})

    async def _control_bulk_failure(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            self.next_bulk_failure = str(body.get("message") or "InternalServerError")
        return JSONResponse({"ok": True})

    async def _control_convert(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        try:
            contact_id = self.convert_lead(str(body["lead_id"]))
        except KeyError as exc:
            return JSONResponse({"error": f"unknown lead {exc}"}, status_code=404)
        return JSONResponse({"contact_id": contact_id})

    async def _control_busy(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            self.busy_calls = int(body.get("calls", 1))
        return JSONResponse({"calls": self.busy_calls})

    async def _control_merge(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        try:
            self.merge(str(body["master_id"]), [str(i) for i in body.get("loser_ids", [])])
        except KeyError as exc:
            return JSONResponse({"error": f"unknown record {exc}"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"master_id": body["master_id"]})

    async def _control_purge(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"purged": self.org.purge_recycle_bin()})
