"""The commit spool: what a file-mode export commits once its import file is up.

An export streams its contacts into the import file and, beside it, what each one will
commit (:class:`~crmsync.state.records.StateUpdate`) — a local append is far cheaper
than a row in the state store, and nothing may be committed before the ESP has the
file. Once the file is uploaded the spool is executed in one transaction
(:meth:`StateStore.commit_spool`); a run killed in between finds the spool at recovery.

The spool holds the rows already in the store's own form, a page of them per frame,
in :mod:`marshal`'s format: it carries ``None`` and text of any length as they are
(CSV has no NULL and caps its cells unless a process-wide limit is raised), and
writes and reads a page at C speed. marshal only loads plain values (no code, no
objects); a damaged frame raises an error the store reports. The format is
version-tagged, and the spool is transient: written and read by the same crmsync,
unless a run is killed just before an upgrade — then a spool of another format is
refused with what to do.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

__all__ = ["SPOOL_SUFFIX", "SpoolWriter", "read_spool"]

SPOOL_SUFFIX = ".commit"
_MAGIC = ("crmsync-commit-spool", 2)

# One spooled row: a tag, then the values of that kind of row (see StateStore).
Row = tuple[Any, ...]


class SpoolWriter:
    """Appends frames of rows to a spool file; :meth:`close` makes it durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: BinaryIO = path.open("wb")
        marshal.dump(_MAGIC, self._out)

    def write(self, rows: Sequence[Row]) -> None:
        if rows:
            marshal.dump(list(rows), self._out)

    def close(self) -> None:
        """Flush and fsync: the import file's upload must not outrun its commit."""
        if self._out.closed:
            return
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def read_spool(path: Path) -> Iterator[list[Row]]:
    """The frames of a spool, in order. Raises ``ValueError`` for a file that is not a
    spool of this format or is damaged (truncated, overwritten)."""
    with path.open("rb") as handle:  # a BufferedReader (peek)
        try:
            head = marshal.load(handle)  # noqa: S302 (our own file; plain values only)
        except (EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"not a commit spool ({exc})") from None
        if head != _MAGIC:
            raise ValueError(f"not a commit spool of this crmsync (header {head!r:.60})")
        while handle.peek(1):  # at the end of the file: every frame was read
            try:
                frame = marshal.load(handle)  # noqa: S302 (see the module doc)
            except (EOFError, ValueError, TypeError) as exc:  # cut short, or overwritten
                raise ValueError(f"damaged frame ({exc})") from None
            if not isinstance(frame, list):
                raise ValueError(f"damaged frame (a {type(frame).__name__})")
            yield frame
