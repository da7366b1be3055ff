"""The SugarCRM / SuiteCRM emulator: REST v11 and legacy v4_1 over one store.

``SugarEmulator(flavour="rest" | "v4_1")`` serves both APIs at once (as a Sugar install
does); ``flavour`` picks which one ``demo_profile()`` points the connector at and the
shape of injected errors. ``crmsync emulate sugarcrm -o flavour=v4_1``.

Control endpoints beyond the harness's (under ``/_emulator/``)::

    POST /_emulator/email_address {"email", "opt_out"}  flip an address's opt-out only,
                                   as the EmailAddresses API does: no record is touched
    POST /_emulator/conflicts     {"count": n}  the next n REST updates answer 409
    POST /_emulator/tokens        {"ttl_s": s, "expire_refresh": bool}
    GET  /_emulator/stats         logins, token grants and refreshes
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator

from .legacy_api import LegacyApi
from .rest_api import RestApi
from .store import PERSON_MODULES, Person, SugarStore, TargetList

__all__ = ["EVENTS_LIST_ID", "SugarEmulator"]

EVENTS_LIST_ID = "7d3c2b1a-0000-4000-8000-0000000000e2"
_LABELS = {400: "bad_request", 401: "need_login", 403: "not_authorized", 404: "not_found",
           409: "edit_conflict", 412: "metadata_out_of_date", 413: "request_too_large",
           422: "invalid_parameter", 429: "too_many_requests", 500: "fatal_error",
           502: "service_unavailable", 503: "maintenance", 504: "service_unavailable"}


class SugarEmulator(Emulator):
    """Sugar REST v11 and SuiteCRM legacy v4_1 over one in-memory store."""

    name: ClassVar[str] = "sugarcrm"
    password = "crmsync-demo"  # noqa: S105 - the throw-away emulator user

    def __init__(self, *, contacts: int = 0, seed: int = 0, flavour: str = "rest") -> None:
        if flavour not in ("rest", "v4_1"):
            raise ValueError(f"flavour must be rest or v4_1, got {flavour!r}")
        self.flavour = flavour
        self.users = {"admin": self.password}
        self.known_fields = {"first_name", "last_name", "interests_c", "title", "phone_work",
                             "description", "lead_source"}
        self.store = SugarStore()
        self.rest = RestApi(self)
        self.legacy = LegacyApi(self)
        super().__init__(contacts=contacts, seed=seed)

    # -- harness hooks -----------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [*self.rest.routes(), *self.legacy.routes()]

    def reset(self) -> None:
        self.store = SugarStore()
        self.store.lists[EVENTS_LIST_ID] = TargetList(
            id=EVENTS_LIST_ID, name="Events", date_modified=self.store.now())
        self.rest.conflicts = 0

    def seed(self, contacts: int, seed: int) -> None:
        self.store.seed(contacts, seed, target_list=self.store.lists.get(EVENTS_LIST_ID))

    def expire_sessions(self) -> None:
        self.rest.expire()
        self.legacy.sessions.clear()

    def state(self) -> dict[str, Any]:
        contacts = []
        for module in PERSON_MODULES:
            for person in self.store.people[module].values():
                contacts.append(self._neutral(person))
        return {"contacts": contacts}

    def _neutral(self, person: Person) -> dict[str, Any]:
        links = person.links if person.deleted else person.live_links()
        rows = [(link, self.store.addresses[link.address_id]) for link in links]
        primary = next((row for link, row in rows if link.primary), rows[0][1] if rows else None)
        fields = {key: ";".join(value) if isinstance(value, list) else value
                  for key, value in person.fields.items()}
        fields["email_opt_out"] = "true" if primary and primary.opt_out else "false"
        return {
            "email": primary.email.lower() if primary else None,
            "ids": {"sugarcrm": person.id}, "module": person.module, "fields": fields,
            "lists": {f"target_list:{list_id}": {"status": "member", "groups": []}
                      for list_id in self.store.memberships(person.module, person.id)},
            "opted_out": bool(primary and primary.opt_out), "deleted": person.deleted,
            "date_modified": person.date_modified.isoformat(),
            "addresses": [{"email": row.email, "opt_out": row.opt_out,
                           "primary": link.primary} for link, row in rows],
        }

    def _holder(self, email: str) -> Person:
        address_id = self.store.by_caps.get(email.strip().upper())
        people = [p for p in self.store.holders_of(address_id) if not p.deleted] \
            if address_id else []
        if not people:
            raise KeyError(email)
        return people[0]

    def update_contact(self, email: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A user edits the record with this address and saves it: the record's stamp
        moves; an ``email_opt_out`` edit flips the shared address row."""
        person = self._holder(email)
        for key, value in fields.items():
            if key == "email_opt_out":
                row = self.store.address(email, create=False)
                assert row is not None
                self.store.set_opt_out(row, str(value).lower() in ("1", "true", "yes"))
            else:
                person.fields[key] = value
        self.store.touch(person)
        return self._neutral(person)

    def fault_response(self, status: int) -> Response:
        if self.flavour == "v4_1":
            # The legacy API has no error body for a server fault: PHP or the web server
            # answers with the bare status.
            return Response(b"", status_code=status, media_type="text/html; charset=UTF-8",
                            headers={"Retry-After": "0"} if status in (429, 503) else None)
        label = _LABELS.get(status, "fatal_error")
        return JSONResponse({"error": label, "error_message": f"injected {label}"},
                            status_code=status,
                            headers={"Retry-After": "0"} if status in (429, 503) else None)

    def control_routes(self) -> list[BaseRoute]:
        return [Route("/_emulator/email_address", self._email_address, methods=["POST"]),
                Route("/_emulator/conflicts", self._conflicts, methods=["POST"]),
                Route("/_emulator/tokens", self._tokens, methods=["POST"]),
                Route("/_emulator/stats", self._stats, methods=["GET"])]

    async def _email_address(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            row = self.store.by_caps.get(str(body.get("email", "")).upper())
            if row is None:
                return JSONResponse({"error": "no such address"}, status_code=404)
            self.store.set_opt_out(self.store.addresses[row], bool(body.get("opt_out")))
        return JSONResponse({"ok": True})

    async def _conflicts(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.rest.conflicts = int(body.get("count", 1))
        return JSONResponse({"ok": True})

    async def _tokens(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            if "ttl_s" in body:
                self.rest.token_ttl = float(body["ttl_s"])
            if body.get("expire_refresh"):
                self.rest.expire(refresh=True)
        return JSONResponse({"ok": True})

    async def _stats(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"grants": self.rest.grants, "refreshes": self.rest.refreshes,
                                 "logins": self.legacy.logins})

    def demo_profile(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "flavour": self.flavour, "base_url": self.base_url, "username": "admin",
            "modules": ["Contacts"], "fields": ["first_name", "last_name", "interests_c"],
        }
        if self.ca_path:
            settings["ca_file"] = self.ca_path
        return {
            "settings": settings,
            "secrets": {"CRMSYNC_SUGARCRM_PASSWORD": self.password},
            "fields": {"first_name": "name", "last_name": "surname"},
            "lists": [
                {"name": "Newsletter", "esp_list": "1", "members": "all",
                 "opt_out": "email_opt_out",
                 "groups": {"field": "interests_c", "separator": ";"}},
                {"name": "Events", "esp_list": "2", "members": f"target_list:{EVENTS_LIST_ID}"},
            ],
        }
