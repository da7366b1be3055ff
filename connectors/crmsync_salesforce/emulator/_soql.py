"""The SOQL subset the emulator understands, parsed into a :class:`Query`.

Grammar (case-insensitive keywords)::

    SELECT field [, field | (SELECT field, ... FROM ChildRelationship)]... | COUNT()
    FROM Object
    [WHERE cond [AND cond]...]        cond: field op literal | field [NOT] IN (literal, ...)
    [ORDER BY field [ASC|DESC] [, ...]]
    [LIMIT n]

Literals: 'quoted strings' (with SOQL backslash escapes), true, false, null, numbers
and unquoted ISO-8601 datetimes. Anything else is a ``MALFORMED_QUERY``, as the real
API answers for what it cannot parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Condition", "Query", "SoqlError", "parse", "parse_datetime"]


class SoqlError(ValueError):
    """The query is outside the subset (or plainly malformed)."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:\\.|[^'\\])*')
      | (?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op>!=|<>|>=|<=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def parse_datetime(text: str) -> datetime:
    value = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", value):
        value = value[:-2] + ":" + value[-2:]
    return datetime.fromisoformat(value).astimezone(UTC)


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # = != < <= > >= IN NOTIN
    value: Any


@dataclass(frozen=True)
class Query:
    object: str
    fields: tuple[str, ...]
    children: dict[str, tuple[str, ...]] = field(default_factory=dict)
    where: tuple[Condition, ...] = ()
    order: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    limit: int | None = None
    count: bool = False


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise SoqlError(f"unexpected token at: {text[pos:pos + 20]!r}")
            kind = match.lastgroup or ""
            self.items.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.items[self.pos] if self.pos < len(self.items) else ("end", "")

    def take(self) -> tuple[str, str]:
        item = self.peek()
        self.pos += 1
        return item

    def keyword(self, word: str) -> bool:
        kind, value = self.peek()
        if kind == "word" and value.upper() == word:
            self.pos += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise SoqlError(f"expected {word}, got {self.peek()[1]!r}")

    def expect(self, punct: str) -> None:
        _, value = self.take()
        if value != punct:
            raise SoqlError(f"expected {punct!r}, got {value!r}")

    def name(self) -> str:
        kind, value = self.take()
        if kind != "word":
            raise SoqlError(f"expected a field or object name, got {value!r}")
        return value


def _literal(tokens: _Tokens) -> Any:
    kind, value = tokens.take()
    if kind == "string":
        body = value[1:-1]
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)
    if kind == "datetime":
        return parse_datetime(value)
    if kind == "number":
        return float(value) if "." in value else int(value)
    if kind == "word" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "word" and value.lower() == "null":
        return None
    raise SoqlError(f"expected a literal, got {value!r}")


def _select_list(tokens: _Tokens, *, nested: bool) -> tuple[list[str], dict[str, tuple[str, ...]],
                                                              bool]:
    fields: list[str] = []
    children: dict[str, tuple[str, ...]] = {}
    if tokens.keyword("COUNT"):
        tokens.expect("(")
        tokens.expect(")")
        return fields, children, True
    while True:
        if tokens.peek()[1] == "(":
            if nested:
                raise SoqlError("nested subqueries are not supported")
            tokens.take()
            tokens.expect_keyword("SELECT")
            child_fields, _, _ = _select_list(tokens, nested=True)
            tokens.expect_keyword("FROM")
            relation = tokens.name()
            tokens.expect(")")
            children[relation] = tuple(child_fields)
        else:
            fields.append(tokens.name())
        if tokens.peek()[1] != ",":
            return fields, children, False
        tokens.take()


def parse(text: str) -> Query:
    """Parse ``text`` or raise :class:`SoqlError`."""
    tokens = _Tokens(text)
    tokens.expect_keyword("SELECT")
    fields, children, count = _select_list(tokens, nested=False)
    tokens.expect_keyword("FROM")
    obj = tokens.name()
    where: list[Condition] = []
    if tokens.keyword("WHERE"):
        while True:
            name = tokens.name()
            negate = tokens.keyword("NOT")
            if tokens.keyword("IN"):
                tokens.expect("(")
                values = [_literal(tokens)]
                while tokens.peek()[1] == ",":
                    tokens.take()
                    values.append(_literal(tokens))
                tokens.expect(")")
                where.append(Condition(name, "NOTIN" if negate else "IN", tuple(values)))
            elif negate:
                raise SoqlError("NOT is only supported before IN")
            else:
                kind, op = tokens.take()
                if kind != "op":
                    raise SoqlError(f"expected an operator after {name}, got {op!r}")
                where.append(Condition(name, "!=" if op == "<>" else op, _literal(tokens)))
            if tokens.keyword("OR"):
                raise SoqlError("OR is not supported by this emulator")
            if not tokens.keyword("AND"):
                break
    order: list[tuple[str, bool]] = []
    if tokens.keyword("ORDER"):
        tokens.expect_keyword("BY")
        while True:
            name = tokens.name()
            descending = tokens.keyword("DESC")
            if not descending:
                tokens.keyword("ASC")
            order.append((name, descending))
            if tokens.peek()[1] != ",":
                break
            tokens.take()
    limit = None
    if tokens.keyword("LIMIT"):
        kind, value = tokens.take()
        if kind != "number":
            raise SoqlError(f"LIMIT needs a number, got {value!r}")
        limit = int(value)
    if tokens.peek()[0] != "end":
        raise SoqlError(f"unexpected token {tokens.peek()[1]!r}")
    return Query(object=obj, fields=tuple(fields), children=children, where=tuple(where),
                 order=tuple(order), limit=limit, count=count)
