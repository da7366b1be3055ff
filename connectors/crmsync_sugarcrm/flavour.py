"""The one small interface behind which each API flavour keeps its quirks.

The connector merges streams, builds cursors and plans writes the same way for both
flavours; a :class:`SugarFlavour` only knows how to talk to its API: log in, scan a
module in ``(date_modified, id)`` order, list address changes, find records and apply
resolved writes in as few calls as the API allows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime

import httpx

from crmsync.model import WriteResult

from .records import AddressChange, RecordWrite, SugarRecord
from .settings import SugarSettings

__all__ = ["RETRYABLE_STATUSES", "SugarFlavour"]

# 500 is left out: both flavours answer a bad query with a 500 that repeats forever.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


class SugarFlavour(ABC):
    """One API flavour: ``rest`` (v10/v11) or ``v4_1`` (legacy REST)."""

    def __init__(self, settings: SugarSettings, http: httpx.Client) -> None:
        self.settings = settings
        self.http = http

    @abstractmethod
    def check(self) -> str:
        """Log in and make one authenticated call; return a short description."""

    @abstractmethod
    def target_lists(self) -> list[tuple[str, str]]:
        """Every target list (ProspectLists) as ``(id, name)``."""

    @abstractmethod
    def list_members(self, list_id: str, module: str) -> set[str]:
        """The ids of ``module`` records in target list ``list_id``."""

    @abstractmethod
    def scan(self, module: str, since: datetime | None) -> Iterator[list[SugarRecord]]:
        """Pages of records (deleted ones included) modified at or after ``since``,
        ordered by ``date_modified, id``."""

    @abstractmethod
    def address_changes(self, since: datetime) -> Iterator[list[AddressChange]]:
        """Pages of EmailAddresses rows modified at or after ``since``, in order."""

    def count(self, module: str) -> int | None:
        """How many live records ``module`` holds, as the CRM counts them (``None``: the
        API cannot say)."""
        return None

    @abstractmethod
    def find(self, module: str, *, ids: Sequence[str] = (),
             emails: Sequence[str] = ()) -> list[SugarRecord]:
        """Live records of ``module`` with one of ``ids`` or carrying one of ``emails``."""

    @abstractmethod
    def apply(self, writes: Sequence[RecordWrite]) -> dict[int, WriteResult]:
        """Apply resolved writes in batches; one result per ``RecordWrite.index``."""

    def close(self) -> None:
        """Log out when the API has a session worth ending."""
