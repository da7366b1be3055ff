"""A full CRM read must come back whole: compared with the CRM's own count.

A connector whose paging skips records (an ``order_by`` the vendor ignores, offsets
that shift) would otherwise end a run "succeeded" with contacts missing at the ESP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..contract import Connector
from ..errors import RemoteError
from ..model import Page

__all__ = ["IncompleteRead", "checked_full_read"]


class IncompleteRead(RemoteError):
    """A full read yielded fewer distinct records than the CRM counts."""


def checked_full_read(crm: Connector, pages: Iterator[Page],
                      on_short: Callable[[], None]) -> Iterator[Page]:
    """Yield ``pages``; at their end compare the distinct records read with
    ``crm.full_read_count()``. When short, call ``on_short`` (the caller forgets its
    cursor, so that the next run reads everything again) and raise
    :class:`IncompleteRead`."""
    seen: set[int] = set()  # hashes: a million ids in a few tens of MB
    for page in pages:
        for record in page.records:
            seen.add(hash(record.ids.get(crm.name) or record.email))
        seen.update(hash(rejected.record_id) for rejected in page.rejected)  # read, reported
        yield page
    expected = crm.full_read_count()
    if expected is None or len(seen) >= expected:
        return
    on_short()
    raise IncompleteRead(
        f"full read of {crm.name} came up short: {len(seen)} distinct records read, but "
        f"{crm.name} counts {expected}; the run fails so that no contact is silently "
        "left out (what was read was synced; the next run reads everything again). "
        "If it happens again, report it with the connector's version and its page size; "
        "a smaller page_size may work around it", code="incomplete_read", retryable=True)
