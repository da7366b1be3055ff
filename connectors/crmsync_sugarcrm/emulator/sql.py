"""The subset of SQL WHERE clauses the v4_1 emulator understands.

SuiteCRM pastes ``get_entry_list``'s ``query`` into SQL. The emulator evaluates
comparisons, ``IN`` lists, ``IN (SELECT col FROM table alias [JOIN table alias ON a = b]
[WHERE ...])``, ``IS [NOT] NULL``, ``LIKE``, ``AND`` / ``OR`` / ``NOT`` and parentheses;
anything else (or an unknown column) raises :class:`SqlError`, which the API answers
with HTTP 500 and an empty body, as SuiteCRM does for a bad query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Node", "SqlError", "id_candidates", "lower_bound", "parse_where", "pins",
           "process_order_by", "validate_clauses"]


class SqlError(ValueError):
    """A query the emulated database would refuse."""


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|''|\\.)*')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op><=|>=|<>|!=|=|<|>|\(|\)|,)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
)""", re.VERBOSE)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "SELECT", "FROM", "JOIN", "ON",
             "WHERE", "INNER", "LEFT"}

Row = Mapping[str, Any]
# A table gives its rows; ``pins`` (column -> allowed values) lets it use an index. It
# may return more rows than pinned: the WHERE clause is still applied to each.
Tables = Mapping[str, Callable[[Mapping[str, set[str]]], Iterable[Row]]]


@dataclass
class Node:
    kind: str
    args: tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise SqlError(f"syntax error near {text[position:position + 20]!r}")
        position = match.end()
        if match.group("str") is not None:
            raw = match.group("str")[1:-1]
            out.append(("lit", re.sub(r"''|\\(.)", lambda m: m.group(1) or "'", raw)))
        elif match.group("num") is not None:
            out.append(("lit", match.group("num")))
        elif match.group("op") is not None:
            out.append(("op", match.group("op")))
        else:
            name = match.group("name")
            if name.upper() in _KEYWORDS:
                out.append(("kw", name.upper()))
            else:
                out.append(("col", name.lower()))
    return out


