"""Metadata filters, compiled to SQL over SQLite's JSON functions — the one filter language of
search, listing and counting.

A filter is a JSON object of top-level metadata fields, all of which must hold (AND):

    {"label": "7"}                          equality (string, number, true/false, null)
    {"label": {"in": ["1", "7"]}}           one of
    {"score": {"gte": 0.5, "lt": 2}}        a range on numbers (gt, gte, lt, lte)
    {"label": {"ne": "7"}}                  not equal (items without the field match)

Field names are 1–64 characters of letters, digits and ``_-.: `` (one JSON key each, never a
path into nested values). Values are scalars, so a filter nests three levels at most (filter →
operators → an ``in`` list). Every limit below is checked before any SQL runs, and answered as a
422 naming it. A filter's cost is its number of *conditions* (one per operator; an ``in`` list
is one per kind of value in it: strings, numbers, booleans, null), each evaluated once per item:
:meth:`Filter.cost` is what the index bounds before it scans.

An ``in`` list compiles to SQL's ``IN (…)`` (a lookup per item, however long the list), never a
chain of ``OR`` (SQLite refuses a chain of 1,000 as "Expression tree is too large").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.errors import APIError

FIELD = re.compile(r"^[A-Za-z0-9_\-.: ]{1,64}$")
RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_FIELDS = 16  # fields per filter
MAX_IN = 1000  # values per `in` list
MAX_STRING_BYTES = 4096  # a string value, as UTF-8
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # SQLite's integers

# the json_type values of each kind of scalar a condition compares with
TEXT, NUMBER, BOOL = "'text'", "'integer', 'real'", "'true', 'false'"


def _bad(message: str) -> APIError:
    return APIError(422, "invalid_filter", message)


@dataclass(frozen=True)
class Filter:
    """A compiled filter: ``SELECT … FROM items WHERE {where}`` with ``params``."""

    where: str
    params: tuple[Any, ...]
    conditions: int  # evaluated per item

    def cost(self, items: int) -> int:
        """Condition evaluations a scan of ``items`` items makes."""
        return items * self.conditions


EVERYTHING = Filter("1", (), 0)


def _scalar(value: Any, where: str) -> Any:
    """``value`` checked as a filter scalar: a string, number, true/false or null that SQLite
    can bind exactly."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise _bad(f"{where}: {value} is outside the integers a filter takes, -2^63..2^63-1")
        return value
    if isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise _bad(f"{where}: the string is not valid Unicode (a lone surrogate)") from None
        if size > MAX_STRING_BYTES:
            raise _bad(f"{where}: strings are at most {MAX_STRING_BYTES} bytes as UTF-8")
        return value
    raise _bad(f"{where} takes a string, number, true/false or null")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    return TEXT if isinstance(value, str) else NUMBER


def _equals(path: str, value: Any, negate: bool = False) -> tuple[str, list[Any]]:
    if value is None:
        sql = "coalesce(json_type(metadata, ?), 'null') = 'null'"
        return (f"NOT ({sql})" if negate else sql), [path]
    sql = f"(json_type(metadata, ?) IN ({_kind(value)}) AND json_extract(metadata, ?) = ?)"
    if negate:
        sql = f"NOT coalesce({sql}, 0)"
    return sql, [path, path, value]


def _one_of(path: str, values: list[Any]) -> tuple[str, list[Any], int]:
    """``IN`` per kind of value (at most four conditions, whatever the list's length)."""
    groups: dict[str, list[Any]] = {}
    for v in values:
        groups.setdefault("null" if v is None else _kind(v), []).append(v)
    parts, params = [], []
    for kinds, group in groups.items():
        if kinds == "null":
            sql, p = _equals(path, None)
        else:
            marks = ",".join("?" * len(group))
            sql = (f"(json_type(metadata, ?) IN ({kinds}) AND "
                   f"json_extract(metadata, ?) IN ({marks}))")  # fmt: skip
            p = [path, path, *group]
        parts.append(sql)
        params += p
    return "(" + " OR ".join(parts) + ")", params, len(groups)


def compile_filter(spec: Any) -> Filter:
    """The compiled filter (:data:`EVERYTHING` for None); 422 naming the rule on anything else."""
    if spec is None:
        return EVERYTHING
    if not isinstance(spec, dict) or not spec:
        raise _bad("filter must be a non-empty JSON object of metadata fields")
    if len(spec) > MAX_FIELDS:
        raise _bad(f"at most {MAX_FIELDS} fields per filter (got {len(spec)})")
    clauses, params, conditions = [], [], 0
    for field, cond in spec.items():
        if not FIELD.match(field):
            raise _bad(f"field names are 1-64 letters, digits and _-.: (got {field[:70]!r})")
        path = f'$."{field}"'
        if not isinstance(cond, dict | list):
            sql, p = _equals(path, _scalar(cond, field))
            conditions += 1
        elif isinstance(cond, dict) and cond:
            parts, p = [], []
            for op, value in cond.items():
                where = f"{field}.{op[:20]}"
                if op in RANGES:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise _bad(f"{where} needs a number")
                    parts.append(f"(json_type(metadata, ?) IN ({NUMBER}) AND "
                                 f"json_extract(metadata, ?) {RANGES[op]} ?)")  # fmt: skip
                    p += [path, path, _scalar(value, where)]
                    conditions += 1
                elif op == "in":
                    if not isinstance(value, list) or not value or len(value) > MAX_IN:
                        got = f" (got {len(value)})" if isinstance(value, list) else ""
                        raise _bad(f"{where} needs a list of 1-{MAX_IN} values{got}")
                    checked = [_scalar(v, f"{where}[{i}]") for i, v in enumerate(value)]
                    sql_, ps, n = _one_of(path, checked)
                    parts.append(sql_)
                    p += ps
                    conditions += n
                elif op in ("eq", "ne"):
                    if isinstance(value, dict | list):
                        raise _bad(f"{where} takes a string, number, true/false or null")
                    sql_, ps = _equals(path, _scalar(value, where), negate=op == "ne")
                    parts.append(sql_)
                    p += ps
                    conditions += 1
                else:
                    raise _bad(f"unknown operator {op[:20]!r} (use in, eq, ne, gt, gte, lt, lte)")
            sql = " AND ".join(parts)
        else:
            raise _bad(f"{field}: a value, or an object of operators")
        clauses.append(f"({sql})")
        params += p
    return Filter(" AND ".join(clauses), tuple(params), conditions)
