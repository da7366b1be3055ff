"""A small emulator of the HubSpot-style API the example connector speaks.

Rules, after HubSpot's CRM v3 documentation: OAuth refresh-token grant (the refresh
token does not rotate; access tokens live 30 minutes); a spent token is a 401
``EXPIRED_AUTHENTICATION``; errors are ``{"status": "error", "category", "message"}``; the
contact list pages in id order by an ``after`` token (at most 100); the search takes
filterGroups (OR) of filters (AND) and one sort, and refuses to page past 10,000
results; batch upsert by email takes at most 100 inputs and refuses the whole batch
when one is invalid (400 VALIDATION_ERROR), while an unknown property fails only its
own input (207 with ``errors``); webhooks are signed with the v3 scheme (base64
HMAC-SHA256 of method + URL + body + millisecond timestamp, keyed by the app secret).
Simplification: every write gets its own millisecond stamp, ties are ordered by id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator

CLIENT_ID, CLIENT_SECRET, REFRESH = "hublike-app", "app-secret-123", "refresh-456"
PROPERTIES = {"email", "firstname", "lastname", "hs_email_optout"}


def _error(status: int, category: str, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "category": category, "message": message,
                         "correlationId": secrets.token_hex(8)}, status_code=status)


class HubLikeEmulator(Emulator):
    name = "hublike"

    def reset(self) -> None:
        self.contacts: dict[int, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.grants = 0
        self._stamp = 0

    def _touch(self, contact: dict[str, Any]) -> None:
        self._stamp = max(self._stamp + 1, int(time.time() * 1000))
        contact["updated"] = self._stamp

    def seed(self, contacts: int, seed: int) -> None:
        for n in range(contacts):
            self._save({"email": f"contact{seed}-{n}@example.com", "firstname": f"F{n}",
                        "lastname": f"L{n}", "hs_email_optout": "false"})

    def _save(self, props: dict[str, str]) -> dict[str, Any]:
        found = next((c for c in self.contacts.values()
                      if c["props"]["email"] == props["email"].lower()), None)
        if found is None:
            found = {"id": len(self.contacts) + 1, "props": {"hs_email_optout": "false"}}
            self.contacts[found["id"]] = found
        found["props"].update({k: (v.lower() if k == "email" else v) for k, v in props.items()})
        self._touch(found)
        return found

    def state(self) -> dict[str, Any]:
        return {"contacts": [{"email": c["props"]["email"], "ids": {"hublike": str(c["id"])},
                              "fields": dict(c["props"])} for c in self.contacts.values()]}

    def expire_sessions(self) -> None:
        with self.lock:
            self.tokens.clear()

    def demo_profile(self) -> dict[str, Any]:
        return {"settings": {"base_url": self.base_url, "client_id": CLIENT_ID},
                "secrets": {"CRMSYNC_HUBLIKE_CLIENT_SECRET": CLIENT_SECRET,
                            "CRMSYNC_HUBLIKE_REFRESH_TOKEN": REFRESH}}

    def fault_response(self, status: int) -> Response:
        if status == 429:
            return _error(429, "RATE_LIMITS", "You have reached your secondly limit.")
        return _error(status, "INTERNAL_ERROR", "injected fault")

    def signed_event(self, url: str, object_ids: list[str]) -> tuple[bytes, dict[str, str]]:
        """A webhook delivery to ``url`` about ``object_ids``: its body and headers."""
        body = json.dumps([{"eventId": n, "subscriptionType": "contact.propertyChange",
                            "objectId": int(i), "occurredAt": int(time.time() * 1000)}
                           for n, i in enumerate(object_ids)]).encode()
        stamp = str(int(time.time() * 1000))
        mac = hmac.new(CLIENT_SECRET.encode(), b"POST" + url.encode() + body + stamp.encode(),
                       hashlib.sha256).digest()
        return body, {"X-HubLike-Signature-v3": base64.b64encode(mac).decode(),
                      "X-HubLike-Request-Timestamp": stamp, "Content-Type": "application/json"}

    # -- the API -------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/oauth/v1/token", self._token, methods=["POST"]),
                Route("/crm/v3/objects/contacts", self._list, methods=["GET"]),
                Route("/crm/v3/objects/contacts/search", self._search, methods=["POST"]),
                Route("/crm/v3/objects/contacts/batch/upsert", self._upsert, methods=["POST"]),
                Route("/crm/v3/objects/contacts/batch/read", self._read, methods=["POST"])]

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET \
                or form.get("refresh_token") != REFRESH:
            return JSONResponse({"status": "BAD_REFRESH_TOKEN",
                                 "message": "missing or unknown refresh token"}, 400)
        with self.lock:
            token = secrets.token_urlsafe(16)
            self.tokens.add(token)
            self.grants += 1
        return JSONResponse({"access_token": token, "refresh_token": REFRESH,
                             "expires_in": 1800, "token_type": "bearer"})

    def _refused(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return _error(401, "EXPIRED_AUTHENTICATION", "The OAuth token used to make this "
                          "call expired.")
        return None

    def _row(self, contact: dict[str, Any], props: list[str]) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(contact["updated"] / 1000, UTC)
        updated = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"id": str(contact["id"]), "updatedAt": updated, "archived": False,
                "properties": {p: contact["props"].get(p) for p in props} | {
                    "hs_object_id": str(contact["id"]),
                    "lastmodifieddate": updated}}

    async def _list(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        limit = min(100, int(request.query_params.get("limit", 10)))
        after = int(request.query_params.get("after", 0))
        props = request.query_params.get("properties", "email").split(",")
        with self.lock:
            rows = [c for i, c in sorted(self.contacts.items()) if i >= after][:limit + 1]
            out: dict[str, Any] = {"results": [self._row(c, props) for c in rows[:limit]]}
        if len(rows) > limit:
            out["paging"] = {"next": {"after": str(rows[limit]["id"])}}
        return JSONResponse(out)

    @staticmethod
    def _value(contact: dict[str, Any], name: str) -> int:
        return int(contact["updated"] if name == "lastmodifieddate" else contact["id"])

    async def _search(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.json()
        test = {"GT": int.__gt__, "EQ": int.__eq__, "GTE": int.__ge__, "LT": int.__lt__}
        after, limit = int(body.get("after", 0)), min(200, int(body.get("limit", 10)))
        if after + limit > 10_000:
            return _error(400, "VALIDATION_ERROR", "the search cannot page past 10,000 results")
        with self.lock:
            hits = [c for c in self.contacts.values() if not body.get("filterGroups") or any(
                all(test[f["operator"]](self._value(c, f["propertyName"]), int(f["value"]))
                    for f in group["filters"]) for group in body["filterGroups"])]
            hits.sort(key=lambda c: (c["updated"], c["id"]))
            rows = [self._row(c, body.get("properties", ["email"]))
                    for c in hits[after:after + limit]]
        return JSONResponse({"total": len(hits), "results": rows})

    async def _upsert(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        inputs = (await request.json())["inputs"]
        if len(inputs) > 100:
            return _error(400, "VALIDATION_ERROR", "at most 100 inputs per batch")
        bad = [i["id"] for i in inputs if "@" not in str(i["id"])]
        if bad:
            return _error(400, "VALIDATION_ERROR", f"Email address {bad[0]} is invalid")
        results, errors = [], []
        with self.lock:
            for item in inputs:
                unknown = sorted(set(item.get("properties", {})) - PROPERTIES)
                if unknown:
                    errors.append({"status": "error", "category": "VALIDATION_ERROR",
                                   "message": f"Property {unknown[0]!r} does not exist",
                                   "context": {"ids": [str(item["id"]).lower()]}})
                    continue
                saved = self._save({**item.get("properties", {}), "email": str(item["id"])})
                results.append(self._row(saved, sorted(PROPERTIES)))
        return JSONResponse({"status": "COMPLETE", "results": results, "errors": errors},
                            status_code=207 if errors else 200)

    async def _read(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.json()
        with self.lock:
            rows = [self._row(self.contacts[int(i["id"])], body.get("properties", ["email"]))
                    for i in body["inputs"] if int(i["id"]) in self.contacts]
        return JSONResponse({"status": "COMPLETE", "results": rows})
