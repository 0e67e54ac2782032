"""``python -m bench NAME [ARGS]`` (``sdssl-bench``): run one benchmark, or ``report`` for all of
them (what ``make bench`` runs). ``python -m bench`` alone lists them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
NOT_BENCHMARKS = {"common", "naive_server"}  # helpers of the others


def benchmarks() -> dict[str, str]:
    """name → the first line of its docstring, for every module with a ``main``."""
    out = {}
    for info in pkgutil.iter_modules([str(HERE)]):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS:
            continue
        text = (HERE / f"{info.name}.py").read_text()
        if "\ndef main(" not in text:
            continue
        doc = text.split('"""')[1] if text.startswith('"""') else ""
        out[info.name] = " ".join(doc.split("\n\n")[0].split())
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = benchmarks()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in found:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: no benchmark {argv[0]!r}", file=sys.stderr)
        print("usage: python -m bench NAME [ARGS]   (NAME --help for its options)\n")
        width = max(map(len, found))
        for name, doc in found.items():
            print(f"  {name:<{width}}  {doc[:100]}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    sys.argv = [f"python -m bench.{argv[0]}", *argv[1:]]
    module = importlib.import_module(f"bench.{argv[0]}")
    return module.main() or 0


if __name__ == "__main__":
    sys.exit(main())
