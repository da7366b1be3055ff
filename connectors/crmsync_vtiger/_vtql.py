"""Building VTQL statements the server accepts.

VTQL has no parameters: values are quoted literals (``'...'`` with backslash escapes),
every statement ends with ``;`` (without it: ``QUERY_SYNTAX_ERROR``), there is no
``OFFSET`` keyword (``LIMIT off,n``) and no statement returns more than 100 rows.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ROW_CAP", "in_list", "literal", "select"]

ROW_CAP = 100


def literal(value: str) -> str:
    """A quoted VTQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_list(values: Iterable[str]) -> str:
    return "(" + ",".join(literal(v) for v in values) + ")"


def select(module: str, *, columns: str = "*", where: str = "", order_by: str = "",
           offset: int = 0, limit: int = ROW_CAP) -> str:
    statement = f"select {columns} from {module}"
    if where:
        statement += f" where {where}"
    if order_by:
        statement += f" order by {order_by}"
    return statement + f" limit {offset},{min(limit, ROW_CAP)};"
