"""What a batch run shows while it works, fed by the engine's ``progress(phase, n)``.

- on a terminal: a rich progress bar per phase; the CRM read has a total (the CRM's own
  count, where the connector offers ``full_read_count()`` during a full read) and an ETA;
- not on a terminal: plain lines on stderr, each phase when it starts, then its count
  (and share of the total, and time left) at most every ``every`` seconds;
- with ``--log-format json``: the same as log records (logger ``crmsync.progress``);
- with ``--json``: nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["READ_PHASE", "RunProgress"]

READ_PHASE = "crm read"
log = logging.getLogger("crmsync.progress")

Mode = Literal["bar", "lines", "log", "none"]


class RunProgress:
    """The ``progress`` callback of a batch run, and how it is shown (``mode``).

    ``total``: called once, when the CRM read's first page is in (a connector knows
    its count once the read started); ``None`` or an error means no total.
    """

    def __init__(self, what: str, mode: Mode, *, total: Callable[[], int | None] | None = None,
                 every: float = 5.0) -> None:
        self.what = what
        self.mode = mode
        self.every = every
        self._total_of = total
        self.total: int | None = None
        self.started = time.monotonic()
        self.counts: dict[str, int] = {}
        self.phase_started: dict[str, float] = {}
        self.said = 0.0
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), disable=mode != "bar", transient=True,
                            console=Console(stderr=True))
        self.tasks: dict[str, TaskID] = {}
        if mode == "log":
            log.setLevel(logging.INFO)  # shown at the default level, as the lines are

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        self.tasks["start"] = self.bar.add_task(self.what, total=None)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, exc, tb)

    def say(self, text: str) -> None:
        """One line of what the run does (not on a terminal bar, nor with --json)."""
        elapsed = time.monotonic() - self.started
        if self.mode == "lines":
            click.echo(f"crmsync: {text} ({elapsed:.0f}s)", err=True)
        elif self.mode == "log":
            log.info(text, extra={"elapsed_s": round(elapsed, 1)})

    def __call__(self, phase: str, n: int) -> None:
        now = time.monotonic()
        first = phase not in self.counts
        if first:
            self.phase_started[phase] = now
        self.counts[phase] = count = self.counts.get(phase, 0) + n
        if first and phase == READ_PHASE and self._total_of is not None:
            self.total = self._ask_total()
        total = self.total if phase == READ_PHASE else None
        if self.mode == "bar":
            if phase not in self.tasks:
                self.tasks[phase] = self.bar.add_task(phase, total=total)
            self.bar.advance(self.tasks[phase], n)
            return
        if first or now - self.said >= self.every:
            self.said = now
            self.say(self._line(phase, count, total, now))

    def _line(self, phase: str, count: int, total: int | None, now: float) -> str:
        if not total:
            return f"{phase}: {count:,}"
        share = min(count / total, 1.0)
        spent = now - self.phase_started[phase]
        left = spent / share * (1 - share) if share and count > 0 else None
        eta = f", about {left:.0f}s left" if left is not None and spent > 0 else ""
        return f"{phase}: {count:,} of {total:,} ({share:.0%}{eta})"

    def _ask_total(self) -> int | None:
        assert self._total_of is not None
        try:
            value = self._total_of()
        except Exception as exc:  # a count is a nicety: never the run's failure
            log.debug("no total for the progress: %s", exc)
            return None
        return value if value and value > 0 else None
