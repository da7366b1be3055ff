"""Writing in batches: one :class:`~crmsync.model.WriteResult` per change, in order."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TypeVar

from ..errors import RemoteError
from ..model import WriteResult

__all__ = ["chunks", "failure", "results_in_order", "write_batches"]

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    if size < 1:
        raise ValueError("a batch holds at least one item")
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_batches(items: Sequence[T], size: int,
                  send: Callable[[Sequence[T]], Sequence[WriteResult]], *,
                  send_one: Callable[[T], WriteResult] | None = None) -> list[WriteResult]:
    """Send ``items`` in batches of ``size`` with ``send`` (one result per item, in
    order: :func:`results_in_order` maps a partial, 207-style answer).

    A batch the vendor refuses whole with an error that is not retryable (one bad record
    fails the lot) is sent again record by record with ``send_one``, so the good records
    are written and only the bad one fails; without ``send_one``, or for a retryable
    error (an outage), each item of the batch gets the error as its result.
    """
    results: list[WriteResult] = []
    for batch in chunks(items, size):
        try:
            answer = list(send(batch))
            if len(answer) != len(batch):
                raise RemoteError(f"the vendor answered {len(answer)} results for a batch of "
                                  f"{len(batch)}: the batch is retried later",
                                  retryable=True)
        except RemoteError as exc:
            if send_one is not None and not exc.retryable and len(batch) > 1:
                answer = [_one(send_one, item) for item in batch]
            else:
                answer = [failure(exc)] * len(batch)
        results.extend(answer)
    return results


def _one(send_one: Callable[[T], WriteResult], item: T) -> WriteResult:
    try:
        return send_one(item)
    except RemoteError as exc:
        return failure(exc)


def failure(exc: RemoteError) -> WriteResult:
    """The result of a change that failed with ``exc``."""
    return WriteResult(ok=False, error=str(exc), code=exc.code, retryable=exc.retryable,
                       retry_after=getattr(exc, "retry_after", None))


def results_in_order(items: Sequence[T], key: Callable[[T], Hashable],
                     done: Mapping[Hashable, str | None],
                     failed: Mapping[Hashable, WriteResult]) -> list[WriteResult]:
    """One result per item, in order, from an answer that names items by key: ``done``
    maps a key to the record id written, ``failed`` to the failure. An item the answer
    does not mention fails, retryable (the vendor did not say it was written)."""
    out = []
    for item in items:
        k = key(item)
        if k in failed:
            out.append(failed[k])
        elif k in done:
            out.append(WriteResult(ok=True, record_id=done[k]))
        else:
            out.append(WriteResult(ok=False, error="the vendor's answer to the batch did not "
                                   "mention this record: it is written again later",
                                   code="missing", retryable=True))
    return out
