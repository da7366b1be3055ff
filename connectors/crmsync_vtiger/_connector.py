"""The vTiger connector: the contract, wired to the API, reader, writer and webhook."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
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

from ._api import CloudApi, VtigerApi, WebserviceApi
from ._reader import ContactReader, Memberships
from ._settings import VtigerSettings
from ._values import FieldCodec, WsId
from ._vtql import ROW_CAP, select
from ._webhook import decode_webhook
from ._writer import ContactWriter

__all__ = ["VtigerConnector"]


class VtigerConnector(Connector):
    """vTiger CRM Contacts: ``emailoptout`` and campaign membership per list."""

    name: ClassVar[str] = "vtiger"
    Settings: ClassVar[type[ConnectorSettings]] = VtigerSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", full_read=True, incremental_read=True, write=True, bulk_write=False,
        deletes=True, push_events=True, polling=True, lists=True, groups=True,
    )

    settings: VtigerSettings

    def __init__(self, settings: ConnectorSettings, *, http: httpx.Client | None = None) -> None:
        super().__init__(settings, http=http)
        self._owns_http = http is None
        if http is None:
            http = self.settings.http_client(base_url="")
        self._client: httpx.Client = http
        api_class: type[VtigerApi] = CloudApi if self.settings.flavour == "cloud" \
            else WebserviceApi
        self.api = api_class(http, base_url=self.settings.base_url,
                             username=self.settings.username,
                             access_key=self.settings.access_key.get_secret_value())
        self._codecs: dict[str, FieldCodec] = {}
        self._codec_lock = threading.Lock()
        self.reader = ContactReader(self.api, self.codec, self.settings, self.name,
                                    self._memberships)

    # -- schema ---------------------------------------------------------------------------
    def codec(self, module: str = "Contacts") -> FieldCodec:
        """The module's field types and id prefix, from ``describe`` (once)."""
        with self._codec_lock:
            if module not in self._codecs:
                described = self.api.call("describe", {"elementType": module})
                self._codecs[module] = FieldCodec(described, self.settings.server_timezone)
            return self._codecs[module]

    def campaign_id(self, raw: str) -> str:
        try:
            return str(WsId.coerce(raw, self.codec("Campaigns").id_prefix))
        except ValueError as exc:
            raise CrmsyncError(f"campaign {raw!r}: {exc}") from None

    def _campaign_ids(self) -> list[str]:
        if self.settings.campaigns is not None:
            return [self.campaign_id(raw) for raw in self.settings.campaigns]
        return [item.id.partition(":")[2] for item in self.lists()]

    def _memberships(self) -> Memberships:
        return Memberships(self.api, self._campaign_ids())

    # -- the contract ---------------------------------------------------------------------
    def check(self) -> Health:
        """Log in, describe Contacts, and make the reads a sync makes: a diff read with a
        recent cursor (``sync`` and/or VTQL, the campaigns' members). A server whose
        ``sync`` dies (stock vTiger 8.0.0 on PHP 8) fails the check, as it would fail
        every diff sync."""
        started = time.monotonic()
        try:
            session = self.api.session()
            contacts = self.codec("Contacts")
            since = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
            first = next(iter(self.read(Cursor(at=since))), None)
        except CrmsyncError as exc:
            return Health(ok=False, detail=str(exc))
        version = f"vTiger {session.vtiger_version} (API {session.api_version})" \
            if session.vtiger_version else f"vTiger Cloud ({self.settings.base_url})"
        read = len(first.records) if first is not None else 0
        return Health(ok=True, latency_ms=(time.monotonic() - started) * 1000,
                      detail=f"{version} as {self.settings.username} ({session.user_id}); "
                             f"Contacts ids {contacts.id_prefix}x<n>; a diff read since "
                             f"{since:%Y-%m-%d %H:%M} UTC works ({read} record(s) on its "
                             "first page)")

    def lists(self) -> list[MailingList]:
        """Campaigns, as ``campaign:<ws id>`` (``emailoptout`` is global, not a list)."""
        out = []
        offset = 0
        while True:
            rows = self.api.call("query", {"query": select(
                "Campaigns", columns="id,campaignname", order_by="id", offset=offset)}) or []
            out += [MailingList(id=f"campaign:{row['id']}", name=str(row["campaignname"]))
                    for row in rows]
            if len(rows) < ROW_CAP:
                return out
            offset += ROW_CAP

    def read(self, since: Cursor | None) -> Iterator[Page]:
        if since is None:
            return self.reader.full()
        return self.reader.since(since)

    def full_read_count(self) -> int | None:
        return self.reader.full_read_count()

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        if not changes:
            return []
        writer = ContactWriter(self.api, self.codec("Contacts"), self.settings, self.name,
                               self.campaign_id)
        return writer.write(changes)

    def decode_event(self, request: InboundRequest) -> list[Change]:
        return decode_webhook(request, secret=self.settings.webhook_secret, name=self.name,
                              codec=self.codec)

    def close(self) -> None:
        self.api.close()
        if self._owns_http:
            self._client.close()

