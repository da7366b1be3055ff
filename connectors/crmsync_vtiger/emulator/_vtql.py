"""The subset of VTQL the emulator understands, with the real server's error codes.

Grammar: ``SELECT cols|*|count(*) FROM Module [WHERE c op v {AND|OR} ...]
[ORDER BY col [ASC|DESC]] [LIMIT n | LIMIT off,n];`` with ``= != <> < > <= >= LIKE IN``.
As on vTiger 8.0.0: a missing ``;`` is ``QUERY_SYNTAX_ERROR``; an unknown module, an
unknown column or a mangled ``FROM`` is ``ACCESS_DENIED``; an empty string literal
(``email = ''``) is ``INTERNAL_SERVER_ERROR``; there is no ``IS NULL``; there are no parentheses
for grouping, no joins and no ``OFFSET``. ``LIMIT`` defaults to, and is capped at, 100.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ROW_CAP", "Condition", "Query", "VtqlError", "parse"]

ROW_CAP = 100

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),*;])
""", re.VERBOSE)


_DENIED_QUERY = "Permission to perform the operation is denied for query"


def _denied_column(column: str) -> str:
    return f"Permission to access '.{column}.' attribute denied."


class VtqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Condition:
    column: str
    op: str  # = != < > <= >= like in
    values: tuple[str, ...]


@dataclass
class Query:
    module: str
    columns: list[str] | None  # None = *
    count: bool = False
    # OR of AND-groups: AND binds tighter than OR, as in MySQL
    where: list[list[Condition]] = field(default_factory=list)
    order_by: str | None = None
    descending: bool = False
    offset: int = 0
    limit: int = ROW_CAP


def _syntax(token: str, expected: str) -> VtqlError:
    return VtqlError("QUERY_SYNTAX_ERROR",
                     f"Syntax Error on line 1: token '{token}' Unexpected {expected}")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _syntax(text[position:position + 10], "character")
        position = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