class _Parser:
    def __init__(self, text: str, tables: Tables) -> None:
        self.tokens = _tokens(text)
        self.position = 0
        self.tables = tables

    def peek(self, offset: int = 0) -> tuple[str, Any]:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", None)

    def take(self, kind: str, value: Any = None) -> Any:
        token = self.peek()
        if token[0] != kind or (value is not None and token[1] != value):
            raise SqlError(f"expected {value or kind}, got {token[1]!r}")
        self.position += 1
        return token[1]

    def accept(self, kind: str, value: Any) -> bool:
        if self.peek() == (kind, value):
            self.position += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise SqlError(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Node:
        parts = [self.conj()]
        while self.accept("kw", "OR"):
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else Node("or", tuple(parts))

    def conj(self) -> Node:
        parts = [self.neg()]
        while self.accept("kw", "AND"):
            parts.append(self.neg())
        return parts[0] if len(parts) == 1 else Node("and", tuple(parts))

    def neg(self) -> Node:
        if self.accept("kw", "NOT"):
            return Node("not", (self.neg(),))
        return self.atom()

    def operand(self) -> Node:
        kind, value = self.peek()
        if kind in ("col", "lit"):
            self.position += 1
            return Node(kind, (value,))
        raise SqlError(f"expected a column or a value, got {value!r}")

    def atom(self) -> Node:
        if self.accept("op", "("):
            node = self.expr()
            self.take("op", ")")
            return node
        left = self.operand()
        kind, value = self.peek()
        if kind == "op" and value in ("=", "<>", "!=", "<", "<=", ">", ">="):
            self.position += 1
            return Node("cmp", (value, left, self.operand()))
        negate = self.accept("kw", "NOT")
        if self.accept("kw", "IN"):
            self.take("op", "(")
            if self.peek() == ("kw", "SELECT"):
                inner: Node = self.select()
            else:
                items = [self.operand()]
                while self.accept("op", ","):
                    items.append(self.operand())
                inner = Node("list", tuple(items))
            self.take("op", ")")
            node = Node("in", (left, inner))
            return Node("not", (node,)) if negate else node
        if self.accept("kw", "LIKE"):
            node = Node("like", (left, self.operand()))
            return Node("not", (node,)) if negate else node
        if not negate and self.accept("kw", "IS"):
            is_not = self.accept("kw", "NOT")
            self.take("kw", "NULL")
            node = Node("null", (left,))
            return Node("not", (node,)) if is_not else node
        raise SqlError(f"unexpected {value!r} after {left.args[0]!r}")

    def _table(self) -> tuple[str, str]:
        name = self.take("col")
        if name not in self.tables:
            raise SqlError(f"table {name} does not exist")
        alias = self.take("col") if self.peek()[0] == "col" else name
        return name, alias

    def select(self) -> Node:
        self.take("kw", "SELECT")
        column = self.take("col")
        self.take("kw", "FROM")
        sources = [self._table()]
        join = None
        self.accept("kw", "INNER")
        if self.accept("kw", "JOIN"):
            sources.append(self._table())
            self.take("kw", "ON")
            join = (self.take("col"), self.take("op", "="), self.take("col"))
        where = self.expr() if self.accept("kw", "WHERE") else None
        return Node("select", (column, tuple(sources), join, where))


def parse_where(text: str, tables: Tables) -> Node | None:
    """Parse a WHERE fragment (``None`` for an empty one)."""
    if not text.strip():
        return None
    return _Parser(text, tables).parse()


def _value(node: Node, row: Row) -> Any:
    if node.kind == "lit":
        return node.args[0]
    name = node.args[0]
    if name in row:
        return row[name]
    raise SqlError(f"unknown column {name}")


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    a, b = str(left), str(right)
    try:
        a_num, b_num = float(a), float(b)
    except ValueError:
        pass
    else:
        a, b = a_num, b_num  # type: ignore[assignment]
    return {"=": a == b, "<>": a != b, "!=": a != b, "<": a < b, "<=": a <= b,
            ">": a > b, ">=": a >= b}[op]


def pins(where: Node | None, alias: str) -> dict[str, set[str]]:
    """Columns of ``alias`` that the top-level AND pins to literal values."""
    parts = where.args if where is not None and where.kind == "and" else (where,)
    pins: dict[str, set[str]] = {}
    for part in parts:
        if part is None:
            continue
        if part.kind == "in" and part.args[1].kind == "list":
            column, values = part.args[0], {str(v.args[0]) for v in part.args[1].args}
        elif part.kind == "cmp" and part.args[0] == "=" and part.args[2].kind == "lit":
            column, values = part.args[1], {str(part.args[2].args[0])}
        else:
            continue
        if column.kind == "col" and column.args[0].startswith(alias + "."):
            pins[column.args[0].split(".", 1)[1]] = values
    return pins


def _rows(select: Node, tables: Tables) -> Iterable[Row]:
    _, sources, join, where = select.args
    (first, first_alias), *rest = sources

    def prefixed(alias: str, row: Row) -> dict[str, Any]:
        return {f"{alias}.{key}": value for key, value in row.items()}

    if not rest:
        for row in tables[first](pins(where, first_alias)):
            yield prefixed(first_alias, row)
        return
    second, second_alias = rest[0]
    right_rows = [prefixed(second_alias, row)
                  for row in tables[second](pins(where, second_alias))]
    left_key, _, right_key = join
    if left_key.split(".")[0] == second_alias:
        left_key, right_key = right_key, left_key
    index: dict[Any, list[Row]] = {}
    for row in right_rows:
        if right_key not in row:
            raise SqlError(f"unknown column {right_key}")
        index.setdefault(row[right_key], []).append(row)
    left_pins = pins(where, first_alias)
    left_pins[left_key.split(".", 1)[1]] = {str(key) for key in index}
    for row in tables[first](left_pins):
        left = prefixed(first_alias, row)
        if left_key not in left:
            raise SqlError(f"unknown column {left_key}")
        for other in index.get(left[left_key], []):
            yield {**left, **other}


def evaluate(node: Node | None, row: Row, tables: Tables, cache: dict[int, set[str]]) -> bool:
    """Does ``row`` match? ``cache`` keeps each subquery's result for one query."""
    if node is None:
        return True
    kind = node.kind
    if kind == "or":
        return any(evaluate(part, row, tables, cache) for part in node.args)
    if kind == "and":
        return all(evaluate(part, row, tables, cache) for part in node.args)
    if kind == "not":
        return not evaluate(node.args[0], row, tables, cache)
    if kind == "cmp":
        op, left, right = node.args
        return _compare(op, _value(left, row), _value(right, row))
    if kind == "null":
        return _value(node.args[0], row) is None
    if kind == "like":
        pattern = re.escape(str(_value(node.args[1], row))).replace("%", ".*").replace("_", ".")
        return re.fullmatch(pattern, str(_value(node.args[0], row) or ""), re.I) is not None
    if kind == "in":
        value = _value(node.args[0], row)
        return value is not None and str(value) in subquery(node.args[1], tables, cache)
    raise SqlError(f"cannot evaluate {kind}")


def subquery(node: Node, tables: Tables, cache: dict[int, set[str]]) -> set[str]:
    """The values of an IN list or the column of an IN (SELECT ...)."""
    if node.kind == "list":
        return {str(item.args[0]) for item in node.args if item.kind == "lit"}
    key = id(node)
    if key not in cache:
        column, _, _, where = node.args
        values = set()
        for row in _rows(node, tables):
            if evaluate(where, row, tables, cache):
                if column not in row:
                    raise SqlError(f"unknown column {column}")
                values.add(str(row[column]))
        cache[key] = values
    return cache[key]


def lower_bound(node: Node | None, column: str) -> str | None:
    """The smallest value of ``column`` a matching row can have, when the query says."""
    if node is None:
        return None
    if node.kind == "cmp":
        op, left, right = node.args
        if left.kind == "col" and left.args[0] == column and right.kind == "lit" \
                and op in ("=", ">", ">="):
            return str(right.args[0])
        return None
    if node.kind == "and":
        bounds = [b for b in (lower_bound(part, column) for part in node.args) if b]
        return max(bounds) if bounds else None
    if node.kind == "or":
        found = [lower_bound(part, column) for part in node.args]
        known = [b for b in found if b is not None]
        return min(known) if known and len(known) == len(found) else None
    return None


def id_candidates(node: Node | None, column: str, tables: Tables,
                  cache: dict[int, set[str]]) -> set[str] | None:
    """The only ids a matching row can have, when the query pins them (else ``None``)."""
    if node is None:
        return None
    if node.kind == "in" and node.args[0].kind == "col" and node.args[0].args[0] == column:
        return subquery(node.args[1], tables, cache)
    if node.kind == "or":
        sets = [id_candidates(part, column, tables, cache) for part in node.args]
        if any(item is None for item in sets):
            return None
        return set().union(*[item for item in sets if item is not None])
    if node.kind == "and":
        for part in node.args:
            found = id_candidates(part, column, tables, cache)
            if found is not None:
                return found
    return None


# -- SugarSQLValidate (include/SugarSQLValidate.php, SuiteCRM 7.12.14) --------------------
# Every v4_1 call that takes a ``query`` / ``order_by`` runs them through
# ``SoapHelperWebServices::checkQuery``; a refusal is the SOAP error "Access Denied" (40),
# not a 500. Subqueries are allowed in the WHERE only on these tables, must select plain
# columns, and may not hold another subquery; column names have at most one dot, only
# [a-z0-9._#] and never ``user_hash``; ORDER BY takes no subquery at all.
SUBQUERY_TABLES = frozenset({"email_addr_bean_rel", "email_addresses", "emails", "emails_beans",
                             "emails_text", "teams", "team_sets_teams"})
_COLUMN = re.compile(r"^[a-z0-9_#]+(\.[a-z0-9_#]+)?$")
_ORDER_TERM = re.compile(r"^\s*([A-Za-z0-9_#.`]+)(?:\s+(ASC|DESC))?\s*$", re.IGNORECASE)


def _column_ok(name: str) -> bool:
    name = name.lower().replace("`", "")
    return _COLUMN.match(name) is not None and "user_hash" not in name.split(".")


def _node_ok(node: Node | None, *, subqueries: bool) -> bool:
    if node is None:
        return True
    if node.kind == "col":
        return _column_ok(str(node.args[0]))
    if node.kind == "lit":
        return True
    if node.kind == "select":
        column, sources, join, where = node.args
        if not subqueries or not _column_ok(column):
            return False
        if any(table not in SUBQUERY_TABLES for table, _ in sources):
            return False
        if join is not None and not (_column_ok(join[0]) and _column_ok(join[2])):
            return False
        # SugarSQLValidate demands a WHERE in the subquery, without subqueries of its own
        return where is not None and _node_ok(where, subqueries=False)
    return all(_node_ok(arg, subqueries=subqueries) for arg in node.args
               if isinstance(arg, Node))


def validate_clauses(where: str, order_by: str, tables: Tables) -> bool:
    """Would SugarSQLValidate::validateQueryClauses pass ``where`` and ``order_by``?

    Raises :class:`SqlError` for a WHERE the emulator cannot parse at all.
    """
    if not _node_ok(parse_where(where, tables), subqueries=True):
        return False
    for term in order_by.split(",") if order_by.strip() else ():
        # "col", "col ASC|DESC"; another word reads as an alias, which is refused
        match = _ORDER_TERM.match(term)
        if match is None or not _column_ok(match.group(1)):
            return False
    return True


def process_order_by(order_by: str, fields: Iterable[str]) -> list[tuple[str, bool]]:
    """``SugarBean::process_order_by``: the terms that name a field of the module, bare.

    A term whose column is not a field name (``contacts.date_modified``, with its table
    prefix) is dropped without a word; what is left is ``(field, descending)``. With no
    term left there is no ORDER BY, and MySQL returns rows in primary-key (id) order.
    """
    known = set(fields)
    kept: list[tuple[str, bool]] = []
    for term in order_by.split(","):
        bits = term.split()
        if bits and bits[0] in known:
            kept.append((bits[0], len(bits) > 1 and bits[1].lower() == "desc"))
    return kept
