"""A HubSpot-style CRM connector on ``crmsync.connect``: the docs/plugins.md tutorial."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from crmsync import (
    AuthError,
    Capabilities,
    Change,
    Connector,
    Contact,
    CrmsyncError,
    Cursor,
    EventRejected,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    QuotaExhausted,
    RemoteError,
    WriteResult,
)
from crmsync.connect import (
    ErrorMap,
    ErrorRule,
    HttpConnectorSettings,
    Token,
    TokenAuth,
    cursor_pages,
    idempotent,
    keyset_pages,
    results_in_order,
    verify_hmac,
    write_batches,
)

__all__ = ["HubLikeConnector", "HubLikeSettings"]

CONTACTS = "/crm/v3/objects/contacts"


class HubLikeSettings(HttpConnectorSettings):
    """``[crm.settings]``; secrets from CRMSYNC_HUBLIKE_CLIENT_SECRET / _REFRESH_TOKEN."""

    base_url: str = "https://api.hublike.example"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")  # also the webhook signing key
    refresh_token: SecretStr = SecretStr("")
    page_size: int = Field(100, ge=1, le=100)
    properties: list[str] = ["firstname", "lastname", "hs_email_optout"]  # read and written


# The vendor's error answers, as data: {"status": "error", "category", "message"}.
ERRORS = ErrorMap("HubLike", code_keys=("category", "status"), message_keys=("message",),
                  rules=[
    ErrorRule(AuthError, status=(401, 403), advice="check client_id and "
              "CRMSYNC_HUBLIKE_CLIENT_SECRET / CRMSYNC_HUBLIKE_REFRESH_TOKEN"),
    ErrorRule(QuotaExhausted, status=429, contains="daily", advice="the daily API limit "
              "is spent: the run stops with its cursor kept; run again tomorrow"),
    ErrorRule(RemoteError, code="VALIDATION_ERROR", advice="fix the value it names"),
])


class RefreshTokenAuth(TokenAuth):
    """A Bearer token from the refresh-token grant (the refresh token does not rotate)."""

    def __init__(self, settings: HubLikeSettings, http: httpx.Client) -> None:
        super().__init__()
        self.settings, self.http = settings, http

    def obtain(self) -> Token:
        s = self.settings
        body = ERRORS.call(self.http, "POST", f"{s.base_url}/oauth/v1/token", auth=None, data={
            "grant_type": "refresh_token", "client_id": s.client_id, "refresh_token":
            s.refresh_token.get_secret_value(), "client_secret":
            s.client_secret.get_secret_value()}, extensions=idempotent()).json()
        return Token(value=body["access_token"], expires_in=float(body["expires_in"]))


def _key(row: dict[str, Any]) -> tuple[datetime, int]:
    return datetime.fromisoformat(row["updatedAt"]), int(row["id"])


class HubLikeConnector(Connector):
    """Contacts of a HubSpot-style CRM; opt-out is the ``hs_email_optout`` property."""

    name: ClassVar[str] = "hublike"
    Settings: ClassVar[type[HubLikeSettings]] = HubLikeSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", incremental_read=True, bulk_write=True, push_events=True, polling=True,
        lists=False)
    settings: HubLikeSettings

    def __init__(self, settings: HubLikeSettings, *, http: httpx.Client | None = None) -> None:
        super().__init__(settings, http=http)
        self.http = http or settings.http_client()
        self.auth = RefreshTokenAuth(settings, self.http)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = ERRORS.call(self.http, method, self.settings.base_url + path,
                               auth=self.auth, **kwargs)
        return response.json() if response.content else None

    def check(self) -> Health:
        try:
            self._call("GET", CONTACTS, params={"limit": 1})
        except CrmsyncError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"HubLike at {self.settings.base_url}")

    def lists(self) -> list[MailingList]:
        return []

    def _contacts(self, rows: list[dict[str, Any]]) -> list[Contact]:
        return [Contact(email=row["properties"]["email"], ids={self.name: str(row["id"])},
                        modified_at=_key(row)[0], fields={
                            p: row["properties"].get(p) for p in self.settings.properties})
                for row in rows if row["properties"].get("email")]

    def read(self, since: Cursor | None) -> Iterator[Page]:
        props = ["email", *self.settings.properties]
        if since is None:  # every contact, in id order, by the list's "after" token
            def listed(after: str | None) -> tuple[list[dict[str, Any]], str | None]:
                body = self._call("GET", CONTACTS, params={
                    "limit": self.settings.page_size, "properties": ",".join(props),
                    **({"after": after} if after else {})})
                return body["results"], body.get("paging", {}).get("next", {}).get("after")
            pending, newest = None, None
            for rows in cursor_pages(listed):
                if pending is not None:
                    yield pending
                newest = max([_key(row)[0] for row in rows] + ([newest] if newest else []))
                pending = Page(records=self._contacts(list(rows)))
            if pending is not None and newest is not None:  # resume after the newest seen
                yield pending.model_copy(update={"cursor": Cursor(at=newest)})
            return
        start = since.at - timedelta(seconds=self.settings.overlap_s)

        def search(last: tuple[datetime, int] | None) -> list[dict[str, Any]]:
            # (modified, id) past the last one read: never near the 10,000-result limit
            at, after_id = last or (start, 0)
            ms = str(int(at.timestamp() * 1000))
            groups = [[{"propertyName": "lastmodifieddate", "operator": "GT", "value": ms}],
                      [{"propertyName": "lastmodifieddate", "operator": "EQ", "value": ms},
                       {"propertyName": "hs_object_id", "operator": "GT",
                        "value": str(after_id)}]]
            rows: list[dict[str, Any]] = self._call("POST", f"{CONTACTS}/search", json={
                "filterGroups": [{"filters": f} for f in groups], "properties": props,
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "limit": self.settings.page_size}, extensions=idempotent())["results"]
            return rows
        for rows in keyset_pages(search, _key):
            last = _key(rows[-1])
            yield Page(records=self._contacts(rows), cursor=Cursor(at=last[0],
                                                                   tie_id=str(last[1])))

    def _upsert(self, batch: Sequence[Change]) -> list[WriteResult]:
        body = self._call("POST", f"{CONTACTS}/batch/upsert", write=True, json={"inputs": [
            {"idProperty": "email", "id": change.email,
             "properties": {k: v or "" for k, v in change.fields.items()}}
            for change in batch]})
        done = {row["properties"]["email"]: str(row["id"]) for row in body["results"]}
        failed = {email: WriteResult(ok=False, error=error["message"], code=error["category"])
                  for error in body.get("errors", []) for email in error["context"]["ids"]}
        return results_in_order(batch, lambda change: change.email, done, failed)

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        upserts = [change for change in changes if change.op is not Op.DELETE]
        written = iter(write_batches(upserts, 100, self._upsert,
                                     send_one=lambda change: self._upsert([change])[0]))
        return [next(written) if change.op is not Op.DELETE else WriteResult(
            ok=False, code="UNSUPPORTED", error="hublike: deleting contacts is not supported")
            for change in changes]

    def decode_event(self, request: InboundRequest) -> list[Change]:
        verify_hmac(request, self.settings.client_secret, header="X-HubLike-Signature-v3",
                    template="{method}{url}{body}{timestamp}", encoding="base64",
                    timestamp_header="X-HubLike-Request-Timestamp", max_age_s=300)
        try:
            ids = sorted({str(event["objectId"]) for event in json.loads(request.body)})
        except (ValueError, TypeError, KeyError):
            raise EventRejected("not a HubLike webhook: expected a JSON array of events "
                                "with objectId") from None
        # events name records only: read them (an outage: RemoteError -> 503 + Retry-After)
        rows = self._call("POST", f"{CONTACTS}/batch/read", extensions=idempotent(), json={
            "inputs": [{"id": i} for i in ids],
            "properties": ["email", *self.settings.properties]})["results"]
        return [Change(email=c.email, ids=c.ids, fields=c.fields, source=self.name,
                       occurred_at=c.modified_at, event_id=f"{c.ids[self.name]}@"
                       f"{c.modified_at.isoformat() if c.modified_at else ''}")
                for c in self._contacts(rows)]
