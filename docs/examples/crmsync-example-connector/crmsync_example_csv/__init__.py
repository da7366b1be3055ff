"""An example crmsync CRM connector over a CSV file (one row per contact)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from crmsync import (
    Capabilities,
    Change,
    Connector,
    ConnectorSettings,
    Contact,
    Cursor,
    EventRejected,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    WriteResult,
)

__all__ = ["CsvCrmConnector", "CsvCrmSettings"]

COLUMNS = ["email", "first_name", "last_name", "opt_out", "updated_at", "deleted"]


class CsvCrmSettings(ConnectorSettings):
    """Where the CSV file is, and how many rows make a page."""

    path: Path
    page_size: int = 100


class CsvCrmConnector(Connector):
    """Contacts are rows; the row number is the record id; ``updated_at`` is the cursor."""

    name: ClassVar[str] = "example-csv"
    Settings: ClassVar[type[ConnectorSettings]] = CsvCrmSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", full_read=True, incremental_read=True, write=True)
    settings: CsvCrmSettings

    def _rows(self) -> list[dict[str, str]]:
        if not self.settings.path.exists():
            return []
        with self.settings.path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def _save(self, rows: list[dict[str, str]]) -> None:
        temp = self.settings.path.with_suffix(".tmp")
        with temp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)
        temp.replace(self.settings.path)

    def check(self) -> Health:
        if not self.settings.path.parent.exists():
            return Health(ok=False, detail=f"folder {self.settings.path.parent} does not exist")
        return Health(ok=True, detail=f"{len(self._rows())} contacts in {self.settings.path}")

    def lists(self) -> list[MailingList]:
        return []

    def read(self, since: Cursor | None) -> Iterator[Page]:
        rows = [(str(number), row) for number, row in enumerate(self._rows(), start=1)]
        rows.sort(key=lambda item: (item[1]["updated_at"], item[0].zfill(12)))
        if since is not None:
            rows = [item for item in rows
                    if datetime.fromisoformat(item[1]["updated_at"]) >= since.at]
        size = self.settings.page_size
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            records = [Contact(email=row["email"], ids={self.name: number},
                               fields={"FirstName": row["first_name"],
                                       "LastName": row["last_name"], "OptOut": row["opt_out"]},
                               modified_at=datetime.fromisoformat(row["updated_at"]),
                               deleted=row.get("deleted") == "true")
                       for number, row in chunk]
            last_id, last = chunk[-1]
            yield Page(records=records, cursor=Cursor(
                at=datetime.fromisoformat(last["updated_at"]), tie_id=last_id))

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        rows = self._rows()
        results = []
        for change in changes:
            index = next((i for i, row in enumerate(rows)
                          if row["email"].lower() == change.email), None)
            if index is None and change.op == Op.DELETE:
                results.append(WriteResult(ok=False, error="no such contact", code="NOT_FOUND"))
                continue
            if index is None:
                rows.append({"email": change.email, "first_name": "", "last_name": "",
                             "opt_out": "false", "deleted": "false"})
                index = len(rows) - 1
            row = rows[index]
            if change.op == Op.DELETE:
                row["deleted"] = "true"
            for field, column in (("FirstName", "first_name"), ("LastName", "last_name"),
                                  ("OptOut", "opt_out")):
                if field in change.fields:
                    row[column] = change.fields[field] or ""
            row["updated_at"] = datetime.now(UTC).isoformat()
            results.append(WriteResult(ok=True, record_id=str(index + 1)))
        self._save(rows)
        return results

    def decode_event(self, request: InboundRequest) -> list[Change]:
        raise EventRejected("the CSV connector receives no events: it is polled", status=400)
