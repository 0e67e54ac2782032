"""Metadata filters, compiled to SQL over SQLite's JSON functions — the one filter language of
search, listing and counting.

A filter is a JSON object of top-level metadata fields, all of which must hold (AND):

    {"label": "7"}                          equality (string, number, true/false, null)
    {"label": {"in": ["1", "7"]}}           one of
    {"score": {"gte": 0.5, "lt": 2}}        a range on numbers (gt, gte, lt, lte)
    {"label": {"ne": "7"}}                  not equal (items without the field match)

Field names are 1–64 characters of letters, digits and ``_-.: `` (one JSON key each, never a
path into nested values).
"""

from __future__ import annotations

import re
from typing import Any

from service.errors import APIError

FIELD = re.compile(r"^[A-Za-z0-9_\-.: ]{1,64}$")
RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_TERMS, MAX_IN = 16, 1000


def _bad(message: str) -> APIError:
    return APIError(422, "invalid_filter", message)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _equals(path: str, value: Any, negate: bool = False) -> tuple[str, list[Any]]:
    if value is None:
        sql = "coalesce(json_type(metadata, ?), 'null') = 'null'"
        return (f"NOT ({sql})" if negate else sql), [path]
    kind = "'true', 'false'" if isinstance(value, bool) else (
        "'text'" if isinstance(value, str) else "'integer', 'real'"
    )  # fmt: skip
    sql = f"(json_type(metadata, ?) IN ({kind}) AND json_extract(metadata, ?) = ?)"
    if negate:
        sql = f"NOT coalesce({sql}, 0)"
    return sql, [path, path, value]


def compile_filter(spec: Any) -> tuple[str, list[Any]]:
    """``(where, params)`` for ``SELECT … FROM items WHERE {where}``; 422 on anything else."""
    if spec is None:
        return "1", []
    if not isinstance(spec, dict) or not spec:
        raise _bad("filter must be a non-empty JSON object of metadata fields")
    if len(spec) > MAX_TERMS:
        raise _bad(f"at most {MAX_TERMS} fields per filter")
    clauses, params = [], []
    for field, cond in spec.items():
        if not FIELD.match(field):
            raise _bad(f"field names are 1-64 letters, digits and _-.: (got {field[:70]!r})")
        path = f'$."{field}"'
        if _scalar(cond):
            sql, p = _equals(path, cond)
        elif isinstance(cond, dict) and cond:
            parts, p = [], []
            for op, value in cond.items():
                if op in RANGES:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise _bad(f"{field}.{op} needs a number")
                    parts.append(f"(json_type(metadata, ?) IN ('integer', 'real') AND "
                                 f"json_extract(metadata, ?) {RANGES[op]} ?)")  # fmt: skip
                    p += [path, path, value]
                elif op == "in":
                    if not isinstance(value, list) or not value or len(value) > MAX_IN:
                        raise _bad(f"{field}.in needs a list of 1-{MAX_IN} values")
                    if not all(_scalar(v) for v in value):
                        raise _bad(f"{field}.in takes strings, numbers, true/false or null")
                    ors = [_equals(path, v) for v in value]
                    parts.append("(" + " OR ".join(sql for sql, _ in ors) + ")")
                    p += [x for _, ps in ors for x in ps]
                elif op in ("eq", "ne"):
                    if not _scalar(value):
                        raise _bad(f"{field}.{op} takes a string, number, true/false or null")
                    sql_, ps = _equals(path, value, negate=op == "ne")
                    parts.append(sql_)
                    p += ps
                else:
                    raise _bad(f"unknown operator {op[:20]!r} (use in, eq, ne, gt, gte, lt, lte)")
            sql = " AND ".join(parts)
        else:
            raise _bad(f"{field}: a value, or an object of operators")
        clauses.append(f"({sql})")
        params += p
    return " AND ".join(clauses), params