class _Parser:
    def __init__(self, text: str, known: Callable[[str], frozenset[str] | None]) -> None:
        self.tokens = _tokens(text)
        self.position = 0
        self.known = known

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def next(self, expected: str) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            last = self.tokens[-1][1] if self.tokens else ""
            raise VtqlError("QUERY_SYNTAX_ERROR", f"Syntax Error on line 1: token '{last}' "
                            f"Unexpected End of Input(0), expected one of: {expected}")
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "name" and token[1].lower() == word:
            self.position += 1
            return True
        return False

    def parse(self) -> Query:
        if not self.keyword("select"):
            raise VtqlError("ACCESS_DENIED", _DENIED_QUERY)
        columns: list[str] | None = []
        count = False
        token = self.next("COLUMNNAME")
        if token == ("punct", "*"):
            columns = None
        elif token[0] == "name" and token[1].lower() == "count":
            for expected in ("(", "*", ")"):
                if self.next(expected)[1] != expected:
                    raise _syntax(token[1], f"expected {expected}")
            count, columns = True, None
        else:
            assert columns is not None
            while True:
                if token[0] != "name":
                    raise _syntax(token[1], "expected COLUMNNAME")
                columns.append(token[1].lower())
                if self.peek() != ("punct", ","):
                    break
                self.position += 1
                token = self.next("COLUMNNAME")
        if not self.keyword("from"):
            # vTiger 8.0.0 answers a mangled FROM with ACCESS_DENIED, not a syntax error.
            raise VtqlError("ACCESS_DENIED", _DENIED_QUERY)
        kind, module = self.next("MODULENAME")
        known = self.known(module) if kind == "name" else None
        if known is None:
            raise VtqlError("ACCESS_DENIED", _DENIED_QUERY)
        query = Query(module=module, columns=columns, count=count)
        for column in columns or []:
            if column not in known:
                raise VtqlError("ACCESS_DENIED", _denied_column(column))
        if self.keyword("where"):
            group: list[Condition] = [self.condition(known)]
            while True:
                if self.keyword("and"):
                    group.append(self.condition(known))
                elif self.keyword("or"):
                    query.where.append(group)
                    group = [self.condition(known)]
                else:
                    break
            query.where.append(group)
        if self.keyword("order"):
            if not self.keyword("by"):
                raise _syntax(self.next("BY")[1], "expected BY")
            kind, column = self.next("COLUMNNAME")
            if kind != "name":
                raise _syntax(column, "expected COLUMNNAME")
            if column.lower() not in known:
                raise VtqlError("ACCESS_DENIED", _denied_column(column))
            query.order_by = column.lower()
            if self.keyword("desc"):
                query.descending = True
            else:
                self.keyword("asc")
        if self.keyword("limit"):
            first = self.next("NUMBER")
            if first[0] != "number":
                raise _syntax(first[1], "expected NUMBER")
            if self.peek() == ("punct", ","):
                self.position += 1
                second = self.next("NUMBER")
                if second[0] != "number":
                    raise _syntax(second[1], "expected NUMBER")
                query.offset, query.limit = int(first[1]), int(second[1])
            else:
                query.limit = int(first[1])
            query.limit = max(0, min(query.limit, ROW_CAP))
        end = self.next("SEMICOLON")
        if end != ("punct", ";"):
            raise _syntax(end[1], f"{end[1]}, expected one of: SEMICOLON")
        if self.peek() is not None:
            raise _syntax(self.tokens[self.position][1], "input after SEMICOLON")
        return query

    def value(self) -> str:
        kind, text = self.next("VALUE")
        if kind == "string":
            if text == "''":
                # vTiger 8.0.0 fails on an empty string literal (email = '', lastname = '',
                # email like ''), seen on the real server
                raise VtqlError("INTERNAL_SERVER_ERROR", "Unknown Error while processing request")
            return _unquote(text)
        if kind == "number":
            return text
        raise _syntax(text, "expected VALUE")

    def condition(self, known: frozenset[str]) -> Condition:
        kind, column = self.next("COLUMNNAME")
        if kind != "name":
            # a "(" here is grouping, which VTQL does not have
            raise _syntax(column, "expected COLUMNNAME")
        column = column.lower()
        if column not in known:
            raise VtqlError("ACCESS_DENIED", _denied_column(column))
        if self.keyword("in"):
            if self.next("(") != ("punct", "("):
                raise _syntax(column, "expected (")
            values = [self.value()]
            while self.peek() == ("punct", ","):
                self.position += 1
                values.append(self.value())
            if self.next(")") != ("punct", ")"):
                raise _syntax(column, "expected )")
            return Condition(column, "in", tuple(values))
        if self.keyword("like"):
            return Condition(column, "like", (self.value(),))
        kind, op = self.next("OPERATOR")
        if kind != "op":
            # as vTiger 8.0.0 words it (e.g. for "email is null", seen on the real server)
            raise _syntax(op, f"VALUE({op}), expected one of: EQ,LT,GT,LTE,GTE,NE,IN,LIKE")
        return Condition(column, "!=" if op == "<>" else op, (self.value(),))


def parse(text: str, known: Callable[[str], frozenset[str] | None]) -> Query:
    """Parse ``text``; ``known(module)`` gives the module's column names or None."""
    return _Parser(text, known).parse()


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _compare(left: str, right: str) -> int:
    """MySQL-like: numbers as numbers, text case-insensitively."""
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return (a > b) - (a < b)
    x, y = left.lower(), right.lower()
    return (x > y) - (x < y)


def _like(value: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None


def matches(condition: Condition, value: str) -> bool:
    op = condition.op
    if op == "in":
        return any(_compare(value, v) == 0 for v in condition.values)
    if op == "like":
        return _like(value, condition.values[0])
    result = _compare(value, condition.values[0])
    return {"=": result == 0, "!=": result != 0, "<": result < 0, ">": result > 0,
            "<=": result <= 0, ">=": result >= 0}[op]


def predicate(query: Query, value_of: Callable[[Any, str], str]) -> Callable[[Any], bool]:
    """A filter for rows; ``value_of(row, column)`` reads a column as the server compares it."""
    if not query.where:
        return lambda row: True

    def test(row: Any) -> bool:
        return any(all(matches(c, value_of(row, c.column)) for c in group)
                   for group in query.where)

    return test
