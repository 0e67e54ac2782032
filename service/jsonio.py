"""Strict JSON in and out, in one place: what a request may contain and how it is stored.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``1e999`` (which responses then cannot
encode), raises ``RecursionError`` on deep nesting and a plain ``ValueError`` on integers past
4,300 digits. Every JSON the service reads from a client goes through :func:`loads_strict`, which
turns all of these into 4xx errors; :func:`dumps_canonical` is the one encoding metadata is stored
and answered in.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from service.errors import APIError

MAX_INT_DIGITS = 64  # cheap first check, far below Python's 4,300-digit limit
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what responses (orjson) can write: 64-bit integers


def _reject_constant(name: str) -> Any:
    raise APIError(422, "invalid_json_number", f"{name} is not a JSON number (finite numbers only)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise APIError(422, "invalid_json_number", f"number {text[:32]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise APIError(
            422, "invalid_json_number", f"integer with more than {MAX_INT_DIGITS} digits"
        )
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        shown = text if len(text) <= 24 else text[:24] + "…"
        raise APIError(422, "invalid_json_number", f"integer {shown} is beyond 64 bits")
    return value


def loads_strict(data: bytes | str, what: str = "body") -> Any:
    """Parse client JSON: 400 if it is not JSON, 422 for non-finite or oversized numbers and
    nesting deeper than Python can parse."""
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_float, parse_int=_int)
    except RecursionError as exc:
        raise APIError(422, "json_too_deep", f"{what} is nested too deeply") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, "malformed_json", f"{what} is not valid JSON: {exc}") from exc
    except ValueError as exc:  # e.g. a number Python refuses to convert
        raise APIError(422, "invalid_json_number", f"{what}: {exc}") from exc


def loads_field(text: str, what: str, code: str) -> Any:
    """A form field that must hold JSON: like :func:`loads_strict`, every failure a 422 ``code``
    (the request itself was well-formed)."""
    try:
        return loads_strict(text, what)
    except APIError as exc:
        raise APIError(422, code, exc.message) from exc


def nesting_depth(value: Any) -> int:
    """Containers on the deepest path: 0 for a scalar, 1 for ``[1]``, 2 for ``{"a": [1]}``.
    Iterative, so it cannot overflow on whatever ``loads_strict`` accepted."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def dumps_canonical(value: Any) -> str:
    """Compact UTF-8 JSON, exactly as responses encode it; ValueError if that is impossible
    (non-finite floats, lone surrogates)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text.encode("utf-8")  # lone surrogates (from "\\ud800" escapes) fail here, not in a response
    return text


def metadata_problem(doc: Any, max_depth: int, max_bytes: int) -> str | None:
    """Why a metadata document cannot be stored — the rest of a sentence that begins with
    its name ("is nested deeper than 16 levels") — or None. The one check the API and bulk
    imports share (SDSSL_MAX_METADATA_DEPTH / _BYTES)."""
    if nesting_depth(doc) > max_depth:
        return f"is nested deeper than {max_depth} levels"
    try:
        size = len(dumps_canonical(doc).encode())
    except ValueError:  # e.g. a lone surrogate from a "\\ud800" escape
        return "is not encodable as UTF-8 JSON"
    if size > max_bytes:
        return (f"is {size} bytes as JSON; the limit is {max_bytes} "
                "(SDSSL_MAX_METADATA_BYTES)")  # fmt: skip
    return None


def loads_stored(text: str | None) -> Any:
    """Metadata read back from storage. Rows written before validation existed may hold NaN
    (read as null, as the item route always showed them) or lone surrogates (read as U+FFFD):
    one such row must never make a search fail."""
    if text is None:
        return None
    value = json.loads(text, parse_constant=lambda _: None)
    if "\\ud" in text or "\\uD" in text:  # an escaped surrogate: lone ones cannot be encoded
        try:
            dumps_canonical(value)
        except ValueError:
            raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
            value = json.loads(raw.decode("utf-8", "replace"))
    return value


SUSPECT = re.compile(r"NaN|Infinity|\\u[dD]")  # what legacy rows may hold (see above)


def stored_json(text: str | None) -> Any:
    """Stored metadata for a response, as it is stored — no parse and re-encode — unless it
    is a legacy row that :func:`loads_stored` must repair."""
    if text is None:
        return None
    if SUSPECT.search(text):
        return loads_stored(text)
    return orjson.Fragment(text)
