"""docs/limits.md is the one table of the limits a request can hit: each row's value is the
code's (a setting's default or a constant), its answer's code is one the service gives, and
every ``max_*`` setting has a row."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(
    r"^\| (?P<what>[^|]+) \| (?P<limit>[^|]+) \| (?P<source>[^|]+) \| (?P<answer>.+) \|$"
)


def rows() -> list[dict[str, str]]:
    text = (ROOT / "docs" / "limits.md").read_text()
    found = [m.groupdict() for line in text.splitlines() if (m := ROW.match(line))]
    return [r for r in found if r["what"] != "what" and not r["what"].startswith("---")]


def value(limit: str) -> float:
    """The leading number of a limit cell: ``65,536 bytes``, ``10 s``, ``2^63 − 1 (and …)``."""
    if m := re.match(r"2\^(\d+)( [−-] 1)?", limit):
        return 2 ** int(m.group(1)) - (1 if m.group(2) else 0)
    m = re.match(r"[\d,.]+", limit)
    assert m, f"no number in {limit!r}"
    return float(m.group(0).replace(",", ""))


def source_value(source: str) -> float:
    name = re.search(r"`([^`]+)`", source).group(1)
    if name.startswith("SDSSL_"):
        return Settings.model_fields[name.removeprefix("SDSSL_").lower()].default
    module, attr = name.rsplit(".", 1)
    found = getattr(importlib.import_module(module), attr)
    return found(Settings()) if callable(found) else found


def test_every_row_matches_the_code() -> None:
    table = rows()
    assert len(table) >= 25
    service_code = "\n".join(p.read_text() for p in (ROOT / "service").rglob("*.py"))
    for row in table:
        assert value(row["limit"]) == source_value(row["source"]), row
        assert re.match(r"\d{3} ", row["answer"]), row
        codes = [c for c in re.findall(r"`([a-z_=]+)`", row["answer"]) if "=" not in c]
        assert codes, row
        for code in codes:
            assert f'"{code}"' in service_code, f"no answer with code {code!r}: {row}"


BATCHING = ("max_batch", "max_wait_ms")  # how batches form: no request is refused by them


def test_every_request_limit_setting_has_a_row() -> None:
    listed = " ".join(r["source"] for r in rows())
    limits = [n for n in Settings.model_fields if n.startswith("max_") or n.endswith("_timeout_s")]
    for name in [*limits, "queue_bound", "decode_queue_pixels", "min_free_bytes"]:
        if name not in BATCHING:
            assert f"SDSSL_{name.upper()}" in listed, name
