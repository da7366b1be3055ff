"""Paginators for the shapes vendors page in, each with its "stop only when done" rule.

Each takes a ``fetch`` function that makes one call and returns the page's items with
what the vendor said about what comes next; it yields the non-empty pages in order. A
page shorter than asked is never taken for the last one (vendors cap page sizes on
their own), and a vendor that hands back the same position twice raises a
:class:`~crmsync.errors.RemoteError` instead of looping for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import RemoteError

__all__ = ["cursor_pages", "keyset_pages", "next_url_pages", "offset_pages", "page_number_pages"]

T = TypeVar("T")
K = TypeVar("K")


def page_number_pages(fetch: Callable[[int], tuple[Sequence[T], int | None]], *,
                      first: int = 0) -> Iterator[Sequence[T]]:
    """``fetch(page_number) -> (items, total or None)``. Done on an empty page, or once
    ``total`` items were read."""
    return _counted(fetch, lambda pages, seen: first + pages)


def offset_pages(fetch: Callable[[int], tuple[Sequence[T], int | None]]
                 ) -> Iterator[Sequence[T]]:
    """``fetch(offset) -> (items, total or None)``; the next offset is the count read.
    Done on an empty page, or once ``total`` items were read."""
    return _counted(fetch, lambda pages, seen: seen)


def _counted(fetch: Callable[[int], tuple[Sequence[T], int | None]],
             position: Callable[[int, int], int]) -> Iterator[Sequence[T]]:
    pages = seen = 0
    while True:
        items, total = fetch(position(pages, seen))
        if not items:
            return
        pages, seen = pages + 1, seen + len(items)
        yield items
        if total is not None and seen >= total:
            return


def next_url_pages(fetch: Callable[[str | None], tuple[Sequence[T], str | None]]
                   ) -> Iterator[Sequence[T]]:
    """``fetch(url or None for the first page) -> (items, next URL or None)``. Done
    when the vendor gives no next URL (an empty page with one is followed)."""
    yield from cursor_pages(fetch)


def cursor_pages(fetch: Callable[[Any], tuple[Sequence[T], Any]], *,
                 start: Any = None) -> Iterator[Sequence[T]]:
    """``fetch(cursor or start) -> (items, next cursor or None)``: a locator, an
    ``after`` token, a next offset. Done only when no next cursor comes (an empty page
    with a cursor is followed); the same cursor twice is an error, not a loop."""
    cursor, seen = start, set[Hashable]()
    while True:
        items, following = fetch(cursor)
        if items:
            yield items
        if following is None or following == "":
            return
        if following in seen or following == cursor:
            raise RemoteError(f"the vendor handed back the page position {following!r} "
                              "twice: paging stopped instead of looping", retryable=True)
        seen.add(following)
        cursor = following


def keyset_pages(fetch: Callable[[K | None], Sequence[T]], key: Callable[[T], K], *,
                 after: K | None = None) -> Iterator[list[T]]:
    """An id-ordered full read: ``fetch(last key or None)`` returns the next records with
    a key past it, in key order. Done on an empty page (or one holding only the last key
    again). Records whose key is not past the last one yielded are dropped (nothing
    twice), and a page that goes back before the last key is an error, not a loop."""
    last = after
    while True:
        items = fetch(last)
        if not items:
            return
        page = [item for item in items if last is None or key(item) > last]  # type: ignore[operator]
        if not page:
            if all(key(item) == last for item in items):
                return  # a vendor whose "after" is inclusive served the last one again
            raise RemoteError("the vendor answered a page that does not move past the last "
                              f"key {last!r}: is the read ordered by that key?",
                              retryable=True)
        last = key(page[-1])
        yield page
