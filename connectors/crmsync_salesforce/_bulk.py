"""Bulk API 2.0: query jobs streamed page by page, ingest jobs with their results.

Jobs outlive sessions, so a session renewed mid-job simply continues with the same
job id and locator (the refresh happens in :meth:`SalesforceApi.request`). Query
results are parsed as they arrive, one ``Sforce-Locator`` page at a time, never
holding the whole CSV.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from crmsync.errors import RemoteError
from crmsync.files import large_csv_fields

from ._rest import SalesforceApi

__all__ = ["BulkJobFailed", "BulkResults", "bulk_ingest", "bulk_query"]

_DONE = {"JobComplete", "Failed", "Aborted"}
_PAGE_ATTEMPTS = 3


class BulkJobFailed(RemoteError):
    """A Bulk 2.0 job ended ``Failed`` or ``Aborted``: nothing was applied or read from it."""

    def __init__(self, job: dict[str, Any]) -> None:
        reason = job.get("errorMessage") or job.get("state")
        super().__init__(f"Salesforce Bulk job {job.get('id')} ended {job.get('state')}: "
                         f"{reason}; its records were kept and will be retried on the next run",
                         code="BULK_JOB_FAILED", retryable=True)
        self.job = job


def _wait(api: SalesforceApi, kind: str, job_id: str) -> dict[str, Any]:
    delay, deadline = 0.05, time.monotonic() + api.settings.bulk_timeout
    while True:
        job: dict[str, Any] = api.json("GET", f"jobs/{kind}/{job_id}")
        if job.get("state") in _DONE:
            if job["state"] != "JobComplete":
                raise BulkJobFailed(job)
            return job
        if time.monotonic() > deadline:
            raise RemoteError(f"Salesforce Bulk job {job_id} still {job.get('state')} after "
                              f"{api.settings.bulk_timeout:.0f}s: raise bulk_timeout or retry",
                              code="BULK_TIMEOUT", retryable=True)
        api.sleep(delay)
        delay = min(delay * 2, api.settings.bulk_poll_max_interval)


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines with their endings, so ``csv`` can join quoted multi-line values."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"
    if pending:
        yield pending


def bulk_query(api: SalesforceApi, soql: str, *, all_rows: bool = False
               ) -> Iterator[dict[str, str]]:
    """Rows of a Bulk 2.0 query job (``""`` for null), streamed page by page."""
    job = api.json("POST", "jobs/query", json={
        "operation": "queryAll" if all_rows else "query", "query": soql,
        "columnDelimiter": "COMMA", "lineEnding": "LF"})
    _wait(api, "query", job["id"])
    locator = ""
    with large_csv_fields():  # a long text area holds up to 131,072 characters
        while True:
            params = {"maxRecords": str(api.settings.bulk_page_size)}
            if locator:
                params["locator"] = locator
            # A page is streamed, so the retrying transport does not read it: a connection
            # cut in the middle of a page asks for the same page again (a locator gives the
            # same rows) and skips the rows already passed on.
            done = 0
            for attempt in range(_PAGE_ATTEMPTS):
                response = api.request("GET", f"jobs/query/{job['id']}/results", params=params,
                                       headers={"Accept": "text/csv"}, stream=True)
                try:
                    for index, row in enumerate(csv.DictReader(_lines(response.iter_text()))):
                        if index >= done:
                            done += 1
                            yield row
                    next_locator = response.headers.get("Sforce-Locator", "")
                    break
                except httpx.TransportError as exc:
                    if attempt + 1 == _PAGE_ATTEMPTS:
                        raise RemoteError(
                            f"Salesforce cut off Bulk query {job['id']} results {_PAGE_ATTEMPTS} "
                            f"times ({type(exc).__name__}); the next run reads them again",
                            retryable=True) from None
                finally:
                    response.close()
            locator = next_locator
            if not locator or locator == "null":  # the last page says the string "null"
                return


class BulkResults:
    """What an ingest job did to each row: ``ok`` and ``failed`` keyed by record id."""

    def __init__(self) -> None:
        self.ok: dict[str, str] = {}  # key -> sf__Id
        self.failed: dict[str, str] = {}  # key -> sf__Error


def _csv(header: list[str], rows: Iterable[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def bulk_ingest(api: SalesforceApi, obj: str, operation: str, header: list[str],
                rows: list[list[str]], *, key_column: str = "Id") -> BulkResults:
    """Run one ingest job; results keyed by ``key_column`` of the uploaded rows."""
    job = api.json("POST", "jobs/ingest", json={
        "object": obj, "operation": operation, "contentType": "CSV",
        "columnDelimiter": "COMMA", "lineEnding": "LF"})
    try:
        api.request("PUT", f"jobs/ingest/{job['id']}/batches", content=_csv(header, rows),
                    headers={"Content-Type": "text/csv; charset=UTF-8"})
        api.json("PATCH", f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    except RemoteError:
        # An Open job would linger for a day; abort it so the next run starts clean.
        with contextlib.suppress(RemoteError):
            api.request("PATCH", f"jobs/ingest/{job['id']}", json={"state": "Aborted"})
        raise
    _wait(api, "ingest", job["id"])
    results = BulkResults()
    for name, target, value_column in (("successfulResults", results.ok, "sf__Id"),
                                       ("failedResults", results.failed, "sf__Error")):
        response = api.request("GET", f"jobs/ingest/{job['id']}/{name}/",
                               headers={"Accept": "text/csv"})
        with large_csv_fields():
            for row in csv.DictReader(io.StringIO(response.text)):
                key = row.get(key_column) or row.get("sf__Id") or ""
                target[key] = row.get(value_column, "")
    return results
