"""Which GPUs can run the CUDA code in a folder of libraries (e.g. the GPU image's site-packages).

Reads the ``.nv_fatbin`` section of every ELF shared library below the given paths: each entry
of a fat binary is either SASS (machine code for one architecture, ``sm_90``; ``sm_90a`` marks
architecture-specific code that runs on that chip alone) or PTX (intermediate code the driver
compiles for any later architecture). A GPU of compute capability X.Y runs a library when it
has SASS of the same major version and a minor <= Y (not an ``a`` variant of another chip), or
PTX for an architecture <= X.Y. Same answers as ``cuobjdump --list-elf/--list-ptx``, without
the CUDA toolkit.

    python scripts/cuda_archs.py /opt/venv/lib/python3.11/site-packages --gpus 8.0,8.9,9.0,10.0
"""

from __future__ import annotations

import argparse
import mmap
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_SASS = 1, 2
ARCH_SPECIFIC = 0x00100000  # in the entry's flags word: code for one chip only ("a")
# Compute capabilities users rent today, and a chip of each.
GPUS = {
    "7.5": "T4",
    "8.0": "A100",
    "8.6": "A10, A40, RTX 30",
    "8.9": "L4, L40S, RTX 40",
    "9.0": "H100, H200",
    "10.0": "B200",
    "12.0": "RTX 50",
}


@dataclass
class Library:
    path: Path
    sass: set[tuple[int, bool]] = field(default_factory=set)  # (arch, arch-specific)
    ptx: set[int] = field(default_factory=set)

    def runs_on(self, cc: int) -> str:
        """``sass``, ``ptx`` (driver JIT at first load) or ``no`` for compute capability cc."""
        if (cc, True) in self.sass or any(
            a // 10 == cc // 10 and a <= cc and not specific for a, specific in self.sass
        ):
            return "sass"
        return "ptx" if any(a <= cc for a in self.ptx) else "no"


def _fatbin_section(mm: mmap.mmap) -> tuple[int, int] | None:
    if mm[:4] != b"\x7fELF" or mm[4] != 2:  # 64-bit ELF only
        return None
    shoff = struct.unpack_from("<Q", mm, 0x28)[0]
    entsize, count, strndx = struct.unpack_from("<HHH", mm, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", mm, shoff + i * entsize) for i in range(count)]
    names = headers[strndx][4]
    for name, *_, offset, size in headers:
        end = mm.find(b"\0", names + name)
        if mm[names + name : end] == b".nv_fatbin":
            return offset, size
    return None


def read_library(path: Path) -> Library | None:
    """The fat-binary entries of one shared library, or None if it holds no CUDA code."""
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return None
    with mm:
        section = _fatbin_section(mm)
        if section is None:
            return None
        lib, (pos, size) = Library(path), section
        end = pos + size
        while pos + 16 <= end:
            magic, _, header, length = struct.unpack_from("<IHHQ", mm, pos)
            if magic != FATBIN_MAGIC:
                pos += 8  # containers are 8-byte aligned
                continue
            entry, stop = pos + header, pos + header + length
            while entry < stop:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", mm, entry)
                arch = struct.unpack_from("<I", mm, entry + 28)[0]
                flags = struct.unpack_from("<I", mm, entry + 40)[0]
                if kind == KIND_SASS:
                    lib.sass.add((arch, bool(flags & ARCH_SPECIFIC)))
                elif kind == KIND_PTX:
                    lib.ptx.add(arch)
                entry += entry_header + payload
            pos = stop
    return lib


def libraries(roots: list[Path]) -> list[Library]:
    found = []
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*.so*"))
        for path in paths:
            if path.is_file() and not path.is_symlink() and (lib := read_library(path)):
                found.append(lib)
    return found


def table(libs: list[Library], roots: list[Path], gpus: list[str]) -> str:
    def short(path: Path) -> str:
        for root in roots:
            if path.is_relative_to(root) and root.is_dir():
                return str(path.relative_to(root))
        return path.name

    head = "| library | SASS | PTX | " + " | ".join(f"{g} ({GPUS.get(g, '?')})" for g in gpus)
    lines = [head + " |", "|---" * (3 + len(gpus)) + "|"]
    for lib in libs:
        sass = ", ".join(f"sm_{a}{'a' if s else ''}" for a, s in sorted(lib.sass)) or "-"
        ptx = ", ".join(f"compute_{a}" for a in sorted(lib.ptx)) or "-"
        cells = [lib.runs_on(int(g.replace(".", ""))) for g in gpus]
        lines.append(f"| {short(lib.path)} | {sass} | {ptx} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/cuda_archs.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", type=Path, nargs="+", help="folders or shared libraries")
    parser.add_argument(
        "--gpus",
        default=",".join(GPUS),
        help="compute capabilities to judge (default: %(default)s)",
    )
    parser.add_argument("--min-mib", type=float, default=0, help="skip smaller libraries")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"error: not found: {missing[0]}", file=sys.stderr)
        return 2
    libs = [lib for lib in libraries(args.paths) if lib.path.stat().st_size >= args.min_mib * 2**20]
    print(table(libs, args.paths, args.gpus.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
