"""The Salesforce CRM connector."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import ClassVar

import httpx

from crmsync.contract import Capabilities, Connector, ConnectorSettings
from crmsync.errors import CrmsyncError
from crmsync.model import (
    Change,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Page,
    WriteResult,
)

from ._auth import flow_for
from ._outbound import ACK, decode_notifications
from ._quota import QuotaTracker
from ._reader import Reader
from ._rest import SalesforceApi
from ._settings import SalesforceSettings
from ._writer import Writer

__all__ = ["SalesforceConnector"]


class SalesforceConnector(Connector):
    """Contacts and Leads, Campaign membership, opt-out: REST, Collections, Bulk 2.0.

    ``read`` pages by ``(SystemModstamp, Id)``; ``write`` batches through sObject
    Collections or Bulk 2.0; ``decode_event`` reads Outbound Messages. The HTTP client
    is injected or built with ``ca_file`` as the CA to trust.
    """

    name: ClassVar[str] = "salesforce"
    Settings: ClassVar[type[ConnectorSettings]] = SalesforceSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", full_read=True, incremental_read=True, write=True, bulk_write=True,
        deletes=True, push_events=True, polling=True, lists=True, groups=True,
    )
    settings: SalesforceSettings

    def __init__(self, settings: ConnectorSettings, *, http: httpx.Client | None = None) -> None:
        super().__init__(settings, http=http)
        assert isinstance(settings, SalesforceSettings)
        self._owns_http = http is None
        self.http = http or settings.http_client(base_url="")
        self.quota = QuotaTracker(settings.quota_share)
        self.api = SalesforceApi(self.http, flow_for(settings), settings, self.quota)
        self._reader = Reader(self.api, self.name)
        self._writer = Writer(self.api, self.name)

    @property
    def calls(self) -> int:
        """API calls made so far (token requests excluded)."""
        return self.api.calls

    def check(self) -> Health:
        started = time.monotonic()
        try:
            self.api.json("GET", "limits/")
            missing = []
            for obj in self.settings.objects:
                described = self.api.json("GET", f"sobjects/{obj}/describe/")
                known = {str(f.get("name")) for f in described.get("fields", [])}
                missing += [f"{obj}.{name}" for name in self.settings.fields if name not in known]
        except CrmsyncError as exc:
            return Health(ok=False, detail=str(exc))
        if missing:
            return Health(ok=False, detail=f"the org has no field {', '.join(missing)}: fix "
                          "settings.fields (or settings.objects), or check the integration "
                          "user's field-level security")
        return Health(ok=True, latency_ms=(time.monotonic() - started) * 1000,
                      detail=f"{self.api.flow.name} login to {self.api.session().instance_url}; "
                             f"{self.quota.describe()}")

    def lists(self) -> list[MailingList]:
        rows = self.api.query("SELECT Id, Name FROM Campaign WHERE IsActive = true "
                              "ORDER BY Name")
        return [MailingList(id=f"campaign:{row['Id']}", name=str(row["Name"])) for row in rows]

    def read(self, since: Cursor | None) -> Iterator[Page]:
        return self._reader.read(since)

    def full_read_count(self) -> int | None:
        return self._reader.full_read_count()

    def api_budget(self) -> tuple[int, int] | None:
        """The daily API budget as the last ``Sforce-Limit-Info`` header said."""
        if self.quota.used is None or self.quota.limit is None:
            return None
        return self.quota.used, self.quota.limit

    def members(self, key: str) -> list[str] | None:
        return self._reader.members(key) if self.settings.memberships else None

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        return self._writer.write(changes)

    def decode_event(self, request: InboundRequest) -> list[Change]:
        return decode_notifications(
            request.body, organization_id=self.settings.organization_id, source=self.name,
            fields=self.settings.fields, id_key=self.name)

    def event_ack(self, request: InboundRequest) -> tuple[int, str, bytes]:
        return 200, "text/xml; charset=utf-8", ACK

    def close(self) -> None:
        if self._owns_http:
            self.http.close()
