"""service/'s shape stays the one its package docstring draws: four wings, each importing only
the wings below it, on a ground every wing may use; and nothing of torch, training/ or the tests.

The check parses each module's imports (function-level ones included), so a lazy import cannot
hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
# Lower rank: lower wing. A module may import its own wing, a lower one, or the ground.
WINGS = {"collection": 0, "inference": 1, "lifecycle": 2, "api": 3}
GROUND = {"settings", "errors", "metrics", "gpu_metrics", "jsonio", "logs"}
TOP = {"app", "__main__"}  # assemble the wings
FOREIGN = ("torch", "torchvision", "timm", "training", "tests", "bench")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Absolute names this module imports (``from . import x`` resolved)."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}  # `from service import x`
    return out


def _place(module: str) -> str | None:
    """The wing or ground part a ``service.*`` name belongs to; None for the package itself."""
    parts = module.split(".")
    if parts[0] != "service" or len(parts) == 1:
        return None
    return parts[1]


def _modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py"))


def test_every_module_sits_in_a_wing_the_ground_or_the_top() -> None:
    def placed(path: Path) -> bool:
        if path.parent == SERVICE:
            return path.stem in GROUND | TOP or path.name == "__init__.py"
        return _place(_module(path)) in WINGS

    stray = [_module(p) for p in _modules() if not placed(p)]
    assert not stray, f"modules outside the layout (add them to a wing): {stray}"


def test_no_wing_imports_upward_and_the_ground_imports_no_wing() -> None:
    upward = []
    for path in _modules():
        here = _place(_module(path))
        if here is None or here in TOP:
            continue
        for name in _imports(path):
            there = _place(name)
            if there is None or there == here or there in GROUND:
                continue
            if here in GROUND:
                upward.append(f"{_module(path)} (ground) imports {name}")
            elif there in TOP or (there in WINGS and WINGS[there] > WINGS[here]):
                upward.append(f"{_module(path)} ({here}) imports {name} ({there})")
    assert not upward, "imports against the layout:\n" + "\n".join(sorted(upward))


def test_service_imports_no_torch_training_tests_or_bench() -> None:
    found = sorted(
        f"{_module(p)} imports {name}"
        for p in _modules()
        for name in _imports(p)
        if name.split(".")[0] in FOREIGN
    )
    assert not found, found


def test_from_export_only_the_manifest() -> None:
    found = sorted(
        f"{_module(p)} imports {name}"
        for p in _modules()
        for name in _imports(p)
        if name.split(".")[0] == "export" and not name.startswith("export.manifest")
    )
    assert not found, found
