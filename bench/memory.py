"""Server memory and start-up with a large index: RSS of a real server holding the default
bundle and --items items (one gallery vector each), and its start-up time to /readyz.

Items' vectors are real gallery-depth embeddings of mnist5k images, repeated with small jitter
to reach the count; they are written through the server's own ItemIndex (SQLite + FAISS).

    python -m bench.memory [--bundle bundles/default] [--items 100000]

Last line: RSS with the bundle and the items (target <= 1.5 GB; start-up target <= 30 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from bench.common import DEFAULT_BUNDLE, ServerProcess, digit_pngs, machine
from export.manifest import ALL_EXITS_OUTPUT, INPUT_NAME, Manifest, bundle_id
from service.collection import ItemIndex
from service.inference.images import prepare


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def fill(bundle: Path, data: Path, items: int) -> float:
    m = Manifest.read(bundle)
    p = m.preprocess
    pngs = digit_pngs(256)
    x = np.stack([prepare(b, p.resize, p.crop, p.interpolation, 10**8) for b in pngs])
    session = ort.InferenceSession(
        str(bundle / m.all_exits.file), providers=["CPUExecutionProvider"]
    )
    gallery = m.bridge.gallery_depth if m.bridge else m.model.depth
    base = session.run([ALL_EXITS_OUTPUT], {INPUT_NAME: x})[0][gallery - 1]  # [N, D]
    bid = bundle_id(bundle)
    index = ItemIndex(data / bid, bid, gallery, m.model.dim, snapshot_every=10**9)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for s in range(0, items, 2000):
        n = min(2000, items - s)
        vec = base[rng.integers(0, len(base), n)] + 0.02 * rng.standard_normal(
            (n, *base.shape[1:]), dtype=np.float32
        )
        vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
        index.upsert([f"item-{s + i:07d}" for i in range(n)], [{"n": s + i} for i in range(n)], vec)
    index.close()  # snapshot
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        with ServerProcess(args.bundle, data / "empty") as server:
            empty_rss, _ = rss_mb(server.proc.pid)
        fill_s = fill(args.bundle, data / "full", args.items)
        disk = sum(f.stat().st_size for f in (data / "full").rglob("*") if f.is_file())
        start = time.perf_counter()
        with ServerProcess(args.bundle, data / "full") as server:
            startup_s = time.perf_counter() - start
            with httpx.Client(base_url=server.url, timeout=60) as c:
                img = digit_pngs(1)[0]
                for _ in range(20):
                    c.post("/v1/search", files={"image": ("d.png", img, "image/png")})
                count = c.get("/v1/model").json()["items"]
            rss, peak = rss_mb(server.proc.pid)
    print(f"machine: {machine()}; bundle {args.bundle}")
    print("\n| items | start-up to /readyz s | RSS MiB | peak RSS MiB | RSS with no items MiB | "
          "disk MiB | fill s |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {count:,} | {startup_s:.1f} | {rss:.0f} | {peak:.0f} | {empty_rss:.0f} | "
          f"{disk / 2**20:.0f} | {fill_s:.0f} |")  # fmt: skip
    print(
        f"\nRSS with the bundle and {count:,} items: {rss / 1024:.2f} GiB (target <= 1.5 GB); "
        f"start-up {startup_s:.1f} s (target <= 30 s)"
    )


if __name__ == "__main__":
    main()
